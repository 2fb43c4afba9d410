"""SageMaker's built-in XGBoost, run locally: a definition the SDK builds (a TrainingStep with the xgboost image from
`image_uris`) runs with `mlops run --definition`, and its model, metrics and batch transform are xgboost's own.

What SageMaker's XGBoost does is aws/sagemaker-xgboost-container's algorithm mode (algorithm_mode/train.py,
hyperparameter_validation.py, serve_utils.py, handler_service.py): model.tar.gz holds `xgboost-model`, the metrics are
`train:<metric>` and `validation:<metric>` read from the round lines, and a missing `num_round` is refused with
"Missing required hyperparameter: num_round" (sagemaker_algorithm_toolkit/hyperparameter_validation.py).
"""
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import BUCKET, REGION, Corpus, _xgboost_trainer

TRAIN, VALIDATION = f"s3://{BUCKET}/abalone/train", f"s3://{BUCKET}/abalone/validation"
MISSING_NUM_ROUND = "Missing required hyperparameter: num_round"  # the container's message (see above)


def build_training(hyperparameters: dict | None = None) -> dict:
    "The definition of a pipeline of one TrainingStep with SageMaker's XGBoost, built offline by the SDK."
    import tempfile
    from mlops.offline import offline_aws, pipeline_session
    with offline_aws(REGION), tempfile.TemporaryDirectory() as folder:
        import boto3
        from sagemaker.core.workflow.parameters import ParameterString
        from sagemaker.mlops.workflow.pipeline import Pipeline
        from sagemaker.mlops.workflow.steps import TrainingStep
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        c = Corpus(session=pipeline_session({"ArtifactBucket": BUCKET}), folder=Path(folder))
        objective = ParameterString(name="TrainingObjective", default_value="reg:squarederror")
        trainer = _xgboost_trainer(c, TRAIN, VALIDATION, objective=objective)
        if hyperparameters is not None: trainer.hyperparameters = hyperparameters
        step = TrainingStep(name="TrainAbaloneModel", step_args=trainer.train())
        return json.loads(Pipeline(name="xgboost-local", parameters=[objective], steps=[step], sagemaker_session=c.session).definition())


def rows(seed: int, n: int) -> np.ndarray:
    "Label first, then 4 features (a noisy linear target): the container's CSV layout."
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 4))
    return np.column_stack([features @ [3.0, -2.0, 0.5, 1.0] + rng.normal(scale=0.3, size=n), features])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "The SDK-built definition run with `mlops run --definition` on CSV channels put in a fresh local store."
    from mlops.cli import main
    from mlops.engine.store import LocalStore
    root = tmp_path_factory.mktemp("xgb")
    home, definition = root / ".mlops", build_training()
    data = {"train": rows(0, 120), "validation": rows(1, 40)}
    for name, uri in (("train", TRAIN), ("validation", VALIDATION)):
        folder = LocalStore(home / "store").path(uri)
        folder.mkdir(parents=True)
        np.savetxt(folder / f"{name}.csv", data[name], delimiter=",", fmt="%.6f")  # no header
    (root / "xgb.json").write_text(json.dumps(definition))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(home)); mp.setenv("MLOPS_FORKSERVER", "0"); mp.setenv("COLUMNS", "300")
        result = CliRunner().invoke(main, ["run", "--definition", str(root / "xgb.json")], catch_exceptions=False)
    return {"root": root, "home": home, "definition": definition, "result": result, "store": LocalStore(home / "store"),
            "data": {k: np.loadtxt(LocalStore(home / "store").path(u) / f"{k}.csv", delimiter=",")
                     for k, u in (("train", TRAIN), ("validation", VALIDATION))}}


def properties(trained) -> dict:
    from mlops.engine.records import Records
    records = Records(trained["home"] / "runs.db")
    execution = records.executions(1)[0]
    step = next(s for s in records.steps(execution["id"]) if s["name"] == "TrainAbaloneModel")
    return step


def direct_booster(trained):
    "The same hyperparameters, trained directly with xgboost on the same rows (what the container does with them)."
    import xgboost as xgb
    hp = trained["definition"]["Steps"][0]["Arguments"]["HyperParameters"]
    params = {k: float(v) if "." in v else int(v) for k, v in hp.items() if isinstance(v, str) and k != "num_round"}
    params["objective"] = "reg:squarederror"  # the parameter's default
    train, validation = trained["data"]["train"], trained["data"]["validation"]
    dtrain, dval = xgb.DMatrix(train[:, 1:], label=train[:, 0]), xgb.DMatrix(validation[:, 1:], label=validation[:, 0])
    result = {}
    booster = xgb.train(params, dtrain, int(hp["num_round"]), evals=[(dtrain, "train"), (dval, "validation")],
                        evals_result=result, verbose_eval=False)
    return booster, result


def test_the_sdk_definition_trains_to_succeeded(trained):
    assert trained["result"].exit_code == 0, trained["result"].output
    step = properties(trained)
    assert step["status"] == "Succeeded"
    p = json.loads(step["properties"]) if isinstance(step["properties"], str) else step["properties"]
    assert p["TrainingJobStatus"] == "Completed" and p["TrainingJobName"]
    assert p["ModelArtifacts"]["S3ModelArtifacts"] == f"{p['OutputDataConfig']['S3OutputPath']}/{p['TrainingJobName']}/output/model.tar.gz"
    assert p["AlgorithmSpecification"]["TrainingImage"].endswith("/sagemaker-xgboost:1.7-1")


def test_the_model_is_xgboost_model_in_model_tar_gz_and_predicts_as_xgboost_does(trained, tmp_path):
    import xgboost as xgb
    step = properties(trained)
    p = json.loads(step["properties"]) if isinstance(step["properties"], str) else step["properties"]
    archive = trained["store"].path(p["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["xgboost-model"]
        tar.extractall(tmp_path, filter="data")
    booster = xgb.Booster(model_file=str(tmp_path / "xgboost-model"))
    features = xgb.DMatrix(trained["data"]["validation"][:, 1:])
    expected, _ = direct_booster(trained)
    np.testing.assert_allclose(booster.predict(features), expected.predict(features), rtol=1e-6)


def test_the_metrics_are_in_final_metric_data_list_and_in_the_log(trained):
    step = properties(trained)
    p = json.loads(step["properties"]) if isinstance(step["properties"], str) else step["properties"]
    metrics = {m["MetricName"]: m["Value"] for m in p["FinalMetricDataList"]}
    _, result = direct_booster(trained)
    assert set(metrics) == {"train:rmse", "validation:rmse"}
    assert metrics["validation:rmse"] == pytest.approx(result["validation"]["rmse"][-1], abs=1e-5)  # the log prints 5 decimals
    assert metrics["train:rmse"] == pytest.approx(result["train"]["rmse"][-1], abs=1e-5)
    log = (trained["home"] / "runs" / step["execution_id"] / "TrainAbaloneModel" / "log.txt").read_text()
    rounds = [line for line in log.splitlines() if line.startswith("[")]
    assert rounds[0].startswith("[0]#011train-rmse:") and "#011validation-rmse:" in rounds[0]  # as CloudWatch shows it
    assert len(rounds) == int(p["HyperParameters"]["num_round"])


def test_the_transform_entry_point_serves_the_trained_model(trained, tmp_path):
    "The container's default serving on the model the run wrote: CSV without the label, `<file>.out`, one prediction per line."
    import xgboost as xgb
    step = properties(trained)
    p = json.loads(step["properties"]) if isinstance(step["properties"], str) else step["properties"]
    (tmp_path / "model").mkdir(); (tmp_path / "input").mkdir()
    (tmp_path / "model" / "model.tar.gz").write_bytes(trained["store"].path(p["ModelArtifacts"]["S3ModelArtifacts"]).read_bytes())
    features = trained["data"]["validation"][:, 1:]
    np.savetxt(tmp_path / "input" / "batch.csv", features, delimiter=",", fmt="%.6f")
    done = subprocess.run([sys.executable, "-m", "mlops.xgboost", "transform", "--model-dir", str(tmp_path / "model"),
                           "--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"), "--content-type", "text/csv"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["batch.csv.out"]
    lines = (tmp_path / "output" / "batch.csv.out").read_text().splitlines()
    expected, _ = direct_booster(trained)
    reread = np.loadtxt(tmp_path / "input" / "batch.csv", delimiter=",")
    np.testing.assert_allclose([float(v) for v in lines], expected.predict(xgb.DMatrix(reread)), rtol=1e-6)


def test_a_missing_num_round_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from mlops.cli import main
    definition = build_training({"objective": "reg:squarederror", "max_depth": 3})
    (tmp_path / "bad.json").write_text(json.dumps(definition))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops")); monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(main, ["run", "--definition", str(tmp_path / "bad.json")], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert MISSING_NUM_ROUND in " ".join(result.output.split()) and "TrainAbaloneModel" in result.output
    assert not (tmp_path / ".mlops" / "runs").exists() or not any((tmp_path / ".mlops" / "runs").iterdir())
