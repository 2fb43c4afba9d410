"""Benchmark (slow, not part of CI): SIGKILL `mlops run` at random moments, resume it, and count what went wrong.

One shared MLOPS_HOME (a temporary folder) for every trial, so that every version lands in one MLflow registry
and a duplicate anywhere is seen. A first, uninterrupted `mlops run -p Epochs=3 --no-cache` measures how long
a run takes (D). Then, for each trial: start the same command, SIGKILL it and its step processes (its process
group) after a uniformly random time in [0, D], then `mlops run --resume <id>` until it succeeds (at most 5
tries; a resume is never killed). `--no-cache` keeps every trial a full run, so the kills fall anywhere in it
(with the cache on, every run after the first would only register a model).

Printed: trials, executions that completed (after their resumes), resumes needed, kills that came before the
execution was recorded (nothing to resume) or after it ended, duplicate model versions (two versions tagged
with the same execution: expect 0), executions that succeeded without a version (expect 0), and corrupt files:
every JSON (or JSON Lines), notebook and tar.gz in the store and the run folders readable, runs.db and mlflow.db passing
sqlite's integrity check (expect 0).

Usage: python bench/kill_resume.py [--trials 20] [--seed 0] [-p NAME=VALUE ...]
"""
import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import nbformat

MLOPS = str(Path(sys.executable).parent / "mlops")
GROUP = "deepar-forecast"


def executions(home: Path) -> dict[str, str]:
    "Execution id -> status, from runs.db (none before the first run)."
    if not (home / "runs.db").is_file(): return {}
    with sqlite3.connect(home / "runs.db") as db:
        return dict(db.execute("SELECT id, status FROM executions"))


def command(home: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([MLOPS, *args], env={**os.environ, "MLOPS_HOME": str(home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def versions_by_execution(home: Path) -> dict[str, int]:
    "How many model versions each execution registered (their mlops.execution_id tag)."
    with sqlite3.connect(home / "mlflow.db") as db:
        rows = db.execute("SELECT value, COUNT(*) FROM model_version_tags WHERE name=? AND key='mlops.execution_id' GROUP BY value",
                          (GROUP,))
        return dict(rows.fetchall())


def corrupt_files(home: Path) -> list[str]:
    "Files of the store and the run folders that cannot be read back, and databases failing their integrity check."
    bad = []
    for path in sorted([*(home / "store").rglob("*"), *(home / "runs").rglob("*")]):
        if not path.is_file(): continue
        try:
            if path.suffix == ".json":  # a JSON document, or JSON Lines (DeepAR's channels)
                text = path.read_text()
                try: json.loads(text)
                except json.JSONDecodeError: [json.loads(line) for line in text.splitlines() if line.strip()]
            elif path.suffix == ".ipynb": nbformat.read(path, as_version=4)
            elif path.name.endswith(".tar.gz"):
                with tarfile.open(path) as archive:
                    for member in archive.getmembers():
                        if member.isfile(): archive.extractfile(member).read()
        except Exception as e:
            bad.append(f"{path.relative_to(home)}: {type(e).__name__}: {e}")
    for name in ("runs.db", "mlflow.db"):
        with sqlite3.connect(home / name) as db:
            if (result := db.execute("PRAGMA integrity_check").fetchone()[0]) != "ok": bad.append(f"{name}: {result}")
    return bad


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    run = ["run", *sum((["-p", p] for p in (args.parameter or ["Epochs=3"])), []), "--no-cache"]
    home = Path(tempfile.mkdtemp(prefix="mlops-kill-resume-")) / "home"
    print(f"shared MLOPS_HOME: {home}\ncommand: mlops {' '.join(run)}")

    started = time.time()
    first = command(home, *run)
    if first.wait() != 0: sys.exit(f"the uninterrupted run failed: {first.stderr.read()}")
    duration = time.time() - started
    print(f"an uninterrupted run: {duration:.1f} s")

    completed = resumes = before_record = after_end = gave_up = 0
    for trial in range(1, args.trials + 1):
        known, delay = set(executions(home)), rng.uniform(0, duration)
        process = command(home, *run)
        time.sleep(delay)
        ended_first = process.poll() is not None
        if not ended_first: os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        new = [e for e in executions(home) if e not in known]
        if not new:
            before_record += 1
            print(f"trial {trial:2}: killed at {delay:5.1f} s, before the execution was recorded")
            continue
        (execution_id,) = new
        if ended_first or executions(home)[execution_id] == "Succeeded": after_end += 1
        tries = 0
        while executions(home)[execution_id] != "Succeeded" and tries < 5:
            tries += 1
            resume = command(home, "run", "--resume", execution_id)
            _, err = resume.communicate()
            if resume.returncode not in (0, 1): print(f"  resume exited {resume.returncode}: {' '.join(err.split())[:300]}")
        resumes += tries
        status = executions(home)[execution_id]
        completed += status == "Succeeded"
        gave_up += status != "Succeeded"
        print(f"trial {trial:2}: killed at {delay:5.1f} s, {execution_id}: {status} after {tries} resume(s)")

    counts = versions_by_execution(home)
    succeeded = [e for e, s in executions(home).items() if s == "Succeeded"]
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    without = [e for e in succeeded if counts.get(e, 0) == 0]
    bad = corrupt_files(home)
    print(f"\ntrials: {args.trials}; completed: {completed} (of which {after_end} had ended before the kill); killed before the "
          f"execution was recorded: {before_record}; not completed after 5 resumes: {gave_up}; resumes run: {resumes}")
    print(f"model versions: {sum(counts.values())} for {len(succeeded)} succeeded executions; duplicate versions: {duplicates}; "
          f"succeeded without a version: {len(without)}")
    print(f"corrupt files: {len(bad)}" + "".join(f"\n  {b}" for b in bad))


if __name__ == "__main__":
    main()
