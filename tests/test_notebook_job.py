"""SageMaker's own notebook and function steps (mlops.engine.executors.notebook_job), built by the SDK and run with
`mlops run --definition`.

A NotebookJobStep's notebook, initialization script and additional dependencies are uploaded by the SDK when the
pipeline is built (sagemaker/mlops/workflow/notebook_job_step.py `_upload_job_files`), and an `@step` function's
pickled function and arguments too (sagemaker/core/remote_function/core/stored_function.py `save_pipeline_step_function`):
each definition is built offline (moto's S3) and those uploads are copied into the local store, where the run finds
them as SageMaker finds them in S3.
"""
import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import build_with_uploads

BUCKET, ROLE = "notebook-bucket", "arn:aws:iam::123456789012:role/service-role/SageMakerRole"
IMAGE = "885854791233.dkr.ecr.us-east-1.amazonaws.com/sagemaker-distribution-prod:1-cpu"  # SageMaker Distribution

# alpha is a parameter (the cell tagged `parameters`); the notebook imports a module shipped beside it and reads a
# variable the initialization script exports, as it would in the notebook job's container.
NOTEBOOK = {"cells": [
    {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [],
     "source": ["alpha = 0.1\n", "previous = ''\n"]},
    {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
     "source": ["import os, helpers\n", "print(f\"alpha={alpha} stage={os.environ.get('STAGE')} ready={os.environ.get('READY')} "
                "helper={helpers.VALUE} previous={previous}\")\n"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5}


def notebook_pipeline(session, folder: Path, kernel: str = "python3"):
    "Two NotebookJobSteps, as tests/corpus/sdk_pipelines.py build_notebook_job writes them: a parameter, an init script, a dependency."
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.notebook_job_step import NotebookJobStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    (folder / "analysis.ipynb").write_text(json.dumps(NOTEBOOK))
    (folder / "helpers.py").write_text("VALUE = 41 + 1\n")
    (folder / "init.sh").write_text("export READY=yes\n")
    alpha = ParameterString(name="Alpha", default_value="0.5")
    first = NotebookJobStep(
        name="AnalyseData", input_notebook=str(folder / "analysis.ipynb"), image_uri=IMAGE, kernel_name=kernel, role=ROLE,
        s3_root_uri=f"s3://{BUCKET}/notebook-jobs", parameters={"alpha": alpha}, environment_variables={"STAGE": "dev"},
        initialization_script=str(folder / "init.sh"), additional_dependencies=[str(folder / "helpers.py")])
    second = NotebookJobStep(
        name="Report", input_notebook=str(folder / "analysis.ipynb"), image_uri=IMAGE, kernel_name="python3", role=ROLE,
        s3_root_uri=f"s3://{BUCKET}/notebook-jobs", additional_dependencies=[str(folder / "helpers.py")],
        parameters={"previous": first.properties.OutputNotebookName}, depends_on=[first])
    return Pipeline(name="notebook-job", parameters=[alpha], steps=[first, second], sagemaker_session=session)


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / ".mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("MLOPS_FORKSERVER", "0")
    monkeypatch.setenv("COLUMNS", "400")
    return home


def run(definition: dict, folder: Path, *args):
    from mlops.cli import main
    path = folder / "definition.json"
    path.write_text(json.dumps(definition))
    return CliRunner().invoke(main, ["run", "--definition", str(path), *args], catch_exceptions=False)


def executed_notebook(home: Path, step: dict) -> dict:
    "The executed notebook in the step's output.tar.gz (`<S3OutputPath>/<job>/output/output.tar.gz`), by its SM_OUTPUT_NOTEBOOK_NAME."
    [archive] = (home / "store" / BUCKET / "notebook-jobs" / "notebook-job").glob(f"*/{step['Name']}/*/output/output.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert step["Arguments"]["Environment"]["SM_INPUT_NOTEBOOK_NAME"] in names and "sagemaker_job_execution.log" in names, names
        return json.load(tar.extractfile(step["Arguments"]["Environment"]["SM_OUTPUT_NOTEBOOK_NAME"]))


def printed(notebook: dict) -> str:
    return "".join("".join(o.get("text", "")) for c in notebook["cells"] for o in c.get("outputs", []))


def test_a_notebook_job_step_runs_its_notebook_with_its_parameters(home, tmp_path):
    definition = build_with_uploads(lambda session: notebook_pipeline(session, tmp_path), home / "store", BUCKET)
    steps = {s["Name"]: s for s in definition["Steps"]}
    assert steps["AnalyseData"]["Arguments"]["AlgorithmSpecification"]["ContainerEntrypoint"] == ["amazon_sagemaker_scheduler"]
    result = run(definition, tmp_path, "-pAlpha=0.9")
    assert result.exit_code == 0, result.output
    assert "Succeeded" in result.output, result.output
    first = executed_notebook(home, steps["AnalyseData"])
    injected = next(c for c in first["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert "alpha = \"0.9\"" in "".join(injected["source"]), injected  # a hyperparameter is text, as SageMaker passes it
    assert printed(first) == "alpha=0.9 stage=dev ready=yes helper=42 previous=\n", printed(first)
    # the second step's parameter is the first's OutputNotebookName property (its Environment['SM_OUTPUT_NOTEBOOK_NAME'])
    second = printed(executed_notebook(home, steps["Report"]))
    assert second == f"alpha=0.1 stage=None ready=None helper=42 previous={steps['AnalyseData']['Arguments']['Environment']['SM_OUTPUT_NOTEBOOK_NAME']}\n", second


def test_a_failing_notebook_fails_its_step_and_keeps_the_executed_notebook(home, tmp_path):
    failing = json.loads(json.dumps(NOTEBOOK))
    failing["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                             "source": ["raise ValueError(f'alpha {alpha} is too large')\n"]})
    NOTEBOOK_BACKUP = dict(NOTEBOOK)
    try:
        NOTEBOOK.clear(); NOTEBOOK.update(failing)
        definition = build_with_uploads(lambda session: notebook_pipeline(session, tmp_path), home / "store", BUCKET)
    finally:
        NOTEBOOK.clear(); NOTEBOOK.update(NOTEBOOK_BACKUP)
    result = run(definition, tmp_path)
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "ValueError: alpha 0.5 is too large" in output, output
    notebook = executed_notebook(home, next(s for s in definition["Steps"] if s["Name"] == "AnalyseData"))
    assert "alpha=0.5 stage=dev ready=yes helper=42" in printed(notebook)  # the cells before the failing one, with their outputs



def test_a_kernel_not_installed_here_is_named_with_the_fix(home, tmp_path):
    definition = build_with_uploads(lambda session: notebook_pipeline(session, tmp_path, kernel="julia-1.9"), home / "store", BUCKET)
    result = run(definition, tmp_path)
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "the Jupyter kernel 'julia-1.9'" in output and "ipykernel install" in output, output

def function_pipeline(session):
    """Two @step functions, the second taking the first's return value (a DelayedReturn), and a condition on the second's
    (as tests/corpus/sdk_pipelines.py build_step_decorator, after the SDK's integ test_step_decorator)."""
    from sagemaker.core.workflow.conditions import ConditionGreaterThan
    from sagemaker.core.workflow.parameters import ParameterInteger
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.function_step import step
    from sagemaker.mlops.workflow.pipeline import Pipeline
    upper = ParameterInteger(name="Upper", default_value=10)

    @step(name="generate", role=ROLE, instance_type="ml.m5.large", image_uri=IMAGE)
    def generate(bound):
        return {"values": list(range(bound)), "bound": bound}

    @step(name="total", role=ROLE, instance_type="ml.m5.large", image_uri=IMAGE)
    def total(generated):
        return sum(v * v for v in generated["values"])

    summed = total(generate(upper))
    check = ConditionStep(name="LargeEnough", conditions=[ConditionGreaterThan(left=summed, right=50)],
                          if_steps=[], else_steps=[FailStep(name="TooSmall", error_message="the total is too small")])
    return Pipeline(name="function-steps", parameters=[upper], steps=[summed, check], sagemaker_session=session)


def test_step_functions_pass_their_return_values_on(home, tmp_path):
    definition = build_with_uploads(function_pipeline, home / "store", BUCKET)
    result = run(definition, tmp_path, "-pUpper=7")
    assert result.exit_code == 0, result.output
    assert "Succeeded" in result.output, result.output
    store = home / "store" / BUCKET / "function-steps"
    [results] = store.glob("total/*/*/results/results.json")
    assert json.loads(results.read_text())["Result"] == sum(v * v for v in range(7))  # what the condition's Std:JsonGet reads
    assert "LargeEnough: outcome true" in result.output, result.output
    [pickled] = store.glob("generate/*/*/results/payload.pkl")  # cloudpickle of the return value, as the SDK reads it back
    assert pickle.loads(pickled.read_bytes()) == {"values": list(range(7)), "bound": 7}

