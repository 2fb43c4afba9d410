"""Adding a step the documented way (README "Add a step"): `mlops new-step`, then `mlops run`; no SDK code, no test edit.

It works on a copy of the project (nbs/, templates/, settings.ini and the package, imported from the copy through
PYTHONPATH), so that the repository's own notebooks and templates stay as they are.
"""
import json
import os
import shutil
from pathlib import Path

from conftest import TINY, run_mlops, tiny_data
from mlops.config import project_root
from mlops.engine.execution import Execution
from mlops.engine.records import Records


def project_copy(root: Path) -> dict:
    "A copy of the project under `root`; the environment that makes `mlops` use it."
    source = project_root()
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", ".mlops")
    for folder in ("nbs", "templates", "mlops"):
        shutil.copytree(source / folder, root / folder, ignore=ignore)
    shutil.copy2(source / "settings.ini", root / "settings.ini")
    return {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_a_new_step_is_one_notebook_and_runs_in_the_pipeline(tmp_path):
    project = tmp_path / "project"
    env = project_copy(project)
    tiny_data(tmp_path)
    added = run_mlops("new-step", "DataQuality", "--after", "FeatureEngineering", "--input", "train", "--output", "quality",
                      cwd=project, env=env)
    assert added.returncode == 0, added.stdout + added.stderr
    notebook = project / "nbs" / "processing" / "data_quality.ipynb"
    assert notebook.is_file() and "templates/ now hold DataQuality" in added.stdout
    definition = json.loads((project / "templates" / "deepar-training.pipeline.json").read_text())
    step = next(s for s in definition["Steps"] if s["Name"] == "DataQuality")
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in step["Arguments"]["ProcessingInputs"]}
    assert inputs["train"] == {"Get": "Steps.FeatureEngineering.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"}
    assert (project_root() / "templates" / "deepar-training.pipeline.json").read_text() != json.dumps(definition)  # the repository's stay

    result = run_mlops("run", "--data", tmp_path / "train.csv", *TINY, cwd=project, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    home = project / ".mlops"
    execution = Execution.load(Records(home / "runs.db").executions(1)[0]["id"], home)
    assert execution.step("DataQuality").status == "Succeeded"
    quality = home / "store" / execution.outputs["DataQuality"]["quality"][len("s3://"):] / "summary.json"
    assert json.loads(quality.read_text()) == {"files": {"train": ["train.json"]}}
    assert "data_quality.ipynb" in [p.name for p in execution.notebooks]

    again = run_mlops("new-step", "DataQuality", "--after", "FeatureEngineering", cwd=project, env=env)
    assert again.returncode == 2 and "already has a step 'DataQuality'" in again.stderr
    wrong = run_mlops("new-step", "Report", "--after", "FeatureEngineering", "--input", "trian", "--no-render", cwd=project, env=env)
    assert wrong.returncode == 2 and "has no output 'trian'; it has: train, test, state, report" in " ".join(wrong.stderr.split())
