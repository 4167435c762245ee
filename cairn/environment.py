"""Capture where a run came from: git state, command line, interpreter, packages, machine.

Cheap enough to run on every start_run (no `pip freeze` subprocess: installed distributions
come from importlib.metadata), and never fails a run: anything unavailable is left empty.
"""

from __future__ import annotations

import getpass
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from cairn.types import Environment

# The tracker's limit for diffs and freezes is 1,000,000 characters; stay under it.
MAX_DIFF_CHARACTERS = 500_000
_CREDENTIALS = re.compile(r"(?<=://)[^/@]+@")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(cwd: Path | None = None) -> dict[str, object]:
    directory = Path(cwd or os.getcwd())
    if shutil.which("git") is None:
        return {}
    commit = _git(["rev-parse", "HEAD"], directory)
    if not commit:
        return {}
    branch = (_git(["rev-parse", "--abbrev-ref", "HEAD"], directory) or "").strip()
    remote = (_git(["config", "--get", "remote.origin.url"], directory) or "").strip()
    status = _git(["status", "--porcelain", "--untracked-files=no"], directory) or ""
    diff = (_git(["diff", "HEAD"], directory) or "") if status.strip() else ""
    if len(diff) > MAX_DIFF_CHARACTERS:
        diff = (
            diff[:MAX_DIFF_CHARACTERS]
            + f"\n... diff truncated at {MAX_DIFF_CHARACTERS} characters\n"
        )
    return {
        "git_commit": commit.strip(),
        "git_branch": "" if branch == "HEAD" else branch,
        "git_remote": _CREDENTIALS.sub("", remote),
        "git_dirty": bool(status.strip()),
        "git_diff": diff,
    }


def installed_packages() -> str:
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(name.lower(), f"{name}=={dist.version}")
    return "\n".join(seen[key] for key in sorted(seen))


def device_info() -> str:
    parts = [f"{platform.machine()}", f"{os.cpu_count() or 0} CPUs"]
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        parts.append(f"{memory / 2**30:.1f} GiB RAM")
    except (ValueError, OSError, AttributeError):
        pass
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            gpus = ""
        if gpus:
            parts.append("GPUs: " + "; ".join(line.strip() for line in gpus.splitlines()))
    return ", ".join(parts)


def capture_environment(cwd: Path | None = None) -> Environment:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return Environment(
        command=shlex.join(argv),
        python_version=platform.python_version(),
        pip_freeze=installed_packages(),
        hostname=socket.gethostname(),
        platform=platform.platform(),
        device_info=device_info(),
        user=user,
        **git_state(cwd),  # type: ignore[arg-type]
    )
