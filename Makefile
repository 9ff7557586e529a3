# ipytasks — developer entry points. Needs only Python 3.11+ and make.
#
#   make lab    JupyterLab on the tour notebook (builds .venv first)
#   make tour   run notebooks/tour.ipynb headless and print the task table
#   make bench  every benchmark in bench/, one table (QUICK=1: a one-minute smoke run)
#   make test   build .venv and .venv-ik6 (ipykernel 6.29 / IPython 8), install Debian's
#               chromium for the browser test when missing, run ruff and mypy, then pytest
#               (PYTEST_ARGS="tests/test_x.py -k foo" to narrow it)

PYTHON ?= python3
PYTEST_ARGS ?=

VENV := .venv
VENV_IK6 := .venv-ik6
PY := $(VENV)/bin/python
PY_IK6 := $(VENV_IK6)/bin/python
STAMP := $(VENV)/.installed
STAMP_IK6 := $(VENV_IK6)/.installed

IK6_PINS := "ipykernel==6.29.*" "ipython>=8.12,<9"
# What the kernel tests run in that environment too (plots and progress bars from tasks).
IK6_TEST_DEPS := "matplotlib>=3.8" "pandas>=2.1" "tqdm>=4.66"

# JupyterLab refuses to run as root without being told
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

# The browser test (tests/browser) drives Debian's Chromium through Playwright; Playwright's
# own browser download is not used.
CHROMIUM := /usr/bin/chromium
# Not root: sudo, without asking for a password (-n), when there is one.
SUDO := $(if $(filter 0,$(shell id -u)),,$(if $(shell command -v sudo 2>/dev/null),sudo -n,))

.PHONY: lab test tour env env-ik6 chromium clean bench

lab: $(STAMP)
	@echo "Starting JupyterLab; the tour is notebooks/tour.ipynb (in the URL below, replace"
	@echo "'/lab?token=' by '/lab/tree/notebooks/tour.ipynb?token=' if no browser opens it)."
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 $(ALLOW_ROOT) notebooks/tour.ipynb

tour: $(STAMP)
	$(PY) notebooks/run_tour.py notebooks/tour.ipynb

# Lint and type check first (settings in pyproject.toml): either failing fails make test.
test: $(STAMP) $(STAMP_IK6) chromium
	$(PY) -m ruff check src tests bench notebooks
	$(PY) -m mypy
	IPYTASKS_IK6_PYTHON="$(abspath $(PY_IK6))" $(PY) -m pytest $(PYTEST_ARGS)

env: $(STAMP)
env-ik6: $(STAMP_IK6)

# Debian's chromium, when missing and apt-get is there (as root, or through sudo). Never fails:
# without it the browser test skips, saying why (and fails under CI=true).
chromium:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: no apt-get here: cannot install chromium; the browser test will skip"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ] && [ -z "$(SUDO)" ]; then \
		echo "make: not root and no sudo: cannot install chromium; the browser test will skip"; exit 0; fi; \
	echo "make: installing Debian's chromium for the browser test"; \
	$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| echo "make: installing chromium failed; the browser test will skip"

# The main environment: the project with its extras and the test (pytest, ruff, mypy),
# browser and bench groups (--group needs pip>=25.1).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[lab,dask]" --group test --group browser --group bench
	touch $@

# The second kernel environment: the oldest ipykernel/IPython the project supports.
$(STAMP_IK6): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_IK6)
	$(PY_IK6) -m pip install --upgrade pip
	$(PY_IK6) -m pip install -e . $(IK6_PINS) $(IK6_TEST_DEPS)
	touch $@

clean:
	rm -rf $(VENV) $(VENV_IK6) test-output .pytest_cache .hypothesis

# make bench: every benchmark (bench/run.py), one table, also in test-output/bench.md.
# make bench QUICK=1: the smoke run of about a minute that tests/test_bench.py runs.
bench: $(STAMP)
	$(PY) bench/run.py $(if $(QUICK),--quick,)
