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
