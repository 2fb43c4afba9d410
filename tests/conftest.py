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
