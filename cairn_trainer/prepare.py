"""Data preparation (the ExampleGen stage from the scheduler's point of view): read the
dataset, keep a seeded sample of it, split it and write work_dir/data/{train,test}/part.csv
for CsvExampleGen.

Values are checked against the declared column types here, where a bad cell can be named by
row and column, rather than surfacing later as a TensorFlow cast error.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import importlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from cairn_trainer.spec import DatasetSpec, Spec
from cairn_trainer.splits import sample_rows, split_rows

logger = logging.getLogger(__name__)

Row = dict[str, Any]

# Parquet is read in record batches of this many rows, so memory follows the sample.
_PARQUET_BATCH_ROWS = 65_536


@dataclass
class PrepareResult:
    rows_read: int = 0
    rows_sampled: int = 0
    rows_dropped: int = 0
    train_rows: int = 0
    test_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"sampled {self.rows_sampled} of {self.rows_read} rows; "
            f"train {self.train_rows}, test {self.test_rows}"
        )
        if self.rows_dropped:
            text += f"; dropped {self.rows_dropped} rows missing a required value"
        return text


class DataError(ValueError):
    """The dataset cannot be used as declared; the message names the file, row and column."""


def _dataset_files(uri: str, extension: str) -> list[str]:
    if os.path.isdir(uri):
        files = sorted(glob.glob(os.path.join(uri, "**", f"*.{extension}"), recursive=True))
        if not files:
            raise DataError(f"no .{extension} files under {uri}")
        return files
    if not os.path.exists(uri):
        raise DataError(f"dataset not found: {uri}")
    return [uri]


def _open_text(path: str) -> IO[str]:
    """A CSV file as text, gzip- or bzip2-compressed ones decompressed on the fly."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    if path.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_csv(dataset: DatasetSpec) -> Iterator[Row]:
    wanted = dataset.column_names
    for path in _dataset_files(dataset.uri, "csv"):
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [name for name in wanted if name not in header]
            if missing:
                raise DataError(
                    f"{path}: declared columns missing from the header: {', '.join(missing)} "
                    f"(header: {', '.join(header) or 'empty'})"
                )
            for row in reader:
                yield {name: row.get(name) for name in wanted}


def _read_parquet(dataset: DatasetSpec) -> Iterator[Row]:
    # Imported here: the module is also imported where pyarrow is absent (services' tests).
    pa_dataset: Any = importlib.import_module("pyarrow.dataset")

    files = _dataset_files(dataset.uri, "parquet")
    source = pa_dataset.dataset(files, format="parquet")
    names = set(source.schema.names)
    missing = [name for name in dataset.column_names if name not in names]
    if missing:
        raise DataError(
            f"{dataset.uri}: declared columns missing from the Parquet schema: {', '.join(missing)}"
        )
    for batch in source.to_batches(columns=dataset.column_names, batch_size=_PARQUET_BATCH_ROWS):
        yield from batch.to_pylist()


def read_rows(dataset: DatasetSpec) -> Iterator[Row]:
    """The dataset's rows (declared columns only), streamed."""
    return _read_csv(dataset) if dataset.format == "csv" else _read_parquet(dataset)


def _cell(value: Any, column_type: str, column: str, row_number: int) -> str:
    """One value as CsvExampleGen should see it: "" for missing, numbers in a form whose
    inferred type matches the declared one (int64 -> integer text, double -> float text)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if hasattr(value, "isoformat") and not isinstance(value, str):
        value = value.isoformat()
    if column_type == "string":
        # CsvExampleGen reads line by line: embedded newlines would split a record.
        return str(value).replace("\r", " ").replace("\n", " ")
    text = str(value).strip()
    if not text:
        return ""
    if column_type == "int64":
        try:
            return str(int(text))  # exact: ids above 2**53 must not collapse through float
        except ValueError:
            pass  # "3.0" and the like: checked below
    if isinstance(value, bool):
        text = str(int(value))
    try:
        number = float(text)
    except ValueError:
        raise DataError(
            f"row {row_number}, column {column!r}: {text[:40]!r} is not a number "
            f"(declared {column_type})"
        ) from None
    if not math.isfinite(number):
        raise DataError(f"row {row_number}, column {column!r}: {text!r} is not finite")
    if column_type == "int64":
        if not number.is_integer():
            raise DataError(
                f"row {row_number}, column {column!r}: {text!r} is not an integer (declared int64)"
            )
        return str(int(number))
    return repr(number)


def _clean_rows(spec: Spec, rows: Iterator[Row], result: PrepareResult) -> Iterator[Row]:
    types = {column.name: column.type for column in spec.dataset.columns}
    required = [spec.dataset.user_column, spec.dataset.item_column]
    if spec.features.target_column:
        required.append(spec.features.target_column)
    if spec.split.strategy != "random":
        required.append(spec.dataset.timestamp_column)
    for number, row in enumerate(rows, start=1):
        result.rows_read += 1
        cleaned = {name: _cell(value, types[name], name, number) for name, value in row.items()}
        if any(not cleaned[name] for name in required):
            # A row without its user, item, target or timestamp cannot be used for training.
            result.rows_dropped += 1
            continue
        yield cleaned


def _write_csv(path: str, columns: list[str], rows: list[Row]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def prepare_data(spec: Spec, data_dir: str) -> PrepareResult:
    """Writes data_dir/train/part.csv and data_dir/test/part.csv; returns counts."""
    result = PrepareResult()
    cleaned = _clean_rows(spec, read_rows(spec.dataset), result)
    # Sampling after cleaning keeps the sample's size honest; the seed is the split's, so
    # one seed makes the whole data preparation reproducible.
    sampled = list(sample_rows(cleaned, spec.sample_percent, spec.split.seed))
    result.rows_sampled = len(sampled)
    try:
        split = split_rows(
            sampled,
            spec.split.strategy,
            spec.split.test_fraction,
            seed=spec.split.seed,
            user_column=spec.dataset.user_column,
            timestamp_column=spec.dataset.timestamp_column,
        )
    except ValueError as error:
        raise DataError(
            f"{error} ({result.rows_read} rows read, {result.rows_dropped} dropped, "
            f"{result.rows_sampled} sampled at {spec.sample_percent:g}%)"
        ) from None
    result.train_rows = len(split.train)
    result.test_rows = len(split.test)
    result.notes.extend(split.notes)
    columns = spec.dataset.column_names
    _write_csv(os.path.join(data_dir, "train", "part.csv"), columns, list(split.train))
    _write_csv(os.path.join(data_dir, "test", "part.csv"), columns, list(split.test))
    for note in result.notes:
        logger.warning("%s", note)
    return result
