"""The package's shape: arrows point one way, the local store is found from the project root, modules stay small."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlops
from mlops.config import project_root
from mlops.render import imported_modules

PACKAGE = Path(mlops.__file__).parent


def modules_imported_by(module: str) -> set[str]:
    "The mlops modules `module` imports, directly or not (imports inside functions too), as paths relative to the package."
    return {p.relative_to(PACKAGE).as_posix() for p in imported_modules(module)}


@pytest.mark.parametrize("module", ["mlops.engine.run", "mlops.engine.executors", "mlops.engine.execution"])
def test_the_engine_reads_json_and_never_imports_tracking_the_sdk_or_the_cli(module):
    found = modules_imported_by(module)
    assert "engine/run.py" in modules_imported_by("mlops.engine.run")
    assert not {m for m in found if m.startswith(("tracking", "cli", "remote", "render", "pipelines"))}, found
    code = f"import sys, {module}; print(sorted(m for m in ('mlflow', 'sagemaker', 'boto3', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_definition_depends_on_nothing_of_ours_but_config_files_and_deepar_rules():
    found = modules_imported_by("mlops.definition.validate") | modules_imported_by("mlops.definition.parameters")
    allowed = ("__init__.py", "config.py", "files.py", "definition/", "deepar/__init__.py", "deepar/hyperparameters.py")
    assert all(m.startswith(allowed) for m in found), found


def test_nothing_imports_the_cli():
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in ("cli", "cli.py", "__main__.py", "_modidx.py"): continue  # the command and its front door
        text = path.read_text()
        assert "mlops.cli" not in text and "from .cli" not in text, path


def test_a_notebook_folder_and_the_root_share_one_local_store():
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_HOME"}
    code = "from mlops.config import mlops_home; print(mlops_home())"
    homes = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, check=True).stdout.strip()
             for cwd in (project_root(), project_root() / "nbs", project_root() / "nbs" / "engine")}
    assert homes == {str(project_root() / ".mlops")}


def test_modules_stay_small_or_say_why():
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        if path.name == "_modidx.py" or len(lines) <= 400: continue
        head = "\n".join(lines[:12]).lower()
        assert "400 lines" in head, f"{path.relative_to(PACKAGE)} has {len(lines)} lines and no reason at its top"
