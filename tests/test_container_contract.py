"""The processing image's contract, simulated as SageMaker runs a processing job (Docker cannot run here).

SageMaker downloads each ProcessingInput to its LocalPath, creates each ProcessingOutput's LocalPath
empty and owned by root, then starts the image's ENTRYPOINT with the step's ContainerArguments as the
image's USER, in its WORKDIR (AWS: "How Amazon SageMaker Processing Runs Your Processing Container
Image"). A non-root USER cannot write those root-owned output folders (sagemaker-python-sdk #4764;
the SDK's own fix for its step decorator, PR #4325, had to add write permission as root), so every
step would fail. Here the Dockerfile is read for its USER, WORKDIR, ENV and ENTRYPOINT, the job's
folders are laid out under a temporary root exactly as the rendered FeatureEngineering step declares
them, and the entry point runs as that user.

The image's user is simulated, not switched to: this machine's Python lives where only root may read,
so the entry point always runs as root, and a non-root USER is modelled by what makes it fail on
SageMaker, that the output folders belong to someone else: they are handed to another uid and the
process loses the capabilities that let root ignore file permissions (setpriv: CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH, CAP_FOWNER), so the kernel checks owner and mode as it would for that user.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlops.config import project_root
from mlops.data.demo import write_demo_data
from mlops.definition.expressions import EXECUTION_VARIABLES, Context, as_text, evaluate
from mlops.definition.parameters import resolve_parameters

ROOT = project_root()
CONTAINER = "/opt/ml/processing"


def dockerfile_contract(text: str) -> dict:
    "USER (as a uid), WORKDIR, ENV and ENTRYPOINT of a Dockerfile's final stage, as `docker run` would apply them."
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    contract, uids = {"uid": 0, "workdir": "/", "env": {}, "entrypoint": None}, {"root": 0}
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"): continue
        instruction, rest = words[0].upper(), words[1] if len(words) > 1 else ""
        if instruction == "RUN" and (found := re.search(r"useradd\b[^&;]*?--uid\s+(\d+)[^&;]*?\s(\w[\w-]*)\s*(?:&&|;|$)", rest)):
            uids[found.group(2)] = int(found.group(1))
        elif instruction == "USER":
            name = rest.split(":")[0].strip()
            contract["uid"] = int(name) if name.isdigit() else uids[name]
        elif instruction == "WORKDIR":
            contract["workdir"] = rest.strip()
        elif instruction == "ENV":
            contract["env"].update(dict(pair.split("=", 1) for pair in shlex.split(rest) if "=" in pair))
        elif instruction == "ENTRYPOINT":
            contract["entrypoint"] = json.loads(rest)
    return contract


def test_the_dockerfile_is_read():
    contract = dockerfile_contract((ROOT / "docker" / "Dockerfile").read_text())
    assert contract["entrypoint"] == ["python", "-m", "mlops.processing"]
    assert contract["env"]["MLOPS_NOTEBOOKS_DIR"] == "/opt/mlops/notebooks"
    nonroot = dockerfile_contract("RUN useradd --create-home --uid 1000 mlops\nUSER mlops\nWORKDIR /home/mlops\n")
    assert (nonroot["uid"], nonroot["workdir"]) == (1000, "/home/mlops")


def feature_engineering_job(root: Path) -> list[str]:
    "Lay out the FeatureEngineering job under `root` as SageMaker does; its ContainerArguments, mapped under `root`."
    definition = json.loads((ROOT / "templates" / "deepar-training.pipeline.json").read_text())
    step = next(s for s in definition["Steps"] if s["Name"] == "FeatureEngineering")["Arguments"]
    context = Context(parameters=resolve_parameters(definition), execution={k: "execution-1" for k in EXECUTION_VARIABLES})
    mapped = lambda path: str(root / path.lstrip("/"))
    for source in step["ProcessingInputs"]:
        local = Path(mapped(source["S3Input"]["LocalPath"]))
        local.mkdir(parents=True)
        if source["InputName"] == "code":
            shutil.copy(ROOT / "nbs" / "processing" / "feature_engineering.ipynb", local)
        else:
            write_demo_data(local / "demo.csv", n_items=4, periods=90)
    for output in step["ProcessingOutputConfig"]["Outputs"]:  # created by root, empty, 0755
        Path(mapped(output["S3Output"]["LocalPath"])).mkdir(parents=True, mode=0o755)
    arguments = [as_text(evaluate(a, context)) for a in step["AppSpecification"]["ContainerArguments"]]
    arguments = [mapped(a) if a.startswith(CONTAINER) else a for a in arguments]
    return [a if a != "/opt/ml/processing" else mapped(a) for a in arguments]


NOT_THE_USER = 65534  # a uid that is not the image's user: the owner of the mounts when the USER is not root
DROP_ROOT_PRIVILEGES = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]

def run_as_the_image(dockerfile: str, root: Path) -> subprocess.CompletedProcess:
    "Run the FeatureEngineering job under `root` with the Dockerfile's entry point, WORKDIR, ENV and (simulated) USER."
    contract = dockerfile_contract(dockerfile)
    arguments = feature_engineering_job(root)
    if contract["uid"] != 0:  # SageMaker's root-owned mounts, seen by a non-root user: not its own
        for output in (root / CONTAINER.lstrip("/") / "output").rglob("*"):
            os.chown(output, NOT_THE_USER, NOT_THE_USER)
        os.chown(root / CONTAINER.lstrip("/") / "output", NOT_THE_USER, NOT_THE_USER)
    workdir = root / contract["workdir"].lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    notebooks = root / contract["env"]["MLOPS_NOTEBOOKS_DIR"].lstrip("/")
    shutil.copytree(ROOT / "nbs" / "processing", notebooks)
    env = {**os.environ, **contract["env"], "MLOPS_NOTEBOOKS_DIR": str(notebooks), "HOME": str(workdir)}
    entrypoint = [sys.executable if contract["entrypoint"][0] == "python" else contract["entrypoint"][0], *contract["entrypoint"][1:]]
    command = (DROP_ROOT_PRIVILEGES if contract["uid"] != 0 else []) + entrypoint + arguments
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def job_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="mlops-container-"))
    root.chmod(0o755)
    return root


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="simulating the mounts and the image's user needs root and setpriv")
def test_a_processing_job_writes_its_outputs_and_report_as_the_image_runs_it():
    root = job_root()
    try:
        result = run_as_the_image((ROOT / "docker" / "Dockerfile").read_text(), root)
        assert result.returncode == 0, result.stderr[-2000:]
        output = root / "opt" / "ml" / "processing" / "output"
        assert len((output / "train" / "train.json").read_text().splitlines()) == 4
        assert (output / "state" / "feature_state.json").is_file()
        assert (output / "report" / "feature_engineering.ipynb").is_file()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="simulating the mounts and the image's user needs root and setpriv")
def test_a_non_root_user_cannot_write_the_root_owned_outputs():
    "What today's contract guards against: the same job as a non-root USER fails on the output folders."
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text() + "\nRUN useradd --create-home --uid 1000 mlops\nUSER mlops\nWORKDIR /home/mlops\n"
    root = job_root()
    try:
        result = run_as_the_image(dockerfile, root)
        assert result.returncode != 0
        assert "Permission denied" in result.stderr or "PermissionError" in result.stderr, result.stderr[-2000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
