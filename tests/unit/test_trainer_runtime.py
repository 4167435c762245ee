"""The trainer runtime's discovery, cache key, failure and concurrency rules, without building
TFX (tests/e2e/test_trainer_env.py uses the real runtime)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cairn import trainer_runtime
from cairn.trainer_runtime import (
    BasePython,
    PipPhase,
    TrainerRuntime,
    TrainerRuntimeError,
    ensure_trainer_runtime,
    find_base_python,
    find_trainer_runtime,
    install_requirements,
    lock_file,
    runtime_dir,
    runtime_key,
    trainer_package_dir,
)

FAKE_VERSION = "3.10.42"
LOCK = "tfx==1.16.0\ntensorflow-recommenders==0.7.7\napache-beam==2.74.0\nprotobuf==3.20.3\n"


def fake_python(directory: Path, version: str = FAKE_VERSION, *, runs: bool = True) -> Path:
    """An 'interpreter' that answers the discovery probe as CPython `version` and fails at
    everything else (creating a virtual environment included), or fails outright."""
    script = directory / f"python-{version}"
    probe = json.dumps({"implementation": "CPython", "version": version})
    answer = f"echo '{probe}'; exit 0" if runs else "echo 'no such interpreter' >&2; exit 1"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then {answer}; fi\n'
        'echo "simulated failure of: $*" >&2\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "requirements-test.lock"
    path.write_text(LOCK)
    return path


@pytest.fixture
def runtime_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake interpreter chosen by CAIRN_TRAINER_PYTHON and a runtime directory of the test's
    own (never the user's cache)."""
    monkeypatch.setenv("CAIRN_TRAINER_PYTHON", str(fake_python(tmp_path)))
    root = tmp_path / "cache" / "runtime"
    monkeypatch.setenv("CAIRN_TRAINER_RUNTIME_DIR", str(root))
    return root


def write_fake_runtime(root: Path, lock: Path, version: str = FAKE_VERSION) -> None:
    """What a complete build leaves: an interpreter and the ready marker for this lock."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    (root / "pyvenv.cfg").write_text(f"version = {version}\n")
    ready = {
        "lock_hash": runtime_key(lock, version),
        "python_version": version,
        "versions": {"tfx": "1.16.0"},
        "build_seconds": 12.5,
    }
    (root / "ready").write_text(json.dumps(ready))


# --- the base interpreter ---------------------------------------------------------------


def test_cairn_trainer_python_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = fake_python(tmp_path, "3.11.9")
    monkeypatch.setenv("CAIRN_TRAINER_PYTHON", str(script))
    base = find_base_python()
    assert base == BasePython(str(script), "3.11.9")
    assert (base.series, base.tag) == ("3.11", "py311")


@pytest.mark.skipif(sys.version_info[:2] not in ((3, 10), (3, 11)), reason="needs 3.10/3.11")
def test_a_real_interpreter_is_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_TRAINER_PYTHON", sys.executable)
    base = find_base_python()
    assert base.executable == sys.executable
    assert base.version == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.parametrize("version", ["3.12.1", "3.9.18"])
def test_other_python_versions_are_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setenv("CAIRN_TRAINER_PYTHON", str(fake_python(tmp_path, version)))
    with pytest.raises(TrainerRuntimeError) as caught:
        find_base_python()
    message = str(caught.value)
    assert "CAIRN_TRAINER_PYTHON" in message
    assert f"is Python {version}" in message
    assert "3.10 or 3.11" in message


def test_an_interpreter_that_does_not_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAIRN_TRAINER_PYTHON", str(fake_python(tmp_path, runs=False)))
    with pytest.raises(TrainerRuntimeError, match=r"does not run.*no such interpreter"):
        find_base_python()
    monkeypatch.setenv("CAIRN_TRAINER_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(TrainerRuntimeError, match="does not run"):
        find_base_python()


def test_without_any_interpreter_the_error_says_how_to_get_python_310(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAIRN_TRAINER_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no python3.10/3.11, no pyenv, no uv
    monkeypatch.setattr(trainer_runtime, "_candidates", lambda series: iter(()))
    with pytest.raises(TrainerRuntimeError) as caught:
        find_base_python()
    message = str(caught.value)
    assert "CPython 3.10" in message
    assert "pyenv install 3.10" in message
    assert "CAIRN_TRAINER_PYTHON" in message


def test_a_broken_candidate_is_skipped_for_one_that_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like pyenv's shim for a version that is installed but not selected."""
    monkeypatch.delenv("CAIRN_TRAINER_PYTHON", raising=False)
    broken = fake_python(tmp_path, runs=False)
    working = tmp_path / "versions"
    working.mkdir()
    good = fake_python(working)
    candidates = {"3.10": [str(broken), str(good)], "3.11": []}
    monkeypatch.setattr(trainer_runtime, "_candidates", lambda series: iter(candidates[series]))
    assert find_base_python() == BasePython(str(good), FAKE_VERSION)


# --- the locks and the cache key ---------------------------------------------------------


def test_the_committed_locks_pin_what_is_installed() -> None:
    for series in ("3.10", "3.11"):
        path = lock_file(series)
        assert path.parent == trainer_package_dir()
        assert path.read_text().startswith("#")
        requirements = install_requirements(path)
        assert requirements[0] == "tfx==1.16.0"
        # ScaNN is installed where the lock pins it: the 3.10 route has a wheel that works
        # with TF 2.16 (scann 1.3.2); the 3.11 lock was resolved without it. So is
        # kfp-pipeline-spec (compiling for Vertex AI): 0.2.2 is the last on protobuf 3.20,
        # which the 3.10 lock has.
        optional = ["scann", "kfp-pipeline-spec"] if series == "3.10" else []
        assert [r.split("==")[0] for r in requirements] == [
            "tfx",
            "tensorflow-recommenders",
            "apache-beam[gcp,dill]",
            *optional,
        ]


def test_a_lock_without_a_needed_pin_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "partial.lock"
    path.write_text("# no tfx here\ntensorflow-recommenders==0.7.7\n")
    with pytest.raises(TrainerRuntimeError, match="pins no version of tfx"):
        install_requirements(path)


def test_the_cache_key_changes_with_the_lock_and_the_python(lock: Path, tmp_path: Path) -> None:
    key = runtime_key(lock, "3.10.13")
    assert len(key) == 16 and int(key, 16) >= 0
    same = tmp_path / "same.lock"
    same.write_text(LOCK)
    assert runtime_key(same, "3.10.13") == key
    changed = tmp_path / "changed.lock"
    changed.write_text(LOCK.replace("protobuf==3.20.3", "protobuf==3.20.2"))
    assert runtime_key(changed, "3.10.13") != key
    assert runtime_key(lock, "3.10.14") != key


def test_the_runtime_lives_in_the_user_cache(
    lock: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAIRN_TRAINER_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = BasePython("python3.10", "3.10.13")
    key = runtime_key(lock, base.version)
    assert runtime_dir(base, key) == tmp_path / "xdg" / "cairn" / "trainer-runtime" / (
        f"py310-{key}"
    )
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runtime_dir(base, key) == tmp_path / "home" / ".cache" / "cairn" / "trainer-runtime" / (
        f"py310-{key}"
    )
    monkeypatch.setenv("CAIRN_TRAINER_RUNTIME_DIR", str(tmp_path / "chosen"))
    assert runtime_dir(base, key) == tmp_path / "chosen"


# --- finding, failing, concurrency -------------------------------------------------------


def test_a_complete_runtime_is_found_and_a_stale_one_is_not(
    runtime_root: Path, lock: Path, tmp_path: Path
) -> None:
    assert find_trainer_runtime(lock=lock) is None
    write_fake_runtime(runtime_root, lock)
    found = find_trainer_runtime(lock=lock)
    assert found is not None
    assert (found.root, found.python) == (runtime_root, runtime_root / "bin" / "python")
    assert (found.python_version, found.build_seconds) == (FAKE_VERSION, 12.5)
    assert dict(found.versions) == {"tfx": "1.16.0"}
    assert not found.just_built
    # The same directory with another lock (CAIRN_TRAINER_RUNTIME_DIR is not keyed by it).
    other = tmp_path / "other.lock"
    other.write_text(LOCK + "scann==1.3.2\n")
    assert find_trainer_runtime(lock=other) is None


def test_a_failed_build_leaves_nothing_ready_and_says_why(runtime_root: Path, lock: Path) -> None:
    steps: list[str] = []
    with pytest.raises(TrainerRuntimeError) as caught:
        ensure_trainer_runtime(steps.append, lock=lock)
    message = str(caught.value)
    assert "building the trainer runtime failed: venv exited with status 1" in message
    assert "simulated failure of: -m venv" in message  # the tail of the output
    log = runtime_root.parent / f"{runtime_root.name}.build.log"
    assert f"Full log: {log}" in message
    assert "simulated failure" in log.read_text()
    assert steps[0] == "Building the trainer runtime (first use only, takes a few minutes)…"
    assert not runtime_root.exists()
    assert not list(runtime_root.parent.glob(".*build-*"))  # the staging directory is gone
    assert find_trainer_runtime(lock=lock) is None


@pytest.mark.skipif(sys.version_info[:2] not in ((3, 10), (3, 11)), reason="needs 3.10/3.11")
def test_a_failed_pip_install_raises_with_pips_output(
    runtime_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real virtual environment, and a lock pinning a release that does not exist: pip
    (offline) fails fast, the error carries its last lines."""
    monkeypatch.setenv("CAIRN_TRAINER_PYTHON", sys.executable)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    bad = tmp_path / "bad.lock"
    bad.write_text(LOCK.replace("tfx==1.16.0", "tfx==0.0.0.dev424242"))
    steps: list[str] = []
    with pytest.raises(TrainerRuntimeError) as caught:
        ensure_trainer_runtime(steps.append, lock=bad)
    message = str(caught.value)
    assert "building the trainer runtime failed: pip exited with status 1" in message
    assert "tfx==0.0.0.dev424242" in message
    assert any(step.startswith("Installing tfx==0.0.0.dev424242") for step in steps)
    assert not runtime_root.exists()
    assert not list(runtime_root.parent.glob(".*build-*"))
    assert find_trainer_runtime(lock=bad) is None


def test_a_directory_that_is_not_a_runtime_is_never_replaced(
    runtime_root: Path, lock: Path
) -> None:
    runtime_root.mkdir(parents=True)
    (runtime_root / "notes.txt").write_text("mine")
    with pytest.raises(TrainerRuntimeError, match="is not a trainer runtime"):
        ensure_trainer_runtime(lock=lock)
    assert (runtime_root / "notes.txt").read_text() == "mine"


def test_concurrent_callers_reuse_a_built_runtime(
    runtime_root: Path, lock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_runtime(runtime_root, lock)

    def must_not_build(*args: object) -> TrainerRuntime:
        raise AssertionError("a complete runtime was built again")

    monkeypatch.setattr(trainer_runtime, "_build", must_not_build)
    with ThreadPoolExecutor(4) as pool:
        runtimes = list(pool.map(lambda _: ensure_trainer_runtime(lock=lock), range(4)))
    assert {r.root for r in runtimes} == {runtime_root}
    assert not any(r.just_built for r in runtimes)


def test_concurrent_callers_build_once(
    runtime_root: Path, lock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first caller builds under the file lock; the others wait for it and reuse."""
    builds: list[int] = []
    building = threading.Event()

    def slow_build(base: BasePython, lock: Path, key: str, root: Path, *rest: object) -> object:
        builds.append(threading.get_ident())
        building.set()
        time.sleep(0.5)
        write_fake_runtime(root, lock, base.version)
        return trainer_runtime._load(root, key)

    monkeypatch.setattr(trainer_runtime, "_build", slow_build)
    waits: list[str] = []
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(ensure_trainer_runtime, lock=lock)
        assert building.wait(10)
        others = [pool.submit(ensure_trainer_runtime, waits.append, lock=lock) for _ in range(2)]
        runtimes = [first.result(), *(o.result() for o in others)]
    assert len(builds) == 1
    assert {r.root for r in runtimes if r is not None} == {runtime_root}
    assert any("Waiting for another process" in w for w in waits)


def test_rebuild_builds_again_after_removing_leftovers(
    runtime_root: Path, lock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_runtime(runtime_root, lock)
    crashed = runtime_root.parent / f".{runtime_root.name}.build-crashed"
    crashed.mkdir()
    calls: list[Path] = []

    def build(base: BasePython, lock: Path, key: str, root: Path, *rest: object) -> object:
        calls.append(root)
        assert not crashed.exists()  # removed under the lock before building
        return trainer_runtime._load(root, key)

    monkeypatch.setattr(trainer_runtime, "_build", build)
    ensure_trainer_runtime(lock=lock)
    assert calls == []
    ensure_trainer_runtime(lock=lock, rebuild=True)
    assert calls == [runtime_root]


def test_staging_is_moved_into_place_with_its_scripts_retargeted(tmp_path: Path) -> None:
    staging = tmp_path / ".rt.build-x"
    root = tmp_path / "rt"
    (staging / "bin").mkdir(parents=True)
    script = staging / "bin" / "tfx"
    script.write_text(f"#!{staging}/bin/python\nprint('hi')\n")
    script.chmod(0o755)
    (staging / "bin" / "python").symlink_to(sys.executable)
    (staging / "pyvenv.cfg").write_text(f"command = python -m venv {staging}\n")
    root.mkdir()
    (root / "pyvenv.cfg").write_text("the old runtime\n")
    trainer_runtime._retarget(staging, root)
    trainer_runtime._move_into_place(staging, root)
    assert not staging.exists()
    assert (root / "bin" / "tfx").read_text() == f"#!{root}/bin/python\nprint('hi')\n"
    assert os.access(root / "bin" / "tfx", os.X_OK)
    assert (root / "pyvenv.cfg").read_text() == f"command = python -m venv {root}\n"
    assert (root / "bin" / "python").resolve() == Path(sys.executable).resolve()
    assert [p.name for p in tmp_path.iterdir()] == ["rt"]


# --- the trainer's environment -----------------------------------------------------------


def test_the_trainer_environment(tmp_path: Path) -> None:
    runtime = TrainerRuntime(
        root=tmp_path / "rt",
        python=tmp_path / "rt" / "bin" / "python",
        python_version=FAKE_VERSION,
        lock_hash="0" * 16,
    )
    env = runtime.env(
        {"PATH": "/usr/bin", "PYTHONPATH": "services", "PYTHONHOME": "x", "HOME": "/h"}
    )
    assert env["PYTHONPATH"] == str(trainer_package_dir().parent)
    assert (trainer_package_dir().parent / "cairn_trainer").is_dir()
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == f"{tmp_path / 'rt' / 'bin'}{os.pathsep}/usr/bin"
    assert env["HOME"] == "/h"
    assert "PYTHONHOME" not in env
    assert runtime.env({"TF_CPP_MIN_LOG_LEVEL": "0"})["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_an_installed_trainer_package_gets_a_pythonpath_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In site-packages the trainer must not see the services' packages (protobuf 7)."""
    site = tmp_path / "lib" / "site-packages"
    package = site / "cairn_trainer"
    package.mkdir(parents=True)
    (site / "google").mkdir()
    monkeypatch.setattr(trainer_runtime, "trainer_package_dir", lambda: package)
    runtime_root = tmp_path / "rt"
    path = trainer_runtime.trainer_pythonpath(runtime_root)
    assert path.is_relative_to(runtime_root)
    assert [p.name for p in path.iterdir()] == ["cairn_trainer"]
    assert (path / "cairn_trainer").resolve() == package.resolve()
    assert trainer_runtime.trainer_pythonpath(runtime_root) == path  # idempotent


def test_pip_phases() -> None:
    phase = PipPhase()
    assert phase.update("Collecting tfx==1.16.0") == "resolving: 1 packages (tfx==1.16.0)"
    assert phase.update("  Downloading tfx-1.16.0-py3-none-any.whl.metadata (15 kB)") is not None
    assert phase.update("Requirement already satisfied: pip") is None
    assert phase.update("Installing collected packages: a, b, c") == (
        "installing 3 packages (this takes a while)"
    )
