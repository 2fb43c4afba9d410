"""Definitions written to reach outside the local store: every S3 URI stays in the store, every LocalPath in its job's
folder, every name meets AWS's pattern before a library sees it, and a file that is not UTF-8 JSON (or is nested too
deep) is one clear error. The engine cases run `run_definition` on toy steps; the command-line cases run the real
`mlops` command, all at once (a module fixture), so the file takes a few seconds."""
import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import MLOPS
from mlops.engine.executors import Executor, StepIO, executors
from mlops.engine.executors.processing import MLOPS_ENTRYPOINT
from mlops.engine.run import run_definition
from mlops.engine.store import LocalStore

REPO = Path(__file__).resolve().parents[1]
# AWS: "LocalPath is an absolute path to the input data and must begin with /opt/ml/processing/"
# (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProcessingS3Input.html); "For both ProcessingInput and
# ProcessingOutput, the path in the processing container must begin with /opt/ml/processing/"
# (https://docs.aws.amazon.com/sagemaker/latest/dg/byoc-input-and-output.html)
LOCAL_PATH_RULE = "is not under /opt/ml/processing/"


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


class Write(Executor):
    "A toy step: writes `Text` to a file and uploads its folder (a symbolic link to a file outside beside it) to `OutputUri`."
    step_type, runs = "HostileWrite", "writes a file to its output (a toy step type of this test)"

    def run(self, step):
        folder = step.folder / "out"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "note.txt").write_text(step.arguments["Text"])
        if link := step.arguments.get("LinkTo"): (folder / "link").symlink_to(link)
        step.execution.store.upload(folder, step.arguments["OutputUri"])
        return dict(step.arguments)

    def describe(self, properties):
        return StepIO(outputs={"out": properties["OutputUri"]})


class Read(Executor):
    "A toy step: downloads `InputUri` into its folder and reports what it read."
    step_type, runs = "HostileRead", "reads its input (a toy step type of this test)"

    def run(self, step):
        step.execution.store.download(step.arguments["InputUri"], step.folder / "in")
        return {**step.arguments, "Read": sorted(p.name for p in (step.folder / "in").rglob("*"))}

    def describe(self, properties):
        return StepIO(inputs={"in": properties["InputUri"]})


@pytest.fixture
def toy_steps():
    registered = [executors.register(Write()), executors.register(Read())]
    yield
    for executor in registered: executors.unregister(executor)


def test_an_output_uri_with_dot_dot_is_written_inside_the_store_and_read_back(tmp_path, toy_steps):
    home, outside, secret = tmp_path / "home", tmp_path / "outside", tmp_path / "secret.txt"
    outside.mkdir(); secret.write_text("not for the store")
    escape = f"/tmp/mlops-escape-{uuid.uuid4().hex[:8]}"
    uris = ["s3://mlops-local/../../x", "s3://mlops-local/" + "../" * 40 + escape.lstrip("/"), "s3://../../" + "x",
            "s3://mlops-local//" + str(outside).lstrip("/"), "s3://mlops-local/./a\\..\\..\\b", "s3://mlops-local/nul\x00byte"]
    steps = [{"Name": f"W{i}", "Type": "HostileWrite", "Arguments": {"Text": uri, "OutputUri": uri, "LinkTo": str(secret)}}
             for i, uri in enumerate(uris)]
    steps += [{"Name": f"R{i}", "Type": "HostileRead", "DependsOn": [f"W{i}"], "Arguments": {"InputUri": uri}} for i, uri in enumerate(uris)]
    def outside_home(): return {p for p in files_under(tmp_path) if p != home and home not in p.parents}
    before = outside_home()
    execution = run_definition({"Version": "2020-12-01", "Steps": steps}, pipeline="Hostile", home=home)
    assert execution.status == "Succeeded", execution.failure_reason
    assert outside_home() == before  # nothing new outside the home, nothing in `outside`
    assert not Path(escape).exists() and not (tmp_path / "x").exists() and not (home / "x").exists()
    store = LocalStore(home / "store")
    for i, uri in enumerate(uris):  # in S3 `..` is part of the key: each URI is its own object, read back as written
        assert store.root in store.path(uri).parents
        assert (store.path(uri) / "note.txt").read_text() == uri
        assert execution.step(f"R{i}").properties["Read"] == ["note.txt"]  # the link to the secret was not uploaded
    assert not [p for p in (home / "store").rglob("*") if p.is_file() and p.read_text(errors="replace") == "not for the store"]


def processing_definition(inputs, outputs=(), parameters=()):
    "A processing step of the mlops image with `inputs` [(S3Uri, LocalPath)] and `outputs` [(S3Uri, LocalPath)]."
    return {"Version": "2020-12-01", "Parameters": list(parameters), "Steps": [{"Name": "Prep", "Type": "Processing", "Arguments": {
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlops-processing:local",
                             "ContainerEntrypoint": MLOPS_ENTRYPOINT, "ContainerArguments": ["/opt/ml/processing/input/code/step.ipynb"]},
        "RoleArn": "arn:aws:iam::123456789012:role/mlops",
        "ProcessingInputs": [{"InputName": f"in{i}", "S3Input": {"S3Uri": uri, "LocalPath": path, "S3DataType": "S3Prefix", "S3InputMode": "File"}}
                             for i, (uri, path) in enumerate(inputs)],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": f"out{i}", "S3Output": {"S3Uri": uri, "LocalPath": path, "S3UploadMode": "EndOfJob"}}
                                               for i, (uri, path) in enumerate(outputs)]}}}]}


@pytest.mark.parametrize("uri", ["s3://mlops-local/" + "../" * 30 + "etc/passwd", "s3://mlops-local//etc/passwd",
                                 {"Get": "Parameters.Data"}])
def test_an_input_uri_never_reads_a_file_outside_the_store(tmp_path, uri):
    home = tmp_path / "home"
    definition = processing_definition([(uri, "/opt/ml/processing/input/data")],
                                       parameters=[{"Name": "Data", "Type": "String", "DefaultValue": "/etc/passwd"}])
    execution = run_definition(definition, pipeline="Hostile", home=home)
    assert execution.status == "Failed"
    reason = execution.step("Prep").failure_reason
    assert ("no data at s3://mlops-local/" in reason) if isinstance(uri, str) else ("'/etc/passwd' is not an s3:// URI" in reason), reason
    assert not [p for p in home.rglob("*") if p.name == "passwd"]  # nothing copied into the run folder (or anywhere in the home)


@pytest.mark.parametrize("local_path", ["/tmp/mlops-escape-{}", "/opt/ml/processing/../../../tmp/mlops-escape-{}", "/opt/ml/processingX"])
def test_a_local_path_outside_the_container_root_fails_the_step_before_anything_is_copied(tmp_path, local_path):
    home, local_path = tmp_path / "home", local_path.format(uuid.uuid4().hex[:8])
    store = LocalStore(home / "store")
    (tmp_path / "data.csv").write_text("x\n1\n"); store.upload(tmp_path / "data.csv", "s3://mlops-local/data/data.csv")
    for definition in (processing_definition([("s3://mlops-local/data/", local_path)]),
                       processing_definition([], [("s3://mlops-local/out/", local_path)])):
        execution = run_definition(definition, pipeline="Hostile", home=home, use_cache=False)
        assert execution.status == "Failed" and "Fix:" in execution.step("Prep").failure_reason, execution.step("Prep").failure_reason
        assert "/opt/ml/processing/" in execution.step("Prep").failure_reason
        assert not Path(local_path).exists() and not Path("/tmp", Path(local_path).name).exists()
        assert not (execution.folder / "Prep" / "log.txt").exists() or "Traceback" not in (execution.folder / "Prep" / "log.txt").read_text()


def test_name_patterns_are_botocores():
    "The name patterns the rules carry (so that a run loads no service model) are botocore's, field by field."
    import botocore.session
    from mlops.definition.rules import NAME_FIELDS
    model = botocore.session.get_session().get_service_model("sagemaker")
    where = {"ModelPackageGroupName": ("CreateModelPackage", "ModelPackageGroupName"), "ModelPackageName": ("DescribeModelPackage", "ModelPackageName"),
             "ModelName": ("CreateTransformJob", "ModelName"), "ExperimentName": None, "TrialName": None}
    for field, (shape_name, low, high, pattern) in NAME_FIELDS.items():
        shape = model.shape_for("PipelineExperimentConfig").members[field] if where[field] is None else \
            model.operation_model(where[field][0]).input_shape.members[where[field][1]]
        assert (shape.name, shape.metadata.get("min", 0), shape.metadata["max"], shape.metadata["pattern"]) == (shape_name, low, high, pattern), field
    group = model.operation_model("ListModelPackages").input_shape.members["ModelPackageGroupName"]
    assert group.name == NAME_FIELDS["ModelPackageGroupName"][0]  # what ResolveModel calls with the inference pipeline's group


# --- the `mlops` command: every case at once ---------------------------------------------------------------------------

def mlops(args, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MLOPS, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "COLUMNS": "1000", "MLOPS_HOME": str(home), "MLOPS_FORKSERVER": "0"})  # wide: one table row a line


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    "name -> the finished `mlops` command of each case (its own MLOPS_HOME under `root`), all run at the same time."
    root = tmp_path_factory.mktemp("hostile")
    escape = f"/tmp/mlops-escape-{uuid.uuid4().hex[:8]}"
    group = [{"Name": "ModelPackageGroupName", "Type": "String", "DefaultValue": "deepar-forecast"}]
    files = {"outside.json": processing_definition([("s3://mlops-local/data/", escape)], [("s3://mlops-local/out/", "/opt/ml/processing/../../x")]),
             "group.json": processing_definition([("s3://mlops-local/data/", "/opt/ml/processing/input/data")], parameters=group),
             "bad-default.json": processing_definition([("s3://mlops-local/data/", "/opt/ml/processing/input/data")],
                                                       parameters=[{**group[0], "DefaultValue": "o'brien"}])}
    for name, definition in files.items(): (root / name).write_text(json.dumps(definition))
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # valid JSON, nested 1e5 deep
    (root / "latin1.json").write_bytes('{"Version": "2020-12-01", "Parameters": [{"Name": "Caf\xe9", "Type": "String"}], "Steps": []}'.encode("latin-1"))
    cases = {"validate outside": ["validate", root / "outside.json"], "run outside": ["run", "--definition", root / "outside.json"],
             "run group": ["run", "--definition", root / "group.json", "-p", "ModelPackageGroupName=o'brien"],
             "validate bad default": ["validate", root / "bad-default.json"],
             "run inference group": ["run", "--pipeline", "inference", "-p", "ModelPackageGroupName=o'brien"],
             "validate deep": ["validate", root / "deep.json"], "run deep": ["run", "--definition", root / "deep.json"],
             "validate latin1": ["validate", root / "latin1.json"], "run latin1": ["run", "--definition", root / "latin1.json"]}
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(mlops, args, REPO, root / name.replace(" ", "-")) for name, args in cases.items()}
        results = {name: future.result() for name, future in futures.items()}
    results["escape"], results["root"] = escape, root
    return results


def one_clear_error(result) -> str:
    "The error of a refused command: no traceback, no exception of a library, and one `error:` line."
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "Exception" not in text and "RecursionError" not in text and "UnicodeDecodeError" not in text, text
    assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1, text
    return text


def test_validate_refuses_a_local_path_outside_the_container_root(cli):
    result = cli["validate outside"]
    rows = [line for line in (result.stdout + result.stderr).splitlines() if "LocalPath" in line]
    assert result.returncode == 1 and len(rows) == 2, result.stdout + result.stderr
    assert "Prep" in rows[0] and "/Steps/0/Arguments/ProcessingInputs/0/S3Input/LocalPath" in rows[0] and LOCAL_PATH_RULE in rows[0]
    assert "/Steps/0/Arguments/ProcessingOutputConfig/Outputs/0/S3Output/LocalPath" in rows[1] and "'..' segment" in rows[1]
    assert all("service" in row for row in rows)


def test_run_refuses_a_local_path_outside_the_container_root_before_any_step(cli):
    result = cli["run outside"]
    text = one_clear_error(result)
    assert result.returncode == 2 and LOCAL_PATH_RULE in text, text
    assert not (cli["root"] / "run-outside" / "runs").exists() and not Path(cli["escape"]).exists()


@pytest.mark.parametrize("case", ["run group", "run inference group"])
def test_a_model_package_group_name_aws_refuses_is_refused_before_mlflow_sees_it(cli, case):
    "botocore ArnOrName (CreateModelPackage and ListModelPackages' ModelPackageGroupName): [a-zA-Z0-9]([a-zA-Z0-9-]){0,62}, or an ARN."
    result = cli[case]
    text = one_clear_error(result)
    assert result.returncode == 2 and "parameter ModelPackageGroupName = \"o'brien\": not a valid ModelPackageGroupName" in text, text
    assert "ArnOrName" in text and "mlflow" not in text.lower()
    assert not (cli["root"] / case.replace(" ", "-") / "runs").exists()


def test_validate_refuses_a_default_name_aws_refuses(cli):
    result = cli["validate bad default"]
    rows = [line for line in (result.stdout + result.stderr).splitlines() if "/Parameters/0/DefaultValue" in line]
    assert result.returncode == 1 and len(rows) == 1, result.stdout + result.stderr
    assert "the default of parameter ModelPackageGroupName = \"o'brien\": not a valid ModelPackageGroupName" in rows[0]


@pytest.mark.parametrize("case", ["validate deep", "run deep", "validate latin1", "run latin1"])
def test_a_file_nested_too_deep_or_not_utf8_is_one_clear_error(cli, case):
    "JSON nested 1e5 deep, and a Latin-1 file: one clear error each, no RecursionError or UnicodeDecodeError traceback."
    result = cli[case]
    if case.startswith("validate"):  # validate lists problems as a table: exactly one, naming the file
        text = " ".join((result.stdout + result.stderr).split())
        assert "Traceback" not in text and "1 problem(s)" in text, text
    else:
        text = one_clear_error(result)
    assert result.returncode != 0 and ("deep.json" in text or "latin1.json" in text), text
    assert ("nested deeper than" if "deep" in case else "not UTF-8") in text, text
