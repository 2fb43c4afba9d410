"""The dev server a person starts (`mlops dev-server start`): each job forked from it sees its own environment from its
first import (a step's `Environment` as on SageMaker), step notebooks keep their figures, each job shows its own command
line, only callers of its user with its secret are served, nothing of a command is left with it when the command ends,
and it ends after its idle time even while a job hangs."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import MLOPS
from test_processes_left import left_after, one_step_workspace, start, wait_ready

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the dev server runs on Linux only")


def children(pid: int) -> list[int]:
    "The processes whose parent is `pid` (the dev server's jobs)."
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError: continue
    return found


def gone(pid: int, within: float = 15.0) -> bool:
    "Whether process `pid` has ended (or is a zombie) within `within` seconds."
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z": return True
        except OSError: return True
        time.sleep(0.1)
    return False


def no_children_after(pid: int, within: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := children(pid)) and time.monotonic() < deadline: time.sleep(0.2)
    return left


def plotting_step_notebook(path: Path, parameters: list[str]):
    "A step notebook that draws a figure and records torch's thread count, its kernel's parent and matplotlib's backend."
    declared = new_code_cell("\n".join(f"{name} = ''" for name in parameters))
    declared.metadata["tags"] = ["parameters"]
    cells = [declared,
             new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 1, 3])\nplt.show()"),
             new_code_cell("import json, os, pathlib, matplotlib, torch\n"
                           "seen = {'threads': torch.get_num_threads(), 'kernel_parent': os.getppid(), 'backend': matplotlib.get_backend()}\n"
                           "for folder in pathlib.Path(output_dir).iterdir():\n"
                           "    if folder.is_dir() and folder.name != 'report': (folder / 'seen.json').write_text(json.dumps(seen))")]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "python3"}}), path)


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    "`mlops dev-server start` with the real preload, in this suite's private runtime folder; stopped at the end."
    env = {**os.environ, "MLOPS_FORKSERVER": "1", "MLOPS_FORKSERVER_IDLE": "300", "COLUMNS": "200"}
    env.pop("MLOPS_FORKSERVER_PRELOAD", None)
    started = subprocess.run([*MLOPS, "dev-server", "start"], env=env, capture_output=True, text=True, timeout=600)
    assert started.returncode == 0 and "running (pid" in started.stdout, started.stderr
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    yield {"env": env, "pid": pid, "workspace": one_step_workspace(tmp_path_factory.mktemp("dev"), plotting_step_notebook)}
    stopped = subprocess.run([*MLOPS, "dev-server", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert "stopped 1" in stopped.stdout, stopped.stderr
    assert gone(pid)


def run_step(dev_server, environment: dict | None = None):
    "Run the plotting step (its Environment extended by `environment`) with the dev server; what the notebook saw, and the run folder."
    workspace = dev_server["workspace"]
    definition = json.loads(workspace["definition"].read_text())
    definition["Steps"][0]["Arguments"]["Environment"].update(environment or {})
    path = workspace["root"] / f"with-{len(environment or {})}.json"
    path.write_text(json.dumps(definition))
    done = subprocess.run([*MLOPS, "run", "--definition", str(path), "--no-cache"], capture_output=True, text=True, timeout=300,
                          env={**dev_server["env"], "MLOPS_HOME": str(workspace["home"])})
    assert done.returncode == 0, done.stderr
    folder = max((workspace["home"] / "runs").iterdir(), key=lambda p: p.stat().st_mtime) / "FeatureEngineering"
    return json.loads(next(folder.rglob("seen.json")).read_text()), folder


def test_a_step_sees_its_environment_from_its_first_import(dev_server):
    "OMP_NUM_THREADS in a step's Environment is read by torch at import: the step runs where it is set before that."
    seen, _ = run_step(dev_server, {"OMP_NUM_THREADS": "1"})
    assert seen["threads"] == 1  # as in the step's container on SageMaker (CreateProcessingJob, Environment)


def test_a_forked_step_keeps_its_figures_and_shows_its_command_line(dev_server):
    seen, folder = run_step(dev_server)
    assert "[mlops] forked by the dev server" in (folder / "log.txt").read_text()  # the faster path was taken
    assert seen["kernel_parent"] == dev_server["pid"]  # the kernel too is a fork of the server
    assert "inline" in seen["backend"]
    report = nbformat.read(next(folder.rglob("report/*.ipynb")), as_version=4)
    assert any("image/png" in output.get("data", {}) for cell in report.cells for output in cell.get("outputs", []))


def test_nothing_of_a_command_stays_with_the_server(dev_server):
    "A run that ends, and one killed with SIGKILL while its step's kernel runs: the server is left with no job of theirs."
    workspace, env = dev_server["workspace"], dev_server["env"]
    tiny = one_step_workspace(workspace["root"] / "tiny")
    process, value, ready = start(tiny, "hang", env=env)
    wait_ready(process, ready)
    assert len(children(dev_server["pid"])) >= 2  # the step's job and its kernel, forked
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert no_children_after(dev_server["pid"]) == [] and left_after(value) == []
    process, value, ready = start(tiny, "succeed", env=env)
    assert process.wait(timeout=300) == 0 and ready.exists()
    assert no_children_after(dev_server["pid"]) == [] and left_after(value) == []


def training_workspace(root: Path) -> dict:
    "A home, and a filled definition holding the training pipeline's TrainDeepAR step alone, on channels of tiny demo data in the store."
    from mlops.data.demo import demo_data
    from mlops.data.features import build_features
    from mlops.data.series import SeriesColumns, validate_series
    from mlops.engine.store import LocalStore
    from mlops.runner import local_definition
    definition = local_definition("training")
    step = next(s for s in definition["Steps"] if s["Name"] == "TrainDeepAR")
    definition["Steps"] = [step]
    build_features(validate_series(demo_data(n_items=4, periods=90), SeriesColumns(), freq="D"), root / "channels", mode="train",
                   prediction_length=7, context_length=14)
    store = LocalStore(root / "home" / "store")
    for channel in step["Arguments"]["InputDataConfig"]:
        uri = f"s3://mlops-local/dev-server/channels/{channel['ChannelName']}"
        store.upload(root / "channels" / channel["ChannelName"], uri)
        channel["DataSource"]["S3DataSource"]["S3Uri"] = uri
    step["Arguments"]["HyperParameters"] = {"epochs": "1", "prediction_length": "7", "context_length": "14", "num_cells": "8",
                                            "time_freq": "D", "num_eval_samples": "20"}
    (root / "train.json").write_text(json.dumps(definition))
    return {"root": root, "definition": root / "train.json", "home": root / "home"}


def test_a_training_job_sees_its_environment_from_its_first_import(dev_server, tmp_path):
    """The DeepAR job with OMP_NUM_THREADS=1 in its Environment trains on one thread, and without it on the machine's:
    the variable is there before torch is imported, in a process of its own or forked by a server of that environment."""
    workspace = training_workspace(tmp_path)
    definition = json.loads(workspace["definition"].read_text())
    threads = {}
    for environment in ({}, {"OMP_NUM_THREADS": "1"}):
        definition["Steps"][0]["Arguments"]["Environment"] = environment
        workspace["definition"].write_text(json.dumps(definition))
        done = subprocess.run([*MLOPS, "run", "--definition", str(workspace["definition"]), "--no-cache"], capture_output=True,
                              text=True, timeout=300, env={**dev_server["env"], "MLOPS_HOME": str(workspace["home"])})
        assert done.returncode == 0, done.stderr
        log = (max((workspace["home"] / "runs").iterdir(), key=lambda p: p.stat().st_mtime) / "TrainDeepAR" / "log.txt").read_text()
        threads[len(environment)] = int(log.split("training with ")[1].split(" CPU thread")[0])
    import torch
    assert threads == {0: torch.get_num_threads(), 1: 1}  # as in the training container on SageMaker (CreateTrainingJob, Environment)


LIGHT = {"MLOPS_FORKSERVER": "1", "MLOPS_FORKSERVER_PRELOAD": "json"}  # a server quick to start


def light_server(idle: str, tmp_path: Path) -> tuple[dict, int]:
    import tempfile
    env = {**os.environ, **LIGHT, "MLOPS_FORKSERVER_IDLE": idle, "XDG_RUNTIME_DIR": tempfile.mkdtemp(prefix="fs")}
    started = subprocess.run([sys.executable, "-m", "mlops.engine.forkserver", "start"], env=env, capture_output=True, text=True, timeout=120)
    assert "running (pid" in started.stdout, started.stderr
    return env, int(started.stdout.split("(pid ")[1].split(")")[0])


def test_the_server_ends_when_idle_even_while_a_job_hangs_and_serves_only_its_own(tmp_path):
    env, pid = light_server("3", tmp_path)
    script = ("import os, subprocess, sys, time\n"
              "from mlops.engine.launch import launch\n"
              "job = launch([sys.executable, '-m', 'json.tool', '--help'], '.', dict(os.environ), stdout=subprocess.PIPE, text=True)\n"
              "job.communicate(); print(type(job).__name__)\n"
              "hang = launch([sys.executable, '-m', 'timeit', '-n', '1', 'import time; time.sleep(120)'], '.', dict(os.environ),\n"
              "              stdout=subprocess.PIPE, text=True)\n"
              "time.sleep(0.5)\n"
              "print(open(f'/proc/{hang.pid}/cmdline', 'rb').read().split(b'\\0')[0].decode())\n"
              "print('exit', hang.wait(timeout=60))\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ForkedProcess"), (done.stdout, done.stderr)
    assert lines[1].startswith(f"{sys.executable} -m timeit -n 1")  # the job shows its own command line, not the server's
    assert lines[2] == f"exit {-signal.SIGKILL}"  # killed when the server, idle for 3 s, ended
    assert gone(pid)
    env, pid = light_server("60", tmp_path)
    try:  # a request without the server's secret is refused: no job is forked
        path = Path(subprocess.run([sys.executable, "-c", "from mlops.engine.forkserver import socket_path; print(socket_path())"],
                                   env=env, capture_output=True, text=True).stdout.strip())
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); conn.settimeout(10); conn.connect(str(path))
        r, w = os.pipe()
        socket.send_fds(conn, [json.dumps({"argv": ["json.tool", "--help"], "cwd": ".", "env": env}).encode() + b"\n"], [r, w, w])
        assert conn.recv(64) == b""  # closed without an answer
        os.close(r); os.close(w); conn.close()
        assert children(pid) == []
    finally:
        subprocess.run([sys.executable, "-m", "mlops.engine.forkserver", "stop"], env=env, capture_output=True, timeout=60)
