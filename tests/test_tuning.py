"""A Tuning step built by the SDK (HyperparameterTuner on the built-in XGBoost), run with `mlops run --definition`: its
training jobs are real local XGBoost jobs, and the models the SDK's `get_top_model_s3_uri(top_k)` points at are the best
ones by the objective metric.

Rules checked, and where they come from:
- `TrainingJobSummaries` is best first, the best at index 0 (the SDK, sagemaker/mlops/workflow/steps.py,
  `TuningStep.get_top_model_s3_uri`: "tuning step stores up to 50 top performing training jobs ... The best training job
  model is at index 0"); `BestTrainingJob` is DescribeHyperParameterTuningJob's "training job that completed with the
  best current HyperParameterTuningJobObjective".
- A model is at `<OutputDataConfig.S3OutputPath>/<TrainingJobName>/output/model.tar.gz`, which `get_top_model_s3_uri`
  joins as `s3://<bucket>/<prefix>/<TrainingJobSummaries[k].TrainingJobName>/output/model.tar.gz`.
- Random search draws each value "from within the ranges that you specify", and Grid runs "the total number of
  distinct categorical combinations possible" (https://docs.aws.amazon.com/sagemaker/latest/dg/automatic-model-tuning-how-it-works.html).
- `MaxParallelTrainingJobs`: "The maximum number of concurrent training jobs that a hyperparameter tuning job can launch"
  (botocore, ResourceLimits).
- The built-in XGBoost's `validation:rmse` is the root mean squared error of the model's predictions on the validation
  channel at the last round (aws/sagemaker-xgboost-container, algorithm_mode/train.py): recomputed here from each job's
  own model.
"""
import json
import tarfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from corpus.sdk_pipelines import BUCKET, REGION, Corpus, _xgboost_trainer

TRAIN, VALIDATION = f"s3://{BUCKET}/abalone/train", f"s3://{BUCKET}/abalone/validation"
PREFIX = "abalone-train"  # the trainer's base_job_name: the SDK's default S3OutputPath is s3://<bucket>/<base_job_name>
XGBOOST_IMAGE_VERSION = "1.7-1"


def build(strategy: str) -> dict:
    "A pipeline of a TuningStep (built-in XGBoost, validation:rmse minimized) and a ModelStep per top-2 job, built offline by the SDK."
    import tempfile
    from mlops.offline import offline_aws, pipeline_session
    with offline_aws(REGION), tempfile.TemporaryDirectory() as folder:
        import boto3
        from sagemaker.core import image_uris
        from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
        from sagemaker.mlops.workflow.model_step import ModelStep
        from sagemaker.mlops.workflow.pipeline import Pipeline
        from sagemaker.mlops.workflow.steps import TuningStep
        from sagemaker.serve.model_builder import ModelBuilder
        from sagemaker.train.configs import InputData
        from sagemaker.train.tuner import HyperparameterTuner
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        c = Corpus(session=pipeline_session({"ArtifactBucket": BUCKET}), folder=Path(folder))
        trainer = _xgboost_trainer(c, TRAIN, VALIDATION)
        trainer.hyperparameters = {"objective": "reg:squarederror", "num_round": 8, "subsample": 1}
        if strategy == "Random":
            ranges = {"max_depth": IntegerParameter(1, 6), "eta": ContinuousParameter(0.05, 0.6)}
            tuner = HyperparameterTuner(model_trainer=trainer, objective_metric_name="validation:rmse", objective_type="Minimize",
                                        hyperparameter_ranges=ranges, max_jobs=4, max_parallel_jobs=2, strategy="Random",
                                        random_seed=11)
        else:
            ranges = {"max_depth": CategoricalParameter([1, 3]), "eta": CategoricalParameter([0.1, 0.5])}
            tuner = HyperparameterTuner(model_trainer=trainer, objective_metric_name="validation:rmse", objective_type="Minimize",
                                        hyperparameter_ranges=ranges, max_parallel_jobs=4, strategy="Grid")
        tuning = TuningStep(name="TuneAbalone", step_args=tuner.tune(inputs=[
            InputData(channel_name="train", data_source=TRAIN, content_type="text/csv"),
            InputData(channel_name="validation", data_source=VALIDATION, content_type="text/csv")], wait=False))
        steps = [tuning]
        if strategy == "Random":
            image = image_uris.retrieve(framework="xgboost", region=REGION, version=XGBOOST_IMAGE_VERSION)
            for top_k, name in ((0, "CreateBestModel"), (1, "CreateSecondModel")):
                model = ModelBuilder(image_uri=image, sagemaker_session=c.session, role_arn=c.role,
                                     s3_model_data_url=tuning.get_top_model_s3_uri(top_k=top_k, s3_bucket=BUCKET, prefix=PREFIX))
                steps.append(ModelStep(name=name, step_args=model.build()))
        return json.loads(Pipeline(name=f"tuning-{strategy.lower()}", steps=steps, sagemaker_session=c.session).definition())


def rows(seed: int, n: int) -> np.ndarray:
    "Label first, then 4 features (a noisy non-linear target, so that depth and learning rate matter): the container's CSV layout."
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return np.column_stack([3 * x[:, 0] - 2 * x[:, 1] ** 2 + np.sin(3 * x[:, 2]) + rng.normal(scale=0.3, size=n), x])


def run(root: Path, definition: dict) -> dict:
    "The definition run with `mlops run --definition` on CSV channels in a fresh local store: the result and each step's record."
    from mlops.cli import main
    from mlops.engine.records import Records
    from mlops.engine.store import LocalStore
    home, store = root / ".mlops", LocalStore(root / ".mlops" / "store")
    for uri, data in ((TRAIN, rows(0, 150)), (VALIDATION, rows(1, 60))):
        folder = store.path(uri)
        folder.mkdir(parents=True)
        np.savetxt(folder / "data.csv", data, delimiter=",", fmt="%.6f")  # no header
    (root / "pipeline.json").write_text(json.dumps(definition))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(home)); mp.setenv("MLOPS_FORKSERVER", "0"); mp.setenv("COLUMNS", "300")
        result = CliRunner().invoke(main, ["run", "--definition", str(root / "pipeline.json")], catch_exceptions=False)
    records = Records(home / "runs.db")
    execution = records.executions(1)[0]
    steps = {s["name"]: {**s, "properties": json.loads(s["properties"]) if isinstance(s["properties"], str) else s["properties"]}
             for s in records.steps(execution["id"])}
    return {"result": result, "execution": execution, "steps": steps, "store": store, "folder": home / "runs" / execution["id"]}


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    definition = build("Random")
    return {**run(tmp_path_factory.mktemp("tune-random"), definition), "definition": definition}


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    definition = build("Grid")
    return {**run(tmp_path_factory.mktemp("tune-grid"), definition), "definition": definition}


def validation_rmse(store, model_uri: str, folder: Path) -> float:
    "The RMSE on the validation channel of the model at `model_uri`, predicted by xgboost itself."
    import xgboost as xgb
    folder.mkdir(parents=True)
    with tarfile.open(store.path(model_uri)) as tar:
        assert tar.getnames() == ["xgboost-model"]
        tar.extractall(folder, filter="data")
    validation = np.loadtxt(store.path(VALIDATION) / "data.csv", delimiter=",")
    predicted = xgb.Booster(model_file=str(folder / "xgboost-model")).predict(xgb.DMatrix(validation[:, 1:]))
    return float(np.sqrt(np.mean((predicted - validation[:, 0]) ** 2)))


def tuning_config(definition: dict) -> dict:
    return next(s for s in definition["Steps"] if s["Name"] == "TuneAbalone")["Arguments"]


def test_the_sdk_pipeline_runs_to_succeeded(random_run):
    assert random_run["result"].exit_code == 0, random_run["result"].output
    assert random_run["execution"]["status"] == "Succeeded"
    assert {n: s["status"] for n, s in random_run["steps"].items()} == \
           {"TuneAbalone": "Succeeded", "CreateBestModel": "Succeeded", "CreateSecondModel": "Succeeded"}
    p = random_run["steps"]["TuneAbalone"]["properties"]
    assert p["HyperParameterTuningJobStatus"] == "Completed"
    assert p["TrainingJobStatusCounters"]["Completed"] == 4 and p["ObjectiveStatusCounters"]["Succeeded"] == 4


def test_the_two_models_are_the_two_best_jobs_by_their_own_validation_rmse(random_run, tmp_path):
    p, store = random_run["steps"]["TuneAbalone"]["properties"], random_run["store"]
    output = p["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"]
    assert output == f"s3://{BUCKET}/{PREFIX}"
    names = [s["TrainingJobName"] for s in p["TrainingJobSummaries"]]
    assert len(set(names)) == 4 and all(n.startswith(p["HyperParameterTuningJobName"] + "-") for n in names)
    # each job's objective, recomputed from the model it wrote (where SageMaker writes a training job's model)
    rmse = {n: validation_rmse(store, f"{output}/{n}/output/model.tar.gz", tmp_path / n) for n in names}
    for s in p["TrainingJobSummaries"]:
        assert s["FinalHyperParameterTuningJobObjectiveMetric"]["MetricName"] == "validation:rmse"
        assert s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(rmse[s["TrainingJobName"]], rel=1e-3)
    best_two = sorted(rmse, key=rmse.get)[:2]
    assert names[:2] == best_two and p["BestTrainingJob"]["TrainingJobName"] == best_two[0]
    assert len(set(rmse.values())) == 4, rmse  # the ranking means something: four different models
    for step, name in (("CreateBestModel", best_two[0]), ("CreateSecondModel", best_two[1])):
        model = random_run["steps"][step]["properties"]
        url = model["PrimaryContainer"]["ModelDataUrl"]
        assert url == f"{output}/{name}/output/model.tar.gz" and store.exists(url)


def test_each_job_got_values_within_the_ranges_and_the_static_hyperparameters(random_run, tmp_path):
    p = random_run["steps"]["TuneAbalone"]["properties"]
    ranges = tuning_config(random_run["definition"])["HyperParameterTuningJobConfig"]["ParameterRanges"]
    integer, continuous = ranges["IntegerParameterRanges"][0], ranges["ContinuousParameterRanges"][0]
    assert (integer["Name"], continuous["Name"]) == ("max_depth", "eta")
    for s in p["TrainingJobSummaries"]:
        tuned = s["TunedHyperParameters"]
        assert set(tuned) == {"max_depth", "eta"}
        assert int(integer["MinValue"]) <= int(tuned["max_depth"]) <= int(integer["MaxValue"])
        assert float(continuous["MinValue"]) <= float(tuned["eta"]) <= float(continuous["MaxValue"])
    assert len({tuple(sorted(s["TunedHyperParameters"].items())) for s in p["TrainingJobSummaries"]}) == 4
    # each job was trained with the static hyperparameters and its own values: its hyperparameters file, and its trees' depth
    static = tuning_config(random_run["definition"])["TrainingJobDefinition"]["StaticHyperParameters"]
    import xgboost as xgb
    output, depths = p["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"], []
    for s in p["TrainingJobSummaries"]:
        job = random_run["folder"] / "TuneAbalone" / s["TrainingJobName"]
        assert json.loads((job / "hyperparameters.json").read_text()) == {**static, **s["TunedHyperParameters"]}
        with tarfile.open(random_run["store"].path(f"{output}/{s['TrainingJobName']}/output/model.tar.gz")) as tar:
            tar.extractall(tmp_path / s["TrainingJobName"], filter="data")
        trees = xgb.Booster(model_file=str(tmp_path / s["TrainingJobName"] / "xgboost-model")).get_dump()
        depth = max(len(line) - len(line.lstrip("\t")) for tree in trees for line in tree.splitlines())  # a leaf's tabs: its depth
        assert depth <= int(s["TunedHyperParameters"]["max_depth"])
        depths.append(depth == int(s["TunedHyperParameters"]["max_depth"]))
    assert any(depths)


def test_no_more_than_max_parallel_training_jobs_ran_at_once(random_run):
    p = random_run["steps"]["TuneAbalone"]["properties"]
    limit = p["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxParallelTrainingJobs"]
    assert limit == 2
    spans = [(datetime.fromisoformat(s["TrainingStartTime"]), datetime.fromisoformat(s["TrainingEndTime"]))
             for s in p["TrainingJobSummaries"]]
    running_at = lambda t: sum(start <= t < end for start, end in spans)
    assert max(running_at(start) for start, _ in spans) <= limit
    assert max(running_at(start) for start, _ in spans) == limit  # and it did run jobs side by side


def test_grid_runs_every_combination_of_the_categorical_values(grid_run):
    assert grid_run["result"].exit_code == 0, grid_run["result"].output
    assert grid_run["steps"]["TuneAbalone"]["status"] == "Succeeded"
    config = tuning_config(grid_run["definition"])["HyperParameterTuningJobConfig"]
    values = {r["Name"]: r["Values"] for r in config["ParameterRanges"]["CategoricalParameterRanges"]}
    p = grid_run["steps"]["TuneAbalone"]["properties"]
    tried = sorted((s["TunedHyperParameters"]["max_depth"], s["TunedHyperParameters"]["eta"]) for s in p["TrainingJobSummaries"])
    assert tried == sorted((d, e) for d in values["max_depth"] for e in values["eta"])
    assert len(tried) == 4 and "MaxNumberOfTrainingJobs" not in config["ResourceLimits"]  # the SDK leaves it out for Grid
    objective = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in p["TrainingJobSummaries"]]
    assert objective == sorted(objective)  # Minimize: best first


def test_grid_with_a_continuous_range_fails_before_any_training_job(random_run, tmp_path):
    "The SDK-built definition with its Strategy set to Grid: AWS's rule \"Only categorical parameters are supported\"."
    definition = json.loads(json.dumps(random_run["definition"]))
    tuning_config(definition)["HyperParameterTuningJobConfig"]["Strategy"] = "Grid"
    broken = run(tmp_path, definition)
    assert broken["result"].exit_code != 0
    step = broken["steps"]["TuneAbalone"]
    assert step["status"] == "Failed" and "the Grid strategy supports only categorical parameter ranges" in step["failure_reason"]
    assert not list((broken["folder"] / "TuneAbalone").glob("TuneAbalone-*"))  # no training job started
