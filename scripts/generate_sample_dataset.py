#!/usr/bin/env python3
"""Generate Cairn's bundled sample dataset: cairn/sample_data/interactions.csv.gz.

A synthetic but structured user-item interaction table for `cairn demo` (TensorFlow
Recommenders retrieval, ranking and multitask models). Columns:
user_id,item_id,item_category,rating,timestamp — one row per (user, item), sorted by time.

    python scripts/generate_sample_dataset.py                # regenerate in place
    python scripts/generate_sample_dataset.py --check        # exit 1 when the file is stale
    python scripts/generate_sample_dataset.py --output PATH  # write elsewhere

The structure is there so that models learn something real:
  * 12 item categories; 8 user taste clusters, each preferring 3 categories, and every user's
    taste is the cluster's plus individual noise;
  * Zipf-like item popularity and Pareto-like user activity;
  * ratings are higher when the item's category matches the user's current taste (plus item
    quality, user harshness and noise);
  * each user's taste drifts over their active period towards a second cluster, and a few
    categories are seasonal, so random and time-based splits differ.

Reproducibility: the output must be byte-identical on every run and machine, so
  * randomness comes only from PCG64's raw 64-bit stream (numpy guarantees the bit generators'
    streams; it does NOT guarantee Generator methods such as normal() or choice() across
    versions), turned into uniforms with exact arithmetic;
  * only IEEE-exact operations touch the data (+ - * / sqrt, floor, comparisons, and
    sequential cumulative sums): no exp/log/pow/sin, whose results vary by libm and SIMD path,
    and no np.sum, whose pairwise/unrolled order is an implementation detail;
  * only integers are written, and the gzip container is built by hand (mtime 0, no file name,
    OS byte 255) because gzip.compress(mtime=0) lets zlib write its platform's OS byte.
The deflate stream itself is zlib's: byte-identical for the reference zlib, different under
zlib-ng (some Linux distributions and Python builds). The decompressed CSV is identical
everywhere; `--check` therefore insists on the exact gzip bytes only under the reference zlib.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "cairn" / "sample_data" / "interactions.csv.gz"

SEED = 20250101
N_USERS = 2_000
N_ITEMS = 1_000
N_INTERACTIONS = 100_000
MIN_INTERACTIONS_PER_USER = 8  # every user can be split into train and test
N_CLUSTERS = 8
PREFERRED_PER_CLUSTER = 3
# Each item also has a "niche" cluster whose users pick it (1 + NICHE_BOOST) times as often:
# co-consumption structure beyond categories, which only collaborative (id) models can learn.
NICHE_BOOST = 6.0
CATEGORIES = (
    "books",
    "music",
    "movies",
    "games",
    "electronics",
    "sports",
    "outdoors",
    "kitchen",
    "beauty",
    "toys",
    "fashion",
    "garden",
)
# Seasonal categories: (peak as a fraction of the year, amplitude). Triangle waves, not cosines,
# so that no transcendental function touches the data.
SEASONALITY = {
    "outdoors": (0.55, 0.5),  # July
    "garden": (0.38, 0.5),  # May
    "sports": (0.45, 0.3),  # June
    "toys": (0.96, 0.6),  # mid December
    "electronics": (0.90, 0.3),  # late November
}
YEAR_START = 1_735_689_600  # 2025-01-01T00:00:00Z
YEAR_SECONDS = 365 * 86_400
HEADER = "user_id,item_id,item_category,rating,timestamp\n"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class _Uniforms:
    """Uniform doubles in [0, 1) from PCG64's raw stream: 53 high bits times 2**-53, exact."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def draw(self, *shape: int) -> FloatArray:
        raw = self._bits.random_raw(int(np.prod(shape, dtype=np.int64)))
        out = (np.asarray(raw, dtype=np.uint64) >> np.uint64(11)).astype(np.float64)
        return (out * (1.0 / 9_007_199_254_740_992.0)).reshape(shape)

    def normal(self, *shape: int) -> FloatArray:
        """Approximately standard normal: Irwin-Hall sum of four uniforms (no log/cos)."""
        total = self.draw(*shape) + self.draw(*shape) + self.draw(*shape) + self.draw(*shape)
        return (total - 2.0) * float(np.sqrt(3.0))

    def permutation(self, n: int) -> IntArray:
        # A stable argsort of random keys: ties (probability ~2**-40) still resolve the same way.
        return np.argsort(self.draw(n), kind="stable").astype(np.int64)


def _row_totals(weights: FloatArray) -> FloatArray:
    """Sums along the last axis in strictly sequential order (cumsum), unlike np.sum."""
    return np.cumsum(weights, axis=-1)[..., -1]


def _apportion(total: int, weights: FloatArray) -> IntArray:
    """Split `total` into integers proportional to `weights` (largest remainder method)."""
    quotas = weights * (total / float(_row_totals(weights)))
    counts = np.floor(quotas).astype(np.int64)
    short = total - int(np.cumsum(counts)[-1])
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def _sample_rows(cumulative: FloatArray, uniforms: FloatArray) -> IntArray:
    """One index per row of `cumulative` (row-wise cumulative weights), inverse-CDF style."""
    targets = uniforms * cumulative[:, -1]
    index: IntArray = np.count_nonzero(cumulative <= targets[:, None], axis=1).astype(np.int64)
    # u * total may round up to total; the duplicate-resampling loop absorbs any such pick.
    np.minimum(index, cumulative.shape[1] - 1, out=index)
    return index


def _season(categories: tuple[str, ...], frac: FloatArray) -> FloatArray:
    """Multiplier per (time, category): 1 +- amplitude, peaking at the category's peak."""
    factors = np.ones((frac.shape[0], len(categories)))
    for k, name in enumerate(categories):
        if name in SEASONALITY:
            peak, amplitude = SEASONALITY[name]
            # distance from the peak on the circle of the year, in [0, 1]: 1 at the peak
            closeness = np.abs(np.mod(frac - peak, 1.0) - 0.5) * 2.0
            factors[:, k] = 1.0 + amplitude * (2.0 * closeness - 1.0)
    return factors


@dataclass(frozen=True)
class _World:
    item_category: IntArray  # (items,)
    popularity: FloatArray  # (items,) Zipf-like weight
    quality: FloatArray  # (items,) rating offset
    item_niche: IntArray  # (items,) the cluster whose users favour the item
    user_cluster: IntArray  # (users,) taste cluster at the start of a user's history
    secondary_cluster: IntArray  # (users,) the cluster a user drifts towards
    user_primary: FloatArray  # (users, categories) taste at the start of a user's history
    user_secondary: FloatArray  # (users, categories) taste the user drifts towards
    user_drift: FloatArray  # (users,) how far the taste moves by the end of the history
    user_bias: FloatArray  # (users,) rating offset (harsh vs generous raters)
    user_counts: IntArray  # (users,) number of interactions
    user_start: FloatArray  # (users,) active window start, fraction of the year
    user_end: FloatArray  # (users,) active window end, fraction of the year


def _normalise_rows(weights: FloatArray) -> FloatArray:
    return weights / _row_totals(weights)[:, None]


def _build_world(rng: _Uniforms) -> _World:
    n_cat = len(CATEGORIES)

    # Items: uneven category sizes, categories scattered over the id range.
    category_sizes = _apportion(N_ITEMS, 0.5 + rng.draw(n_cat))
    item_category = np.repeat(np.arange(n_cat, dtype=np.int64), category_sizes)
    item_category = item_category[rng.permutation(N_ITEMS)]
    # Zipf-like popularity (exponent 1, offset 20) over a random popularity order.
    rank = rng.permutation(N_ITEMS).astype(np.float64)
    popularity = 1.0 / (rank + 20.0)
    # Popular items are a little better on average: realism, and a signal for the ranker.
    quality = 0.8 * (rng.draw(N_ITEMS) - 0.5) + 0.3 * (0.5 - rank / N_ITEMS)

    # Taste clusters: each prefers three categories, with a floor on all the others.
    cluster_taste = np.full((N_CLUSTERS, n_cat), 0.15 / n_cat)
    for c in range(N_CLUSTERS):
        preferred = rng.permutation(n_cat)[:PREFERRED_PER_CLUSTER]
        cluster_taste[c, preferred] += 0.85 * np.array([0.5, 0.3, 0.2])
    cluster_sizes = _apportion(N_USERS, 0.6 + 0.8 * rng.draw(N_CLUSTERS))
    user_cluster = np.repeat(np.arange(N_CLUSTERS, dtype=np.int64), cluster_sizes)
    user_cluster = user_cluster[rng.permutation(N_USERS)]
    # The cluster a user drifts towards is always a different one.
    offset = 1 + np.floor(rng.draw(N_USERS) * (N_CLUSTERS - 1)).astype(np.int64)
    secondary_cluster = (user_cluster + offset) % N_CLUSTERS

    def individual(clusters: IntArray) -> FloatArray:
        noise = rng.draw(N_USERS, n_cat)
        noise = _normalise_rows(noise * noise * noise)  # cubed: a spiky personal interest
        return 0.75 * cluster_taste[clusters] + 0.25 * noise

    user_primary = individual(user_cluster)
    user_secondary = individual(secondary_cluster)
    user_drift = 0.15 + 0.35 * rng.draw(N_USERS)
    user_bias = 0.35 * rng.normal(N_USERS)

    item_niche = np.floor(rng.draw(N_ITEMS) * N_CLUSTERS).astype(np.int64)

    # Activity: Lomax (Pareto II, alpha=2) weights 1/sqrt(1-u) - 1 (sqrt, not pow), shifted
    # and capped, on top of a per-user minimum: median ~30 interactions, a few heavy users.
    activity = np.minimum(1.0 / np.sqrt(1.0 - rng.draw(N_USERS)) - 0.9, 8.0)
    extra = N_INTERACTIONS - MIN_INTERACTIONS_PER_USER * N_USERS
    user_counts = MIN_INTERACTIONS_PER_USER + _apportion(extra, activity)

    # Active windows: users join through the year and stay for a while.
    user_start = 0.7 * rng.draw(N_USERS)
    user_end = user_start + (1.0 - user_start) * (0.25 + 0.75 * rng.draw(N_USERS))

    return _World(
        item_category=item_category,
        popularity=popularity,
        quality=quality,
        item_niche=item_niche,
        user_cluster=user_cluster,
        secondary_cluster=secondary_cluster,
        user_primary=user_primary,
        user_secondary=user_secondary,
        user_drift=user_drift,
        user_bias=user_bias,
        user_counts=user_counts,
        user_start=user_start,
        user_end=user_end,
    )


def _user_history(rng: _Uniforms, world: _World, user: int) -> tuple[IntArray, IntArray, IntArray]:
    """(item ids, ratings, timestamps) for one user, in time order, each item at most once."""
    n = int(world.user_counts[user])
    start, end = float(world.user_start[user]), float(world.user_end[user])
    frac = start + (end - start) * np.sort(rng.draw(n), kind="stable")
    progress = (frac - start) / (end - start)
    drift = float(world.user_drift[user]) * progress[:, None]
    taste = (1.0 - drift) * world.user_primary[user] + drift * world.user_secondary[user]

    # How much the user belongs to each cluster right now (drifting like the taste).
    membership = np.zeros((n, N_CLUSTERS))
    membership[:, world.user_cluster[user]] += 1.0 - drift[:, 0]
    membership[:, world.secondary_cluster[user]] += drift[:, 0]
    niche = membership[:, world.item_niche]  # (n, items)

    # P(item | user, time) ~ popularity x seasonal category taste x niche appeal.
    category_weight = taste * _season(CATEGORIES, frac)
    weights = world.popularity[None, :] * category_weight[:, world.item_category]
    weights = weights * (1.0 + NICHE_BOOST * niche)
    items = _sample_rows(np.cumsum(weights, axis=1), rng.draw(n))
    # Sampling is with replacement; re-draw later repeats of an item (the earliest keeps it)
    # from the items not yet taken, until every item appears once.
    while True:
        _, first = np.unique(items, return_index=True)
        repeat = np.ones(n, dtype=bool)
        repeat[first] = False
        if not repeat.any():
            break
        retry = weights[repeat]
        retry[:, items[~repeat]] = 0.0
        items[repeat] = _sample_rows(np.cumsum(retry, axis=1), rng.draw(int(repeat.sum())))

    # Ratings: the match with the user's current taste drives them; quality, harshness and
    # noise blur them. Rounded to 1..5 stars.
    rows = np.arange(n)
    chosen = taste[rows, world.item_category[items]]
    affinity = chosen / np.max(taste, axis=1)
    latent = (
        2.6
        + 1.6 * affinity
        + 0.5 * niche[rows, items]
        + world.quality[items]
        + float(world.user_bias[user])
        + 0.7 * rng.normal(n)
    )
    ratings = np.clip(np.rint(latent), 1.0, 5.0).astype(np.int64)
    timestamps = YEAR_START + np.floor(frac * YEAR_SECONDS).astype(np.int64)
    return items, ratings, timestamps


def generate_csv(seed: int = SEED) -> bytes:
    """The dataset as CSV bytes (UTF-8, \\n line ends), sorted by (timestamp, user, item)."""
    rng = _Uniforms(seed)
    world = _build_world(rng)
    users, items, ratings, timestamps = [], [], [], []
    for user in range(N_USERS):
        user_items, user_ratings, user_timestamps = _user_history(rng, world, user)
        users.append(np.full(user_items.shape[0], user, dtype=np.int64))
        items.append(user_items)
        ratings.append(user_ratings)
        timestamps.append(user_timestamps)
    user_col = np.concatenate(users)
    item_col = np.concatenate(items)
    rating_col = np.concatenate(ratings)
    ts_col = np.concatenate(timestamps)
    order = np.lexsort((item_col, user_col, ts_col))  # last key is the primary one

    category_col = world.item_category[item_col]
    lines = [HEADER]
    for i in order.tolist():
        lines.append(
            f"u{user_col[i]:05d},i{item_col[i]:05d},{CATEGORIES[category_col[i]]},"
            f"{rating_col[i]},{ts_col[i]}\n"
        )
    return "".join(lines).encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """A reproducible gzip member: fixed header (mtime 0, no name, OS unknown), level 9."""
    # ID1 ID2 CM=deflate FLG=0 (no name/comment/extra) MTIME=0 XFL=2 (max compression) OS=255
    header = struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, 2, 255)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY)
    body = deflater.compress(data) + deflater.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + body + trailer


def generate(seed: int = SEED) -> bytes:
    """The committed file's exact bytes: gzip_bytes(generate_csv())."""
    return gzip_bytes(generate_csv(seed))


def reference_zlib() -> bool:
    """Whether this Python's zlib is the reference implementation (zlib-ng deflates differently)."""
    return "ng" not in zlib.ZLIB_RUNTIME_VERSION.lower()


def staleness(committed: bytes, expected_csv: bytes) -> str | None:
    """Why `committed` is not what the generator produces, or None when it is."""
    if committed[:10] != gzip_bytes(b"")[:10]:
        return "gzip header differs (expected mtime 0, no file name, OS 255)"
    try:
        content = zlib.decompress(committed[10:], -zlib.MAX_WBITS)
    except zlib.error as exc:
        return f"not a valid gzip stream: {exc}"
    if content != expected_csv:
        return "decompressed CSV content differs"
    if committed != gzip_bytes(expected_csv) and reference_zlib():
        return "compressed bytes differ"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write")
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate in memory; exit 1 when the file at --output differs",
    )
    args = parser.parse_args(argv)
    output: Path = args.output
    if args.check and not output.is_file():
        print(f"{output}: missing", file=sys.stderr)
        return 1
    started = time.perf_counter()
    csv = generate_csv()
    elapsed = time.perf_counter() - started
    if args.check:
        problem = staleness(output.read_bytes(), csv)
        if problem is not None:
            print(f"{output}: stale ({problem}); run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{output}: up to date")
        return 0
    data = gzip_bytes(csv)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    rows = csv.count(b"\n") - 1
    print(f"wrote {output}: {rows} rows, {len(data)} bytes gzip, {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
