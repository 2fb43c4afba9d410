"""The valid corpus (issue 21): pipelines the SageMaker SDK itself builds (tests/corpus/sdk_pipelines.py).

`mlops validate` must refuse none of them, and `mlops run --definition` must either run each one or refuse only the
step types the local engine lists as unsupported: never with a validation error.

With `MLOPS_CORPUS_OUT=FOLDER`, every built definition is also written to `FOLDER/<name>.json`, and what the
validator says of each to `FOLDER/false-positives.txt` (also: `python tests/corpus/sdk_pipelines.py FOLDER`).
"""
import json
import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import BUILDERS, build_corpus, validation_report, write_corpus
from mlops.definition.validate import validate_definition

BUILD_SECONDS = 60  # the whole corpus builds in well under this


@pytest.fixture(scope="session")
def corpus() -> dict[str, dict]:
    "Every corpus definition, built once per test session (and written to $MLOPS_CORPUS_OUT when it is set)."
    started = time.perf_counter()
    definitions = build_corpus()
    seconds = time.perf_counter() - started
    assert seconds < BUILD_SECONDS, f"the corpus took {seconds:.1f} s to build"
    if out := os.environ.get("MLOPS_CORPUS_OUT"):
        write_corpus(definitions, Path(out))
        (Path(out) / "false-positives.txt").write_text(validation_report(definitions))
    return definitions


@pytest.mark.parametrize("name", list(BUILDERS))
def test_validate_accepts_the_sdk_definition(corpus, name):
    errors = validate_definition(corpus[name])
    assert errors == [], f"{name}: mlops validate refuses a definition the SDK built:\n" + "\n".join(map(str, errors))


def _steps(steps):
    for step in steps:
        yield step
        if step["Type"] == "Condition":
            yield from _steps(step["Arguments"].get("IfSteps", []) + step["Arguments"].get("ElseSteps", []))


def _conditions(conditions):
    for condition in conditions:
        yield condition
        yield from _conditions(condition.get("Conditions", []) + ([condition["Condition"]] if "Condition" in condition else []))


def test_the_corpus_covers_what_the_sdk_builds(corpus):
    "Every step type named in the brief of issue 21, every ConditionTypeEnum member, every parameter type, with and without a default."
    from sagemaker.core.workflow.conditions import ConditionTypeEnum
    steps = [step for definition in corpus.values() for step in _steps(definition["Steps"])]
    step_types = {step["Type"] for step in steps}
    assert {"Processing", "Training", "Tuning", "Transform", "Model", "RegisterModel", "Lambda", "Callback", "EMR",
            "QualityCheck", "ClarifyCheck", "Fail", "Condition"} <= step_types, step_types
    conditions = {c["Type"] for step in steps if step["Type"] == "Condition"
                  for c in _conditions(step["Arguments"]["Conditions"])}
    assert {member.value for member in ConditionTypeEnum} <= conditions, conditions
    parameters = [p for definition in corpus.values() for p in definition.get("Parameters", [])]
    assert {(p["Type"], "DefaultValue" in p) for p in parameters} >= {
        (t, d) for t in ("String", "Integer", "Float", "Boolean") for d in (True, False)}
    assert any("EnumValues" in p for p in parameters)
    assert any(d.get("MlflowConfig") for d in corpus.values())
    assert any(d["PipelineExperimentConfig"]["ExperimentName"] != {"Get": "Execution.PipelineName"} for d in corpus.values())
    training = [step["Arguments"] for step in steps if step["Type"] == "Training"]
    assert any("ProfilerConfig" in t and "ProfilerRuleConfigurations" in t for t in training)
    assert any({"code", "sm_drivers"} <= {c["ChannelName"] for c in t.get("InputDataConfig", [])} for t in training)  # script mode
    register = [step["Arguments"] for step in steps if step["Type"] == "RegisterModel"]
    assert any("ModelMetrics" in r and "DriftCheckBaselines" in r for r in register)


# a value for each parameter without a default, as StartPipelineExecution would be given it (-p NAME=VALUE)
PARAMETER_VALUES = {"String": "value", "Integer": "1", "Float": "0.5", "Boolean": "false"}
WAITS = {"callback"}  # its Callback steps wait for `mlops callback`: tests/test_lambda_callback.py answers them
UNSUPPORTED = re.compile(r"step '([^']+)' \((\w+)(?:, [^\n]*?)?\) cannot run locally: [^\n]*? Fix: ")  # check_runnable's line for each step it refuses


@pytest.mark.parametrize("name", [n for n in BUILDERS if n not in WAITS])
def test_run_refuses_only_unsupported_steps(corpus, name, tmp_path, monkeypatch):
    from mlops.cli import main
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(corpus[name]))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("MLOPS_FORKSERVER", "0")  # no detached server after the run
    parameters = [f"-p{p['Name']}={PARAMETER_VALUES[p['Type']]}" for p in corpus[name].get("Parameters", [])
                  if "DefaultValue" not in p]
    result = CliRunner().invoke(main, ["run", "--definition", str(path), *parameters], catch_exceptions=False)
    output = " ".join(result.output.split())
    assert "not a valid pipeline definition" not in output, f"{name}: mlops run gives a validation error:\n{output}"
    if result.exit_code == 2:  # refused before running: only for steps the engine refuses, each on its line with the fix
        refused = UNSUPPORTED.findall(result.output)
        assert refused, f"{name}: mlops run refused it, and not for a step it cannot run:\n{output}"
        types = {step["Name"]: step["Type"] for step in _steps(corpus[name]["Steps"])}
        assert all(types.get(step) == type_ for step, type_ in refused), f"{name}: {refused} vs the steps {types}"
        assert not (tmp_path / ".mlops" / "runs").exists(), f"{name}: refused after something ran"
    else:  # it ran: Succeeded (0) or Failed (1: a Fail step, as conditions_run_locally reaches one)
        assert result.exit_code in (0, 1), f"{name}: mlops run neither ran nor refused it (exit {result.exit_code}):\n{output}"
