# Two entry points a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-deps test-fast test-vm lint fmt docs clean build

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

BUILD_STAMP := $(VENV)/.built

# The demo needs kiln and its runtime dependencies only.
$(RUN_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP) $(BUILD_STAMP)

# The suite also needs moto, parliament, linters and type stubs.
$(TEST_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(RUN_STAMP) $(BUILD_STAMP)

# The install compiles the balancer's hot path in place (setup.py: each module
# under src/kiln with a .pxd beside it; pure Python when Cython or a C compiler
# is missing, or with KILN_PURE=1). An edited module or .pxd is compiled again
# here (only what changed, when the venv has Cython: the test extra brings it);
# until then kiln imports its .py (kiln.local.compiled), never a stale build.
ACCELERATED := $(shell find src/kiln -name '*.pxd')
$(BUILD_STAMP): $(ACCELERATED) $(ACCELERATED:.pxd=.py) | $(RUN_STAMP)
	if $(BIN)/python -c 'import Cython' 2>/dev/null; then \
		$(BIN)/python setup.py -q build_ext --inplace; \
	else \
		$(BIN)/python -m pip install -q --no-deps -e .; \
	fi
	touch $(BUILD_STAMP)

build: $(BUILD_STAMP)

demo: $(RUN_STAMP) $(BUILD_STAMP)
	$(BIN)/kiln demo

# `make test` runs the suite on JOBS pytest-xdist workers, longest test files
# first, an idle worker taking work from the busiest (tests/suiteorder.py):
# most tests wait on processes, health gates and the network rather than the
# CPU, so 4 workers suit a 2-core machine. It includes the VM rehearsal (tests/vm), which boots
# QEMU machines on one worker while the others run the rest; its base disk is
# built on first use (minutes, needs root) and cached. KILN_VM=0 leaves it out.
JOBS ?= 4
KILN_VM ?= 1

# System tools first: the install compiles with the C compiler they include.
test-deps:
	PYTHON=$(PY) ./scripts/test-deps.sh

test: test-deps $(TEST_STAMP) $(BUILD_STAMP)
	if [ "$(KILN_VM)" = 1 ]; then ./scripts/vm-deps.sh; fi
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	KILN_VM=$(KILN_VM) $(BIN)/python -m pytest -n $(JOBS) --dist worksteal --durations=15

# The inner loop: engine, bake, config and CLI, no processes started (< 30 s quiet).
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not aws" tests/deploy tests/bake \
		tests/test_config.py tests/test_cli_basics.py tests/test_cli_startup.py

# The AMI rehearsal on booted VMs alone (tests/vm): builds the lab's base disk
# when it is not cached (about 6 min from the Debian mirror, once per machine),
# then boots a builder and two clones under QEMU (TCG when KVM does not work).
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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	find src/kiln \( -name '*.so' -o -name '*.c' \) -delete
