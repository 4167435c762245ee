"""The README's examples run as printed: its REST (curl) walkthrough against a live gateway,
and its MLflow snippet through the real MLflow client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import cairn

from cairn_testing import ServerThread

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEFAULT_GATEWAY = "http://127.0.0.1:8080"


def _block_after(marker: str, language: str) -> str:
    found = re.search(rf"{re.escape(marker)}\s*```{language}\n(.*?)```", README, re.S)
    assert found, f"README has no {language} block after {marker!r}"
    return found.group(1)


def _python_block_containing(text: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        if text in block:
            return str(block)
    raise AssertionError(f"README has no python block containing {text!r}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_rest_walkthrough_runs_as_printed(
    gateway_server: ServerThread, gateway_url: str, tmp_path: Path
) -> None:
    script = _block_after("<!-- readme-test: rest -->", "bash")
    assert DEFAULT_GATEWAY in script
    (tmp_path / "README.md").write_text(README)  # the walkthrough uploads ./README.md
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(DEFAULT_GATEWAY, gateway_url)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "README.copy.md").read_text() == README  # alt=media download
    outputs = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    search = next(o for o in outputs if "runs" in o)
    (run,) = search["runs"]
    assert run["runName"] == "first"
    assert run["status"] == "RUN_STATUS_FINISHED"
    assert run["params"] == {"C": "1.0", "kernel": "rbf"}
    assert run["version"] == "1"
    history = next(o for o in outputs if "points" in o)
    assert history["points"][0]["value"] == 0.93
    missing = next(o for o in outputs if o.get("code") == 5)
    assert "no-such-experiment" in missing["message"]
    assert outputs[-1]["status"] == "SERVING"
    # The same data through Cairn's own SDK.
    with cairn.Tracker(gateway_server.address("tracker")) as tracker:
        (found,) = tracker.search_runs("curl-demo")
        assert found.metrics == {"accuracy": 0.93}
        assert [a.path for a in tracker.get_run(found.run_id).artifacts] == ["docs/README.md"]


def test_the_mlflow_snippet_runs_as_printed(
    gateway_server: ServerThread, gateway_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    snippet = _python_block_containing("mlflow.set_tracking_uri")
    assert DEFAULT_GATEWAY in snippet
    (tmp_path / "README.md").write_text(README)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    previous = mlflow.get_tracking_uri()
    try:
        exec(compile(snippet.replace(DEFAULT_GATEWAY, gateway_url), "README.md", "exec"), {})
    finally:
        mlflow.set_tracking_uri(previous)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    with cairn.Tracker(gateway_server.address("tracker")) as tracker:
        (run,) = tracker.search_runs("mlflow-demo")
        run = tracker.get_run(run.run_id)
    assert run.run_name == "from-mlflow"
    assert run.params == {"alpha": "0.5", "l1_ratio": "0.1"}
    assert run.metrics["rmse"] == pytest.approx(0.1)
    assert [a.path for a in run.artifacts] == ["README.md"]
    assert run.status == "FINISHED"
