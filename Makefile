# Set-up and entry points. `make run` and `make test` are the README's Quick start.
# `make run` prints the build summary, then trains the small preset on the built-in dataset.
PY := .venv/bin/python
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h)

.PHONY: setup run test bench gpu-check
setup: .venv/.built

.venv/.built: $(SOURCES)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 pybind11 ninja
	# the build must see the torch it runs with; extras: pyproject.toml
	$(PY) -m pip install -q --no-build-isolation -e '.[test,eval-ref]'
	touch $@

run: setup
	$(PY) -m t2i_fast.info
	$(PY) -m t2i_fast.train

test: setup
	$(PY) -m pytest tests -q

# Op and model benchmarks (full sizes on a GPU, scaled down on CPU), then their table.
bench: setup
	mkdir -p .benchmarks
	$(PY) -m pytest benchmarks/ --benchmark-only -q --benchmark-json=.benchmarks/bench.json
	$(PY) benchmarks/report.py .benchmarks/bench.json

# On a GPU machine (torch preinstalled there): build, floors, full-size GPU tests, benchmarks and
# the validation record -> $OUT. The record names the commit of the tree: taken from git here
# ("+changes" when tracked files differ from it); a copy without .git needs COMMIT=<sha>.
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git rev-parse HEAD >/dev/null 2>&1 && \
	! git diff --quiet HEAD && echo +changes)
gpu-check:
	COMMIT=$(COMMIT) bash benchmarks/gpu_check.sh
