"""A data scientist's own data, through `mlops run --data FILE -p ...` only: any column names, anchored frequencies,
missing targets (trailing ones too), dynamic features; each forecast's start and length checked.

Each dataset trains with the tiny parameters (conftest.TINY: PredictionLength=7, ContextLength=14) and registers an
Approved version (-p ModelApprovalStatus=Approved), which the inference pipeline then uses by default.
"""
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, run_mlops
from mlops.engine.execution import Execution
from mlops.engine.records import Records

HORIZON, CONTEXT = 7, 14


def latest(root: Path) -> Execution:
    home = root / ".mlops"
    return Execution.load(Records(home / "runs.db").executions(1)[0]["id"], home)


def forecasts_of(execution: Execution) -> pd.DataFrame:
    uri = execution.outputs["ForecastReport"]["forecasts"]
    return pd.read_csv(execution.home / "store" / uri[len("s3://"):] / "forecasts.csv", dtype={"item_id": str},
                       parse_dates=["timestamp"])


def train_then_forecast(root: Path, history: Path, future: Path, shape: list[str]) -> tuple[Execution, Execution]:
    "Train on `history` and forecast `future`, both through `mlops run --data ... -p ...`; (training, inference)."
    trained = run_mlops("run", "--data", history, *TINY, "-p", "ModelApprovalStatus=Approved", *shape, cwd=root)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    training = latest(root)
    inferred = run_mlops("run", "--pipeline", "inference", "--data", future, cwd=root)
    assert inferred.returncode == 0, inferred.stdout + inferred.stderr
    return training, latest(root)


def check_forecasts(forecasts: pd.DataFrame, expected_starts: dict[str, pd.Timestamp], offset):
    "Every item forecast once, HORIZON points from its expected start, one `offset` apart."
    assert sorted(forecasts["item_id"].unique()) == sorted(expected_starts)
    for item, start in expected_starts.items():
        stamps = forecasts.loc[forecasts["item_id"] == item, "timestamp"].tolist()
        assert stamps == [start + k * offset for k in range(HORIZON)], (item, stamps[:3], start)


# --- weekly, Monday-anchored: sku, week, units; no static or dynamic columns; missing targets, trailing ones too ----

WEEKS = 60


def weekly_history(root: Path) -> tuple[Path, Path, dict]:
    "history.csv (60 weeks of 6 skus), future.csv (the same and 7 empty future weeks), and the expected forecast starts."
    rng = np.random.default_rng(7)
    weeks = pd.date_range("2023-01-02", periods=WEEKS, freq="W-MON")  # Mondays
    rows = []
    for s in range(6):
        units = np.round(20 + 5 * np.sin(np.arange(WEEKS) / 4 + s) + rng.normal(0, 1, WEEKS), 1).astype(object)
        units[10 + s] = ""  # a missing week inside the history
        rows += [(f"sku-{s}", w.date().isoformat(), u) for w, u in zip(weeks, units)]
    frame = pd.DataFrame(rows, columns=["sku", "week", "units"])
    # sku-2 and sku-4 have not reported their last two weeks yet: trailing missing targets in the history
    late = frame["sku"].isin(["sku-2", "sku-4"]) & frame["week"].isin([weeks[-1].date().isoformat(), weeks[-2].date().isoformat()])
    frame.loc[late, "units"] = ""
    history = root / "weekly.csv"
    frame.to_csv(history, index=False)
    future_weeks = pd.date_range(weeks[-1] + pd.offsets.Week(weekday=0), periods=HORIZON, freq="W-MON")
    future = pd.concat([frame, pd.DataFrame([(f"sku-{s}", w.date().isoformat(), "") for s in range(6) for w in future_weeks],
                                            columns=frame.columns)])
    future_path = root / "weekly-future.csv"
    future.sample(frac=1, random_state=0).to_csv(future_path, index=False)  # in any order
    return history, future_path, {f"sku-{s}": weeks[-1] + pd.Timedelta(weeks=1) for s in range(6)}


WEEKLY_SHAPE = ["-p", "ItemIdColumn=sku", "-p", "TimestampColumn=week", "-p", "TargetColumn=units", "-p", "TimeFreq=W-MON"]


def test_weekly_monday_data_with_its_own_column_names_trains_and_forecasts(tmp_path):
    history, future, starts = weekly_history(tmp_path)
    training, inference = train_then_forecast(tmp_path, history, future, WEEKLY_SHAPE)
    assert training.status == "Succeeded" and inference.status == "Succeeded"
    hyperparameters = json.loads((training.folder / "TrainDeepAR" / "hyperparameters.json").read_text())
    assert hyperparameters["time_freq"] == "W"  # DeepAR's unit for W-MON, mapped by the feature step
    state_uri = training.outputs["FeatureEngineering"]["state"]
    state = json.loads((training.home / "store" / state_uri[len("s3://"):] / "feature_state.json").read_text())
    assert state["columns"] == {"item_id": "sku", "timestamp": "week", "target": "units", "static_cat": [], "dynamic_real": []}
    assert (state["freq"], state["time_freq"]) == ("W-MON", "W")
    forecasts = forecasts_of(inference)
    check_forecasts(forecasts, starts, pd.offsets.Week(weekday=0))  # sku-2 and sku-4 too: no early start
    assert (forecasts["timestamp"].dt.dayofweek == 0).all()  # Mondays
    assert len(forecasts) == 6 * HORIZON


# --- hourly, a price column as the only dynamic feature ---------------------------------------------------------

HOURS = 24 * 5


def hourly_history(root: Path) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(3)
    hours = pd.date_range("2024-03-01 00:00", periods=HOURS + HORIZON, freq="h")
    frames = []
    for s in range(4):
        price = np.round(10 + (np.arange(len(hours)) // 24 % 3) - 0.5 * s, 2)
        demand = np.round(50 - 2 * price + 10 * np.sin(2 * np.pi * hours.hour.to_numpy() / 24) + rng.normal(0, 1, len(hours)), 2)
        demand = demand.astype(object)
        demand[HOURS:] = ""  # the future hours: price known, demand not
        frames.append(pd.DataFrame({"series": f"shop-{s}", "hour": hours.strftime("%Y-%m-%d %H:%M:%S"), "demand": demand,
                                    "price": price}))
    future = pd.concat(frames)
    history = future[future["demand"] != ""]
    history_path, future_path = root / "hourly.csv", root / "hourly-future.csv"
    history.to_csv(history_path, index=False)
    future.to_csv(future_path, index=False)
    return history_path, future_path, {f"shop-{s}": hours[HOURS] for s in range(4)}


def test_hourly_data_with_a_price_as_its_only_dynamic_feature(tmp_path):
    history, future, starts = hourly_history(tmp_path)
    shape = ["-p", "ItemIdColumn=series", "-p", "TimestampColumn=hour", "-p", "TargetColumn=demand",
             "-p", "DynamicRealColumns=price", "-p", "TimeFreq=h"]
    training, inference = train_then_forecast(tmp_path, history, future, shape)
    hyperparameters = json.loads((training.folder / "TrainDeepAR" / "hyperparameters.json").read_text())
    assert hyperparameters["time_freq"] == "H"
    train_uri = training.outputs["FeatureEngineering"]["train"]
    record = json.loads((training.home / "store" / train_uri[len("s3://"):] / "train.json").read_text().splitlines()[0])
    assert len(record["dynamic_feat"]) == 1 and "cat" not in record  # the price, and no categories
    check_forecasts(forecasts_of(inference), starts, pd.Timedelta(hours=1))


# --- what is refused before anything runs, and what a refused file leaves behind ----------------------------------

def nothing_written(root: Path):
    "No execution folder and no staged data in the local store."
    home = root / ".mlops"
    assert not list((home / "runs").glob("*")), "an execution folder was created"
    assert not list((home / "store" / "mlops-local" / "data").glob("*/*")), "the data was staged"


@pytest.mark.parametrize("parameter,words", [
    ("PredictionLength=0", "parameter PredictionLength = '0': must be a positive integer (1 or more)"),
    ("PredictionLength=-3", "parameter PredictionLength = '-3': must be a positive integer"),
    ("ContextLength=0", "parameter ContextLength = '0': must be a positive integer (1 or more)"),
    ("Epochs=abc", "parameter Epochs = 'abc': must be a positive integer"),
    ("TestWindows=0", "parameter TestWindows = 0: must be 1 or more"),
    ("TimeFreq=B", "parameter TimeFreq = 'B': must be a pandas frequency that DeepAR supports: minutes (min, 15min), hours"),
    ("ItemIdColumn=", "parameter ItemIdColumn = '': must be one column name"),
    ("TargetColumn=item_id", "column 'item_id' is given two roles"),
    ("QualityThreshold=nan", "parameter QualityThreshold = nan: must be a finite number"),
])
def test_a_parameter_out_of_range_is_refused_before_any_step(tmp_path, parameter, words):
    data = tmp_path / "sales.csv"
    data.write_text("item_id,timestamp,target\n" + "".join(f"a,2024-01-{d:02d},{d}\n" for d in range(1, 29)))
    result = run_mlops("run", "--data", data, "-p", parameter, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert words in message and "Nothing was run" in message, message
    nothing_written(tmp_path)


def test_a_file_of_nul_bytes_is_refused_by_what_it_is_and_never_copied(tmp_path):
    data = tmp_path / "sales.csv"
    with open(data, "wb") as f: f.truncate(64 << 20)  # 64 MiB of NUL bytes (sparse): what a crashed copy leaves
    result = run_mlops("run", "--data", data, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"{data}: is not a CSV or Parquet file" in message and "NUL bytes only" in message and "Fix: give a CSV" in message
    nothing_written(tmp_path)


def test_a_file_that_is_a_zip_archive_is_named_so(tmp_path):
    import zipfile
    data = tmp_path / "sales.csv"
    with zipfile.ZipFile(data, "w") as z: z.writestr("sheet.xml", "<x/>")
    result = run_mlops("run", "--data", data, cwd=tmp_path)
    assert result.returncode == 2 and "it is a ZIP archive" in " ".join(result.stderr.split())
    nothing_written(tmp_path)


def test_a_value_too_large_for_training_names_item_line_and_your_path_and_leaves_no_copy(tmp_path):
    data = tmp_path / "sales.csv"
    days = pd.date_range("2024-01-01", periods=56, freq="D").strftime("%Y-%m-%d")
    rows = [f"{item},{day},{d % 7}\n" for item in "ab" for d, day in enumerate(days)]
    rows[60] = rows[60].rsplit(",", 1)[0] + ",1e308\n"  # item b, its 5th row
    data.write_text("item_id,timestamp,target\n" + "".join(rows))
    result = run_mlops("run", "--data", data, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"{data}: column 'target', line 62, item 'b': 1e308 is beyond what training can take" in message, message
    assert "Fix: rescale the column" in message
    assert "input/data" not in message  # your path, not the staged copy
    execution = latest(tmp_path)
    assert not list((execution.folder / "FeatureEngineering" / "input").glob("data/*"))
    assert not list((tmp_path / ".mlops" / "store" / "mlops-local" / "data").glob("*/*"))
    outputs = tmp_path / ".mlops" / "store" / "mlops-local" / "DeepARTraining" / execution.id / "FeatureEngineering"
    assert [p.name for p in outputs.iterdir()] == ["report"]  # no train, test or state: only the executed notebook


def test_columns_it_does_not_have_are_named_with_the_parameters_to_pass(tmp_path):
    data = tmp_path / "sales.csv"
    data.write_text("sku,ds,units_sold\n" + "".join(f"a,2024-01-{d:02d},{d}\n" for d in range(1, 29)))
    result = run_mlops("run", "--data", data, cwd=tmp_path)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "missing columns 'item_id', 'timestamp', 'target' (found: 'sku', 'ds', 'units_sold')" in message, message
    assert "-p ItemIdColumn=..., -p TargetColumn=..., -p TimestampColumn=..." in message


def test_dropped_series_are_listed_with_their_reason_in_the_run_summary(tmp_path):
    data = tmp_path / "sales.csv"
    days = pd.date_range("2024-01-01", periods=60, freq="D").strftime("%Y-%m-%d")
    rows = [f"long-{i},{d},{(i + k) % 9}\n" for i in range(4) for k, d in enumerate(days)]
    rows += [f"short,{d},1\n" for d in days[:10]] + [f"empty,{d},\n" for d in days]
    data.write_text("item_id,timestamp,target\n" + "".join(rows))
    result = run_mlops("run", "--data", data, *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "FeatureEngineering: note: dropped 1 series with fewer than 21 observed points" in out and ": short" in out
    assert "FeatureEngineering: note: dropped 1 series with no observed target at all: empty" in out


def test_unseen_categories_at_inference_are_counted_with_their_fallback(tmp_path, small_demo):
    columns = ["--static-cat-columns", "store,category", "--dynamic-real-columns", "promo"]
    train = run_mlops("features", "--input", small_demo, "--output", tmp_path / "train", *columns)
    assert train.returncode == 0, train.stderr
    future = pd.read_csv(small_demo, dtype=str, keep_default_na=False)
    future.loc[future["item_id"] == future["item_id"].iloc[0], "store"] = "store_new"
    future.to_csv(tmp_path / "future.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    infer = run_mlops("features", "--mode", "infer", "--input", tmp_path / "future.csv", "--output", tmp_path / "infer",
                      "--state", tmp_path / "train" / "state")
    assert infer.returncode == 0, infer.stderr
    state = json.loads((tmp_path / "train" / "state" / "feature_state.json").read_text())
    fallback = next(v for v, i in state["cat_maps"]["store"].items() if i == state["cat_fallback"]["store"])
    assert f"1 item(s) have a store value unseen in training: they use {fallback!r}" in " ".join(infer.stdout.split())


def test_weekly_data_declared_as_plain_w_is_told_its_anchor(tmp_path):
    history, _, _ = weekly_history(tmp_path)
    result = run_mlops("run", "--data", history, *WEEKLY_SHAPE[:-2], "-p", "TimeFreq=W", cwd=tmp_path)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "a Monday, is not a point of the declared frequency 'W' (W-SUN: weeks dated on Sundays)" in message, message
    assert "Fix: declare the frequency the timestamps follow: 'W-MON'" in message and str(history) in message


def test_mlops_params_lists_every_parameter_with_type_default_and_meaning(tmp_path):
    result = run_mlops("params", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("ItemIdColumn", "TimestampColumn", "TargetColumn", "StaticCatColumns", "DynamicRealColumns", "TimeFreq",
                 "PredictionLength", "Epochs", "InputDataUri", "QualityThreshold"):
        assert rows[name]["meaning"] and rows[name]["type"], name
    assert rows["PredictionLength"]["allowed"].startswith("a positive integer")
    table = run_mlops("params", "--pipeline", "inference")
    assert table.returncode == 0 and "InputDataUri" in table.stdout
