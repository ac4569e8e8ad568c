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

# The browser is best-effort: without it only the report screenshot test is skipped (and says why).
test: venv
	-@$(MAKE) --no-print-directory browser
	$(PY) -m pytest -p no:cacheprovider --durations=15 tests

# `make demo`: set up, then train a CIFAR-10 model end to end (DEMO_RECIPE, DEMO_MINUTES of training
# fitted by --time-budget) and evaluate it. Three minutes hold a few epochs, where cifar-fast-muon (Muon,
# cheaper steps) beats cifar-fast: Muon alone 82.8% vs 78.6% on a 2-core Xeon; with the cheaper steps 83.3%
# vs 78.4% on a slower 2-core AMD CPU without AVX-512 (means of 3 seeds); for budgets past about 10 epochs use
# DEMO_RECIPE=cifar-fast. DATA=cifar10 downloads the official archive;
# DATA=DIR uses a local copy (an ImageFolder tree or an extracted cifar-10-batches-py), e.g.
#   make demo DATA=/work/shared/data/cifar10/train
# Training holds out 5,000 images for validation; EVAL_DATA (default: DATA; for cifar10 its official
# test set) is what `resnets eval` scores. When it is the DATA folder the run trained on, eval scores only
# the images the run held out (--held-out), never the ones it trained on.
DEMO_DATA = $(if $(DATA),$(DATA),cifar10)
EVAL_DATA ?= $(DEMO_DATA)
EVAL_HELD_OUT = $(if $(filter-out cifar10 cifar100,$(DATA)),$(if $(filter $(DEMO_DATA),$(EVAL_DATA)),--held-out))
DEMO_MINUTES ?= 3
DEMO_RECIPE ?= cifar-fast-muon
DEMO_OUT ?= runs/demo
demo: venv
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/resnets train --recipe $(DEMO_RECIPE) --data $(DEMO_DATA) --time-budget $(DEMO_MINUTES) --out $(DEMO_OUT)
	$(VENV)/bin/resnets eval --checkpoint $(DEMO_OUT)/best.safetensors --data $(EVAL_DATA) $(EVAL_HELD_OUT) \
	  --tta flip-translate --precision auto --json $(DEMO_OUT)/eval.json
	@echo "run folder: $(DEMO_OUT) (config.yaml, metrics.jsonl, last.pt, best.safetensors, eval.json, eval.confusion.png)"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

# `make browser`: Chromium for the report's screenshot test (tests/report). Idempotent: does nothing
# when a Chromium is already on PATH; needs apt (Debian/Ubuntu) and root otherwise.
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@command -v chromium || command -v chromium-browser
