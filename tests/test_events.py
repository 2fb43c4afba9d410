"""`.mlops/events.jsonl` and `mlops events`: a real local execution's status changes, in the shape AWS documents for
SageMaker's EventBridge events, in order, for a success (conftest's trained workspace), a failure and its resume, a SIGKILL and its resume (those two in
tests/test_resume.py, with `check_shape` and `changes` from here); `--follow` ends with the execution.

The reference shapes are AWS's own examples of the two events, from "Events that Amazon SageMaker AI sends to Amazon
EventBridge": https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html
"""
import json
import re

import pytest

from conftest import run_mlops

# AWS's documented examples (abridged to their keys and fixed values)
DOCUMENTED_EXECUTION_EVENT = {
    "version": "0", "id": "315c1398-40ff-a850-213b-158f73kd93ir",
    "detail-type": "SageMaker Model Building Pipeline Execution Status Change", "source": "aws.sagemaker",
    "account": "123456789012", "time": "2021-03-15T16:10:11Z", "region": "us-east-1",
    "resources": ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123",
                  "arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123/execution/p4jn9xou8a8s"],
    "detail": {"pipelineExecutionDisplayName": "SomeDisplayName", "currentPipelineExecutionStatus": "Succeeded",
               "previousPipelineExecutionStatus": "Executing", "executionStartTime": "2021-03-15T16:03:13Z",
               "executionEndTime": "2021-03-15T16:10:10Z", "pipelineExecutionDescription": "SomeDescription",
               "pipelineArn": "arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123",
               "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123/execution/p4jn9xou8a8s"}}
DOCUMENTED_STEP_EVENT = {
    "version": "0", "id": "ea37ccbb-5e2b-05e9-4073-1daazc940304",
    "detail-type": "SageMaker Model Building Pipeline Execution Step Status Change", "source": "aws.sagemaker",
    "account": "123456789012", "time": "2021-03-15T16:10:10Z", "region": "us-east-1",
    "resources": ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123",
                  "arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123/execution/p4jn9xou8a8s"],
    "detail": {"metadata": {"processingJob": {"arn": "arn:aws:sagemaker:us-east-1:123456789012:processing-job/pipelines-p4jn9xou8a8s-myprocessingstep1-tmgxry49ug"}},
               "stepStartTime": "2021-03-15T16:03:14Z", "stepEndTime": "2021-03-15T16:10:09Z", "stepName": "myprocessingstep1",
               "stepType": "Processing", "previousStepStatus": "Executing", "currentStepStatus": "Succeeded",
               "pipelineArn": "arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123",
               "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:123456789012:pipeline/myPipeline-123/execution/p4jn9xou8a8s"}}
# the page: "If there is a cache hit, the event contains the cacheHitResult field"; "If the value of currentStepStatus
# is Failed, the event contains the failureReason field"
DOCUMENTED_STEP_DETAIL = set(DOCUMENTED_STEP_EVENT["detail"]) | {"cacheHitResult", "failureReason"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
STATUSES = {"Executing", "Succeeded", "Failed", "Stopped"}  # SageMaker's, for executions and steps
TRAINING_STEPS = ["FeatureEngineering", "TrainDeepAR", "CheckQuality", "RegisterModel", "CreateModel"]


def check_shape(event: dict):
    "`event` has the documented envelope and detail of its kind, and nothing the documentation does not name."
    documented = DOCUMENTED_STEP_EVENT if "Step" in event["detail-type"] else DOCUMENTED_EXECUTION_EVENT
    assert list(event) == list(documented), event  # the envelope, in the documented order
    for key in ("version", "detail-type", "source"):
        assert event[key] == documented[key]
    assert re.fullmatch(r"[0-9]{12}", event["account"]) and event["region"] and TIME.match(event["time"])
    assert re.fullmatch(r"[0-9a-f-]{36}", event["id"])
    detail = event["detail"]
    pipeline_arn, execution_arn = detail["pipelineArn"], detail["pipelineExecutionArn"]
    assert event["resources"] == [pipeline_arn, execution_arn]
    assert re.fullmatch(rf"arn:aws:sagemaker:{event['region']}:{event['account']}:pipeline/\w+", pipeline_arn)
    assert execution_arn.startswith(pipeline_arn + "/execution/")
    if documented is DOCUMENTED_STEP_EVENT:
        assert set(detail) <= DOCUMENTED_STEP_DETAIL, set(detail) - DOCUMENTED_STEP_DETAIL
        assert {"stepName", "stepType", "currentStepStatus", "stepStartTime"} <= set(detail), detail
        assert detail["currentStepStatus"] in STATUSES and detail.get("previousStepStatus", "Executing") in STATUSES
        assert ("failureReason" in detail) == (detail["currentStepStatus"] == "Failed"), detail
        assert ("stepEndTime" in detail) == (detail["currentStepStatus"] != "Executing"), detail
        times = [detail[k] for k in ("stepStartTime", "stepEndTime") if k in detail]
    else:
        assert set(detail) <= set(DOCUMENTED_EXECUTION_EVENT["detail"]), set(detail) - set(DOCUMENTED_EXECUTION_EVENT["detail"])
        assert detail["currentPipelineExecutionStatus"] in STATUSES and "executionStartTime" in detail
        assert ("executionEndTime" in detail) == (detail["currentPipelineExecutionStatus"] != "Executing"), detail
        times = [detail[k] for k in ("executionStartTime", "executionEndTime") if k in detail]
    assert all(TIME.match(t) for t in times) and times == sorted(times) and times[-1] <= event["time"]


def changes(events) -> list[tuple]:
    "(step or 'execution', previous status, current status), in file order."
    out = []
    for e in events:
        d = e["detail"]
        if "stepName" in d: out.append((d["stepName"], d.get("previousStepStatus"), d["currentStepStatus"]))
        else: out.append(("execution", d.get("previousPipelineExecutionStatus"), d["currentPipelineExecutionStatus"]))
    return out


def ran(steps, before=None) -> list[tuple]:
    "The changes of steps that each go from `before` to Executing to Succeeded."
    return [c for s in steps for c in ((s, before, "Executing"), (s, "Executing", "Succeeded"))]




@pytest.fixture(scope="module")
def workspace(trained_workspace):
    "conftest's trained workspace: one training run, followed with `mlops events --follow --json` from its start."
    return trained_workspace


def mlops(workspace, *args):
    return run_mlops(*args, cwd=workspace["root"], env=workspace["env"])


def events_of(workspace, execution_id=None) -> list[dict]:
    lines = (workspace["home"] / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    return [e for e in events if execution_id is None or e["detail"]["pipelineExecutionArn"].endswith(f"/execution/{execution_id}")]


def execution_ids(workspace) -> list[str]:
    "The executions in the events file, in the order they first appear."
    ids = [e["detail"]["pipelineExecutionArn"].rsplit("/", 1)[1] for e in events_of(workspace)]
    return list(dict.fromkeys(ids))


def test_a_successful_execution_followed_as_it_runs(workspace):
    execution_id, followed = workspace["execution"].id, workspace["followed"]  # `--follow` returned when the execution ended
    assert execution_ids(workspace)[0] == execution_id
    assert followed.returncode == 0, followed.stderr

    events = events_of(workspace, execution_id)
    assert [json.loads(line) for line in followed.stdout.splitlines()] == events  # the lines, as written, all of them
    for event in events: check_shape(event)
    assert changes(events) == [("execution", None, "Executing"), *ran(TRAINING_STEPS), ("execution", "Executing", "Succeeded")]
    assert len({e["id"] for e in events}) == len(events)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    by_step = {e["detail"]["stepName"]: e["detail"] for e in events if e["detail"].get("currentStepStatus") == "Succeeded"}
    assert by_step["FeatureEngineering"]["metadata"]["processingJob"]["arn"].startswith(
        f"arn:aws:sagemaker:local:000000000000:processing-job/deepartraining-{execution_id.lower()}")
    assert "trainingJob" in by_step["TrainDeepAR"]["metadata"] and "model" in by_step["CreateModel"]["metadata"]
    assert by_step["RegisterModel"]["metadata"]["registerModel"]["arn"].startswith(
        "arn:aws:sagemaker:local:000000000000:model-package/deepar-forecast/")
    assert by_step["CheckQuality"]["metadata"] == {"condition": {"outcome": "True"}}

    printed = mlops(workspace, "events", execution_id)
    assert printed.returncode == 0 and len(printed.stdout.splitlines()) == len(events)
    assert f"DeepARTraining  {execution_id}  (execution)  Executing -> Succeeded" in printed.stdout


def test_events_of_an_unknown_execution_is_one_error(workspace):
    result = mlops(workspace, "events", "20990101T000000-nope00", "--follow")
    assert result.returncode == 2 and "no execution '20990101T000000-nope00'" in result.stderr and "Traceback" not in result.stderr


def test_a_definition_file_run_writes_its_events_too(tmp_path):
    "mlops run --definition FILE: a one-step pipeline that fails, its transitions in the events file, in the documented shape."
    path = tmp_path / "stop.json"
    path.write_text(json.dumps({"Version": "2020-12-01", "Parameters": [], "Steps": [
        {"Name": "Stop", "Type": "Fail", "Arguments": {"ErrorMessage": "stopped on purpose"}}]}))
    home = tmp_path / "home"
    result = run_mlops("run", "--definition", path, cwd=tmp_path, env={"MLOPS_HOME": str(home)})
    assert result.returncode == 1, result.stdout + result.stderr
    events = [json.loads(line) for line in (home / "events.jsonl").read_text().splitlines()]
    for event in events: check_shape(event)
    assert changes(events) == [("execution", None, "Executing"), ("Stop", None, "Executing"), ("Stop", "Executing", "Failed"),
                               ("execution", "Executing", "Failed")]
    assert events[-2]["detail"]["failureReason"] == "stopped on purpose"
