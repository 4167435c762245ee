"""The deployment: Dockerfiles, the Helm chart (lint, render, schema validation against
Kubernetes 1.30, the properties that matter) and the plain manifests rendered from it.

Helm comes from the dev extra (tests/deploy_tools.py): no cluster and no network needed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import deploy_tools
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cairn"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
DOCKER = ROOT / "deploy" / "docker"
KUBERNETES_VERSION = "1.30"
GRPC_SERVICES = {"tracker": 50051, "scheduler": 50052, "analytics": 50053, "logproxy": 50054}
# Custom resources: no schema in kubernetes-validate; their apiVersion and kind are checked.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}

VERTEX_VALUES = CHART / "ci" / "vertex-values.yaml"
VALUE_SETS = {
    "default": [],
    "full": ["-f", str(FULL_VALUES)],
    "vertex": ["-f", str(VERTEX_VALUES)],
}

Manifest = dict[str, Any]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(deploy_tools.helm()), *args], capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@cache
def rendered(values: str) -> tuple[Manifest, ...]:
    out = helm("template", "cairn", str(CHART), "--namespace", "cairn", *VALUE_SETS[values])
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def objects(values: str, kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in rendered(values) if o["kind"] == kind}


def component(obj: Manifest) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def pod_specs(values: str) -> list[tuple[str, Manifest]]:
    specs = []
    for obj in rendered(values):
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs.append((f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]))
    return specs


# --- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dockerfile", "entrypoint"),
    [("services.Dockerfile", ["cairn"]), ("trainer.Dockerfile", ["python", "-m", "cairn_trainer"])],
)
def test_dockerfile_pinned_base_non_root_user_and_entrypoint(
    dockerfile: str, entrypoint: list[str]
) -> None:
    parser = DockerfileParser(path=str(DOCKER / dockerfile))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    stages = {
        value.split()[-1].lower()
        for instruction, value in instructions
        if instruction == "FROM" and " as " in value.lower()
    }
    for image in parser.parent_images:
        if image.lower() in stages:
            continue  # an earlier stage of this Dockerfile
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"unpinned base {image}"
        assert any(ch.isdigit() for ch in tag), f"base image tag is not a version: {image}"
    users = [value for instruction, value in instructions if instruction == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # USER comes after the last FROM, so it applies to the final stage.
    last_from = max(n for n, (ins, _) in enumerate(instructions) if ins == "FROM")
    assert any(ins == "USER" for ins, _ in instructions[last_from:])
    entrypoints = [value for instruction, value in instructions if instruction == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == entrypoint


def test_services_image_installs_the_extras_and_serves_the_tracker() -> None:
    text = (DOCKER / "services.Dockerfile").read_text()
    (install,) = re.findall(r'pip install "\.\[([a-z0-9,]+)\]"', text)
    assert {"postgres", "gcp", "s3"} <= set(install.split(","))
    parser = DockerfileParser(path=str(DOCKER / "services.Dockerfile"))
    cmds = [i["value"] for i in parser.structure if i["instruction"] == "CMD"]
    assert json.loads(cmds[-1]) == ["serve", "tracker"]


def test_trainer_image_is_the_matching_tfx_with_the_lock() -> None:
    parser = DockerfileParser(path=str(DOCKER / "trainer.Dockerfile"))
    assert parser.baseimage in ("tensorflow/tfx:1.16.0", "gcr.io/tfx-oss-public/tfx:1.16.0")
    lock = (ROOT / "cairn_trainer" / "requirements-py310.lock").read_text()
    assert "tfx==1.16.0" in lock
    assert parser.envs["TF_USE_LEGACY_KERAS"] == "1"
    text = (DOCKER / "trainer.Dockerfile").read_text()
    assert "requirements-py310.lock tensorflow-recommenders scann kfp-pipeline-spec" in text


def test_the_vertex_scheduler_target_carries_the_trainer_runtime() -> None:
    parser = DockerfileParser(path=str(DOCKER / "services.Dockerfile"))
    froms = [i["value"] for i in parser.structure if i["instruction"] == "FROM"]
    assert froms[-1] == "runtime AS scheduler-vertex"
    assert parser.envs["CAIRN_TRAINER_RUNTIME_DIR"] == "/opt/cairn-trainer-runtime"
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    assert "uv python install 3.10" in runs and "cairn trainer-env" in runs


# --- The chart -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_lint_strict(values: str) -> None:
    helm("lint", "--strict", str(CHART), *VALUE_SETS[values])


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid_kubernetes(values: str) -> None:
    problems = []
    for obj in rendered(values):
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_RESOURCES:
            assert obj["metadata"]["name"] and obj["spec"], where
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where}: {error.message} at {list(error.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: unknown apiVersion/kind {obj.get('apiVersion')}")
    assert not problems, "\n".join(problems)


def test_validation_is_strict() -> None:
    """The validator itself rejects an unknown field (so the test above means something)."""
    deployment = next(o for o in rendered("default") if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_full_values_render_every_optional_part() -> None:
    kinds = {o["kind"] for o in rendered("full")}
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "StatefulSet", "NetworkPolicy"} <= kinds
    hpas = {component(o) for o in objects("full", "HorizontalPodAutoscaler").values()}
    assert hpas == {"tracker", "analytics", "logproxy", "gateway"}
    deployments = {component(o): o for o in objects("full", "Deployment").values()}
    for name in hpas:  # the HPA owns the replica count
        assert "replicas" not in deployments[name]["spec"]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_a_deployment_and_service_per_service(values: str) -> None:
    deployments = {component(o) for o in objects(values, "Deployment").values()}
    services = {component(o) for o in objects(values, "Service").values()}
    assert deployments == {"tracker", "scheduler", "analytics", "logproxy", "gateway"}
    assert deployments <= services


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_grpc_services_have_grpc_probes_and_the_gateway_http_healthz(values: str) -> None:
    for deployment in objects(values, "Deployment").values():
        name = component(deployment)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", name]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container[probe]
            assert "tcpSocket" not in spec
            if name in GRPC_SERVICES:
                assert spec["grpc"] == {"port": GRPC_SERVICES[name]}, (name, probe)
            else:
                assert spec["httpGet"] == {"path": "/healthz", "port": "http"}, probe


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_the_migration_job_is_a_hook_and_servers_do_not_migrate(values: str) -> None:
    (job,) = objects(values, "Job").values()
    annotations = job["metadata"]["annotations"]
    hooks = set(annotations["helm.sh/hook"].split(","))
    # With the in-chart PostgreSQL the database only exists after install.
    first = "post-install" if values == "full" else "pre-install"
    assert hooks == {first, "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    (config,) = objects(values, "ConfigMap").values()
    assert config["data"]["CAIRN_AUTO_MIGRATE"] == "false"
    # The Job's database URL comes from a Secret that exists when the hook runs.
    (env,) = [e for e in container["env"] if e["name"] == "CAIRN_DATABASE_URL"]
    secret_name = env["valueFrom"]["secretKeyRef"]["name"]
    secrets = objects(values, "Secret")
    if secret_name in secrets:
        hook = secrets[secret_name]["metadata"]["annotations"]["helm.sh/hook"]
        assert hook == annotations["helm.sh/hook"]
        assert int(secrets[secret_name]["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_containers_run_as_non_root_with_read_only_root(values: str) -> None:
    specs = pod_specs(values)
    assert len(specs) >= 5
    for where, template in specs:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["requests"], where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where


def deployment_of(values: str, name: str) -> Manifest:
    (deployment,) = [d for d in objects(values, "Deployment").values() if component(d) == name]
    return deployment


def role_grants(role: Manifest) -> dict[tuple[str, str], set[str]]:
    return {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def bound_account(values: str, role: Manifest) -> list[dict[str, str]]:
    (binding,) = [
        b
        for b in objects(values, "RoleBinding").values()
        if b["roleRef"]
        == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
    ]
    subjects: list[dict[str, str]] = binding["subjects"]
    return subjects


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_the_scheduler_rolls_without_downtime_with_a_narrow_role(values: str) -> None:
    scheduler = deployment_of(values, "scheduler")
    # Leader election: extra replicas are hot standbys (full values run two).
    assert scheduler["spec"]["replicas"] == (2 if values == "full" else 1)
    strategy = scheduler["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    account = scheduler["spec"]["template"]["spec"]["serviceAccountName"]
    assert scheduler["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    roles = {component(r): r for r in objects(values, "Role").values()}
    assert set(roles) == {"scheduler", "logproxy"}
    granted = role_grants(roles["scheduler"])
    assert set(granted) == {("batch", "jobs"), ("", "pods"), ("", "pods/log"), ("", "secrets")}
    assert granted[("", "pods/log")] == {"get"}
    assert granted[("", "pods")] <= {"get", "list", "watch"}
    assert "*" not in set().union(*granted.values())
    assert bound_account(values, roles["scheduler"]) == [
        {"kind": "ServiceAccount", "name": account, "namespace": "cairn"}
    ]
    # Only the scheduler and the log proxy talk to the Kubernetes API.
    for deployment in objects(values, "Deployment").values():
        if component(deployment) not in ("scheduler", "logproxy"):
            assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_the_log_proxy_may_only_read_pods_and_their_logs(values: str) -> None:
    logproxy = deployment_of(values, "logproxy")
    pod = logproxy["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert account == "cairn-logproxy"
    assert pod["automountServiceAccountToken"] is True
    accounts = objects(values, "ServiceAccount")
    assert accounts[account]["automountServiceAccountToken"] is True
    (role,) = [r for r in objects(values, "Role").values() if component(r) == "logproxy"]
    granted = role_grants(role)
    assert granted == {("", "pods"): {"get", "list", "watch"}, ("", "pods/log"): {"get"}}
    assert bound_account(values, role) == [
        {"kind": "ServiceAccount", "name": account, "namespace": "cairn"}
    ]
    # No Role of the chart reaches beyond the namespace.
    assert not objects(values, "ClusterRole") and not objects(values, "ClusterRoleBinding")


def test_the_log_proxy_without_rbac_runs_token_less() -> None:
    out = helm(
        "template",
        "cairn",
        str(CHART),
        "--namespace",
        "cairn",
        "--set",
        "logproxy.rbac.create=false",
    )
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert not [
        d
        for d in docs
        if d["kind"] in ("Role", "RoleBinding", "ServiceAccount") and component(d) == "logproxy"
    ]
    (logproxy,) = [d for d in docs if d["kind"] == "Deployment" and component(d) == "logproxy"]
    pod = logproxy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cairn"
    assert pod["automountServiceAccountToken"] is False


def test_several_scheduler_replicas_render() -> None:
    """Leader election lifted the cap of one: more replicas are hot standbys."""
    out = helm(
        "template", "cairn", str(CHART), "--namespace", "cairn", "--set", "scheduler.replicas=3"
    )
    (scheduler,) = [
        d
        for d in yaml.safe_load_all(out.stdout)
        if d and d["kind"] == "Deployment" and component(d) == "scheduler"
    ]
    assert scheduler["spec"]["replicas"] == 3
    assert scheduler["spec"]["strategy"]["type"] == "RollingUpdate"
    kubernetes_validate.validate(scheduler, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_configuration_points_at_the_services_and_secrets_come_from_a_secret(
    values: str,
) -> None:
    (config,) = objects(values, "ConfigMap").values()
    data = config["data"]
    assert data["CAIRN_HOST"] == "0.0.0.0"
    assert data["CAIRN_TRACKER_ADDRESS"] == "cairn-tracker:50051"
    assert data["CAIRN_SCHEDULER_ADDRESS"] == "cairn-scheduler:50052"
    assert data["CAIRN_ANALYTICS_ADDRESS"] == "cairn-analytics:50053"
    assert data["CAIRN_LOGPROXY_ADDRESS"] == "cairn-logproxy:50054"
    assert data["CAIRN_LOGPROXY_PORT"] == "50054"
    assert data["CAIRN_LOGPROXY_METRICS_PORT"] == "9104"
    assert data["CAIRN_GATEWAY_URL"] == "http://cairn-gateway:8080"
    if values == "vertex":
        # Training runs as Vertex AI PipelineJobs, each task in the trainer image.
        assert data["CAIRN_SCHEDULER_LAUNCHER"] == "vertex"
        assert data["CAIRN_SCHEDULER_VERTEX_PROJECT"] == "my-project"
        assert data["CAIRN_SCHEDULER_VERTEX_LOCATION"] == "europe-west4"
        assert data["CAIRN_SCHEDULER_VERTEX_PIPELINE_ROOT"] == "gs://my-project-cairn/pipelines"
        assert data["CAIRN_SCHEDULER_VERTEX_IMAGE"].endswith("/cairn-trainer:0.1.0")
        assert "CAIRN_SCHEDULER_K8S_NAMESPACE" not in data
    else:
        # Training runs as Kubernetes Jobs in the release's namespace, with the trainer image.
        assert data["CAIRN_SCHEDULER_LAUNCHER"] == "kubernetes"
        assert data["CAIRN_SCHEDULER_K8S_NAMESPACE"] == "cairn"
        assert data["CAIRN_SCHEDULER_K8S_IMAGE"].startswith("ghcr.io/cairn-ml/cairn-trainer:")
        assert "CAIRN_SCHEDULER_VERTEX_PROJECT" not in data
    sensitive = {
        "CAIRN_DATABASE_URL",
        "CAIRN_AUTH_TOKENS",
        "CAIRN_RUN_TOKEN_SECRET",
        "CAIRN_PAGE_TOKEN_SECRET",
    }
    assert not sensitive & set(data)
    for deployment in objects(values, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        from_secret = {
            e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
        }
        needs_database = component(deployment) in ("tracker", "scheduler")
        assert from_secret == (sensitive if needs_database else sensitive - {"CAIRN_DATABASE_URL"})


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_network_policies_cover_every_grpc_service(values: str) -> None:
    policies = {component(p): p for p in objects(values, "NetworkPolicy").values()}
    for name, port in GRPC_SERVICES.items():
        grpc_rule, _metrics_rule = policies[name]["spec"]["ingress"]
        assert grpc_rule["ports"] == [{"port": port, "protocol": "TCP"}], name
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "cairn"}}} in (
            grpc_rule["from"]
        ), name
    if "postgresql" in policies:  # the log proxy has no database
        (rule,) = policies["postgresql"]["spec"]["ingress"]
        allowed = {
            p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]
        }
        assert allowed == {"tracker", "scheduler", "migration"}


def test_the_full_values_secret_and_in_chart_postgresql() -> None:
    secrets = objects("full", "Secret")
    data = secrets["cairn-secrets"]["stringData"]
    assert data["CAIRN_DATABASE_URL"].startswith("postgresql+psycopg://cairn:")
    assert data["CAIRN_DATABASE_URL"].endswith("@cairn-postgresql:5432/cairn")
    assert "trial-password%2Fwith%3Aspecial%40chars" in data["CAIRN_DATABASE_URL"]
    (statefulset,) = objects("full", "StatefulSet").values()
    assert statefulset["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "tracker.replicas=-1"],
        ["--set", "tracker.replicas=two"],
        ["--set", "scheduler.replicas=-1"],
        ["--set", "scheduler.launcher=ssh"],
        ["--set", "scheduler.trainer.activeDeadlineSeconds=5"],
        ["--set", "logproxy.port=70000"],
        ["--set", "logproxy.replicas=-1"],
        ["--set", "logproxy.rbac.create=maybe"],
        ["--set", "logproxy.autoscaling.targetCPUUtilizationPercentage=150"],
        ["--set", "logproxy.database=true"],  # the log proxy has no database
        ["--set", "logging.level=LOUD"],
        ["--set", "gateway.port=70000"],
        ["--set", "tracker.replica=3"],  # a typo: unknown keys are rejected
        ["--set", "secrets.runTokenSecret=short"],
    ],
    ids=lambda args: args[1],
)
def test_the_values_schema_rejects_bad_values(bad: list[str]) -> None:
    result = helm("template", "cairn", str(CHART), *bad, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "secrets.create=true"], "secrets.databaseUrl is required"),
        (
            ["--set", "postgresql.enabled=true,secrets.create=true,postgresql.password=x"],
            "secrets.authTokens is required",
        ),
        (["--set", "postgresql.enabled=true"], "postgresql.password is required"),
        (["--set", "tracker.replicas=2"], "needs a shared artifacts.root"),
    ],
)
def test_missing_required_values_fail_with_a_message(args: list[str], message: str) -> None:
    result = helm("template", "cairn", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


# --- Plain manifests -----------------------------------------------------------------------


def test_plain_manifests_are_the_default_rendering() -> None:
    spec = importlib.util.spec_from_file_location(
        "render_manifests", ROOT / "scripts" / "render_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render(deploy_tools.helm())
    current = (ROOT / "deploy" / "manifests" / "cairn.yaml").read_text()
    assert current == expected, "deploy/manifests is stale: run scripts/render_manifests.py"


def test_the_vertex_scheduler_runs_the_image_with_the_trainer_runtime() -> None:
    deployments = {component(o): o for o in objects("vertex", "Deployment").values()}
    images = {
        name: deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        for name, deployment in deployments.items()
    }
    assert images["scheduler"] == images["tracker"] + "-vertex"
    # Workload Identity: the scheduler and the log proxy act as Google service accounts.
    accounts = objects("vertex", "ServiceAccount")
    annotation = "iam.gke.io/gcp-service-account"
    assert accounts["cairn-scheduler"]["metadata"]["annotations"][annotation].startswith(
        "cairn-scheduler@"
    )
    assert accounts["cairn-logproxy"]["metadata"]["annotations"][annotation].startswith(
        "cairn-logs@"
    )
    assert "annotations" not in objects("default", "ServiceAccount")["cairn-scheduler"]["metadata"]
    (config,) = objects("full", "ConfigMap").values()
    assert config["data"]["CAIRN_SCHEDULER_K8S_RESULTS_URI"] == "gs://cairn-results/jobs"


def test_the_vertex_launcher_needs_its_project_and_pipeline_root() -> None:
    result = helm(
        "template", "cairn", str(CHART), "--set", "scheduler.launcher=vertex", check=False
    )
    assert result.returncode != 0
    assert "scheduler.vertex.project is required" in result.stderr
