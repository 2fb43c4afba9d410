"""`mlops deploy`, `start` and `watch` against a real `moto_server` process on 127.0.0.1.

Every command runs as a user runs it: the installed `mlops` console script
(`mlops deploy|start|watch ... --endpoint-url URL`) in a fresh process, with dummy credentials.
The server records every request it receives (moto's recorder), so the tests can tell which API
calls a command made, not only what it printed.
"""
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MLOPS, REGION, free_port
from mlops.config import TEMPLATE_KEYS, project_root, step_notebook
from mlops.definition.templates import example_values
from mlops.render import TEMPLATE_FILES

ROOT = project_root()
TEMPLATES = ROOT / "templates"
TRAINING, INFERENCE = "DeepARTraining", "DeepARBatchInference"


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
    for notebook in ("feature_engineering", "forecast_report", "resolve_model"):  # `mlops deploy` puts each under its digest
        text = text.replace(f'"{values["CodeLocation"]}/{notebook}.ipynb"', f'"{code_key(values, notebook)}"')
    return json.loads(text)


def code_key(values: dict, notebook: str) -> str:
    "The content-addressed URI of a step notebook: CodeLocation/<first 12 hex digits of its sha256>/<name>.ipynb."
    digest = hashlib.sha256(step_notebook(notebook).read_bytes()).hexdigest()
    return f"{values['CodeLocation']}/{digest[:12]}/{notebook}.ipynb"


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
    for notebook in ("feature_engineering", "forecast_report", "resolve_model"):
        bucket, key = code_key(values, notebook)[5:].split("/", 1)
        body = server.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
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


@pytest.mark.parametrize("parameter, value, fix", [
    ("ItemIdColumn", "", "give those parameters other defaults in the pipeline code, then run `mlops render`."),
    ("step name", "x" * 65, "correct what they name: the pipeline code (then run `mlops render`) or a value of the values file.")])
def test_a_refused_definition_names_where_its_fix_is(values_file, tmp_path, parameter, value, fix):
    "A default that a start would be refused for is the pipeline code's to change; the values file's values are checked as it fills."
    from mlops.remote.aws import RemoteError
    from mlops.remote.deploy import filled_definitions
    changed, values = tmp_path / "templates", tmp_path / "values.json"
    shutil.copytree(TEMPLATES, changed)
    template = json.loads((changed / TEMPLATE_FILES[TRAINING]).read_text())
    given = json.loads(values_file.read_text())
    if parameter == "step name":  # longer than StepName's 64 characters (every value the file gives is checked when filled)
        template["Steps"][-1]["Name"] = value
    else:  # an empty String where a container argument needs a value (CreateProcessingJob refuses it)
        next(p for p in template["Parameters"] if p["Name"] == parameter)["DefaultValue"] = value
    (changed / TEMPLATE_FILES[TRAINING]).write_text(json.dumps(template, indent=2))
    values.write_text(json.dumps(given))
    with pytest.raises(RemoteError) as refused:
        filled_definitions(values, TRAINING, changed)
    assert refused.value.fix == fix, refused.value
