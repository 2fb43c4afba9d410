# Two entry points (see README): `make run` and `make test`. Both create .venv with venv + pip when it is
# missing and install the project; the install is skipped while setup.py, settings.ini and
# constraints.txt are unchanged (a stamp file named by their hash).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py settings.ini constraints.txt | sha256sum | cut -c1-16)

.PHONY: install run test check-export check-clean render-check nbdev-test pytest regression regression-update constraints

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/mlops run

# each chapter runs once, in a real Jupyter kernel with nbdev_test's flags (tests/test_chapters_in_jupyter.py; DEVELOPERS.md),
# so `test` runs no nbdev_test of its own; the nbval references run in the same pytest, shared out between the workers
test: $(STAMP) check-export check-clean render-check
	$(BIN)/pytest tests $(PYTEST_PARALLEL) -q --nbval --nbval-sanitize-with tests/regression/sanitize.cfg
	$(PY) -m mlops.engine.forkserver stop --all
	@echo "all checks passed"

# a fork server that a check's `mlops run` starts ends a minute after its last job (and `test` stops them at the end)
test nbdev-test pytest regression: export MLOPS_FORKSERVER_IDLE = 60

# the package and the notebooks must already agree: exporting and cleaning change nothing
check-export: $(STAMP)
	$(PY) tools/unchanged.py $(BIN)/nbdev_export

check-clean: $(STAMP)
	$(PY) tools/unchanged.py $(BIN)/nbdev_clean

# templates/ must be what the pipeline code renders (exit 1 with a diff otherwise)
render-check: $(STAMP)
	$(BIN)/mlops render --check

nbdev-test: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2

# pytest-xdist: two workers (CI has 2 cores); a module's tests stay together on one worker unless it shares them out
# (tests/conftest.py: `--dist loadgroup`, one group per module), so its module-scoped fixtures are built once; the
# slowest groups first (conftest.py orders them; `--no-loadscope-reorder` keeps that order)
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# the pytest suites, including papermill runs of every step notebook (tests/test_step_notebooks.py)
pytest: $(STAMP)
	$(BIN)/pytest tests $(PYTEST_PARALLEL) -q

regression: $(STAMP)
	$(BIN)/pytest --nbval tests/regression -q -p no:cacheprovider --nbval-sanitize-with tests/regression/sanitize.cfg

constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^mlops' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.body
	{ sed -n '1,3p' constraints.txt; cat constraints.body; } > constraints.txt.new && rm constraints.body && mv constraints.txt.new constraints.txt

# re-execute the nbval reference notebooks after an intended change of output; review and commit the diff
regression-update: $(STAMP)
	$(PY) tools/execute_regression.py

# the docs (DEVELOPERS.md, "README and the site"): README.md is what nbs/index.ipynb makes (unchanged, as
# check-export), and the Quarto site is built into _docs/ when Quarto is installed
.PHONY: docs
docs: $(STAMP)
	$(PY) tools/unchanged.py $(PY) tools/docs.py

test: docs
