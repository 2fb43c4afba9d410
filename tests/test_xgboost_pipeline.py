"""The abalone pipeline of AWS's examples (tests/corpus/sdk_pipelines.py build_abalone_end_to_end: SKLearn preprocessing →
built-in XGBoost training → an evaluation writing a PropertyFile → a Condition on its mse → RegisterModel, Model and a
Transform of that model), built by the SDK, runs to Succeeded with `mlops run --definition` and no Docker, and each
output is in SageMaker's format:

- model.tar.gz holds `xgboost-model` (aws/sagemaker-xgboost-container, algorithm_mode/train.py: MODEL_NAME);
- evaluation.json is what the evaluation script wrote, and the Condition's outcome is the one its mse implies;
- the registered model package version is in the local registry with its image and ModelMetrics;
- the Transform writes `<input file>.out`, one prediction per line for the input's lines (SplitType Line, AssembleWith
  Line: "Associate Prediction Results with Input Records", https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-data-processing.html).

The pipeline is built and run once for the module (about 15 s); the tests read what it left.
"""
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import ABALONE, ABALONE_INPUT, BUCKET, abalone_dataset, build_into_store

GROUP = "AbaloneModelPackageGroupName"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "The SDK-built definition, its code and a generated abalone CSV in a fresh local store, run with `mlops run --definition`."
    from mlops.cli import main
    from mlops.engine.execution import Execution
    from mlops.engine.records import Records
    from mlops.engine.store import LocalStore
    root = tmp_path_factory.mktemp("abalone")
    home = root / ".mlops"
    definition = build_into_store("abalone_end_to_end", home / "store")
    data = home / "store" / BUCKET / Path(*ABALONE_INPUT)
    data.parent.mkdir(parents=True, exist_ok=True)
    abalone_dataset().to_csv(data, header=False, index=False)  # the UCI file's layout: no header
    (root / "abalone.json").write_text(json.dumps(definition))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"MLOPS_HOME": str(home), "MLOPS_FORKSERVER": "0", "COLUMNS": "300"}.items():
            mp.setenv(name, value)
        result = CliRunner().invoke(main, ["run", "--definition", str(root / "abalone.json")], catch_exceptions=False)
        [latest] = Records(home / "runs.db").executions(1)
        execution = Execution.load(latest["id"], home)
        listed = CliRunner().invoke(main, ["models", "list", GROUP])
    return {"root": root, "home": home, "definition": definition, "result": result, "execution": execution,
            "store": LocalStore(home / "store"), "listed": listed}


def step(run, name: str) -> dict:
    return run["execution"].step(name).properties


def arguments(run, name: str) -> dict:
    "A step's arguments in the definition, by name (inside the Condition's branches too)."
    def walk(steps):
        for s in steps:
            yield s
            yield from walk(s["Arguments"].get("IfSteps", []) + s["Arguments"].get("ElseSteps", [])) if s["Type"] == "Condition" else ()
    return next(s["Arguments"] for s in walk(run["definition"]["Steps"]) if s["Name"] == name)


def output_uri(run, step_name: str, output: str) -> str:
    return next(o["S3Output"]["S3Uri"] for o in arguments(run, step_name)["ProcessingOutputConfig"]["Outputs"]
                if o["OutputName"] == output)


def booster(run, tmp_path):
    "The trained model, read from the model.tar.gz in the store as SageMaker's XGBoost serving reads it."
    import xgboost as xgb
    with tarfile.open(run["store"].path(step(run, "AbaloneTrain")["ModelArtifacts"]["S3ModelArtifacts"])) as tar:
        tar.extractall(tmp_path, filter="data")
    model = xgb.Booster()
    model.load_model(str(tmp_path / "xgboost-model"))
    return model


def rows(run, step_name: str, output: str, file: str) -> np.ndarray:
    return pd.read_csv(run["store"].path(output_uri(run, step_name, output)) / file, header=None).to_numpy()


def test_the_pipeline_runs_to_succeeded_with_every_step_of_the_true_branch(run):
    assert run["result"].exit_code == 0, run["result"].output
    assert run["execution"].status == "Succeeded"
    statuses = {s.name: s.status for s in run["execution"].steps}
    assert statuses == {"AbaloneProcess": "Succeeded", "AbaloneTrain": "Succeeded", "AbaloneEval": "Succeeded",
                        "AbaloneMSECond": "Succeeded", "AbaloneRegisterModel": "Succeeded",
                        "AbaloneCreateModel": "Succeeded", "AbaloneTransform": "Succeeded"}, statuses
    assert "docker" not in run["result"].output.lower()


def test_the_preprocessing_script_split_the_generated_csv(run):
    source = abalone_dataset()
    splits = {name: rows(run, "AbaloneProcess", name, f"{name}.csv") for name in ("train", "validation", "test")}
    assert sum(len(r) for r in splits.values()) == len(source)
    assert (len(splits["train"]), len(splits["validation"])) == (int(0.7 * len(source)), int(0.85 * len(source)) - int(0.7 * len(source)))
    labels = np.sort(np.concatenate([r[:, 0] for r in splits.values()]))
    np.testing.assert_array_equal(labels, np.sort(source["rings"].to_numpy(dtype=float)))  # label first, every row once
    assert splits["train"].shape[1] == 1 + 7 + 3  # the label, 7 scaled measurements, sex one-hot (M, F, I)
    np.testing.assert_allclose(rows(run, "AbaloneProcess", "batch", "batch.csv"), splits["test"][:, 1:])


def test_model_tar_gz_holds_xgboost_model(run):
    with tarfile.open(run["store"].path(step(run, "AbaloneTrain")["ModelArtifacts"]["S3ModelArtifacts"])) as tar:
        assert tar.getnames() == ["xgboost-model"]
    assert step(run, "AbaloneTrain")["AlgorithmSpecification"]["TrainingImage"].endswith("/sagemaker-xgboost:3.2-0")


def test_evaluation_json_is_the_scripts_and_the_condition_took_the_branch_its_mse_implies(run, tmp_path):
    import xgboost as xgb
    report = json.loads((run["store"].path(output_uri(run, "AbaloneEval", "evaluation")) / "evaluation.json").read_text())
    test = rows(run, "AbaloneProcess", "test", "test.csv")
    predictions = booster(run, tmp_path).predict(xgb.DMatrix(test[:, 1:]))
    mse = float(np.mean((test[:, 0] - predictions) ** 2))
    assert report == {"regression_metrics": {"mse": {"value": pytest.approx(mse, rel=1e-6),
                                                     "standard_deviation": pytest.approx(float(np.std(test[:, 0] - predictions)), rel=1e-6)}}}
    threshold = next(p["DefaultValue"] for p in run["definition"]["Parameters"] if p["Name"] == "MseThreshold")
    assert step(run, "AbaloneMSECond")["Outcome"] is (mse <= threshold)
    branch = {"AbaloneRegisterModel", "AbaloneCreateModel", "AbaloneTransform"} if mse <= threshold else {"AbaloneMSEFail"}
    assert branch <= {s.name for s in run["execution"].steps if s.status == "Succeeded" or s.name == "AbaloneMSEFail"}


def test_the_registered_version_is_in_the_local_registry_with_its_image_and_model_metrics(run):
    from mlops.tracking.registry import model_versions
    [version] = model_versions(GROUP, run["home"])
    image = arguments(run, "AbaloneRegisterModel")["InferenceSpecification"]["Containers"][0]["Image"]
    assert image.endswith("/sagemaker-xgboost:3.2-0")
    assert (version["image"], version["status"]) == (image, "PendingManualApproval")
    assert version["model_data_url"] == step(run, "AbaloneTrain")["ModelArtifacts"]["S3ModelArtifacts"]
    assert version["model_metrics"] == {"ModelQuality.Statistics": f"s3://{BUCKET}/abalone/evaluation/evaluation.json"}
    assert step(run, "AbaloneRegisterModel")["ModelPackageArn"] == version["arn"]
    listed = run["listed"].output
    assert run["listed"].exit_code == 0 and re.search(rf"{GROUP}\s+│?\s*1\s+│?\s*PendingManualApproval", listed), listed
    # its metric is XGBoost's validation:rmse (the training job's FinalMetricDataList), not DeepAR's test metrics
    assert "validation:rmse" in listed and "test:RMSE" not in listed, listed
    assert f"{version['metrics']['validation:rmse']:.4f}" in listed, listed


def test_the_transform_writes_one_prediction_per_line_equal_to_the_models(run, tmp_path):
    import xgboost as xgb
    batch = rows(run, "AbaloneProcess", "batch", "batch.csv")
    output = arguments(run, "AbaloneTransform")["TransformOutput"]["S3OutputPath"]
    written = sorted(p.name for p in run["store"].path(output).iterdir())
    assert written == ["batch.csv.out"]
    lines = (run["store"].path(output) / "batch.csv.out").read_text().splitlines()
    assert len(lines) == len(batch)
    np.testing.assert_allclose([float(line) for line in lines], booster(run, tmp_path).predict(xgb.DMatrix(batch)), rtol=1e-6)


def test_the_tutorial_writes_the_same_scripts():
    "nbs/tutorials/06_any_pipeline.ipynb writes preprocess.py and evaluate.py in cells (%%writefile): these files, as they are here."
    notebook = json.loads((Path(__file__).parents[1] / "nbs" / "tutorials" / "06_any_pipeline.ipynb").read_text())
    written = {}
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith("%%writefile "):
            first, _, body = source.partition("\n")
            written[Path(first.split()[1]).name] = body
    for name in ("preprocess.py", "evaluate.py"):
        assert written.get(name, "").rstrip() == (ABALONE / name).read_text().rstrip(), f"the tutorial's {name} differs from {ABALONE / name}"
