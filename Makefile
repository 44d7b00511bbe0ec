# Quickstart: `make run` serves Earmark on 127.0.0.1:8080, `make test` runs the suite.
# Both create .venv and install everything they need on a machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml setup.py app/audio/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/earmark migrate
	$(BIN)/earmark serve --host 127.0.0.1 --port 8080

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check app tests migrations bench
	$(BIN)/ruff format --check app tests migrations bench

clean:
	rm -rf $(VENV) earmark.db earmark.db-wal earmark.db-shm
