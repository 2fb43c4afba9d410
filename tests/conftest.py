"""Shared fixtures: small real data files and a helper that runs the real `mlops` command."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.data.demo import demo_data

MLOPS = [str(Path(sys.executable).parent / "mlops")]  # the installed console script, as a user runs it


@pytest.fixture
def small_demo(tmp_path) -> Path:
    "A small demo dataset (4 items × 90 days, 14 future days) as CSV."
    path = tmp_path / "small.csv"
    demo_data(n_items=4, periods=90, future_periods=14).to_csv(path, index=False)
    return path


def run_mlops(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    "Run the `mlops` command in a fresh process, as a user would; with `cwd`, its local state is `cwd/.mlops`."
    home = {"MLOPS_HOME": str(Path(cwd) / ".mlops")} if cwd is not None else {}
    return subprocess.run([*MLOPS, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", **home, **(env or {})})


def pytest_configure(config):
    config.addinivalue_line("markers", "slow_first_run: builds a cached environment on its first run (minutes); seconds after")


@pytest.fixture(scope="session", autouse=True)
def private_fork_servers():
    "The fork servers that the suite's `mlops run` start are its own (a private runtime folder), stopped at the end."
    import shutil, tempfile
    folder, before = tempfile.mkdtemp(prefix="fs"), {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "MLOPS_FORKSERVER_IDLE")}
    os.environ.update(XDG_RUNTIME_DIR=folder, MLOPS_FORKSERVER_IDLE="120")
    yield
    subprocess.run([sys.executable, "-m", "mlops.engine.forkserver", "stop", "--all"], capture_output=True, timeout=60)
    for key, value in before.items():
        if value is None: os.environ.pop(key, None)
        else: os.environ[key] = value
    shutil.rmtree(folder, ignore_errors=True)


# a suite that kills `mlops run` at a precise moment runs it in its own process: run in the fork server, it would end a
# moment after its command (the server kills it when the command goes; tests/test_forkserver.py)
IN_ITS_OWN_PROCESS = {"MLOPS_FORKSERVER": "0"}


# the pipeline's parameters for a training run of a few seconds on tiny data (one copy for every end-to-end suite)
TINY = ["-p", "Epochs=1", "-p", "NumCells=8", "-p", "NumLayers=1", "-p", "MiniBatchSize=32", "-p", "NumEvalSamples=20",
        "-p", "PredictionLength=7", "-p", "ContextLength=14", "-p", "QualityThreshold=10"]


def tiny_data(root: Path) -> Path:
    "Tiny demo data in `root`: train.csv (6 items × 120 days) and future.csv (the same and 7 future days, for inference)."
    demo_data(n_items=6, periods=120).to_csv(root / "train.csv", index=False)
    demo_data(n_items=6, periods=120, future_periods=7).to_csv(root / "future.csv", index=False)
    return root


def private_workspace(root: Path) -> dict:
    "A private MLOPS_HOME under `root`, its own copy of the step notebooks, and tiny data: what a suite that runs `mlops` needs."
    import shutil
    from mlops.config import project_root
    tiny_data(root)
    shutil.copytree(project_root() / "nbs" / "processing", root / "notebooks")
    return {"root": root, "home": root / "home",
            "env": {"MLOPS_HOME": str(root / "home"), "MLOPS_NOTEBOOKS_DIR": str(root / "notebooks")}}
