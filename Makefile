# Two entry points: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HOLOMODAL_DATA ?= $(abspath ../shared/data)
# headless Chromium renders the HTML report in tests/test_report.py; a machine without it
# (no root, no network) still installs and tests, that one test then says why it skipped
CHROMIUM := command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || true

.PHONY: demo test test-slow install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	$(CHROMIUM)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/holomodal train -c av_digits_late_fusion

test: $(STAMP)
	@$(CHROMIUM)
	$(PY) -m pytest -q -m "not slow and not gpu and not optional" tests

bench: $(STAMP)
	$(PY) benchmarks/late_fusion.py

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" tests

clean:
	rm -rf runs .pytest_cache
