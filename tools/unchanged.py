"""Run a command and fail if it changed any file that git sees (tracked or untracked).

Usage: python tools/unchanged.py COMMAND [ARGS...]
Used by `make test` to prove that nbdev_export and nbdev_clean leave the tree as it is.
"""
import hashlib
import subprocess
import sys


def snapshot() -> dict[str, str]:
    "Path -> content hash of every changed or untracked file, plus the hash of HEAD's tree."
    listed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "-z"],
                            capture_output=True, text=True, check=True).stdout
    paths = sorted(entry[3:] for entry in listed.split("\0") if entry)
    state = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                state[path] = hashlib.sha256(f.read()).hexdigest()
        except (FileNotFoundError, IsADirectoryError):
            state[path] = "missing"
    return state


def main(command: list[str]) -> int:
    before = snapshot()
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"error: {' '.join(command)} exited with {result.returncode}", file=sys.stderr)
        return result.returncode
    after = snapshot()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        print(f"error: {command[0].split('/')[-1]} changed {len(changed)} file(s): {', '.join(changed)}", file=sys.stderr)
        print("Fix: the notebooks are the source. Run it yourself, review `git diff`, and commit the result.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
