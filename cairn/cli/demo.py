"""`cairn demo`: the main job. Builds the trainer runtime on first use, starts the embedded
stack, registers the bundled sample dataset, runs a retrieval quick test as a real TFX
pipeline training a TensorFlow Recommenders two-tower model, follows it live and prints its
held-out Recall@5/10/50/100."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from cairn.cli.output import console, errors
from cairn.cli.stack import (
    _loopback_address,
    _settings,
    data_dir_option,
    start_detached,
    stop_stack,
    tracker_healthy,
)

DATASET = "sample-interactions"
FEATURES = "sample-ids-and-categories"
MODEL = "sample-two-tower"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _named(display_name: str) -> str:
    """The list filter of the one resource with this display name (names are unique)."""
    from cairn.scheduling import quote

    return f"display_name = {quote(display_name)}"


def _first_name(items: list[Any]) -> str | None:
    return str(items[0].name) if items else None


@click.command()
@data_dir_option
@click.option("--keep", is_flag=True, help="Leave the stack running afterwards.")
@click.option(
    "--sample",
    default="100",
    show_default=True,
    type=click.Choice(["5", "10", "25", "50", "100"]),
    help="Percent of the sample dataset's 100,000 interactions to train on.",
)
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(256, 8192))
def demo(data_dir: Path | None, keep: bool, sample: str, epochs: int, batch_size: int) -> None:
    """The main job: a real retrieval quick test on the bundled sample dataset."""
    from cairn.cli.scheduling import follow_job
    from cairn.errors import CairnError
    from cairn.sample_data import (
        ITEM_ID_COLUMN,
        TIMESTAMP_COLUMN,
        USER_ID_COLUMN,
        sample_dataset_path,
    )
    from cairn.scheduling import FeatureSpec, Scheduler
    from cairn.trainer_runtime import TrainerRuntimeError, ensure_trainer_runtime

    began = time.monotonic()
    try:
        with console.status("Checking the trainer runtime...") as status:

            def say(line: str) -> None:
                status.update(Text(f"Trainer runtime: {line}"))
                console.print(line, style="dim", markup=False, highlight=False)

            runtime = ensure_trainer_runtime(say)
    except TrainerRuntimeError as error:
        raise click.ClickException(str(error)) from None
    console.print(f"Trainer runtime ready (Python {runtime.python_version}, {runtime.root}).")

    settings = _settings(data_dir)
    address = _loopback_address(settings)
    started = False
    if not tracker_healthy(address):
        console.print(f"Starting the embedded stack (data in {settings.resolved_data_dir()})...")
        start_detached(settings)
        started = True
    try:
        scheduler_address = _loopback_address(settings, settings.scheduler_port)
        with Scheduler(scheduler_address, timeout=120) as scheduler:
            # Reused across runs of the demo, unless Cairn was reinstalled elsewhere since
            # (then the registered file is gone): the new location gets its own resources.
            path = str(sample_dataset_path())
            existing = scheduler.list_datasets(filter=_named(DATASET), limit=1)
            suffix = "" if not existing or existing[0].uri == path else f"-{_short_hash(path)}"
            feature_display = FEATURES + suffix
            dataset = (
                _first_name(scheduler.list_datasets(filter=_named(DATASET + suffix), limit=1))
                or scheduler.create_dataset(
                    DATASET + suffix,
                    path,
                    USER_ID_COLUMN,
                    ITEM_ID_COLUMN,
                    TIMESTAMP_COLUMN,
                    description="Cairn's bundled sample: 100,000 ratings of 1,000 items by "
                    "2,000 users.",
                ).name
            )
            features = (
                _first_name(scheduler.list_feature_configs(filter=_named(feature_display), limit=1))
                or scheduler.create_feature_config(
                    feature_display,
                    dataset,
                    [FeatureSpec("user_id", "categorical", 32)],
                    [
                        FeatureSpec("item_id", "categorical", 32),
                        FeatureSpec("item_category", "categorical", 8),
                    ],
                    target_column="rating",
                ).name
            )
            model = (
                _first_name(scheduler.list_model_configs(filter=_named(MODEL), limit=1))
                or scheduler.create_model_config(
                    MODEL,
                    "retrieval",
                    query_layers=[64, 32],
                    candidate_layers=[64, 32],
                    optimizer="adam",
                    learning_rate=0.005,
                ).name
            )
            job = scheduler.submit_quick_test(
                features,
                model,
                sample_percent=int(sample),
                epochs=epochs,
                batch_size=batch_size,
                display_name="demo: retrieval quick test",
            )
            console.print(
                f"Submitted quick test [bold]{job.job_id}[/] ({sample}% sample, {epochs} epochs, "
                f"batch {batch_size}); its tracker run is {job.run}."
            )
            try:
                final = follow_job(scheduler, job.name, console)
            except KeyboardInterrupt:
                if keep or not started:
                    errors.print(f"Stopped watching; job {job.job_id} keeps running.")
                    raise SystemExit(130) from None
                # The stack is about to stop: do not leave its trainer running unattended.
                errors.print(f"Interrupted: cancelling job {job.job_id}...")
                with contextlib.suppress(CairnError):  # it may have ended meanwhile
                    scheduler.cancel_job(job.name)
                    scheduler.wait_job(job.name)  # the trainer is stopped within seconds
                raise SystemExit(130) from None
    except CairnError as error:
        raise click.ClickException(str(error)) from None
    finally:
        if started and not keep:
            stop_stack(settings.resolved_data_dir(), address=address)
    elapsed = time.monotonic() - began
    metrics = dict(final.final_metrics)
    if final.state != 5:  # JOB_STATE_SUCCEEDED
        errors.print(f"The quick test did not succeed ({elapsed:.0f} s).")
        sys.exit(1)
    recall = "  ".join(
        f"Recall@{k} {metrics[f'test/recall_at_{k}']:.3f}"
        for k in (5, 10, 50, 100)
        if f"test/recall_at_{k}" in metrics
    )
    console.print(f"\n[bold green]Held-out {recall}[/]  (demo took {elapsed:.0f} s)")
    hint = f" --data-dir {data_dir}" if data_dir else ""
    run_id = final.run.rsplit("/", 1)[-1]
    stack = "" if keep else "  (after `cairn up --detach`)"
    console.print(
        "Where to look next" + stack + ":\n"
        f"  cairn jobs show {final.job_id}      stages, state history, final metrics\n"
        f"  cairn runs show {run_id[:8]}"
        "              the run: params, per-epoch history, artifacts\n"
        "  cairn analytics leaderboard quick-tests --metric test/recall_at_10\n"
        "  cairn jobs submit quick-test --feature-config "
        f"{feature_display} --model-config {MODEL} --epochs 5 --watch\n"
        f"  http://{settings.host}:{settings.gateway_port}/docs         the REST API"
    )
    if started and keep:
        errors.print(f"The stack keeps running ({address}); stop it with: cairn down{hint}")


COMMANDS: list[click.Command] = [demo]
