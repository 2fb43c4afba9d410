"""Benchmark: `mlops run` on the demo data — where the time goes, phase by phase, medians over rounds.

Each round, in a fresh MLOPS_HOME: `mlops run` (the training pipeline, the README's main command) as a user runs
it, then the same command again (every step from the cache). The phases of the first run come from what the run
records anyway and from the opt-in timing hook (MLOPS_TIMINGS=FILE, see mlops/timing.py):
  - CLI start and imports     launch → the `run` command's body starts (hook);
  - definition and staging    → the execution starts (runs.db): template filled, notebooks and data in the store;
  - engine start              → the first step starts (runs.db);
  - FeatureEngineering: process, imports and kernel start, the notebook's import cells, its other cells (compute,
    papermill's per-cell times), papermill between cells, and the end (kernel shut down, report and outputs copied);
  - DeepAR job start: the training step's wall time minus the trainer's own report (the process and its imports,
    none when the dev server forked it, and copying the model);
  - DeepAR training: the trainer's report (compute), minus torch/lightning/GluonTS imports when it started as a plain process;
  - quality gate, registration and model: from training's end to the last step's end;
  - MLflow (waiting for the background logging to finish): → the execution ends (runs.db);
  - summary and exit: → the process has exited.
Compute = the feature notebook's non-import cells + DeepAR training; orchestration overhead = wall time − compute.
Targets: overhead ≤ 15 % of the wall time, fully cached re-run ≤ 5 % of the first (stretch ≤ 10 %).

Two columns for this checkout, in the same rounds: with a dev server (`mlops dev-server start`, the faster path a
person chooses: started and ready before the rounds, stopped after them) and the default (every job a plain process).
CPU time counts the command, its processes and the jobs the dev server forked for it (the server's reaped children).
`--baseline ROOT` runs another checkout of the project (e.g. the main branch) in the same rounds, interleaved, so
before and after are measured under the same load and printed side by side.

Usage: python bench/runner.py [--rounds 3] [--baseline ROOT] [-p NAME=VALUE ...]
"""
import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PHASES = ["CLI start and imports", "definition and staging", "engine start", "FeatureEngineering: process, imports, kernel",
          "FeatureEngineering: notebook import cells", "FeatureEngineering: notebook compute",
          "FeatureEngineering: papermill between cells", "FeatureEngineering: end",
          "between steps", "DeepAR job start", "DeepAR training (compute)",
          "quality gate, registration, model", "MLflow: waiting for the logging", "summary and exit"]
COMPUTE = ("FeatureEngineering: notebook compute", "DeepAR training (compute)")


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def notebook_cells(notebook: Path) -> tuple[float, float, float, float]:
    "(first cell's start, last cell's end, seconds in import-only cells, seconds in the other cells) of an executed notebook."
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"
             and c.get("metadata", {}).get("papermill", {}).get("start_time")]
    imports = compute = 0.0
    for cell in cells:
        lines = [l.strip() for l in "".join(cell.get("source", "")).splitlines() if l.strip() and not l.strip().startswith("#")]
        duration = cell["metadata"]["papermill"].get("duration") or 0.0
        if lines and all(l.startswith(("import ", "from ")) for l in lines): imports += duration
        else: compute += duration
    papermill = [c["metadata"]["papermill"] for c in cells]
    return _iso(papermill[0]["start_time"]), _iso(papermill[-1]["end_time"]), imports, compute


def trainer_reported(log: Path) -> float:
    "Seconds the local DeepAR reports for its whole job (reading channels, training, evaluation, saving)."
    reported = re.findall(r"in ([\d.]+) s$", log.read_text(), flags=re.M)
    if not reported:
        raise SystemExit(f"cannot read the training time from {log}")
    return float(reported[-1])


def training_imports(root: Path) -> float:
    "Seconds to import what the trainer imports (torch, lightning, GluonTS), measured in a fresh process now."
    code = ("import time; t = time.perf_counter(); import torch, lightning, gluonts.torch.model.deepar; "
            "print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout)


def environment(root: Path, forkserver: bool) -> dict:
    return {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200", "MLOPS_FORKSERVER": "1" if forkserver else "0"}


def server_children_cpu(server: int | None) -> float:
    "CPU seconds of the children the fork server `server` (a pid) has reaped so far (0 without a server)."
    if server is None: return 0.0
    fields = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime


def dev_server(root: Path) -> int:
    "Start the dev server of `root`'s environment, as `mlops dev-server start` does; its pid once it takes jobs."
    done = subprocess.run([sys.executable, "-m", "mlops.engine.forkserver", "start"], env=environment(root, True), check=True,
                          timeout=600, capture_output=True, text=True)
    return int(done.stdout.split("(pid ")[1].split(")")[0])


def console_script(root: Path) -> str:
    "The `mlops` command of the checkout at `root`: its console script's entry point (older checkouts: mlops.cli:main)."
    settings = (root / "settings.ini").read_text()
    entry = next(l.split("mlops=", 1)[1].strip() for l in settings.splitlines() if l.startswith("console_scripts"))
    module, function = entry.split(":")
    script = Path(tempfile.gettempdir()) / f"mlops-bench-{module.replace('.', '-')}" / "mlops"  # named mlops, as installed
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    script.chmod(0o755)
    return str(script)


def run(root: Path, script: str, server: int | None, home: Path, timings: Path, args: list[str]) -> tuple[float, float, float]:
    """(launch time, exit time, CPU seconds of the command, its children and the jobs the fork server `server` forked for it)
    of one `mlops run` (`script`) of the checkout at `root`; `server` None: with no fork server."""
    env = {**environment(root, server is not None), "MLOPS_HOME": str(home), "MLOPS_TIMINGS": str(timings)}
    before, served = os.times(), server_children_cpu(server)
    launched = time.time()
    result = subprocess.run([script, "run", *args], capture_output=True, text=True, env=env, cwd=root)
    exited, after = time.time(), os.times()
    if result.returncode != 0:
        raise SystemExit(f"mlops run failed ({root}):\n{result.stdout}\n{result.stderr}")
    forked = server_children_cpu(server) - served
    return launched, exited, (after.children_user - before.children_user) + (after.children_system - before.children_system) + forked


def marks(timings: Path) -> dict[str, dict]:
    "The marks of a run by phase (an older checkout writes none)."
    from mlops.timing import read_timings
    return {m["phase"]: m for m in read_timings(timings)} if timings.exists() else {}


def phases_of_first_run(home: Path, launched: float, exited: float, timings: Path, imports: float) -> dict[str, float]:
    db = sqlite3.connect(home / "runs.db")
    (execution_id, started, ended), = db.execute("SELECT id, started, ended FROM executions ORDER BY started LIMIT 1")
    steps = {n: (s, e) for n, s, e in db.execute("SELECT name, started, ended FROM steps WHERE execution_id = ?", (execution_id,))}
    hook = marks(timings)
    cli = hook.get("cli: imports done", {}).get("started", launched)  # an older checkout has no hook: one phase
    fe_start, fe_end = steps["FeatureEngineering"]
    tr_start, tr_end = steps["TrainDeepAR"]
    folder = home / "runs" / execution_id
    first_cell, last_cell, import_cells, cells = notebook_cells(next(folder.glob("FeatureEngineering/output/report/*.ipynb")))
    log = folder / "TrainDeepAR" / "log.txt"
    reported = trainer_reported(log)
    forked = any(said in log.read_text() for said in ("forked by the dev server", "runs in a worker prestarted"))  # (older checkouts)
    training = reported if forked else reported - imports
    return {"CLI start and imports": cli - launched, "definition and staging": started - cli,
            "engine start": fe_start - started, "FeatureEngineering: process, imports, kernel": first_cell - fe_start,
            "FeatureEngineering: notebook import cells": import_cells, "FeatureEngineering: notebook compute": cells,
            "FeatureEngineering: papermill between cells": (last_cell - first_cell) - import_cells - cells,
            "FeatureEngineering: end": fe_end - last_cell,
            "between steps": tr_start - fe_end, "DeepAR job start": (tr_end - tr_start) - training,
            "DeepAR training (compute)": training, "quality gate, registration, model": max(e for _, e in steps.values()) - tr_end,
            "MLflow: waiting for the logging": ended - max(e for _, e in steps.values()), "summary and exit": exited - ended
            }


def one_round(root: Path, script: str, server: int | None, args: list[str], imports: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        home, timings = Path(tmp) / "home", Path(tmp) / "timings.jsonl"
        launched, exited, cpu = run(root, script, server, home, timings, args)
        phases = phases_of_first_run(home, launched, exited, timings, imports)
        relaunched, reexited, recpu = run(root, script, server, home, Path(tmp) / "cached.jsonl", args)
        db = sqlite3.connect(home / "runs.db")
        cached = [n for n, c in db.execute("SELECT name, cached_from FROM steps WHERE execution_id = "
                                           "(SELECT id FROM executions ORDER BY started DESC LIMIT 1)") if c]
    wall = exited - launched
    compute = sum(phases[p] for p in COMPUTE)
    return {**{p: phases[p] for p in PHASES}, "wall": wall, "cpu": cpu, "compute": compute, "overhead": wall - compute,
            "cached": reexited - relaunched, "cached_cpu": recpu, "cached_steps": len(cached)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="root of another checkout, run in the same rounds (before)")
    options = parser.parse_args()
    args = [a for p in options.parameter for a in ("-p", p)]
    imports, ours = training_imports(HERE), console_script(HERE)
    roots = {"dev server": (HERE, ours, dev_server(HERE)), "default": (HERE, ours, None)} | \
            ({"baseline": (options.baseline.resolve(), console_script(options.baseline.resolve()), None)} if options.baseline else {})
    results = {name: [] for name in roots}
    try:
        for number in range(options.rounds):
            for name, (root, script, server) in roots.items():
                results[name].append(one_round(root, script, server, args, imports))
                print(f"round {number + 1}/{options.rounds}, {name}: {results[name][-1]['wall']:.1f} s, cached re-run "
                      f"{results[name][-1]['cached']:.1f} s", file=sys.stderr, flush=True)
    finally:  # the dev server this benchmark started ends with it
        os.kill(roots["dev server"][2], signal.SIGTERM)
    median = {name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} for name, rounds in results.items()}
    names = list(roots)
    print(f"mlops run (training pipeline, demo data{', ' + ' '.join(options.parameter) if options.parameter else ''}): "
          f"medians of {options.rounds} rounds, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"  {'':46}" + "".join(f"{n:>22}" for n in names) + f"   (this checkout: {HERE.name})")
    def row(label, key, ratio_of=None):
        cells = []
        for n in names:
            value = median[n][key]
            cells.append(f"{value:7.1f} s" + (f" {value / median[n][ratio_of]:6.1%}" if ratio_of else " " * 7))
        print(f"  {label:46}" + "".join(f"{c:>22}" for c in cells))
    for p in PHASES: row(p, p, "wall")
    row("wall time", "wall")
    row("CPU time (the command and its processes)", "cpu")
    row("compute (feature cells + DeepAR training)", "compute", "wall")
    row("orchestration overhead (target <= 15%)", "overhead", "wall")
    row("fully cached re-run (target <= 5% of wall)", "cached", "wall")
    row("fully cached re-run: CPU time", "cached_cpu")
    print(f"  the DeepAR trainer's imports measured apart: {imports:.1f} s; the cached re-run took "
          + ", ".join(f"{median[n]['cached_steps']:.0f} steps from the cache ({n})" for n in names))


if __name__ == "__main__":
    main()
