"""Models of any image (issue 23, items 3 and 7): SDK-built Model and RegisterModel steps of SageMaker's SKLearn and XGBoost
images run under `mlops run --definition`, with the local registry, tracking and events, as `mlops run` runs its own.

The definitions come from the valid corpus (tests/corpus/sdk_pipelines.py), built offline by the SageMaker SDK:
`register_sklearn_model` (ModelBuilder build and register of a model.tar.gz at hand, with ModelMetrics and
DriftCheckBaselines) and `checks_and_register` (AWS's model-monitor-clarify example: QualityCheck and ClarifyCheck steps
feed the RegisterModel's ModelMetrics and DriftCheckBaselines).
"""
import io
import json
import re
import tarfile

import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import build_corpus
from mlops.cli import main

SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"


@pytest.fixture(scope="module")
def built():
    return build_corpus(["register_sklearn_model", "checks_and_register"])


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / ".mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "400")
    return home


def step_named(definition: dict, name: str) -> dict:
    return next(s for s in definition["Steps"] if s["Name"] == name)


def test_an_sdk_built_register_model_of_the_sklearn_image_runs_under_definition_and_is_in_the_registry(built, home, tmp_path):
    from mlops.engine.execution import Execution
    from mlops.engine.store import LocalStore
    from mlops.tracking.registry import model_versions
    definition = built["register_sklearn_model"]
    register = step_named(definition, "RegisterSKLearnModel")["Arguments"]
    model_data = next(p["DefaultValue"] for p in definition["Parameters"] if p["Name"] == "ModelDataUrl")
    archive = tmp_path / "model.tar.gz"  # what the model's data would be: a model.tar.gz at its S3 URI
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("model.joblib")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"model"))
    LocalStore(home / "store").upload(archive, model_data)
    path = tmp_path / "register.json"
    path.write_text(json.dumps(definition))

    result = CliRunner().invoke(main, ["run", "--definition", str(path), "-p", "ModelPackageGroupName=TeamSKLearn"])
    assert result.exit_code == 0, result.output
    assert "registering a model needs a model registry" not in result.output

    [version] = model_versions("TeamSKLearn", home)
    assert (version["image"], version["model_data_url"], version["status"]) == (SKLEARN_IMAGE, model_data, "Approved")
    sources = register["ModelMetrics"]
    assert version["model_metrics"] == {
        "ModelQuality.Statistics": sources["ModelQuality"]["Statistics"]["S3Uri"],
        "ModelDataQuality.Statistics": sources["ModelDataQuality"]["Statistics"]["S3Uri"],
        "ModelDataQuality.Constraints": sources["ModelDataQuality"]["Constraints"]["S3Uri"]}
    assert version["drift_check_baselines"] == {
        "ModelDataQuality.Statistics": register["DriftCheckBaselines"]["ModelDataQuality"]["Statistics"]["S3Uri"],
        "ModelDataQuality.Constraints": register["DriftCheckBaselines"]["ModelDataQuality"]["Constraints"]["S3Uri"]}

    execution = Execution.load(version["execution_id"])  # the execution that registered it, with its steps' properties
    assert execution.status == "Succeeded" and execution.pipeline == "register"
    created = execution.step("CreateSKLearnModel")
    assert created.properties["PrimaryContainer"]["Image"] == SKLEARN_IMAGE  # recorded with its image, for a Transform to use
    assert execution.step("RegisterSKLearnModel").properties["ModelPackageArn"] == version["arn"]
    events = [json.loads(line) for line in (home / "events.jsonl").read_text().splitlines()]
    assert {e["detail"].get("stepName") for e in events} >= {"CreateSKLearnModel", "RegisterSKLearnModel"}
    assert any(e["detail"].get("currentPipelineExecutionStatus") == "Succeeded" and version["execution_id"] in e["resources"][1]
               for e in events)

    listed = CliRunner().invoke(main, ["models", "list", "TeamSKLearn"])
    assert listed.exit_code == 0 and re.search(r"TeamSKLearn\s+│?\s*1\s+│?\s*Approved", listed.output), listed.output


def test_checks_and_register_refuses_only_the_check_steps_and_what_it_cannot_train(built):
    "AWS's model-monitor-clarify pipeline: the Model and RegisterModel of the XGBoost image are not what is refused."
    from mlops.engine import DefinitionNotRunnable
    from mlops.engine.plan import check_runnable
    definition = built["checks_and_register"]
    values = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    with pytest.raises(DefinitionNotRunnable) as refused:
        check_runnable(definition, values)
    lines = str(refused.value).splitlines()[1:]
    named = {re.match(r"\s*step '([^']+)'", line).group(1): line for line in lines if re.match(r"\s*step '", line)}
    assert not {"CreateAbaloneModel", "RegisterAbaloneModel"} & set(named), named
    checks = {s["Name"]: s["Type"] for s in definition["Steps"] if s["Type"] in ("QualityCheck", "ClarifyCheck")}
    assert len(checks) == 5 and set(checks) <= set(named), named
    for name, step_type in checks.items():
        assert f"({step_type}) cannot run locally: {step_type} steps do not run locally" in named[name], named[name]
        assert "Fix: run the pipeline on SageMaker" in named[name]
    if "TrainAbaloneModel" in named:  # until the built-in XGBoost has its executor: refused naming its image
        assert "(Training, image 683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1)" in named["TrainAbaloneModel"]
