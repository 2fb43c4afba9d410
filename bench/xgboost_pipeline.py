"""Benchmark: `mlops run --definition` on the abalone XGBoost pipeline — orchestration overhead beside the steps' own compute.

The pipeline is tests/corpus/sdk_pipelines.py build_abalone_end_to_end (AWS's abalone example: SKLearn preprocessing,
built-in XGBoost training, an evaluation script, a Condition, RegisterModel, Model, Transform), built once by the SDK
offline, on the generated abalone CSV of 240 rows. Each round, in a fresh MLOPS_HOME holding the code the SDK uploaded
and the data, `mlops run --definition` runs as a user runs it (the console script, a fresh process, no fork server:
MLOPS_FORKSERVER=0). How each figure is measured:
  - wall time: the command's launch to its exit (this process's clock);
  - a step's time: its start and end in runs.db (what `mlops status` shows);
  - the steps' own compute, what the same job would spend in SageMaker's container:
      the two scripts (AbaloneProcess, AbaloneEval): the job's command, Python start, its imports (pandas, scikit-learn,
        xgboost) and the script, timed by the framework executor around the process ("[mlops] the job's command ran
        N s" in the step's log.txt);
      XGBoost training and transform (AbaloneTrain, AbaloneTransform): what `python -m mlops.xgboost` reports itself
        ("wrote ... in N s": its imports of xgboost, reading the channels, training or predicting, writing), which
        leaves out the Python start;
      the Condition, Model and RegisterModel steps have none (they are the orchestrator's own work);
  - orchestration overhead = wall time − the steps' own compute: the CLI start, checking and planning the definition,
    staging each job's inputs and uploading its outputs, making each job's Python and mount namespace, MLflow tracking
    and the registry, and exiting.
The figures of the round whose wall time is the median (3 rounds by default), and the median overhead.

Usage: python bench/xgboost_pipeline.py [--rounds 3]
"""
import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
SCRIPTS = ("AbaloneProcess", "AbaloneEval")  # framework processing: the executor's job time
XGBOOST = ("AbaloneTrain", "AbaloneTransform")  # python -m mlops.xgboost: its own report
JOB_TIME = re.compile(r"^\[mlops\] the job's command ran ([\d.]+) s$", re.M)
REPORTED = re.compile(r"^wrote .* in ([\d.]+) s$", re.M)


def prepare(folder: Path) -> tuple[Path, Path]:
    "The definition (built once by the SDK, offline) and a store holding its code and the data: (definition file, store)."
    from corpus.sdk_pipelines import ABALONE_INPUT, BUCKET, abalone_dataset, build_into_store
    store = folder / "store"
    definition = build_into_store("abalone_end_to_end", store)
    data = store / BUCKET / Path(*ABALONE_INPUT)
    data.parent.mkdir(parents=True, exist_ok=True)
    abalone_dataset().to_csv(data, header=False, index=False)
    path = folder / "abalone.json"
    path.write_text(json.dumps(definition))
    return path, store


def one_round(definition: Path, store: Path, folder: Path) -> dict[str, float]:
    "One `mlops run --definition` in a fresh MLOPS_HOME: wall time, each step's time and its own compute, in seconds."
    home = folder / ".mlops"
    shutil.copytree(store, home / "store")
    env = {**os.environ, "MLOPS_HOME": str(home), "MLOPS_FORKSERVER": "0", "PYTHONPATH": str(HERE), "COLUMNS": "200"}
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "mlops"), "run", "--definition", str(definition)],
                          cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mlops run failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    with sqlite3.connect(home / "runs.db") as db:
        [(execution,)] = db.execute("SELECT id FROM executions").fetchall()
        steps = {name: ended - begun for name, begun, ended in
                 db.execute("SELECT name, started, ended FROM steps WHERE execution_id = ? ORDER BY started", (execution,))}
    result = {"wall": wall, **{f"step {name}": seconds for name, seconds in steps.items()}}
    for name in (*SCRIPTS, *XGBOOST):
        log = (home / "runs" / execution / name / "log.txt").read_text()
        found = (JOB_TIME if name in SCRIPTS else REPORTED).findall(log)
        if not found: raise SystemExit(f"cannot read {name}'s own time from its log.txt")
        result[f"compute {name}"] = float(found[-1])
    result["compute"] = sum(v for k, v in result.items() if k.startswith("compute "))
    result["overhead"] = wall - result["compute"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-xgboost-") as tmp:
        definition, store = prepare(Path(tmp))
        rounds = []
        for number in range(options.rounds):
            rounds.append(one_round(definition, store, Path(tmp) / f"round-{number}"))
            print(f"round {number + 1}/{options.rounds}: {rounds[-1]['wall']:.1f} s wall, "
                  f"{rounds[-1]['compute']:.1f} s the steps' own compute", flush=True)
    # the round of the median wall time, every figure of it (so that they add up), and the median overhead of all rounds
    median = sorted(rounds, key=lambda r: r["wall"])[len(rounds) // 2]
    overhead = statistics.median(r["overhead"] for r in rounds)
    print(f"\nmlops run --definition, the abalone XGBoost pipeline (240 rows), no fork server, the round of median wall time of {options.rounds}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"  {'step':24}{'step time':>12}{'own compute':>14}")
    for key in [k for k in rounds[0] if k.startswith("step ")]:
        name = key[len("step "):]
        own = median.get(f"compute {name}")
        print(f"  {name:24}{median[key]:>10.2f} s{(f'{own:>12.2f} s' if own is not None else f'{chr(8212):>14}')}")
    print(f"  {'wall time':24}{median['wall']:>10.2f} s")
    print(f"  {'the steps own compute':24}{median['compute']:>10.2f} s  ({100 * median['compute'] / median['wall']:.0f} %)")
    print(f"  {'orchestration overhead':24}{median['overhead']:>10.2f} s  ({100 * median['overhead'] / median['wall']:.0f} %); "
          f"median over the rounds {overhead:.2f} s")


if __name__ == "__main__":
    main()
