# Thin wrappers over the `scaleout` command line. Every target that runs something sets itself up first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup system test demo up down status lb stop start bench lint clean

setup: system $(STAMP)

system:
	@scripts/setup-system.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

demo: setup
	$(PY) -m scaleout demo

bench: setup
	$(PY) -m scaleout bench

up: setup
	$(PY) -m scaleout up

down: setup
	$(PY) -m scaleout down

status: setup
	$(PY) -m scaleout status

lb: setup
	@test -n "$(MODE)" || { echo "usage: make lb MODE=round_robin|sticky|ip_hash" >&2; exit 2; }
	$(PY) -m scaleout lb $(MODE)

stop: setup
	@test -n "$(SERVICE)" || { echo "usage: make stop SERVICE=api-2|auth|redis" >&2; exit 2; }
	$(PY) -m scaleout stop $(SERVICE)

start: setup
	@test -n "$(SERVICE)" || { echo "usage: make start SERVICE=api-2|auth|redis" >&2; exit 2; }
	$(PY) -m scaleout start $(SERVICE)

clean:
	rm -rf $(VENV) .cluster .pytest_cache .ruff_cache
