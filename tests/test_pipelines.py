"""The rendered pipelines keep the contracts with the step notebooks, the container and each other.

These read templates/ (which test_render.py proves is what the code builds today) and the step
notebooks' real `parameters` cells, so a renamed notebook parameter or output breaks here.
"""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlops.config import DEEPAR_HYPERPARAMETERS, FORECAST, project_root, step_notebook
from mlops.data.demo import write_demo_transform_output
from mlops.pipelines import DATA_SHAPE_PARAMETERS, PROCESSING_ENTRYPOINT, QUALITY_METRIC, hyperparameter_parameter
from mlops.steps import declared_steps
from mlops.processing import declared_parameters
from mlops.definition.graph import all_steps, step_edges
from mlops.render import TEMPLATE_FILES

TEMPLATES = project_root() / "templates"


def load(name: str) -> dict:
    return json.loads((TEMPLATES / TEMPLATE_FILES[name]).read_text())


def by_name(definition: dict) -> dict:
    return {step["Name"]: step for step in all_steps(definition)}


def notebook_call(step: dict) -> tuple[str, str, dict]:
    "(notebook path, output notebook, parameters) of a processing step's container arguments."
    args = step["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert args[1] == "--output-notebook" and len(args[3:]) % 3 == 0
    triples = [args[i:i + 3] for i in range(3, len(args), 3)]
    assert all(flag == "-p" for flag, _, _ in triples)
    return args[0], args[2], {name: value for _, name, value in triples}


@pytest.fixture(scope="module")
def training():
    return by_name(load("DeepARTraining"))


@pytest.fixture(scope="module")
def inference():
    return by_name(load("DeepARBatchInference"))


def added(pipeline: str) -> dict:
    "The steps that step notebooks declare (`mlops new-step`): processing steps, each in its pipeline."
    return {d["name"]: "Processing" for d in declared_steps() if d["pipeline"] == pipeline}


def test_the_steps_and_their_types():
    assert {n: s["Type"] for n, s in by_name(load("DeepARTraining")).items()} == {
        "FeatureEngineering": "Processing", "TrainDeepAR": "Training", "CheckQuality": "Condition",
        "RegisterModel": "RegisterModel", "CreateModel": "Model", "QualityTooLow": "Fail", **added("training")}
    assert {n: s["Type"] for n, s in by_name(load("DeepARBatchInference")).items()} == {
        "ResolveModel": "Processing", "CreateModel": "Model", "PrepareInference": "Processing", "BatchTransform": "Transform",
        "ForecastReport": "Processing", **added("inference")}


@pytest.mark.parametrize("pipeline,step,notebook,mode", [("DeepARTraining", "FeatureEngineering", "feature_engineering", "train"),
                                                         ("DeepARBatchInference", "PrepareInference", "feature_engineering", "infer"),
                                                         ("DeepARBatchInference", "ForecastReport", "forecast_report", None),
                                                         ("DeepARBatchInference", "ResolveModel", "resolve_model", None)])
def test_processing_steps_run_step_notebooks_through_the_entry_point(pipeline, step, notebook, mode):
    step = by_name(load(pipeline))[step]
    arguments = step["Arguments"]
    assert arguments["AppSpecification"]["ContainerEntrypoint"] == PROCESSING_ENTRYPOINT == ["python", "-m", "mlops.processing"]
    assert arguments["AppSpecification"]["ImageUri"] == "{{ ProcessingImageUri }}"
    path, output_notebook, parameters = notebook_call(step)
    assert path == f"/opt/ml/processing/input/code/{notebook}.ipynb"
    assert output_notebook == f"/opt/ml/processing/output/report/{notebook}.ipynb"
    declared = declared_parameters(step_notebook(notebook))  # the notebook's real parameters cell
    assert set(parameters) <= set(declared), set(parameters) - set(declared)
    # nothing SageMaker compares for the step cache holds the execution id (the notebook reads it from the job's config)
    assert "Execution." not in json.dumps(arguments["AppSpecification"]) + json.dumps(arguments["ProcessingInputs"])
    assert "Execution." not in json.dumps(arguments.get("Environment", {}))
    if mode:
        assert parameters["mode"] == mode
    inputs = {i["InputName"]: i["S3Input"] for i in arguments["ProcessingInputs"]}
    assert inputs["code"]["S3Uri"] == f"{{{{ CodeLocation }}}}/{notebook}.ipynb"
    assert all(i["LocalPath"] == f"/opt/ml/processing/input/{name}" for name, i in inputs.items())
    outputs = {o["OutputName"]: o["S3Output"] for o in arguments["ProcessingOutputConfig"]["Outputs"]}
    assert all(o["LocalPath"] == f"/opt/ml/processing/output/{name}" for name, o in outputs.items())
    assert "report" in outputs
    for name, value in parameters.items():  # every folder handed to the notebook is one of the step's inputs or outputs
        if isinstance(value, str) and value.startswith("/opt/ml/processing/") and name != "output_dir":
            assert value in {i["LocalPath"] for i in inputs.values()}, (name, value)


def test_feature_engineering_gets_the_forecast_parameters_of_the_training_job(training):
    _, _, parameters = notebook_call(training["FeatureEngineering"])
    hyperparameters = training["TrainDeepAR"]["Arguments"]["HyperParameters"]
    # the data's frequency (a pandas alias, W-MON) goes to the feature step, which maps it to DeepAR's time_freq (W)
    assert parameters["freq"] == {"Get": "Parameters.TimeFreq"}
    assert hyperparameters["time_freq"] == {"Std:JsonGet": {
        "PropertyFile": {"Get": "Steps.FeatureEngineering.PropertyFiles.FeatureState"}, "Path": "time_freq"}}
    assert training["FeatureEngineering"]["PropertyFiles"] == [
        {"PropertyFileName": "FeatureState", "OutputName": "state", "FilePath": "feature_state.json"}]
    for name, notebook_parameter in DATA_SHAPE_PARAMETERS.items():  # the data's column names
        assert parameters[notebook_parameter[0]] == {"Get": f"Parameters.{name}"}
    for name in ("prediction_length", "context_length"):
        assert parameters[name] == hyperparameters[name]
    assert parameters["test_windows"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.TestWindows"}]}}  # an Integer, as text (#4867)
    assert set(notebook_call(training["FeatureEngineering"])[2]) >= {"input_dir", "output_dir", "mode"}


def test_every_deepar_hyperparameter_is_a_string_parameter_with_its_default():
    definition = load("DeepARTraining")
    declared = {p["Name"]: p for p in definition["Parameters"]}
    hyperparameters = by_name(definition)["TrainDeepAR"]["Arguments"]["HyperParameters"]
    assert set(hyperparameters) == set(DEEPAR_HYPERPARAMETERS)
    for name, default in DEEPAR_HYPERPARAMETERS.items():
        parameter = declared[hyperparameter_parameter(name)]
        if name != "time_freq":  # time_freq: mapped from TimeFreq by the feature step (above)
            assert hyperparameters[name] == {"Get": f"Parameters.{parameter['Name']}"}
        assert parameter["Type"] == "String" and parameter["DefaultValue"] == default
    assert declared["PredictionLength"]["DefaultValue"] == str(FORECAST.prediction_length)
    assert declared["ModelApprovalStatus"]["DefaultValue"] == "PendingManualApproval"
    for name in ("InputDataUri", "ProcessingInstanceType", "ProcessingInstanceCount", "TrainingInstanceType", "TestWindows",
                 "ModelPackageGroupName", "QualityThreshold"):
        assert name in declared


def test_training_reads_the_feature_channels_and_writes_encrypted(training):
    arguments = training["TrainDeepAR"]["Arguments"]
    assert arguments["AlgorithmSpecification"]["TrainingImage"] == "{{ DeepARImageUri }}"
    channels = {c["ChannelName"]: c for c in arguments["InputDataConfig"]}
    for channel in ("train", "test"):
        assert channels[channel]["DataSource"]["S3DataSource"]["S3Uri"] == {
            "Get": f"Steps.FeatureEngineering.ProcessingOutputConfig.Outputs['{channel}'].S3Output.S3Uri"}
        assert channels[channel]["ContentType"] == "application/jsonlines"
    assert arguments["OutputDataConfig"]["KmsKeyId"] == "{{ KmsKeyId }}"


def test_quality_gate_registers_or_fails_with_metric_value_and_threshold(training):
    metric = {"Get": f"Steps.TrainDeepAR.FinalMetricDataList['{QUALITY_METRIC}'].Value"}
    threshold = {"Get": "Parameters.QualityThreshold"}
    condition = training["CheckQuality"]["Arguments"]
    assert condition["Conditions"] == [{"Type": "LessThanOrEqualTo", "LeftValue": metric, "RightValue": threshold}]
    assert [s["Name"] for s in condition["IfSteps"]] == ["RegisterModel", "CreateModel"]
    assert [s["Name"] for s in condition["ElseSteps"]] == ["QualityTooLow"]
    message = training["QualityTooLow"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"]
    assert metric in message and threshold in message and any(QUALITY_METRIC in str(v) for v in message)
    register = training["RegisterModel"]["Arguments"]
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert register["ModelPackageGroupName"] == {"Get": "Parameters.ModelPackageGroupName"}
    metadata = register["CustomerMetadataProperties"]
    assert metadata["feature_state_uri"] == {"Get": "Steps.FeatureEngineering.ProcessingOutputConfig.Outputs['state'].S3Output.S3Uri"}
    assert metadata[QUALITY_METRIC] == {"Std:Join": {"On": "", "Values": [metric]}}
    model = {"Get": "Steps.TrainDeepAR.ModelArtifacts.S3ModelArtifacts"}
    assert register["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == model
    # DeepAR serves JSON Lines (batch transform) and JSON (a real-time endpoint): the package declares both
    spec = register["InferenceSpecification"]
    assert set(spec["SupportedContentTypes"]) == set(spec["SupportedResponseMIMETypes"]) == {"application/jsonlines", "application/json"}
    assert training["CreateModel"]["Arguments"]["PrimaryContainer"]["ModelDataUrl"] == model


def test_batch_transform_uses_json_lines_and_deepar_inference_config(inference):
    arguments = inference["BatchTransform"]["Arguments"]
    assert arguments["ModelName"] == {"Get": "Steps.CreateModel.ModelName"}
    assert arguments["BatchStrategy"] == "SingleRecord"  # DeepAR Inference Formats: the defaults fail at run time
    assert arguments["TransformInput"]["ContentType"] == "application/jsonlines"
    assert arguments["TransformInput"]["SplitType"] == "Line" and arguments["TransformOutput"]["AssembleWith"] == "Line"
    assert arguments["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == {
        "Get": "Steps.PrepareInference.ProcessingOutputConfig.Outputs['inference'].S3Output.S3Uri"}
    config = json.loads(arguments["Environment"]["DEEPAR_INFERENCE_CONFIG"])
    assert set(config["output_types"]) == {"mean", "quantiles"} and config["quantiles"]
    report_inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in inference["ForecastReport"]["Arguments"]["ProcessingInputs"]}
    assert report_inputs["transform"] == {"Get": "Steps.BatchTransform.TransformOutput.S3OutputPath"}
    assert report_inputs["index"] == {"Get": "Steps.PrepareInference.ProcessingOutputConfig.Outputs['index'].S3Output.S3Uri"}
    assert report_inputs["state"] == RESOLVED("FeatureStateUri")
    assert {p["Name"] for p in load("DeepARBatchInference")["Parameters"]} >= {
        "InputDataUri", "ModelPackageGroupName", "ModelPackageArn", "TransformInstanceType"}


def RESOLVED(field):
    return {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.ResolveModel.PropertyFiles.ResolvedModel"}, "Path": field}}


def test_the_inference_pipeline_resolves_its_model_package_and_feature_state(inference):
    resolve = inference["ResolveModel"]
    assert resolve["PropertyFiles"] == [{"PropertyFileName": "ResolvedModel", "OutputName": "model", "FilePath": "model.json"}]
    _, _, parameters = notebook_call(resolve)
    assert parameters["model_package_group_name"] == {"Get": "Parameters.ModelPackageGroupName"}
    assert parameters["model_package_arn"] == {"Get": "Parameters.ModelPackageArn"}
    assert "CacheConfig" not in resolve  # which version is the latest Approved changes without its arguments changing
    assert inference["CreateModel"]["Arguments"]["PrimaryContainer"] == {"ModelPackageName": RESOLVED("ModelPackageArn")}
    prepare_inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in inference["PrepareInference"]["Arguments"]["ProcessingInputs"]}
    assert prepare_inputs["state"] == RESOLVED("FeatureStateUri")
    defaults = {p["Name"]: p.get("DefaultValue") for p in load("DeepARBatchInference")["Parameters"]}
    assert defaults["ModelPackageArn"] == "none" and defaults["ModelPackageGroupName"] == "deepar-forecast"
    assert defaults["ModelPackageGroupName"] == {p["Name"]: p.get("DefaultValue") for p in load("DeepARTraining")["Parameters"]}["ModelPackageGroupName"]


def test_retries_everywhere_and_caching_on_job_steps_only():
    for name in TEMPLATE_FILES:
        for step in all_steps(load(name)):
            if step["Type"] in ("Processing", "Training", "Transform") and step["Name"] != "ResolveModel":
                assert step["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}, step["Name"]
                kinds = {t for policy in step["RetryPolicies"] for t in policy["ExceptionType"]}
                assert {"Step.THROTTLING", "SageMaker.CAPACITY_ERROR"} <= kinds, step["Name"]
            elif step["Type"] in ("Model", "RegisterModel"):
                assert "CacheConfig" not in step and step["RetryPolicies"], step["Name"]


def test_the_dag_edges():
    assert set(step_edges(load("DeepARBatchInference"))) == {
        ("ResolveModel", "CreateModel", ""), ("ResolveModel", "PrepareInference", ""), ("ResolveModel", "ForecastReport", ""),
        ("CreateModel", "BatchTransform", ""), ("PrepareInference", "BatchTransform", ""), ("PrepareInference", "ForecastReport", ""),
        ("BatchTransform", "ForecastReport", "")}
    edges = set(step_edges(load("DeepARTraining")))
    assert {("FeatureEngineering", "TrainDeepAR", ""), ("TrainDeepAR", "CheckQuality", ""),
            ("CheckQuality", "RegisterModel", "true"), ("CheckQuality", "QualityTooLow", "false")} <= edges


def run_step(notebook: str, output_notebook: Path, **parameters) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mlops.processing", notebook, "--output-notebook", str(output_notebook)]
    for name, value in parameters.items():
        args += ["-p", name, str(value)]
    return subprocess.run(args, capture_output=True, text=True)


def test_forecast_report_runs_standalone(tmp_path):
    result = run_step("forecast_report", tmp_path / "report" / "forecast_report.ipynb", output_dir=tmp_path / "forecasts")
    assert result.returncode == 0, result.stderr
    forecasts = pd.read_csv(tmp_path / "forecasts" / "forecasts.csv")
    assert list(forecasts.columns[:4]) == ["execution_id", "item_id", "step", "timestamp"]
    assert {"mean", "0.1", "0.5", "0.9"} <= set(forecasts.columns)
    assert (tmp_path / "report" / "forecast_report.ipynb").is_file()


def test_forecast_report_reads_the_frequency_from_a_real_feature_state(tmp_path):
    "Feature engineering in train mode writes the state; the report takes its (weekly) frequency from it."
    from mlops.data.demo import demo_data
    data = demo_data(n_items=3, periods=60).assign(timestamp=lambda d: pd.to_datetime(d["timestamp"]))
    weekly = data.groupby(["item_id", pd.Grouper(key="timestamp", freq="W")], as_index=False).agg(
        target=("target", "sum"), store=("store", "first"), category=("category", "first"), promo=("promo", "max"))
    weekly.to_csv(tmp_path / "weekly.csv", index=False)
    train = run_step("feature_engineering", tmp_path / "fe.ipynb", input_dir=tmp_path / "weekly.csv", output_dir=tmp_path / "fe",
                     mode="train", freq="W", prediction_length=2, context_length=2, test_windows=1)
    assert train.returncode == 0, train.stderr
    transform_dir, index_dir = write_demo_transform_output(tmp_path / "transform", n_items=2, prediction_length=3,
                                                           forecast_start="2024-01-07")
    result = run_step("forecast_report", tmp_path / "report.ipynb", transform_dir=transform_dir, index_dir=index_dir,
                      state_dir=tmp_path / "fe" / "state", output_dir=tmp_path / "out", execution_id="exec-42")
    assert result.returncode == 0, result.stderr
    forecasts = pd.read_csv(tmp_path / "out" / "forecasts.csv", parse_dates=["timestamp"])
    first = forecasts[forecasts["item_id"] == "item_0"]["timestamp"].tolist()
    assert first == list(pd.date_range("2024-01-07", periods=3, freq="W"))
    assert (forecasts["execution_id"] == "exec-42").all()


@pytest.mark.parametrize("name", TEMPLATE_FILES)
def test_with_their_defaults_and_no_kms_key_no_empty_string_reaches_sagemaker(name):
    """CreateProcessingJob refuses an empty container argument ("Found null or empty string in ContainerArguments at index
    N", sagemaker-python-sdk #3758), StartPipelineExecution an empty String value ('string "" is too short (length: 0,
    required minimum: 1)', #4016); a job without a KMS key gets no KmsKeyId rather than an empty one."""
    from mlops.definition.expressions import EXECUTION_VARIABLES, Context, as_text, evaluate
    from mlops.definition.parameters import resolve_parameters
    from mlops.definition.templates import example_values, fill_definition
    definition = fill_definition(load(name), {**example_values(), "KmsKeyId": ""})
    assert "" not in [p.get("DefaultValue") for p in definition["Parameters"]]
    assert '"KmsKeyId"' not in json.dumps(definition)
    context = Context(parameters=resolve_parameters(definition), execution={k: "execution-1" for k in EXECUTION_VARIABLES})
    for step in all_steps(definition):
        for argument in step["Arguments"].get("AppSpecification", {}).get("ContainerArguments", []):
            if isinstance(argument, str) or "Get" in argument and argument["Get"].startswith("Parameters."):
                assert as_text(evaluate(argument, context)) != "", (step["Name"], argument)
    # and the notebooks still read "no value": the entry point gives them the empty string for none
    features = declared_parameters(step_notebook("feature_engineering"))
    from mlops.processing import resolve_parameters as notebook_parameters
    given = notebook_parameters("feature_engineering.ipynb", {"static_cat_columns": "none", "mode": "none"}, features)
    assert given == {"static_cat_columns": "", "mode": ""}
