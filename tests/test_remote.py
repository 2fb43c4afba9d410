"""`mlops deploy`, `start` and `watch` against a real `moto_server` process on 127.0.0.1.

Every command runs as a user runs it: the installed `mlops` console script
(`mlops deploy|start|watch ... --endpoint-url URL`) in a fresh process, with dummy credentials.
The server records every request it receives (moto's recorder), so the tests can tell which API
calls a command made, not only what it printed.
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from conftest import MLOPS
from mlops.config import TEMPLATE_KEYS, project_root, step_notebook
from mlops.definition.templates import example_values
from mlops.render import TEMPLATE_FILES

ROOT = project_root()
TEMPLATES = ROOT / "templates"
TRAINING, INFERENCE = "DeepARTraining", "DeepARBatchInference"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dummy_aws_env(tmp: Path) -> dict:
    "The environment without any real AWS configuration, plus dummy credentials."
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true", "COLUMNS": "160"}


class MotoServer:
    "A moto_server process: its URL, a boto3 client factory, and the API actions it has recorded."

    def __init__(self, url: str, recording: Path, env: dict):
        self.url, self.recording, self.env = url, recording, env

    def client(self, service: str):
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def post(self, path: str):
        urllib.request.urlopen(urllib.request.Request(self.url + path, method="POST"), timeout=10).read()

    def actions(self) -> list[str]:
        "Every request received since the last reset: 'SageMaker.X' for SageMaker, 'S3 METHOD path' for S3."
        found = []
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            target = entry["headers"].get("X-Amz-Target")
            found.append(target if target else f"S3 {entry['method']} {entry['url'].split(self.url, 1)[-1]}")
        return found

    def run(self, *args, env=None, endpoint=True) -> subprocess.CompletedProcess:
        "`mlops ARGS --endpoint-url URL` in a fresh process, from the repository root."
        argv = [*MLOPS, *map(str, args)]
        if endpoint:
            argv += ["--endpoint-url", self.url]
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env or self.env, timeout=120)


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moto")
    port, recording = free_port(), tmp / "recording.jsonl"
    env = dummy_aws_env(tmp)
    server_bin = Path(sys.executable).parent / "moto_server"
    command = [str(server_bin)] if server_bin.exists() else [sys.executable, "-m", "moto.server"]
    process = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**env, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(recording)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url} (exit code {process.poll()})")
                time.sleep(0.1)
        yield MotoServer(url, recording, env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def server(moto_server):
    "The module's server with empty state, an empty recording and the artifact bucket created."
    moto_server.post("/moto-api/reset")
    moto_server.client("s3").create_bucket(Bucket=example_values()["ArtifactBucket"])
    moto_server.post("/moto-api/recorder/reset-recording")
    return moto_server


@pytest.fixture
def values_file(tmp_path) -> Path:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(example_values()))
    return path


def filled_by_text(template_path: Path, values: dict) -> dict:
    "The template filled by plain text replacement (the example values need no JSON escaping): an independent oracle."
    text = template_path.read_text()
    for key, value in values.items():
        assert json.dumps(value) == f'"{value}"', "this oracle only works for values without JSON escapes"
        text = text.replace("{{ " + key + " }}", value)
    assert "{{" not in text
    return json.loads(text)


def tags_of(server, arn: str) -> dict:
    tags = server.client("sagemaker").list_tags(ResourceArn=arn)["Tags"]
    assert len({t["Key"] for t in tags}) == len(tags), f"repeated tag keys: {tags}"
    return {t["Key"]: t["Value"] for t in tags}


def assert_one_clear_error(result: subprocess.CompletedProcess, *phrases: str):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Fix:" in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr)
    assert result.stdout == "", result.stdout


def test_deploy_twice_the_second_is_a_no_op(server, values_file):
    first = server.run("deploy", "--values", values_file)
    assert first.returncode == 0, first.stderr
    sagemaker, values = server.client("sagemaker"), example_values()
    arns = first.stdout.split()
    assert [arn.rsplit("/", 1)[-1] for arn in arns] == list(TEMPLATE_FILES)
    actions = server.actions()
    assert actions.count("SageMaker.CreatePipeline") == 2 and "SageMaker.UpdatePipeline" not in actions
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    for name, file in TEMPLATE_FILES.items():
        stored = sagemaker.describe_pipeline(PipelineName=name)
        expected = filled_by_text(TEMPLATES / file, values)
        assert json.loads(stored["PipelineDefinition"]) == expected
        assert stored["RoleArn"] == values["RoleArn"]
        tags = tags_of(server, stored["PipelineArn"])
        canonical = json.dumps(expected, sort_keys=True, separators=(",", ":"))
        assert tags["mlops:definition-sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert head and tags["mlops:git-commit"].startswith(head)
    # the step notebooks the definitions name under CodeLocation are in S3, byte for byte
    bucket, prefix = values["CodeLocation"][5:].split("/", 1)
    for notebook in ("feature_engineering", "forecast_report", "resolve_model"):
        body = server.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/{notebook}.ipynb")["Body"].read()
        assert body == step_notebook(notebook).read_bytes()

    server.post("/moto-api/recorder/reset-recording")
    second = server.run("deploy", "--values", values_file)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == arns
    assert second.stderr.count(": unchanged") == 2 and "up to date" in second.stderr
    writes = [a for a in server.actions() if not a.startswith(("SageMaker.Describe", "S3 HEAD"))]
    assert writes == [], f"a second deploy of the same definitions changed something: {writes}"


def test_update_after_a_changed_default(server, values_file, tmp_path):
    assert server.run("deploy", "--values", values_file).returncode == 0
    changed = tmp_path / "templates"
    shutil.copytree(TEMPLATES, changed)
    template = json.loads((changed / TEMPLATE_FILES[TRAINING]).read_text())
    epochs = next(p for p in template["Parameters"] if p["Name"] == "Epochs")
    assert epochs["DefaultValue"] != "7"
    epochs["DefaultValue"] = "7"
    (changed / TEMPLATE_FILES[TRAINING]).write_text(json.dumps(template, indent=2))
    before = tags_of(server, server.client("sagemaker").describe_pipeline(PipelineName=TRAINING)["PipelineArn"])

    server.post("/moto-api/recorder/reset-recording")
    result = server.run("deploy", "--values", values_file, "--pipeline", TRAINING, "--templates", changed)
    assert result.returncode == 0, result.stderr
    actions = server.actions()
    assert actions.count("SageMaker.UpdatePipeline") == 1 and "SageMaker.CreatePipeline" not in actions
    assert f"{TRAINING}: updated" in result.stderr
    stored = server.client("sagemaker").describe_pipeline(PipelineName=TRAINING)
    definition = json.loads(stored["PipelineDefinition"])
    assert definition == filled_by_text(changed / TEMPLATE_FILES[TRAINING], example_values())
    assert next(p for p in definition["Parameters"] if p["Name"] == "Epochs")["DefaultValue"] == "7"
    after = tags_of(server, stored["PipelineArn"])
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    assert after["mlops:definition-sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert after["mlops:definition-sha256"] != before["mlops:definition-sha256"]
    # the other pipeline was not chosen: untouched
    assert json.loads(server.client("sagemaker").describe_pipeline(PipelineName=INFERENCE)["PipelineDefinition"]) == \
        filled_by_text(TEMPLATES / TEMPLATE_FILES[INFERENCE], example_values())


def test_start_with_parameters_then_watch(server, values_file):
    assert server.run("deploy", "--values", values_file).returncode == 0
    started = server.run("start", TRAINING, "-p", "Epochs=5", "-p", "TrainingInstanceType=ml.c5.xlarge",
                         "-p", "QualityThreshold=0.25")
    assert started.returncode == 0, started.stderr
    execution_arn = started.stdout.strip()
    assert execution_arn.startswith(f"arn:aws:sagemaker:{REGION}:") and f"pipeline/{TRAINING}/execution/" in execution_arn
    assert "SageMaker.StartPipelineExecution" in server.actions()
    sagemaker = server.client("sagemaker")
    parameters = sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=execution_arn)["PipelineParameters"]
    assert {p["Name"]: p["Value"] for p in parameters} == {
        "Epochs": "5", "TrainingInstanceType": "ml.c5.xlarge", "QualityThreshold": "0.25"}
    run_definition = sagemaker.describe_pipeline_definition_for_execution(PipelineExecutionArn=execution_arn)
    assert json.loads(run_definition["PipelineDefinition"]) == filled_by_text(TEMPLATES / TEMPLATE_FILES[TRAINING],
                                                                              example_values())

    # watch through AWS_ENDPOINT_URL instead of --endpoint-url; moto ends every execution as Succeeded at once
    watched = server.run("watch", execution_arn, endpoint=False, env={**server.env, "AWS_ENDPOINT_URL": server.url})
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip() == f"{execution_arn}: Succeeded"
    for step in ("FeatureEngineering", "TrainDeepAR", "CheckQuality", "RegisterModel"):
        assert step in watched.stderr
    assert "ListPipelineExecutionSteps" in watched.stderr  # moto's gap is said, not hidden
    actions = server.actions()
    assert "SageMaker.DescribePipelineExecution" in actions and "SageMaker.ListPipelineExecutionSteps" in actions


def test_both_pipelines_deployed_then_inference_started_with_its_defaults(server, values_file):
    assert server.run("deploy", "--values", values_file).returncode == 0
    started = server.run("start", INFERENCE)
    assert started.returncode == 0, started.stderr
    execution_arn = started.stdout.strip()
    assert f"pipeline/{INFERENCE}/execution/" in execution_arn
    sagemaker = server.client("sagemaker")
    assert sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=execution_arn).get("PipelineParameters", []) == []
    ran = json.loads(sagemaker.describe_pipeline_definition_for_execution(PipelineExecutionArn=execution_arn)["PipelineDefinition"])
    defaults = {p["Name"]: p.get("DefaultValue") for p in ran["Parameters"]}
    assert defaults["ModelPackageArn"] == "none" and defaults["ModelPackageGroupName"] == "deepar-forecast"  # the latest Approved version
    assert [s["Name"] for s in ran["Steps"]][:2] == ["ResolveModel", "CreateModel"]


def test_a_missing_bucket_is_refused_then_created_with_create_bucket(moto_server, values_file):
    moto_server.post("/moto-api/reset")  # a fresh account: no bucket
    moto_server.post("/moto-api/recorder/reset-recording")
    bucket = example_values()["ArtifactBucket"]
    assert_one_clear_error(moto_server.run("deploy", "--values", values_file), f"the S3 bucket {bucket} does not exist", "--create-bucket")
    assert not [a for a in moto_server.actions() if a.startswith("SageMaker.")], "nothing is deployed without the bucket"
    created = moto_server.run("deploy", "--values", values_file, "--create-bucket")
    assert created.returncode == 0, created.stderr
    assert f"created the S3 bucket {bucket}" in created.stderr
    s3 = moto_server.client("s3")
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    assert {p["PipelineName"] for p in moto_server.client("sagemaker").list_pipelines()["PipelineSummaries"]} == set(TEMPLATE_FILES)


def test_start_refuses_unknown_parameters_and_pipelines(server, values_file):
    assert server.run("deploy", "--values", values_file, "--pipeline", TRAINING).returncode == 0
    server.post("/moto-api/recorder/reset-recording")
    assert_one_clear_error(server.run("start", TRAINING, "-p", "Epoch=5"), "no parameter Epoch", "Epochs")
    assert_one_clear_error(server.run("start", TRAINING, "-p", "TestWindows=two"), "TestWindows", "Integer")
    assert_one_clear_error(server.run("start", INFERENCE), f"no pipeline named '{INFERENCE}'", "mlops deploy")
    assert "SageMaker.StartPipelineExecution" not in server.actions()


@pytest.mark.parametrize("content, phrase", [
    ('{"RoleArn": "arn:aws:iam::111122223333:role/x",', "not valid JSON"),
    (None, "not found"),
    ("missing RoleArn", "missing values for keys: RoleArn"),
    ("unknown key", "unknown keys in the values: ArtifactBuckett"),
    ("bad bucket", "ArtifactBucket: 'Bad_Bucket Name' is not a valid S3 bucket name"),
])
def test_a_bad_values_file_is_one_clear_error(server, tmp_path, content, phrase):
    path = tmp_path / "values.json"
    values = example_values()
    if content == "missing RoleArn":
        content = json.dumps({k: v for k, v in values.items() if k != "RoleArn"})
    elif content == "unknown key":
        content = json.dumps({**values, "ArtifactBuckett": "typo"})
    elif content == "bad bucket":
        content = json.dumps({**values, "ArtifactBucket": "Bad_Bucket Name"})
    if content is not None:
        path.write_text(content)
    assert_one_clear_error(server.run("deploy", "--values", path), str(path), phrase)
    assert server.actions() == [], "a bad values file must be refused before any request"


def test_an_unreachable_endpoint_is_one_clear_error(server, values_file):
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = server.run("deploy", "--values", values_file, "--endpoint-url", nowhere, endpoint=False)
    assert_one_clear_error(result, f"cannot reach {nowhere}", "--endpoint-url")


def test_missing_credentials_are_one_clear_error(server, values_file):
    env = {k: v for k, v in server.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert_one_clear_error(server.run("deploy", "--values", values_file, env=env), "no usable AWS credentials", "AWS_PROFILE")
    assert_one_clear_error(server.run("start", TRAINING, env=env), "no usable AWS credentials")
    assert not any(a.startswith("SageMaker.Create") or a.startswith("S3 PUT") for a in server.actions())
