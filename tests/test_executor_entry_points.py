"""Executors from installed packages (issue 23, item 8): the entry-point group `mlops.executors`, papermill's
`register_entry_points` pattern (papermill/engines.py, papermill/iorw.py), read with `importlib.metadata`.

The package is real: a module and a `.dist-info` folder (METADATA, entry_points.txt) on sys.path, which is what an
installed wheel leaves in site-packages, and what `importlib.metadata` reads.
"""
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import run_mlops
from mlops.cli import main

TEAM_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team-forecaster:3"
ROLE = "arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-ExecutionRole"

TEAM_EXECUTORS = f'''
from mlops.engine.executors import Executor, StepIO

class TeamImageExecutor(Executor):
    "Processing with the team's own image."
    step_type, runs = "Processing", "the team-forecaster image"

    def accepts(self, arguments):
        return arguments.get("AppSpecification", {{}}).get("ImageUri") == {TEAM_IMAGE!r}

    def run(self, step):
        (step.folder / "ran-by-team-executor.txt").write_text(step.arguments["AppSpecification"]["ImageUri"])
        return {{**step.arguments, "ProcessingJobName": step.execution.job_name(step.name), "ProcessingJobStatus": "Completed"}}

    def describe(self, properties):
        return StepIO(summary="run by the team's executor")

class Everything(Executor):
    step_type, runs = "Processing", "every processing step"
'''


def distribution(folder: Path, name: str, entry_points: str, module: str | None = None, code: str = "") -> Path:
    "A distribution `name` in `folder` (what `pip install` leaves): its module, METADATA and entry_points.txt."
    folder.mkdir(parents=True, exist_ok=True)
    if module: (folder / f"{module}.py").write_text(code)
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return folder


def team_definition() -> dict:
    return {"Version": "2020-12-01", "Parameters": [], "Steps": [{"Name": "Forecast", "Type": "Processing", "Arguments": {
        "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": TEAM_IMAGE}, "RoleArn": ROLE}}]}


@pytest.fixture
def plugin(tmp_path) -> Path:
    return distribution(tmp_path / "site", "team-executors",
                        "[mlops.executors]\nteam-forecaster = team_executors:TeamImageExecutor\n", "team_executors", TEAM_EXECUTORS)


def test_a_step_only_an_installed_package_runs_runs_in_a_fresh_process(plugin, tmp_path):
    path = tmp_path / "team.json"
    path.write_text(json.dumps(team_definition()))
    home = tmp_path / ".mlops"
    env = {"MLOPS_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    result = run_mlops("run", "--definition", path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Forecast: run by the team's executor" in result.stdout
    [marker] = home.glob("runs/*/Forecast/ran-by-team-executor.txt")
    assert marker.read_text() == TEAM_IMAGE


def test_without_the_package_the_step_is_refused_naming_its_image_and_the_group(tmp_path, monkeypatch):
    path = tmp_path / "team.json"
    path.write_text(json.dumps(team_definition()))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    result = CliRunner(env={"COLUMNS": "400"}).invoke(main, ["run", "--definition", str(path)])
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if "step 'Forecast'" in line]
    assert f"step 'Forecast' (Processing, image {TEAM_IMAGE}) cannot run locally: its image" in line
    assert "Fix: use what one of them runs, or install a package whose entry point in group mlops.executors names an " \
           "Executor with step_type 'Processing' that accepts this image." in line
    assert not (tmp_path / ".mlops").exists()  # refused before anything ran, or was opened


def test_installed_executors_win_over_the_built_in_ones_and_lose_to_registered_ones(plugin, tmp_path, monkeypatch):
    from mlops.engine.executors import BUILT_IN_EXECUTORS, ENTRY_POINT_GROUP, Executor, ExecutorRegistry
    from mlops.engine.executors.processing import MLOPS_ENTRYPOINT
    distribution(plugin, "team-everything", "[mlops.executors]\neverything = team_executors:Everything\n")
    monkeypatch.syspath_prepend(str(plugin))
    ours = {"AppSpecification": {"ImageUri": "mlops-processing:local", "ContainerEntrypoint": MLOPS_ENTRYPOINT}}
    registry = ExecutorRegistry(BUILT_IN_EXECUTORS, ENTRY_POINT_GROUP)
    assert type(registry.find("Processing", ours)).__name__ == "Everything"  # installed, above the built-in one
    assert type(registry.find("Processing", team_definition()["Steps"][0]["Arguments"])).__name__ == "TeamImageExecutor"
    assert "Processing: every processing step" in registry.supported()
    assert registry.broken == []

    class Registered(Executor):
        step_type, runs = "Processing", "registered in this process"
    registry.register(Registered())
    assert type(registry.find("Processing", ours)).__name__ == "Registered"
    assert type(ExecutorRegistry(BUILT_IN_EXECUTORS).find("Processing", ours)).__name__ == "ProcessingExecutor"  # no group


def test_a_package_that_cannot_be_loaded_stops_nothing_and_is_named_when_a_step_is_refused(tmp_path, monkeypatch):
    from mlops.engine import DefinitionNotRunnable
    from mlops.engine.executors import BUILT_IN_EXECUTORS, ENTRY_POINT_GROUP, ExecutorRegistry
    from mlops.engine.plan import check_runnable
    site = distribution(tmp_path / "site", "team-broken", "[mlops.executors]\nbroken = team_missing_module:Executor\n")
    monkeypatch.syspath_prepend(str(site))
    registry = ExecutorRegistry(BUILT_IN_EXECUTORS, ENTRY_POINT_GROUP)
    fail = {"Version": "2020-12-01", "Parameters": [], "Steps": [{"Name": "Stop", "Type": "Fail", "Arguments": {"ErrorMessage": "x"}}]}
    assert list(check_runnable(fail, {}, registry)) == ["Stop"]
    with pytest.raises(DefinitionNotRunnable) as refused:
        check_runnable(team_definition(), {}, registry)
    assert ("entry point broken = team_missing_module:Executor (team-broken package) of group mlops.executors failed to load: "
            "ModuleNotFoundError") in str(refused.value)
    assert "Fix: repair or uninstall that package." in str(refused.value)
