# Two entry points: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HOLOMODAL_DATA ?= $(abspath ../shared/data)

.PHONY: demo test test-slow install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/holomodal train -c av_digits_late_fusion

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" tests

bench: $(STAMP)
	$(PY) benchmarks/late_fusion.py

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" tests

clean:
	rm -rf runs .pytest_cache
