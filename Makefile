# Two entry points a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast test-vm lint fmt docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The demo needs kiln and its runtime dependencies only.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

# The suite also needs moto, parliament, linters and type stubs.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(BIN)/kiln demo

test: $(TEST_STAMP)
	./scripts/test-deps.sh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The inner loop: engine, bake, config and CLI, no processes started (< 30 s quiet).
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not aws" tests/deploy tests/bake \
		tests/test_config.py tests/test_cli_basics.py tests/test_cli_startup.py

# The AMI rehearsal on booted VMs (tests/vm): builds the lab's base disk when it is
# not cached (about 7 min from the Debian mirror, once per machine), then boots
# a builder and two clones under QEMU (TCG when KVM does not work: slow).
# Not part of `make test`: the rehearsal alone takes ~15 min under TCG on a quiet
# 2-core machine (28 min at load 12); run it as its own CI job.
test-vm: $(TEST_STAMP)
	./scripts/vm-deps.sh
	./scripts/vm-base.sh
	KILN_VM=1 $(BIN)/python -m pytest -m vm -s tests/vm

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

docs: $(TEST_STAMP)
	$(BIN)/python -m kiln.cli.docgen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
