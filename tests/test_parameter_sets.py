"""Named parameter sets: `mlops run --params FILE` and `mlops start --params FILE`, checked like `-p`, `-p` over them;
the set's name and digest kept with the execution (runs.db, `mlops runs`, MLflow tags, the events); `mlops params --write`.

One tiny training run (conftest.TINY written into a set) is shared by the tests that read it; the refusals run nothing.
"""
import hashlib
import json
from pathlib import Path

import pytest

from conftest import TINY, run_mlops, tiny_data
from mlops.definition.parameters import parse_assignments, read_parameter_set, resolve_parameters
from mlops.engine.events import EXECUTION_STATUS_CHANGE, read_events
from mlops.engine.execution import Execution
from mlops.engine.records import Records
from mlops.runner import local_definition

TINY_VALUES = parse_assignments(TINY[1::2])  # the -p values of conftest.TINY: Epochs=1, NumCells=8, ...
SET_EPOCHS, OVERRIDDEN_EPOCHS = "2", "1"  # the set says 2 epochs; -p Epochs=1 wins


def set_text(values: dict) -> str:
    "A YAML set of `values` as a person writes it: numbers bare, one NAME: VALUE per line."
    return "".join(f"{name}: {value}\n" for name, value in values.items())


@pytest.fixture(scope="module")
def set_run(tmp_path_factory) -> dict:
    "`mlops run --data train.csv --params tiny.yaml -p Epochs=1` in a fresh workspace, the set holding TINY (Epochs 2)."
    root = tiny_data(tmp_path_factory.mktemp("sets"))
    parameter_set = root / "tiny.yaml"
    parameter_set.write_text("# conftest.TINY as a named set\n" + set_text({**TINY_VALUES, "Epochs": SET_EPOCHS}))
    result = run_mlops("run", "--data", root / "train.csv", "--params", parameter_set, "-p", f"Epochs={OVERRIDDEN_EPOCHS}", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    home = root / ".mlops"
    (row,) = Records(home / "runs.db").executions(5)
    return {"root": root, "home": home, "id": row["id"], "row": row, "set": parameter_set,
            "sha256": hashlib.sha256(parameter_set.read_bytes()).hexdigest()}


def test_a_set_drives_the_run_and_p_overrides_it(set_run):
    execution = Execution.load(set_run["id"], set_run["home"])
    assert execution.status == "Succeeded", execution.failure_reason
    definition = json.loads((set_run["home"] / "runs" / set_run["id"] / "definition.json").read_text())
    as_flags = resolve_parameters(definition, {**TINY_VALUES, "Epochs": OVERRIDDEN_EPOCHS})  # the same values given as -p
    assert {name: execution.parameters[name] for name in TINY_VALUES} == {name: as_flags[name] for name in TINY_VALUES}
    assert execution.parameters["Epochs"] == OVERRIDDEN_EPOCHS  # -p over the set's 2
    assert set_run["row"]["options"]["parameter_set"] == {"name": "tiny", "sha256": set_run["sha256"]}


def test_the_set_is_named_in_mlops_runs(set_run):
    listed = run_mlops("runs", cwd=set_run["root"])
    assert listed.returncode == 0, listed.stderr
    assert "parameter set" in listed.stdout
    (line,) = [line for line in listed.stdout.splitlines() if set_run["id"] in line]
    assert " tiny " in f" {line} ", line


def test_the_set_is_tagged_on_the_executions_mlflow_run(set_run):
    from mlops.tracking.lineage import execution_run
    tags = execution_run(set_run["id"], set_run["home"]).data.tags
    assert tags["mlops.parameter_set"] == "tiny"
    assert tags["mlops.parameter_set_sha256"] == set_run["sha256"]


def test_the_set_is_in_the_executions_events(set_run):
    executing = [e for e in read_events(set_run["home"] / "events.jsonl", set_run["id"]) if e["detail-type"] == EXECUTION_STATUS_CHANGE]
    assert [e["detail"]["currentPipelineExecutionStatus"] for e in executing] == ["Executing", "Succeeded"]
    for event in executing:  # SageMaker's execution event carries the execution's description
        assert event["detail"]["pipelineExecutionDescription"] == f"parameter set tiny (sha256 {set_run['sha256']})"


def test_a_run_without_a_set_names_none(set_run, tmp_path):
    from mlops.engine.events import EventWriter
    from mlops.engine.execution import Event
    writer = EventWriter(tmp_path)  # no runs.db row, no set: no description
    (line,) = writer.transitions(Event("execution-started", "x", details={"pipeline": "p", "resumed": False}))
    assert "pipelineExecutionDescription" not in line["detail"]


def nothing_written(root: Path):
    "No execution folder, no staged data, no runs.db row."
    home = root / ".mlops"
    assert not list((home / "runs").glob("*")), "an execution folder was created"
    assert not list((home / "store" / "mlops-local" / "data").glob("*/*")), "the data was staged"
    assert not (home / "runs.db").exists() or not Records(home / "runs.db").executions(5)


@pytest.mark.parametrize("name,text,words", [
    ("broken.yaml", "Epochs: [1\n", ["parameter set broken.yaml is not YAML or JSON: line 2", "Fix: write one NAME: VALUE per line"]),
    ("broken.json", '{"Epochs": 1,}', ["parameter set broken.json is not JSON: line 1", "Fix: write one NAME: VALUE per line"]),
    ("list.yaml", "- Epochs\n- 1\n", ["parameter set list.yaml is not a mapping of parameter names to values (it holds a list)"]),
    ("empty.yaml", "", ["parameter set empty.yaml is not a mapping", "(it holds nothing)"]),
    ("unknown.yaml", "Epochs: 1\nEpoch: 2\n", ["parameter set unknown.yaml: unknown parameter Epoch.", "Fix: remove it or correct the name"]),
    ("range.yaml", "PredictionLength: 0\n", ["parameter set range.yaml: parameter PredictionLength = '0': must be a positive integer",
                                              "Fix: change the values named above in range.yaml"]),
    ("type.yaml", "TestWindows: two\n", ["parameter set type.yaml: parameter TestWindows expects an Integer, got 'two'",
                                         "Fix: change TestWindows in type.yaml"]),
    ("novalue.yaml", "Epochs:\n", ["parameter set novalue.yaml: parameter Epochs has no value", "Fix: give Epochs a value"]),
    ("missing.yaml", None, ["parameter set missing.yaml not found", "mlops params --write FILE"]),
])
def test_a_bad_set_is_refused_before_anything_runs(tmp_path, name, text, words):
    data = tmp_path / "sales.csv"
    data.write_text("item_id,timestamp,target\n" + "".join(f"a,2024-01-{d:02d},{d}\n" for d in range(1, 29)))
    if text is not None: (tmp_path / name).write_text(text)
    result = run_mlops("run", "--data", data, "--params", name, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len([l for l in result.stderr.splitlines() if l.startswith("error:")]) == 1
    message = " ".join(result.stderr.split())
    for phrase in [*words, "Nothing was run"]: assert phrase in message, message
    nothing_written(tmp_path)


def test_params_write_gives_the_defaults_back(tmp_path):
    written = run_mlops("params", "--write", tmp_path / "defaults.yaml", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    text = (tmp_path / "defaults.yaml").read_text()
    assert "# points forecast per item (DeepAR prediction_length)" in text  # each parameter's meaning, from `mlops params`
    assert "# InputDataUri:" in text  # where the data is: `mlops run --data` sets it
    definition = local_definition("training")
    parameter_set = read_parameter_set(tmp_path / "defaults.yaml", definition)
    assert parameter_set.name == "defaults"
    assert resolve_parameters(definition, parameter_set.values) == resolve_parameters(definition, {})
    assert set(parameter_set.values) == {p["Name"] for p in definition["Parameters"]} - {"InputDataUri"}


def test_start_sends_the_sets_values_and_names_it_in_the_description(moto_server, tmp_path):
    "`mlops start --params FILE` against a real moto server: the set's values (with -p over them) in StartPipelineExecution."
    from mlops.definition.templates import example_values
    moto_server.post("/moto-api/reset")
    moto_server.client("s3").create_bucket(Bucket=example_values()["ArtifactBucket"])
    values = tmp_path / "dev.json"
    values.write_text(json.dumps(example_values()))
    assert moto_server.run("deploy", "--values", values).returncode == 0
    parameter_set = tmp_path / "weekly.yaml"
    parameter_set.write_text("Epochs: 5\nTrainingInstanceType: ml.c5.xlarge\nQualityThreshold: 0.25\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("Epochs: 5\nEpoch: 2\n")
    refused = moto_server.run("start", "DeepARTraining", "--params", bad)
    assert refused.returncode == 2 and "parameter set" in refused.stderr and "unknown parameter Epoch." in refused.stderr, refused.stderr
    started = moto_server.run("start", "DeepARTraining", "--params", parameter_set, "-p", "Epochs=7")
    assert started.returncode == 0, started.stderr
    sagemaker = moto_server.client("sagemaker")
    arn = started.stdout.strip()
    sent = sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert {p["Name"]: p["Value"] for p in sent} == {"Epochs": "7", "TrainingInstanceType": "ml.c5.xlarge", "QualityThreshold": "0.25"}
    described = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn).get("PipelineExecutionDescription")
    assert described == f"parameter set weekly (sha256 {hashlib.sha256(parameter_set.read_bytes()).hexdigest()})"
