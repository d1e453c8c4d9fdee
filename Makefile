# Every target runs inside the environment that tools/devenv.sh chooses and builds:
# a .venv on hosts with glibc >= 2.39, otherwise a cached Debian 13 root filesystem.
DEVENV := tools/devenv.sh
PYTEST_ARGS ?=

.PHONY: setup test demo bench lock which

setup:
	@$(DEVENV) setup

test: setup
	@$(DEVENV) run python -m pytest $(PYTEST_ARGS)

demo: setup
	@$(DEVENV) run dolg-tfx demo $(DEMO_ARGS)

bench: setup
	@$(DEVENV) run python -m benchmarks.run_all $(BENCH_ARGS)

# Re-resolve dependencies and rewrite requirements/lock.txt (commit the result).
lock:
	@$(DEVENV) lock

which:
	@$(DEVENV) which
