"""Printing for the CLI: readable rich tables for people, `--json` for scripts."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table


def _width() -> int | None:
    """A terminal's own width; piped output (no terminal) gets room instead of rich's 80
    columns, so wide tables are not squeezed into unreadable slivers (COLUMNS overrides)."""
    if sys.stdout.isatty():
        return None
    return int(os.environ.get("COLUMNS", "200"))


console = Console(width=_width())
errors = Console(stderr=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def print_json(data: Any) -> None:
    click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=False))


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    empty: str = "nothing to show",
) -> None:
    if not rows:
        console.print(f"[dim]{empty}[/dim]")
        return
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold", min_width=min(len(column), 12))
    for row in rows:
        table.add_row(*(format_value(v) for v in row))
    console.print(table)


def emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    """JSON for scripts, or the human rendering."""
    if as_json:
        print_json(data)
    else:
        render()
