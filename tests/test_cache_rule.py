"""The local cache decision equals SageMaker's documented rule, on the project's own definitions.

SageMaker's rule ("Caching pipeline steps", https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-caching.html):
a step is taken from the cache when an earlier successful run of the same step, within `ExpireAfter`, had the same
values of the attributes listed for its type ("Default cache key attributes by pipeline step type",
https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-default-keys.html); the values are compared as written
(S3 URIs), not the objects behind them. `sagemaker_decision` below applies that rule to two definitions, independently
of the engine; the local decision is what `run_definition` does with them (a toy Processing executor stands in for
the job, so the tests take seconds)."""
import json
import shutil

import pytest

from mlops.engine.executors import Executor, executors
from mlops.engine.run import run_definition
from test_remote import INFERENCE, TRAINING, server, values_file  # noqa: F401 (fixtures; moto_server is in conftest)

DOCUMENTED = {"Processing": ("AppSpecification", "Environment", "ProcessingInputs")}  # pipelines-default-keys.html
STEP = "FeatureEngineering"


class Job(Executor):
    "A processing job that does nothing: what the cache decides is the subject here, not what the step computes."
    step_type, runs = "Processing", "a stand-in processing job"
    def run(self, step): return dict(step.arguments)


@pytest.fixture
def job():
    executor = executors.register(Job())
    yield
    executors.unregister(executor)


def step_of(definition: dict, name: str = STEP) -> dict:
    return next(s for s in definition["Steps"] if s["Name"] == name)


def sagemaker_decision(earlier: dict, now: dict, name: str = STEP) -> str:
    "'hit' when the documented attributes of step `name` are the same, as written, in both definitions (same parameters)."
    before, after = step_of(earlier, name), step_of(now, name)
    same = all(before["Arguments"].get(k) == after["Arguments"].get(k) for k in DOCUMENTED[after["Type"]])
    return "hit" if same and after.get("CacheConfig", {}).get("Enabled") else "miss"


def one_step(definition: dict) -> dict:
    "The definition with only its first step (the others read its outputs; the decision is about this one)."
    return {**definition, "Steps": [step_of(definition)]}


def local_decision(definition: dict, home, warnings: list | None = None) -> str:
    events = []
    execution = run_definition(one_step(definition), pipeline=TRAINING, home=home, listeners=[events.append])
    assert execution.status == "Succeeded", execution.failure_reason
    if warnings is not None: warnings += [e for e in events if e.kind == "cache-warning"]
    return "hit" if execution.step(STEP).cached_from else "miss"


def test_a_changed_notebook_after_deploy_is_a_miss_on_both(server, values_file, tmp_path, job, monkeypatch):
    from mlops.config import notebooks_dir
    notebooks = tmp_path / "notebooks"
    shutil.copytree(notebooks_dir(), notebooks)
    env = {**server.env, "MLOPS_NOTEBOOKS_DIR": str(notebooks)}
    assert server.run("deploy", "--values", values_file, "--pipeline", TRAINING, env=env).returncode == 0
    deployed = json.loads(server.client("sagemaker").describe_pipeline(PipelineName=TRAINING)["PipelineDefinition"])
    home = tmp_path / "home"
    assert local_decision(deployed, home) == "miss"  # the first run
    assert local_decision(deployed, home) == "hit" == sagemaker_decision(deployed, deployed)  # nothing changed: a hit on both

    notebook = notebooks / "feature_engineering.ipynb"
    edited = json.loads(notebook.read_text())
    edited["cells"].append({"cell_type": "markdown", "id": "edited01", "metadata": {}, "source": ["an edit"]})
    notebook.write_text(json.dumps(edited))
    result = server.run("deploy", "--values", values_file, "--pipeline", TRAINING, env=env)
    assert result.returncode == 0 and f"{TRAINING}: updated" in result.stderr, result.stderr  # a new definition
    redeployed = json.loads(server.client("sagemaker").describe_pipeline(PipelineName=TRAINING)["PipelineDefinition"])
    code = lambda d: step_of(d)["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"]
    assert code(redeployed) != code(deployed) and code(redeployed).endswith("/feature_engineering.ipynb")
    bucket, key = code(redeployed)[5:].split("/", 1)
    assert server.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read() == notebook.read_bytes()
    assert sagemaker_decision(deployed, redeployed) == "miss" == local_decision(redeployed, home)


def test_new_data_under_the_same_uri_is_a_hit_on_both_with_a_warning(tmp_path, job):
    from mlops.engine.store import LocalStore
    from mlops.runner import local_definition
    definition, home = local_definition("training"), tmp_path / "home"
    data = next(p for p in definition["Parameters"] if p["Name"] == "InputDataUri")["DefaultValue"]
    store = LocalStore(home / "store")
    (tmp_path / "train.csv").write_text("item_id,timestamp,target\na,2024-01-01,1\n")
    store.upload(tmp_path / "train.csv", data + "train.csv")
    warnings = []
    assert local_decision(definition, home, warnings) == "miss" and warnings == []
    assert local_decision(definition, home, warnings) == "hit" == sagemaker_decision(definition, definition)
    assert warnings == []  # nothing changed: a hit, and nothing to say

    (tmp_path / "train.csv").write_text("item_id,timestamp,target\na,2024-01-01,2\n")  # new data, the same prefix
    store.upload(tmp_path / "train.csv", data + "train.csv")
    assert local_decision(definition, home, warnings) == "hit" == sagemaker_decision(definition, definition)
    (warning,) = warnings
    assert warning.details["uri"] == data and warning.step.name == STEP
    assert f"{STEP} is taken from the cache of execution" in warning.line
    assert "SageMaker would reuse the earlier outputs too" in warning.line
    assert "new key" in warning.line and "mlops start --data FILE" in warning.line and "--no-cache" in warning.line
    import io
    from rich.console import Console
    from mlops.cli.local import ProgressView
    out = io.StringIO()
    ProgressView(Console(file=out, width=400))(warning)  # what `mlops run` prints of it
    assert out.getvalue().startswith(f"warning: {STEP} is taken from the cache") and data in out.getvalue()


def test_start_with_a_data_file_gives_each_version_its_own_key(server, values_file, tmp_path):
    "`mlops start --data FILE`: new data is a new InputDataUri (a miss for the steps that read it), the same data the same one."
    import hashlib
    assert server.run("deploy", "--values", values_file, "--pipeline", TRAINING).returncode == 0
    data = tmp_path / "train.csv"
    uris = []
    for content in ("item_id,timestamp,target\na,2024-01-01,1\n", "item_id,timestamp,target\na,2024-01-01,2\n"):
        data.write_text(content)
        result = server.run("start", TRAINING, "--data", data)
        assert result.returncode == 0, result.stderr
        arn = result.stdout.strip()
        given = {p["Name"]: p["Value"] for p in server.client("sagemaker").list_pipeline_parameters_for_execution(
            PipelineExecutionArn=arn)["PipelineParameters"]}
        uri = given["InputDataUri"]
        assert uri == f"s3://{json.loads(values_file.read_text())['ArtifactBucket']}/data/{hashlib.sha256(content.encode()).hexdigest()[:12]}/train.csv"
        bucket, key = uri[5:].split("/", 1)
        assert server.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read() == content.encode()
        uris.append(uri)
    assert uris[0] != uris[1]
    both = server.run("start", TRAINING, "--data", data, "-p", "InputDataUri=s3://b/x/")
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr, both.stderr


def test_the_cloudformation_route_puts_changed_notebooks_under_a_new_code_location(tmp_path):
    """Route 2 (the stack takes the rendered definitions): `mlops code-location` names the code by its content, so an edited
    notebook is a new CodeLocation, a new definition, and a miss on both; unchanged notebooks keep theirs (a hit on both)."""
    import os
    import subprocess
    from conftest import MLOPS
    from mlops.config import project_root
    from mlops.definition.templates import example_values, fill_definition
    notebooks = tmp_path / "notebooks"
    shutil.copytree(project_root() / "nbs" / "processing", notebooks)
    (tmp_path / "dev.json").write_text(json.dumps(example_values()))
    env = {**os.environ, "MLOPS_NOTEBOOKS_DIR": str(notebooks)}
    def location():
        done = subprocess.run([*MLOPS, "code-location", "--values", tmp_path / "dev.json"], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()
    first, again = location(), location()
    assert first == again and first.startswith(example_values()["CodeLocation"] + "/"), (first, again)
    notebook = notebooks / "feature_engineering.ipynb"
    notebook.write_text(notebook.read_text().replace('"cells": [', '"cells": [{"cell_type": "markdown", "metadata": {}, '
                                                     '"source": ["edited"]},', 1))
    edited = location()
    assert edited != first
    from mlops.render import TEMPLATE_FILES
    template = json.loads((project_root() / "templates" / TEMPLATE_FILES[TRAINING]).read_text())
    before, after = (fill_definition(template, {**example_values(), "CodeLocation": where}) for where in (first, edited))
    assert sagemaker_decision(before, after) == "miss" and sagemaker_decision(before, before) == "hit"
