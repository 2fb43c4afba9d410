"""Processing in SageMaker's framework images (mlops.engine.executors.framework): SDK-built ScriptProcessor and
FrameworkProcessor steps run with `mlops run --definition`, their scripts reading and writing /opt/ml/processing/...

Each definition is built offline by the SDK (mlops.offline), its code uploads (the script, sourcedir.tar.gz, runproc.sh,
install_requirements.py) taken from moto's S3 into the local store, where `mlops run` finds them as SageMaker finds
them in S3. The image is scikit-learn 1.9-0 (aws/sagemaker-scikit-learn-container pins scikit-learn 1.9.0): this
Python's scikit-learn 1.9 runs it, so no environment is built; the test marked slow_first_run builds one for 1.2-1.
"""
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from mlops.offline import uploads_to_store

REGION, BUCKET, ROLE = "us-east-1", "framework-bucket", "arn:aws:iam::123456789012:role/service-role/SageMakerRole"

# A preprocessing script as AWS's abalone example writes one: paths hard-coded under /opt/ml/processing, the job's
# config read where the processing container contract puts it (/opt/ml/config).
SPLIT = """\
import argparse, json, os
import pandas as pd
import sklearn
parser = argparse.ArgumentParser()
parser.add_argument("--train-fraction", type=float, default=0.6)
args = parser.parse_args()
frame = pd.read_csv("/opt/ml/processing/input/data.csv")
frame["ratio"] = frame["weight"] / frame["length"]
train_end = int(len(frame) * args.train_fraction)
validation_end = train_end + (len(frame) - train_end) // 2
for name, part in [("train", frame[:train_end]), ("validation", frame[train_end:validation_end]), ("test", frame[validation_end:])]:
    os.makedirs(f"/opt/ml/processing/{name}", exist_ok=True)
    part.to_csv(f"/opt/ml/processing/{name}/{name}.csv", index=False)
job = json.load(open("/opt/ml/config/processingjobconfig.json"))
hosts = json.load(open("/opt/ml/config/resourceconfig.json"))["hosts"]
report = {"rows": len(frame), "sklearn": sklearn.__version__, "job": job["ProcessingJobName"], "hosts": hosts,
          "image": job["AppSpecification"]["ImageUri"]}
json.dump(report, open("/opt/ml/processing/evaluation/evaluation.json", "w"))
"""


def expected_split(frame: pd.DataFrame, fraction: float) -> dict[str, pd.DataFrame]:
    "What SPLIT writes, computed here from the same data."
    frame = frame.assign(ratio=frame["weight"] / frame["length"])
    train_end = int(len(frame) * fraction)
    validation_end = train_end + (len(frame) - train_end) // 2
    return {"train": frame[:train_end], "validation": frame[train_end:validation_end], "test": frame[validation_end:]}


def _io(outputs=("train", "validation", "test", "evaluation")):
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    inputs = [ProcessingInput(input_name="data", s3_input=ProcessingS3Input(
        s3_uri=f"s3://{BUCKET}/abalone/input/data.csv", local_path="/opt/ml/processing/input", s3_data_type="S3Prefix",
        s3_input_mode="File"))]
    return inputs, [ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
        s3_uri=f"s3://{BUCKET}/abalone/{name}", local_path=f"/opt/ml/processing/{name}", s3_upload_mode="EndOfJob"))
        for name in outputs]


def script_processor(session, folder: Path, image: str):
    "ScriptProcessor with `image` running SPLIT (as tests/corpus/sdk_pipelines.py build_processing_sklearn does)."
    from sagemaker.core.processing import ScriptProcessor
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep
    (folder / "split.py").write_text(SPLIT)
    fraction = ParameterString(name="TrainFraction", default_value="0.6")
    processor = ScriptProcessor(image_uri=image, command=["python3"], instance_type="ml.m5.xlarge", instance_count=1,
                                sagemaker_session=session, role=ROLE, base_job_name="split")
    inputs, outputs = _io()
    step = ProcessingStep(name="Split", step_args=processor.run(
        inputs=inputs, outputs=outputs, code=str(folder / "split.py"), arguments=["--train-fraction", fraction]))
    return Pipeline(name="framework-script", parameters=[fraction], steps=[step], sagemaker_session=session)


def framework_processor(session, folder: Path, image: str):
    "FrameworkProcessor with code= in a source_dir holding a helper module and a requirements.txt (build_processing_framework_source_dir)."
    from sagemaker.core.processing import FrameworkProcessor
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep
    source = folder / "source"
    source.mkdir()
    (source / "splitting.py").write_text(SPLIT)
    (source / "preprocessing.py").write_text("import splitting  # a module of the source_dir: runproc.sh unpacked it here\n")
    (source / "requirements.txt").write_text("pandas\n")  # this Python has it: pip finds it installed
    processor = FrameworkProcessor(image_uri=image, role=ROLE, instance_type="ml.m5.xlarge", instance_count=1,
                                   sagemaker_session=session, base_job_name="split-framework")
    inputs, outputs = _io()
    step = ProcessingStep(name="SplitFramework", step_args=processor.run(
        code="preprocessing.py", source_dir=str(source), inputs=inputs, outputs=outputs))
    return Pipeline(name="framework-source-dir", steps=[step], sagemaker_session=session)


def build(builder, image: str, folder: Path, store: Path) -> dict:
    "The definition `builder` makes with the SDK offline; what the SDK uploaded to (moto's) S3 copied into the local store."
    import logging, warnings
    import boto3
    from mlops.offline import offline_aws, pipeline_session
    logging.disable(logging.WARNING)
    try:
        with offline_aws(REGION), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s3 = boto3.client("s3", region_name=REGION)
            s3.create_bucket(Bucket=BUCKET)
            definition = json.loads(builder(pipeline_session({"ArtifactBucket": BUCKET}), folder, image).definition())
            uploads_to_store(store, BUCKET, REGION)
    finally:
        logging.disable(logging.NOTSET)
    return definition


def sklearn_image(version: str) -> str:
    from mlops.offline import offline_aws
    with offline_aws(REGION):
        from sagemaker.core import image_uris
        return image_uris.retrieve("sklearn", region=REGION, version=version, py_version="py3", instance_type="ml.m5.xlarge")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    "A local store holding the input data; the data."
    home = tmp_path / ".mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("MLOPS_FORKSERVER", "0")
    monkeypatch.setenv("COLUMNS", "400")
    frame = pd.DataFrame({"length": [0.4 + i / 100 for i in range(23)], "weight": [(i * 7) % 11 + 0.5 for i in range(23)]})
    data = home / "store" / BUCKET / "abalone" / "input" / "data.csv"
    data.parent.mkdir(parents=True)
    frame.to_csv(data, index=False)
    return home, frame


def run(definition: dict, folder: Path, *args):
    from mlops.cli import main
    path = folder / "definition.json"
    path.write_text(json.dumps(definition))
    return CliRunner().invoke(main, ["run", "--definition", str(path), *args], catch_exceptions=False)


def assert_split(home: Path, frame: pd.DataFrame, fraction: float, image: str) -> dict:
    "The outputs in the local store are what SPLIT computes from `frame`; the evaluation report it wrote."
    for name, part in expected_split(frame, fraction).items():
        written = pd.read_csv(home / "store" / BUCKET / "abalone" / name / f"{name}.csv")
        pd.testing.assert_frame_equal(written, part.reset_index(drop=True))
    report = json.loads((home / "store" / BUCKET / "abalone" / "evaluation" / "evaluation.json").read_text())
    assert report["rows"] == len(frame) and report["hosts"] == ["algo-1"] and report["image"] == image, report
    return report


def test_script_processor_in_the_sklearn_image(workspace, tmp_path):
    home, frame = workspace
    image = sklearn_image("1.9-0")
    definition = build(script_processor, image, tmp_path, home / "store")
    result = run(definition, tmp_path, "-pTrainFraction=0.5")
    assert result.exit_code == 0, result.output
    assert "Succeeded" in result.output, result.output
    import sklearn
    report = assert_split(home, frame, 0.5, image)
    assert report["sklearn"] == sklearn.__version__ and report["job"].endswith("-Split"), report


def test_framework_processor_with_source_dir(workspace, tmp_path):
    home, frame = workspace
    image = sklearn_image("1.9-0")
    definition = build(framework_processor, image, tmp_path, home / "store")
    entry = definition["Steps"][0]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert entry == ["/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"], entry  # the SDK's runproc.sh
    result = run(definition, tmp_path)
    assert result.exit_code == 0, result.output
    assert_split(home, frame, 0.6, image)
    log = next((home / "runs").glob("*/SplitFramework/log.txt")).read_text()
    assert "Requirement already satisfied: pandas" in log, log  # runproc.sh installed requirements.txt, with the job's pip


def test_an_image_the_registry_does_not_know_is_refused_before_anything_runs(workspace, tmp_path):
    home, _ = workspace
    image = "111122223333.dkr.ecr.us-east-1.amazonaws.com/my-team/preprocess:latest"
    definition = build(script_processor, image, tmp_path, home / "store")
    result = run(definition, tmp_path)
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert "step 'Split' (Processing, image " in output and f"cannot run locally: its image '{image}' is not one" in output, output
    assert "image_uris" in output and "ContainerEntrypoint ['python', '-m', 'mlops.processing']" in output, output  # what would make it run
    assert not (home / "runs").exists() or not any((home / "runs").iterdir()), "something ran"
    assert not (home / "store" / BUCKET / "abalone" / "train").exists()


def test_without_building_an_environment_the_step_names_what_to_install(workspace, tmp_path, monkeypatch):
    home, _ = workspace
    monkeypatch.setenv("MLOPS_FRAMEWORK_ENVS", "off")
    monkeypatch.setenv("MLOPS_ENV_CACHE", str(tmp_path / "envs"))
    definition = build(script_processor, sklearn_image("1.2-1"), tmp_path, home / "store")
    result = run(definition, tmp_path)
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "'scikit-learn==1.2.1'" in output and "MLOPS_FRAMEWORK_ENVS" in output, output
    assert not (tmp_path / "envs").exists()
    assert not (home / "store" / BUCKET / "abalone" / "train").exists()


def test_the_local_setting_runs_it_with_this_python_and_says_so(workspace, tmp_path, monkeypatch):
    home, frame = workspace
    monkeypatch.setenv("MLOPS_FRAMEWORK_ENVS", "local")
    monkeypatch.setenv("MLOPS_ENV_CACHE", str(tmp_path / "envs"))
    image = sklearn_image("1.2-1")
    definition = build(script_processor, image, tmp_path, home / "store")
    result = run(definition, tmp_path)
    assert result.exit_code == 0, result.output
    assert_split(home, frame, 0.6, image)
    log = next((home / "runs").glob("*/Split/log.txt")).read_text()
    assert "warning:" in log and "scikit-learn 1.2" in log and "MLOPS_FRAMEWORK_ENVS=local" in log, log


@pytest.mark.slow_first_run
def test_an_environment_is_built_for_the_image_version(workspace, tmp_path):
    "scikit-learn 1.2-1: an environment from the package index (minutes the first time, under ~/.cache/mlops/envs), then reused."
    home, frame = workspace
    image = sklearn_image("1.2-1")
    definition = build(script_processor, image, tmp_path, home / "store")
    result = run(definition, tmp_path)
    assert result.exit_code == 0, result.output
    report = assert_split(home, frame, 0.6, image)
    assert report["sklearn"] == "1.2.1", report


FROM_ARGUMENTS = """\
import argparse, os, shutil
parser = argparse.ArgumentParser()
parser.add_argument("--input"); parser.add_argument("--output")
args = parser.parse_args()
shutil.copy(os.path.join(args.input, "data.csv"), os.path.join(args.output, "copy.csv"))
"""


def test_without_a_private_mount_namespace_paths_in_arguments_are_rewritten(workspace, tmp_path, monkeypatch):
    "The fallback where unshare is not allowed: /opt/ml/processing/... in ContainerArguments is the step's folder."
    home, frame = workspace
    monkeypatch.setenv("MLOPS_PRIVATE_MOUNTS", "0")
    definition = build(script_processor, sklearn_image("1.9-0"), tmp_path, home / "store")
    arguments = definition["Steps"][0]["Arguments"]
    code = next(i["S3Input"]["S3Uri"] for i in arguments["ProcessingInputs"] if i["InputName"] == "code")
    (home / "store" / code[len("s3://"):]).write_text(FROM_ARGUMENTS)
    arguments["AppSpecification"]["ContainerArguments"] = ["--input", "/opt/ml/processing/input", "--output",
                                                           "/opt/ml/processing/train"]
    result = run(definition, tmp_path)
    assert result.exit_code == 0, result.output
    copied = pd.read_csv(home / "store" / BUCKET / "abalone" / "train" / "copy.csv")
    pd.testing.assert_frame_equal(copied, frame)
    log = next((home / "runs").glob("*/Split/log.txt")).read_text()
    assert "no private mount namespace (MLOPS_PRIVATE_MOUNTS=0)" in log, log
