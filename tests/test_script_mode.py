"""Script-mode Training (mlops.engine.executors.script_mode): an SDK-built ModelTrainer step in the scikit-learn image runs
a real train.py to Succeeded with `mlops run --definition`, and the same script in the form AWS's sagemaker-training
toolkit runs (sagemaker_program, sagemaker_submit_directory) does too.

The definition is built offline by the SDK (mlops.offline); what it uploaded to moto's S3 while building (the code and the
SDK's sm_drivers) is copied into the local store (corpus.sdk_pipelines.build_with_uploads). The image is scikit-learn 1.9-0
(aws/sagemaker-scikit-learn-container pins scikit-learn 1.9.0): this Python's scikit-learn 1.9 runs it, no environment is built.
"""
import io
import json
import pickle
import tarfile

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import build_with_uploads

REGION, BUCKET, ROLE = "us-east-1", "script-bucket", "arn:aws:iam::123456789012:role/service-role/SageMakerRole"
TRAIN_URI = f"s3://{BUCKET}/script/train"
HYPERPARAMETERS = {"alpha": 0.5, "tag": "first"}
METRIC = {"Name": "train:mse", "Regex": "train_mse=([0-9\\.]+)"}

# A training script as AWS's scikit-learn examples write one: hyperparameters as arguments, data and model folders from
# the SM_* variables the container sets (sagemaker-training's environment.py, the SDK's container_drivers/scripts/environment.py).
TRAIN = """\
import argparse, json, os, pickle, sys
import pandas as pd
from sklearn.linear_model import Ridge
parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, required=True)
parser.add_argument("--tag", required=True)
args = parser.parse_args()
frame = pd.read_csv(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "train.csv"))
model = Ridge(alpha=args.alpha).fit(frame[["x1", "x2"]], frame["y"])
print(f"train_mse={((model.predict(frame[['x1', 'x2']]) - frame['y']) ** 2).mean():.6f}")
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.pkl"), "wb") as f: pickle.dump(model, f)
seen = {"argv": sys.argv[1:], "alpha": os.environ.get("SM_HP_ALPHA"), "tag": os.environ.get("SM_HP_TAG")}
json.dump(seen, open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "seen.json"), "w"))
"""


def model_trainer_pipeline(session, folder):
    "A ModelTrainer in script mode with the sklearn image (as tests/corpus/sdk_pipelines.py build_training_script_mode)."
    from sagemaker.core import image_uris
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, InputData, SourceCode
    source = folder / "source"
    source.mkdir()
    (source / "train.py").write_text(TRAIN)
    image = image_uris.retrieve("sklearn", region=REGION, version="1.9-0", py_version="py3", instance_type="ml.m5.xlarge",
                                image_scope="training")
    trainer = ModelTrainer(training_image=image, source_code=SourceCode(source_dir=str(source), entry_script="train.py"),
                           compute=Compute(instance_type="ml.m5.xlarge", instance_count=1), hyperparameters=HYPERPARAMETERS,
                           sagemaker_session=session, role=ROLE, base_job_name="ridge")
    trainer = trainer.with_metric_definitions([MetricDefinition(name=METRIC["Name"], regex=METRIC["Regex"])])
    step = TrainingStep(name="TrainRidge", step_args=trainer.train(input_data_config=[
        InputData(channel_name="train", data_source=TRAIN_URI)]))
    return Pipeline(name="script-mode", steps=[step], sagemaker_session=session)


def toolkit_form(definition: dict, store) -> dict:
    """The same step as SDK 2.x's framework estimators write it, for the toolkit: the code as sourcedir.tar.gz (the files at
    its top, as sagemaker/train/tuner.py packs it), HyperParameters sagemaker_program and sagemaker_submit_directory
    (sagemaker.core.constants SCRIPT_PARAM_NAME, DIR_PARAM_NAME), every value JSON-encoded as 2.x's estimators encode them,
    and no ContainerEntrypoint (the image's own: the toolkit's `train`)."""
    definition = json.loads(json.dumps(definition))
    args = definition["Steps"][0]["Arguments"]
    code = next(c for c in args["InputDataConfig"] if c["ChannelName"] == "code")["DataSource"]["S3DataSource"]["S3Uri"]
    archive = store.path(f"s3://{BUCKET}/script/source/sourcedir.tar.gz")
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(store.path(code).rglob("*")):
            if path.is_file(): tar.add(path, arcname=path.relative_to(store.path(code)).as_posix())
    args["InputDataConfig"] = [c for c in args["InputDataConfig"] if c["ChannelName"] not in ("code", "sm_drivers")]
    for key in ("ContainerEntrypoint", "ContainerArguments"): args["AlgorithmSpecification"].pop(key)
    args["HyperParameters"] = {**{k: json.dumps(v) for k, v in HYPERPARAMETERS.items()},
                               "sagemaker_program": json.dumps("train.py"),
                               "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/script/source/sourcedir.tar.gz")}
    return definition


def rows(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2))
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "y": x @ [2.0, -1.0] + rng.normal(scale=0.1, size=n)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Both forms of the SDK-built step, each run with `mlops run --definition` on its own local store: form -> what it left."
    from mlops.cli import main
    from mlops.engine.records import Records
    from mlops.engine.store import LocalStore
    found = {}
    for form in ("model_trainer", "toolkit"):
        root = tmp_path_factory.mktemp(form)
        home, store = root / ".mlops", LocalStore(root / ".mlops" / "store")
        definition = build_with_uploads(lambda session: model_trainer_pipeline(session, root), home / "store", BUCKET, REGION)
        if form == "toolkit": definition = toolkit_form(definition, store)
        data = rows()
        store.path(TRAIN_URI).mkdir(parents=True)
        data.to_csv(store.path(TRAIN_URI) / "train.csv", index=False)
        (root / "definition.json").write_text(json.dumps(definition))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLOPS_HOME", str(home)); mp.setenv("MLOPS_FORKSERVER", "0"); mp.setenv("COLUMNS", "300")
            result = CliRunner().invoke(main, ["run", "--definition", str(root / "definition.json")], catch_exceptions=False)
        records = Records(home / "runs.db")
        step = next(s for s in records.steps(records.executions(1)[0]["id"]) if s["name"] == "TrainRidge")
        properties = json.loads(step["properties"]) if isinstance(step["properties"], str) else step["properties"]
        found[form] = {"result": result, "step": step, "properties": properties, "store": store, "data": data,
                       "definition": definition}
    return found


def archive_members(store, uri: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(store.path(uri).read_bytes())) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("form", ["model_trainer", "toolkit"])
def test_script_mode_trains_to_succeeded_with_the_model_the_script_saved(runs, form):
    from sklearn.linear_model import Ridge
    run = runs[form]
    assert run["result"].exit_code == 0, run["result"].output
    assert run["step"]["status"] == "Succeeded", run["step"]
    p = run["properties"]
    assert p["TrainingJobStatus"] == "Completed"
    output = f"{p['OutputDataConfig']['S3OutputPath']}/{p['TrainingJobName']}/output"
    assert p["ModelArtifacts"]["S3ModelArtifacts"] == f"{output}/model.tar.gz"
    members = archive_members(run["store"], f"{output}/model.tar.gz")
    assert list(members) == ["model.pkl"], list(members)
    saved, data = pickle.loads(members["model.pkl"]), run["data"]
    direct = Ridge(alpha=HYPERPARAMETERS["alpha"]).fit(data[["x1", "x2"]], data["y"])
    np.testing.assert_allclose(saved.predict(data[["x1", "x2"]]), direct.predict(data[["x1", "x2"]]), rtol=1e-12)
    mse = float(((direct.predict(data[["x1", "x2"]]) - data["y"]) ** 2).mean())
    (metric,) = p["FinalMetricDataList"]
    assert metric["MetricName"] == METRIC["Name"] and metric["Value"] == pytest.approx(mse, abs=1e-6), metric


@pytest.mark.parametrize("form", ["model_trainer", "toolkit"])
def test_the_hyperparameters_reach_the_script_as_its_runner_passes_them(runs, form):
    "`--name value` arguments (sorted by the toolkit, in order by the SDK's driver) and SM_HP_<NAME>; output/data as output.tar.gz."
    run, p = runs[form], runs[form]["properties"]
    seen = json.loads(archive_members(run["store"], f"{p['OutputDataConfig']['S3OutputPath']}/{p['TrainingJobName']}/output/output.tar.gz")["seen.json"])
    assert seen == {"argv": ["--alpha", "0.5", "--tag", "first"], "alpha": "0.5", "tag": "first"}, seen


def test_a_script_that_fails_fails_the_step_with_its_reason(runs, tmp_path, monkeypatch):
    """The toolkit's /opt/ml/output/failure is the step's failure reason (sagemaker_training/trainer.py writes it; for a
    script that exits non-zero, errors.ExecuteUserScriptError with its exit code); what the script said is in the step's log."""
    from mlops.cli import main
    from mlops.engine.records import Records
    from mlops.engine.store import LocalStore
    home = tmp_path / ".mlops"
    store = LocalStore(home / "store")
    archive = store.path(f"s3://{BUCKET}/script/source/sourcedir.tar.gz")
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        body = b"raise SystemExit('no rows in the train channel')\n"
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    store.path(TRAIN_URI).mkdir(parents=True)
    (store.path(TRAIN_URI) / "train.csv").write_text("x1,x2,y\n")
    (tmp_path / "definition.json").write_text(json.dumps(runs["toolkit"]["definition"]))
    monkeypatch.setenv("MLOPS_HOME", str(home)); monkeypatch.setenv("MLOPS_FORKSERVER", "0")
    result = CliRunner().invoke(main, ["run", "--definition", str(tmp_path / "definition.json")], catch_exceptions=False)
    assert result.exit_code != 0
    records = Records(home / "runs.db")
    step = next(s for s in records.steps(records.executions(1)[0]["id"]) if s["name"] == "TrainRidge")
    assert step["status"] == "Failed", step
    reason = step["failure_reason"]
    assert reason.startswith("TrainRidge: ExecuteUserScriptError:") and "ExitCode 1" in reason, reason
    log = (home / "runs" / step["execution_id"] / "TrainRidge" / "log.txt").read_text()
    assert "no rows in the train channel" in log, log


def repack_pipeline(session, folder):
    """The training step, then a Model with an inference entry point over its model data (ModelBuilder.build() in a ModelStep):
    SDK 3.x appends its model repack step (sagemaker.mlops.workflow._utils._RepackModelStep), a ModelTrainer job in the
    sklearn 1.2-1 image running _repack_script_launcher.sh, which runs _repack_model.py."""
    from sagemaker.core import image_uris
    from sagemaker.core.training.configs import SourceCode
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.serve.model_builder import ModelBuilder
    train = model_trainer_pipeline(session, folder).steps[0]
    (folder / "serve").mkdir()
    (folder / "serve" / "inference.py").write_text("import pickle, os\ndef model_fn(d):\n    return pickle.load(open(os.path.join(d, 'model.pkl'), 'rb'))\n")
    image = image_uris.retrieve("sklearn", region=REGION, version="1.2-1", py_version="py3", instance_type="ml.m5.xlarge",
                                image_scope="inference")
    builder = ModelBuilder(image_uri=image, s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
                           source_code=SourceCode(source_dir=str(folder / "serve"), entry_script="inference.py"),
                           role_arn=ROLE, sagemaker_session=session)
    return Pipeline(name="script-mode-repack", steps=[train, ModelStep(name="CreateRidge", step_args=builder.build())],
                    sagemaker_session=session)


def test_the_sdk_model_repack_step_puts_the_inference_code_into_the_model(tmp_path, monkeypatch):
    "The repack step runs as script mode; its model.tar.gz is the trained one with the entry point under code/."
    from mlops.cli import main
    from mlops.engine.records import Records
    from mlops.engine.store import LocalStore
    home = tmp_path / ".mlops"
    store = LocalStore(home / "store")
    definition = build_with_uploads(lambda session: repack_pipeline(session, tmp_path), home / "store", BUCKET, REGION)
    (repack,) = [s for s in definition["Steps"] if "RepackModel" in s["Name"]]
    store.path(TRAIN_URI).mkdir(parents=True)
    rows().to_csv(store.path(TRAIN_URI) / "train.csv", index=False)
    (tmp_path / "definition.json").write_text(json.dumps(definition))
    monkeypatch.setenv("MLOPS_HOME", str(home)); monkeypatch.setenv("MLOPS_FORKSERVER", "0"); monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("MLOPS_FRAMEWORK_ENVS", "local")  # the repack image is scikit-learn 1.2-1; its script uses none of it
    result = CliRunner().invoke(main, ["run", "--definition", str(tmp_path / "definition.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = Records(home / "runs.db")
    steps = {s["name"]: s for s in records.steps(records.executions(1)[0]["id"])}
    assert {s["status"] for s in steps.values()} == {"Succeeded"}, {n: s["status"] for n, s in steps.items()}
    props = {n: json.loads(s["properties"]) if isinstance(s["properties"], str) else s["properties"] for n, s in steps.items()}
    trained, repacked = (props[n]["ModelArtifacts"]["S3ModelArtifacts"] for n in ("TrainRidge", repack["Name"]))
    members = archive_members(store, repacked)
    assert members["model.pkl"] == archive_members(store, trained)["model.pkl"]
    assert members["code/inference.py"] == (tmp_path / "serve" / "inference.py").read_bytes(), list(members)
