# Thin wrappers over the `scaleout` command line. Every target that runs something sets itself up first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup system test test-swarm test-fast k8s-render k8s-check demo up down status lb stop start fault bench lint clean lab compose-up compose-lb compose-down compose-status compose-stop compose-start compose-fault swarm-up swarm-down swarm-status swarm-lb swarm-stop swarm-start swarm-scale

setup: system $(STAMP)
	@$(PY) scripts/install_compose_plugin.py

system:
	@scripts/setup-system.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[lab,dev]'
	@$(PY) scripts/fetch_compose_schema.py $(VENV)/share/compose_spec.json
	@rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(PY) -m pytest -q --durations=20

# A swarm across three engines on this machine (two Docker engines in containers as workers), a worker node
# killed under load in three modes: its own target, several minutes long; CI runs it after `make test`.
test-swarm: setup
	$(PY) -m pytest -q --durations=10 tests/swarm

# The inner loop: what needs no cluster, container engine or browser (tests/unit), in well under a minute.
test-fast: setup
	$(PY) -m pytest -q tests/unit

# ruff, the formatter, the strict type checker over the services and the lab, and the import contract
# (the core never imports the lab; the services need none of the lab's dependencies).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

demo: setup
	$(PY) -m scaleout demo $(if $(TARGET),--target $(TARGET))

lab: setup
	$(PY) -m scaleout lab

bench: setup
	$(PY) -m scaleout bench $(if $(TOPOLOGY),--topology $(TOPOLOGY))

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

fault: setup
	@test -n "$(TARGET)" -a -n "$(KIND)" || { echo "usage: make fault TARGET=redis|auth KIND=latency|jitter|bandwidth|blackhole|reset|clear [VALUE=500ms]" >&2; exit 2; }
	$(PY) -m scaleout fault $(TARGET) $(KIND) $(VALUE)

clean:
	rm -rf $(VENV) .cluster .pytest_cache .ruff_cache

# The container path: the same variables, template and renderer as the local one. Each target finds or
# provides the engine, Compose v2 and the images first (see scaleout/lab/compose.py).
compose-up: setup
	$(PY) -m scaleout compose up

compose-down: setup
	$(PY) -m scaleout compose down

compose-status: setup
	$(PY) -m scaleout compose status

compose-lb: setup
	@test -n "$(MODE)" || { echo "usage: make compose-lb MODE=round_robin|sticky|ip_hash" >&2; exit 2; }
	$(PY) -m scaleout compose lb $(MODE)

compose-stop: setup
	@test -n "$(SERVICE)" || { echo "usage: make compose-stop SERVICE=api-2|auth|redis|nginx" >&2; exit 2; }
	$(PY) -m scaleout compose stop $(SERVICE)

compose-start: setup
	@test -n "$(SERVICE)" || { echo "usage: make compose-start SERVICE=api-2|auth|redis|nginx" >&2; exit 2; }
	$(PY) -m scaleout compose start $(SERVICE)

compose-fault: setup
	@test -n "$(TARGET)" -a -n "$(KIND)" || { echo "usage: make compose-fault TARGET=redis|auth KIND=latency|jitter|bandwidth|blackhole|reset|clear [VALUE=500ms]" >&2; exit 2; }
	$(PY) -m scaleout compose fault $(TARGET) $(KIND) $(VALUE)

# Kubernetes, offline (no Kubernetes runs here): the manifests for the mode variables, and every combination
# validated against pinned schemas and the pod rules (scaleout/lab/k8s.py).
k8s-render: setup
	$(PY) -m scaleout k8s render $(if $(OUT),--out $(OUT))

k8s-check: setup
	$(PY) -m scaleout k8s check

# The same cluster as a Docker Swarm stack (deploy/swarm/stack.yml), the same mode variables; SWARM_NODES=3
# adds two engines in containers as workers. `swarm-down` leaves a swarm only if `swarm-up` created it.
swarm-up: setup
	$(PY) -m scaleout swarm up

swarm-down: setup
	$(PY) -m scaleout swarm down

swarm-status: setup
	$(PY) -m scaleout swarm status

swarm-lb: setup
	@test -n "$(MODE)" || { echo "usage: make swarm-lb MODE=round_robin|sticky|ip_hash" >&2; exit 2; }
	$(PY) -m scaleout swarm lb $(MODE)

swarm-stop: setup
	@test -n "$(SERVICE)" || { echo "usage: make swarm-stop SERVICE=api-2|auth|redis|nginx" >&2; exit 2; }
	$(PY) -m scaleout swarm stop $(SERVICE)

swarm-start: setup
	@test -n "$(SERVICE)" || { echo "usage: make swarm-start SERVICE=api-2|auth|redis|nginx" >&2; exit 2; }
	$(PY) -m scaleout swarm start $(SERVICE)

swarm-scale: setup
	@test -n "$(REPLICAS)" || { echo "usage: make swarm-scale REPLICAS=N (1 to 9)" >&2; exit 2; }
	$(PY) -m scaleout swarm scale $(REPLICAS)
