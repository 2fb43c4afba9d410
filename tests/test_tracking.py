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

from conftest import MLOPS, TINY, TRAINED_ARGS, TRAINED_EPOCHS, run_mlops
from mlops.engine.execution import Execution
from mlops.engine.records import Records
from mlops.tracking.lineage import execution_run

GROUP = "deepar-forecast"
EPOCHS, TRAIN = TRAINED_EPOCHS, TRAINED_ARGS  # conftest's trained workspace: a loss curve of three points
STEPS = ["FeatureEngineering", "TrainDeepAR", "CheckQuality", "RegisterModel", "CreateModel"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def workspace(trained_workspace):
    "conftest's trained workspace: a private MLOPS_HOME; tiny data, the same with one item changed, future rows for inference."
    return trained_workspace


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
    "The training run of 3 epochs, its output piped as in CI (workspace['stream']: each line, and whether the command still ran)."
    return workspace["execution"]


def nested_runs(client, run) -> dict:
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return {r.info.run_name: r for r in children}


def test_execution_is_an_mlflow_run_with_a_nested_run_per_step(workspace, trained, client):
    run = execution_run(trained.id, trained.home)
    assert run.info.run_name == trained.id and run.info.status == "FINISHED"
    assert run.data.params["Epochs"] == str(EPOCHS) and run.data.params["QualityThreshold"] == "10.0"
    tags = run.data.tags
    import mlops
    assert tags["mlops.version"] == mlops.__version__
    checkout = Path(mlops.__file__).parents[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=checkout)
    assert tags["mlops.git_commit"] == (commit.stdout.strip() if commit.returncode == 0 else "unknown")
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=checkout)
    assert tags["mlops.git_dirty"] == ("none" if commit.returncode else "true" if changed.stdout.strip() else "false")
    assert tags["mlops.definition_sha256"] == sha256(trained.folder / "definition.json")
    assert tags["mlops.input_data.sha256"] == sha256(workspace["root"] / "train.csv")
    assert (tags["mlops.input_data.rows"], tags["mlops.input_data.items"]) == ("720", "6")

    steps = nested_runs(client, run)
    assert sorted(steps) == sorted(STEPS)
    train = steps["TrainDeepAR"]
    assert train.data.params["epochs"] == str(EPOCHS)
    expected = {"train:final_loss": "train:final_loss", "test:RMSE": "test:RMSE",  # SageMaker's names, where MLflow allows
                "test:mean_wQuantileLoss": "test:mean_wQuantileLoss", "test:wQuantileLoss[0.1]": "test:wQuantileLoss_0.1"}
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


def test_the_recorded_dirty_flag_follows_the_checkout(tmp_path):
    "code_version (the mlops.git_* tags) of a temporary git checkout: clean, a changed tracked file, an untracked one, no git."
    from mlops.tracking.tracker import code_version
    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=tmp_path,
                                       check=True, capture_output=True, text=True).stdout.strip()
    assert code_version(tmp_path)["git_commit"] == "unknown" and code_version(tmp_path)["git_dirty"] is None  # not a checkout
    git("init", "-q")
    (tmp_path / "pipeline.py").write_text("A = 1\n")
    git("add", "pipeline.py")
    git("commit", "-qm", "first")
    clean = code_version(tmp_path)
    assert (clean["git_commit"], clean["git_dirty"]) == (git("rev-parse", "HEAD"), False)
    (tmp_path / "notes.txt").write_text("untracked")  # untracked files do not make the code dirty
    assert code_version(tmp_path)["git_dirty"] is False
    (tmp_path / "pipeline.py").write_text("A = 2\n")
    assert code_version(tmp_path)["git_dirty"] is True
    git("commit", "-qam", "second")
    assert code_version(tmp_path)["git_dirty"] is False and code_version(tmp_path)["git_commit"] != clean["git_commit"]


def test_registry_holds_a_version_pending_manual_approval(trained, client):
    versions = client.search_model_versions(f"name = '{GROUP}'")
    assert [str(v.version) for v in versions] == ["1"]
    version = versions[0]
    assert version.tags["ModelApprovalStatus"] == "PendingManualApproval"
    assert version.tags["mlops.execution_id"] == trained.id
    assert float(version.tags["metric.test:RMSE"]) == pytest.approx(trained.metrics["test:RMSE"])
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
    assert f"the inference pipeline now uses {GROUP}/1: the latest Approved version" in " ".join(approved.stdout.split())
    assert client.get_model_version(GROUP, "1").tags["ModelApprovalStatus"] == "Approved"
    assert client.get_model_version_by_alias(GROUP, "approved").version in (1, "1")
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
    assert graph["steps"][0]["params"]["epochs"] == str(EPOCHS)
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
    result = mlops(workspace, "run", "--data", workspace["root"] / "changed.csv", *TRAIN)
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


def test_a_piped_run_prints_each_step_and_epochs_as_they_happen(workspace, trained):
    lines = [line for line, _ in workspace["stream"]]
    running = dict(workspace["stream"])  # line -> the command was still running when it was read
    for step in ("FeatureEngineering", "TrainDeepAR"):
        assert running[f"{step}: Executing"], step
        assert any(line.startswith(f"{step}: Succeeded ") and running[line] for line in lines), lines
    epochs = [line for line in lines if line.startswith("TrainDeepAR: epoch ")]
    assert [line.split(":")[1].strip() for line in epochs] == [f"epoch 1/{EPOCHS}", f"epoch {EPOCHS}/{EPOCHS}"], lines
    assert all(running[line] for line in epochs)
    check = next(i for i, line in enumerate(lines) if line.startswith("CheckQuality: "))
    assert lines.index("FeatureEngineering: Executing") < lines.index(epochs[0]) < check
    assert not any(set(line) & set("│┃━─┏┗╭╰") for line in lines), "box drawing in piped output"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on `port`: a connection is refused and a server could bind it (with SO_REUSEADDR, as servers do:
    the connections the test made may linger in TIME_WAIT)."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0: return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return True
        except OSError:
            return False


def api(port: int, path: str, body: dict | None = None) -> dict:
    "A call of MLflow's REST API (GET, or POST with a JSON body)."
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlops_ui_shows_what_a_data_scientist_expects_then_frees_its_port(workspace, trained):
    import psutil
    assert mlops(workspace, "models", "approve", GROUP, "1").returncode == 0  # (again: this test may run alone)
    port = free_port()
    ui = subprocess.Popen([*MLOPS, "ui", "--port", str(port)], cwd=workspace["root"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env={**os.environ, **workspace["env"]})
    try:
        deadline, experiment = time.time() + 120, None
        while experiment is None and time.time() < deadline and ui.poll() is None:
            try: experiment = api(port, "experiments/get-by-name?experiment_name=DeepARTraining")["experiment"]
            except OSError: time.sleep(0.5)
        assert experiment is not None, "the MLflow UI did not answer"
        # the experiment opens on its runs: a model-training experiment, not a GenAI one
        assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"

        runs = api(port, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                          "filter": f"tags.`mlops.execution_id` = '{trained.id}'", "max_results": 100})["runs"]
        tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        execution = next(r for r in runs if "mlflow.parentRunId" not in tags(r))
        steps = {tags(r)["mlops.step"]: r for r in runs if "mlflow.parentRunId" in tags(r)}
        # the execution's run carries the headline metrics and the parameters
        metrics = {m["key"]: m["value"] for m in execution["data"]["metrics"]}
        assert {"test:RMSE", "test:mean_wQuantileLoss", "train:final_loss", "train:loss"} <= set(metrics), metrics
        assert metrics["test:RMSE"] == pytest.approx(trained.metrics["test:RMSE"])
        assert {p["key"]: p["value"] for p in execution["data"]["params"]}["Epochs"] == str(EPOCHS)
        # the training loss, one point per epoch, on the execution's run and on the training step's
        for run in (execution, steps["TrainDeepAR"]):
            history = api(port, f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=train:loss")["metrics"]
            assert sorted(int(m.get("step", 0)) for m in history) == list(range(1, EPOCHS + 1)), history
        # the executed notebook as HTML, next to the .ipynb
        fe = steps["FeatureEngineering"]["info"]["run_id"]
        files = {f["path"] for f in api(port, f"artifacts/list?run_id={fe}&path=report")["files"]}
        assert {"report/feature_engineering.ipynb", "report/feature_engineering.html"} <= files, files
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/get-artifact?path=report/feature_engineering.html&run_uuid={fe}",
                                    timeout=10) as page:
            assert b"<html" in page.read(2000).lower()
        # the model: a logged model of the training step (the runs' Models column), the version linked to that run,
        # its approval status readable, the alias on the latest Approved version
        outputs = api(port, f"runs/get?run_id={execution['info']['run_id']}")["run"].get("outputs", {}).get("model_outputs", [])
        assert len(outputs) == 1, outputs
        version = api(port, f"registered-models/alias?name={GROUP}&alias=approved")["model_version"]
        assert version["version"] == "1" and version["run_id"] == steps["TrainDeepAR"]["info"]["run_id"]
        assert version["source"] == f"models:/{outputs[0]['model_id']}"
        assert {t["key"]: t["value"] for t in version["tags"]}["approval"] == "approved"
    finally:
        ui.send_signal(signal.SIGTERM)  # the command only: it ends the server's process group itself
        ui.wait(timeout=60)
    assert ui.returncode == 0
    deadline = time.time() + 15
    while not port_is_free(port) and time.time() < deadline: time.sleep(0.2)
    assert port_is_free(port), f"port {port} still served after `mlops ui` ended"
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"]) if "mlflow" in " ".join(p.info["cmdline"] or [])
            and str(port) in (p.info["cmdline"] or [])]
    assert not left, left
