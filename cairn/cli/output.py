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


def message_data(message: Any) -> dict[str, Any]:
    """A protobuf message as plain JSON data with stable keys: every field present (defaults
    included), field names as in the proto, enums by name, timestamps in ISO-8601, NaN and
    infinite numbers as null."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.timestamp_pb2 import Timestamp

    def scalar(field: Any, value: Any) -> Any:
        if field.type == FieldDescriptor.TYPE_ENUM:
            names = field.enum_type.values_by_number
            return names[value].name if value in names else value
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if isinstance(value, Timestamp):
                if not value.seconds and not value.nanos:
                    return None
                return value.ToDatetime().isoformat() + "Z"
            return message_data(value)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    data: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            data[field.name] = {k: scalar(value_field, v) for k, v in sorted(value.items())}
        elif field.is_repeated:
            data[field.name] = [scalar(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            data[field.name] = None
        else:
            data[field.name] = scalar(field, value)
    return data
