"""`mlops render`, `fill`, `validate` and `dag` on the real templates: hermetic, deterministic, valid, deployable.

Every command runs as the real `mlops` command in a fresh process with no AWS
credentials or configuration, under a guard that records every socket connection or host lookup.
"""
import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import MLOPS
from mlops.config import EXAMPLE_ACCOUNT_ID, TEMPLATE_KEYS, project_root
from mlops.definition.graph import all_steps, located_steps
from mlops.definition.templates import KEYS_FILE, FillError, example_values, fill_definition
from mlops.definition.shapes import service_model
from mlops.definition.validate import (SCHEMA_OVERLAY, DefinitionInvalid, validate_definition,
                                       validate_file)
from mlops.render import CLOUDFORMATION_FILE, FINGERPRINT_FILE, TEMPLATE_FILES, fill, render

TEMPLATES = project_root() / "templates"
# AWS's own registries of built-in algorithm images (the SDK's image_uri_config): public, not a user's account
_DEEPAR_IMAGES = Path(__import__("sagemaker.core", fromlist=["x"]).__file__).parent / "image_uri_config" / "forecasting-deepar.json"
AWS_REGISTRY_ACCOUNTS = sorted({a for v in json.loads(_DEEPAR_IMAGES.read_text())["versions"].values() for a in v["registries"].values()})
ARTIFACTS = [*TEMPLATE_FILES.values(), KEYS_FILE, CLOUDFORMATION_FILE, FINGERPRINT_FILE]

# Installed before anything else is imported: every connection or name lookup is recorded, then refused.
SOCKET_GUARD = textwrap.dedent("""
    import json, os, runpy, socket, sys
    attempts = []
    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise OSError(f"network refused by the test: {what}")
        return refused
    socket.socket.connect, socket.socket.connect_ex = refuse("socket.connect"), refuse("socket.connect_ex")
    socket.getaddrinfo, socket.create_connection = refuse("getaddrinfo"), refuse("create_connection")
    sys.argv = [MLOPS_SCRIPT, *sys.argv[1:]]
    try:
        runpy.run_path(MLOPS_SCRIPT, run_name="__main__")
    finally:
        with open(os.environ["SOCKET_LOG"], "w") as log:
            json.dump(attempts, log)
""").replace("MLOPS_SCRIPT", repr(MLOPS[0]))


def bare_environment(tmp_path: Path) -> dict:
    "The environment of a machine with no AWS credentials, configuration or region."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "BOTO"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**env, "HOME": str(home)}


def guarded_mlops_render(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, list]:
    log = tmp_path / f"sockets-{len(list(tmp_path.glob('sockets-*')))}.json"
    result = subprocess.run([sys.executable, "-c", SOCKET_GUARD, *map(str, args)], capture_output=True, text=True,
                            env={**bare_environment(tmp_path), "SOCKET_LOG": str(log)}, cwd=tmp_path)
    return result, json.loads(log.read_text())


def test_two_renders_are_byte_identical_hermetic_and_match_the_committed_templates(tmp_path):
    outputs = []
    for run in ("first", "second"):
        result, attempts = guarded_mlops_render(tmp_path, "render", "--out", tmp_path / run)
        assert result.returncode == 0, result.stderr
        assert attempts == [], f"the render opened network connections: {attempts}"
        outputs.append({name: (tmp_path / run / name).read_bytes() for name in ARTIFACTS})
    assert outputs[0] == outputs[1]
    committed = {name: (TEMPLATES / name).read_bytes() for name in ARTIFACTS if name != FINGERPRINT_FILE}
    assert committed == {k: v for k, v in outputs[0].items() if k != FINGERPRINT_FILE}, \
        "templates/ is out of date: run `mlops render`"


def test_the_socket_guard_catches_a_connection(tmp_path):
    "The guard itself can fail: a build that reaches out is reported."
    script = tmp_path / "reach.py"
    script.write_text("import socket\ntry:\n    socket.create_connection(('example.com', 443), timeout=1)\nexcept OSError:\n    pass\n")
    log = tmp_path / "log.json"
    guard = SOCKET_GUARD.replace(f'runpy.run_path({MLOPS[0]!r}, run_name="__main__")', f"runpy.run_path({str(script)!r})")
    assert guard != SOCKET_GUARD
    subprocess.run([sys.executable, "-c", guard], env={**os.environ, "SOCKET_LOG": str(log)}, check=True)
    assert json.loads(log.read_text()) and "example.com" in json.loads(log.read_text())[0]


FORBIDDEN = {
    "a timestamp": re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"),
    "a machine path": re.compile(r"(/home/|/Users/|/root|/tmp/|/work/|/var/folders|[A-Z]:\\\\)"),
    # 12 digits on their own: not inside a hex digest (a sha256 in fingerprint.json may hold 12 digits in a row)
    "an account id": re.compile(rf"(?<![0-9A-Fa-f])(?!{EXAMPLE_ACCOUNT_ID}|{'|'.join(AWS_REGISTRY_ACCOUNTS)})\d{{12}}(?![0-9A-Fa-f])"),
    "a sentinel": re.compile(r"mlops-sentinel|000000000000", re.I),
    "a random name": re.compile(r"\b(model|job|pipelines?)-[0-9a-f]{8}\b"),
}


ARN = re.compile(r"arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d*:")
REGION = re.compile(r"\b(us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d\b")


@pytest.mark.parametrize("name", ARTIFACTS)
def test_templates_hold_no_timestamps_paths_accounts_or_random_names(name):
    text = (TEMPLATES / name).read_text()
    for what, pattern in FORBIDDEN.items():
        assert not pattern.search(text), f"templates/{name} holds {what}: {pattern.search(text).group(0)!r}"
    if name != KEYS_FILE:  # the examples in keys.json are the only ARNs and regions allowed
        assert not ARN.search(text) and not REGION.search(text), f"templates/{name} holds an ARN or a region"


def test_the_scan_can_fail():
    assert FORBIDDEN["an account id"].search('"arn:aws:iam::123456789012:role/x"')
    assert not FORBIDDEN["an account id"].search(f'"arn:aws:iam::{EXAMPLE_ACCOUNT_ID}:role/x"')
    assert not FORBIDDEN["an account id"].search('"224300973850.dkr.ecr.eu-west-1.amazonaws.com/forecasting-deepar:1"')
    assert not FORBIDDEN["an account id"].search('"outputs": {"keys.json": "3ea54715b1a3130924423456789012cbfe8f046f24834e2320d38bcc2f4"}')
    assert FORBIDDEN["an account id"].search('"123456789012.dkr.ecr.eu-west-1.amazonaws.com/x:1"')
    assert FORBIDDEN["a machine path"].search('"/home/someone/mlops/nbs"')
    assert ARN.search("arn:aws:kms:eu-west-1:111122223333:key/x") and REGION.search('"us-east-1"')


@pytest.mark.parametrize("name", TEMPLATE_FILES.values())
def test_every_template_passes_mlops_validate(name):
    assert validate_file(TEMPLATES / name) == []
    result = subprocess.run([*MLOPS, "validate", TEMPLATES / name], capture_output=True, text=True)
    assert result.returncode == 0 and "valid" in result.stdout, result.stderr


def test_keys_manifest_points_at_every_placeholder():
    keys = json.loads((TEMPLATES / KEYS_FILE).read_text())
    assert set(keys) == set(TEMPLATE_KEYS)
    for file in TEMPLATE_FILES.values():
        template = json.loads((TEMPLATES / file).read_text())
        pointed = 0
        for key, entry in keys.items():
            assert entry["description"] and entry["example"]
            for pointer in entry["used_in"].get(file, []):
                assert "{{ " + key + " }}" in resolve(template, pointer), (key, pointer)
                pointed += 1
        assert pointed == len(re.findall(r"\{\{ \w+ \}\}", json.dumps(template)))


def resolve(document, pointer: str):
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


# --- fill -------------------------------------------------------------------------------------------------

HOSTILE = {"RoleArn": 'role "quoted" \\ back\\slash',
           "ArtifactBucket": "line\nbreak\ttab {{ RoleArn }} ${Sub} }}{{",
           "CodeLocation": "s3://b/ünïcödé/\u2028",
           "ProcessingImageUri": '{"not": "an object"}',
           "DeepARImageUri": "\\u0041 stays six characters",
           "KmsKeyId": ""}


@pytest.mark.parametrize("name", TEMPLATE_FILES.values())
def test_fill_round_trip_with_hostile_values(name):
    template = json.loads((TEMPLATES / name).read_text())
    with pytest.raises(FillError) as refused:  # a values file like this is refused, every bad key named ...
        fill_definition(template, HOSTILE)
    assert all(f"{key}:" in str(refused.value) for key in ("RoleArn", "ArtifactBucket", "CodeLocation", "ProcessingImageUri", "DeepARImageUri"))
    # ... and the substitution itself stays literal and single-pass whatever the text (the checks off)
    filled = json.loads(json.dumps(fill_definition(template, HOSTILE, check_values=False)))  # still valid JSON
    keys = json.loads((TEMPLATES / KEYS_FILE).read_text())
    for key, entry in keys.items():
        for pointer in entry["used_in"].get(name, []):
            expected = resolve(template, pointer)
            if expected == "{{ KmsKeyId }}" and HOSTILE["KmsKeyId"] == "":  # no key: the member is absent, not empty
                parent, member = pointer.rsplit("/", 1)
                assert member not in resolve(filled, parent)
                continue
            for k, v in HOSTILE.items():  # what a literal, single-pass substitution gives
                expected = expected.replace("{{ " + k + " }}", "\0" + k + "\0")
            for k, v in HOSTILE.items():
                expected = expected.replace("\0" + k + "\0", v)
            assert resolve(filled, pointer) == expected
    assert "{{ RoleArn }}" in json.dumps(filled)  # the one inside a value, inserted literally


def test_fill_then_validate_on_example_values(tmp_path):
    values = tmp_path / "values.json"
    values.write_text(json.dumps(example_values()))
    for name in TEMPLATE_FILES.values():
        out = tmp_path / f"filled-{name}"
        result = subprocess.run([*MLOPS, "fill", TEMPLATES / name, "--values", values, "-o", out],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "{{" not in out.read_text() and TEMPLATE_KEYS["RoleArn"].example in out.read_text()
        result = subprocess.run([*MLOPS, "validate", out], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_fill_lists_every_missing_key_and_rejects_unknown_ones(tmp_path):
    template = TEMPLATES / TEMPLATE_FILES["DeepARTraining"]
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"RoleArn": TEMPLATE_KEYS["RoleArn"].example}))
    with pytest.raises(FillError, match="missing values for keys: ArtifactBucket, CodeLocation, DeepARImageUri, KmsKeyId, ProcessingImageUri"):
        fill(template, values)
    values.write_text(json.dumps({**example_values(), "KmsKeyID": "x"}))
    result = subprocess.run([*MLOPS, "fill", template, "--values", values, "-o", tmp_path / "out.json"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "KmsKeyID (did you mean KmsKeyId?)" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_known_keys_a_template_does_not_use_are_fine(tmp_path):
    (tmp_path / "one.pipeline.json").write_text(json.dumps({"Version": "2020-12-01", "Steps": [
        {"Name": "Stop", "Type": "Fail", "Arguments": {"ErrorMessage": "{{ RoleArn }}"}}]}))
    (tmp_path / KEYS_FILE).write_text((TEMPLATES / KEYS_FILE).read_text())
    (tmp_path / "values.json").write_text(json.dumps(example_values()))
    assert TEMPLATE_KEYS["RoleArn"].example in fill(tmp_path / "one.pipeline.json", tmp_path / "values.json")


def test_fill_validates_before_writing(tmp_path):
    values = tmp_path / "values.json"
    values.write_text(json.dumps({**example_values(), "RoleArn": "arn:aws:iam::not-an-account:role/x"}))
    out = tmp_path / "filled.json"
    with pytest.raises(FillError, match="RoleArn: 'arn:aws:iam::not-an-account:role/x' is not an IAM role ARN"):
        fill(TEMPLATES / TEMPLATE_FILES["DeepARBatchInference"], values, out)
    assert not out.exists()
    # a value of the right form that the API still refuses (a KMS alias longer than KmsKeyId's 2048 characters)
    values.write_text(json.dumps({**example_values(), "KmsKeyId": "alias/" + "k" * 2048}))
    with pytest.raises(DefinitionInvalid, match="longer than 2048 characters"):
        fill(TEMPLATES / TEMPLATE_FILES["DeepARBatchInference"], values, out)
    assert not out.exists()


# --- CloudFormation ---------------------------------------------------------------------------------------

class CfnLoader(yaml.SafeLoader):
    pass


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode): return {"!" + suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode): return {"!" + suffix: loader.construct_sequence(node, deep=True)}
    return {"!" + suffix: loader.construct_mapping(node, deep=True)}


CfnLoader.add_multi_constructor("!", _tagged)


def test_cloudformation_passes_cfn_lint():
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATES / CLOUDFORMATION_FILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cloudformation_substitutes_to_the_filled_definitions():
    stack = yaml.load((TEMPLATES / CLOUDFORMATION_FILE).read_text(), Loader=CfnLoader)
    assert set(TEMPLATE_KEYS) <= set(stack["Parameters"])
    # the stack's own parameters at their defaults (ModelPackageGroupName: the group the definitions default to)
    defaults = {k: p["Default"] for k, p in stack["Parameters"].items() if "Default" in p}
    # with a KMS key, and without one: then KmsKeyId is absent from every job, as mlops fill leaves it (never "")
    for values in ({**defaults, **example_values()}, {**defaults, **example_values(), "KmsKeyId": ""}):
        conditions = {"UseKmsKey": values["KmsKeyId"] != ""}
        def evaluate(value):  # the intrinsic functions the bodies use: Fn::Join, Fn::If on UseKmsKey, Fn::Sub
            if isinstance(value, str): return value
            (function, argument), = value.items()
            if function == "!Join": return argument[0].join(evaluate(v) for v in argument[1])
            if function == "!If": return evaluate(argument[1] if conditions[argument[0]] else argument[2])
            assert function == "!Sub", function
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            assert set(variables) <= {"RoleArn"}  # the role the stack chooses: RoleArn when given
            return re.sub(r"\$\{(\w+)\}", lambda m: json.dumps(values[m.group(1)])[1:-1], text).replace("${!", "${")
        for name, file in TEMPLATE_FILES.items():
            properties = stack["Resources"][f"{name}Pipeline"]["Properties"]
            assert stack["Resources"][f"{name}Pipeline"]["Type"] == "AWS::SageMaker::Pipeline"
            substituted = json.loads(evaluate(properties["PipelineDefinition"]["PipelineDefinitionBody"]))
            expected = fill_definition(json.loads((TEMPLATES / file).read_text()), {**example_values(), "KmsKeyId": values["KmsKeyId"]})
            assert substituted == expected
            assert ('"KmsKeyId"' in json.dumps(substituted)) == conditions["UseKmsKey"]


# --- validate: every rule has a failing example ------------------------------------------------------------

def training() -> dict:
    return json.loads((TEMPLATES / TEMPLATE_FILES["DeepARTraining"]).read_text())


def steps(definition):
    return {s["Name"]: s for s in all_steps(definition)}


def pointer_of(pointer: str, definition: dict) -> str:
    "A rule's pointer with its names resolved: `{Step}` to the step's JSON pointer, `{Parameters.Name}` to the parameter's."
    located = {s.step["Name"]: s.pointer for s in located_steps(definition)}
    parameters = {p["Name"]: f"/Parameters/{i}" for i, p in enumerate(definition["Parameters"])}
    return re.sub(r"\{([^}]+)\}", lambda m: parameters[m.group(1).split(".", 1)[1]] if m.group(1).startswith("Parameters.")
                  else located[m.group(1)], pointer)


def broken(change) -> list:
    definition = training()
    change(definition, steps(definition))
    return validate_definition(definition)


def params(definition, name):
    return next(p for p in definition["Parameters"] if p["Name"] == name)


RULES = {
    # schema (the pipeline's own fields), and each step's members (the SDK's step types)
    "unknown top-level field": (lambda d, s: d.update(Extra=1), None, "", "schema", "Extra"),
    "unknown step type": (lambda d, s: s["TrainDeepAR"].update(Type="Trainning"), "TrainDeepAR", "{TrainDeepAR}/Type", "step", "unknown step type"),
    "bad step name": (lambda d, s: s["QualityTooLow"].update(Name="Quality too low!"), "Quality too low!", "{QualityTooLow}/Name", "step", "does not match"),
    "bad retry policy": (lambda d, s: s["TrainDeepAR"]["RetryPolicies"][0].update(ExceptionType=["Step.OOPS"]), "TrainDeepAR",
                         "{TrainDeepAR}/RetryPolicies/0/ExceptionType", "step", "Step.OOPS"),
    "parameter default of the wrong type": (lambda d, s: params(d, "TestWindows").update(DefaultValue="one"), None,
                                            "{Parameters.TestWindows}/DefaultValue", "schema", "is not of type 'integer'"),
    # SageMaker API (botocore)
    "wrong type": (lambda d, s: s["FeatureEngineering"]["Arguments"]["ProcessingResources"]["ClusterConfig"].update(VolumeSizeInGB="30"),
                   "FeatureEngineering", "{FeatureEngineering}/Arguments/ProcessingResources/ClusterConfig/VolumeSizeInGB", "api", "expected an integer"),
    "unknown member": (lambda d, s: s["TrainDeepAR"]["Arguments"]["ResourceConfig"].update(InstanceTyp="ml.m5.xlarge"),
                       "TrainDeepAR", "{TrainDeepAR}/Arguments/ResourceConfig/InstanceTyp", "api", "did you mean InstanceType"),
    "missing required member": (lambda d, s: s["TrainDeepAR"]["Arguments"]["OutputDataConfig"].pop("S3OutputPath") and None, "TrainDeepAR",
                                "{TrainDeepAR}/Arguments/OutputDataConfig/S3OutputPath", "api", "required member"),
    "not an allowed value": (lambda d, s: s["TrainDeepAR"]["Arguments"]["InputDataConfig"][0].update(InputMode="Stream"),
                             "TrainDeepAR", "{TrainDeepAR}/Arguments/InputDataConfig/0/InputMode", "api", "is not one of"),
    "out of range": (lambda d, s: s["TrainDeepAR"]["Arguments"]["StoppingCondition"].update(MaxRuntimeInSeconds=0),
                     "TrainDeepAR", "{TrainDeepAR}/Arguments/StoppingCondition/MaxRuntimeInSeconds", "api", "below the minimum"),
    "pattern": (lambda d, s: s["CreateModel"]["Arguments"].update(ExecutionRoleArn="role/x-y-z-but-not-an-arn"), "CreateModel",
                "{CreateModel}/Arguments/ExecutionRoleArn", "api", "does not match the pattern"),
    "too long": (lambda d, s: s["TrainDeepAR"]["Arguments"]["HyperParameters"].update(x="y" * 3000), "TrainDeepAR",
                 "{TrainDeepAR}/Arguments/HyperParameters/x", "api", "longer than"),
    # semantics
    "duplicate step name": (lambda d, s: s["CreateModel"].update(Name="RegisterModel"), "RegisterModel",
                            "{CreateModel}/Name", "semantic", "used twice"),
    "Get of an unknown step": (lambda d, s: s["TrainDeepAR"]["Arguments"]["InputDataConfig"][0]["DataSource"]["S3DataSource"].update(
        S3Uri={"Get": "Steps.FeatureEngineerin.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"}), "TrainDeepAR",
        "{TrainDeepAR}/Arguments/InputDataConfig/0/DataSource/S3DataSource/S3Uri/Get", "semantic", "'FeatureEngineerin', which does not exist"),
    "DependsOn an unknown step": (lambda d, s: s["TrainDeepAR"].update(DependsOn=["Nowhere"]), "TrainDeepAR",
                                  "{TrainDeepAR}/DependsOn/0", "semantic", "'Nowhere', which does not exist"),
    "cycle": (lambda d, s: s["FeatureEngineering"].update(DependsOn=["CheckQuality"]), None, "", "semantic", "cycle"),
    "Get of an undeclared parameter": (lambda d, s: s["TrainDeepAR"]["Arguments"]["ResourceConfig"].update(
        InstanceType={"Get": "Parameters.TrainingInstanceTyp"}), "TrainDeepAR",
        "{TrainDeepAR}/Arguments/ResourceConfig/InstanceType/Get", "semantic", "not declared"),
    "Get of an unknown property": (lambda d, s: s["CheckQuality"]["Arguments"]["Conditions"][0].update(
        LeftValue={"Get": "Steps.TrainDeepAR.FinalMetricDataLst['test:mean_wQuantileLoss'].Value"}), "CheckQuality",
        "{CheckQuality}/Arguments/Conditions/0/LeftValue/Get", "semantic", "did you mean FinalMetricDataList"),
    "unknown execution variable": (lambda d, s: s["FeatureEngineering"]["Arguments"]["AppSpecification"]["ContainerArguments"].append(
        {"Get": "Execution.PipelineExecutionID"}), "FeatureEngineering",
        "{FeatureEngineering}/Arguments/AppSpecification/ContainerArguments/", "semantic", "unknown execution variable"),
    # DeepAR
    "DeepAR hyperparameter default": (lambda d, s: params(d, "Likelihood").update(DefaultValue="gauss"), "TrainDeepAR",
                                      "{TrainDeepAR}/Arguments/HyperParameters/likelihood (default of parameter Likelihood, {Parameters.Likelihood}/DefaultValue)",
                                      "deepar", "must be one of"),
    "DeepAR literal hyperparameter": (lambda d, s: s["TrainDeepAR"]["Arguments"]["HyperParameters"].update(epochs="0"), "TrainDeepAR",
                                      "{TrainDeepAR}/Arguments/HyperParameters/epochs", "deepar", "positive integer"),
}


@pytest.mark.parametrize("rule", RULES)
def test_every_validator_rule_has_a_failing_example(rule):
    change, step, pointer, check, words = RULES[rule]
    pointer = pointer_of(pointer, training())  # by name: a step or parameter added before it moves nothing here
    errors = broken(change)
    matching = [e for e in errors if e.check == check and words in e.message and e.pointer.startswith(pointer)]
    assert matching, f"{rule}: expected a {check} error at {pointer} mentioning {words!r}; got {[str(e) for e in errors]}"
    if step is not None:
        assert matching[0].step == step and str(matching[0]).startswith(f"step {step} at {pointer}")


def test_the_rules_examples_really_break_only_what_they_say():
    assert validate_definition(training()) == []


def test_validate_reports_invalid_json_with_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"Steps": [\n  {"Name": "A",}\n]}')
    result = subprocess.run([*MLOPS, "validate", bad], capture_output=True, text=True)
    assert result.returncode == 1 and "line 2" in result.stderr


def test_each_overlay_entry_cites_a_real_api_shape_or_sdk_source():
    import sagemaker
    model = service_model()
    for entry in SCHEMA_OVERLAY:
        if entry.cites.startswith("sdk:"):  # the SDK file that writes the field, in the installed packages
            assert (Path(sagemaker.__path__[0]) / entry.cites[len("sdk:"):]).exists(), entry.cites
            continue
        shape, _, member = entry.cites.partition(".")
        assert shape in model.shape_names, entry.cites
        assert not member or member in model.shape_for(shape).members, entry.cites


def test_the_published_schema_alone_rejects_what_the_sdk_emits(monkeypatch):
    "Why there is an overlay: without it, our SDK-built templates fail the published schema."
    import mlops.definition.validate as render_module
    render_module.definition_schema.cache_clear()
    monkeypatch.setattr(render_module, "SCHEMA_OVERLAY", [])
    try:
        assert [e for e in render_module.schema_errors(training()) if e.check == "schema"]
    finally:
        render_module.definition_schema.cache_clear()


# --- render --check and dag ---------------------------------------------------------------------------------

def test_check_passes_on_the_committed_templates_in_under_a_second_path(tmp_path):
    result = subprocess.run([*MLOPS, "render", "--check", "--out", TEMPLATES],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_detects_a_changed_default_in_the_templates(tmp_path):
    out = tmp_path / "templates"
    out.mkdir()
    for name in ARTIFACTS:
        (out / name).write_text((TEMPLATES / name).read_text())
    name = TEMPLATE_FILES["DeepARTraining"]
    (out / name).write_text((out / name).read_text().replace('"DefaultValue": "100"', '"DefaultValue": "99"', 1))
    result, attempts = guarded_mlops_render(tmp_path, "render", "--check", "--out", out)
    assert result.returncode == 1 and attempts == []
    assert f"-      \"DefaultValue\": \"99\"" in result.stdout and "+      \"DefaultValue\": \"100\"" in result.stdout
    assert "out of date" in result.stdout


def test_check_detects_a_changed_default_in_the_code(tmp_path):
    script = ("import sys, mlops.config as c; c.DEEPAR_HYPERPARAMETERS['epochs'] = '7'; from mlops.render import render; "
              f"sys.exit(render({str(TEMPLATES)!r}, check=True, use_fingerprint=False))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=bare_environment(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert '+      "DefaultValue": "7",' in result.stdout


def test_dag_draws_both_pipelines_from_the_templates():
    result = subprocess.run([*MLOPS, "dag", "--templates", TEMPLATES], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DeepARTraining\n└── FeatureEngineering (Processing)\n"), result.stdout
    assert "└── if false: QualityTooLow (Fail)" in result.stdout and "DeepARBatchInference\n└── ResolveModel" in result.stdout
    mermaid = subprocess.run([*MLOPS, "dag", "--format", "mermaid", "--templates", TEMPLATES], capture_output=True, text=True)
    assert "CheckQuality -->|false| QualityTooLow" in mermaid.stdout and "BatchTransform --> ForecastReport" in mermaid.stdout
    ones = {name: subprocess.run([*MLOPS, "dag", "--pipeline", name, "--format", "mermaid", "--templates", TEMPLATES],
                                 capture_output=True, text=True).stdout
            for name in ("inference", "DeepARBatchInference", "deepar-inference")}
    assert len(set(ones.values())) == 1, ones
    assert "title: DeepARBatchInference" in ones["inference"] and "DeepARTraining" not in ones["inference"]
    unknown = subprocess.run([*MLOPS, "dag", "--pipeline", "nope", "--templates", TEMPLATES], capture_output=True, text=True)
    assert unknown.returncode == 2
    assert "no pipeline 'nope'; choose training (DeepARTraining) or inference (DeepARBatchInference)" in unknown.stderr


def test_dag_writes_a_valid_svg_and_png(tmp_path):
    import xml.etree.ElementTree as ET
    from mlops.definition.graph import all_steps
    svg = tmp_path / "training.svg"
    result = subprocess.run([*MLOPS, "dag", "--pipeline", "training", "--format", "svg", "-o", svg, "--templates", TEMPLATES],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    root = ET.parse(svg).getroot()  # well-formed XML, an SVG document
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and float(root.get("width").removesuffix("pt")) > 100
    texts = {"".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")}
    steps = {s["Name"] for s in all_steps(json.loads((TEMPLATES / TEMPLATE_FILES["DeepARTraining"]).read_text()))}
    assert steps <= texts and {"true", "false"} <= texts, texts
    piped = subprocess.run([*MLOPS, "dag", "--pipeline", "inference", "--format", "svg", "--templates", TEMPLATES],
                           capture_output=True, text=True)
    assert ET.fromstring(piped.stdout.encode()).tag == "{http://www.w3.org/2000/svg}svg"
    png = tmp_path / "inference.png"
    assert subprocess.run([*MLOPS, "dag", "--pipeline", "inference", "--format", "png", "-o", png, "--templates", TEMPLATES]).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_non_string_parameter_in_container_arguments_is_refused_as_createpipeline_does():
    "sagemaker-python-sdk #4867: an Integer parameter as a container argument must be passed as text (Std:Join)."
    definition = json.loads((TEMPLATES / TEMPLATE_FILES["DeepARTraining"]).read_text())
    step = next(s for s in definition["Steps"] if s["Name"] == "FeatureEngineering")
    arguments = step["Arguments"]["AppSpecification"]["ContainerArguments"]
    as_text = {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.TestWindows"}]}}
    assert as_text in arguments  # what the pipeline code renders
    index = arguments.index(as_text)
    arguments[index] = {"Get": "Parameters.TestWindows"}  # what it rendered before: refused by CreatePipeline
    (error,) = [e for e in validate_definition(definition) if "#4867" in e.message]
    assert error.step == "FeatureEngineering" and error.pointer.endswith(f"/AppSpecification/ContainerArguments/{index}")
    assert "an Integer parameter" in error.message


def test_the_deepar_image_example_is_the_one_aws_publishes_for_its_region():
    from sagemaker.core import image_uris
    assert TEMPLATE_KEYS["DeepARImageUri"].example == image_uris.retrieve("forecasting-deepar", "eu-west-1")
    assert json.loads((TEMPLATES / KEYS_FILE).read_text())["DeepARImageUri"]["example"] == TEMPLATE_KEYS["DeepARImageUri"].example


def test_check_fails_where_mlops_run_refuses_a_fingerprint_of_other_code(tmp_path):
    "The rendered files are the same, the fingerprint's inputs are not today's: `render --check` fails, as `mlops run` refuses."
    from mlops.errors import MlopsError
    from mlops.runner import local_definition
    out = tmp_path / "templates"
    out.mkdir()
    for name in ARTIFACTS:
        (out / name).write_text((TEMPLATES / name).read_text())
    fingerprint = json.loads((out / FINGERPRINT_FILE).read_text())
    (out / FINGERPRINT_FILE).write_text(json.dumps({**fingerprint, "inputs": "0" * 64}))
    with pytest.raises(MlopsError, match="out of date with the pipeline code"):
        local_definition("training", out)
    result, attempts = guarded_mlops_render(tmp_path, "render", "--check", "--out", out)
    assert result.returncode == 1 and attempts == [] and f"out of date ({FINGERPRINT_FILE})" in result.stdout
