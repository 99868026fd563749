# smallcell: `make help` lists the targets.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
CONFIG  ?= config.yaml
N       ?= 3
SC      := bin/smallcell

.DEFAULT_GOAL := help
.PHONY: help setup iter status test lint clean-iter

help:  ## list every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(STAMP)  ## create .venv with everything smallcell needs (idempotent)

test: $(STAMP)  ## run the whole test suite (pytest, slow tests included)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff over the code and the tests
	$(VENV)/bin/ruff check python tests bench
