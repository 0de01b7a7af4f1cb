# The two commands of the README: `make up` (set up and run) and `make test` (the whole suite).
# `make bench ARGS="--quick"`: the benchmark suite (`python -m bench`, docs/performance.md).
.PHONY: up down status test lint bootstrap install bench
VENV := .venv/bin

bootstrap:
	@deploy/local/bootstrap.sh

install: bootstrap
	@$(VENV)/citystream install

up: bootstrap
	@$(VENV)/citystream up

down:
	@$(VENV)/citystream down

status:
	@$(VENV)/citystream status

test: install
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports
	$(VENV)/pytest

bench: install
	$(VENV)/python -m bench $(ARGS)

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports
