"""No process outlives its reason: when an `mlops` command ends, nothing it started is left, however it ends.

Each route runs the real `mlops` command with a marker variable of its own in its environment; every process it starts
(the step's job, the job's Jupyter kernel) carries the marker, since a job's environment is the command's with the
step's over it. The test reads the process table (/proc, this user's processes only) before and after: other people's
processes on the machine do not carry the marker. The step is the training pipeline's FeatureEngineering step alone,
running a notebook of three cells, so that a route takes seconds."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import MLOPS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table from /proc")

MARKER = "MLOPS_PROCESSES_LEFT_MARKER"


def marked(value: str) -> list[int]:
    "The processes of this user whose environment carries MARKER=value (this test's process excluded)."
    found, needle = [], f"{MARKER}={value}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid(): continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"): found.append(int(entry.name))
        except OSError:  # another user's, or ended meanwhile
            continue
    return found


def command_lines(pids) -> dict[int, str]:
    "pid → its command line, for a failure's message."
    lines = {}
    for pid in pids:
        try: lines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError: lines[pid] = "(ended)"
    return lines


def left_after(value: str, within: float = 15.0) -> list[int]:
    "The marked processes still alive `within` seconds from now (at once, if none is)."
    deadline = time.monotonic() + within
    while (left := marked(value)) and time.monotonic() < deadline: time.sleep(0.2)
    return left


def tiny_step_notebook(path: Path, parameters: list[str]):
    "A step notebook declaring `parameters`; it writes a ready file, then succeeds, fails or hangs as the job's environment says."
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    declared = new_code_cell("\n".join(f"{name} = ''" for name in parameters))
    declared.metadata["tags"] = ["parameters"]
    body = new_code_cell(
        "import os, pathlib, time\n"
        "route = os.environ['MLOPS_PROCESSES_LEFT_ROUTE']\n"
        "pathlib.Path(os.environ['MLOPS_PROCESSES_LEFT_READY']).write_text(str(os.getpid()))\n"
        "if route == 'fail': raise RuntimeError('this step fails, as asked')\n"
        "if route == 'hang': time.sleep(600)\n"
        "for folder in pathlib.Path(output_dir).iterdir():\n"
        "    if folder.is_dir() and folder.name != 'report': (folder / 'part.txt').write_text('x')")
    nbformat.write(new_notebook(cells=[declared, body], metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                                  "display_name": "python3"}}), path)


def one_step_workspace(root: Path, write_notebook=None) -> dict:
    """A home, and a filled definition holding the training pipeline's FeatureEngineering step alone, its notebook
    written by `write_notebook(path, parameters)` (default: `tiny_step_notebook`)."""
    from mlops.engine.store import LocalStore
    from mlops.runner import local_definition
    root.mkdir(parents=True, exist_ok=True)
    definition = local_definition("training")
    step = next(s for s in definition["Steps"] if s["Name"] == "FeatureEngineering")
    definition["Steps"] = [step]
    app = step["Arguments"]["AppSpecification"]["ContainerArguments"]
    parameters = [app[i + 1] for i, a in enumerate(app) if a == "-p"]
    code = next(i for i in step["Arguments"]["ProcessingInputs"] if i["InputName"] == "code")["S3Input"]
    code["S3Uri"] = "s3://mlops-local/code/processes-left/feature_engineering.ipynb"
    store = LocalStore(root / "home" / "store")
    (write_notebook or tiny_step_notebook)(root / "feature_engineering.ipynb", parameters)
    store.upload(root / "feature_engineering.ipynb", code["S3Uri"])
    (root / "data").mkdir()
    (root / "data" / "train.csv").write_text("item_id,timestamp,target\n")
    data = next(p for p in definition["Parameters"] if p["Name"] == "InputDataUri")["DefaultValue"]
    store.upload(root / "data", data)
    (root / "one-step.json").write_text(json.dumps(definition))
    return {"root": root, "definition": root / "one-step.json", "home": root / "home"}


@pytest.fixture(scope="module")
def one_step(tmp_path_factory) -> dict:
    return one_step_workspace(tmp_path_factory.mktemp("left"))


def start(one_step, route: str, *args, env: dict | None = None) -> tuple[subprocess.Popen, str, Path]:
    "`mlops run --definition ...` (or `mlops ARGS`) in a session of its own, as a terminal starts it; (process, marker, ready file)."
    value, ready = uuid.uuid4().hex, one_step["root"] / f"ready-{uuid.uuid4().hex[:6]}"
    env = {**(env or os.environ), MARKER: value, "MLOPS_PROCESSES_LEFT_ROUTE": route, "MLOPS_PROCESSES_LEFT_READY": str(ready),
           "MLOPS_HOME": str(one_step["home"]), "COLUMNS": "200"}
    command = [*MLOPS, *(args or ("run", "--definition", str(one_step["definition"]), "--no-cache"))]
    assert marked(value) == []
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True), value, ready


JOBS = ("mlops.processing", "mlops.deepar", "ipykernel", "mlops.engine.forkserver")  # what a step job, worker or kernel runs


def jobs_seen_while(process: subprocess.Popen, value: str) -> list[str]:
    "The command lines of the jobs, workers and kernels of the command's (marked) seen while `process` runs."
    seen = set()
    while process.poll() is None:
        seen.update(line for line in command_lines(marked(value)).values() if any(job in line for job in JOBS))
        time.sleep(0.05)
    return sorted(seen)


def wait_ready(process: subprocess.Popen, ready: Path, timeout: float = 120):
    "Wait until the step's notebook runs (its kernel is up)."
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("route, code", [("succeed", 0), ("fail", 1)])
def test_a_run_that_ends_leaves_nothing(one_step, route, code):
    process, value, ready = start(one_step, route)
    out, err = process.communicate(timeout=300)
    assert process.returncode == code, (out, err)
    assert ready.exists()  # the step really ran: its job and kernel were started
    if route == "fail": assert "this step fails, as asked" in err
    assert command_lines(left_after(value)) == {}


def test_a_refused_run_starts_nothing(one_step):
    "Refused before anything starts: the process table never holds a process of the command's but itself."
    process, value, ready = start(one_step, "succeed", "run", "--definition", str(one_step["definition"]), "-p", "NoSuchParameter=1")
    seen = jobs_seen_while(process, value)
    assert process.returncode == 2, process.communicate()
    assert seen == [] and not ready.exists()
    assert command_lines(left_after(value)) == {}


def test_a_refused_inference_run_starts_no_kernel(tmp_path):
    "The inference pipeline refused (no model registered yet) starts no worker or kernel before refusing."
    process, value, _ = start({"root": tmp_path, "home": tmp_path / "home"}, "succeed", "run", "--pipeline", "inference")
    seen = jobs_seen_while(process, value)
    out, err = process.communicate()
    assert process.returncode == 2 and "no model named" in err, (out, err)
    assert seen == []
    assert command_lines(left_after(value)) == {}


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_a_run_ended_from_outside_leaves_nothing(one_step, how):
    "Ctrl+C (SIGINT to the terminal's process group) and SIGKILL of the command alone, while the step's kernel runs."
    process, value, ready = start(one_step, "hang")
    wait_ready(process, ready)
    assert len(marked(value)) >= 3  # the command, the step's job, the job's kernel
    if how == "ctrl-c": os.killpg(process.pid, signal.SIGINT)
    else: os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert command_lines(left_after(value)) == {}


def test_a_killed_steps_temporary_files_reach_no_output_and_a_resume_removes_them(one_step):
    "papermill writes the report under a temporary name as it goes; killed, that file is no step output, and a resume removes it."
    from mlops.engine.records import Records
    process, value, ready = start(one_step, "hang")
    wait_ready(process, ready)
    execution = Records(one_step["home"] / "runs.db").executions(1)[0]["id"]
    folder = one_step["home"] / "runs" / execution
    deadline = time.monotonic() + 60
    while not list(folder.rglob(".*.partial.ipynb")):  # papermill saves the notebook as it goes, under a temporary name
        assert time.monotonic() < deadline, "papermill wrote no partial notebook"
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL); process.communicate(timeout=60)
    assert command_lines(left_after(value)) == {}
    assert list(folder.rglob(".*.partial.ipynb"))  # what the killed job left
    resumed, value, _ = start(one_step, "succeed", "run", "--definition", str(one_step["definition"]), "--resume", execution)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, (out, err)
    assert list(folder.rglob(".*.partial.ipynb")) == [] and list(folder.rglob(".deepar-work-*")) == []
    assert list((one_step["home"] / "store").rglob("*.partial.ipynb")) == []  # no upload carried one
    assert command_lines(left_after(value)) == {}
