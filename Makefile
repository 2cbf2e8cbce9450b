# `make demo` and `make test` create or update the local virtual environment, then run.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.regionbench-installed

.PHONY: demo test test-slow bench bench-gpu install clean-demo

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet cython numpy==2.4.6
	$(PY) -m pip install --quiet --no-build-isolation fast-slic==0.4.0
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation sam2==1.1.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# generate the mini VOC set -> extract region shards -> train -> evaluate, then print the table
demo: $(STAMP)
	@start=$$(date +%s); \
	$(PY) -m bench.extract experiment=quickstart && \
	$(PY) train.py experiment=quickstart && \
	$(PY) eval.py experiment=quickstart && \
	echo "demo wall time: $$(( $$(date +%s) - start )) s"

test: $(STAMP)
	$(PY) -m pytest -q

# every hot path timed against its literal reference in one process: prints one table and writes
# results/bench/bench.json and bench.md (about 5-8 minutes; see benchmarks/__init__.py)
bench: $(STAMP)
	$(PY) -m benchmarks.run

# SAM ViT-H AMG, DINOv2 ViT-L/14 (single and batched), GPU pooling, end-to-end extraction and autocast
# differences on one CUDA GPU (random weights of the real sizes, about 2-3 minutes): prints one table and
# writes results/bench/bench_gpu.json; without a GPU it says so and exits 0 (see benchmarks/gpu.py)
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean-demo:
	rm -rf data/minivoc data/shards/minivoc results/quickstart
