"""Benchmark: `mlops run` on the demo data — where the time goes.

Measured in one run, in a fresh MLOPS_HOME:
  - the wall time of `mlops run` (the training pipeline, the README's main command), as a user runs it;
  - the steps' own compute: time inside the feature-engineering notebook's cells (from papermill's
    per-cell timings, import cells excluded) and inside training (the time the local DeepAR reports
    for its job, minus the import time of torch, lightning and GluonTS measured in the same run);
  - the orchestration overhead, wall time minus compute, as a fraction of the wall time (everything
    else counts: Python and kernel start-up, imports, copying to and from the local store, records);
  - the wall time of a fully cached re-run, as a fraction of the first.
Targets: overhead ≤ 15 %, cached re-run ≤ 5 %.

Usage: python bench/runner.py [-p NAME=VALUE ...]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLOPS = str(Path(sys.executable).parent / "mlops")


def notebook_compute(notebook: Path) -> float:
    "Seconds spent in the executed notebook's cells, without the cells that only import."
    cells = json.loads(notebook.read_text())["cells"]
    total = 0.0
    for cell in cells:
        source = "".join(cell.get("source", "")).strip()
        lines = [l for l in source.splitlines() if l.strip() and not l.strip().startswith("#")]
        if cell["cell_type"] != "code" or all(l.startswith(("import ", "from ")) for l in lines):
            continue
        total += cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
    return total


def trainer_reported(log: Path) -> float:
    "Seconds the local DeepAR reports for its whole job (reading channels, imports of its libraries, training, evaluation, saving)."
    reported = re.findall(r"in ([\d.]+) s$", log.read_text(), flags=re.M)
    if not reported:
        raise SystemExit(f"cannot read the training time from {log}")
    return float(reported[-1])


def training_imports() -> float:
    "Seconds to import what the trainer imports (torch, lightning, GluonTS), measured in a fresh process now."
    code = ("import time; t = time.perf_counter(); import torch, lightning, gluonts.torch.model.deepar; "
            "print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def run(home: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([MLOPS, "run", *args], capture_output=True, text=True,
                            env={**os.environ, "MLOPS_HOME": str(home), "COLUMNS": "200"})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"mlops run failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    options = parser.parse_args()
    args = [a for p in options.parameter for a in ("-p", p)]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        first, _ = run(home, args)
        cached, second = run(home, args)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from mlops.engine.execution import Execution
        from mlops.engine.records import Records
        records = Records(home / "runs.db")
        executions = records.executions(2)
        execution = Execution.load(executions[-1]["id"], home)
        run_folder = home / "runs" / execution.id
        fe = notebook_compute(next(run_folder.glob("FeatureEngineering/output/report/*.ipynb")))
        log = run_folder / "TrainDeepAR" / "log.txt"
        reported, imports = trainer_reported(log), training_imports()
        # a worker prestarted during feature engineering has its libraries loaded before its clock starts
        prestarted = "runs in a worker prestarted" in log.read_text()
        train = reported if prestarted else reported - imports
        steps = {s.name: s.elapsed for s in execution.steps}
        rerun = Execution.load(executions[0]["id"], home)
        cached_steps = [s.name for s in rerun.steps if s.cached_from]
    compute = fe + train
    overhead = first - compute
    print(f"mlops run (training pipeline, demo data{', ' + ' '.join(options.parameter) if options.parameter else ''})")
    print(f"  wall time                      {first:7.1f} s")
    print(f"  step wall times                " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    print(f"  compute: feature notebook cells {fe:6.1f} s")
    if prestarted:
        print(f"  compute: DeepAR training        {train:6.1f} s (its {imports:.1f} s of torch/lightning/GluonTS imports ran in a "
              "worker prestarted during feature engineering)")
    else:
        print(f"  compute: DeepAR training        {train:6.1f} s (the trainer's {reported:.1f} s minus {imports:.1f} s of "
              "torch/lightning/GluonTS imports)")
    print(f"  orchestration overhead         {overhead:7.1f} s = {overhead / first:.1%} of the wall time (target ≤ 15%)")
    print(f"  fully cached re-run            {cached:7.1f} s = {cached / first:.1%} of the first (target ≤ 5%); "
          f"cached steps: {', '.join(cached_steps)}")


if __name__ == "__main__":
    main()
