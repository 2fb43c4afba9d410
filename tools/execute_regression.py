"""Re-execute the nbval reference notebooks in tests/regression and store their outputs.

Usage: python tools/execute_regression.py [NOTEBOOK...]   (default: every notebook in tests/regression)
Run it when a change of output is intended, review the diff, and commit the notebooks.
"""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(paths: list[str]) -> int:
    notebooks = [Path(p) for p in paths] or sorted(Path("tests/regression").glob("*.ipynb"))
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        notebook.metadata.pop("widgets", None)
        nbformat.write(notebook, path)
        print(f"executed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
