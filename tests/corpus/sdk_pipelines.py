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
  PropertyFile evaluation.json, ConditionLessThanOrEqualTo on JsonGet, RegisterModel with ModelMetrics).
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


def _processing_io(c: Corpus, prefix: str, outputs=("train", "validation", "test")):
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    inputs = [ProcessingInput(input_name="input-1", s3_input=ProcessingS3Input(
        s3_uri=c.s3(prefix, "input", "abalone.csv"), local_path="/opt/ml/processing/input", s3_data_type="S3Prefix",
        s3_input_mode="File", s3_data_distribution_type="ShardedByS3Key"))]
    outs = [ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
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
    inputs, outputs = _processing_io(c, "abalone", ("train", "validation", "test", "evaluation"))
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
    lines, kinds = [], defaultdict(list)
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
