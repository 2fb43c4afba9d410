"""The production stack of `templates/cloudformation.yaml`: execution events to SNS and CloudWatch Logs, and the
least-privilege execution role, checked structurally and deployed to a real `moto_server` process on 127.0.0.1.

moto's CloudFormation creates the role, its policy, the topic, the log group and its resource policy, and the rules;
it has no AWS::SageMaker::Pipeline nor AWS::SNS::TopicPolicy (it passes over them), and its EventBridge delivers to
CloudWatch Logs but not to SNS. The pipelines' bodies are checked in tests/test_render.py.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops.config import TEMPLATE_KEYS, project_root
from mlops.definition.graph import all_steps
from mlops.definition.templates import example_values
from mlops.engine.events import EXECUTION_STATUS_CHANGE, STEP_STATUS_CHANGE, EventWriter, read_events
from mlops.render import CLOUDFORMATION_FILE, TEMPLATE_FILES

TEMPLATE = project_root() / "templates" / CLOUDFORMATION_FILE
TEXT = TEMPLATE.read_text()
DEFINITIONS = {name: json.loads((TEMPLATE.parent / file).read_text()) for name, file in TEMPLATE_FILES.items()}
SAR_URL = "https://docs.aws.amazon.com/service-authorization/latest/reference/"
# the only actions the role may grant on "*": IAM has no resource to name for them (each is commented in the template)
STAR_ACTIONS = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
# the names SageMaker itself gives: the jobs Pipelines starts (pipelines-*, documented), the models of Model steps (any: AWS
# documents no form of their names), the log groups of SageMaker's jobs
SAGEMAKER_NAMES = r":((processing-job|training-job|transform-job)/pipelines-\*|model/\*|log-group:/aws/sagemaker/(Processing|Training|Transform)Jobs(:\*)?)$"
PSEUDO = {"AWS::Partition", "AWS::Region", "AWS::AccountId", "AWS::StackName", "AWS::NoValue"}
REGION = "us-east-1"


class CfnLoader(yaml.SafeLoader):
    "YAML with CloudFormation's short tags, read into the long form ({'Ref': ...}, {'Fn::Sub': ...})."


def _intrinsic(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode): value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode): value = loader.construct_sequence(node, deep=True)
    else: value = loader.construct_mapping(node, deep=True)
    return {name: value.split(".", 1) if name == "Fn::GetAtt" and isinstance(value, str) else value}


CfnLoader.add_multi_constructor("!", _intrinsic)
STACK = yaml.load(TEXT, Loader=CfnLoader)
RESOURCES, PARAMETERS = STACK["Resources"], STACK["Parameters"]
STATEMENTS = RESOURCES["ExecutionRolePolicy"]["Properties"]["PolicyDocument"]["Statement"]


def statements():
    "The role's statements, a conditional one (Fn::If) taken as its true branch."
    for s in STATEMENTS:
        yield s["Fn::If"][1] if "Fn::If" in s else s


def as_list(value):
    return value if isinstance(value, list) else [value]


def names_in(value, sub_variables=()) -> set[str]:
    "Every parameter, resource (or resource.attribute) and pseudo parameter `value` refers to."
    found = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "Ref": found.add(item)
            elif key == "Fn::GetAtt": found.add(item[0])
            elif key == "Fn::Sub":
                text, variables = (item, {}) if isinstance(item, str) else item
                found |= {v.split(".")[0] for v in re.findall(r"\$\{([^!}][^}]*)\}", text)} - set(variables)
                found |= names_in(variables)
            else: found |= names_in(item)
    elif isinstance(value, list):
        for item in value: found |= names_in(item)
    return found


def sar() -> dict:
    "cfn-lint's copy of the Service Authorization Reference: service → action (lowercase) → resource types."
    import cfnlint
    return json.loads((Path(cfnlint.__file__).parent / "data" / "AdditionalSpecs" / "Policies.json").read_text())


# --- structure ----------------------------------------------------------------------------------------------

def test_the_stack_declares_the_events_and_the_optional_role():
    types = {name: r["Type"] for name, r in RESOURCES.items()}
    assert types == {**{f"{name}Pipeline": "AWS::SageMaker::Pipeline" for name in TEMPLATE_FILES},
                     "ExecutionRole": "AWS::IAM::Role", "ExecutionRolePolicy": "AWS::IAM::Policy",
                     "EventsTopic": "AWS::SNS::Topic", "EventsTopicPolicy": "AWS::SNS::TopicPolicy",
                     "EventsLogGroup": "AWS::Logs::LogGroup", "EventsLogGroupPolicy": "AWS::Logs::ResourcePolicy",
                     "ExecutionStatusRule": "AWS::Events::Rule", "StepStatusRule": "AWS::Events::Rule"}
    # safe defaults: nothing to give but the template keys that have no default (a role and a topic are created)
    required = {name for name, p in PARAMETERS.items() if "Default" not in p}
    assert required == set(TEMPLATE_KEYS) - {"RoleArn", "KmsKeyId"}
    assert PARAMETERS["RoleArn"]["Default"] == PARAMETERS["KmsKeyId"]["Default"] == PARAMETERS["EventsTopicArn"]["Default"] == ""
    assert PARAMETERS["EventsLogRetentionDays"]["Default"] in PARAMETERS["EventsLogRetentionDays"]["AllowedValues"]
    assert STACK["Conditions"]["CreateExecutionRole"] == {"Fn::Equals": [{"Ref": "RoleArn"}, ""]}
    assert RESOURCES["ExecutionRole"]["Condition"] == RESOURCES["ExecutionRolePolicy"]["Condition"] == "CreateExecutionRole"
    assert RESOURCES["EventsTopic"]["Condition"] == RESOURCES["EventsTopicPolicy"]["Condition"] == "CreateEventsTopic"
    chosen = {"Fn::If": ["CreateExecutionRole", {"Fn::GetAtt": ["ExecutionRole", "Arn"]}, {"Ref": "RoleArn"}]}
    for name in TEMPLATE_FILES:
        properties = RESOURCES[f"{name}Pipeline"]["Properties"]
        assert properties["RoleArn"] == chosen
        body = properties["PipelineDefinition"]["PipelineDefinitionBody"]
        pieces = body["Fn::Join"][1] if "Fn::Join" in body else [body]  # joined where an empty KmsKeyId leaves a member out
        subs = [p["Fn::Sub"] for p in pieces if isinstance(p, dict) and "Fn::Sub" in p]
        assert subs and all(s[1] == {"RoleArn": chosen} for s in subs if "${RoleArn}" in (s if isinstance(s, str) else s[0]))
    assert RESOURCES["EventsLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "EventsLogRetentionDays"}


def test_every_reference_names_something_the_template_declares():
    declared = set(PARAMETERS) | set(RESOURCES) | PSEUDO
    for section in ("Resources", "Outputs", "Conditions"):
        unknown = names_in(STACK[section]) - declared
        assert not unknown, (section, unknown)
    used = {r["Condition"] for r in RESOURCES.values() if "Condition" in r} | {
        m for m in re.findall(r"!If \[(\w+)|!If\n\s+- (\w+)", TEXT) for m in m if m}
    assert used == set(STACK["Conditions"]), (used, set(STACK["Conditions"]))
    assert set(PARAMETERS) <= names_in(STACK["Resources"]) | names_in(STACK["Conditions"])  # no parameter unused


def test_the_rules_catch_both_documented_event_types_of_our_pipelines_only():
    rules = {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == "AWS::Events::Rule"}
    assert sorted(p["EventPattern"]["detail-type"][0] for p in rules.values()) == sorted([EXECUTION_STATUS_CHANGE, STEP_STATUS_CHANGE])
    topic = {"Fn::If": ["CreateEventsTopic", {"Ref": "EventsTopic"}, {"Ref": "EventsTopicArn"}]}
    for properties in rules.values():
        pattern = properties["EventPattern"]
        assert pattern["source"] == ["aws.sagemaker"] and properties["State"] == "ENABLED"
        arns = [m["equals-ignore-case"]["Fn::Sub"] for m in pattern["detail"]["pipelineArn"]]
        assert [a.rsplit("/", 1)[1] for a in arns] == list(TEMPLATE_FILES)
        targets = {t["Id"]: t["Arn"] for t in properties["Targets"]}
        assert targets["EventsTopic"] == topic and "log-group:${EventsLogGroup}" in targets["EventsLogGroup"]["Fn::Sub"]
        assert "RoleArn" not in str(properties["Targets"])  # SNS and Logs targets work by resource policy, not a role
    statement = RESOURCES["EventsTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"} and statement["Action"] == "sns:Publish"
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == [{"Fn::GetAtt": [r, "Arn"]} for r in rules]
    logs = json.loads(RESOURCES["EventsLogGroupPolicy"]["Properties"]["PolicyDocument"]["Fn::Sub"])["Statement"][0]
    assert logs["Principal"]["Service"] == ["events.amazonaws.com", "delivery.logs.amazonaws.com"]
    assert sorted(logs["Action"]) == ["logs:CreateLogStream", "logs:PutLogEvents"] and logs["Resource"] == "${EventsLogGroup.Arn}"


def test_every_role_statement_is_scoped_and_every_star_is_a_commented_exception():
    actions_of = sar()
    assert statements()
    for s in statements():
        actions, resources = as_list(s["Action"]), as_list(s["Resource"])
        assert s["Effect"] == "Allow" and s["Sid"] and "NotAction" not in s and "NotResource" not in s
        for action in actions:
            service, name = action.split(":")
            assert "*" not in action, action
            assert name.lower() in actions_of[service]["Actions"], f"{action} is not an IAM action"
        if resources == ["*"]:
            assert set(actions) <= STAR_ACTIONS, s
            for action in actions:  # IAM has nothing to name: no resource type, or a condition key scopes it instead
                service, name = action.split(":")
                assert not actions_of[service]["Actions"][name.lower()].get("Resources") or "Condition" in s, action
            continue
        for action in actions:  # a statement naming resources holds only actions that take a resource
            service, name = action.split(":")
            assert actions_of[service]["Actions"][name.lower()].get("Resources"), action
        for resource in resources:
            names = names_in(resource) - PSEUDO
            text = _sub_text(resource) if "Fn::Sub" in resource else ""
            # a parameter or a resource of the template, or a name SageMaker itself gives: the jobs and models Pipelines
            # starts (pipelines-*), the log groups of SageMaker's jobs (/aws/sagemaker/<kind>Jobs)
            assert names & (set(PARAMETERS) | set(RESOURCES)) or re.search(SAGEMAKER_NAMES, text), resource
    stars = [i for i, line in enumerate(TEXT.splitlines()) if line.strip() == 'Resource: "*"']
    assert len(stars) == sum(as_list(s["Resource"]) == ["*"] for s in statements())
    lines = TEXT.splitlines()
    for i in stars:
        comment = [line.strip() for line in lines[max(0, i - 3):i] if line.strip().startswith("#")]
        assert comment and any(SAR_URL in c for c in comment), lines[i - 3:i + 1]


def test_the_role_grants_what_the_pipelines_need_and_no_more():
    by_action = {}
    for s in statements():
        for action in as_list(s["Action"]): by_action.setdefault(action, []).append(s)
    types = {s["Type"] for d in DEFINITIONS.values() for s in all_steps(d)}
    job = {"Processing": "ProcessingJob", "Training": "TrainingJob", "Transform": "TransformJob", "Model": "Model"}
    for step_type, noun in job.items():
        assert (f"sagemaker:Create{noun}" in by_action) == (step_type in types), step_type
    # the model package group, and only it: registering, and the inference pipeline's lookup of the latest Approved version
    group = [_sub_text(r) for r in as_list(by_action["sagemaker:ListModelPackages"][0]["Resource"])]
    assert group == ["arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:model-package-group/${ModelPackageGroupName}",
                     "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:model-package/${ModelPackageGroupName}/*"]
    for action in ("sagemaker:DescribeModelPackage", "sagemaker:CreateModelPackage"):
        assert by_action[action] == by_action["sagemaker:ListModelPackages"]
    (passing,) = by_action["iam:PassRole"]
    assert passing["Resource"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    # writes only under each pipeline's prefix, and every output of the definitions is under one
    (write,) = by_action["s3:PutObject"]
    prefixes = [_sub_text(r) for r in as_list(write["Resource"])]
    assert prefixes == [f"arn:${{AWS::Partition}}:s3:::${{ArtifactBucket}}/{name}/*" for name in TEMPLATE_FILES]
    for name, definition in DEFINITIONS.items():
        outputs = re.findall(r'"(?:S3Uri|S3OutputPath)": \{"Std:Join": \{"On": "/", "Values": \["([^"]+)", "([^"]+)"', json.dumps(definition))
        written = [o for o in outputs if o[0] == "s3://{{ ArtifactBucket }}"]
        assert written and all(pipeline == name for _, pipeline in written), (name, written)
    # pulls only the processing image's repository (the DeepAR image is AWS's); KMS only when a key is given
    (pull,) = by_action["ecr:BatchGetImage"]
    assert names_in(pull["Resource"]) - PSEUDO == {"ProcessingImageUri"}
    assert not any("DeepARImageUri" in json.dumps(s) for s in statements())
    # jobs by the prefix Pipelines documents for their names; a Model step's model has no documented name: model/*
    assert _sub_text(by_action["sagemaker:CreateProcessingJob"][0]["Resource"]).endswith(":processing-job/pipelines-*")
    assert _sub_text(by_action["sagemaker:CreateModel"][0]["Resource"]).endswith(":model/*")
    # no experiment configuration, so no SageMaker Experiments action (pipelines-experiments.html: None creates none)
    assert all(d.get("PipelineExperimentConfig") is None for d in DEFINITIONS.values())
    assert not [a for a in by_action if re.match(r"sagemaker:(Create|Associate|Describe)(Experiment|Trial)", a)]
    (kms,) = [s for s in STATEMENTS if "Fn::If" in s]
    assert kms["Fn::If"][0] == "UseKmsKey" and kms["Fn::If"][1]["Resource"] == {"Ref": "KmsKeyId"}
    assert STACK["Conditions"]["UseKmsKey"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyId"}, ""]}]}


def _sub_text(value) -> str:
    return value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]


def test_cfn_lint_is_clean():
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- deployed to moto ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto(moto_server):
    "A boto3 client factory for the module's moto server (conftest's moto_server)."
    return moto_server.client


def deploy(client, name: str, **values) -> dict:
    "Create stack `name` from the template with the example values (and `values`); its resources by logical id."
    cloudformation = client("cloudformation")
    parameters = {**example_values(), **values}
    cloudformation.create_stack(StackName=name, TemplateBody=TEXT, Capabilities=["CAPABILITY_IAM"],
                                Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()])
    stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    resources = cloudformation.describe_stack_resources(StackName=name)["StackResources"]
    return {"outputs": {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]},
            "resources": {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources if "LogicalResourceId" in r}}


def test_deployed_without_a_role_the_stack_creates_the_least_privilege_role(moto):
    values = example_values()
    stack = deploy(moto, "mlops-created-role", RoleArn="")
    iam = moto("iam")
    role = iam.get_role(RoleName=stack["resources"]["ExecutionRole"])["Role"]
    assert stack["outputs"]["ExecutionRoleArn"] == role["Arn"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    (policy_name,) = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=policy_name)["PolicyDocument"]
    resolved = {s["Sid"]: s for s in policy["Statement"]}
    account = values["ProcessingImageUri"].split(".")[0]
    assert as_list(resolved["PullProcessingImage"]["Resource"]) == [
        f"arn:aws:ecr:eu-west-1:{account}:repository/mlops-processing", f"arn:aws:ecr:eu-west-1:{account}:repository/mlops-processing/*"]
    assert resolved["ReadStepNotebooks"]["Resource"] == f"arn:aws:s3:::{values['CodeLocation'][5:]}/*"
    assert resolved["ListCodeLocationBucket"]["Resource"] == f"arn:aws:s3:::{values['CodeLocation'][5:].split('/')[0]}"
    assert resolved["PassThisRoleToSageMaker"]["Resource"] == role["Arn"]
    assert resolved["UseTheKmsKey"]["Resource"] == values["KmsKeyId"]
    assert resolved["TheModelPackageGroup"]["Resource"][1].endswith(":model-package/deepar-forecast/*")
    assert "${" not in json.dumps(policy)
    # events: the created topic and the log group, kept the default retention
    topic = stack["outputs"]["EventsTopicArn"]
    assert topic in [t["TopicArn"] for t in moto("sns").list_topics()["Topics"]]
    (group,) = moto("logs").describe_log_groups(logGroupNamePrefix=stack["outputs"]["EventsLogGroupName"])["logGroups"]
    assert group["retentionInDays"] == PARAMETERS["EventsLogRetentionDays"]["Default"]
    policies = {p["policyName"]: json.loads(p["policyDocument"]) for p in moto("logs").describe_resource_policies()["resourcePolicies"]}
    assert policies["mlops-created-role-pipeline-events"]["Statement"][0]["Resource"].startswith(group["logGroupArn"])
    for rule in ("ExecutionStatusRule", "StepStatusRule"):
        targets = {t["Id"]: t["Arn"] for t in moto("events").list_targets_by_rule(Rule=stack["resources"][rule])["Targets"]}
        assert targets == {"EventsTopic": topic, "EventsLogGroup": group["logGroupArn"]}


def test_deployed_with_a_role_and_a_topic_the_stack_creates_neither(moto):
    role_arn, topic_arn = "arn:aws:iam::123456789012:role/team-sagemaker", f"arn:aws:sns:{REGION}:123456789012:team-alerts"
    before = {r["RoleName"] for r in moto("iam").list_roles()["Roles"]}
    stack = deploy(moto, "mlops-own-role", RoleArn=role_arn, EventsTopicArn=topic_arn, EventsLogRetentionDays=7, KmsKeyId="")
    assert "ExecutionRole" not in stack["resources"] and "EventsTopic" not in stack["resources"]
    assert {r["RoleName"] for r in moto("iam").list_roles()["Roles"]} == before
    assert stack["outputs"]["ExecutionRoleArn"] == role_arn and stack["outputs"]["EventsTopicArn"] == topic_arn
    (group,) = moto("logs").describe_log_groups(logGroupNamePrefix=stack["outputs"]["EventsLogGroupName"])["logGroups"]
    assert group["retentionInDays"] == 7
    targets = moto("events").list_targets_by_rule(Rule=stack["resources"]["StepStatusRule"])["Targets"]
    assert {t["Id"]: t["Arn"] for t in targets}["EventsTopic"] == topic_arn


def test_a_local_event_line_readdressed_to_the_account_reaches_the_log_group_through_the_deployed_rules(moto, tmp_path):
    "The rules' patterns, run by moto's EventBridge on lines the local engine wrote (moto cannot deliver to SNS: that target is set aside)."
    from mlops.engine.run import run_definition
    stack = deploy(moto, "mlops-events", RoleArn="")
    events, logs = moto("events"), moto("logs")
    for rule in events.list_rules()["Rules"]:  # this stack's and those the other tests deployed
        sns = [t["Id"] for t in events.list_targets_by_rule(Rule=rule["Name"])["Targets"] if ":sns:" in t["Arn"]]
        events.remove_targets(Rule=rule["Name"], Ids=sns)
    toy = {"Version": "2020-12-01", "Steps": [{"Name": "Stop", "Type": "Fail", "Arguments": {"ErrorMessage": "stop here"}}]}
    lines = {}
    for pipeline in ("DeepARTraining", "SomeoneElsesPipeline"):
        execution = run_definition(toy, pipeline=pipeline, home=tmp_path, listeners=[EventWriter(tmp_path)])
        lines[pipeline] = read_events(tmp_path / "events.jsonl", execution.id)
        assert len(lines[pipeline]) == 4
        for line in lines[pipeline]:  # as SageMaker would send it in this account: lowercase pipeline ARNs
            detail = json.dumps(line["detail"]).replace("local:000000000000", f"{REGION}:123456789012")
            detail = re.sub(r"pipeline/(\w+)", lambda m: "pipeline/" + m.group(1).lower(), detail)
            entry = {"Source": line["source"], "DetailType": line["detail-type"], "Detail": detail}
            assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0
    group = stack["outputs"]["EventsLogGroupName"]
    delivered = [json.loads(e["message"]) for s in logs.describe_log_streams(logGroupName=group)["logStreams"]
                 for e in logs.get_log_events(logGroupName=group, logStreamName=s["logStreamName"])["events"]]
    assert sorted(e["detail-type"] for e in delivered) == sorted(e["detail-type"] for e in lines["DeepARTraining"])
    assert all(e["detail"]["pipelineArn"].endswith(":pipeline/deepartraining") for e in delivered)
    assert {e["detail"].get("failureReason") for e in delivered} == {None, "stop here"}
