"""The refusal corpus: each `tests/refusals/*.json` is a definition SageMaker refuses, with where AWS's answer is recorded
(`source`), that answer quoted (`aws_message`), the values an execution starts with (`values`, what `-p` gives) and what
`mlops` must report (`expect`): the step (by name, or null for the pipeline itself), a JSON pointer (fnmatch pattern;
under the step when a step is named, else from the definition's root), the check and a phrase of the message.

Every case is refused three ways, each before anything runs: `validate_definition` (and `mlops validate FILE -p ...`),
`mlops run --definition FILE -p ...` (no run folder, no records), and `mlops start` against a real moto server (the
pipeline is created there as the case's definition; no execution is started). Each failure prints AWS's message
beside ours.
"""
import fnmatch
import json
import os
import re
from functools import lru_cache
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import run_mlops
from mlops.cli import main
from mlops.definition.graph import located_steps
from mlops.definition.validate import validate_definition

CASES = sorted(Path(__file__).parent.joinpath("refusals").glob("*.json"))
ROLE = "arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-ExecutionRole"


@lru_cache(maxsize=None)
def case_of(path: Path) -> dict:
    return json.loads(path.read_text())


def expected_pointer(case: dict) -> str:
    "The pointer `expect` names, from the definition's root (a step is found by its name)."
    want = case["expect"]
    if want["step"] is None:
        return want["pointer"]
    located = [s.pointer for s in located_steps(case["definition"]) if s.step.get("Name") == want["step"]]
    assert located, f"the case names step {want['step']!r}, which its definition does not have"
    return located[0] + want["pointer"]


def beside(path: Path, ours) -> str:
    "AWS's recorded message and ours, one above the other."
    case = case_of(path)
    ours = "\n       ".join(ours) if isinstance(ours, list) else str(ours)
    return (f"{path.stem}: {case['title']}\n  AWS ({case['source']}):\n       {case['aws_message']}\n"
            + (f"       ({case['note']})\n" if case.get("note") else "") + f"  ours:\n       {ours or '(nothing: not refused)'}")


def flat(text: str) -> str:
    "Text with its runs of whitespace made one space (a message is matched however the console breaks it)."
    return re.sub(r"\s+", " ", text)


def test_the_corpus_has_each_case_with_its_source_and_aws_message():
    assert 10 <= len(CASES) <= 16, [p.stem for p in CASES]
    for path in CASES:
        case = case_of(path)
        assert {"title", "source", "aws_message", "values", "definition", "expect"} <= set(case), path.stem
        assert case["title"] and case["aws_message"] and isinstance(case["values"], dict), path.stem
        assert "https://" in case["source"] or "botocore" in case["source"], path.stem
        assert {"step", "pointer", "check", "contains"} <= set(case["expect"]), path.stem
        assert case["definition"].get("Steps"), path.stem


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_validate_definition_refuses_each_case(path):
    case = case_of(path)
    want, pointer = case["expect"], expected_pointer(case)
    errors = validate_definition(case["definition"], case["values"])
    found = [e for e in errors if e.step == want["step"] and fnmatch.fnmatchcase(e.pointer, pointer)
             and e.check == want["check"] and want["contains"] in e.message]
    assert found, (f"no [{want['check']}] error at {pointer} containing {want['contains']!r}\n"
                   + beside(path, [str(e) for e in errors]))
    print(beside(path, [str(e) for e in found]))  # pytest -rP shows the two side by side


def options(case: dict) -> list[str]:
    "`-p NAME=VALUE` for each of the case's values."
    return [arg for name, value in case["values"].items() for arg in ("-p", f"{name}={value}")]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    "A CliRunner whose commands run with a private MLOPS_HOME (empty) and a console wide enough that nothing wraps."
    home = tmp_path_factory.mktemp("home") / ".mlops"
    return CliRunner(env={"MLOPS_HOME": str(home), "COLUMNS": "4000"}), home


def definition_file(tmp_path: Path, path: Path) -> Path:
    written = tmp_path / f"{path.stem}.json"
    written.write_text(json.dumps(case_of(path)["definition"]))
    return written


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_mlops_validate_refuses_each_case_naming_the_problem(cli, tmp_path, path):
    runner, _ = cli
    case, file = case_of(path), definition_file(tmp_path, path)
    result = runner.invoke(main, ["validate", str(file), *options(case)])
    output = flat(result.output)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), beside(path, result.output)
    assert "Traceback" not in result.output, result.output
    assert case["expect"]["contains"] in output and (case["expect"]["step"] or "(pipeline)") in output, beside(path, output)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_mlops_run_refuses_each_case_before_anything_runs(cli, tmp_path, path):
    runner, home = cli
    case, file = case_of(path), definition_file(tmp_path, path)
    result = runner.invoke(main, ["run", "--definition", str(file), *options(case)])
    output = flat(result.output)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), beside(path, result.output)
    assert "Traceback" not in result.output, result.output
    assert "is not a valid pipeline definition" in output and case["expect"]["contains"] in output, beside(path, output)
    assert nothing_in(home) == [], f"mlops run wrote {nothing_in(home)} before refusing"


def nothing_in(home: Path) -> list[str]:
    "What a local execution would leave in MLOPS_HOME (runs/, runs.db, events.jsonl, store/): here, nothing."
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def test_the_installed_mlops_run_refuses_a_case_in_its_own_process(tmp_path):
    "One case as a user meets it: the console script in a fresh process, its exit code and stderr."
    path = next(p for p in CASES if p.stem == "empty-default-feeds-container-argument")
    home = tmp_path / ".mlops"
    result = run_mlops("run", "--definition", definition_file(tmp_path, path), env={"MLOPS_HOME": str(home)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert case_of(path)["expect"]["contains"] in flat(result.stderr), beside(path, result.stderr)
    assert nothing_in(home) == []


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    "This process's environment with the server's dummy credentials and no real AWS configuration."
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in moto_server.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return moto_server


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_mlops_start_refuses_each_case_and_starts_nothing(aws_env, path):
    from mlops.remote.aws import RemoteError
    from mlops.remote.executions import start
    case, name = case_of(path), f"refusal-{path.stem}"
    sagemaker = aws_env.client("sagemaker")
    sagemaker.create_pipeline(PipelineName=name, PipelineDefinition=json.dumps(case["definition"]), RoleArn=ROLE)
    try:
        try:
            arn = start(name, case["values"], endpoint_url=aws_env.url)
        except RemoteError as e:
            refused = str(e)
        else:
            pytest.fail(f"started {arn}\n" + beside(path, "(nothing: started)"))
        assert case["expect"]["contains"] in refused and "Fix:" in refused, beside(path, refused)
        executions = sagemaker.list_pipeline_executions(PipelineName=name)["PipelineExecutionSummaries"]
        assert executions == [], f"{name}: an execution was started: {executions}"
    finally:
        sagemaker.delete_pipeline(PipelineName=name, ClientRequestToken=f"delete-{name}"[:128].ljust(32, "0"))
