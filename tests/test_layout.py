"""The package's shape: arrows point one way, the local store is found from the project root, modules stay small."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlops
from mlops.config import project_root
from mlops.render import imported_modules

PACKAGE = Path(mlops.__file__).parent

# The architecture map's arrows, written once: each layer and the layers it may import (imports inside functions too).
# "Arrows point one way: files/config at the bottom; data -> deepar; definition -> (nothing of ours but config/files);
# pipelines -> definition; render -> pipelines, definition; engine -> definition, files (never tracking, never the SDK);
# executors -> data, deepar, processing; tracking listens to engine events; remote -> definition; cli -> everything.
# Nothing imports cli." Where this table adds to the map, DEVELOPERS.md ("Layering") says why.
LAYERS = {  # layer -> the modules in it (a module is in the layer of its longest matching prefix)
    "base": ("mlops", "mlops.config", "mlops.errors", "mlops.files", "mlops.timing", "mlops.offline"),
    "data": ("mlops.data",), "deepar": ("mlops.deepar",), "xgboost": ("mlops.xgboost",), "definition": ("mlops.definition",),
    "processing": ("mlops.processing",),
    "pipelines": ("mlops.pipelines", "mlops.steps"), "render": ("mlops.render", "mlops.stack"),
    "engine": ("mlops.engine",), "executors": ("mlops.engine.executors.",),  # the contract and registry are the engine's; the executors are not
    "launch": ("mlops.engine.launch", "mlops.engine.forkserver"),  # the one way a process starts: below whatever starts one
    "tracking": ("mlops.tracking",), "remote": ("mlops.remote",), "runner": ("mlops.runner",),
    "cli": ("mlops.cli",), "main": ("mlops.__main__",),
}
ALLOWED = {  # layer -> the other layers it may import
    "base": set(),
    "launch": {"base"},
    "deepar": {"base"},
    "xgboost": {"base"},  # the built-in XGBoost, as deepar is the built-in DeepAR: an algorithm library of its own
    "data": {"base", "deepar"},
    "definition": {"base"},
    "processing": {"base", "definition", "launch"},
    "pipelines": {"base", "definition"},
    "render": {"base", "definition", "pipelines"},
    "engine": {"base", "definition", "launch"},
    "executors": {"base", "definition", "engine", "launch", "data", "deepar", "xgboost", "processing"},
    "tracking": {"base", "definition", "data", "processing", "launch"},
    "remote": {"base", "definition", "render"},
    "runner": {"base", "definition", "data", "deepar", "pipelines", "render", "engine", "launch", "tracking"},
    "cli": set(LAYERS) - {"main"},
    "main": {"cli", "engine"},
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "_modidx.py"}


def _nodes(tree, at_import_time: bool):
    "Every node of `tree`; with `at_import_time`, not those inside functions (what runs when the module is imported)."
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(child for child in ast.iter_child_nodes(node)
                       if not (at_import_time and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))))


def imports_of(name: str, at_import_time: bool = False) -> set[str]:
    "The mlops modules that module `name` imports by name (`import`, `from ... import`; inside functions too, unless `at_import_time`)."
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _nodes(ast.parse(path.read_text()), at_import_time):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mlops"}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            if base.split(".")[0] == "mlops":
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != name}


def _in(name: str, prefix: str) -> bool:
    "`prefix` ending in a dot: its package's modules only; `mlops`: the package's __init__ only; else that module and its modules."
    if prefix.endswith("."): return name.startswith(prefix)
    return name == prefix or (prefix != "mlops" and name.startswith(prefix + "."))


def layer_of(name: str) -> str:
    "The layer of module `name`: the one with its longest matching prefix."
    return max(((layer, prefix) for layer, prefixes in LAYERS.items() for prefix in prefixes if _in(name, prefix)),
               key=lambda lp: len(lp[1]))[0]


def test_every_module_has_a_layer_and_every_layer_a_rule():
    assert set(ALLOWED) == set(LAYERS)
    assert all(layer_of(m) for m in MODULES)


ARROWS = sorted((m, i) for m in MODULES for i in imports_of(m) if layer_of(i) != layer_of(m))


@pytest.mark.parametrize("importer", sorted(MODULES))
def test_every_import_follows_the_map(importer):
    broken = [(importer, i) for i in imports_of(importer) if layer_of(i) != layer_of(importer)
              and layer_of(i) not in ALLOWED[layer_of(importer)]]
    assert not broken, f"{layer_of(importer)} may import only {sorted(ALLOWED[layer_of(importer)])}: {broken}"


def test_the_table_catches_a_wrong_arrow():
    assert "deepar" not in ALLOWED["definition"] and "data" not in ALLOWED["deepar"] and "remote" not in ALLOWED["runner"]
    assert layer_of("mlops.engine.executors.deepar") == "executors" and layer_of("mlops.engine.run") == "engine"
    assert ("mlops.runner", "mlops.engine.run") in ARROWS  # the graph sees real imports


def test_no_import_cycles():
    "No cycle among the imports a module runs when it is imported (a function's own import runs when it is called:"
    " the launcher and the dev server it may hand a job to name each other that way)."
    graph = {m: imports_of(m, at_import_time=True) for m in MODULES}
    state, cycle = {}, []
    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open": cycle.extend(path[path.index(n):] + [n] if n in path else [m, n]); return True
            if n not in state and visit(n, path + [n]): return True
        state[m] = "done"
        return False
    for m in sorted(graph):
        if m not in state and visit(m, [m]): break
    assert not cycle, " -> ".join(cycle)


def test_no_package_init_imports_its_own_modules():
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "mlops": continue
        assert not {i for i in imports_of(name) if i.startswith(name + ".")}, name


def test_nothing_imports_the_cli():
    for name in MODULES:
        if layer_of(name) in ("cli", "main"): continue
        assert not {i for i in imports_of(name) if layer_of(i) == "cli"}, name


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


def test_every_error_of_the_package_derives_from_one_base():
    "Every exception class the package defines is an `MlopsError` (its message the problem, `fix` what to do), so `cli` catches them once."
    code = ("import importlib, inspect, json, pkgutil, sys, mlops\n"
            "names = [m.name for m in pkgutil.walk_packages(mlops.__path__, 'mlops.')]\n"
            "for name in names: importlib.import_module(name)\n"
            "from mlops.errors import MlopsError\n"
            "errors = {f'{n}.{c.__name__}': issubclass(c, MlopsError) for n in names for _, c in inspect.getmembers(sys.modules[n], inspect.isclass)\n"
            "          if issubclass(c, Exception) and c.__module__ == n and c is not MlopsError}\n"
            "print(json.dumps(errors))")
    import json
    errors = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert {"mlops.remote.aws.RemoteError", "mlops.definition.validate.DefinitionInvalid", "mlops.config.NotebookNotFound"} <= set(errors)
    assert not (outside := sorted(name for name, derives in errors.items() if not derives)), f"not an MlopsError: {outside}"


# The one place a job, worker, kernel or server starts is mlops.engine.launch (a plain process); the dev server it may
# hand a job to forks it (mlops.engine.forkserver). The one other process is a short read of git's metadata (files.py).
STARTERS = {"subprocess": {"Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
            "os": {"fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve", "execvp",
                   "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "spawnle"},
            "asyncio": {"create_subprocess_exec", "create_subprocess_shell"}, "pty": {"spawn", "fork"}}
STARTS_PROCESSES = {"mlops/engine/launch.py": {"subprocess.Popen"}, "mlops/engine/forkserver.py": {"os.fork"},
                    "mlops/files.py": {"subprocess.run"}}


def process_starts(source: str) -> set[str]:
    "The calls in `source` that start a process (`module.function`, as written)."
    return {f"{node.func.value.id}.{node.func.attr}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
            and node.func.attr in STARTERS.get(node.func.value.id, ())}


def test_one_place_starts_a_process():
    found = {path.relative_to(PACKAGE.parent).as_posix(): starts for path in sorted(PACKAGE.rglob("*.py"))
             if (starts := process_starts(path.read_text()))}
    assert found == STARTS_PROCESSES
    assert process_starts("import subprocess\nsubprocess.Popen(['x'])\nos.fork()") == {"subprocess.Popen", "os.fork"}
