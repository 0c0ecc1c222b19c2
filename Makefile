# Everything installs itself into $(VENV) (created on first use). torch is pinned first so that pip
# takes the CPU wheel instead of downloading a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test tsan bench clean

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.hpp csrc/cuda/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The main job on the embedded default (until the shapes-world demo lands: the region table's
# benchmark and ARIA's allocation loop on a simulated landscape).
demo: install
	$(PY) benchmarks/bench_region_table.py
	$(VENV)/bin/aria-hpc simulate configs/simulate.yaml

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

tsan: install
	scripts/tsan_check.sh $(PY)

bench: install
	$(PY) benchmarks/bench_region_table.py

clean:
	rm -rf build *.egg-info aria_hpc/_C*.so
