"""The local engine on small definitions: a new step type in one class, a processing step with property files and the cache."""
import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from mlops.engine.execution import Event
from mlops.engine.executors import Executor, StepIO, executors
from mlops.engine.executors.processing import MLOPS_ENTRYPOINT
from mlops.engine.run import run_definition
from mlops.engine.store import LocalStore


class Sample(Executor):
    "A toy step type: writes `Count` numbers to its output URI, the way a job writes its output to S3."
    step_type, runs = "Sample", "writes numbers to its output (a toy step type of this test)"
    cache_attributes = ("Count",)  # what the cache compares: not the output path, which holds the execution id

    def run(self, step):
        folder = step.folder / "output"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "numbers.json").write_text(json.dumps(list(range(step.arguments["Count"]))))
        step.execution.store.upload(folder, step.arguments["OutputUri"])
        return {**step.arguments, "Total": sum(range(step.arguments["Count"]))}

    def describe(self, properties):
        return StepIO(outputs={"numbers": properties["OutputUri"]}, metrics={"total": properties["Total"]},
                      summary=f"sampled {properties['Count']} numbers")


def toy_definition():
    output = {"Std:Join": {"On": "/", "Values": ["s3://bucket", {"Get": "Execution.PipelineExecutionId"}, "numbers"]}}
    return {"Version": "2020-12-01", "Parameters": [{"Name": "Count", "Type": "Integer", "DefaultValue": 4}],
            "Steps": [{"Name": "Draw", "Type": "Sample", "CacheConfig": {"Enabled": True, "ExpireAfter": "P1D"},
                       "Arguments": {"Count": {"Get": "Parameters.Count"}, "OutputUri": output}},
                      {"Name": "Gate", "Type": "Condition", "Arguments": {"Conditions": [{
                          "Type": "GreaterThan", "LeftValue": {"Get": "Steps.Draw.Total"}, "RightValue": 5}],
                          "IfSteps": [], "ElseSteps": [{"Name": "TooFew", "Type": "Fail", "Arguments": {"ErrorMessage": "too few"}}]}}]}


def test_a_new_step_type_is_one_executor_and_one_registration(tmp_path):
    sample = executors.register(Sample())
    try:
        events = []
        first = run_definition(toy_definition(), pipeline="Toy", home=tmp_path, listeners=[events.append])
        assert first.status == "Succeeded", first.failure_reason
        numbers = LocalStore(tmp_path / "store").path(first.outputs["Draw"]["numbers"]) / "numbers.json"
        assert json.loads(numbers.read_text()) == [0, 1, 2, 3]
        assert first.metrics == {"total": 6}  # Execution reads the executor's declaration
        assert first.step("Draw").io.summary == "sampled 4 numbers"
        assert [e.kind for e in events if e.step and e.step.name == "Draw"] == ["step-started", "step-succeeded"]
        assert isinstance(events[0], Event) and events[0].kind == "execution-started"
        again = run_definition(toy_definition(), pipeline="Toy", home=tmp_path)  # same arguments: the cache
        assert again.step("Draw").cached_from == first.id
        few = run_definition(toy_definition(), {"Count": "2"}, pipeline="Toy", home=tmp_path)
        assert (few.status, few.failure_reason) == ("Failed", "too few")
    finally:
        executors.unregister(sample)


def test_an_unregistered_step_type_is_refused_before_anything_runs(tmp_path):
    import pytest
    from mlops.engine import DefinitionNotRunnable
    with pytest.raises(DefinitionNotRunnable, match=r"step 'Draw' \(Sample\) cannot run locally: no executor here runs Sample "
                                                     r"steps\. Fix: install a package whose entry point in group mlops\.executors"):
        run_definition(toy_definition(), pipeline="Toy", home=tmp_path)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_processing_step_with_a_property_file_a_gate_and_the_cache(tmp_path):
    "A one-notebook processing step run by `python -m mlops.processing`, its property file read by Std:JsonGet."
    home = tmp_path / "home"
    step = [new_code_cell("input_dir = ''\noutput_dir = ''\nfactor = 2"),
            new_code_cell("import json, pathlib\nvalue = json.loads(pathlib.Path(input_dir, 'value.json').read_text())\n"
                          "pathlib.Path(output_dir, 'result').mkdir(parents=True, exist_ok=True)\n"
                          "pathlib.Path(output_dir, 'result', 'value.json').write_text(json.dumps({'value': value * factor}))")]
    step[0].metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=step, metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "python3"}}),
                   tmp_path / "double.ipynb")
    store = LocalStore(home / "store")
    store.upload(tmp_path / "double.ipynb", "s3://bucket/code/double.ipynb")
    (tmp_path / "value.json").write_text("3"); store.upload(tmp_path / "value.json", "s3://bucket/data/value.json")

    def output(name):
        return {"OutputName": name, "S3Output": {"LocalPath": f"/opt/ml/processing/output/{name}", "S3Uri": {"Std:Join": {
            "On": "/", "Values": ["s3://bucket/runs", {"Get": "Execution.PipelineExecutionId"}, name]}}}}

    tiny = {"Version": "2020-12-01",
            "Parameters": [{"Name": "Factor", "Type": "Integer", "DefaultValue": 2}, {"Name": "Limit", "Type": "Float", "DefaultValue": 10.0}],
            "Steps": [
                {"Name": "Double", "Type": "Processing", "CacheConfig": {"Enabled": True, "ExpireAfter": "P1D"},
                 "PropertyFiles": [{"PropertyFileName": "Result", "OutputName": "result", "FilePath": "value.json"}],
                 "Arguments": {"AppSpecification": {"ImageUri": "mlops-processing:local", "ContainerEntrypoint": MLOPS_ENTRYPOINT,
                                                    "ContainerArguments": ["/opt/ml/processing/input/code/double.ipynb", "--output-notebook",
                                                                           "/opt/ml/processing/output/report/double.ipynb",
                                                                           "-p", "input_dir", "/opt/ml/processing/input/data",
                                                                           "-p", "output_dir", "/opt/ml/processing/output",
                                                                           "-p", "factor", {"Get": "Parameters.Factor"}]},
                               "ProcessingInputs": [{"InputName": "code", "S3Input": {"S3Uri": "s3://bucket/code/double.ipynb", "LocalPath": "/opt/ml/processing/input/code"}},
                                                    {"InputName": "data", "S3Input": {"S3Uri": "s3://bucket/data/", "LocalPath": "/opt/ml/processing/input/data"}}],
                               "ProcessingOutputConfig": {"Outputs": [output("result"), output("report")]}}},
                {"Name": "Check", "Type": "Condition", "Arguments": {
                    "Conditions": [{"Type": "LessThanOrEqualTo", "RightValue": {"Get": "Parameters.Limit"},
                                    "LeftValue": {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Double.PropertyFiles.Result"}, "Path": "value"}}}],
                    "IfSteps": [], "ElseSteps": [{"Name": "TooBig", "Type": "Fail", "Arguments": {"ErrorMessage": {"Std:Join": {
                        "On": " ", "Values": ["the value is above", {"Get": "Parameters.Limit"}]}}}}]}}]}
    first = run_definition(tiny, pipeline="Tiny", home=home)
    assert first.status == "Succeeded", first.failure_reason
    assert [s.name for s in first.steps] == ["Double", "Check"]  # TooBig is on the branch not taken
    assert json.loads((store.path(first.outputs["Double"]["result"]) / "value.json").read_text()) == {"value": 6}
    assert [p.name for p in first.notebooks] == ["double.ipynb"]
    assert first.step("Double").io.params == {"input_dir": "/opt/ml/processing/input/data", "output_dir": "/opt/ml/processing/output",
                                              "factor": "2"}
    second = run_definition(tiny, {"Factor": "5"}, pipeline="Tiny", home=home)
    assert (second.status, second.failure_reason) == ("Failed", "the value is above 10.0")
    third = run_definition(tiny, pipeline="Tiny", home=home)
    assert third.step("Double").cached_from == first.id and third.status == "Succeeded"
