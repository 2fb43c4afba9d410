"""The valid corpus (issue 21): pipelines the SageMaker SDK itself builds (tests/corpus/sdk_pipelines.py).

`mlops validate` must refuse none of them, and `mlops run --definition` must either run each one or refuse only the
step types the local engine lists as unsupported: never with a validation error.

With `MLOPS_CORPUS_OUT=FOLDER`, every built definition is also written to `FOLDER/<name>.json`.
"""
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import BUILDERS, build_corpus, write_corpus
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
    return definitions


@pytest.mark.parametrize("name", list(BUILDERS))
def test_validate_accepts_the_sdk_definition(corpus, name):
    errors = validate_definition(corpus[name])
    assert errors == [], f"{name}: mlops validate refuses a definition the SDK built:\n" + "\n".join(map(str, errors))


# a value for each parameter without a default, as StartPipelineExecution would be given it (-p NAME=VALUE)
PARAMETER_VALUES = {"String": "value", "Integer": "1", "Float": "0.5", "Boolean": "false"}
UNSUPPORTED = "is not supported locally"  # mlops.engine.plan.check_runnable's words for a step it has no executor for


@pytest.mark.parametrize("name", list(BUILDERS))
def test_run_refuses_only_unsupported_steps(corpus, name, tmp_path, monkeypatch):
    from mlops.cli import main
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(corpus[name]))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.setenv("COLUMNS", "400")
    parameters = [f"-p{p['Name']}={PARAMETER_VALUES[p['Type']]}" for p in corpus[name].get("Parameters", [])
                  if "DefaultValue" not in p]
    result = CliRunner().invoke(main, ["run", "--definition", str(path), *parameters], catch_exceptions=False)
    output = " ".join(result.output.split())
    assert "not a valid pipeline definition" not in output, f"{name}: mlops run gives a validation error:\n{output}"
    if result.exit_code == 2:  # refused before running: only for steps the engine lists as unsupported
        assert UNSUPPORTED in output, f"{name}: mlops run refused it, and not for an unsupported step:\n{output}"
    else:
        assert "Execution" in output or "execution" in output, f"{name}: mlops run neither ran nor refused it:\n{output}"
