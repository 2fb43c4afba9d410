"""Traceability end to end: after real `mlops run`s on tiny data, MLflow (the real sqlite store, read through
MlflowClient) holds the execution's run and its step runs, the registry holds versions with their approval
status, the inference pipeline picks the approved version, and lineage leads back to the input file's sha256."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY, run_mlops
from mlops.data.demo import demo_data
from mlops.engine.execution import Execution
from mlops.engine.records import Records
from mlops.tracking.lineage import execution_run

GROUP = "deepar-forecast"
STEPS = ["FeatureEngineering", "TrainDeepAR", "CheckQuality", "RegisterModel", "CreateModel"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    "A private MLOPS_HOME; tiny data, the same data with one item changed, and future rows for inference."
    root = tmp_path_factory.mktemp("tracking")
    data = demo_data(n_items=6, periods=120)
    data.to_csv(root / "train.csv", index=False)
    changed = data.copy()
    changed.loc[changed["item_id"] == changed["item_id"].iloc[0], "target"] += 1
    changed.to_csv(root / "changed.csv", index=False)
    demo_data(n_items=6, periods=120, future_periods=7).to_csv(root / "future.csv", index=False)
    home = root / "home"
    return {"root": root, "home": home, "env": {"MLOPS_HOME": str(home)}}


def mlops(workspace, *args, env=None):
    return run_mlops(*args, cwd=workspace["root"], env={**workspace["env"], **(env or {})})


def latest(workspace) -> Execution:
    return Execution.load(Records(workspace["home"] / "runs.db").executions(1)[0]["id"], workspace["home"])


@pytest.fixture(scope="module")
def client(workspace, trained):
    from mlflow import MlflowClient
    uri = f"sqlite:///{workspace['home'].resolve()}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def trained(workspace) -> Execution:
    result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"registered model: arn:aws:sagemaker:local:000000000000:model-package/{GROUP}/1" in " ".join(result.stdout.split())
    return latest(workspace)


def nested_runs(client, run) -> dict:
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return {r.info.run_name: r for r in children}


def test_execution_is_an_mlflow_run_with_a_nested_run_per_step(workspace, trained, client):
    run = execution_run(trained.id, trained.home)
    assert run.info.run_name == trained.id and run.info.status == "FINISHED"
    assert run.data.params["Epochs"] == "1" and run.data.params["QualityThreshold"] == "10.0"
    tags = run.data.tags
    import mlops
    assert tags["mlops.version"] == mlops.__version__
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(mlops.__file__).parents[1])
    assert tags["mlops.git_commit"] == (commit.stdout.strip() if commit.returncode == 0 else "unknown")
    assert tags["mlops.git_dirty"] in ("true", "false", "none")
    assert tags["mlops.definition_sha256"] == sha256(trained.folder / "definition.json")
    assert tags["mlops.input_data.sha256"] == sha256(workspace["root"] / "train.csv")
    assert (tags["mlops.input_data.rows"], tags["mlops.input_data.items"]) == ("720", "6")

    steps = nested_runs(client, run)
    assert sorted(steps) == sorted(STEPS)
    train = steps["TrainDeepAR"]
    assert train.data.params["epochs"] == "1"
    expected = {"train:final_loss": "train_final_loss", "test:RMSE": "test_RMSE",
                "test:mean_wQuantileLoss": "test_mean_wQuantileLoss", "test:wQuantileLoss[0.1]": "test_wQuantileLoss_0.1"}
    for sagemaker_name, mlflow_name in expected.items():
        assert train.data.metrics[mlflow_name] == pytest.approx(trained.metrics[sagemaker_name])
    assert {a.path for a in client.list_artifacts(train.info.run_id)} >= {"metrics.json", "hyperparameters.json", "model"}
    assert [a.path for a in client.list_artifacts(train.info.run_id, "model")] == ["model/model.tar.gz"]

    fe = steps["FeatureEngineering"]
    assert fe.data.params["mode"] == "train" and fe.data.params["prediction_length"] == "7"
    artifacts = {a.path for folder in ("report", "state") for a in client.list_artifacts(fe.info.run_id, folder)}
    assert {"report/feature_engineering.ipynb", "state/feature_state.json"} <= artifacts
    notebook = Path(mlops.__file__).parents[1] / "nbs" / "processing" / "feature_engineering.ipynb"
    assert fe.data.tags["mlops.notebook.sha256"] == sha256(notebook)
    assert fe.data.tags["mlops.input.data.sha256"] == sha256(workspace["root"] / "train.csv")
    assert train.data.tags["mlops.input.train.uri"] == fe.data.tags["mlops.output.train.uri"]


def test_registry_holds_a_version_pending_manual_approval(trained, client):
    versions = client.search_model_versions(f"name = '{GROUP}'")
    assert [str(v.version) for v in versions] == ["1"]
    version = versions[0]
    assert version.tags["ModelApprovalStatus"] == "PendingManualApproval"
    assert version.tags["mlops.execution_id"] == trained.id
    assert float(version.tags["metric.test_RMSE"]) == pytest.approx(trained.metrics["test:RMSE"])
    train = nested_runs(client, execution_run(trained.id, trained.home))["TrainDeepAR"]
    assert version.run_id == train.info.run_id  # the source run holds model/model.tar.gz
    assert version.tags["ModelDataUrl"] == trained.outputs["TrainDeepAR"]["model"]
    assert trained.step("RegisterModel").properties["ModelApprovalStatus"] == "PendingManualApproval"


def test_after_approval_the_inference_pipeline_picks_the_version(workspace, trained, client):
    from mlops.tracking.registry import model_versions
    refused = mlops(workspace, "run", "--pipeline", "inference", "--data", workspace["root"] / "future.csv")
    assert refused.returncode == 2  # refused before anything runs
    assert f"mlops models approve {GROUP} 1" in " ".join(refused.stderr.split())

    listed = mlops(workspace, "models", "list")
    assert listed.returncode == 0, listed.stderr
    row = next([cell.strip() for cell in line.split("│")[1:-1]] for line in listed.stdout.splitlines() if GROUP in line)
    assert row[:3] == [GROUP, "1", "PendingManualApproval"] and trained.id in row

    approved = mlops(workspace, "models", "approve", GROUP, "1")
    assert approved.returncode == 0, approved.stderr
    assert f"{GROUP}/1: PendingManualApproval → Approved" in approved.stdout
    assert f"default model: {GROUP}/1" in approved.stdout
    assert client.get_model_version(GROUP, "1").tags["ModelApprovalStatus"] == "Approved"
    missing = mlops(workspace, "models", "approve", GROUP, "9")
    assert missing.returncode == 2 and "has no version 9" in missing.stderr
    assert [(v["version"], v["status"]) for v in model_versions(GROUP, workspace["home"])] == [(1, "Approved")]
    result = mlops(workspace, "run", "--pipeline", "inference", "--data", workspace["root"] / "future.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    inference = latest(workspace)
    transform = inference.step("BatchTransform").properties
    assert transform["ModelPackageArn"] == f"arn:aws:sagemaker:local:000000000000:model-package/{GROUP}/1"
    assert transform["ModelDataUrl"] == trained.outputs["TrainDeepAR"]["model"]
    # the feature state the model was trained with, from the version's metadata
    assert inference.step("PrepareInference").io.inputs["state"] == trained.outputs["FeatureEngineering"]["state"]
    run = execution_run(inference.id, inference.home)
    assert nested_runs(client, run)["BatchTransform"].data.params["ModelPackageArn"] == transform["ModelPackageArn"]


def test_lineage_holds_the_input_file_sha256(workspace, trained):
    from rich.console import Console
    from mlops.tracking.lineage import lineage, lineage_mermaid, lineage_tree
    graph = lineage(f"{GROUP}/1", workspace["home"])
    assert json.loads(json.dumps(graph)) == graph  # plain JSON
    digest = sha256(workspace["root"] / "train.csv")
    assert graph["input_data"]["sha256"] == digest
    assert graph["execution"]["id"] == trained.id
    assert [s["step"] for s in graph["steps"]] == ["TrainDeepAR", "FeatureEngineering"]
    assert graph["steps"][1]["inputs"]["data"]["sha256"] == digest
    assert graph["steps"][0]["params"]["epochs"] == "1"
    console = Console(record=True, width=400)
    console.print(lineage_tree(graph))
    text = console.export_text()
    assert text.index(f"model {GROUP}/1") < text.index("TrainDeepAR") < text.index("FeatureEngineering") < text.index(digest)
    assert "-->|train|" in lineage_mermaid(graph)
    assert lineage(trained.id, workspace["home"])["input_data"]["sha256"] == digest  # by execution id

    # the command: a tree by default, JSON for machines (the same graph), Mermaid for diagrams
    tree = mlops(workspace, "lineage", f"{GROUP}/1")
    assert tree.returncode == 0, tree.stderr
    assert tree.stdout.index("TrainDeepAR") < tree.stdout.index("FeatureEngineering") < tree.stdout.index(digest)
    as_json = mlops(workspace, "lineage", f"arn:aws:sagemaker:local:000000000000:model-package/{GROUP}/1", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["input_data"] == graph["input_data"]
    assert "-->|train|" in mlops(workspace, "lineage", trained.id, "--format", "mermaid").stdout
    unknown = mlops(workspace, "lineage", "no-such-execution")
    assert unknown.returncode == 2 and "mlops runs" in unknown.stderr


def test_changed_data_makes_a_new_version_whose_lineage_differs_there(workspace, trained):
    from mlops.tracking.lineage import lineage
    from mlops.tracking.registry import reject, resolve_model_package
    result = mlops(workspace, "run", "--data", workspace["root"] / "changed.csv", *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"model-package/{GROUP}/2" in result.stdout
    first, second = lineage(f"{GROUP}/1", workspace["home"]), lineage(f"{GROUP}/2", workspace["home"])
    assert first["input_data"]["sha256"] == sha256(workspace["root"] / "train.csv")
    assert second["input_data"]["sha256"] == sha256(workspace["root"] / "changed.csv")
    assert first["code"] == second["code"]
    assert first["execution"]["definition_sha256"] == second["execution"]["definition_sha256"]
    same = lambda graph, step: {k: v for k, v in graph["steps"][step].items() if k in ("params", "notebook", "type", "step")}
    drop_ids = lambda params: {k: v for k, v in params.items() if k != "execution_id"}
    assert same(first, 0) == same(second, 0)  # training: the same hyperparameters
    assert drop_ids(first["steps"][1]["params"]) == drop_ids(second["steps"][1]["params"])
    assert first["steps"][1]["notebook"] == second["steps"][1]["notebook"]
    assert first["steps"][0]["inputs"]["train"]["sha256"] != second["steps"][0]["inputs"]["train"]["sha256"]
    # rejecting version 2 (still pending) leaves version 1 as the inference default
    reject(GROUP, 2, workspace["home"])
    assert resolve_model_package(GROUP, workspace["home"])["version"] == 1


def test_a_tracking_failure_fails_the_run_clearly_and_keeps_the_records(workspace, trained, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *TINY,
                   env={"MLFLOW_TRACKING_URI": f"sqlite:///{blocker}/mlflow.db"})
    assert result.returncode == 1
    assert "cannot open the MLflow tracking store" in " ".join(result.stderr.split())
    execution = latest(workspace)
    assert execution.status == "Failed" and execution.step("TrainDeepAR").status == "Succeeded"


def test_ui_serves_the_store_on_loopback(workspace, trained):
    from mlops.tracking.store import ui_command
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ui_command(workspace["home"], port)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10", timeout=5) as r:
                    status, body = r.status, json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert status == 200
        assert "DeepARTraining" in {e["name"] for e in body["experiments"]}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
