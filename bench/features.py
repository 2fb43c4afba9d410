"""Benchmark: writing DeepAR train + test JSON Lines for N items × T daily points.

Measured side by side in one run:
  (a) mlops.data.features: fit the state, encode all items at once, one orjson call per record;
  (b) the straightforward per-series way of SageMaker's public DeepAR example notebooks: loop over items,
      pandas slicing per series, their `encode_target` (NaN → "NaN" per value), one `json.dumps` per record;
  (c) the floor: the same encoder as (a) serializing records whose Python lists are already prepared.
Prints a/b and a/c (time ratios; below 1 means (a) is faster) and the peak memory of (a).

Usage: python bench/features.py [--items 10000] [--points 1000]
"""
import argparse
import gc
import json
import math
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from mlops.data.features import build_features
from mlops.data.series import SeriesColumns, TimeSeriesTable
from mlops.files import atomic_write

PREDICTION_LENGTH, CONTEXT_LENGTH, TEST_WINDOWS = 14, 28, 1
COLUMNS = SeriesColumns(static_cat=("store", "category"), dynamic_real=("promo",))


def make_table(items: int, points: int, seed: int = 0) -> TimeSeriesTable:
    "A validated-shape table (sorted by item and timestamp) with 1% missing targets."
    rng = np.random.default_rng(seed)
    target = rng.poisson(20, items * points).astype("float64")
    target[rng.random(items * points) < 0.01] = np.nan
    target[points - 1::points] = 1.0  # every series ends with an observation, so both writers cut it alike
    frame = pd.DataFrame({
        "item_id": np.repeat([f"item_{i:06d}" for i in range(items)], points),
        "timestamp": np.tile(pd.date_range("2020-01-01", periods=points, freq="D").to_numpy(), items),
        "target": target,
        "store": np.repeat(rng.choice([f"store_{i}" for i in range(20)], items), points),
        "category": np.repeat(rng.choice([f"cat_{i}" for i in range(8)], items), points),
        "promo": (rng.random(items * points) < 0.05).astype("float64"),
    })
    return TimeSeriesTable(frame, COLUMNS, "D", {"source": "bench"})


def ours(table: TimeSeriesTable, out: Path) -> None:
    build_features(table, out, "train", prediction_length=PREDICTION_LENGTH, context_length=CONTEXT_LENGTH,
                   test_windows=TEST_WINDOWS)


def encode_target(ts):
    "As in SageMaker's DeepAR example notebooks: missing values as the string NaN."
    return [x if np.isfinite(x) else "NaN" for x in ts]


def series_to_jsonline(ts, cat=None, dynamic_feat=None):
    "As in SageMaker's DeepAR example notebooks (series_to_obj + json.dumps)."
    obj = {"start": str(ts.index[0]), "target": encode_target(ts)}
    if cat is not None:
        obj["cat"] = cat
    if dynamic_feat is not None:
        obj["dynamic_feat"] = dynamic_feat
    return json.dumps(obj)


def per_series(table: TimeSeriesTable, out: Path) -> None:
    "The loop of the public examples: one pandas series per item, sliced, encoded and dumped one at a time."
    frame = table.frame
    cat_maps = {c: {v: i for i, v in enumerate(sorted(frame[c].unique()))} for c in COLUMNS.static_cat}
    holdout = PREDICTION_LENGTH * TEST_WINDOWS
    train_lines, test_lines = [], []
    for item, rows in frame.groupby("item_id", sort=True):
        ts = rows.set_index("timestamp")["target"]
        promo = rows["promo"]
        cat = [cat_maps[c][rows[c].iloc[0]] for c in COLUMNS.static_cat]
        train_lines.append(series_to_jsonline(ts[:-holdout], cat, [promo[:-holdout].tolist()]))
        test_lines.append(series_to_jsonline(ts, cat, [promo.tolist()]))
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    (out / "train" / "train.json").write_text("\n".join(train_lines) + "\n")
    (out / "test" / "test.json").write_text("\n".join(test_lines) + "\n")


def prepared_records(table: TimeSeriesTable) -> tuple[list[dict], list[dict]]:
    "The records of (a) as plain Python lists, built outside the timed floor."
    train, test = [], []
    for path, records in [("train/train.json", train), ("test/test.json", test)]:
        with tempfile.TemporaryDirectory() as tmp:
            ours(table, Path(tmp))
            records += [json.loads(line) for line in (Path(tmp) / path).read_text().splitlines()]
    return train, test


def floor(train: list[dict], test: list[dict], out: Path) -> None:
    option = orjson.OPT_APPEND_NEWLINE
    atomic_write(out / "train" / "train.json", b"".join(orjson.dumps(r, option=option) for r in train))
    atomic_write(out / "test" / "test.json", b"".join(orjson.dumps(r, option=option) for r in test))


def timed(fn, *args, repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def same_records(a: Path, b: Path, name: str) -> bool:
    lines_a, lines_b = (a / name).read_text().splitlines(), (b / name).read_text().splitlines()
    return len(lines_a) == len(lines_b) and all(json.loads(x) == json.loads(y) for x, y in zip(lines_a, lines_b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000)
    args = parser.parse_args()
    table = make_table(args.items, args.points)
    print(f"{args.items:,} items × {args.points:,} points = {args.items * args.points:,} observations "
          f"(prediction_length {PREDICTION_LENGTH}, test_windows {TEST_WINDOWS})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_a = timed(ours, table, tmp / "a", repeat=2)
        t_b = timed(per_series, table, tmp / "b")
        train, test = prepared_records(table)
        t_c = timed(floor, train, test, tmp / "c", repeat=2)
        del train, test
        assert same_records(tmp / "a", tmp / "b", "train/train.json") and same_records(tmp / "a", tmp / "b", "test/test.json"), \
            "(a) and (b) wrote different records"
        size = sum(p.stat().st_size for p in (tmp / "a").rglob("*.json"))
        gc.collect()
        tracemalloc.start()
        ours(table, tmp / "m")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"(a) mlops.data.features     {t_a:8.2f} s")
    print(f"(b) per-series json.dumps   {t_b:8.2f} s")
    print(f"(c) floor: orjson on lists  {t_c:8.2f} s")
    print(f"a/b = {t_a / t_b:.3f}  ({t_b / t_a:.1f}× faster than the per-series loop; target ≥ 10×)")
    print(f"a/c = {t_a / t_c:.3f}  (target ≤ 2)")
    print(f"peak memory of (a): {peak / 2**20:,.0f} MiB (Python allocations, tracemalloc) for {size / 2**20:,.0f} MiB of JSON Lines")


if __name__ == "__main__":
    main()
