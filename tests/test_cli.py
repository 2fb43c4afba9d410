"""The `mlops` command: start-up cost and the main job on the demo data."""
import subprocess
import sys
from pathlib import Path

from conftest import run_mlops

HEAVY = ["torch", "gluonts", "lightning", "sagemaker", "mlflow", "pandas", "papermill"]


def test_help_is_instant_and_loads_nothing_heavy():
    code = ("import sys; from mlops.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "features" in result.stdout and "demo-data" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_features_on_the_demo_data_by_default(tmp_path: Path):
    result = run_mlops("features", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / ".mlops" / "features" / "train"
    assert len((out / "train" / "train.json").read_text().splitlines()) == 50
    for shown in ["train.json", "test.json", "feature_state.json", "feature_engineering.ipynb"]:
        assert shown in result.stdout
    infer = run_mlops("features", "--mode", "infer", cwd=tmp_path)  # uses the state just written
    assert infer.returncode == 0, infer.stderr
    assert len((tmp_path / ".mlops" / "features" / "infer" / "inference" / "requests.jsonl").read_text().splitlines()) == 50


def test_demo_data_is_deterministic(tmp_path: Path):
    for name in ["a.csv", "b.csv"]:
        assert run_mlops("demo-data", tmp_path / name).returncode == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
