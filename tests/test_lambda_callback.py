"""Lambda and Callback steps of SDK-built definitions, run with `mlops run --definition`.

A Lambda step calls the Python handler the user maps to its function (`lambdas.json` or `--lambda`), its Arguments the
event, and its OutputParameters come from the returned dictionary (AWS: "These keys refer to a dictionary defined in the
output of the `Lambda` function", https://docs.aws.amazon.com/sagemaker/latest/dg/build-and-manage-steps-types.html#step-type-lambda;
SDK: sagemaker/mlops/workflow/lambda_step.py LambdaStep, LambdaOutput). An unmapped function is refused before anything
runs. A Callback step records the message SageMaker would send to SQS and waits for `mlops callback success|failure`
(botocore's SendPipelineExecutionStepSuccess / SendPipelineExecutionStepFailure: OutputParameters, FailureReason).
"""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MLOPS, run_mlops

REGION = "us-east-1"
FUNCTION = f"arn:aws:lambda:{REGION}:123456789012:function"
QUEUE = f"https://sqs.{REGION}.amazonaws.com/123456789012/pipeline-callbacks"


def build_lambda_condition(session):
    "A Lambda step whose outputs feed a Condition: a second Lambda step when the score is high enough, else a Fail step."
    from sagemaker.core.lambda_helper import Lambda
    from sagemaker.core.workflow.conditions import ConditionEquals, ConditionGreaterThanOrEqualTo
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterString
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.lambda_step import LambdaOutput, LambdaOutputTypeEnum, LambdaStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    model, base = ParameterString(name="ModelName", default_value="abalone"), ParameterFloat(name="Base", default_value=0.5)
    check = LambdaStep(name="CheckModel", lambda_func=Lambda(function_arn=f"{FUNCTION}:check-model", session=session),
                       inputs={"model_name": model, "base": base},
                       outputs=[LambdaOutput(output_name="statusCode", output_type=LambdaOutputTypeEnum.String),
                                LambdaOutput(output_name="score", output_type=LambdaOutputTypeEnum.Float)])
    notify = LambdaStep(name="Notify", lambda_func=Lambda(function_arn=f"{FUNCTION}:notify", session=session),
                        inputs={"score": check.properties.Outputs["score"]},
                        outputs=[LambdaOutput(output_name="sent", output_type=LambdaOutputTypeEnum.Boolean)])
    gate = ConditionStep(name="ScoreGood", conditions=[
        ConditionEquals(left=check.properties.Outputs["statusCode"], right="200"),
        ConditionGreaterThanOrEqualTo(left=check.properties.Outputs["score"], right=0.8)],
        if_steps=[notify], else_steps=[FailStep(name="TooLow", error_message="the score is too low")])
    return Pipeline(name="lambda-condition", parameters=[model, base], steps=[check, gate], sagemaker_session=session)


def build_callbacks(session):
    "Two Callback steps: the second one's arguments join the first one's outputs (the SDK's CallbackStep, CallbackOutput)."
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.callback_step import CallbackOutput, CallbackOutputTypeEnum, CallbackStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    data = ParameterString(name="InputData", default_value="s3://bucket/callback/input")
    glue = CallbackStep(name="RunGlueJob", sqs_queue_url=QUEUE, inputs={"input_location": data, "job": "etl"},
                        outputs=[CallbackOutput(output_name="output_location", output_type=CallbackOutputTypeEnum.String),
                                 CallbackOutput(output_name="rows", output_type=CallbackOutputTypeEnum.Integer)])
    approve = CallbackStep(name="Approve", sqs_queue_url=QUEUE, inputs={"summary": Join(on=":", values=[
        glue.properties.Outputs["output_location"], glue.properties.Outputs["rows"]])},
        outputs=[CallbackOutput(output_name="approved", output_type=CallbackOutputTypeEnum.Boolean)])
    return Pipeline(name="callbacks", parameters=[data], steps=[glue, approve], sagemaker_session=session)


@pytest.fixture(scope="module")
def definitions(tmp_path_factory) -> dict[str, Path]:
    "The two definitions, built offline by the SDK, as files."
    import logging
    import warnings
    from mlops.offline import offline_aws, pipeline_session
    folder = tmp_path_factory.mktemp("definitions")
    logging.disable(logging.WARNING)
    try:
        with offline_aws(REGION), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = pipeline_session({"ArtifactBucket": "bucket"})
            built = {"lambda-condition": build_lambda_condition(session), "callbacks": build_callbacks(session)}
            texts = {name: pipeline.definition() for name, pipeline in built.items()}
    finally:
        logging.disable(logging.NOTSET)
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(text)
    return paths


HANDLERS = '''
import json
from pathlib import Path

def check(event, context):
    print("checking", event["model_name"], "as", context.function_name)
    Path("check-event.json").write_text(json.dumps({"event": event, "function": context.function_name,
                                                    "arn": context.invoked_function_arn, "request": context.aws_request_id}))
    return {"statusCode": 200, "score": event["base"] + 0.4, "unused": {"nested": True}}

def notify(event, context):
    Path("notify-event.json").write_text(json.dumps(event))
    return {"sent": True}
'''


def project(tmp_path: Path) -> Path:
    "A folder with the handlers as a user writes them: `handlers.py`, and `lambdas.json` mapping one function (by name)."
    folder = tmp_path / "project"
    (folder / "hooks").mkdir(parents=True)
    (folder / "hooks" / "handlers.py").write_text(HANDLERS)
    (folder / "lambdas.json").write_text(json.dumps({"check-model": "hooks/handlers.py:check"}))
    return folder


def steps_of(home: Path) -> dict[str, dict]:
    "The steps of the only execution in `home`, by name (status, failure reason, properties)."
    from mlops.engine.records import Records
    records = Records(home / "runs.db")
    [execution] = records.executions(10)
    return {row["name"]: row for row in records.steps(execution["id"])}


def test_lambda_outputs_feed_a_condition(definitions, tmp_path):
    folder = project(tmp_path)
    result = run_mlops("run", "--definition", definitions["lambda-condition"], "--lambda",
                       f"{FUNCTION}:notify=hooks.handlers:notify", cwd=folder)  # the second one by ARN, as a module
    assert result.returncode == 0, result.stdout + result.stderr
    steps = steps_of(folder / ".mlops")
    assert {n: s["status"] for n, s in steps.items()} == {"CheckModel": "Succeeded", "ScoreGood": "Succeeded", "Notify": "Succeeded"}
    assert steps["CheckModel"]["properties"]["OutputParameters"] == {"statusCode": "200", "score": pytest.approx(0.9)}
    assert steps["ScoreGood"]["properties"]["Outcome"] is True
    [run_folder] = (folder / ".mlops" / "runs").iterdir()
    seen = json.loads((run_folder / "CheckModel" / "check-event.json").read_text())  # it runs in the step's folder
    assert seen["event"] == {"model_name": "abalone", "base": 0.5}
    assert seen["function"] == "check-model" and seen["arn"] == f"{FUNCTION}:check-model" and seen["request"]
    assert json.loads((run_folder / "Notify" / "notify-event.json").read_text()) == {"score": pytest.approx(0.9)}
    assert "checking abalone as check-model" in (run_folder / "CheckModel" / "log.txt").read_text()

    low = run_mlops("run", "--definition", definitions["lambda-condition"], "-p", "Base=0.1", "--lambda",
                    "notify=hooks.handlers:notify", cwd=folder)  # score 0.5: the Condition takes the else branch
    assert low.returncode == 1, low.stdout + low.stderr
    assert "the score is too low" in low.stdout + low.stderr


def test_a_handler_that_returns_no_declared_output_fails_its_step(definitions, tmp_path):
    folder = project(tmp_path)
    (folder / "hooks" / "handlers.py").write_text(HANDLERS.replace('"score": event["base"] + 0.4, ', ""))
    result = run_mlops("run", "--definition", definitions["lambda-condition"], "--lambda", "notify=hooks.handlers:notify", cwd=folder)
    assert result.returncode == 1
    steps = steps_of(folder / ".mlops")
    assert steps["CheckModel"]["status"] == "Failed"
    assert "returned no score (declared in OutputParameters)" in steps["CheckModel"]["failure_reason"]


def test_an_unmapped_lambda_is_refused_before_anything_runs(definitions, tmp_path):
    folder = project(tmp_path)  # check-model is mapped in lambdas.json, notify nowhere
    result = run_mlops("run", "--definition", definitions["lambda-condition"], cwd=folder)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"step 'Notify' (Lambda, function {FUNCTION}:notify) cannot run locally: no local handler stands for it" in message
    assert "mlops run --lambda notify=module:function" in message and "lambdas.json" in message
    assert "CheckModel" not in message  # the mapped one is not refused
    assert not (folder / ".mlops" / "runs").exists()


def wait_for(condition, process, seconds=60.0):
    "The value of `condition()` once it is truthy; fails when `process` ended first or after `seconds`."
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition(): return value
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError("timed out")


def waiting_message(home: Path, step: str):
    "The message the Callback step `step` sent (its token waiting), or None."
    found = list((home / "runs").glob(f"*/{step}/callback-message.json")) if (home / "runs").is_dir() else []
    return json.loads(found[0].read_text()) if found else None


def test_callback_steps_wait_for_mlops_callback(definitions, tmp_path):
    home = tmp_path / ".mlops"
    env = {**os.environ, "MLOPS_HOME": str(home), "COLUMNS": "200"}
    run = subprocess.Popen([*MLOPS, "run", "--definition", str(definitions["callbacks"])], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        glue = wait_for(lambda: waiting_message(home, "RunGlueJob"), run)
        assert glue["arguments"] == {"input_location": "s3://bucket/callback/input", "job": "etl"}
        execution_id = next((home / "runs").iterdir()).name
        assert glue["pipelineExecutionArn"].endswith(f"pipeline/callbacks/execution/{execution_id}")
        refused = run_mlops("callback", "success", glue["token"], "--output", "output_location=s3://bucket/out",
                            "--output", "rows=twelve", env={"MLOPS_HOME": str(home)})
        assert refused.returncode == 2 and "not an Integer" in refused.stderr  # refused before it is written: sent again below
        answered = run_mlops("callback", "success", glue["token"], "--output", "output_location=s3://bucket/out",
                             "--output", "rows=12", env={"MLOPS_HOME": str(home)})
        assert answered.returncode == 0, answered.stderr
        approve = wait_for(lambda: waiting_message(home, "Approve"), run)
        assert approve["arguments"] == {"summary": "s3://bucket/out:12"} and approve["token"] != glue["token"]
        again = run_mlops("callback", "failure", glue["token"], "--reason", "late", env={"MLOPS_HOME": str(home)})
        assert again.returncode == 2 and "answered already" in again.stderr
        failed = run_mlops("callback", "failure", approve["token"], "--reason", "not approved", env={"MLOPS_HOME": str(home)})
        assert failed.returncode == 0, failed.stderr
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None: run.kill(); run.wait()
    assert run.returncode == 1, stdout + stderr
    assert glue["token"] in stdout  # the view printed how to answer it
    steps = steps_of(home)
    assert steps["RunGlueJob"]["status"] == "Succeeded"
    assert steps["RunGlueJob"]["properties"]["OutputParameters"] == {"output_location": "s3://bucket/out", "rows": 12}
    assert steps["Approve"]["status"] == "Failed" and steps["Approve"]["failure_reason"] == "Approve: not approved"
    [run_folder] = (home / "runs").iterdir()
    assert glue["token"] in (run_folder / "RunGlueJob" / "log.txt").read_text()


def test_an_answer_sent_while_the_run_was_stopped_is_taken_on_resume(definitions, tmp_path):
    import signal
    home = tmp_path / ".mlops"
    env = {**os.environ, "MLOPS_HOME": str(home), "COLUMNS": "200"}
    command = [*MLOPS, "run", "--definition", str(definitions["callbacks"])]
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        glue = wait_for(lambda: waiting_message(home, "RunGlueJob"), run)
        run.send_signal(signal.SIGINT)  # Ctrl-C while the step waits
        run.communicate(timeout=60)
    finally:
        if run.poll() is None: run.kill(); run.wait()
    assert steps_of(home)["RunGlueJob"]["status"] == "Stopped"
    assert waiting_message(home, "RunGlueJob") == {**glue, "status": "Stopping"}  # what SageMaker sends on a stop
    execution_id = next((home / "runs").iterdir()).name
    answered = run_mlops("callback", "success", glue["token"], "--output", "output_location=s3://bucket/out",
                         "--output", "rows=3", env={"MLOPS_HOME": str(home)})
    assert answered.returncode == 0, answered.stderr
    assert f"mlops run --resume {execution_id}" in " ".join(answered.stdout.split())
    resume = subprocess.Popen([*command, "--resume", execution_id], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        approve = wait_for(lambda: waiting_message(home, "Approve"), resume)  # the first step took the answer at once
        assert approve["arguments"] == {"summary": "s3://bucket/out:3"}
        assert run_mlops("callback", "success", approve["token"], "--output", "approved=true",
                         env={"MLOPS_HOME": str(home)}).returncode == 0
        stdout, stderr = resume.communicate(timeout=60)
    finally:
        if resume.poll() is None: resume.kill(); resume.wait()
    assert resume.returncode == 0, stdout + stderr
    steps = steps_of(home)
    assert steps["RunGlueJob"]["properties"]["CallbackToken"] == glue["token"]  # the same token, answered while stopped
    assert steps["Approve"]["properties"]["OutputParameters"] == {"approved": True}
