# evalloop: `make help` lists the targets. Everything runs from the repo root with the project venv.
PY := .venv/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup up down status reset kafka-tool run run-isolated test test-isolated test-unit lint typecheck schemas bench reliability clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install everything (venv + pinned packages, redis-server/JDK/Maven via apt, Kafka jars); idempotent
	@bash infra/setup.sh

up: setup ## Start local Kafka (KRaft, 127.0.0.1:19092) and Redis (127.0.0.1:16379); create the topics
	@$(PY) -m infra.local up

down: ## Stop the local services (and a Ray left under .evalloop/ray)
	@$(PY) -m infra.local down

status: ## Show whether each local service is up
	@$(PY) -m infra.local status

reset: ## Stop the services and delete topics, Redis, Ray state and logs; keep the Kafka jars
	@$(PY) -m infra.local reset

kafka-tool: ## Kafka's own tools: make kafka-tool ARGS="console-consumer --topic evalloop.dead-letters --from-beginning"
	@$(PY) -m infra.local tool $(ARGS)

run: up ## The main job: the whole loop on the bundled data, degradation injected, alert fires and resolves
	@$(PY) -m evalloop.cli demo

test: setup ## All tests (unit + integration) against freshly started services; stops them afterwards
	@rc=0; \
	$(PY) -m infra.local up || rc=$$?; \
	if [ $$rc -eq 0 ]; then $(PY) -m pytest -ra $(PYTEST_ARGS) || rc=$$?; fi; \
	if ! $(PY) -m infra.local down; then echo "make test: stopping the services failed" >&2; [ $$rc -ne 0 ] || rc=1; fi; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): that is a failure" >&2; fi; \
	exit $$rc

# The isolated targets share .evalloop/ (pid files, Kafka data) with the host's services, so they
# refuse to start while those run, and always stop what they started inside the namespace.
HOST_SERVICES_DOWN = @if $(PY) -m infra.local status | grep -qE '^(kafka|redis): up'; then \
	echo "stop the host's services first (make down): the isolated run shares .evalloop/" >&2; exit 1; fi

run-isolated: setup ## `make run` inside a loopback-only network namespace (Ray's ports reach nothing else)
	$(HOST_SERVICES_DOWN)
	@infra/isolated.sh bash -c '$(MAKE) --no-print-directory run; rc=$$?; $(MAKE) --no-print-directory down; exit $$rc'

test-isolated: setup ## `make test` inside a loopback-only network namespace (stops its services after)
	$(HOST_SERVICES_DOWN)
	@infra/isolated.sh $(MAKE) --no-print-directory test

test-unit: ## Unit tests only (no services needed)
	@$(PY) -m pytest -ra tests/unit $(PYTEST_ARGS)

lint: ## ruff check + ruff format --check + the import direction (lint-imports); checks only
	@$(PY) -m ruff check . && $(PY) -m ruff format --check . && .venv/bin/lint-imports --no-cache

typecheck: ## mypy --strict on the packages listed in [tool.mypy] (pyproject.toml)
	@$(PY) -m mypy

schemas: ## Export the JSON schemas (schemas/export.py)
	@$(PY) -m schemas.export

bench: up ## Run every benchmark (python -m bench): tables on stdout, JSON under bench/results/
	@$(PY) -m bench

reliability: up ## The crash, restart, fault, fuzz and soak checks as scripts that print their figures
	@$(PY) -m reliability.crash --kills 10
	@$(PY) -m reliability.scale_out --workers 3
	@$(PY) -m reliability.restarts
	@$(PY) -m reliability.faults
	@$(PY) -m reliability.live_fuzz --count 2000
	@$(PY) -m reliability.soak --rate 50 --seconds 120

clean: ## Stop the services and delete the state dir (.evalloop: jars, data, logs)
	@if [ -x $(PY) ]; then $(PY) -m infra.local down; fi
	rm -rf .evalloop
