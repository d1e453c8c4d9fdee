# Every target runs inside the environment that tools/devenv.sh chooses and builds:
# a .venv on hosts with glibc >= 2.39, otherwise a cached Debian 13 /usr mounted over the host's.
DEVENV := tools/devenv.sh
PYTEST_ARGS ?=
# Two test processes (pytest-xdist), whole files to each so a module's shared pipeline run
# happens once: much of a pipeline run is single-threaded Python, so the second core is idle
# in a serial run (measured: 26 min for the suite with two; 47 serially before the runs were
# shared). Files go in collection order, the longest first (tests/conftest.py), not xdist's
# "most tests first".
TEST_WORKERS ?= 2
PREFIX ?= /usr/local

.PHONY: setup install test demo bench lock which

setup:
	@$(DEVENV) setup

# A `dolg-tfx` command on PATH ($(PREFIX)/bin) that runs the CLI in this environment from any
# directory, arguments and exit status unchanged.
install: setup
	@$(DEVENV) install-launcher $(PREFIX)/bin

test: setup
	@$(DEVENV) run python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

demo: setup
	@$(DEVENV) run dolg-tfx demo $(DEMO_ARGS)

bench: setup
	@$(DEVENV) run python -m benchmarks.run_all $(BENCH_ARGS)

# Re-resolve dependencies and rewrite requirements/lock.txt (commit the result).
lock:
	@$(DEVENV) lock

which:
	@$(DEVENV) which
