# The two commands of the README: `make bench` and `make test`. Each bootstraps .venv from nothing but Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := test,bench,mpi,study,peers
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: bench test venv compare asv check-html clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*; touch $@

bench: venv
	$(VENV)/bin/normbench run --quick

test: venv
	$(PY) -m pytest -q tests

compare: venv
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-only --benchmark-autosave \
		--benchmark-storage=results/pytest --benchmark-compare || $(PY) -m pytest tests/benchmarks \
		--benchmark-enable --benchmark-only --benchmark-autosave --benchmark-storage=results/pytest

clean:
	rm -rf $(VENV) .pytest_cache results/html
