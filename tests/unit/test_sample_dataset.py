"""The bundled sample dataset: it is exactly what the generator produces, it has the promised
shape, and its structure is real (popularity, taste, collaborative and drift signals) so the
demo's models have something to learn. Margins come from the data's own sampling error."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest

from cairn import sample_data

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "generate_sample_dataset.py"
COMMITTED = ROOT / "cairn" / "sample_data" / sample_data.FILE_NAME

IntArray = npt.NDArray[np.int64]


def _load_generator() -> ModuleType:
    # scripts/ is not a package: load the file as a module (registered first, for dataclasses).
    spec = importlib.util.spec_from_file_location("generate_sample_dataset", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def generated_csv(generator: ModuleType) -> bytes:
    csv_bytes: bytes = generator.generate_csv()
    return csv_bytes


@pytest.fixture(scope="module")
def committed() -> bytes:
    return COMMITTED.read_bytes()


@dataclass(frozen=True)
class Table:
    header: list[str]
    user_ids: list[str]
    item_ids: list[str]
    users: IntArray  # codes 0..users-1
    items: IntArray  # codes 0..items-1
    categories: IntArray  # codes 0..categories-1
    ratings: IntArray
    timestamps: IntArray
    n_users: int
    n_items: int
    n_categories: int


@pytest.fixture(scope="module")
def table(committed: bytes) -> Table:
    text = gzip.decompress(committed).decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    user_ids, item_ids, cats, ratings, timestamps = zip(*reader, strict=True)
    user_names, users = np.unique(np.array(user_ids), return_inverse=True)
    item_names, items = np.unique(np.array(item_ids), return_inverse=True)
    cat_names, categories = np.unique(np.array(cats), return_inverse=True)
    return Table(
        header=header,
        user_ids=list(user_ids),
        item_ids=list(item_ids),
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        categories=categories.astype(np.int64),
        ratings=np.array([int(r) for r in ratings], dtype=np.int64),
        timestamps=np.array([int(t) for t in timestamps], dtype=np.int64),
        n_users=len(user_names),
        n_items=len(item_names),
        n_categories=len(cat_names),
    )


# --- the committed file is the generator's output -------------------------------------------


def test_committed_content_is_what_the_generator_produces(
    committed: bytes, generated_csv: bytes
) -> None:
    assert gzip.decompress(committed) == generated_csv, (
        "cairn/sample_data/interactions.csv.gz is stale: run scripts/generate_sample_dataset.py"
    )


def test_committed_bytes_are_what_the_generator_produces(
    generator: ModuleType, committed: bytes, generated_csv: bytes
) -> None:
    if not generator.reference_zlib():
        # zlib-ng deflates differently; the content test above still holds everywhere.
        pytest.skip(f"zlib {zlib.ZLIB_RUNTIME_VERSION} is not the reference zlib")
    assert generator.gzip_bytes(generated_csv) == committed


def test_gzip_header_is_reproducible(committed: bytes) -> None:
    assert committed[:3] == b"\x1f\x8b\x08"  # gzip, deflate
    assert committed[3] == 0, "no file name, comment or extra field in the header"
    assert int.from_bytes(committed[4:8], "little") == 0, "mtime 0"
    assert committed[9] == 255, "OS unknown, not the building platform's"


def test_staleness_detects_changed_content(generator: ModuleType, generated_csv: bytes) -> None:
    assert generator.staleness(generator.gzip_bytes(generated_csv), generated_csv) is None
    changed = generated_csv.replace(b",5,", b",4,", 1)
    assert generator.staleness(generator.gzip_bytes(changed), generated_csv) is not None
    stamped = bytearray(generator.gzip_bytes(generated_csv))
    stamped[4] = 1  # a modification time in the header: same content, different bytes
    assert generator.staleness(bytes(stamped), generated_csv) is not None


def test_check_cli_fails_on_a_stale_file(generator: ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "interactions.csv.gz"
    stale.write_bytes(generator.gzip_bytes(b"user_id\n"))
    assert generator.main(["--check", "--output", str(stale)]) == 1
    assert generator.main(["--check", "--output", str(tmp_path / "missing.csv.gz")]) == 1


# --- the package helper and constants -------------------------------------------------------


def test_sample_dataset_path_is_the_bundled_file(committed: bytes) -> None:
    path = sample_data.sample_dataset_path()
    assert path.is_file()
    assert path.name == sample_data.FILE_NAME
    assert path.read_bytes() == committed


def test_constants_describe_the_file(table: Table) -> None:
    assert table.header == list(sample_data.COLUMN_NAMES) == list(sample_data.COLUMNS)
    for column in (
        sample_data.USER_ID_COLUMN,
        sample_data.ITEM_ID_COLUMN,
        sample_data.CATEGORY_COLUMN,
        sample_data.RATING_COLUMN,
        sample_data.TIMESTAMP_COLUMN,
    ):
        assert column in sample_data.COLUMNS
    assert dict(sample_data.COLUMNS) == {
        "user_id": "string",
        "item_id": "string",
        "item_category": "string",
        "rating": "double",
        "timestamp": "int64",
    }
    assert len(table.ratings) == sample_data.NUM_ROWS
    assert table.n_users == sample_data.NUM_USERS
    assert table.n_items == sample_data.NUM_ITEMS
    assert table.n_categories == sample_data.NUM_CATEGORIES


# --- the promised shape ---------------------------------------------------------------------


def test_shape(table: Table) -> None:
    assert all(re.fullmatch(r"u\d{5}", u) for u in set(table.user_ids))
    assert all(re.fullmatch(r"i\d{5}", i) for i in set(table.item_ids))
    assert table.ratings.min() == sample_data.MIN_RATING
    assert table.ratings.max() == sample_data.MAX_RATING
    assert set(np.unique(table.ratings).tolist()) == {1, 2, 3, 4, 5}
    # 2025, UTC
    assert table.timestamps.min() >= 1_735_689_600
    assert table.timestamps.max() < 1_767_225_600
    assert np.all(np.diff(table.timestamps) >= 0), "rows are sorted by timestamp"
    # No duplicate (user, item, timestamp) rows; in fact each (user, item) appears once.
    pairs = table.users * table.n_items + table.items
    assert np.unique(pairs).size == pairs.size
    # Each item has one category.
    item_cats = np.unique(table.items * table.n_categories + table.categories)
    assert item_cats.size == table.n_items
    # Every user has enough history to be split into train and test.
    assert np.bincount(table.users).min() >= 8


# --- the structure is real and learnable ----------------------------------------------------


def _top_share(counts: IntArray, fraction: float) -> float:
    ranked = np.sort(counts)[::-1]
    top = round(fraction * ranked.size)
    return float(ranked[:top].sum() / ranked.sum())


def test_popularity_and_activity_are_skewed(table: Table) -> None:
    # Uniform data would give the top 10% about 10%; demand well over double.
    assert _top_share(np.bincount(table.items), 0.1) > 0.25
    assert _top_share(np.bincount(table.users), 0.1) > 0.25


@dataclass(frozen=True)
class Halves:
    first: npt.NDArray[np.bool_]  # row is in the first half of its user's history
    quarter: IntArray  # 0..3: position of the row in its user's history
    top: npt.NDArray[np.bool_]  # (users, categories): user's top 3 in the first half


@pytest.fixture(scope="module")
def halves(table: Table) -> Halves:
    # Rows are in time order, so a stable sort by user keeps each user's history in order.
    order = np.argsort(table.users, kind="stable")
    counts = np.bincount(table.users, minlength=table.n_users)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[table.users[order]]
    length = counts[table.users]
    first = rank < length // 2
    quarter = np.minimum(rank * 4 // length, 3)
    per_user = np.zeros((table.n_users, table.n_categories), dtype=np.int64)
    np.add.at(per_user, (table.users[first], table.categories[first]), 1)
    top_idx = np.argsort(-per_user, axis=1, kind="stable")[:, :3]
    top = np.zeros_like(per_user, dtype=bool)
    np.put_along_axis(top, top_idx, True, axis=1)
    return Halves(first=first, quarter=quarter, top=top)


def test_ratings_are_higher_for_the_users_taste(table: Table, halves: Halves) -> None:
    later = ~halves.first
    matches = halves.top[table.users, table.categories]
    liked = table.ratings[later & matches].astype(np.float64)
    other = table.ratings[later & ~matches].astype(np.float64)
    difference = liked.mean() - other.mean()
    stderr = np.sqrt(liked.var() / liked.size + other.var() / other.size)
    assert difference > 0.25, difference  # a quarter star at least: visible to a ranker
    assert difference > 5 * stderr, (difference, stderr)


def test_choices_follow_the_users_taste(table: Table, halves: Halves) -> None:
    """Later interactions fall in the user's early top categories far more than chance."""
    later = ~halves.first
    global_share = np.bincount(table.categories) / table.categories.size
    observed = halves.top[table.users[later], table.categories[later]].astype(np.float64)
    expected = (halves.top[table.users[later]] * global_share).sum(axis=1)
    lift = observed.mean() - expected.mean()
    stderr = np.sqrt((expected * (1 - expected)).sum()) / expected.size
    assert lift > 0.1, lift
    assert lift > 5 * stderr, (lift, stderr)


def test_tastes_drift_over_time(table: Table, halves: Halves) -> None:
    """Later quarters match the early taste less than earlier ones: time splits matter."""
    matches = halves.top[table.users, table.categories].astype(np.float64)
    third = matches[halves.quarter == 2]
    fourth = matches[halves.quarter == 3]
    decline = third.mean() - fourth.mean()
    stderr = np.sqrt(third.var() / third.size + fourth.var() / fourth.size)
    assert decline > 4 * stderr, (decline, stderr)


def _recall(scores: npt.NDArray[np.float64], users: IntArray, items: IntArray, k: int) -> float:
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float(np.mean([item in top[user] for user, item in zip(users, items, strict=True)]))


def test_co_consumption_beats_popularity(table: Table) -> None:
    """Item-item co-occurrence (what id-embedding models learn) beats popularity on a time
    split: the data holds collaborative structure beyond popularity and categories."""
    cut = np.quantile(table.timestamps, 0.8)
    train = table.timestamps < cut
    seen = np.zeros((table.n_users, table.n_items))
    seen[table.users[train], table.items[train]] = 1.0
    test = ~train & (seen.sum(axis=1)[table.users] > 0)
    test_users, test_items = table.users[test], table.items[test]

    popularity = np.broadcast_to(seen.sum(axis=0), seen.shape).copy()
    norms = np.sqrt(seen.sum(axis=0)) + 1e-9
    similarity = (seen.T @ seen) / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)
    neighbours = seen @ similarity
    popularity[seen > 0] = -np.inf  # recommend only unseen items
    neighbours[seen > 0] = -np.inf

    k = 50
    baseline = _recall(popularity, test_users, test_items, k)
    knn = _recall(neighbours, test_users, test_items, k)
    # Two proportions over the same test rows: the difference's stderr is at most this.
    stderr = np.sqrt((baseline * (1 - baseline) + knn * (1 - knn)) / test_users.size)
    assert knn - baseline > 5 * stderr, (knn, baseline, stderr)
