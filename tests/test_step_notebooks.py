"""Papermill runs of every step notebook through `python -m mlops.processing`, with small parameters.

A notebook with an entry in SMALL_RUNS runs as that entry says; any other (a step you added with `mlops new-step`)
runs on its defaults, which must therefore be small and need no input.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.config import notebooks_dir
from mlops.data.demo import demo_data

STEP_NOTEBOOKS = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))


def run_step(notebook: str, output_notebook: Path, **parameters) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mlops.processing", notebook, "--output-notebook", str(output_notebook)]
    for name, value in parameters.items():
        args += ["-p", name, str(value)]
    return subprocess.run(args, capture_output=True, text=True)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def feature_engineering_small(tmp_path: Path):
    "Train mode, then infer mode with the saved state, on 5 items × 80 days (+ 7 future days)."
    data = tmp_path / "data.csv"
    demo_data(n_items=5, periods=80, future_periods=7).to_csv(data, index=False)
    small = dict(prediction_length=7, context_length=14, test_windows=2)
    train = run_step("feature_engineering", tmp_path / "train" / "report" / "fe.ipynb", input_dir=data,
                     output_dir=tmp_path / "train", mode="train", execution_id="exec-1", **small)
    assert train.returncode == 0, train.stderr
    infer = run_step("feature_engineering", tmp_path / "infer" / "report" / "fe.ipynb", input_dir=data,
                     output_dir=tmp_path / "infer", mode="infer", state_dir=tmp_path / "train" / "state")
    assert infer.returncode == 0, infer.stderr
    return data


def forecast_report_small(tmp_path: Path):
    "The report on its built-in example transform output (the pipeline tests chain it after a real transform)."
    result = run_step("forecast_report", tmp_path / "report" / "forecast_report.ipynb", output_dir=tmp_path / "report",
                      execution_id="exec-2")
    assert result.returncode == 0, result.stderr
    forecasts = (tmp_path / "report" / "forecasts.csv").read_text().splitlines()
    assert forecasts[0].startswith("execution_id,item_id") and len(forecasts) > 1
    assert all(line.startswith("exec-2,") for line in forecasts[1:])


def resolve_model_small(tmp_path: Path):
    "Two versions in a private MLflow registry, the first approved: resolved by group, by ARN, and refused when not approved."
    import os
    from mlops.tracking.store import client
    home = tmp_path / "home"
    c = client(home)
    c.create_registered_model("sales")
    for version, status in ((1, "Approved"), (2, "PendingManualApproval")):
        c.create_model_version("sales", source=f"s3://b/v{version}", tags={
            "ModelApprovalStatus": status, "Image": "forecasting-deepar:local", "ModelDataUrl": f"s3://b/v{version}/model.tar.gz",
            "metadata.feature_state_uri": f"s3://b/v{version}/state", "metadata.pipeline_execution_id": f"exec-{version}"})
    env = {**os.environ, "MLOPS_HOME": str(home)}
    def resolve(name, **parameters):
        args = [sys.executable, "-m", "mlops.processing", "resolve_model", "--output-notebook", str(tmp_path / name / "report.ipynb"),
                "-p", "output_dir", str(tmp_path / name)]
        for key, value in parameters.items(): args += ["-p", key, value]
        return subprocess.run(args, capture_output=True, text=True, env=env)
    assert resolve("latest", model_package_group_name="sales").returncode == 0
    latest = json.loads((tmp_path / "latest" / "model.json").read_text())
    assert (latest["ModelPackageVersion"], latest["FeatureStateUri"], latest["TrainingExecutionId"]) == (1, "s3://b/v1/state", "exec-1")
    refused = resolve("v2", model_package_arn="arn:aws:sagemaker:local:000000000000:model-package/sales/2")
    assert refused.returncode == 1 and "is PendingManualApproval: CreateModel needs an Approved package" in refused.stderr
    assert not (tmp_path / "v2" / "model.json").exists()


SMALL_RUNS = {"feature_engineering": feature_engineering_small, "forecast_report": forecast_report_small,
              "resolve_model": resolve_model_small}


def on_its_defaults(notebook: str):
    "Any other step notebook: on its defaults, writing under the test's folder."
    def run(tmp_path: Path):
        result = run_step(notebook, tmp_path / "report" / f"{notebook}.ipynb", output_dir=tmp_path / "out")
        assert result.returncode == 0, result.stderr
    return run


@pytest.mark.parametrize("notebook", STEP_NOTEBOOKS)
def test_step_notebook_runs_small(tmp_path: Path, notebook: str):
    SMALL_RUNS.get(notebook, on_its_defaults(notebook))(tmp_path)
    executed = list(tmp_path.rglob("*.ipynb"))
    assert executed, "the executed notebook is a step output"


def test_train_and_infer_encodings_agree(tmp_path: Path):
    "The same items get the same start, categories, history and dynamic features in both modes."
    data = feature_engineering_small(tmp_path)
    test = records(tmp_path / "train" / "test" / "test.json")
    train = records(tmp_path / "train" / "train" / "train.json")
    requests = records(tmp_path / "infer" / "inference" / "requests.jsonl")
    index = (tmp_path / "infer" / "index" / "items.csv").read_text().splitlines()[1:]
    assert len(requests) == len(index) == len(train) == 5
    assert len(test) == 2 * 5  # two rolling windows per item
    full = test[5:]  # the last window: the full series
    raw = demo_data(n_items=5, periods=80, future_periods=7)
    for i, (request, window, line) in enumerate(zip(requests, full, index)):
        item = line.split(",")[0]
        history = raw[raw.item_id == item].target.iloc[:80].tolist()
        assert request["start"] == window["start"] == train[i]["start"] == "2022-01-01 00:00:00"
        assert request["cat"] == window["cat"] == train[i]["cat"]
        assert request["target"] == window["target"] == history
        assert len(train[i]["target"]) == 80 - 2 * 7
        assert len(request["dynamic_feat"][0]) == 80 + 7
        assert request["dynamic_feat"][0][:80] == window["dynamic_feat"][0]
        assert request["dynamic_feat"][0][80:] == raw[raw.item_id == item].promo.iloc[80:].astype(float).tolist()
        assert line.split(",")[1] == "2022-03-22 00:00:00"  # the day after the last observation
    state = json.loads((tmp_path / "train" / "state" / "feature_state.json").read_text())
    assert state["execution_id"] == "exec-1"
    summary = json.loads((tmp_path / "infer" / "report" / "summary.json").read_text())
    assert summary["unseen_categories"] == {"store": 0, "category": 0}
