# Two commands do everything on a fresh clone (see README):
#   make run    set up .venv, then execute the whole notebook suite headless (smoke profile) into runs/
#   make test   set up .venv, then run unit tests, nbval over notebooks/ and the browser test
PY      ?= python3
ROOT    := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.dnlib-installed
PROFILE ?= smoke
# pytest-xdist workers for make test/check (loadscope: a module's tests, and a notebook's cells, share one worker,
# so module fixtures and nbval's kernel are made once; the longest modules first, conftest.py). JOBS=0: one process.
JOBS    ?= 2
XDIST   := $(if $(filter-out 0,$(JOBS)),-n $(JOBS) --dist loadscope --no-loadscope-reorder)
export MPLBACKEND ?= agg
# The data root: DNLIB_DATA if set, else ../shared/data when it is beside the clone, else data/.
DNLIB_DATA ?= $(firstword $(wildcard $(abspath ../shared/data)) $(abspath data))
export DNLIB_DATA

.PHONY: setup git-filter run test check bench report clean

# dnlib's and the scripts' bytecode, written here: where PYTHONDONTWRITEBYTECODE is set (as on this project's machines),
# every process would otherwise compile dnlib from source on import (about 0.25 CPU-s each; make test starts hundreds:
# CLI runs, sweeps, notebook kernels). Incremental: only what changed since the last make is compiled again.
setup: $(STAMP)
	@$(MAKE) --no-print-directory -f $(ROOT)/Makefile git-filter VENV=$(abspath $(VENV))
	@$(BIN)/python -m compileall -q dnlib scripts >/dev/null

# The stack: requirements-ci.txt (the pinned CPU torch and extras), the project editable with EXTRAS, and the test
# references of requirements-ci-nodeps.txt with --no-deps (scripts/install_venv.sh). INSTALLER=uv (default) installs
# them with a pinned uv (make setup on a fresh 2-core machine: 38-46 s against 87-99 s with pip), the same packages;
# INSTALLER=pip uses pip alone, as does a uv install that fails.
EXTRAS    := notebooks,test,ray,triton,tensorboard
INSTALLER ?= uv
$(STAMP): pyproject.toml requirements-ci.txt requirements-ci-nodeps.txt scripts/install_venv.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	bash scripts/install_venv.sh $(VENV) $(EXTRAS) $(INSTALLER)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(BIN)/python -m dnlib.envconfig
	touch $(STAMP)

# Notebooks are stored stripped (no outputs or counts except keep_output cells; tests/test_notebooks_meta.py):
# a git clean filter (scripts/nbclean.py, named nbstripout in .gitattributes) strips them on `git add`, so a notebook
# saved in JupyterLab never commits outputs; JupyterLab's save hook (in the venv's etc/jupyter) makes `git status`
# compare that stored form after a save, not the file's size. Idempotent; skipped outside a git checkout.
FILTER := "$(abspath $(BIN))/python" "$(ROOT)/scripts/nbclean.py"
git-filter:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '$(FILTER)' && \
	  git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.required false && \
	  git config diff.ipynb.textconv '$(FILTER) -t' && \
	  $(FILTER) --install-save-hook >/dev/null && \
	  echo "git filter nbstripout: notebooks are stripped on git add, JupyterLab saves keep git status clean (scripts/nbclean.py)"; \
	else echo "not a git checkout: no notebook filter installed"; fi

run: setup
	$(BIN)/python -m dnlib.notebook.suite run --profile $(PROFILE)

test: setup
	$(BIN)/python -m pytest -q $(XDIST) --durations=25 -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=600 tests notebooks

# The inner loop of development: the unit tests without the notebooks, the browser and the tests marked slow.
check: setup
	$(BIN)/python -m pytest -q $(XDIST) -m "not browser and not slow" --durations=15 tests

# One torch thread, as results/bench_cpu.txt and README's CPU figures were measured (dnlib.bench alone takes
# torch's own choice, a thread per core).
bench: setup
	$(BIN)/python -m dnlib.bench --threads 1

# The newest finished suite run's executed notebooks plus 06_results (executed now when that run lacks it) as HTML
# in one folder a reader can open offline: runs/<profile>/suite-<UTC time>/report/index.html (scripts/report.py
# --help). RESULTS=DIR: 06 (and so the report) reads the run folders in DIR (a sweep's --out), not results/records.
RESULTS ?=
report: setup
	$(BIN)/python scripts/report.py $(if $(RESULTS),--results "$(RESULTS)")

clean:
	rm -rf runs .pytest_cache
