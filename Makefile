# Two entry points, both of which set everything up from a fresh clone:
#   make demo   -> virtual environment + `nnunet-prompt demo` on generated synthetic data
#   make test   -> virtual environment + the test suite
VENV ?= .venv
PYTHON ?= python3
# torch/torchvision pinned deliberately: see docs/getting_started.md "Installation". timm (needed by
# dynamic-network-architectures) needs a torchvision that matches torch; this pair lies on the
# machines' local disk and installs offline-fast. It is a CUDA build and also runs on CPU.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

SOURCES := setup.py $(shell find nnunet_prompt trainers planners datasets_conversion -name '*.py' -o -name '*.json' -o -name '*.yaml' 2>/dev/null)

$(VENV)/.installed: $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH_PIN)
	$(VENV)/bin/pip install --quiet ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/nnunet-prompt demo --workdir demo_work

test: install
	$(VENV)/bin/python -m pytest tests -v -rs --durations=15

.PHONY: install demo test
