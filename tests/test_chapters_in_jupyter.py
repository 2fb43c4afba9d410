"""Every module chapter runs top to bottom in a real Jupyter kernel, with nbdev_test's rules: the one run of the chapters.

Each chapter is executed by nbclient in a fresh python3 kernel (with `__name__ == "__main__"` and the kernel's own argv),
from its folder, with a private MLOPS_HOME, as a person's Run All does. The cells it leaves out are the ones nbdev_test
leaves out: a cell flagged with a flag of settings.ini's `tst_flags` (`#| slow`, `#| notest`), a cell calling
`nbdev_export(`, a notebook in a folder holding `.notest` (nbs/processing: the step notebooks, which run with small
parameters in tests/test_step_notebooks.py), a notebook whose front matter says `skip_exec`. nbdev_test also leaves out
`#| eval: false` cells; a Run All does not, and neither does this run: such a cell (an entry point guarded against
running in a kernel, a render) must pass in a kernel. So every cell nbdev_test runs is run here, in the kernel a reader
uses, and the cells it skips only for speed are `#| slow`: `nbdev_test --flags slow` runs them.
"""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbdev.config import get_config
from nbdev.doclinks import nbglob
from nbdev.process import extract_directives

from mlops.config import project_root

NBS = project_root() / "nbs"
SKIP_FLAGS = set(get_config().tst_flags.split())  # settings.ini's tst_flags, the flags nbdev_test skips
# the notebooks nbdev_test runs: nbdev's own glob (no `_`/`.` files or folders), less those beside a `.notest` file
CHAPTERS = sorted(p.absolute() for p in nbglob(NBS, as_path=True) if not (p.parent / ".notest").exists())


def skipped(cell) -> bool:
    "nbdev_test's rule (nbdev.test.test_nb), without its `eval: false`: markdown, `nbdev_export(` and tst_flags cells."
    if cell.cell_type != "code": return True
    if "nbdev_export" + "(" in cell.source: return True
    return bool(SKIP_FLAGS & set(extract_directives(cell, remove=False)))


def test_every_chapter_is_collected():
    assert len(CHAPTERS) >= 20 and all(p.parent.name != "processing" for p in CHAPTERS)
    assert SKIP_FLAGS == {"notest", "slow"}


def test_the_skip_rule_is_nbdevs():
    "The rule can fail: a flagged cell is left out, an unflagged or `eval: false` one is run."
    cell = nbformat.v4.new_code_cell
    assert skipped(cell("#| slow\ntrain()")) and skipped(cell("#|notest\nx = 1")) and skipped(cell("nbdev_export()"))
    assert not skipped(cell("#| eval: false\nx = 1")) and not skipped(cell("#| export\ndef f(): pass"))
    assert not skipped(cell("x = 1  # slow"))
    runner = nbformat.read(NBS / "08_runner.ipynb", as_version=4)  # the full demo run (about a minute) is `#| slow`
    assert [c.source for c in runner.cells if c.cell_type == "code" and skipped(c) and 'run("training")' in c.source]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.relative_to(NBS).as_posix())
def test_chapter_runs_top_to_bottom_in_a_jupyter_kernel(chapter: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))  # the kernel inherits it: nothing lands in the project's store
    monkeypatch.setenv("IN_TEST", "1")  # as nbdev_test sets it
    notebook = nbformat.read(chapter, as_version=4)
    if str(notebook.metadata.get("skip_exec", "")).lower() in ("true", "1"): return
    if not any(c.cell_type == "code" for c in notebook.cells): return  # a page of prose (index.ipynb, which makes README.md)
    notebook.cells = [c for c in notebook.cells if not skipped(c)]
    assert notebook.cells, f"{chapter.relative_to(NBS)} has no cell to run"
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(chapter.parent)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{chapter.relative_to(NBS)} fails in a Jupyter kernel:\n{str(e)[-3000:]}")
