"""The semantics corpus: each `tests/semantics/*.json` is one documented behaviour of SageMaker Pipelines (its `source`
names the page or SDK file), a definition and what the local engine must do with it.

A case has `definition` and `runs` (each run: `parameters`, `resume`, then either `refused` (raised before anything
runs) or `status`, `failure_reason`, `steps` (status, attempt, cached, properties, properties_match), `not_run`,
`delays` (the retry waits, in order) and `order` (pairs: the first ended before the second started)); a step's
`properties_after` ({A: B}) says its property A is later than (greater than) its property B; `store` puts JSON objects
in the local store first; `validate` lists messages `mlops validate` must report; `graph_problems` lists the JSON
pointers `mlops.definition.graph.graph_problems` must name (steps that can never run). A `transform` case
checks a Transform request against the DeepAR transform executor's rules.

Steps of type `Toy` (and Training / Processing steps with `"Toy": true`) run `Toy` below: it fails with
`StepError(Kind)` for its first `FailTimes` tries, writes `Write` (URI -> JSON) to the store, and returns its
arguments as its properties. Retry waits are recorded on a virtual clock, so no case sleeps."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import mlops.engine.run as engine_run
from mlops.definition.graph import graph_problems
from mlops.definition.validate import semantic_errors
from mlops.engine import DefinitionNotRunnable, StepError
from mlops.engine.executors import Executor, executors
from mlops.engine.run import run_definition

CASES = sorted(Path(__file__).parent.joinpath("semantics").glob("*.json"))


class Toy(Executor):
    "A toy step: fails as told for its first tries, writes JSON objects to the store, returns its arguments."
    runs = "a toy step of the semantics corpus"

    def __init__(self, step_type: str):
        self.step_type, self.tries = step_type, {}

    def accepts(self, arguments): return self.step_type == "Toy" or arguments.get("Toy") is True

    def run(self, step):
        key = (step.execution.id, step.name)
        self.tries[key] = tries = self.tries.get(key, 0) + 1
        if tries <= step.arguments.get("FailTimes", 0):
            raise StepError(f"{step.name}: try {tries} fails with {step.arguments['Kind']}", step.arguments["Kind"])
        for uri, document in step.arguments.get("Write", {}).items():
            path = step.execution.store.path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(document))
        return dict(step.arguments)


@pytest.fixture
def toys():
    registered = [executors.register(Toy(t)) for t in ("Toy", "Training", "Processing")]
    yield
    for executor in registered: executors.unregister(executor)


@pytest.fixture
def clock(monkeypatch):
    "A virtual clock for the engine: `sleep` records the wait and moves the clock on."
    import time
    state = SimpleNamespace(offset=0.0, waits=[])
    def sleep(seconds):
        state.waits.append(seconds)
        state.offset += seconds
    monkeypatch.setattr(engine_run, "time", SimpleNamespace(time=lambda: time.time() + state.offset, sleep=sleep))
    return state


def check_run(execution, expected: dict, waits: list):
    if "status" in expected: assert execution.status == expected["status"], execution.failure_reason
    if "failure_reason" in expected: assert expected["failure_reason"] in (execution.failure_reason or ""), execution.failure_reason
    steps = {s.name: s for s in execution.steps}
    for name, want in expected.get("steps", {}).items():
        assert name in steps, f"step {name} did not run: {sorted(steps)}"
        step = steps[name]
        if "status" in want: assert step.status == want["status"], (name, step.failure_reason)
        if "attempt" in want: assert step.attempt == want["attempt"], name
        if "cached" in want: assert bool(step.cached_from) == want["cached"], name
        for key, value in want.get("properties", {}).items(): assert step.properties[key] == value, (name, key)
        for key, pattern in want.get("properties_match", {}).items(): assert re.match(pattern, step.properties[key]), (name, key, step.properties[key])
        for key, earlier in want.get("properties_after", {}).items(): assert step.properties[key] > step.properties[earlier], (name, key, step.properties)
    for name in expected.get("not_run", []): assert name not in steps, f"{name} ran"
    if "delays" in expected: assert waits == expected["delays"]
    for first, second in expected.get("order", []): assert steps[first].ended <= steps[second].started, (first, second)


def check_transform(case: dict, tmp_path: Path):
    from mlops.engine.executors.deepar import check_payloads, check_transform_request
    request, error = case["transform"]["request"], case["transform"]["error"]
    def check():
        check_transform_request(request)
        for number, size in enumerate(case["transform"].get("record_sizes_mb", [])):
            (tmp_path / f"part-{number}.jsonl").write_text(json.dumps({"start": "2024-01-01", "target": [1.0] * int(size * 2**20 / 5)}) + "\n")
        check_payloads(request, tmp_path)
    if error is None: check()
    else:
        with pytest.raises(StepError, match=re.escape(error)): check()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_semantics(path, tmp_path, toys, clock):
    case = json.loads(path.read_text())
    assert case.get("source"), "every case names the documentation or SDK source it pins"
    if "transform" in case: return check_transform(case, tmp_path)
    for uri, document in case.get("store", {}).items():
        file = tmp_path / "store" / uri[len("s3://"):]
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(document))
    if "graph_problems" in case:
        assert [p for p, _ in graph_problems(case["definition"])] == case["graph_problems"]
    if "validate" in case:
        messages = [e.message for e in semantic_errors(case["definition"])]
        for expected in case["validate"]: assert any(expected in m for m in messages), messages
    previous = None
    for expected in case["runs"]:
        clock.waits.clear()
        run = lambda: run_definition(case["definition"], expected.get("parameters"), pipeline="Semantics", home=tmp_path,
                                     resume=previous.id if expected.get("resume") else None)
        if "refused" in expected:
            with pytest.raises(DefinitionNotRunnable, match=re.escape(expected["refused"])): run()
            continue
        previous = run()
        check_run(previous, expected, clock.waits)


def test_the_corpus_covers_the_documented_behaviours():
    names = {p.stem for p in CASES}
    for prefix in ("retry-max-attempts-", "automatic-retry-", "retry-expire-after-min", "cache-expire-", "jsonget-s3uri", "jsonget-property-file",
                   "execution-variable-", "fail-then-resume-refused", "condition-nested-not-or-in", "depends-on-", "transform-",
                   "condition-equals-types-differ", "condition-strings-compare-as-strings", "condition-not-equals-refused",
                   "execution-variable-current-datetime", "jsonget-path-jsonpath-root", "jsonget-inside-join", "retry-both-limits-refused",
                   "retry-max-attempts-above-cap-refused", "retry-expire-after-min-above-cap-refused", "condition-nested-condition-step",
                   "depends-on-fail-step-"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_deepar_reads_student_t_and_parquet_channels(tmp_path):
    "DeepAR Hyperparameters: likelihood student-T (the container's default configuration: student-t); DeepAR Input/Output Interface: Parquet."
    import pandas as pd
    from mlops.deepar.channels import read_channel
    from mlops.deepar.hyperparameters import DeepARHyperparameters
    hp = DeepARHyperparameters.from_strings({"time_freq": "D", "prediction_length": "7", "context_length": "7", "epochs": "1", "likelihood": "student-t"})
    assert hp.likelihood == "student-T"
    pd.DataFrame({"start": pd.to_datetime(["2024-01-01 00:00:00"]), "target": [[1.0, 2.0, 3.0]]}).to_parquet(tmp_path / "train.parquet")
    (tmp_path / "more.json").write_text('{"start": "2024-01-02 00:00:00", "target": [4.0]}\n')
    assert [(s.start, list(s.target)) for s in read_channel(tmp_path)] == [("2024-01-02 00:00:00", [4.0]), ("2024-01-01 00:00:00", [1.0, 2.0, 3.0])]
