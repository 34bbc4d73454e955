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

# pytest-benchmark for real: normbench vs the peers per case; saves JSON under results/pytest/ and compares with
# the previous saved run (a report: regressions are judged on the fraction of copy in extra_info, same run)
compare: venv
	$(PY) -m pytest tests/benchmarks -p no:cacheprovider --benchmark-enable --benchmark-only \
		--benchmark-storage=results/pytest --benchmark-autosave --benchmark-columns=median,iqr,rounds \
		--benchmark-group-by=group $$(ls results/pytest/*/*.json >/dev/null 2>&1 && echo --benchmark-compare)

# asv history over a few of the project's commits, on two machine profiles of this box (all threads, and one
# thread), then the HTML site. ASV_RANGE / ASV_BENCH / ASV_STEPS select what runs (see docs/benchmarking.md).
# The machine names come from normbench.machine (host name and LLVM CPU: this box's hardware changes between
# sessions); `?=` defines them recursively (not `:=`), so python runs only in the asv recipe, once the venv exists.
ASV := $(VENV)/bin/asv
ASV_MACHINE ?= $(shell $(PY) -m normbench.machine tag)-numba2t
ASV_MACHINE_1T ?= $(shell $(PY) -m normbench.machine tag)-numba1t
ASV_MACHINE_INFO = --num_cpu $$(nproc) --ram "$$($(PY) -m normbench.machine ram)" \
	--os "$$($(PY) -m normbench.machine os)"
ASV_RANGE ?= 03cbe2b^..HEAD
ASV_STEPS ?= 4
ASV_BENCH ?= -b "track_numba_threads|track_copy_gbps" -b "\('layer_norm/16384x2048/float32', 'cpu'\)" \
	-b "\('batch_norm/64x128x56x56/float32/axis=-1,training=True', 'cpu'\)"
asv: venv
	$(ASV) machine --yes --machine $(ASV_MACHINE) $(ASV_MACHINE_INFO) \
		--cpu "$$($(PY) -m normbench.machine describe)" >/dev/null
	$(ASV) machine --yes --machine $(ASV_MACHINE_1T) $(ASV_MACHINE_INFO) \
		--cpu "$$($(PY) -m normbench.machine describe), NUMBA_NUM_THREADS=1" >/dev/null
	$(ASV) run "$(ASV_RANGE)" --steps $(ASV_STEPS) --machine $(ASV_MACHINE) $(ASV_BENCH) --skip-existing-successful
	NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 $(ASV) run "$(ASV_RANGE)" --steps $(ASV_STEPS) \
		--machine $(ASV_MACHINE_1T) $(ASV_BENCH) --skip-existing-successful
	$(ASV) publish

# outside `make test`: installs Debian's chromium, serves results/html and checks that the graphs render
check-html: venv
	command -v chromium >/dev/null && test -f /usr/share/javascript/jquery-flot/jquery.flot.js || \
		(apt-get update -qq && apt-get install -y -qq chromium libjs-jquery libjs-jquery-flot libjs-bootstrap \
		node-blueimp-md5 libjs-jquery-stupidtable)
	test -f results/html/index.html || $(ASV) publish
	$(PY) -m normbench.benchmarks._check_html --html results/html --out results/asv-html.png

clean:
	rm -rf $(VENV) .pytest_cache results/html
