"""The service-rules corpus: each `tests/service_rules/*.json` is a definition SageMaker (or S3, or DeepAR) is known to refuse,
or a valid variant, with its `source`. A case takes a rendered pipeline filled with the example values, applies `set`
(a step's field by step name and path, or a parameter's default; `"remove": true` deletes, a path ending in `-` appends),
and `mlops validate` must report the problem at that step and JSON pointer with that check (or nothing, for a good case).
Then the values a person might put in a values file: refused by `mlops fill` with the key named and nothing written, and
by `mlops validate` once filled by hand."""
import copy
import fnmatch
import json
import os
import subprocess
from pathlib import Path

import pytest

from mlops.config import TEMPLATE_KEYS, project_root
from mlops.definition.graph import located_steps
from mlops.definition.templates import fill_definition
from mlops.definition.validate import validate_definition
from mlops.render import TEMPLATE_FILES

CASES = sorted(Path(__file__).parent.joinpath("service_rules").glob("*.json"))
TEMPLATES = project_root() / "templates"
EXAMPLES = {name: key.example for name, key in TEMPLATE_KEYS.items()}
MLOPS = str(Path(os.sys.executable).parent / "mlops")


def template(pipeline: str) -> dict:
    return json.loads((TEMPLATES / TEMPLATE_FILES[pipeline]).read_text())


def step_pointer(definition: dict, name: str) -> str:
    return next(s.pointer for s in located_steps(definition) if s.step.get("Name") == name)


def apply(definition: dict, change: dict) -> dict:
    if "parameter" in change:
        parameter = next(p for p in definition["Parameters"] if p["Name"] == change["parameter"])
        parameter["DefaultValue"] = change["value"]
        return definition
    step = next(s.step for s in located_steps(definition) if s.step.get("Name") == change["step"])
    *parents, last = change["path"].strip("/").split("/")
    node = step
    for part in parents: node = node[int(part)] if isinstance(node, list) else node[part]
    if change.get("remove"): node.pop(last)
    elif last == "-": node.append(change["value"])
    else: node[int(last) if isinstance(node, list) else last] = change["value"]
    return definition


def test_the_corpus_has_bad_and_good_cases_each_with_a_source():
    cases = [json.loads(p.read_text()) for p in CASES]
    assert sum(c["expect"] is None for c in cases) >= 5 and sum(c["expect"] is not None for c in cases) >= 12
    assert all(c["source"] and c["title"] for c in cases)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_validate_rejects_each_bad_definition_and_accepts_each_good_one(path):
    case = json.loads(path.read_text())
    definition = fill_definition(template(case["pipeline"]), EXAMPLES)
    for change in case["set"]: definition = apply(copy.deepcopy(definition), change)
    errors = validate_definition(definition)
    if case["expect"] is None:
        assert errors == [], [str(e) for e in errors]
        return
    want = case["expect"]
    if "parameter" in want:
        index = next(i for i, p in enumerate(definition["Parameters"]) if p["Name"] == want["parameter"])
        step, pointer = None, f"/Parameters/{index}/DefaultValue"
    else:
        step = want.get("step")
        pointer = (step_pointer(definition, step) if step else "") + want["path"]
    found = [e for e in errors if e.step == step and fnmatch.fnmatchcase(e.pointer, pointer) and e.check == want["check"]
             and want["contains"] in e.message]
    assert found, f"{path.stem}: no [{want['check']}] error at {pointer} containing {want['contains']!r}; got: {[str(e) for e in errors]}"


BAD_BUCKETS = ["", "Bad_Bucket Name", 'my"bucket', "my\nbucket", "{{ RoleArn }}"]


def filled_by_hand(pipeline: str, bucket: str) -> dict:
    "The template with every placeholder replaced as a careless script would: no checks at all."
    def visit(value):
        if isinstance(value, dict): return {k: visit(v) for k, v in value.items()}
        if isinstance(value, list): return [visit(v) for v in value]
        if isinstance(value, str):
            value = value.replace("{{ ArtifactBucket }}", bucket)
            for key, example in EXAMPLES.items(): value = value.replace(f"{{{{ {key} }}}}", example)
        return value
    return visit(template(pipeline))


@pytest.mark.parametrize("bucket", BAD_BUCKETS, ids=repr)
def test_a_bad_artifact_bucket_is_refused_by_validate_and_by_fill(tmp_path, bucket):
    filled = tmp_path / "filled.json"
    filled.write_text(json.dumps(filled_by_hand("DeepARTraining", bucket)))
    result = subprocess.run([MLOPS, "validate", str(filled)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = " ".join((result.stdout + result.stderr).split())
    assert "FeatureEngineering" in message and "/Steps/0/Arguments/ProcessingOutputConfig/Outputs/0/S3Output/S3Uri" in message, message
    assert "S3 bucket name" in message, message

    values = tmp_path / "values.json"
    values.write_text(json.dumps({**EXAMPLES, "ArtifactBucket": bucket}))
    out = tmp_path / "out.json"
    result = subprocess.run([MLOPS, "fill", str(TEMPLATES / TEMPLATE_FILES["DeepARTraining"]), "--values", str(values), "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "ArtifactBucket" in result.stderr and "Fix" in result.stderr, result.stderr
    assert not out.exists()


def test_the_rendered_cloudformation_template_fits_a_template_body():
    result = subprocess.run([MLOPS, "validate", str(TEMPLATES / "cloudformation.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
