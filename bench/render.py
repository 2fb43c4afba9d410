"""Benchmark of `mlops render`: a cold render against the floor, a cold import of the SageMaker SDK's pipeline module.

Every measurement is a fresh Python process (cold: nothing imported), and the candidates alternate
within each round, so both see the same machine state. Prints the medians and their ratio (target
≤ 1.3×), and the time `mlops render --check` takes on an unchanged tree, where the fingerprint lets
it answer without building (target < 1 s).

    python bench/render.py [--rounds 5]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLOPS = Path(sys.executable).parent / "mlops"


def render_command(out: Path) -> list[str]:
    "The real command path: the `mlops` console script, as a user runs it."
    return [str(MLOPS), "render", "--out", str(out)]


def check_command(out: Path) -> list[str]:
    return render_command(out) + ["--check"]


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    # the floor needs a region to import at all (the SDK creates AWS clients on import); render sets its own
    floor_env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    render_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    floor = [sys.executable, "-c", "import sagemaker.mlops.workflow.pipeline"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "templates"
        timed(render_command(out), render_env)  # warm the disk cache for both, and produce a tree to check
        timed(floor, floor_env)
        floors, renders, checks = [], [], []
        for _ in range(rounds):
            floors.append(timed(floor, floor_env))
            renders.append(timed(render_command(out), render_env))
            checks.append(timed(check_command(out), render_env))
    floor_s, render_s, check_s = (statistics.median(x) for x in (floors, renders, checks))
    print(f"command: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(render_command(Path('templates'))))}")
    print(f"rounds: {rounds} (medians; each run a fresh process)")
    print(f"floor  python -c 'import sagemaker.mlops.workflow.pipeline': {floor_s:6.2f} s")
    print(f"cold   mlops render:                                       {render_s:6.2f} s")
    print(f"ratio  render / floor:                                     {render_s / floor_s:6.2f}x  (target <= 1.30x)")
    print(f"check  mlops render --check on an unchanged tree:          {check_s:6.2f} s  (target < 1 s)")


if __name__ == "__main__":
    main()
