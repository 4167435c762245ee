"""The trainer runtime: the separate Python environment the TFX trainer runs in.

TFX 1.16 pins protobuf < 5 while Cairn's services use protobuf 7, so the trainer cannot share
the services' environment. This module finds a base interpreter (CPython 3.10, or 3.11 with
its own lock), builds a virtual environment from the lock committed beside the trainer code
(`cairn_trainer/requirements-py3XY.lock`) in the user's cache, and tells launchers how to run
the trainer in it:

    runtime = ensure_trainer_runtime(progress=print)
    subprocess.run([runtime.python, "-m", "cairn_trainer", ...], env=runtime.env())

The runtime lives in `$CAIRN_TRAINER_RUNTIME_DIR`, or else in
`${XDG_CACHE_HOME:-~/.cache}/cairn/trainer-runtime/py3XY-<key>` where the key hashes the lock
and the interpreter's version, so a changed lock builds a new runtime beside the old one. A
build happens in a sibling temporary directory that is renamed into place with its `ready`
marker already written, so a crashed build never looks complete; a file lock beside it makes
concurrent callers (test workers, two commands) build once: the others wait and reuse it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cairn.errors import CairnError

TRAINER_PACKAGE = "cairn_trainer"
SUPPORTED_SERIES = ("3.10", "3.11")
PREFERRED_SERIES = "3.10"
READY_MARKER = "ready"

# Where the runtime lives and which interpreter builds it (see the module docstring).
RUNTIME_DIR_ENV = "CAIRN_TRAINER_RUNTIME_DIR"
PYTHON_ENV = "CAIRN_TRAINER_PYTHON"

# What the runtime installs; the versions come from the lock. apache-beam's dill extra is
# named explicitly on both series: tfx_bsl imports dill, which tfx's own requirements leave
# out (the extra admits one release, dill 0.3.1.1). On 3.11 pip must also ignore some
# packages' Requires-Python; its lock pins a beam that keeps protobuf < 5.
_REQUIREMENTS = ("tfx", "tensorflow-recommenders", "apache-beam[gcp,dill]")
# kfp-pipeline-spec: KubeflowV2DagRunner's PipelineSpec protos (`cairn_trainer compile`, for
# Vertex AI); tfx's kfp extra asks for releases on protobuf 4, 0.2.2 is the last on 3.20.
_OPTIONAL_REQUIREMENTS = ("scann", "kfp-pipeline-spec")
_PIP_FLAGS = {"3.11": ("--ignore-requires-python",)}

# The environment the trainer must run with (beyond PYTHONPATH): TFRS 0.7 on TF 2.16 needs
# Keras 2, which TF only picks when this is set before it is imported.
_TRAINER_ENV = {"TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1"}
_TRAINER_ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2"}
# Never inherited into the runtime: they would point it at the services' packages.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")

_PROBE_TIMEOUT = 60.0
_SMOKE_TIMEOUT = 900.0
_TAIL_LINES = 25

_PROBE = (
    "import json, platform, sys\n"
    "import ensurepip, venv\n"
    "print(json.dumps({'implementation': platform.python_implementation(),"
    " 'version': platform.python_version()}))\n"
)

_SMOKE_MARK = "CAIRN_TRAINER_RUNTIME_VERSIONS "
_SMOKE = (
    "import json, platform\n"
    "from importlib import metadata\n"
    "import tensorflow\n"
    "import tensorflow_recommenders\n"
    "import tfx.v1\n"
    "versions = {'python': platform.python_version()}\n"
    "for dist in ('tensorflow', 'tfx', 'tensorflow-recommenders', 'tf-keras', 'protobuf',\n"
    "             'apache-beam', 'ml-metadata', 'tensorflow-transform',\n"
    "             'tensorflow-data-validation'):\n"
    "    try:\n"
    "        versions[dist] = metadata.version(dist)\n"
    "    except metadata.PackageNotFoundError:\n"
    "        pass\n"
    f"print({_SMOKE_MARK!r} + json.dumps(versions))\n"
)

Progress = Callable[[str], None]


class TrainerRuntimeError(CairnError, RuntimeError):
    """The trainer runtime cannot be found, built or used; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _quiet(_: str) -> None:
    pass


# --- the base interpreter ---------------------------------------------------------------


@dataclass(frozen=True)
class BasePython:
    """An interpreter a trainer runtime can be built from."""

    executable: str
    version: str  # e.g. "3.10.13"

    @property
    def series(self) -> str:
        """The series: "3.10" or "3.11"."""
        return ".".join(self.version.split(".")[:2])

    @property
    def tag(self) -> str:
        """The tag, "py310" or "py311": names the lock and the runtime directory."""
        return "py" + self.series.replace(".", "")


def _probe(executable: str) -> tuple[BasePython | None, str]:
    """Run `executable` and ask what it is; (None, why) when it does not run or cannot make
    virtual environments (Debian's python3.X without python3.X-venv lacks ensurepip)."""
    try:
        result = subprocess.run(
            [executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            env=_clean_env(),
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"does not run ({error})"
    if result.returncode != 0:
        detail = _last_line(result.stderr or result.stdout) or f"exit status {result.returncode}"
        return None, f"does not run or cannot create virtual environments: {detail}"
    try:
        facts = json.loads(result.stdout.strip().splitlines()[-1])
        implementation, version = str(facts["implementation"]), str(facts["version"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None, f"answered something unexpected: {_last_line(result.stdout)!r}"
    if implementation != "CPython":
        return None, f"is {implementation} {version}, not CPython"
    return BasePython(executable, version), ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _version_key(name: str) -> tuple[int, ...]:
    """'3.10.13' -> (3, 10, 13), so 3.10.13 sorts after 3.10.9."""
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _pyenv_candidates(series: str) -> Iterator[str]:
    """Interpreters of `series` that pyenv has installed. Its shims only run the versions that
    are selected (global/local/PYENV_VERSION), so ask for the installed ones directly."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return
    command = f"python{series}"
    root = _output([pyenv, "root"])
    if root:
        found = Path(root).glob(f"versions/{series}*/bin/{command}")
        newest_first = sorted(found, key=lambda p: _version_key(p.parent.parent.name), reverse=True)
        yield from (str(p) for p in newest_first)
    versions = _output([pyenv, "versions", "--bare"]) or ""
    installed = [v.strip() for v in versions.splitlines() if v.strip().startswith(series)]
    for version in sorted(installed, key=_version_key, reverse=True):
        path = _output([pyenv, "which", command], {"PYENV_VERSION": version})
        if path:
            yield path


def _uv_candidates(series: str) -> Iterator[str]:
    uv = shutil.which("uv")
    if uv is not None:
        path = _output([uv, "python", "find", "--no-project", series])
        if path:
            yield path


def _output(command: Sequence[str], extra_env: Mapping[str, str] | None = None) -> str | None:
    try:
        result = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            env={**os.environ, **(extra_env or {})},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def _candidates(series: str) -> Iterator[str]:
    if series == "3.11" and sys.version_info[:2] == (3, 11):
        yield sys.executable
    on_path = shutil.which(f"python{series}")
    if on_path is not None:
        yield on_path
    yield from _pyenv_candidates(series)
    yield from _uv_candidates(series)


def find_base_python() -> BasePython:
    """The interpreter to build the runtime from: $CAIRN_TRAINER_PYTHON if set; else a
    CPython 3.10 that really runs (on PATH, from pyenv, from uv); else a 3.11 (this one if it
    is 3.11); else TrainerRuntimeError saying how to get Python 3.10."""
    chosen = os.environ.get(PYTHON_ENV, "").strip()
    if chosen:
        executable = shutil.which(chosen) or chosen
        base, why = _probe(executable)
        if base is None:
            raise TrainerRuntimeError(f"{PYTHON_ENV}={chosen} {why}")
        if base.series not in SUPPORTED_SERIES:
            raise TrainerRuntimeError(
                f"{PYTHON_ENV}={chosen} is Python {base.version}; the trainer runtime needs "
                f"CPython {' or '.join(SUPPORTED_SERIES)} (TFX 1.16 supports no other)."
            )
        return base
    tried: list[str] = []
    seen: set[str] = set()
    for series in (PREFERRED_SERIES, *(s for s in SUPPORTED_SERIES if s != PREFERRED_SERIES)):
        for executable in _candidates(series):
            if executable in seen:
                continue
            seen.add(executable)
            base, why = _probe(executable)
            if base is not None and base.series == series:
                return base
            if base is not None:
                why = f"is Python {base.version}"
            tried.append(f"{executable} {why}")
    detail = "".join(f"\n  - {line}" for line in tried)
    raise TrainerRuntimeError(
        "the trainer runtime needs CPython 3.10 (TFX 1.16; 3.11 works too) and none was "
        "found. Install it, e.g. `pyenv install 3.10`, `uv python install 3.10`, or your "
        "system's python3.10 and python3.10-venv packages; or set "
        f"{PYTHON_ENV} to a Python 3.10 interpreter." + (f" Tried:{detail}" if detail else "")
    )


# --- the trainer package and its locks ---------------------------------------------------


def trainer_package_dir() -> Path:
    """The `cairn_trainer` package directory (it holds the training code and the locks)."""
    spec = importlib.util.find_spec(TRAINER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    # An editable install made before cairn_trainer existed maps only the packages it saw
    # then; a source checkout still has the package beside `cairn`.
    cairn = importlib.util.find_spec("cairn")
    if cairn is not None and cairn.origin:
        beside = Path(cairn.origin).parent.parent / TRAINER_PACKAGE
        if beside.is_dir():
            return beside
    raise TrainerRuntimeError(
        f"cannot find the {TRAINER_PACKAGE} package (the trainer code and its locks); "
        "reinstall Cairn (pip install -e .) or run from its source checkout."
    )


def lock_file(series: str) -> Path:
    """The committed lock for a Python series, e.g. cairn_trainer/requirements-py310.lock."""
    path = trainer_package_dir() / f"requirements-py{series.replace('.', '')}.lock"
    if not path.is_file():
        raise TrainerRuntimeError(f"the trainer runtime's lock {path} is missing")
    return path


_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock: Path) -> dict[str, str]:
    """{normalized distribution name: version} for every `name==version` line of a lock."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[_normalize(match.group(1))] = match.group(2)
    return pins


def install_requirements(lock: Path) -> list[str]:
    """What `pip install -c <lock>` is asked for, each pinned to the lock's version."""
    pins = lock_pins(lock)
    requirements = []
    for requirement in _REQUIREMENTS:
        name = requirement.split("[", 1)[0]
        version = pins.get(_normalize(name))
        if version is None:
            raise TrainerRuntimeError(f"the lock {lock} pins no version of {name}")
        requirements.append(f"{requirement}=={version}")
    # Installed where the lock pins them (ScaNN has wheels for some Pythons only); the
    # trainer uses them when they import.
    for name in _OPTIONAL_REQUIREMENTS:
        version = pins.get(_normalize(name))
        if version is not None:
            requirements.append(f"{name}=={version}")
    return requirements


def runtime_key(lock: Path, python_version: str) -> str:
    """First 16 hex digits of sha256(lock bytes + Python version): names one runtime."""
    return hashlib.sha256(lock.read_bytes() + python_version.encode()).hexdigest()[:16]


def _cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "cairn" / "trainer-runtime"


def runtime_dir(base: BasePython, key: str) -> Path:
    """Where the runtime for this interpreter and lock lives (or will)."""
    chosen = os.environ.get(RUNTIME_DIR_ENV, "").strip()
    path = Path(chosen).expanduser() if chosen else _cache_dir() / f"{base.tag}-{key}"
    return Path(os.path.abspath(path))


# --- the runtime ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerRuntime:
    """A complete trainer runtime: run `python` with `env()`."""

    root: Path
    python: Path
    python_version: str
    lock_hash: str
    base_python: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    build_seconds: float | None = None
    built_at: str = ""
    just_built: bool = False

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment the trainer must run with: `base` (default os.environ) without
        the services' Python settings, plus PYTHONPATH = the directory that holds
        cairn_trainer, TF_USE_LEGACY_KERAS=1, TF_CPP_MIN_LOG_LEVEL=2 (unless set),
        PYTHONUNBUFFERED=1, and the runtime first on PATH."""
        environ = _clean_env(base)
        environ.update(_TRAINER_ENV)
        for name, value in _TRAINER_ENV_DEFAULTS.items():
            environ.setdefault(name, value)
        environ["PYTHONPATH"] = str(trainer_pythonpath(self.root))
        environ["VIRTUAL_ENV"] = str(self.root)
        environ["PATH"] = os.pathsep.join(
            p for p in (str(self.root / "bin"), environ.get("PATH", "")) if p
        )
        return environ


def _clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ if base is None else base)
    for name in _SCRUBBED_ENV:
        environ.pop(name, None)
    return environ


def trainer_pythonpath(runtime_root: Path) -> Path:
    """The directory to put on the trainer's PYTHONPATH: the one that holds cairn_trainer.

    In a source checkout that is the checkout. When Cairn is installed into site-packages
    that directory also holds the services' packages (protobuf 7...), which must not shadow
    the runtime's, so the trainer then gets a directory of its own with only a link to
    cairn_trainer in it."""
    package = trainer_package_dir()
    parent = package.parent
    if parent.name not in ("site-packages", "dist-packages"):
        return parent
    digest = hashlib.sha256(str(package).encode()).hexdigest()[:16]
    isolated = runtime_root / "pythonpath" / digest
    link = isolated / TRAINER_PACKAGE
    if not (link.is_symlink() and Path(os.readlink(link)) == package):
        isolated.mkdir(parents=True, exist_ok=True)
        temporary = isolated / f".{TRAINER_PACKAGE}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(package, target_is_directory=True)
        os.replace(temporary, link)
    return isolated


def _load(root: Path, key: str) -> TrainerRuntime | None:
    """The complete runtime at `root` built from the lock with this key, else None."""
    try:
        facts: dict[str, Any] = json.loads((root / READY_MARKER).read_text())
    except (OSError, ValueError):
        return None
    python = root / "bin" / "python"
    if not isinstance(facts, dict) or facts.get("lock_hash") != key or not python.exists():
        return None
    seconds, versions = facts.get("build_seconds"), facts.get("versions")
    return TrainerRuntime(
        root=root,
        python=python,
        python_version=str(facts.get("python_version", "")),
        lock_hash=key,
        base_python=str(facts.get("base_python", "")),
        versions={str(k): str(v) for k, v in versions.items()}
        if isinstance(versions, dict)
        else {},
        build_seconds=float(seconds) if isinstance(seconds, int | float) else None,
        built_at=str(facts.get("built_at", "")),
    )


def _locate(lock: Path | None) -> tuple[BasePython, Path, str, Path]:
    base = find_base_python()
    lock = lock or lock_file(base.series)
    key = runtime_key(lock, base.version)
    return base, lock, key, runtime_dir(base, key)


def find_trainer_runtime(*, lock: Path | None = None) -> TrainerRuntime | None:
    """The complete runtime for this machine's interpreter and the lock, or None (no build).
    Raises TrainerRuntimeError when no suitable interpreter exists."""
    _, _, key, root = _locate(lock)
    return _load(root, key)


def ensure_trainer_runtime(
    progress: Progress | None = None,
    *,
    pip_output: Progress | None = None,
    rebuild: bool = False,
    lock: Path | None = None,
) -> TrainerRuntime:
    """The trainer runtime, built first if needed (a few minutes, once per lock).

    `progress` hears the build's steps (a handful of lines), `pip_output` every line pip
    prints (the full output also goes to a log file beside the runtime; its path is one of
    the steps). `rebuild` replaces a complete runtime. Concurrent callers build once: the
    others wait for the file lock and reuse what the first built. Raises TrainerRuntimeError
    (with the tail of pip's output) when the build fails; a failed build leaves nothing that
    looks ready."""
    say = progress or _quiet
    base, lock, key, root = _locate(lock)
    if not rebuild and (runtime := _load(root, key)) is not None:
        return runtime
    with _build_lock(root, say):
        if not rebuild and (runtime := _load(root, key)) is not None:
            return runtime  # another process built it while this one waited
        _remove_leftovers(root)
        return _build(base, lock, key, root, say, pip_output or _quiet)


@contextmanager
def _build_lock(root: Path, say: Progress) -> Iterator[None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    path = root.parent / f"{root.name}.flock"
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"Waiting for another process that is building the trainer runtime ({path})…")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    """Temporary directories of builds that crashed (only ever called under the lock)."""
    for pattern in (f".{root.name}.build-*", f".{root.name}.old-*"):
        for leftover in root.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _replaceable(root: Path) -> bool:
    """Whether `root` may be replaced: absent, empty, or a (possibly incomplete) runtime —
    never someone's unrelated directory named by CAIRN_TRAINER_RUNTIME_DIR."""
    if not root.exists() and not root.is_symlink():
        return True
    if not root.is_dir():
        return False
    return (
        (root / "pyvenv.cfg").exists() or (root / READY_MARKER).exists() or not any(root.iterdir())
    )


def _build(
    base: BasePython, lock: Path, key: str, root: Path, say: Progress, pip_output: Progress
) -> TrainerRuntime:
    if not _replaceable(root):
        raise TrainerRuntimeError(
            f"{root} exists and is not a trainer runtime; point {RUNTIME_DIR_ENV} at a new "
            "or empty directory"
        )
    started = time.monotonic()
    log_path = root.parent / f"{root.name}.build.log"
    requirements = install_requirements(lock)
    say("Building the trainer runtime (first use only, takes a few minutes)…")
    say(f"pip's output: {log_path}")
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 is for secrets; this is an ordinary environment
    try:
        python = staging / "bin" / "python"
        with log_path.open("w", encoding="utf-8") as log:
            say(f"Creating a virtual environment with Python {base.version} ({base.executable})")
            venv = [base.executable, "-m", "venv", "--prompt", root.name, str(staging)]
            _run(venv, log, pip_output, "venv")
            say("Upgrading pip")
            pip = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
            _run([*pip, "--upgrade", "pip"], log, pip_output, "pip (upgrading pip)")
            say(f"Installing {' '.join(requirements)} (constraints: {lock.name})")
            command = [*pip, *_PIP_FLAGS.get(base.series, ()), "-c", str(lock), *requirements]
            _run(command, log, pip_output, "pip")
            say("Checking that tfx and tensorflow_recommenders import")
            versions = _smoke_check(python, log)
        _retarget(staging, root)
        seconds = time.monotonic() - started
        facts = {
            "lock_hash": key,
            "lock_file": str(lock),
            "python_version": base.version,
            "base_python": base.executable,
            "versions": versions,
            "build_seconds": round(seconds, 1),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / READY_MARKER).write_text(json.dumps(facts, indent=2) + "\n")  # last
        _move_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"Built the trainer runtime in {format_duration(seconds)}: {root}")
    runtime = _load(root, key)
    if runtime is None:  # pragma: no cover - renamed into place just now
        raise TrainerRuntimeError(f"the trainer runtime built at {root} cannot be read back")
    return dataclasses.replace(runtime, just_built=True)


def _run(command: list[str], log: IO[str], output: Progress, what: str) -> None:
    """Run `command`, streaming its output to the log and to `output`; raise with the tail."""
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    env = _clean_env()
    env.update(PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
    except OSError as error:
        raise TrainerRuntimeError(f"{what} could not start: {error}") from error
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            log.write(raw if raw.endswith("\n") else raw + "\n")
            if line:
                tail.append(line)
                output(line)
        status = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.flush()
    if status != 0:
        raise TrainerRuntimeError(
            f"building the trainer runtime failed: {what} exited with status {status}. "
            f"Last lines of its output:\n"
            + "\n".join(f"  {line}" for line in tail)
            + f"\nFull log: {log.name}"
        )


def _smoke_check(python: Path, log: IO[str]) -> dict[str, str]:
    """Import tfx and tensorflow_recommenders in the new runtime; their versions."""
    env = _clean_env()
    env.update(_TRAINER_ENV)
    env.update(_TRAINER_ENV_DEFAULTS)
    log.write(f"$ {python} -c <import tensorflow, tensorflow_recommenders, tfx.v1>\n")
    try:
        result = subprocess.run(
            [str(python), "-c", _SMOKE],
            capture_output=True,
            text=True,
            timeout=_SMOKE_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise TrainerRuntimeError(f"the new trainer runtime does not run: {error}") from error
    log.write(result.stdout + result.stderr)
    log.flush()
    for line in result.stdout.splitlines():
        if result.returncode == 0 and line.startswith(_SMOKE_MARK):
            versions: dict[str, str] = json.loads(line[len(_SMOKE_MARK) :])
            return versions
    tail = (result.stderr or result.stdout).strip().splitlines()[-_TAIL_LINES:]
    raise TrainerRuntimeError(
        "building the trainer runtime failed: tfx or tensorflow_recommenders does not import "
        f"in it (exit status {result.returncode}):\n"
        + "\n".join(f"  {line}" for line in tail)
        + f"\nFull log: {log.name}"
    )


def _retarget(staging: Path, root: Path) -> None:
    """Make the scripts pip wrote (whose #! lines name the staging directory) and the venv's
    own files name the final directory instead; the interpreter itself is location-free."""
    old = [str(staging).encode()]
    if str(staging.resolve()) != str(staging):
        old.append(str(staging.resolve()).encode())
    new = str(root).encode()
    files = [p for p in (staging / "bin").iterdir() if p.is_file() and not p.is_symlink()]
    for path in [*files, staging / "pyvenv.cfg"]:
        try:
            content = path.read_bytes()
        except OSError:
            continue
        changed = content
        for prefix in old:
            changed = changed.replace(prefix, new)
        if changed != content:
            path.write_bytes(changed)


def _move_into_place(staging: Path, root: Path) -> None:
    """Rename the complete staging directory to `root`, replacing what was there."""
    retired: Path | None = None
    if root.exists() or root.is_symlink():
        retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, retired / "runtime")
    os.replace(staging, root)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def format_duration(seconds: float) -> str:
    """'2 min 41 s', '12.3 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


class PipPhase:
    """Turns pip's output lines into a short description of what it is doing, for a status
    line: feed every line to `update`, which returns a new description or None."""

    def __init__(self) -> None:
        self.collected = 0

    def update(self, line: str) -> str | None:
        text = line.strip()
        if text.startswith("Collecting "):
            self.collected += 1
            name = text.removeprefix("Collecting ").split()[0]
            return f"resolving: {self.collected} packages ({name})"
        if text.startswith("Downloading ") and "(" in text:
            return f"downloading {text.removeprefix('Downloading ')}"
        if text.startswith(("Building wheel", "Building wheels")):
            return text.rstrip(":").lower()
        if text.startswith("Installing collected packages:"):
            count = len(text.split(":", 1)[1].split(","))
            return f"installing {count} packages (this takes a while)"
        if text.startswith("Successfully installed"):
            return "installed"
        return None


__all__ = [
    "BasePython",
    "PipPhase",
    "TrainerRuntime",
    "TrainerRuntimeError",
    "ensure_trainer_runtime",
    "find_base_python",
    "find_trainer_runtime",
    "format_duration",
    "install_requirements",
    "lock_file",
    "lock_pins",
    "runtime_dir",
    "runtime_key",
    "trainer_package_dir",
    "trainer_pythonpath",
]
