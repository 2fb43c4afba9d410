"""The processing image's Python environment, built as docker/Dockerfile builds it, with the step notebooks run in it.

tests/test_container_contract.py runs the entry point in the development environment, which holds everything (boto3
included), so it cannot see what the image lacks. Here a fresh virtual environment gets exactly what the Dockerfile
installs: its COPY instructions are laid out in a folder standing for the image's WORKDIR, and its RUN instructions' own
`pip` and `python` commands run there, with its ENV (Docker cannot run here). In that environment, with nothing of the
development environment on its path, the test imports every module the step notebooks import and runs ResolveModel as
the inference pipeline's container arguments say, on SageMaker's code path, against a real moto server on 127.0.0.1.

Building the environment takes minutes (pip downloads the pinned core requirements); it is cached, keyed by the
Dockerfile and the requirements files (setup.py, settings.ini, constraints.txt), so later runs take seconds. The
package's code is not in the cache: as in the image, whose WORKDIR holds the copied `mlops/` folder that
`python -m mlops.processing` imports first, each run copies the current code.
"""
import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from mlops.config import project_root
from mlops.definition.expressions import EXECUTION_VARIABLES, Context, as_text, evaluate
from mlops.definition.parameters import resolve_parameters
from test_container_contract import dockerfile_contract

pytestmark = pytest.mark.slow_first_run

ROOT = project_root()
DOCKERFILE = ROOT / "docker" / "Dockerfile"
REQUIREMENTS = ("setup.py", "settings.ini", "constraints.txt")  # what decides what pip installs
INSTALLERS = ("pip", "python")  # the commands of a RUN instruction that build the environment
CLEAN_UPS = ("rm",)  # the ones that only make the image smaller
CONTAINER = "/opt/ml/processing"
REGION = "us-east-1"


def dockerfile_steps(text: str) -> list[tuple]:
    "The Dockerfile's WORKDIR, COPY (sources, destination) and RUN (its `&&`-joined commands) instructions, in order."
    steps = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"): continue
        instruction, rest = words[0].upper(), words[1] if len(words) > 1 else ""
        if instruction == "WORKDIR": steps.append(("WORKDIR", rest.strip()))
        elif instruction == "COPY":
            paths = shlex.split(rest)
            steps.append(("COPY", paths[:-1], paths[-1]))
        elif instruction == "RUN": steps.append(("RUN", [shlex.split(c) for c in rest.split("&&")]))
    return steps


def test_the_dockerfile_steps_are_read():
    steps = dockerfile_steps("WORKDIR /opt/x\nCOPY a.txt b.txt ./\nRUN pip install --constraint c.txt \".[image]\" \\\n    && rm -rf /root/.cache\n")
    assert steps == [("WORKDIR", "/opt/x"), ("COPY", ["a.txt", "b.txt"], "./"),
                     ("RUN", [["pip", "install", "--constraint", "c.txt", ".[image]"], ["rm", "-rf", "/root/.cache"]])]
    installs = [c for s in dockerfile_steps(DOCKERFILE.read_text()) if s[0] == "RUN" for c in s[1] if c[:2] == ["pip", "install"]]
    assert installs, "the Dockerfile installs nothing with pip"


def lay_out(steps: list[tuple], root: Path) -> Path:
    "The Dockerfile's COPY instructions carried out under `root` (the image's /); its last WORKDIR there."
    workdir = root
    for step in steps:
        if step[0] == "WORKDIR":
            workdir = root / step[1].lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif step[0] == "COPY":
            sources, destination = step[1], step[2]
            target = root / destination.lstrip("/") if destination.startswith("/") else workdir / destination
            for source in sources:
                into = target / Path(source).name if destination.endswith("/") else target
                if (ROOT / source).is_dir(): shutil.copytree(ROOT / source, into, dirs_exist_ok=True)
                else:
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, into)
    return workdir


def image_env(contract: dict, venv: Path, root: Path, home: Path) -> dict:
    "The environment of the image's processes: its ENV (folders mapped under `root`), its Python first on PATH, nothing else."
    env = {k: str(root / v.lstrip("/")) if v.startswith("/opt/") else v for k, v in contract["env"].items()}
    return {**env, "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "MLOPS_FORKSERVER": "0"}


def cache_folder() -> Path:
    "Where the built environment is kept: keyed by the Dockerfile, the requirements and this Python's version."
    digest = hashlib.sha256(DOCKERFILE.read_bytes())
    for name in REQUIREMENTS: digest.update((ROOT / name).read_bytes())
    digest.update(f"python{sys.version_info[0]}.{sys.version_info[1]}".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mlops-tests" / f"image-env-{digest.hexdigest()[:16]}"


def build_image_env(tmp: Path) -> Path:
    "The virtual environment with what the Dockerfile installs (built once per cache key): its folder."
    venv = cache_folder()
    if (venv / "complete").is_file(): return venv
    shutil.rmtree(venv, ignore_errors=True)  # a build that did not finish
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    steps = dockerfile_steps(DOCKERFILE.read_text())
    workdir = lay_out(steps, tmp / "build")
    env = image_env(dockerfile_contract(DOCKERFILE.read_text()), venv, tmp / "build", tmp / "home")
    for commands in (s[1] for s in steps if s[0] == "RUN"):
        for command in commands:
            if command[0] in CLEAN_UPS: continue
            assert command[0] in INSTALLERS, f"the Dockerfile runs {command[0]!r}, which this test cannot simulate: {command}"
            result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
            assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    (venv / "complete").write_text(DOCKERFILE.read_text())
    return venv


class Image:
    "The image as a SageMaker job sees it: its environment, its WORKDIR with the current code, its ENV and ENTRYPOINT."

    def __init__(self, venv: Path, root: Path):
        text = DOCKERFILE.read_text()
        self.contract, self.venv, self.root = dockerfile_contract(text), venv, root
        self.workdir = lay_out(dockerfile_steps(text), root)
        (root / "home").mkdir(exist_ok=True)
        self.env = image_env(self.contract, venv, root, root / "home")

    def run(self, argv: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        "`argv` run in the image's WORKDIR and environment (`python` is the image's)."
        argv = [str(self.venv / "bin" / "python") if argv[0] == "python" else argv[0], *argv[1:]]
        return subprocess.run(argv, cwd=self.workdir, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    venv = build_image_env(tmp_path_factory.mktemp("image-build"))
    return Image(venv, tmp_path_factory.mktemp("image"))


# --- every step notebook's imports ------------------------------------------------------------------------

def notebook_imports(notebooks) -> dict[str, list[str]]:
    "Module → the names imported from it, of every import statement in the notebooks' code cells (inside blocks too)."
    found: dict[str, list[str]] = {}
    for notebook in notebooks:
        for cell in json.loads(Path(notebook).read_text())["cells"]:
            if cell["cell_type"] != "code": continue
            source = "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Import):
                    for alias in node.names: found.setdefault(alias.name, [])
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    found.setdefault(node.module, []).extend(a.name for a in node.names)
    return found


IMPORT_ALL = """import importlib, json, sys
failed = {}
for module, names in json.loads(sys.argv[1]).items():
    try:
        imported = importlib.import_module(module)
        for name in names:
            if not hasattr(imported, name): importlib.import_module(f"{module}.{name}")
    except Exception as e:
        failed[module] = f"{type(e).__name__}: {e}"
import mlops
print(json.dumps({"failed": failed, "mlops": mlops.__file__}))
"""


def test_every_step_notebook_imports_in_the_image(image):
    modules = notebook_imports(sorted((ROOT / "nbs" / "processing").glob("*.ipynb")))
    assert {"mlops.tracking.packages", "mlops.data.features", "pandas", "matplotlib.pyplot"} <= set(modules)
    result = image.run(["python", "-c", IMPORT_ALL, json.dumps(modules)])
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["failed"] == {}
    assert Path(report["mlops"]).is_relative_to(image.workdir)  # the code copied now, as the image imports it


# --- ResolveModel on SageMaker's code path, against moto --------------------------------------------------

@pytest.fixture(scope="module")
def moto(moto_server):
    "The URL of the module's moto server (conftest's moto_server)."
    return moto_server.url


def resolve_model_job(root: Path) -> list[str]:
    "Lay out the ResolveModel job under `root` as SageMaker does; its ContainerArguments (default parameters), mapped under `root`."
    definition = json.loads((ROOT / "templates" / "deepar-inference.pipeline.json").read_text())
    step = next(s for s in definition["Steps"] if s["Name"] == "ResolveModel")["Arguments"]
    context = Context(parameters=resolve_parameters(definition), execution={k: "execution-1" for k in EXECUTION_VARIABLES})
    arguments = [as_text(evaluate(a, context)) for a in step["AppSpecification"]["ContainerArguments"]]
    # CreateProcessingJob: "ContainerArguments and ContainerEntrypoint may not contain null or empty strings" (SDK #3758)
    assert "" not in arguments, arguments
    mapped = lambda path: str(root / path.lstrip("/"))
    for source in step["ProcessingInputs"]:
        local = Path(mapped(source["S3Input"]["LocalPath"]))
        local.mkdir(parents=True)
        if source["InputName"] == "code": shutil.copy(ROOT / "nbs" / "processing" / "resolve_model.ipynb", local)
    for output in step["ProcessingOutputConfig"]["Outputs"]:
        Path(mapped(output["S3Output"]["LocalPath"])).mkdir(parents=True)
    # what SageMaker writes into the container: /opt/ml/config/processingjobconfig.json, the job's description
    config = root / "opt" / "ml" / "config" / "processingjobconfig.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({**step, "ProcessingJobName": "pipelines-abc123def456-ResolveModel-x1y2z3",
                                  "ProcessingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:processing-job/pipelines-abc123def456-resolvemodel-x1y2z3"}))
    return [mapped(a) if a.startswith(CONTAINER) else a for a in arguments]


def test_resolve_model_runs_in_the_image_against_sagemaker(image, moto, tmp_path):
    sagemaker = boto3.client("sagemaker", endpoint_url=moto, region_name=REGION, aws_access_key_id="testing",
                             aws_secret_access_key="testing")
    definition = json.loads((ROOT / "templates" / "deepar-inference.pipeline.json").read_text())
    group = resolve_parameters(definition)["ModelPackageGroupName"]  # the default: what an execution with defaults asks
    sagemaker.create_model_package_group(ModelPackageGroupName=group)
    arns = [sagemaker.create_model_package(
        ModelPackageGroupName=group, ModelApprovalStatus=status,
        InferenceSpecification={"Containers": [{"Image": "224300973850.dkr.ecr.eu-west-1.amazonaws.com/forecasting-deepar:1",
                                                "ModelDataUrl": f"s3://b/v{i}/model.tar.gz"}],
                                "SupportedContentTypes": ["application/jsonlines"], "SupportedResponseMIMETypes": ["application/jsonlines"]},
        CustomerMetadataProperties={"feature_state_uri": f"s3://b/v{i}/state", "pipeline_execution_id": f"train-{i}"})["ModelPackageArn"]
        for i, status in ((1, "Approved"), (2, "PendingManualApproval"))]  # (moto's UpdateModelPackage drops the metadata)

    arguments = resolve_model_job(tmp_path)
    entrypoint = image.contract["entrypoint"]
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_ENDPOINT_URL_SAGEMAKER": moto,  # boto3's service-specific endpoint variable: the SageMaker API is moto's
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true",
           "MLOPS_PROCESSING_JOB_CONFIG": str(tmp_path / "opt" / "ml" / "config" / "processingjobconfig.json")}
    result = image.run([*entrypoint, *arguments], env=aws)
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = json.loads((tmp_path / "opt" / "ml" / "processing" / "output" / "model" / "model.json").read_text())
    # ModelPackageArn was left at its default (none): the latest Approved version of the group, asked of SageMaker
    assert resolved["ModelPackageArn"] == arns[0] and resolved["ModelApprovalStatus"] == "Approved"
    assert (resolved["FeatureStateUri"], resolved["ModelDataUrl"]) == ("s3://b/v1/state", "s3://b/v1/model.tar.gz")
    assert (tmp_path / "opt" / "ml" / "processing" / "output" / "report" / "resolve_model.ipynb").is_file()
