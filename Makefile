# Set-up and entry points. `make run` and `make test` are the README's Quick start.
# `make run` prints the build summary, then trains the small preset on the built-in dataset.
PY := .venv/bin/python
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h)

.PHONY: setup run test bench gpu-check
setup: .venv/.built

.venv/.built: $(SOURCES)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 numpy pybind11 ninja pillow pytest pytest-benchmark nvidia-ml-py scipy
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

run: setup
	$(PY) -m t2i_fast.info
	$(PY) -m t2i_fast.train

test: setup
	$(PY) -m pytest tests -q

bench: setup
	$(PY) -m pytest benchmarks/ --benchmark-only -q

# On a GPU machine (torch preinstalled there): build, full-size GPU tests, benchmarks -> $OUT
gpu-check:
	bash benchmarks/gpu_check.sh
