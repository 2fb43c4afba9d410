"""Valid pipeline definitions, built offline by the project's own SageMaker SDK (3.x), the way the SDK's tests and
AWS's example notebooks write them.

Each builder takes a `Corpus` (the session, a role, a bucket, a folder for files it needs) and returns the SDK's
`Pipeline`; `build_corpus()` builds every one inside `mlops.offline.offline_aws()` and returns name → definition
(`json.loads(pipeline.definition())`). `BUILDERS` registers them by name.

Sources of the shapes written here (aws/sagemaker-python-sdk, v3 layout):
- sagemaker-mlops/tests/integ/workflow/test_pipeline_train_registry.py (ScriptProcessor + sklearn image, XGBoost
  ModelTrainer, ModelBuilder build/register);
- sagemaker-mlops/tests/unit/workflow/test_*.py (each step type);
- aws/amazon-sagemaker-examples, sagemaker-pipelines/tabular/abalone_build_train_deploy (the abalone pipeline:
  PropertyFile evaluation.json, ConditionLessThanOrEqualTo on JsonGet, RegisterModel with ModelMetrics) and
  sagemaker-pipelines/tabular/model-monitor-clarify-pipelines (QualityCheck, ClarifyCheck, DriftCheckBaselines);
- aws/sagemaker-python-sdk v3-examples/ml-ops-examples (v3-pipeline-train-create-registry, the tuning pipeline,
  v3-pytorch-processing-example for FrameworkProcessor with source_dir).

What SDK 3.x no longer has, and what stands in for it here:
- SKLearnProcessor: ScriptProcessor with the sklearn image (as the SDK's v3 example does);
- framework estimators (PyTorch, SKLearn, ...) with entry_point/source_dir: ModelTrainer with SourceCode;
- Estimator(profiler_config=, rules=): ModelTrainer has neither, so build_training_profiler adds the two members the
  SDK's own sagemaker.core.debugger classes write (see there);
- CreateModelStep and RegisterModel (the step collection): ModelStep with ModelBuilder.build() / .register(), which
  still write steps of type Model and RegisterModel;
- HyperParameterTuningResourceConfig (2.x: instance configs on the tuner): 3.27 accepts them and never writes them
  (see build_tuning_builtin_warm_start);
- ParallelismConfiguration: not a member of a definition at all (a CreatePipeline/StartPipelineExecution request
  member), so no definition here can hold it.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-ExecutionRole"
BUCKET = "corpus-bucket"


@dataclass
class Corpus:
    "What every builder shares: the PipelineSession, a role, a bucket, and a folder for the files a builder writes."
    session: object
    folder: Path
    role: str = ROLE
    bucket: str = BUCKET
    region: str = REGION

    def s3(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def file(self, name: str, text: str) -> Path:
        "A file `name` (under the corpus folder) holding `text`."
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


BUILDERS: dict[str, Callable[[Corpus], object]] = {}


def builder(function):
    "Register `function` under its name (without `build_`)."
    BUILDERS[function.__name__.removeprefix("build_")] = function
    return function


def _image(framework: str, version: str, c: Corpus, **kwargs) -> str:
    from sagemaker.core import image_uris
    return image_uris.retrieve(framework=framework, region=c.region, version=version, **kwargs)


PREPROCESS = """\
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("--input-data")
args = parser.parse_args()
os.makedirs("/opt/ml/processing/evaluation", exist_ok=True)
json.dump({"regression_metrics": {"mse": {"value": 1.0}}}, open("/opt/ml/processing/evaluation/evaluation.json", "w"))
"""


def _processing_io(c: Corpus, prefix: str, outputs=("train", "validation", "test"), **managed):
    "A ProcessingInput of an S3 prefix and a ProcessingOutput for each of `outputs` (with `app_managed=`: as SDK 2.x wrote them)."
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    inputs = [ProcessingInput(input_name="input-1", **managed, s3_input=ProcessingS3Input(
        s3_uri=c.s3(prefix, "input", "abalone.csv"), local_path="/opt/ml/processing/input", s3_data_type="S3Prefix",
        s3_input_mode="File", s3_data_distribution_type="ShardedByS3Key"))]
    outs = [ProcessingOutput(output_name=name, **managed, s3_output=ProcessingS3Output(
        s3_uri=c.s3(prefix, name), local_path=f"/opt/ml/processing/{name}", s3_upload_mode="EndOfJob"))
        for name in outputs]
    return inputs, outs


# --- Processing --------------------------------------------------------------------------------------------

@builder
def build_processing_sklearn(c: Corpus):
    "ScriptProcessor with the sklearn image (SDK 3.x has no SKLearnProcessor), code=, arguments, a PropertyFile, cache."
    from sagemaker.core.processing import ScriptProcessor
    from sagemaker.core.workflow.parameters import ParameterInteger, ParameterString
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import CacheConfig, ProcessingStep
    count = ParameterInteger(name="ProcessingInstanceCount", default_value=1)
    instance_type = ParameterString(name="InstanceType", default_value="ml.m5.xlarge")
    input_data = ParameterString(name="InputDataUrl", default_value=c.s3("abalone", "input", "abalone.csv"))
    processor = ScriptProcessor(
        image_uri=_image("sklearn", "1.2-1", c, py_version="py3", instance_type="ml.m5.xlarge"),
        command=["python3"], instance_type=instance_type, instance_count=count, base_job_name="sklearn-abalone-process",
        sagemaker_session=c.session, role=c.role)
    # AppManaged: SDK 2.x wrote it on every input and output; botocore's ProcessingInput/ProcessingOutput have it
    inputs, outputs = _processing_io(c, "abalone", ("train", "validation", "test", "evaluation"), app_managed=False)
    evaluation = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    step = ProcessingStep(
        name="PreprocessAbaloneData",
        step_args=processor.run(inputs=inputs, outputs=outputs, code=str(c.file("processing/preprocess.py", PREPROCESS)),
                                arguments=["--input-data", input_data]),
        property_files=[evaluation], cache_config=CacheConfig(enable_caching=True, expire_after="30d"))
    return Pipeline(name="corpus-processing-sklearn", parameters=[count, instance_type, input_data], steps=[step],
                    sagemaker_session=c.session)


# --- Training ----------------------------------------------------------------------------------------------

def _xgboost_trainer(c: Corpus, train_uri, validation_uri=None, objective="reg:linear", instance_type="ml.m5.xlarge"):
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, InputData
    channels = [InputData(channel_name="train", data_source=train_uri, content_type="text/csv")]
    if validation_uri is not None:
        channels.append(InputData(channel_name="validation", data_source=validation_uri, content_type="text/csv"))
    return ModelTrainer(
        training_image=_image("xgboost", "1.7-1", c), compute=Compute(instance_type=instance_type, instance_count=1),
        base_job_name="abalone-train", sagemaker_session=c.session, role=c.role,
        hyperparameters={"objective": objective, "num_round": 50, "max_depth": 5, "eta": 0.2, "gamma": 4,
                         "min_child_weight": 6, "subsample": 0.7}, input_data_config=channels)


@builder
def build_training_builtin_xgboost(c: Corpus):
    "Built-in XGBoost (image from image_uris) trained on a processing step's outputs; ModelStep build and register."
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.serve.model_builder import ModelBuilder
    objective = ParameterString(name="TrainingObjective", default_value="reg:linear")
    trainer = _xgboost_trainer(c, c.s3("abalone", "train"), c.s3("abalone", "validation"), objective=objective)
    train = TrainingStep(name="TrainAbaloneModel", step_args=trainer.train())
    model = ModelBuilder(s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
                         image_uri=_image("xgboost", "1.7-1", c), sagemaker_session=c.session, role_arn=c.role)
    create = ModelStep(name="CreateAbaloneModel", step_args=model.build())
    register = ModelStep(name="RegisterAbaloneModel", step_args=model.register(
        model_package_group_name="AbaloneModelPackageGroup", content_types=["text/csv"], response_types=["text/csv"],
        inference_instances=["ml.t2.medium", "ml.m5.xlarge"], transform_instances=["ml.m5.xlarge"],
        approval_status="PendingManualApproval"))
    return Pipeline(name="corpus-training-builtin-xgboost", parameters=[objective], steps=[train, create, register],
                    sagemaker_session=c.session)


# --- Condition, Fail, JsonGet, Join ------------------------------------------------------------------------

@builder
def build_conditions_every_type(c: Corpus):
    "Every ConditionTypeEnum member, on parameters, a JsonGet and a Join; the else branch a FailStep with a Join message."
    from sagemaker.core.processing import ScriptProcessor
    from sagemaker.core.workflow.conditions import (ConditionEquals, ConditionGreaterThan, ConditionGreaterThanOrEqualTo,
                                                    ConditionIn, ConditionLessThan, ConditionLessThanOrEqualTo,
                                                    ConditionNot, ConditionOr)
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.parameters import ParameterBoolean, ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep
    threshold = ParameterFloat(name="MseThreshold", default_value=6.0)
    count = ParameterInteger(name="MinCount", default_value=1)
    stage = ParameterString(name="Stage", default_value="dev", enum_values=["dev", "staging", "prod"])
    enabled = ParameterBoolean(name="Enabled", default_value=True)
    processor = ScriptProcessor(
        image_uri=_image("sklearn", "1.2-1", c, py_version="py3", instance_type="ml.m5.xlarge"), command=["python3"],
        instance_type="ml.m5.xlarge", instance_count=1, sagemaker_session=c.session, role=c.role)
    inputs, outputs = _processing_io(c, "conditions", ("evaluation",))
    evaluation = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    evaluate = ProcessingStep(name="EvaluateModel", property_files=[evaluation], step_args=processor.run(
        inputs=inputs, outputs=outputs, code=str(c.file("conditions/evaluate.py", PREPROCESS))))
    mse = JsonGet(step_name=evaluate.name, property_file=evaluation, json_path="regression_metrics.mse.value")
    conditions = [
        ConditionEquals(left=enabled, right=True),
        ConditionGreaterThan(left=mse, right=0.0),
        ConditionGreaterThanOrEqualTo(left=count, right=1),
        ConditionLessThan(left=count, right=10),
        ConditionLessThanOrEqualTo(left=mse, right=threshold),
        ConditionIn(value=stage, in_values=["dev", "staging", Join(on="", values=["pr", "od"])]),
        ConditionNot(expression=ConditionEquals(left=stage, right="broken")),
        ConditionOr(conditions=[ConditionLessThan(left=mse, right=threshold),
                                ConditionEquals(left=Join(on="-", values=[stage, mse]), right="prod-0")]),
    ]
    fail = FailStep(name="MSETooHigh", error_message=Join(on=" ", values=[
        "Execution failed due to MSE", mse, "above", threshold, "in", ExecutionVariables.PIPELINE_EXECUTION_ID]))
    inputs, outputs = _processing_io(c, "conditions", ("report",))
    report = ProcessingStep(name="WriteReport", step_args=processor.run(
        inputs=inputs, outputs=outputs, code=str(c.file("conditions/report.py", PREPROCESS)),
        arguments=["--mse", mse.to_string(), "--stage", stage]))
    check = ConditionStep(name="CheckMSEAbaloneEvaluation", conditions=conditions, if_steps=[report], else_steps=[fail])
    return Pipeline(name="corpus-conditions-every-type", parameters=[threshold, count, stage, enabled],
                    steps=[evaluate, check], sagemaker_session=c.session)


# --- Parameters --------------------------------------------------------------------------------------------

@builder
def build_parameters_every_type(c: Corpus):
    "String (with EnumValues), Integer, Float and Boolean parameters, with and without defaults, used by a processing job."
    from sagemaker.core.processing import Processor
    from sagemaker.core.workflow.conditions import ConditionEquals
    from sagemaker.core.workflow.parameters import ParameterBoolean, ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep
    instance_type = ParameterString(name="InstanceType", default_value="ml.m5.large",
                                    enum_values=["ml.m5.large", "ml.m5.xlarge"])
    image = ParameterString(name="ImageUri")  # no default: given at StartPipelineExecution
    count = ParameterInteger(name="InstanceCount", default_value=1)
    volume = ParameterInteger(name="VolumeSizeInGB")
    ratio = ParameterFloat(name="TrainRatio", default_value=0.8)
    alpha = ParameterFloat(name="Alpha")
    dry_run = ParameterBoolean(name="DryRun", default_value=False)
    strict = ParameterBoolean(name="Strict")
    processor = Processor(image_uri=image, role=c.role, instance_count=count, instance_type=instance_type,
                          volume_size_in_gb=volume, entrypoint=["python3", "/opt/program/run.py"],
                          sagemaker_session=c.session)
    step = ProcessingStep(name="UseParameters", step_args=processor.run(arguments=[
        "--train-ratio", ratio.to_string(), "--alpha", alpha.to_string(), "--strict", strict.to_string()]))
    check = ConditionStep(name="IsDryRun", conditions=[ConditionEquals(left=dry_run, right=True)],
                          if_steps=[FailStep(name="DryRunStop", error_message="dry run: stopped before training")],
                          else_steps=[], depends_on=[step])
    return Pipeline(name="corpus-parameters-every-type",
                    parameters=[instance_type, image, count, volume, ratio, alpha, dry_run, strict],
                    steps=[step, check], sagemaker_session=c.session)


# --- Lambda, Callback, EMR ---------------------------------------------------------------------------------

@builder
def build_lambda(c: Corpus):
    "A LambdaStep on an existing function, its outputs used by a later Lambda step."
    from sagemaker.core.lambda_helper import Lambda
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.lambda_step import LambdaOutput, LambdaOutputTypeEnum, LambdaStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    model_name = ParameterString(name="ModelName", default_value="abalone-model")
    status = LambdaOutput(output_name="statusCode", output_type=LambdaOutputTypeEnum.String)
    body = LambdaOutput(output_name="body", output_type=LambdaOutputTypeEnum.String)
    deploy = LambdaStep(
        name="DeployModelLambda",
        lambda_func=Lambda(function_arn=f"arn:aws:lambda:{c.region}:123456789012:function:sagemaker-deploy",
                           session=c.session),
        inputs={"model_name": model_name, "endpoint_config_name": "abalone-config", "endpoint_name": "abalone-endpoint"},
        outputs=[status, body])
    notify = LambdaStep(
        name="NotifyLambda",
        lambda_func=Lambda(function_arn=f"arn:aws:lambda:{c.region}:123456789012:function:notify", session=c.session),
        inputs={"status": deploy.properties.Outputs["statusCode"], "body": deploy.properties.Outputs["body"]},
        outputs=[LambdaOutput(output_name="sent", output_type=LambdaOutputTypeEnum.Boolean)])
    return Pipeline(name="corpus-lambda", parameters=[model_name], steps=[deploy, notify], sagemaker_session=c.session)


@builder
def build_callback(c: Corpus):
    "A CallbackStep sending a token to an SQS queue, its outputs used by a Fail step's message."
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.callback_step import CallbackOutput, CallbackOutputTypeEnum, CallbackStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    data = ParameterString(name="InputData", default_value=c.s3("callback", "input"))
    callback = CallbackStep(
        name="RunGlueJob", sqs_queue_url=f"https://sqs.{c.region}.amazonaws.com/123456789012/pipeline-callbacks",
        inputs={"input_location": data, "job": "etl"},
        outputs=[CallbackOutput(output_name="output_location", output_type=CallbackOutputTypeEnum.String),
                 CallbackOutput(output_name="rows", output_type=CallbackOutputTypeEnum.Integer)])
    after = CallbackStep(
        name="Approve", sqs_queue_url=f"https://sqs.{c.region}.amazonaws.com/123456789012/pipeline-callbacks",
        inputs={"summary": Join(on=":", values=[callback.properties.Outputs["output_location"],
                                                callback.properties.Outputs["rows"]])},
        outputs=[CallbackOutput(output_name="approved", output_type=CallbackOutputTypeEnum.Boolean)])
    return Pipeline(name="corpus-callback", parameters=[data], steps=[callback, after], sagemaker_session=c.session)


@builder
def build_emr_cluster_id(c: Corpus):
    "An EMRStep on a running cluster (cluster_id), with args and properties; EMR's StepConfig has no Name (the SDK gives none)."
    from sagemaker.mlops.workflow.emr_step import EMRStep, EMRStepConfig
    from sagemaker.mlops.workflow.pipeline import Pipeline
    config = EMRStepConfig(jar="command-runner.jar", args=["spark-submit", c.s3("emr", "job.py")],
                           properties=[{"Key": "spark.executor.memory", "Value": "2g"}])
    step = EMRStep(name="EMRStepOnCluster", display_name="EMR-step", description="spark-submit on a running cluster",
                   cluster_id="j-1ABCDEFGHIJK", step_config=config)
    return Pipeline(name="corpus-emr-cluster-id", steps=[step], sagemaker_session=c.session)


@builder
def build_emr_cluster_config(c: Corpus):
    "An EMRStep that creates its own cluster (cluster_config), as the SDK's EMR unit tests write it."
    from sagemaker.mlops.workflow.emr_step import EMRStep, EMRStepConfig
    from sagemaker.mlops.workflow.pipeline import Pipeline
    cluster_config = {"Instances": {"InstanceGroups": [
        {"Name": "Master Instance Group", "InstanceRole": "MASTER", "InstanceCount": 1, "InstanceType": "m5.xlarge"},
        {"Name": "Core Instance Group", "InstanceRole": "CORE", "InstanceCount": 2, "InstanceType": "m5.xlarge"}]}}
    step = EMRStep(name="EMRStepNewCluster", display_name="EMR-step", description="a step on a new cluster",
                   cluster_id=None, step_config=EMRStepConfig(jar=c.s3("emr", "my.jar"), args=["--input", c.s3("emr", "in")],
                                                              main_class="com.example.Main"),
                   cluster_config=cluster_config)
    return Pipeline(name="corpus-emr-cluster-config", steps=[step], sagemaker_session=c.session)


# --- Processing with a source_dir, script-mode training, profiler --------------------------------------------

@builder
def build_processing_framework_source_dir(c: Corpus):
    "FrameworkProcessor (the PyTorch image) running code= from a source_dir with a requirements.txt, as in the SDK's v3 example."
    from sagemaker.core.processing import FrameworkProcessor
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep
    source = c.folder / "framework" / "scripts" / "preprocess"
    c.file("framework/scripts/preprocess/preprocessing.py", PREPROCESS)
    c.file("framework/scripts/preprocess/requirements.txt", "pandas\n")
    processor = FrameworkProcessor(
        image_uri=_image("pytorch", "1.13", c, py_version="py39", instance_type="ml.m5.xlarge", image_scope="training"),
        role=c.role, instance_type="ml.m5.xlarge", instance_count=1, sagemaker_session=c.session,
        base_job_name="huggingface-text-classification")
    inputs, outputs = _processing_io(c, "framework", ("train", "test", "evaluation"))
    stats = PropertyFile(name="DatasetStats", output_name="evaluation", path="evaluation.json")
    step = ProcessingStep(name="PreprocessText", property_files=[stats], step_args=processor.run(
        code="preprocessing.py", source_dir=str(source), inputs=inputs, outputs=outputs))
    return Pipeline(name="corpus-processing-framework", steps=[step], sagemaker_session=c.session)


TRAIN = """\
import argparse, os
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--epochs", type=int, default=1)
args, _ = parser.parse_known_args()
print(f"Test set: Average loss: {1.0 / (1 + args.epochs):.4f}")
"""


def _script_trainer(c: Corpus, name: str, instance_type="ml.m5.xlarge", hyperparameters=None):
    "A ModelTrainer in script mode: a framework image, SourceCode(source_dir, entry_script) (SDK 3.x has no framework estimators)."
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, SourceCode, StoppingCondition
    c.file(f"{name}/mnist.py", TRAIN)
    c.file(f"{name}/requirements.txt", "torchvision\n")
    return ModelTrainer(
        training_image=_image("pytorch", "1.13", c, py_version="py39", instance_type=instance_type, image_scope="training")
        if not isinstance(instance_type, str) or instance_type else None,
        source_code=SourceCode(source_dir=str(c.folder / name), entry_script="mnist.py", requirements="requirements.txt"),
        compute=Compute(instance_type=instance_type, instance_count=1, volume_size_in_gb=30),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=3600),
        hyperparameters=hyperparameters or {"epochs": 1, "backend": "gloo"},
        sagemaker_session=c.session, role=c.role, base_job_name="pytorch-mnist")


@builder
def build_training_script_mode(c: Corpus):
    "ModelTrainer in script mode (source_dir + entry script + requirements), metric definitions, checkpoints, a parameter."
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import CacheConfig, TrainingStep
    from sagemaker.train.configs import CheckpointConfig, InputData
    instance_type = ParameterString(name="TrainingInstanceType", default_value="ml.m5.xlarge")
    trainer = _script_trainer(c, "script_mode", instance_type="ml.m5.xlarge")
    trainer.compute.instance_type = instance_type
    trainer = trainer.with_metric_definitions([MetricDefinition(name="average test loss",
                                                                regex="Test set: Average loss: ([0-9\\.]+)")])
    trainer = trainer.with_checkpoint_config(CheckpointConfig(s3_uri=c.s3("script-mode", "checkpoints"),
                                                              local_path="/opt/ml/checkpoints"))
    step = TrainingStep(name="TrainMnist", cache_config=CacheConfig(enable_caching=True, expire_after="P1D"),
                        step_args=trainer.train(input_data_config=[
                            InputData(channel_name="training", data_source=c.s3("mnist", "data"))]))
    return Pipeline(name="corpus-training-script-mode", parameters=[instance_type], steps=[step],
                    sagemaker_session=c.session)


@builder
def build_training_profiler(c: Corpus):
    """A training step with a ProfilerConfig and the ProfilerReport rule.

    SDK 3.x's ModelTrainer has no profiler argument (2.x's Estimator had `profiler_config=` and `rules=`), so the
    step's CreateTrainingJob arguments get the two members as 2.x wrote them, from the SDK's own
    `sagemaker.core.debugger` classes: ProfilerConfig._to_request_dict() and ProfilerRule.to_profiler_rule_config_dict().
    """
    from sagemaker.core.debugger import ProfilerConfig, ProfilerRule, rule_configs
    from sagemaker.core.debugger.debugger import get_rule_container_image_uri
    from sagemaker.core.debugger.framework_profile import FrameworkProfile
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.train.configs import InputData
    profiler = ProfilerConfig(s3_output_path=c.s3("profiler"), system_monitor_interval_millis=500,
                              framework_profile_params=FrameworkProfile(start_step=1, num_steps=2))
    rule = ProfilerRule.sagemaker(rule_configs.ProfilerReport())
    rule.image_uri = get_rule_container_image_uri(rule.name, c.region)
    rule.instance_type, rule.volume_size_in_gb = None, None

    class TrainingStepWithProfiler(TrainingStep):
        @property
        def arguments(self):
            request = super().arguments
            request["ProfilerConfig"] = profiler._to_request_dict()
            request["ProfilerRuleConfigurations"] = [rule.to_profiler_rule_config_dict()]
            return request

    trainer = _script_trainer(c, "profiler")
    step = TrainingStepWithProfiler(name="TrainWithProfiler", step_args=trainer.train(input_data_config=[
        InputData(channel_name="training", data_source=c.s3("mnist", "data"))]))
    return Pipeline(name="corpus-training-profiler", steps=[step], sagemaker_session=c.session)


# --- Tuning, Transform, Model, RegisterModel ---------------------------------------------------------------

@builder
def build_tuning(c: Corpus):
    "HyperparameterTuner on a script-mode ModelTrainer (the SDK's v3 tuning pipeline example); the top model becomes a Model."
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TuningStep
    from sagemaker.serve.model_builder import ModelBuilder
    from sagemaker.train.configs import InputData
    from sagemaker.train.tuner import HyperparameterTuner
    trainer = _script_trainer(c, "tuning")
    tuner = HyperparameterTuner(
        model_trainer=trainer, objective_metric_name="average test loss", objective_type="Minimize",
        hyperparameter_ranges={"lr": ContinuousParameter(0.001, 0.1),
                               "batch-size": CategoricalParameter([32, 64, 128, 256, 512]),
                               "epochs": IntegerParameter(1, 3)},
        metric_definitions=[{"Name": "average test loss", "Regex": "Test set: Average loss: ([0-9\\.]+)"}],
        max_jobs=3, max_parallel_jobs=2, strategy="Random", early_stopping_type="Auto")
    tuning = TuningStep(name="HPTuning", step_args=tuner.tune(
        inputs=[InputData(channel_name="training", data_source=c.s3("mnist", "data"))], wait=False))
    model = ModelBuilder(image_uri=trainer.training_image, sagemaker_session=c.session, role_arn=c.role,
                         s3_model_data_url=tuning.get_top_model_s3_uri(top_k=0, s3_bucket=c.bucket, prefix="pytorch-mnist"))
    best = ModelStep(name="CreateBestModel", step_args=model.build())
    return Pipeline(name="corpus-tuning", steps=[tuning, best], sagemaker_session=c.session)


@builder
def build_tuning_builtin_warm_start(c: Corpus):
    """Tuning built-in XGBoost with a warm start from a parent job and a completion criterion; the best model is registered.

    SDK 3.27's HyperparameterTuner.override_resource_config(instance_configs=...) stores the instance configs and never
    writes them (train/tuner.py uses `instance_configs_dict` nowhere else), so no 3.x definition has 2.x's
    HyperParameterTuningResourceConfig: the training job definition keeps its ResourceConfig."""
    from sagemaker.core.parameter import ContinuousParameter, IntegerParameter
    from sagemaker.core.shapes import (HyperParameterTuningJobWarmStartConfig, ParentHyperParameterTuningJob,
                                       TuningJobCompletionCriteria)
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TuningStep
    from sagemaker.serve.model_builder import ModelBuilder
    from sagemaker.train.configs import InputData
    from sagemaker.train.tuner import HyperparameterTuner
    trainer = _xgboost_trainer(c, c.s3("abalone", "train"), c.s3("abalone", "validation"))
    tuner = HyperparameterTuner(
        model_trainer=trainer, objective_metric_name="validation:rmse", objective_type="Minimize",
        hyperparameter_ranges={"eta": ContinuousParameter(0.1, 0.5), "max_depth": IntegerParameter(3, 10),
                               "alpha": ContinuousParameter(0, 2, scaling_type="Linear")},
        max_jobs=4, max_parallel_jobs=2, strategy="Bayesian",
        warm_start_config=HyperParameterTuningJobWarmStartConfig(
            parent_hyper_parameter_tuning_jobs=[ParentHyperParameterTuningJob(hyper_parameter_tuning_job_name="parent-job")],
            warm_start_type="IdenticalDataAndAlgorithm"),
        completion_criteria_config=TuningJobCompletionCriteria(target_objective_metric_value=0.5))
    tuning = TuningStep(name="TuneAbalone", step_args=tuner.tune(inputs=[
        InputData(channel_name="train", data_source=c.s3("abalone", "train"), content_type="text/csv"),
        InputData(channel_name="validation", data_source=c.s3("abalone", "validation"), content_type="text/csv")],
        wait=False))
    model = ModelBuilder(image_uri=_image("xgboost", "1.7-1", c), sagemaker_session=c.session, role_arn=c.role,
                         s3_model_data_url=tuning.get_top_model_s3_uri(top_k=0, s3_bucket=c.bucket, prefix="abalone-train"))
    register = ModelStep(name="RegisterBestModel", step_args=model.register(
        model_package_group_name="AbaloneTuned", content_types=["text/csv"], response_types=["text/csv"],
        inference_instances=["ml.m5.large"], transform_instances=["ml.m5.large"], approval_status="Approved"))
    return Pipeline(name="corpus-tuning-warm-start", steps=[tuning, register], sagemaker_session=c.session)


@builder
def build_processing_pyspark(c: Corpus):
    "PySparkProcessor (sagemaker.core.spark) with a submitted app, py files, a Spark configuration and a history log."
    from sagemaker.core.spark.processing import PySparkProcessor
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep
    app = c.file("pyspark/preprocess.py", "from pyspark.sql import SparkSession\nSparkSession.builder.getOrCreate()\n")
    helper = c.file("pyspark/helpers.py", "VALUE = 1\n")
    processor = PySparkProcessor(base_job_name="sm-spark", framework_version="3.3", role=c.role, instance_count=2,
                                 instance_type="ml.m5.xlarge", max_runtime_in_seconds=1200, sagemaker_session=c.session)
    step = ProcessingStep(name="SparkPreprocess", step_args=processor.run(
        submit_app=str(app), submit_py_files=[str(helper)], arguments=["--input", c.s3("spark", "in"),
                                                                        "--output", c.s3("spark", "out")],
        spark_event_logs_s3_uri=c.s3("spark", "events"),
        configuration=[{"Classification": "spark-defaults", "Properties": {"spark.executor.memory": "2g"}}]))
    return Pipeline(name="corpus-processing-pyspark", steps=[step], sagemaker_session=c.session)


@builder
def build_transform(c: Corpus):
    "Train built-in XGBoost, create its Model, then a batch TransformStep on the model's name (the abalone example)."
    from sagemaker.core.transformer import Transformer
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep, TransformStep
    from sagemaker.serve.model_builder import ModelBuilder
    batch_data = ParameterString(name="BatchData", default_value=c.s3("abalone", "batch"))
    trainer = _xgboost_trainer(c, c.s3("abalone", "train"))
    train = TrainingStep(name="TrainAbaloneModel", step_args=trainer.train())
    model = ModelBuilder(s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
                         image_uri=_image("xgboost", "1.7-1", c), sagemaker_session=c.session, role_arn=c.role)
    create = ModelStep(name="CreateAbaloneModel", step_args=model.build())
    transformer = Transformer(model_name=create.properties.ModelName, instance_type="ml.m5.xlarge", instance_count=1,
                              output_path=c.s3("abalone", "transform"), accept="text/csv", assemble_with="Line",
                              strategy="MultiRecord", sagemaker_session=c.session)
    transform = TransformStep(name="AbaloneTransform", step_args=transformer.transform(
        data=batch_data, content_type="text/csv", split_type="Line", input_filter="$[1:]", join_source="Input",
        output_filter="$[0,-1]"))
    return Pipeline(name="corpus-transform", parameters=[batch_data], steps=[train, create, transform],
                    sagemaker_session=c.session)


@builder
def build_checks_and_register(c: Corpus):
    """QualityCheck (data and model quality) and ClarifyCheck (data bias, model bias, explainability) steps, then a
    RegisterModel with ModelMetrics and DriftCheckBaselines from their properties, as AWS's example
    sagemaker-pipelines/tabular/model-monitor-clarify-pipelines writes it."""
    from sagemaker.core.clarify import BiasConfig, DataConfig, ModelConfig, ModelPredictedLabelConfig, SHAPConfig
    from sagemaker.core.drift_check_baselines import DriftCheckBaselines
    from sagemaker.core.model_metrics import FileSource, MetricsSource, ModelMetrics
    from sagemaker.core.model_monitor.dataset_format import DatasetFormat
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterBoolean, ParameterString
    from sagemaker.mlops.workflow.check_job_config import CheckJobConfig
    from sagemaker.mlops.workflow.clarify_check_step import (ClarifyCheckStep, DataBiasCheckConfig, ModelBiasCheckConfig,
                                                             ModelExplainabilityCheckConfig)
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.quality_check_step import (DataQualityCheckConfig, ModelQualityCheckConfig,
                                                             QualityCheckStep)
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.serve.model_builder import ModelBuilder
    group = ParameterString(name="ModelPackageGroupName", default_value="AbaloneCheckGroup")
    skip = {kind: ParameterBoolean(name=f"SkipCheck{kind}", default_value=False) for kind in
            ("DataQuality", "ModelQuality", "DataBias", "ModelBias", "ModelExplainability")}
    register_new = ParameterBoolean(name="RegisterNewBaselineDataQuality", default_value=False)
    # AWS's example defaults these to "", which StartPipelineExecution refuses ("string \"\" is too short (length: 0,
    # required minimum: 1)", aws/sagemaker-python-sdk#4016): a baseline of an earlier run instead
    supplied_statistics = ParameterString(name="DataQualitySuppliedStatistics",
                                          default_value=c.s3("baselines", "statistics.json"))
    supplied_constraints = ParameterString(name="DataQualitySuppliedConstraints",
                                           default_value=c.s3("baselines", "constraints.json"))
    train_uri, test_uri = c.s3("abalone", "train"), c.s3("abalone", "test")
    check_job = CheckJobConfig(role=c.role, instance_count=1, instance_type="ml.c5.xlarge", volume_size_in_gb=120,
                               sagemaker_session=c.session)

    def output(kind):
        return Join(on="/", values=["s3:/", c.bucket, "checks", ExecutionVariables.PIPELINE_EXECUTION_ID, kind])

    data_quality = QualityCheckStep(
        name="DataQualityCheckStep", skip_check=skip["DataQuality"], register_new_baseline=register_new,
        quality_check_config=DataQualityCheckConfig(
            baseline_dataset=train_uri, dataset_format=DatasetFormat.csv(header=False, output_columns_position="START"),
            output_s3_uri=output("dataqualitycheckstep")),
        check_job_config=check_job, supplied_baseline_statistics=supplied_statistics,
        supplied_baseline_constraints=supplied_constraints, model_package_group_name=group)
    trainer = _xgboost_trainer(c, train_uri)
    train = TrainingStep(name="TrainAbaloneModel", step_args=trainer.train(), depends_on=[data_quality])
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts
    model = ModelBuilder(s3_model_data_url=model_data, image_uri=_image("xgboost", "1.7-1", c),
                         sagemaker_session=c.session, role_arn=c.role)
    create = ModelStep(name="CreateAbaloneModel", step_args=model.build())
    model_quality = QualityCheckStep(
        name="ModelQualityCheckStep", skip_check=skip["ModelQuality"], register_new_baseline=False,
        quality_check_config=ModelQualityCheckConfig(
            baseline_dataset=test_uri, dataset_format=DatasetFormat.csv(header=False),
            output_s3_uri=output("modelqualitycheckstep"), problem_type="Regression",
            inference_attribute="_c0", ground_truth_attribute="_c1"),
        check_job_config=check_job, model_package_group_name=group, depends_on=[create])
    data_config = DataConfig(s3_data_input_path=train_uri, s3_output_path=output("databiascheckstep"), label=0,
                             dataset_type="text/csv",
                             s3_analysis_config_output_path=c.s3("checks", "databiascheckstep", "analysis_cfg"))
    bias_config = BiasConfig(label_values_or_threshold=[15.0], facet_name=[8], facet_values_or_threshold=[[0.5]])
    data_bias_config = DataBiasCheckConfig(data_config=data_config, data_bias_config=bias_config)
    data_bias = ClarifyCheckStep(
        name="DataBiasCheckStep", clarify_check_config=data_bias_config, check_job_config=check_job,
        skip_check=skip["DataBias"], register_new_baseline=False, model_package_group_name=group)
    model_config = ModelConfig(model_name=create.properties.ModelName, instance_count=1, instance_type="ml.m5.xlarge")
    model_bias_config = ModelBiasCheckConfig(
        data_config=DataConfig(s3_data_input_path=train_uri, s3_output_path=output("modelbiascheckstep"), label=0,
                               dataset_type="text/csv",
                               s3_analysis_config_output_path=c.s3("checks", "modelbiascheckstep", "analysis_cfg")),
        data_bias_config=bias_config, model_config=model_config,
        model_predicted_label_config=ModelPredictedLabelConfig())
    model_bias = ClarifyCheckStep(
        name="ModelBiasCheckStep", clarify_check_config=model_bias_config, check_job_config=check_job,
        skip_check=skip["ModelBias"], register_new_baseline=False, model_package_group_name=group)
    explain_config = ModelExplainabilityCheckConfig(
        data_config=DataConfig(s3_data_input_path=train_uri, s3_output_path=output("modelexplainabilitycheckstep"),
                               label=0, dataset_type="text/csv",
                               s3_analysis_config_output_path=c.s3("checks", "explainability", "analysis_cfg")),
        model_config=model_config, explainability_config=SHAPConfig(baseline=[[0.5] * 8], num_samples=10, agg_method="mean_abs"))
    explain = ClarifyCheckStep(
        name="ModelExplainabilityCheckStep", clarify_check_config=explain_config, check_job_config=check_job,
        skip_check=skip["ModelExplainability"], register_new_baseline=False, model_package_group_name=group)

    def json_source(uri):
        return MetricsSource(s3_uri=uri, content_type="application/json")

    metrics = ModelMetrics(
        model_data_statistics=json_source(data_quality.properties.CalculatedBaselineStatistics),
        model_data_constraints=json_source(data_quality.properties.CalculatedBaselineConstraints),
        model_statistics=json_source(model_quality.properties.CalculatedBaselineStatistics),
        model_constraints=json_source(model_quality.properties.CalculatedBaselineConstraints),
        bias_pre_training=json_source(data_bias.properties.CalculatedBaselineConstraints),
        bias_post_training=json_source(model_bias.properties.CalculatedBaselineConstraints),
        explainability=json_source(explain.properties.CalculatedBaselineConstraints))
    baselines = DriftCheckBaselines(
        model_data_statistics=json_source(data_quality.properties.BaselineUsedForDriftCheckStatistics),
        model_data_constraints=json_source(data_quality.properties.BaselineUsedForDriftCheckConstraints),
        model_statistics=json_source(model_quality.properties.BaselineUsedForDriftCheckStatistics),
        model_constraints=json_source(model_quality.properties.BaselineUsedForDriftCheckConstraints),
        bias_pre_training_constraints=json_source(data_bias.properties.BaselineUsedForDriftCheckConstraints),
        bias_post_training_constraints=json_source(model_bias.properties.BaselineUsedForDriftCheckConstraints),
        bias_config_file=FileSource(s3_uri=model_bias_config.monitoring_analysis_config_uri, content_type="application/json"),
        explainability_constraints=json_source(explain.properties.BaselineUsedForDriftCheckConstraints),
        explainability_config_file=FileSource(s3_uri=explain_config.monitoring_analysis_config_uri,
                                              content_type="application/json"))
    register = ModelStep(name="RegisterAbaloneModel", step_args=model.register(
        model_package_group_name=group, content_types=["text/csv"], response_types=["text/csv"],
        inference_instances=["ml.t2.medium", "ml.m5.large"], transform_instances=["ml.m5.large"],
        approval_status="PendingManualApproval", model_metrics=metrics, drift_check_baselines=baselines))
    return Pipeline(name="corpus-checks-and-register",
                    parameters=[group, *skip.values(), register_new, supplied_statistics, supplied_constraints],
                    steps=[data_quality, train, create, model_quality, data_bias, model_bias, explain, register],
                    sagemaker_session=c.session)


@builder
def build_register_sklearn_model(c: Corpus):
    """A model.tar.gz at hand (no training step), created and registered with the SKLearn image by ModelStep (ModelBuilder
    build and register), with ModelMetrics and DriftCheckBaselines given as URIs: every step of it runs locally."""
    from sagemaker.core.drift_check_baselines import DriftCheckBaselines
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.serve.model_builder import ModelBuilder
    group = ParameterString(name="ModelPackageGroupName", default_value="SKLearnModelGroup")
    model_data = ParameterString(name="ModelDataUrl", default_value=c.s3("sklearn", "model.tar.gz"))

    def json_source(*parts):
        return MetricsSource(s3_uri=c.s3("sklearn", *parts), content_type="application/json")

    model = ModelBuilder(s3_model_data_url=model_data, sagemaker_session=c.session, role_arn=c.role,
                         image_uri=_image("sklearn", "1.2-1", c, py_version="py3", instance_type="ml.m5.large"))
    create = ModelStep(name="CreateSKLearnModel", step_args=model.build())
    register = ModelStep(name="RegisterSKLearnModel", step_args=model.register(
        model_package_group_name=group, content_types=["text/csv"], response_types=["text/csv"],
        inference_instances=["ml.m5.large"], transform_instances=["ml.m5.large"], approval_status="Approved",
        model_metrics=ModelMetrics(model_statistics=json_source("evaluation.json"),
                                   model_data_statistics=json_source("statistics.json"),
                                   model_data_constraints=json_source("constraints.json")),
        drift_check_baselines=DriftCheckBaselines(model_data_statistics=json_source("statistics.json"),
                                                  model_data_constraints=json_source("constraints.json"))))
    return Pipeline(name="corpus-register-sklearn-model", parameters=[group, model_data], steps=[create, register],
                    sagemaker_session=c.session)


# --- NotebookJobStep, @step ----------------------------------------------------------------------------------

NOTEBOOK = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [],
                       "source": ["alpha = 0.1\n"]},
                      {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                       "source": ["print(alpha)\n"]}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


@builder
def build_notebook_job(c: Corpus):
    "Two NotebookJobSteps (the SageMaker Distribution image, parameters, a dependency on the first one's output)."
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.notebook_job_step import NotebookJobStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    notebook = c.file("notebook_job/analysis.ipynb", json.dumps(NOTEBOOK))
    c.file("notebook_job/helpers.py", "VALUE = 1\n")
    c.file("notebook_job/init.sh", "#!/bin/bash\necho ready\n")
    alpha = ParameterString(name="Alpha", default_value="0.5")
    image = f"885854791233.dkr.ecr.{c.region}.amazonaws.com/sagemaker-distribution-prod:1-cpu"
    first = NotebookJobStep(
        name="AnalyseData", input_notebook=str(notebook), image_uri=image, kernel_name="python3", role=c.role,
        s3_root_uri=c.s3("notebook-jobs"), parameters={"alpha": alpha}, environment_variables={"STAGE": "dev"},
        initialization_script=str(c.folder / "notebook_job" / "init.sh"),
        additional_dependencies=[str(c.folder / "notebook_job" / "helpers.py")], instance_type="ml.m5.large")
    second = NotebookJobStep(
        name="Report", input_notebook=str(notebook), image_uri=image, kernel_name="python3", role=c.role,
        s3_root_uri=c.s3("notebook-jobs"), parameters={"previous": first.properties.OutputNotebookName, "job": first.properties.ComputingJobName},
        depends_on=[first])
    return Pipeline(name="corpus-notebook-job", parameters=[alpha], steps=[first, second], sagemaker_session=c.session)


@builder
def build_step_decorator(c: Corpus):
    "@step functions (the SDK's integ test_step_decorator): one's result feeds another and a condition."
    from sagemaker.core.workflow.conditions import ConditionLessThan
    from sagemaker.core.workflow.parameters import ParameterInteger
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.function_step import step
    from sagemaker.mlops.workflow.pipeline import Pipeline
    image = f"885854791233.dkr.ecr.{c.region}.amazonaws.com/sagemaker-distribution-prod:1-cpu"
    upper = ParameterInteger(name="Upper", default_value=100)

    @step(name="generate", role=c.role, instance_type="ml.m5.large", image_uri=image, keep_alive_period_in_seconds=300)
    def generate(bound):
        "a number below `bound`"
        return bound // 2

    @step(name="square", role=c.role, instance_type="ml.m5.large", image_uri=image)
    def square(value):
        return value * value

    generated = generate(upper)
    squared = square(generated)
    check = ConditionStep(name="SmallEnough", conditions=[ConditionLessThan(left=squared, right=10000)],
                          if_steps=[], else_steps=[FailStep(name="TooLarge", error_message="the square is too large")])
    return Pipeline(name="corpus-step-decorator", parameters=[upper], steps=[generated, squared, check],
                    sagemaker_session=c.session)


# --- pipeline-level configuration ----------------------------------------------------------------------------

@builder
def build_experiment_config(c: Corpus):
    """A PipelineExperimentConfig with a parameter and an execution variable, a retry policy on a job step.

    ParallelismConfiguration is not part of a definition: the SDK sends it as a member of the CreatePipeline,
    UpdatePipeline and StartPipelineExecution requests (Pipeline.create(parallelism_config=...),
    sagemaker-mlops/src/sagemaker/mlops/workflow/pipeline.py `_create_args`), so no definition can hold it."""
    from sagemaker.core.processing import Processor
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.pipeline_experiment_config import PipelineExperimentConfig
    from sagemaker.mlops.workflow.retry import (SageMakerJobExceptionTypeEnum, SageMakerJobStepRetryPolicy,
                                                 StepExceptionTypeEnum, StepRetryPolicy)
    from sagemaker.mlops.workflow.steps import ProcessingStep
    experiment = ParameterString(name="ExperimentName", default_value="abalone-experiments")
    processor = Processor(image_uri=_image("sklearn", "1.2-1", c, py_version="py3", instance_type="ml.m5.xlarge"),
                          role=c.role, instance_count=1, instance_type="ml.m5.xlarge",
                          entrypoint=["python3", "-c", "print('hello')"], sagemaker_session=c.session)
    step = ProcessingStep(name="Hello", step_args=processor.run(), retry_policies=[
        StepRetryPolicy(exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
                        interval_seconds=1, backoff_rate=2.0, max_attempts=3),
        SageMakerJobStepRetryPolicy(exception_types=[SageMakerJobExceptionTypeEnum.CAPACITY_ERROR],
                                    interval_seconds=60, expire_after_mins=120)])
    return Pipeline(name="corpus-experiment-config", parameters=[experiment], steps=[step], sagemaker_session=c.session,
                    pipeline_experiment_config=PipelineExperimentConfig(experiment, ExecutionVariables.PIPELINE_EXECUTION_ID))


@builder
def build_mlflow_config(c: Corpus):
    "A pipeline-level MlflowConfig (SDK 3.x: Pipeline(mlflow_config=...), sagemaker-mlops tests/unit/workflow/test_pipeline_mlflow_config.py)."
    from sagemaker.core.shapes import MlflowConfig
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep
    experiment = ParameterString(name="MlflowExperiment", default_value="abalone")
    trainer = _xgboost_trainer(c, c.s3("abalone", "train"))
    return Pipeline(name="corpus-mlflow-config", parameters=[experiment], sagemaker_session=c.session,
                    steps=[TrainingStep(name="TrainAbaloneModel", step_args=trainer.train())],
                    mlflow_config=MlflowConfig(
                        mlflow_resource_arn=f"arn:aws:sagemaker:{c.region}:123456789012:mlflow-tracking-server/corpus",
                        mlflow_experiment_name=experiment))


@builder
def build_conditions_run_locally(c: Corpus):
    """Every ConditionTypeEnum member on parameters only, then Fail steps: nothing here needs a job, so the local engine
    runs it (the Fail step it reaches ends the execution as Failed)."""
    from sagemaker.core.workflow.conditions import (ConditionEquals, ConditionGreaterThan, ConditionGreaterThanOrEqualTo,
                                                    ConditionIn, ConditionLessThan, ConditionLessThanOrEqualTo,
                                                    ConditionNot, ConditionOr)
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterBoolean, ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    threshold = ParameterFloat(name="Threshold", default_value=0.5)
    score = ParameterFloat(name="Score", default_value=0.25)
    count = ParameterInteger(name="Count", default_value=3)
    stage = ParameterString(name="Stage", default_value="dev", enum_values=["dev", "prod"])
    strict = ParameterBoolean(name="Strict", default_value=False)
    conditions = [ConditionEquals(left=strict, right=False), ConditionGreaterThan(left=threshold, right=score),
                  ConditionGreaterThanOrEqualTo(left=count, right=3), ConditionLessThan(left=score, right=threshold),
                  ConditionLessThanOrEqualTo(left=count, right=10), ConditionIn(value=stage, in_values=["dev", "prod"]),
                  ConditionNot(expression=ConditionEquals(left=stage, right="test")),
                  ConditionOr(conditions=[ConditionEquals(left=count, right=3), ConditionGreaterThan(left=score, right=1.0)])]
    passed = FailStep(name="AllConditionsHold", error_message=Join(on=" ", values=[
        "every condition held for stage", stage, "in", ExecutionVariables.PIPELINE_EXECUTION_ID]))
    failed = FailStep(name="SomeConditionFailed", error_message=Join(on="", values=["score ", score, " vs ", threshold]))
    check = ConditionStep(name="CheckEveryType", conditions=conditions, if_steps=[passed], else_steps=[failed])
    return Pipeline(name="corpus-conditions-run-locally", parameters=[threshold, score, count, stage, strict],
                    steps=[check], sagemaker_session=c.session)


# --- The abalone pipeline, end to end -----------------------------------------------------------------------

ABALONE = Path(__file__).parent / "abalone"  # preprocess.py and evaluate.py, the two scripts of the pipeline
ABALONE_INPUT = ("abalone", "input", "abalone-dataset.csv")  # where the pipeline's InputData points, under the bucket
# The images' versions are those whose framework release mlops[local] installs (xgboost-cpu 3.2, scikit-learn 1.9), so
# that this Python runs their jobs (mlops.engine.executors.framework.this_python_matches) and no environment is made
ABALONE_IMAGE_VERSION = "3.2-0"  # SageMaker's XGBoost 3.2-0: xgboost 3.2
ABALONE_SKLEARN_VERSION = "1.9-0"  # aws/sagemaker-scikit-learn-container 1.9-0: scikit-learn 1.9.0


def abalone_dataset(rows: int = 240, seed: int = 0):
    """A small abalone-like table in the UCI file's layout (sex, seven measurements, rings; no header), rings growing
    with the shell's size and weight, so that a model can learn them."""
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(seed)
    sex = rng.choice(["M", "F", "I"], size=rows)
    length = rng.uniform(0.1, 0.8, rows)
    diameter = length * rng.uniform(0.75, 0.85, rows)
    height = length * rng.uniform(0.3, 0.4, rows)
    whole = 2.5 * length ** 3 * rng.uniform(0.8, 1.2, rows)
    rings = np.round(3 + 14 * length + 4 * whole + np.where(sex == "I", -2, 0) + rng.normal(0, 1.0, rows)).clip(1)
    return pd.DataFrame({"sex": sex, "length": length.round(3), "diameter": diameter.round(3), "height": height.round(3),
                         "whole_weight": whole.round(4), "shucked_weight": (whole * 0.43).round(4),
                         "viscera_weight": (whole * 0.22).round(4), "shell_weight": (whole * 0.29).round(4),
                         "rings": rings.astype(int)})


@builder
def build_abalone_end_to_end(c: Corpus):
    """The abalone pipeline of aws/amazon-sagemaker-examples, ml_ops/sm-pipelines_preprocess_train_evaluate_batch_transform
    (sm-pipelines_preprocess_train_evaluate_batch_transform.ipynb), in SDK 3.x: SKLearn preprocessing (a ScriptProcessor
    with the sklearn image: 3.x has no SKLearnProcessor) -> built-in XGBoost training -> an evaluation ScriptProcessor
    in the XGBoost image writing evaluation.json (a PropertyFile) -> ConditionLessThanOrEqualTo on JsonGet of the mse ->
    RegisterModel (with ModelMetrics), CreateModel and a Transform of that model; else a Fail step.

    Where 3.x differs from the notebook (2.x): ModelStep with ModelBuilder.build()/.register() for Model.create() and
    Model.register(); ModelTrainer for Estimator; ProcessingInput/ProcessingOutput are sagemaker.core.shapes. The XGBoost
    image is 3.2-0 for training and evaluation (the notebook's 1.0-1 carries xgboost 1.0), and the transform reads the
    `batch` output of the preprocessing (the notebook downloads a ready batch file); the sklearn image is 1.9-0 (the
    notebook's SKLearnProcessor is 0.23-1)."""
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.processing import ScriptProcessor
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    from sagemaker.core.transformer import Transformer
    from sagemaker.core.workflow.conditions import ConditionLessThanOrEqualTo
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep, TrainingStep, TransformStep
    from sagemaker.serve.model_builder import ModelBuilder
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, InputData

    processing_instance_count = ParameterInteger(name="ProcessingInstanceCount", default_value=1)
    instance_type = ParameterString(name="TrainingInstanceType", default_value="ml.m5.xlarge")
    model_approval_status = ParameterString(name="ModelApprovalStatus", default_value="PendingManualApproval")
    input_data = ParameterString(name="InputData", default_value=c.s3(*ABALONE_INPUT))
    mse_threshold = ParameterFloat(name="MseThreshold", default_value=6.0)

    def data_in(name, source, destination):
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=source, local_path=destination, s3_data_type="S3Prefix", s3_input_mode="File"))

    def data_out(name):
        return ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
            s3_uri=c.s3("abalone", name), local_path=f"/opt/ml/processing/{name}", s3_upload_mode="EndOfJob"))

    sklearn_processor = ScriptProcessor(
        image_uri=_image("sklearn", ABALONE_SKLEARN_VERSION, c, py_version="py3", instance_type="ml.m5.xlarge"),
        command=["python3"], instance_type="ml.m5.xlarge", instance_count=processing_instance_count,
        base_job_name="sklearn-abalone-process",
        role=c.role, sagemaker_session=c.session)
    step_process = ProcessingStep(name="AbaloneProcess", step_args=sklearn_processor.run(
        inputs=[data_in("input", input_data, "/opt/ml/processing/input")],
        outputs=[data_out(name) for name in ("train", "validation", "test", "batch")],
        code=str(ABALONE / "preprocess.py")))

    def output_of(name):
        return step_process.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri

    image_uri = _image("xgboost", ABALONE_IMAGE_VERSION, c)
    xgb_train = ModelTrainer(
        training_image=image_uri, compute=Compute(instance_type=instance_type, instance_count=1),
        base_job_name="abalone-train", role=c.role, sagemaker_session=c.session,
        hyperparameters={"objective": "reg:squarederror", "num_round": 50, "max_depth": 5, "eta": 0.2, "gamma": 4,
                         "min_child_weight": 6, "subsample": 0.7})
    step_train = TrainingStep(name="AbaloneTrain", step_args=xgb_train.train(input_data_config=[
        InputData(channel_name="train", data_source=output_of("train"), content_type="text/csv"),
        InputData(channel_name="validation", data_source=output_of("validation"), content_type="text/csv")]))

    script_eval = ScriptProcessor(
        image_uri=image_uri, command=["python3"], instance_type="ml.m5.xlarge", instance_count=1,
        base_job_name="script-abalone-eval", role=c.role, sagemaker_session=c.session)
    evaluation_report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    step_eval = ProcessingStep(name="AbaloneEval", property_files=[evaluation_report], step_args=script_eval.run(
        inputs=[data_in("model", step_train.properties.ModelArtifacts.S3ModelArtifacts, "/opt/ml/processing/model"),
                data_in("test", output_of("test"), "/opt/ml/processing/test")],
        outputs=[data_out("evaluation")], code=str(ABALONE / "evaluate.py")))

    model = ModelBuilder(s3_model_data_url=step_train.properties.ModelArtifacts.S3ModelArtifacts, image_uri=image_uri,
                         sagemaker_session=c.session, role_arn=c.role)
    step_create_model = ModelStep(name="AbaloneCreateModel", step_args=model.build())
    transformer = Transformer(model_name=step_create_model.properties.ModelName, instance_type="ml.m5.xlarge",
                              instance_count=1, output_path=c.s3("abalone", "transform"), accept="text/csv",
                              assemble_with="Line", sagemaker_session=c.session)
    step_transform = TransformStep(name="AbaloneTransform", step_args=transformer.transform(
        data=output_of("batch"), content_type="text/csv", split_type="Line"))
    model_metrics = ModelMetrics(model_statistics=MetricsSource(
        s3_uri=c.s3("abalone", "evaluation", "evaluation.json"), content_type="application/json"))
    step_register = ModelStep(name="AbaloneRegisterModel", step_args=model.register(
        content_types=["text/csv"], response_types=["text/csv"], inference_instances=["ml.t2.medium", "ml.m5.xlarge"],
        transform_instances=["ml.m5.xlarge"], model_package_group_name="AbaloneModelPackageGroupName",
        approval_status=model_approval_status, model_metrics=model_metrics))
    step_fail = FailStep(name="AbaloneMSEFail",
                         error_message=Join(on=" ", values=["Execution failed due to MSE >", mse_threshold]))
    cond_lte = ConditionLessThanOrEqualTo(left=JsonGet(step_name=step_eval.name, property_file=evaluation_report,
                                                       json_path="regression_metrics.mse.value"), right=mse_threshold)
    step_cond = ConditionStep(name="AbaloneMSECond", conditions=[cond_lte],
                              if_steps=[step_register, step_create_model, step_transform], else_steps=[step_fail])
    return Pipeline(name="AbalonePipeline", parameters=[processing_instance_count, instance_type, model_approval_status,
                                                        input_data, mse_threshold],
                    steps=[step_process, step_train, step_eval, step_cond], sagemaker_session=c.session)


def build_into_store(name: str, store: Path) -> dict:
    "The definition of the builder `name`, built offline, with what the SDK uploaded meanwhile copied into the local store."
    with tempfile.TemporaryDirectory(prefix="corpus-") as folder:
        return build_with_uploads(lambda session: BUILDERS[name](Corpus(session=session, folder=Path(folder))), store)


# --- building ----------------------------------------------------------------------------------------------

def build_corpus(names: list[str] | None = None) -> dict[str, dict]:
    "Name → definition (parsed JSON) of every registered builder (or of `names`), built offline."
    import logging
    import warnings
    from mlops.offline import offline_aws, pipeline_session
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the SDK narrates every default it applies
    try:
        with offline_aws(REGION), tempfile.TemporaryDirectory(prefix="corpus-") as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import boto3
            boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)  # code uploads land here (moto)
            session = pipeline_session({"ArtifactBucket": BUCKET})
            corpus = Corpus(session=session, folder=Path(folder))
            return {name: json.loads(BUILDERS[name](corpus).definition()) for name in (names or BUILDERS)}
    finally:
        logging.disable(disabled)


def build_with_uploads(make: Callable[[object], object], store: Path, bucket: str = BUCKET, region: str = REGION) -> dict:
    """The definition of the Pipeline `make(session)` builds offline (mlops.offline), and what the SDK uploaded to (moto's)
    S3 while building it (scripts, sourcedir.tar.gz, the ModelTrainer's code and sm_drivers) copied into the local store
    `store`, where `mlops run` finds it as SageMaker finds it in S3."""
    import logging
    import warnings
    from mlops.offline import offline_aws, pipeline_session, uploads_to_store
    logging.disable(logging.WARNING)
    try:
        with offline_aws(region), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import boto3
            s3 = boto3.client("s3", region_name=region)
            s3.create_bucket(Bucket=bucket)
            definition = json.loads(make(pipeline_session({"ArtifactBucket": bucket})).definition())
            uploads_to_store(store, bucket, region)
    finally:
        logging.disable(logging.NOTSET)
    return definition


def write_corpus(definitions: dict[str, dict], folder: Path) -> list[Path]:
    "Each definition as `folder/<name>.json`."
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, definition in definitions.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(definition, indent=2) + "\n")
        paths.append(path)
    return paths


def validation_report(definitions: dict[str, dict]) -> str:
    "What `mlops validate` says of each definition (each should be nothing), then the same problems grouped by kind."
    import re
    from collections import defaultdict
    from mlops.definition.validate import validate_definition
    lines, kinds = ["What mlops.definition.validate.validate_definition says of each definition the SDK built (every "
                    "check: schema, api, semantic, deepar, service); each line is a false positive.", ""], defaultdict(list)
    for name, definition in definitions.items():
        errors = validate_definition(definition)
        lines.append(f"== {name}: {len(errors)} error(s)")
        for error in errors:
            lines.append(f"  {error}")
            pointer = re.sub(r"/\d+", "/N", error.pointer)  # the same member at every index is one kind
            message = re.sub(r"\{.*\}", "{...}", error.message)
            kinds[(error.check, pointer, message[:200])].append(name)
    lines.append("")
    lines.append(f"== grouped: {len(kinds)} kind(s) of error [check] pointer: message <- definitions")
    for (check, pointer, message), names in sorted(kinds.items(), key=lambda item: (-len(set(item[1])), item[0])):
        lines.append(f"[{check}] {pointer}: {message}\n    <- {', '.join(sorted(set(names)))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python tests/corpus/sdk_pipelines.py FOLDER: the definitions and the validator's report
    import sys
    import time
    out = Path(sys.argv[1])
    started = time.perf_counter()
    built = build_corpus()
    print(f"built {len(built)} definitions in {time.perf_counter() - started:.1f} s")
    write_corpus(built, out)
    (out / "false-positives.txt").write_text(validation_report(built))
    print(f"wrote {out}/<name>.json and {out}/false-positives.txt")
