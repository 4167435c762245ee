"""`cairn trainer-env`: build (once) and show the trainer runtime, the separate Python
environment that TFX and TensorFlow Recommenders run in (see cairn/trainer_runtime.py)."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import click
from rich.text import Text

from cairn.cli.output import console, emit, errors, json_option
from cairn.trainer_runtime import PipPhase, TrainerRuntime, ensure_trainer_runtime, format_duration

# What the summary names, in this order; the rest of the smoke check's versions follow.
_HEADLINE = {"tensorflow": "TensorFlow", "tfx": "TFX", "tensorflow-recommenders": "TFRS"}


def _build_note(runtime: TrainerRuntime) -> str:
    took = format_duration(runtime.build_seconds) if runtime.build_seconds is not None else "?"
    if runtime.just_built:
        return f"built now in {took}"
    when = "earlier"
    if runtime.built_at:
        with contextlib.suppress(ValueError):
            built = datetime.fromisoformat(runtime.built_at).astimezone()
            when = built.strftime("%Y-%m-%d %H:%M")
    return f"reused (built {when} in {took})"


def _data(runtime: TrainerRuntime) -> dict[str, Any]:
    return {
        "path": str(runtime.root),
        "python": str(runtime.python),
        "python_version": runtime.python_version,
        "base_python": runtime.base_python,
        "lock_hash": runtime.lock_hash,
        "versions": dict(runtime.versions),
        "build_seconds": runtime.build_seconds,
        "built_at": runtime.built_at,
        "just_built": runtime.just_built,
    }


def _render(runtime: TrainerRuntime) -> None:
    versions = dict(runtime.versions)
    rows = [
        ("Trainer runtime", str(runtime.root)),
        ("Python", f"{runtime.python_version} (from {runtime.base_python or '?'})"),
    ]
    rows += [(label, versions.pop(name, "?")) for name, label in _HEADLINE.items()]
    versions.pop("python", None)
    if versions:
        rows.append(("Also", ", ".join(f"{name} {v}" for name, v in versions.items())))
    rows.append(("Build", _build_note(runtime)))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        console.print(Text.assemble((f"{label:<{width}}", "bold"), f"  {value}"), soft_wrap=True)


@click.command("trainer-env")
@click.option("--rebuild", is_flag=True, help="Build the runtime again even if it is complete.")
@click.option(
    "--print-path",
    is_flag=True,
    help="Print only the runtime's directory (its interpreter is bin/python).",
)
@json_option
def trainer_env(rebuild: bool, print_path: bool, as_json: bool) -> None:
    """Build the trainer runtime if needed, then show where it is and what it holds.

    TFX 1.16 pins protobuf < 5, so training runs in its own environment, built from the lock
    in cairn_trainer/ with CPython 3.10 (or 3.11) into the user's cache; the first build takes
    a few minutes, later calls reuse it. CAIRN_TRAINER_PYTHON chooses the interpreter,
    CAIRN_TRAINER_RUNTIME_DIR the directory.
    """
    phase = PipPhase()
    with errors.status("Looking for the trainer runtime…") as status:

        def step(message: str) -> None:
            errors.print(Text(message), soft_wrap=True)  # no markup: pip's [extras] stay
            status.update(Text(message))

        def pip_line(line: str) -> None:
            described = phase.update(line)
            if described is not None:
                status.update(Text(f"pip: {described}"))

        runtime = ensure_trainer_runtime(step, pip_output=pip_line, rebuild=rebuild)
    # Also lays out the trainer's PYTHONPATH (a link, when Cairn is installed into
    # site-packages), so a runtime baked into a read-only image never needs to write.
    runtime.env()
    if print_path:
        click.echo(str(runtime.root))
        return
    emit(as_json, _data(runtime), lambda: _render(runtime))


# main.py registers every module's COMMANDS.
COMMANDS: list[click.Command] = [trainer_env]
