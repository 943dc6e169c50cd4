# Candor — `make demo` runs the main job, `make test` runs the whole suite. Both set up everything.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.candor-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install data services compose-cli browser test lint demo demo-crowd bench-speed bench-service bench-load e2e-labelstudio clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first and together: pip takes both from this machine's disk.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(FASHION)

services:
	scripts/services.sh

# Debian's docker-compose parses docker-compose.yml without a Docker engine (tests/test_deploy.py).
compose-cli:
	command -v docker-compose >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq docker-compose; }

# Debian's chromium and its WebDriver: tests/test_ui_browser.py drives the web UI in them (Selenium).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install data services compose-cli browser lint
	$(PY) -m pytest

demo: install data
	$(PY) -m app.demo

demo-crowd: install data  # the same, on annotators' votes: the job models the annotators
	$(PY) -m app.demo --crowd --dir build/demo-crowd

bench-speed: install
	$(PY) bench/speed.py

bench-service: install services
	$(PY) bench/service.py

bench-load: install services
	$(PY) bench/load.py

# Label Studio (PyPI label-studio, which brings label-studio-sdk) in a virtual environment of its own:
# its pins (numpy, pandas, Django...) are not the product's.
LS_VENV := build/labelstudio-venv
LS_STAMP := $(LS_VENV)/.labelstudio-installed
$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet label-studio==1.23.2
	touch $(LS_STAMP)

# A real Label Studio end to end: import its export, run a job, push predictions back, ML backend.
e2e-labelstudio: install data $(LS_STAMP)
	$(LS_VENV)/bin/python scripts/e2e_labelstudio.py --candor $(VENV)/bin/candor

clean:
	rm -rf build .pytest_cache .ruff_cache
