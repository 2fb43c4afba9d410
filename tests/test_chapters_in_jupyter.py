"""Every module chapter runs top to bottom in a real Jupyter kernel, as a person's Run All does.

nbdev_test runs the chapters too, but in its own shell, skipping `#| eval: false` cells; a real
kernel runs every cell, with `__name__ == "__main__"` and the kernel's own argv, from the notebook's
folder. Here each chapter is executed by nbclient in a fresh kernel, from its folder, every cell
included, with a private MLOPS_HOME. The step notebooks (nbs/processing) run with small parameters
in tests/test_step_notebooks.py.
"""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from mlops.config import project_root

NBS = project_root() / "nbs"
CHAPTERS = sorted(p for p in NBS.rglob("*.ipynb") if "processing" not in p.relative_to(NBS).parts[:1]
                  and ".ipynb_checkpoints" not in p.parts)


def test_every_chapter_is_collected():
    assert len(CHAPTERS) >= 20 and all(p.parent.name != "processing" for p in CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.relative_to(NBS).as_posix())
def test_chapter_runs_top_to_bottom_in_a_jupyter_kernel(chapter: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))  # the kernel inherits it: nothing lands in the project's store
    notebook = nbformat.read(chapter, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(chapter.parent)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{chapter.relative_to(NBS)} fails in a Jupyter kernel:\n{str(e)[-3000:]}")
