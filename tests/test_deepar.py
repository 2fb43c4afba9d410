"""Local DeepAR: hyperparameter rules, channels, metrics, artifact, inference formats and entry points."""
import json
import re
import subprocess
import sys

import pytest

from mlops.deepar.hyperparameters import DeepARHyperparameters, HyperparameterError

REQUIRED = {"time_freq": "D", "context_length": "28", "prediction_length": "14", "epochs": "20"}


# --- hyperparameters -------------------------------------------------------------------------------

def test_defaults_are_sagemakers():
    hp = DeepARHyperparameters.from_strings(REQUIRED)
    assert (hp.time_freq, hp.context_length, hp.prediction_length, hp.epochs) == ("D", 28, 14, 20)
    assert hp.cardinality == "auto" and hp.num_dynamic_feat == "auto"
    assert hp.dropout_rate == 0.1 and hp.early_stopping_patience is None
    assert hp.embedding_dimension == 10 and hp.learning_rate == 1e-3
    assert hp.likelihood == "student-T" and hp.mini_batch_size == 128
    assert hp.num_cells == 40 and hp.num_layers == 2 and hp.num_eval_samples == 100
    assert hp.test_quantiles == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def test_every_optional_hyperparameter_parses_from_its_string():
    given = {**REQUIRED, "cardinality": "[3, 4]", "dropout_rate": "0.05", "early_stopping_patience": "3",
             "embedding_dimension": "8", "learning_rate": "1e-2", "likelihood": "negative-binomial",
             "mini_batch_size": "32", "num_cells": "30", "num_dynamic_feat": "2", "num_eval_samples": "50",
             "num_layers": "3", "test_quantiles": "[0.25, 0.5, 0.75]", "time_freq": "5min"}
    hp = DeepARHyperparameters.from_strings(given)
    assert hp.cardinality == (3, 4) and hp.num_dynamic_feat == 2 and hp.early_stopping_patience == 3
    assert hp.learning_rate == 0.01 and hp.likelihood == "negative-binomial" and hp.time_freq == "5min"
    assert hp.test_quantiles == (0.25, 0.5, 0.75)
    # to_strings gives back what SageMaker passes, and parses to the same value
    assert DeepARHyperparameters.from_strings(hp.to_strings()) == hp
    assert hp.to_strings()["cardinality"] == "[3, 4]"


@pytest.mark.parametrize("value", ["auto", "ignore", ""])
def test_cardinality_and_num_dynamic_feat_keywords(value):
    hp = DeepARHyperparameters.from_strings({**REQUIRED, "cardinality": value, "num_dynamic_feat": value})
    assert hp.cardinality == value and hp.num_dynamic_feat == value
    assert hp.uses_cat == (value == "auto") and hp.uses_dynamic_feat == (value == "auto")


@pytest.mark.parametrize("freq", ["D", "2D", "H", "6H", "W", "M", "3M", "min", "15min"])
def test_time_freq_accepts_sagemakers_frequencies(freq):
    assert DeepARHyperparameters.from_strings({**REQUIRED, "time_freq": freq}).time_freq == freq


BAD = [  # (name, value, words the message must contain)
    ("time_freq", "Q", "M, W, D, H or min"),
    ("time_freq", "0D", "M, W, D, H or min"),
    ("time_freq", "daily", "M, W, D, H or min"),
    ("context_length", "0", "positive integer"),
    ("context_length", "-3", "positive integer"),
    ("prediction_length", "14.5", "positive integer"),
    ("epochs", "ten", "positive integer"),
    ("cardinality", "[2, 0]", "array of positive integers"),
    ("cardinality", "[]", "array of positive integers"),
    ("cardinality", "2, 3", "array of positive integers"),
    ("cardinality", "[1.5]", "array of positive integers"),
    ("dropout_rate", "1.0", "less than 1"),
    ("dropout_rate", "-0.1", "at least 0"),
    ("dropout_rate", "none", "must be a number"),
    ("early_stopping_patience", "0", "positive integer"),
    ("embedding_dimension", "0", "positive integer"),
    ("learning_rate", "0", "positive number"),
    ("learning_rate", "nan", "finite"),
    ("likelihood", "Student-T", "must be one of gaussian, beta, negative-binomial, student-T, deterministic-L1"),
    ("mini_batch_size", "0", "positive integer"),
    ("num_cells", "forty", "positive integer"),
    ("num_dynamic_feat", "-1", "auto, ignore, empty, or a positive integer"),
    ("num_eval_samples", "0", "positive integer"),
    ("num_layers", "0", "positive integer"),
    ("test_quantiles", "[0.1, 1.0]", "strictly between 0 and 1"),
    ("test_quantiles", "[]", "non-empty"),
    ("test_quantiles", "0.5", "JSON array"),
    ("test_quantiles", "[0.5, 0.5]", "twice"),
]


@pytest.mark.parametrize("name,value,rule", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_each_rule_rejects_with_a_message_stating_it(name, value, rule):
    with pytest.raises(HyperparameterError) as caught:
        DeepARHyperparameters.from_strings({**REQUIRED, name: value})
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert repr(name) in message and repr(value) in message and rule in message
    assert caught.value.name == name and caught.value.value == value


@pytest.mark.parametrize("missing", ["time_freq", "context_length", "prediction_length", "epochs"])
def test_required_hyperparameters(missing):
    given = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(HyperparameterError, match=f"'{missing}': is required"):
        DeepARHyperparameters.from_strings(given)
    with pytest.raises(HyperparameterError, match=f"'{missing}': is required"):
        DeepARHyperparameters.from_strings({**given, missing: ""})


def test_unknown_name_is_refused_and_sagemaker_internal_names_are_ignored():
    with pytest.raises(HyperparameterError, match="is not a DeepAR hyperparameter; valid names are cardinality"):
        DeepARHyperparameters.from_strings({**REQUIRED, "learningrate": "0.1"})
    hp = DeepARHyperparameters.from_strings({**REQUIRED, "_tuning_objective_metric": "test:RMSE",
                                             "sagemaker_program": "x"})
    assert hp == DeepARHyperparameters.from_strings(REQUIRED)


def test_python_values_are_validated_too():
    assert DeepARHyperparameters("D", 28, 14, 5, cardinality=[2, 3]).cardinality == (2, 3)
    with pytest.raises(HyperparameterError, match="positive integer"):
        DeepARHyperparameters("D", 0, 14, 5)
    with pytest.raises(HyperparameterError, match="positive integer"):
        DeepARHyperparameters("D", True, 14, 5)


def test_importing_the_package_and_its_modules_loads_no_heavy_library():
    code = ("import sys, mlops.deepar, mlops.deepar.hyperparameters, mlops.deepar.channels, mlops.deepar.metrics, "
            "mlops.deepar.engine, mlops.deepar.estimator, mlops.deepar.predictor, mlops.deepar.demo, mlops.deepar.__main__\n"
            "heavy = sorted(m for m in ('torch', 'gluonts', 'lightning', 'pytorch_lightning', 'mxnet') if m in sys.modules)\n"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --- channels ----------------------------------------------------------------------------------------

import gzip
import os
from pathlib import Path

import numpy as np

from mlops.deepar.__main__ import main
from mlops.deepar.channels import ChannelError, DataSettings, check_series, read_channel, resolve_data_settings
from mlops.deepar.estimator import train
from mlops.deepar.metrics import forecast_metrics, write_metrics
from mlops.deepar.predictor import InferenceConfiguration, InferenceRequestError, predict, transform

HORIZON = 7
TINY = {"time_freq": "D", "context_length": "14", "prediction_length": str(HORIZON), "epochs": "1", "num_cells": "8",
        "num_layers": "1", "mini_batch_size": "16", "num_eval_samples": "20", "test_quantiles": "[0.1, 0.5, 0.9]"}


def sine_records(n=6, length=40, cat=True, dynamic=True, offset=10.0):
    "Short noisy weekly sine series as DeepAR records (full length)."
    rng = np.random.default_rng(7)
    records = []
    for i in range(n):
        t = np.arange(length)
        y = np.round(offset + 5 * np.sin(2 * np.pi * (t + i) / 7) + rng.normal(0, 0.5, length), 3)
        record = {"start": "2024-01-01 00:00:00", "target": y.tolist()}
        if cat: record["cat"] = [i % 2, i % 3]
        if dynamic: record["dynamic_feat"] = [(t % 7 == 0).astype(float).tolist()]
        records.append(record)
    return records


def cut(record, length):
    "The record with its target and dynamic features cut to `length` points."
    out = {**record, "target": record["target"][:length]}
    if "dynamic_feat" in record: out["dynamic_feat"] = [d[:length] for d in record["dynamic_feat"]]
    return out


def write_lines(path: Path, records, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_channels(root: Path, records=None, compress=False):
    "train/ (series without their last HORIZON points) and test/ (full series) under root."
    records = records if records is not None else sine_records()
    write_lines(root / "train" / "train.json", [cut(r, len(r["target"]) - HORIZON) for r in records], compress)
    write_lines(root / "test" / "test.json", records, compress)
    return root / "train", root / "test"


def test_channel_reads_plain_and_gzipped_files_in_name_order(tmp_path):
    records = sine_records(3)
    write_lines(tmp_path / "b.json", records[:1])
    write_lines(tmp_path / "a.json.gz", records[1:], compress=True)
    write_lines(tmp_path / "named-plain-but-gzipped.json", records[:1], compress=True)
    (tmp_path / ".hidden").write_text("not json")
    series = read_channel(tmp_path)
    assert [s.where for s in series] == ["a.json.gz, line 1", "a.json.gz, line 2", "b.json, line 1",
                                        "named-plain-but-gzipped.json, line 1"]
    assert series[0].cat == [1, 1] and series[0].dynamic_feat.shape == (1, 40)


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "train" / "train.json", sine_records(2))
    path.write_text(path.read_text() + '{"start": "2024-01-01 00:00:00", "target": [1, 2,\n')
    with pytest.raises(ChannelError, match=r"train\.json, line 3: not valid JSON"):
        read_channel(tmp_path / "train")
    path.write_text('{"start": "2024-01-01 00:00:00", "target": [1, "two"]}\n')
    with pytest.raises(ChannelError, match=r'train\.json, line 1: target\[1\] is "two"'):
        read_channel(tmp_path / "train")
    path.write_text('{"start": "2024-01-01 00:00:00"}\n')
    with pytest.raises(ChannelError, match=r"line 1: the record has no 'target' field"):
        read_channel(tmp_path / "train")


@pytest.mark.parametrize("make,message", [
    (lambda d: None, "the train channel does not exist"),
    (lambda d: d.mkdir(), r"the train channel is empty \(no files\)"),
    (lambda d: write_lines(d / "train.json", []), "the train channel holds no records"),
    (lambda d: (d.mkdir(), (d / "train.json").write_text("\n\n")), "the train channel holds no records"),
    (lambda d: (d.mkdir(), (d / "train.parquet").write_bytes(b"PAR1")), r"train\.parquet: not a readable Parquet file"),
])
def test_empty_or_missing_channel(tmp_path, make, message):
    make(tmp_path / "train")
    with pytest.raises(ChannelError, match=message):
        read_channel(tmp_path / "train", "train")


def parsed(records, name="train.json"):
    from mlops.deepar.channels import parse_record
    return [parse_record(r, f"{name}, line {k}") for k, r in enumerate(records, start=1)]


def test_dynamic_feat_lengths_inconsistent_with_the_target_are_refused():
    records = sine_records(3)
    records[2]["dynamic_feat"] = [records[2]["dynamic_feat"][0][:-1]]
    series = parsed(records)
    settings = resolve_data_settings(DeepARHyperparameters.from_strings(TINY), series)
    check_series(series[0], settings, "student-T")
    with pytest.raises(ChannelError, match=r"train\.json, line 3: the dynamic features hold 39 values; they must be exactly "
                                           r"as long as the target \(40\)"):
        check_series(series[2], settings, "student-T")


def test_auto_settings_come_from_the_data_and_explicit_ones_are_checked():
    series = parsed(sine_records(6))
    assert resolve_data_settings(DeepARHyperparameters.from_strings(TINY), series) == DataSettings((2, 3), 1)
    explicit = resolve_data_settings(DeepARHyperparameters.from_strings({**TINY, "cardinality": "[2, 2]",
                                                                          "num_dynamic_feat": "1"}), series)
    assert explicit == DataSettings((2, 2), 1)
    with pytest.raises(ChannelError, match=r"line 3: cat\[1\] is 2, beyond the cardinality 2 of that feature"):
        check_series(series[2], explicit, "student-T")
    with pytest.raises(ChannelError, match=r"2 \"cat\" values, but the model uses 1"):
        check_series(series[0], DataSettings((5,), 1), "student-T")
    with pytest.raises(ChannelError, match="1 dynamic feature\\(s\\), but the model uses 2"):
        check_series(series[0], DataSettings((2, 3), 2), "student-T")


def test_series_must_agree_on_cat_and_dynamic_feat():
    records = sine_records(3)
    del records[1]["cat"]
    with pytest.raises(ChannelError, match=r"line 2: this series has no \"cat\" but others have"):
        resolve_data_settings(DeepARHyperparameters.from_strings(TINY), parsed(records))
    # ignore drops the field even when it is there, and then nothing is checked
    hp = DeepARHyperparameters.from_strings({**TINY, "cardinality": "ignore"})
    assert resolve_data_settings(hp, parsed(records)).cardinality == ()
    records = sine_records(3)
    records[0]["cat"] = [0]
    with pytest.raises(ChannelError, match=r"line 2: 2 \"cat\" values, but train\.json, line 1 has 1"):
        resolve_data_settings(DeepARHyperparameters.from_strings(TINY), parsed(records))
    records = sine_records(3, dynamic=False)
    with pytest.raises(ChannelError, match="num_dynamic_feat is 2 but the series have no"):
        resolve_data_settings(DeepARHyperparameters.from_strings({**TINY, "num_dynamic_feat": "2"}), parsed(records))


def test_likelihood_bounds_the_target():
    series = parsed([{"start": "2024-01-01", "target": [1.0, -2.0, "NaN"]}])[0]
    with pytest.raises(ChannelError, match="negative target value .* negative-binomial likelihood models counts"):
        check_series(series, DataSettings(), "negative-binomial")
    with pytest.raises(ChannelError, match=r"not strictly between 0 and 1; the beta likelihood"):
        check_series(series, DataSettings(), "beta")
    check_series(series, DataSettings(), "gaussian")


# --- metrics -----------------------------------------------------------------------------------------

def test_metric_formulas_against_hand_computed_values():
    # one sample path per series: every quantile equals it. Errors (forecast - actual): -1, 0, 2, 0.
    metrics = forecast_metrics([[1.0, 2.0], [3.0, 4.0]], [[[2.0, 2.0]], [[1.0, 4.0]]], [0.1, 0.5, 0.9])
    assert metrics["test:RMSE"] == pytest.approx(np.sqrt((1 + 0 + 4 + 0) / 4))
    # pinball: y >= q -> tau * (y - q); y < q -> (1 - tau) * (q - y); sum |y| = 10
    assert metrics["test:wQuantileLoss[0.1]"] == pytest.approx(2 * (0.9 * 1 + 0.1 * 2) / 10)
    assert metrics["test:wQuantileLoss[0.5]"] == pytest.approx(2 * (0.5 * 1 + 0.5 * 2) / 10)
    assert metrics["test:wQuantileLoss[0.9]"] == pytest.approx(2 * (0.1 * 1 + 0.9 * 2) / 10)
    assert metrics["test:mean_wQuantileLoss"] == pytest.approx((0.22 + 0.3 + 0.38) / 3)
    assert list(metrics)[:2] == ["test:RMSE", "test:mean_wQuantileLoss"]


def test_metrics_use_quantiles_and_mean_of_the_samples_and_skip_missing_actuals():
    samples = np.array([[[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]]])  # mean [2, 10], median [2, 10]
    metrics = forecast_metrics([[3.0, np.nan]], samples, [0.5])
    assert metrics["test:RMSE"] == pytest.approx(1.0)  # only the first point counts
    assert metrics["test:wQuantileLoss[0.5]"] == pytest.approx(2 * 0.5 * 1 / 3)


def test_metrics_file_has_sagemakers_final_metric_data_list_shape(tmp_path):
    path = write_metrics(tmp_path / "out", {"train:final_loss": 1.25, "test:RMSE": 2.0})
    assert json.loads(path.read_text()) == [{"MetricName": "train:final_loss", "Value": 1.25},
                                            {"MetricName": "test:RMSE", "Value": 2.0}]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json"]


# --- training ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "One tiny training run (one short epoch) shared by the inference tests."
    root = tmp_path_factory.mktemp("trained")
    train_dir, test_dir = write_channels(root / "channels")
    epochs = []
    metrics = train(TINY, train_dir, test_dir, root / "model", root / "output", progress=epochs.append)
    return {"root": root, "model": root / "model", "metrics": metrics, "epochs": epochs,
            "records": sine_records()}


def test_training_writes_metrics_and_artifact(trained):
    metrics, root = trained["metrics"], trained["root"]
    assert list(metrics) == ["train:final_loss", "test:RMSE", "test:mean_wQuantileLoss", "test:wQuantileLoss[0.1]",
                             "test:wQuantileLoss[0.5]", "test:wQuantileLoss[0.9]"]
    assert all(np.isfinite(v) for v in metrics.values())
    written = json.loads((root / "output" / "metrics.json").read_text())
    assert written == [{"MetricName": k, "Value": v} for k, v in metrics.items()]
    assert metrics["test:mean_wQuantileLoss"] == pytest.approx(np.mean([metrics[f"test:wQuantileLoss[{q}]"]
                                                                       for q in ("0.1", "0.5", "0.9")]))
    # progress: one report per epoch, with the loss train:final_loss repeats
    assert [e["epoch"] for e in trained["epochs"]] == [1]
    assert trained["epochs"][-1]["loss"] == metrics["train:final_loss"]
    # nothing but the artifact in model_dir (lightning's checkpoints were in a removed temporary folder)
    assert sorted(p.name for p in (root / "model").iterdir()) == ["model.tar.gz"]
    import tarfile
    with tarfile.open(root / "model" / "model.tar.gz") as tar:
        names = set(tar.getnames())
        config = json.loads(tar.extractfile("config.json").read())
        hyperparameters = json.loads(tar.extractfile("hyperparameters.json").read())
    assert {"config.json", "hyperparameters.json", "predictor/predictor.json", "predictor/prediction-net-state.pt"} <= names
    assert config["cardinality"] == [2, 3] and config["num_dynamic_feat"] == 1 and config["freq"] == "D"
    assert DeepARHyperparameters.from_strings(hyperparameters) == DeepARHyperparameters.from_strings(TINY)


def test_training_is_reproducible_and_writes_nothing_outside_its_folders(tmp_path, monkeypatch, trained):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    train_dir, test_dir = write_channels(tmp_path / "channels")
    metrics = train(TINY, train_dir, test_dir, tmp_path / "model", tmp_path / "output")
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channels", "cwd", "model", "output"]
    assert metrics == trained["metrics"]  # same data, same seed, same machine: same numbers
    assert (tmp_path / "model" / "model.tar.gz").read_bytes() == (trained["model"] / "model.tar.gz").read_bytes()
    other_seed = train(TINY, train_dir, test_dir, tmp_path / "model2", tmp_path / "output2", seed=1)
    assert other_seed != metrics


def test_early_stopping_stops_when_the_mean_training_loss_stalls(tmp_path):
    train_dir, _ = write_channels(tmp_path / "channels")
    epochs = []
    train({**TINY, "epochs": "40", "early_stopping_patience": "2", "learning_rate": "0.05"}, train_dir, None,
          tmp_path / "model", tmp_path / "output", progress=epochs.append)
    losses = [e["loss"] for e in epochs]
    assert len(losses) < 40
    # it stopped at the first epoch whose last 2 losses average no lower than the 2 before (the rate is halved
    # only after 10 epochs without a new lowest loss: one rate throughout)
    mean = lambda values: sum(values) / len(values)
    assert mean(losses[-2:]) >= mean(losses[-4:-2])
    assert all(mean(losses[n - 2:n]) < mean(losses[n - 4:n - 2]) for n in range(4, len(losses)))
    # without a test channel only the training loss is reported
    assert [m["MetricName"] for m in json.loads((tmp_path / "output" / "metrics.json").read_text())] == ["train:final_loss"]


@pytest.mark.parametrize("likelihood,offset", [("gaussian", 10.0), ("negative-binomial", 10.0), ("deterministic-L1", 10.0),
                                               ("beta", None)])
def test_every_likelihood_trains_and_forecasts(tmp_path, likelihood, offset):
    records = sine_records(4, cat=False, dynamic=False)
    if offset is None:  # fractions for beta
        for r in records: r["target"] = [round(0.5 + v / 40 - 0.25, 4) for v in r["target"]]
    else:
        for r in records: r["target"] = [float(round(v)) for v in r["target"]]
    train_dir, test_dir = write_channels(tmp_path / "channels", records)
    metrics = train({**TINY, "likelihood": likelihood}, train_dir, test_dir, tmp_path / "model", tmp_path / "output")
    assert np.isfinite(metrics["test:RMSE"]) and np.isfinite(metrics["train:final_loss"])


def test_training_refuses_bad_channels_before_writing_anything(tmp_path):
    records = sine_records(3)
    train_dir, test_dir = write_channels(tmp_path / "channels", records)
    bad_test = [dict(r) for r in records]
    bad_test[1]["cat"] = [5, 0]  # beyond the cardinality inferred from the train channel
    write_lines(test_dir / "test.json", bad_test)
    with pytest.raises(ChannelError, match=r"test\.json, line 2: cat\[0\] is 5, beyond the cardinality 2"):
        train(TINY, train_dir, test_dir, tmp_path / "model", tmp_path / "output")
    write_lines(test_dir / "test.json", [cut(r, HORIZON) for r in records])
    with pytest.raises(ChannelError, match="must be longer than prediction_length=7"):
        train(TINY, train_dir, test_dir, tmp_path / "model", tmp_path / "output")
    with pytest.raises(HyperparameterError, match="'epochs' = '0'"):
        train({**TINY, "epochs": "0"}, train_dir, None, tmp_path / "model", tmp_path / "output")
    assert not (tmp_path / "output").exists()
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


# --- inference ---------------------------------------------------------------------------------------

def request_for(records, length=30, horizon=HORIZON, **configuration):
    instances = [{**cut(r, length), "dynamic_feat": [d[: length + horizon] for d in r["dynamic_feat"]]} for r in records]
    return {"instances": instances, **({"configuration": configuration} if configuration else {})}


def test_request_response_round_trip(trained):
    request = request_for(trained["records"][:2], num_samples=12, output_types=["mean", "quantiles", "samples"],
                          quantiles=["0.25", "0.75"])
    response = predict(trained["model"], json.dumps(request))
    assert list(response) == ["predictions"] and len(response["predictions"]) == 2
    for prediction in response["predictions"]:
        assert set(prediction) == {"mean", "quantiles", "samples"}
        assert list(prediction["quantiles"]) == ["0.25", "0.75"]
        samples = np.array(prediction["samples"])
        assert samples.shape == (12, HORIZON)
        assert np.allclose(prediction["mean"], samples.mean(axis=0))
        assert np.allclose(prediction["quantiles"]["0.75"], np.quantile(samples, 0.75, axis=0))
        assert (np.array(prediction["quantiles"]["0.25"]) <= np.array(prediction["quantiles"]["0.75"])).all()
    # the response is JSON as it stands
    assert json.loads(json.dumps(response)) == response


def test_default_configuration_and_output_type_subsets(trained):
    response = predict(trained["model"], request_for(trained["records"][:1]))
    prediction = response["predictions"][0]
    assert list(prediction) == ["quantiles", "mean"]
    assert list(prediction["quantiles"]) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    only_mean = predict(trained["model"], request_for(trained["records"][:1], output_types=["mean"]))
    assert list(only_mean["predictions"][0]) == ["mean"]
    assert predict(trained["model"], {"instances": []}) == {"predictions": []}


def test_forecasts_follow_the_history(trained):
    "A model trained on series around 10 forecasts around 10; shifting the history shifts the forecast."
    low = request_for(trained["records"][:1], output_types=["mean"], num_samples=50)
    mean = np.mean(predict(trained["model"], low)["predictions"][0]["mean"])
    assert 0 < mean < 25


@pytest.mark.parametrize("change,message", [
    (lambda i: i.pop("cat"), r"instances\[0\]: no \"cat\", but the model uses 2 categorical feature"),
    (lambda i: i.update(cat=[1, 3]), r"instances\[0\]: cat\[1\] is 3, beyond the cardinality 3"),
    (lambda i: i.update(dynamic_feat=[i["dynamic_feat"][0][:35]]),
     r"instances\[0\]: the dynamic features hold 35 values; they must be at least len\(target\) \+ prediction_length "
     r"= 30 \+ 7 = 37"),
    (lambda i: i.pop("dynamic_feat"), r"instances\[0\]: 0 dynamic feature\(s\), but the model uses 1"),
    (lambda i: i.update(target=[1.0, "x"]), r'instances\[0\]: target\[1\] is "x"'),
])
def test_bad_instances_are_refused(trained, change, message):
    request = request_for(trained["records"][:1])
    change(request["instances"][0])
    with pytest.raises(InferenceRequestError, match=message):
        predict(trained["model"], request)


@pytest.mark.parametrize("request_text,message", [
    ("{not json", "request: not valid JSON"),
    ('{"instance": []}', r'an "instances" array'),
    ('{"instances": [], "configuration": {"num_samples": 0}}', "num_samples is 0; it must be a positive integer"),
    ('{"instances": [], "configuration": {"output_types": ["median"]}}', "mean, quantiles, samples"),
    ('{"instances": [], "configuration": {"quantiles": ["1.0"]}}', "strictly between 0 and 1"),
    ('{"instances": [], "configuration": {"samples": 3}}', "unknown key"),
])
def test_bad_requests_are_refused(trained, request_text, message):
    with pytest.raises(InferenceRequestError, match=message):
        predict(trained["model"], request_text)


def test_longer_dynamic_features_are_cut_to_the_horizon(trained):
    request = request_for(trained["records"][:1], output_types=["mean"])
    longer = json.loads(json.dumps(request))
    longer["instances"][0]["dynamic_feat"] = [trained["records"][0]["dynamic_feat"][0] + [0.0] * 5]
    assert predict(trained["model"], longer) == predict(trained["model"], request)


def test_batch_transform_layout(trained, tmp_path, monkeypatch):
    instances = request_for(trained["records"], length=25)["instances"]
    inputs = tmp_path / "input"
    write_lines(inputs / "requests.jsonl", instances[:4])
    write_lines(inputs / "part" / "more.jsonl.gz", instances[4:], compress=True)
    monkeypatch.setenv("DEEPAR_INFERENCE_CONFIG", json.dumps({"num_samples": 8, "output_types": ["mean", "samples"]}))
    outputs = transform(trained["model"], inputs, tmp_path / "output")
    assert [p.relative_to(tmp_path / "output").as_posix() for p in outputs] == ["part/more.jsonl.gz.out", "requests.jsonl.out"]
    lines = (tmp_path / "output" / "requests.jsonl.out").read_text().splitlines()
    assert len(lines) == 4  # one prediction line per request line, same order
    for line in lines:
        prediction = json.loads(line)
        assert list(prediction) == ["samples", "mean"] and np.array(prediction["samples"]).shape == (8, HORIZON)
    assert len((tmp_path / "output" / "part" / "more.jsonl.gz.out").read_text().splitlines()) == 2
    first = predict(trained["model"], {"instances": instances[:4], "configuration": {"num_samples": 8,
                                                                                      "output_types": ["mean", "samples"]}})
    # the file's lines are the predictions an endpoint gives for the same instances and configuration
    assert [json.loads(line) for line in lines] == first["predictions"]


def test_batch_transform_bad_line_names_file_and_line_and_writes_nothing(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPAR_INFERENCE_CONFIG", raising=False)
    instances = request_for(trained["records"][:3], length=25)["instances"]
    instances[2] = {**instances[2], "dynamic_feat": [instances[2]["dynamic_feat"][0][:20]]}
    write_lines(tmp_path / "input" / "requests.jsonl", instances)
    with pytest.raises(InferenceRequestError, match=r"requests\.jsonl, line 3: the dynamic features hold 20 values"):
        transform(trained["model"], tmp_path / "input", tmp_path / "output")
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())
    monkeypatch.setenv("DEEPAR_INFERENCE_CONFIG", "{num_samples: 3}")
    with pytest.raises(InferenceRequestError, match="DEEPAR_INFERENCE_CONFIG: not valid JSON"):
        transform(trained["model"], tmp_path / "input", tmp_path / "output")


# --- fresh processes: the artifact and the entry points ---------------------------------------------

def run_module(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "mlops.deepar", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_a_fresh_process_loads_the_artifact_and_answers_alike(trained, tmp_path):
    request = request_for(trained["records"][:2], num_samples=10, output_types=["mean", "quantiles"], quantiles=["0.5"])
    (tmp_path / "request.json").write_text(json.dumps(request))
    code = ("import json, sys; from mlops.deepar.predictor import predict\n"
            "print(json.dumps(predict(sys.argv[1], open(sys.argv[2]).read())))")
    result = subprocess.run([sys.executable, "-c", code, trained["model"], tmp_path / "request.json"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == predict(trained["model"], request)


def test_module_entry_points_train_and_transform(tmp_path):
    train_dir, test_dir = write_channels(tmp_path / "channels")
    (tmp_path / "hyperparameters.json").write_text(json.dumps({**TINY, "epochs": "5"}))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_module("train", "--train", train_dir, "--test", test_dir, "--model-dir", tmp_path / "model",
                        "--output-dir", tmp_path / "output", "--hyperparameters", tmp_path / "hyperparameters.json",
                        "-p", "epochs", "2", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert list(cwd.iterdir()) == []  # a fresh process (imports included) writes nothing to its working folder
    out = result.stdout
    assert "epoch 1/2: train loss" in out and "epoch 2/2: train loss" in out
    assert "test:mean_wQuantileLoss = " in out and "train:final_loss = " in out and " s" in out.splitlines()[-1]
    metrics = {m["MetricName"]: m["Value"] for m in json.loads((tmp_path / "output" / "metrics.json").read_text())}
    assert set(metrics) >= {"train:final_loss", "test:RMSE", "test:mean_wQuantileLoss", "test:wQuantileLoss[0.5]"}

    write_lines(tmp_path / "input" / "requests.jsonl", request_for(sine_records(3), length=25)["instances"])
    result = run_module("transform", "--model-dir", tmp_path / "model", "--input", tmp_path / "input",
                        "--output", tmp_path / "predictions", env={"DEEPAR_INFERENCE_CONFIG": '{"output_types": ["quantiles"], '
                                                                   '"quantiles": ["0.5"]}'})
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "predictions" / "requests.jsonl.out").read_text().splitlines()
    assert [list(json.loads(line)) for line in lines] == [["quantiles"]] * 3
    assert [list(json.loads(line)["quantiles"]) for line in lines] == [["0.5"]] * 3


def test_entry_point_errors_are_one_message_and_exit_2(tmp_path):
    train_dir, _ = write_channels(tmp_path / "channels")
    result = run_module("train", "--train", train_dir, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "out",
                        *sum((["-p", k, v] for k, v in {**TINY, "likelihood": "poisson"}.items()), []))
    assert result.returncode == 2
    assert result.stderr.startswith("error: DeepAR hyperparameter 'likelihood' = 'poisson': must be one of")
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    result = run_module("transform", "--model-dir", tmp_path / "nowhere", "--input", train_dir, "--output", tmp_path / "p")
    assert result.returncode == 2 and "no model artifact" in result.stderr


def test_main_in_process_reports_bad_hyperparameter_files(tmp_path, capsys):
    (tmp_path / "hp.json").write_text("[1, 2]")
    assert main(["train", "--train", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--output-dir",
                 str(tmp_path / "o"), "--hyperparameters", str(tmp_path / "hp.json")]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


def test_inference_configuration_defaults_are_sagemakers():
    assert InferenceConfiguration.from_json(None) == InferenceConfiguration.from_json(
        {"num_samples": 100, "output_types": ["mean", "quantiles"],
         "quantiles": ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]})


def test_cli_trains_on_the_demo_data_and_its_model_serves_the_inference_requests(tmp_path):
    "`mlops train-deepar` → metrics.json in SageMaker's shape and a model.tar.gz that a fresh process serves."
    from conftest import run_mlops
    work = tmp_path / "deepar"
    result = run_mlops("train-deepar", "--output", work, "--epochs", "1", "-p", "num_cells=8", "-p", "num_layers=1",
                       "-p", "num_eval_samples=20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "epoch 1/1: train loss" in out and "wall time:" in out and str(work / "model" / "model.tar.gz") in out
    metrics = json.loads((work / "output" / "metrics.json").read_text())
    assert all(set(m) == {"MetricName", "Value"} for m in metrics)
    for metric in metrics:  # every metric is printed, under SageMaker's name
        assert re.search(rf"{re.escape(metric['MetricName'])}\W+{metric['Value']:.4f}", result.stdout), metric
    assert {"train:final_loss", "test:RMSE", "test:mean_wQuantileLoss", "test:wQuantileLoss[0.9]"} <= {m["MetricName"] for m in metrics}

    # the inference requests of the same demo data, made with the feature state training used, then a fresh transform
    assert run_mlops("demo-data", tmp_path / "future.csv", "--future-periods", "14", cwd=tmp_path).returncode == 0
    infer = run_mlops("features", "--mode", "infer", "--input", tmp_path / "future.csv", "--output", tmp_path / "infer",
                      "--state", work / "channels" / "state", "--static-cat-columns", "store,category",
                      "--dynamic-real-columns", "promo", cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr
    served = run_module("transform", "--model-dir", work / "model", "--input", tmp_path / "infer" / "inference",
                        "--output", tmp_path / "predictions", env={"DEEPAR_INFERENCE_CONFIG": '{"num_samples": 20}'})
    assert served.returncode == 0, served.stderr
    lines = (tmp_path / "predictions" / "requests.jsonl.out").read_text().splitlines()
    assert len(lines) == 50 and all(len(json.loads(line)["mean"]) == 14 for line in lines)


def test_cli_refuses_a_bad_hyperparameter_before_writing_anything(tmp_path):
    from conftest import run_mlops
    result = run_mlops("train-deepar", "--output", tmp_path / "deepar", "-p", "num_layers=0", cwd=tmp_path)
    assert result.returncode == 2
    assert "num_layers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "deepar").exists()
