# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned dev environment first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint clean install

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m cellflow.cli demo

test: $(STAMP)
	$(PY) -m ruff check cellflow tests benchmarks
	$(VENV)/bin/lint-imports  # the layers of docs/architecture.md (contract in pyproject.toml)
	$(PY) -m pytest -q
	$(MAKE) docs

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

lint: $(STAMP)
	$(PY) -m ruff check cellflow tests benchmarks
	$(PY) -m ruff format --check cellflow tests benchmarks

clean:
	rm -rf $(VENV) site .pytest_cache
