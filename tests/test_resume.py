"""Honest resume and cache keys: a step is never served from the cache with a model it no longer resolves to, a resumed
execution registers its model once, one process continues an execution, resume runs the step notebooks as they are now
and keeps the execution's options; a bad --definition file is one error. Real parts: sqlite MLflow, subprocesses, SIGKILL."""
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from conftest import IN_ITS_OWN_PROCESS, MLOPS, TINY, private_workspace, run_mlops
from mlops.engine.execution import Execution
from mlops.engine.records import Records
from test_events import TRAINING_STEPS, changes, check_shape, ran


def events_of(workspace, execution_id) -> list[dict]:
    "The lines of `.mlops/events.jsonl` about one execution (tests/test_events.py checks their shape)."
    lines = (workspace["home"] / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["detail"]["pipelineExecutionArn"].endswith(f"/execution/{execution_id}")]

GROUP = "deepar-forecast"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    "A private MLOPS_HOME, its own copy of the step notebooks, tiny data (6 items × 120 days; 7 future days for inference)."
    return private_workspace(tmp_path_factory.mktemp("resume"))


def mlops(workspace, *args):
    return run_mlops(*args, cwd=workspace["root"], env=workspace["env"])


def start(workspace, *args) -> subprocess.Popen:
    return subprocess.Popen([*MLOPS, *map(str, args)], cwd=workspace["root"],
                            env={**os.environ, "COLUMNS": "200", **workspace["env"], **IN_ITS_OWN_PROCESS},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def latest(workspace) -> Execution:
    return Execution.load(Records(workspace["home"] / "runs.db").executions(1)[0]["id"], workspace["home"])


def versions(workspace, execution_id=None) -> list[int]:
    "The model versions in the MLflow registry (of one execution: its tag), read from the sqlite file itself."
    with sqlite3.connect(workspace["home"] / "mlflow.db") as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='model_version_tags'").fetchall(): return []  # being created
        if execution_id is None: return [r[0] for r in db.execute("SELECT version FROM model_versions WHERE name=?", (GROUP,))]
        return [r[0] for r in db.execute("SELECT version FROM model_version_tags WHERE name=? AND key='mlops.execution_id' "
                                         "AND value=?", (GROUP, execution_id))]


def train(workspace, *extra, epochs=1) -> Execution:
    args = [a if a != "Epochs=1" else f"Epochs={epochs}" for a in TINY]
    result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *args, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return latest(workspace)


def kill_when(process, ready, timeout=240):
    "SIGKILL the process and its step processes as soon as `ready()` is true (polled every 5 ms)."
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the moment never came"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def only_execution_since(workspace, before: set) -> str:
    rows = {r["id"] for r in Records(workspace["home"] / "runs.db").executions(100)}
    (new,) = rows - before
    return new


# 1. cache keys hold what a step resolved at run time

def test_inference_uses_the_newly_approved_model_never_the_cached_one(workspace):
    first = train(workspace)
    second = train(workspace, "--no-cache", epochs=2)  # another model, and its own feature state
    states = {e.step("RegisterModel").properties["ModelPackageVersion"]: e.outputs["FeatureEngineering"]["state"]
              for e in (first, second)}
    assert sorted(states) == [1, 2] and states[1] != states[2]
    infer = ["run", "--pipeline", "inference", "--data", workspace["root"] / "future.csv"]

    assert mlops(workspace, "models", "approve", GROUP, "1").returncode == 0
    result = mlops(workspace, *infer)
    assert result.returncode == 0, result.stdout + result.stderr
    with_v1 = latest(workspace)
    assert with_v1.step("BatchTransform").properties["ModelPackageArn"].endswith(f"{GROUP}/1")

    assert mlops(workspace, "models", "approve", GROUP, "2").returncode == 0
    result = mlops(workspace, *infer)
    assert result.returncode == 0, result.stdout + result.stderr
    with_v2 = latest(workspace)
    transform = with_v2.step("BatchTransform")
    assert transform.cached_from is None and transform.properties["ModelPackageArn"].endswith(f"{GROUP}/2")
    assert f"model used: arn:aws:sagemaker:local:000000000000:model-package/{GROUP}/2" in " ".join(result.stdout.split())
    assert with_v2.step("PrepareInference").io.inputs["state"] == with_v2.step("ForecastReport").io.inputs["state"] == states[2]
    assert with_v1.step("PrepareInference").io.inputs["state"] == states[1]
    assert with_v2.step("ForecastReport").cached_from is None
    assert with_v2.outputs["ForecastReport"] != with_v1.outputs["ForecastReport"]

    for version in (1, 2): assert mlops(workspace, "models", "reject", GROUP, str(version)).returncode == 0
    result = mlops(workspace, *infer)
    assert result.returncode == 2, result.stdout + result.stderr  # refused before anything runs: no cached transform either
    message = " ".join(result.stderr.split())
    assert f"model package group '{GROUP}' has no Approved version" in message
    assert f"mlops models approve {GROUP}" in message
    assert latest(workspace).id == with_v2.id


# 2. RegisterModel is idempotent per execution and step

def test_sigkill_right_after_registration_then_resume_gives_one_version(workspace):
    before_runs = {r["id"] for r in Records(workspace["home"] / "runs.db").executions(100)}
    before = len(versions(workspace))
    process = start(workspace, "run", "--data", workspace["root"] / "train.csv", *TINY, "--no-cache")
    kill_when(process, lambda: (workspace["home"] / "mlflow.db").is_file() and len(versions(workspace)) > before)
    execution_id = only_execution_since(workspace, before_runs)
    killed = Execution.load(execution_id, workspace["home"])
    assert killed.status == "Stopped"
    assert killed.step("RegisterModel").status != "Succeeded"  # the version exists, the step never recorded it
    assert len(versions(workspace, execution_id)) == 1
    result = mlops(workspace, "run", "--resume", execution_id)
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = Execution.load(execution_id, workspace["home"])
    assert resumed.status == "Succeeded"
    assert len(versions(workspace, execution_id)) == 1 and len(versions(workspace)) == before + 1
    assert resumed.step("RegisterModel").properties["ModelPackageVersion"] == versions(workspace, execution_id)[0]


# 3. one process per execution; 4. a killed execution's steps read Stopped, and its events go on from there (the one
# SIGKILL-during-training-then-resume scenario of the suite: its records, `mlops status`, its events, 5 racing resumes)

def test_sigkill_during_training_then_five_concurrent_resumes_exactly_one_runs(workspace):
    before_runs, before = {r["id"] for r in Records(workspace["home"] / "runs.db").executions(100)}, len(versions(workspace))
    args = [a if a != "Epochs=1" else "Epochs=3" for a in TINY]
    process = start(workspace, "run", "--data", workspace["root"] / "train.csv", *args, "--no-cache")
    runs_db = workspace["home"] / "runs.db"
    kill_when(process, lambda: bool(Records(runs_db).execute("SELECT 1 FROM steps WHERE name='TrainDeepAR' AND status='Executing' "
                                                             "AND started < ?", time.time() - 1)))
    execution_id = only_execution_since(workspace, before_runs)
    killed = Execution.load(execution_id, workspace["home"])
    assert (killed.status, killed.step("TrainDeepAR").status, killed.step("TrainDeepAR").elapsed) == ("Stopped", "Stopped", None)
    status = mlops(workspace, "status", execution_id)
    assert "Executing" not in status.stdout and status.stdout.count("Stopped") >= 2, status.stdout
    killed_events = events_of(workspace, execution_id)
    assert changes(killed_events)[-1] == ("TrainDeepAR", None, "Executing")  # a SIGKILL leaves no end in the file

    processes = [start(workspace, "run", "--resume", execution_id) for _ in range(5)]
    outputs = [p.communicate(timeout=600) for p in processes]
    codes = [p.returncode for p in processes]
    assert sorted(codes) == [0, 2, 2, 2, 2], outputs
    for (out, err), code in zip(outputs, codes):
        if code == 2:
            message = " ".join(err.split())
            assert f"execution {execution_id} is already running (pid " in message and "Traceback" not in message, message
    winner = outputs[codes.index(0)][0]
    assert f"resuming execution {execution_id}" in " ".join(winner.split())
    resumed = Execution.load(execution_id, workspace["home"])
    assert resumed.status == "Succeeded" and resumed.step("TrainDeepAR").status == "Succeeded"
    assert len(versions(workspace, execution_id)) == 1 and len(versions(workspace)) == before + 1
    status = mlops(workspace, "status", execution_id)
    assert status.returncode == 0 and "Succeeded" in status.stdout and "Stopped" not in status.stdout, status.stdout
    # the events: appended, never rewritten; the one resume that ran says what the records say (Stopped, then on); the
    # four refused ones wrote nothing
    events = events_of(workspace, execution_id)
    assert events[:len(killed_events)] == killed_events
    for event in events: check_shape(event)
    assert changes(events[len(killed_events):]) == [("execution", "Stopped", "Executing"), ("TrainDeepAR", "Stopped", "Executing"),
                                                    ("TrainDeepAR", "Executing", "Succeeded"), *ran(TRAINING_STEPS[2:]),
                                                    ("execution", "Executing", "Succeeded")]


# 4. resume runs the step notebooks as they are now, keeps the options and start time, refuses a changed pipeline

def test_a_failed_step_resumed_refused_for_a_changed_pipeline_then_runs_the_fixed_notebook(workspace):
    """One failing run (a bug in the step notebook): its records and events, a resume refused while the definition differs,
    and the resume after the fix, with the execution's own options and start time, and its events appended."""
    notebook = workspace["root"] / "notebooks" / "feature_engineering.ipynb"
    original = notebook.read_bytes()  # a failing step (a Fail step's execution is not resumable at all)
    broken = nbformat.reads(original.decode(), as_version=4)
    broken.cells.append(nbformat.v4.new_code_cell('raise RuntimeError("a bug in the step notebook")'))
    notebook.write_text(nbformat.writes(broken))
    try:
        result = mlops(workspace, "run", "--data", workspace["root"] / "train.csv", *TINY, "--no-cache", "--max-parallel", "2")
    finally:
        notebook.write_bytes(original)  # the fix
    assert result.returncode == 1 and "a bug in the step notebook" in result.stderr + result.stdout
    failed = latest(workspace)
    assert failed.step("FeatureEngineering").status == "Failed"
    assert Records(workspace["home"] / "runs.db").execution(failed.id)["options"] == {"max_parallel": 2, "use_cache": False}
    failed_events = events_of(workspace, failed.id)
    for event in failed_events: check_shape(event)
    assert changes(failed_events) == [("execution", None, "Executing"), ("FeatureEngineering", None, "Executing"),
                                      ("FeatureEngineering", "Executing", "Failed"), ("execution", "Executing", "Failed")]
    assert "a bug in the step notebook" in failed_events[2]["detail"]["failureReason"]

    # the pipeline changed since it started: refused, and nothing changes
    saved = failed.folder / "definition.json"
    started_with = saved.read_bytes()
    definition = json.loads(started_with)
    step = next(s for s in definition["Steps"] if s["Name"] == "FeatureEngineering")
    step["Arguments"]["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] = 99  # as if the pipeline had changed since
    saved.write_text(json.dumps(definition, indent=1, sort_keys=True))
    try:
        result = mlops(workspace, "run", "--resume", failed.id)
    finally:
        saved.write_bytes(started_with)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"cannot resume execution {failed.id}: the pipeline definition changed since it started (FeatureEngineering)" in message
    assert "Traceback" not in message
    assert Execution.load(failed.id, workspace["home"]).status == "Failed"
    assert events_of(workspace, failed.id) == failed_events

    result = mlops(workspace, "run", "--resume", failed.id)  # no --no-cache: the execution's own options
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the step notebooks and code as they are now" in " ".join(result.stdout.split())
    resumed = Execution.load(failed.id, workspace["home"])
    assert resumed.status == "Succeeded" and resumed.started == failed.started
    assert all(s.cached_from is None for s in resumed.steps)  # it was started with --no-cache
    executed = nbformat.read(resumed.folder / "FeatureEngineering" / "output" / "report" / "feature_engineering.ipynb", as_version=4)
    assert not any("a bug in the step notebook" in c.source for c in executed.cells)
    events = events_of(workspace, failed.id)
    assert events[:4] == failed_events  # appended, never rewritten
    for event in events: check_shape(event)
    after, expected = changes(events[4:]), [("execution", "Failed", "Executing"), ("FeatureEngineering", "Failed", "Executing"),
                                            ("FeatureEngineering", "Executing", "Succeeded"), *ran(TRAINING_STEPS[1:]),
                                            ("execution", "Executing", "Succeeded")]
    # in order up to the quality gate; with --max-parallel 2, RegisterModel and CreateModel then run side by side: each
    # step's own changes in order, all of them, and the execution's end last (the SIGKILL test above checks the whole
    # order of a resume with one step at a time)
    assert after[:7] == expected[:7] and after[-1] == expected[-1] and sorted(map(str, after)) == sorted(map(str, expected)), after
    for step in TRAINING_STEPS: assert [c for c in after if c[0] == step] == [c for c in expected if c[0] == step]
    starts = {e["detail"]["executionStartTime"] for e in events if "executionStartTime" in e["detail"]}
    assert len(starts) == 1  # a resumed execution keeps its start time
    printed = mlops(workspace, "events", failed.id)
    assert "FeatureEngineering  Executing -> Failed  " in printed.stdout and "a bug in the step notebook" in printed.stdout


# 5. --definition goes through `mlops validate` first

@pytest.mark.parametrize("text,problem", [("", "not valid JSON"), ('{"Version": "2020-12-01", "Steps": [', "not valid JSON"),
                                          ("[]", "a pipeline definition is a JSON object"), ("{}", "'Steps' is a required property")])
def test_a_bad_definition_file_is_one_error_and_nothing_runs(tmp_path, text, problem):
    path = tmp_path / "pipeline.json"
    path.write_text(text)
    home = tmp_path / "home"
    result = run_mlops("run", "--definition", path, cwd=tmp_path, env={"MLOPS_HOME": str(home)})
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1, result.stderr
    assert f"is not a valid pipeline definition: pipeline at /: {problem}" in message and "mlops validate" in message
    assert not home.exists() or not any(home.iterdir())  # nothing written
