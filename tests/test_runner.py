"""`mlops run` end to end on tiny demo data: training, inference, the quality gate, cache, resume, selective runs."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import MLOPS, TINY, run_mlops, tiny_data
from mlops.engine.execution import Execution
from mlops.engine.records import Records
from mlops.steps import declared_steps



@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    "A private MLOPS_HOME, tiny data (6 items × 120 days, and 7 future days for inference)."
    root = tmp_path_factory.mktemp("runner")
    tiny_data(root)
    return {"root": root, "env": {"MLOPS_HOME": str(root / "home")}}


def mlops(workspace, *args):
    return run_mlops(*args, cwd=workspace["root"], env=workspace["env"])


def latest(workspace) -> Execution:
    home = Path(workspace["env"]["MLOPS_HOME"])
    return Execution.load(Records(home / "runs.db").executions(1)[0]["id"], home)


@pytest.fixture(scope="module")
def trained(workspace) -> Execution:
    result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    execution = latest(workspace)
    assert "CheckQuality: outcome true" in result.stdout
    assert "registered model: arn:aws:sagemaker:local:000000000000:model-package/deepar-forecast/1" in " ".join(result.stdout.split())
    # where the channels, the state and the model landed: printed, and there
    shown = next(line for line in result.stdout.splitlines() if line.startswith("FeatureEngineering outputs: "))
    for name in ("train", "test", "state"):
        path = Path(shown.split(f"{name} ", 1)[1].split(",")[0])
        assert path == execution.home / "store" / execution.outputs["FeatureEngineering"][name][len("s3://"):] and path.is_dir()
    return execution


def test_training_pipeline_end_to_end(trained: Execution):
    assert trained.status == "Succeeded"
    added = {d["name"] for d in declared_steps()}  # steps added by step notebooks (`mlops new-step`) run too
    assert [s.name for s in trained.steps if s.name not in added] == ["FeatureEngineering", "TrainDeepAR", "CheckQuality",
                                                                       "RegisterModel", "CreateModel"]
    assert {"train:final_loss", "test:RMSE", "test:mean_wQuantileLoss"} <= set(trained.metrics)
    register = trained.step("RegisterModel").properties
    assert register["ModelApprovalStatus"] == "PendingManualApproval"
    model_uri = trained.outputs["TrainDeepAR"]["model"]
    assert model_uri.endswith("/output/model.tar.gz")
    assert (trained.home / "store" / model_uri[len("s3://"):]).is_file()
    assert [p.name for p in trained.notebooks][:1] == ["feature_engineering.ipynb"]


def test_inference_pipeline_on_the_trained_model(workspace, trained: Execution):
    arn = trained.step("RegisterModel").properties["ModelPackageArn"]
    infer = ["run", "--pipeline", "inference", "--data", workspace["root"] / "future.csv"]
    before = latest(workspace).id
    # the version is PendingManualApproval: neither the group nor its ARN gives a usable model, and nothing runs
    refused = mlops(workspace, *infer)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "model package group 'deepar-forecast' has no Approved version" in message and "Traceback" not in message
    assert "mlops models approve deepar-forecast" in message
    refused = mlops(workspace, *infer, "-p", f"ModelPackageArn={arn}")
    assert refused.returncode == 2
    assert "is PendingManualApproval: CreateModel needs an Approved package" in " ".join(refused.stderr.split())
    missing = mlops(workspace, *infer, "-p", "ModelPackageArn=arn:aws:sagemaker:local:000000000000:model-package/deepar-forecast/9")
    assert missing.returncode == 2 and "has no version 9" in " ".join(missing.stderr.split())
    assert latest(workspace).id == before  # nothing was run

    assert mlops(workspace, "models", "approve", "deepar-forecast", str(trained.step("RegisterModel").properties["ModelPackageVersion"])).returncode == 0
    result = mlops(workspace, *infer, "-p", f"ModelPackageArn={arn}")
    assert result.returncode == 0, result.stdout + result.stderr
    execution = latest(workspace)
    added = {d["name"] for d in declared_steps()}
    assert [s.name for s in execution.steps if s.name not in added] == [
        "ResolveModel", "CreateModel", "PrepareInference", "BatchTransform", "ForecastReport"]
    assert execution.step("CreateModel").properties["PrimaryContainer"]["ModelPackageName"] == arn
    assert execution.step("PrepareInference").io.inputs["state"] == trained.outputs["FeatureEngineering"]["state"]
    forecasts = (execution.home / "store" / execution.outputs["ForecastReport"]["forecasts"][len("s3://"):] / "forecasts.csv")
    lines = forecasts.read_text().splitlines()
    assert len(lines) == 1 + 6 * 7  # header + 6 items × 7 days
    assert lines[1].startswith(f"{execution.id},item_001,0,2022-05-01")


def test_quality_gate_fails_the_run_with_its_message(workspace, trained):
    args = [a if a != "QualityThreshold=10" else "QualityThreshold=0.0001" for a in TINY]
    result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *args)
    assert result.returncode == 1
    execution = latest(workspace)
    assert execution.status == "Failed"
    assert "is above the quality threshold 0.0001" in execution.failure_reason
    assert "is above the quality threshold" in " ".join(result.stderr.split())
    assert "RegisterModel" not in [s.name for s in execution.steps]
    # only the threshold changed: the processing and training steps came from the cache
    assert execution.step("FeatureEngineering").cached_from == trained.id
    assert execution.step("TrainDeepAR").cached_from == trained.id


def test_rerun_hits_the_cache(workspace, trained):
    result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *TINY)
    assert result.returncode == 0, result.stderr
    execution = latest(workspace)
    for step in ["FeatureEngineering", "TrainDeepAR"]:
        assert execution.step(step).cached_from == trained.id
        assert not (execution.folder / step / "log.txt").exists()  # it did not execute
    assert "from " + trained.id in result.stdout


def test_selective_run_executes_only_the_named_step(workspace, trained):
    result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *TINY, "--no-cache",
                   "--steps", "FeatureEngineering", "--reference", trained.id)
    assert result.returncode == 0, result.stderr
    execution = latest(workspace)
    executed = sorted(p.parent.name for p in execution.folder.glob("*/log.txt"))
    assert executed == ["FeatureEngineering"]
    assert execution.step("TrainDeepAR").cached_from == trained.id  # taken from the reference


# SIGKILL during training, then resume: tests/test_resume.py (with its events and five racing resumes)


def test_concurrent_runs_do_not_collide(workspace, trained):
    processes = [subprocess.Popen([*MLOPS, "run", "--data", str(workspace["root"] / "train.csv"), *TINY, "--no-cache"],
                                  cwd=workspace["root"], env={**os.environ, **workspace["env"], "COLUMNS": "200"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    arns = {line.split("registered model: ", 1)[1].split()[0] for out, _ in outputs for line in out.splitlines()
            if "registered model: " in line}
    assert len(arns) == 2  # two distinct model package versions


def test_unsupported_step_is_refused_up_front(workspace, tmp_path):
    definition = {"Version": "2020-12-01", "Parameters": [], "Steps": [
        {"Name": "Spark", "Type": "EMR", "Arguments": {"ClusterId": "j-1ABCDEFGHIJKL", "StepConfig": {
            "Name": "spark", "HadoopJarStep": {"Jar": "command-runner.jar"}}}},
        {"Name": "Fine", "Type": "Fail", "Arguments": {"ErrorMessage": "x"}}]}
    path = tmp_path / "emr.json"
    path.write_text(json.dumps(definition))
    result = mlops(workspace, "run", "--definition", path)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "step 'Spark' (EMR, cluster j-1ABCDEFGHIJKL) cannot run locally: EMR steps do not run locally" in message
    assert "Fix: run the pipeline on SageMaker" in message and "'Fine'" not in message


def test_logs_and_runs(workspace, trained):
    logs = mlops(workspace, "logs", trained.id, "TrainDeepAR")
    assert logs.returncode == 0 and "test:mean_wQuantileLoss" in logs.stdout
    runs = mlops(workspace, "runs")
    assert trained.id in runs.stdout
    missing = mlops(workspace, "logs", trained.id, "NoSuchStep")
    assert missing.returncode == 2 and "TrainDeepAR" in missing.stderr


def test_retry_policy_retries_a_retryable_failure(tmp_path):
    "A step whose process is killed (SageMaker.JOB_INTERNAL_ERROR) is retried as its RetryPolicies say; a code error is not."
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    from mlops.engine.executors.processing import MLOPS_ENTRYPOINT
    from mlops.engine.run import run_definition
    from mlops.engine.store import LocalStore
    cells = [new_code_cell("marker = ''\nfail_with_error = False"),
             new_code_cell("import os, pathlib, signal\n"
                           "assert not fail_with_error, 'a bug in the step'\n"
                           "if not pathlib.Path(marker).exists():\n"
                           "    pathlib.Path(marker).write_text('attempt 1')\n"
                           "    os.kill(os.getppid(), signal.SIGKILL)  # the job's process dies: a host failure")]
    cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "python3"}}),
                   tmp_path / "flaky.ipynb")
    LocalStore(tmp_path / "home" / "store").upload(tmp_path / "flaky.ipynb", "s3://bucket/code/flaky.ipynb")
    def definition(fail_with_error: bool) -> dict:
        return {"Version": "2020-12-01", "Parameters": [], "Steps": [{
            "Name": "Flaky", "Type": "Processing",
            "RetryPolicies": [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"], "IntervalSeconds": 1, "BackoffRate": 1.0, "MaxAttempts": 3}],
            "Arguments": {"AppSpecification": {"ImageUri": "mlops-processing:local", "ContainerEntrypoint": MLOPS_ENTRYPOINT,
                                               "ContainerArguments": ["/opt/ml/processing/input/code/flaky.ipynb", "--output-notebook",
                                                                      "/opt/ml/processing/report.ipynb", "-p", "marker", str(tmp_path / "marker"),
                                                                      "-p", "fail_with_error", str(fail_with_error)]},
                          "ProcessingInputs": [{"InputName": "code", "S3Input": {"S3Uri": "s3://bucket/code/flaky.ipynb",
                                                                                 "LocalPath": "/opt/ml/processing/input/code"}}]}}]}
    execution = run_definition(definition(False), pipeline="Flaky", home=tmp_path / "home")
    assert execution.status == "Succeeded"
    assert execution.step("Flaky").attempt == 2
    broken = run_definition(definition(True), pipeline="Flaky", home=tmp_path / "home")
    assert broken.status == "Failed" and broken.step("Flaky").attempt == 1
    assert "AssertionError: a bug in the step" in broken.failure_reason
