# Candor — `make demo` runs the main job, `make test` runs the whole suite. Both set up everything.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.candor-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install data services compose-cli test lint demo demo-crowd bench-speed bench-service bench-load clean

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

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install data services compose-cli lint
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

clean:
	rm -rf build .pytest_cache .ruff_cache
