"""Reading a dataset file's schema and row count when it is registered (pyarrow: CSV,
gzip-compressed CSV and Parquet), so a bad location or a missing column is reported at
registration, not minutes into a job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
import pyarrow.parquet as pq

from services.common.errors import InvalidArgument

FORMATS = ("CSV", "PARQUET")


@dataclass(frozen=True)
class DatasetFacts:
    path: Path
    format: str
    columns: list[dict[str, str]]
    row_count: int
    size_bytes: int


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise InvalidArgument(
            f"dataset.uri {uri!r}: only local paths and file:// URIs are supported",
            field="dataset.uri",
            reason="UNSUPPORTED_URI",
        )
    return Path(uri)


def infer_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "PARQUET"
    if name.endswith((".csv", ".csv.gz", ".csv.bz2")):
        return "CSV"
    raise InvalidArgument(
        f"cannot tell the format of {path.name!r} from its name: set dataset.format",
        field="dataset.format",
        reason="UNKNOWN_FORMAT",
    )


def _column_type(arrow_type: pa.DataType) -> str:
    """How the trainer reads a column. Times, dates and booleans are text to it (the time
    splits parse ISO-8601 text as well as numbers)."""
    if pa.types.is_integer(arrow_type):
        return "INT64"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "DOUBLE"
    return "STRING"


def inspect_dataset(uri: str, format_name: str) -> DatasetFacts:
    path = local_path(uri).expanduser()
    if not path.is_absolute():
        path = path.resolve()
    if not path.is_file():
        raise InvalidArgument(
            f"dataset.uri {uri!r}: no such file", field="dataset.uri", reason="DATASET_NOT_FOUND"
        )
    chosen = format_name or infer_format(path)
    try:
        if chosen == "PARQUET":
            metadata = pq.ParquetFile(path).metadata  # type: ignore[no-untyped-call]
            schema = pq.read_schema(path)  # type: ignore[no-untyped-call]
            row_count = int(metadata.num_rows)
        else:
            schema, row_count = _scan_csv(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise InvalidArgument(
            f"dataset.uri {uri!r} is not readable as {chosen}: {str(error).splitlines()[0]}",
            field="dataset.uri",
            reason="DATASET_UNREADABLE",
        ) from None
    columns = [{"name": f.name, "type": _column_type(f.type)} for f in schema]
    return DatasetFacts(path, chosen, columns, row_count, path.stat().st_size)


def _scan_csv(path: Path) -> tuple[pa.Schema, int]:
    """The schema (inferred from the first block, as the trainer's reader would see it) and
    the row count, streaming: a file of any size is read in bounded memory."""
    reader = pa_csv.open_csv(path)  # type: ignore[attr-defined]
    rows = 0
    for batch in reader:
        rows += batch.num_rows
    return reader.schema, rows
