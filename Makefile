# `make test` creates .venv (if needed), installs resnets with its test extras, and runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pair known to work on the project's CPU machines; override for other platforms.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DATA ?=

.PHONY: venv test demo clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

# `make browser`: Chromium for the report's screenshot test (tests/report). Idempotent: does nothing
# when a Chromium is already on PATH; needs apt (Debian/Ubuntu) and root otherwise.
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@command -v chromium || command -v chromium-browser
