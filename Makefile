# Everything installs itself into $(VENV) (created on first use). torch is pinned first so that pip
# takes the CPU wheel instead of downloading a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test lint tsan bench clean

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.hpp csrc/cuda/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[test,fid]'
	touch $@

install: $(VENV)/.installed

# The main job on the embedded default: RC and ARIA students of the shipped shapes teacher, evaluated
# and compared in runs/demo/report/report.md (DEMO_ARGS=--full adds the paired policy and 3 seeds).
DEMO_ARGS ?=
demo: install
	$(VENV)/bin/aria-hpc demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, import order, bugbear.
lint: install
	$(VENV)/bin/ruff check .

tsan: install
	scripts/tsan_check.sh $(PY)

bench: install
	$(PY) benchmarks/bench_region_table.py

clean:
	rm -rf build *.egg-info aria_hpc/_C*.so
