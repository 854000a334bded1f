# kick-monitor. `make help` lists the targets; each one is a thin wrapper over the CLI or a tool.
# Everything runs from .venv (created on first use; rebuilt only when setup.cfg or setup.py change).

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
CONFIG   ?=
SCENARIO ?= S1
DURATION ?= 1800
PG_RESTARTS ?= 1
PYTEST_ARGS ?=
KICK_MONITOR := $(BIN)/kick-monitor $(if $(CONFIG),--config $(CONFIG))

.DEFAULT_GOAL := help
.PHONY: help venv test test-slow test-faults lint run demo migrate status bench soak

help: ## list the targets
	@echo "usage: make TARGET [CONFIG=file.env] [SCENARIO=S1]"
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The editable install keeps the build number of its install; `venv` brings it up to the commit count.
venv: $(STAMP) ## create .venv and install kick-monitor with its test extra (= embedded PostgreSQL + supervisor + simulator + test tools)
	@$(BIN)/python setup.py --version >/dev/null 2>&1 || true

$(STAMP): setup.cfg setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kick-monitor needs python 3.11+, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

test: venv ## run the test suite (all but tests marked slow) against real PostgreSQL and processes
	@$(BIN)/python -m pytest -m "not slow" -ra $(PYTEST_ARGS) \
		&& echo "make test: all tests passed" \
		|| { echo "make test: FAILED (failures are listed above)"; exit 1; }

test-slow: venv ## run the long end-to-end suites (tests marked slow: faults, clock, cluster, ...); CI runs it after `make test`
	@$(BIN)/python -m pytest -m slow -ra $(PYTEST_ARGS) \
		&& echo "make test-slow: all slow tests passed" \
		|| { echo "make test-slow: FAILED (failures are listed above)"; exit 1; }

test-faults: venv ## run the fault-injection tests, slow ones included
	$(BIN)/python -m pytest -m faults -ra $(PYTEST_ARGS)

lint: venv ## ruff check + mypy (config in ruff.toml and mypy.ini)
	$(BIN)/ruff check .
	$(BIN)/mypy

run: venv ## run the monitor (settings from KICK_MONITOR_* or CONFIG=file.env)
	$(KICK_MONITOR) run

demo: venv ## embedded database + local Kick simulator + the real service, with a live view
	$(KICK_MONITOR) demo

migrate: venv ## apply database migrations
	$(KICK_MONITOR) db migrate

status: venv ## show every streamer's status
	$(KICK_MONITOR) status

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

bench: $(VENV)/.installed-bench ## run a benchmark scenario (SCENARIO=S1 by default, SCENARIO=all: everything); results in bench/results/
	$(KICK_MONITOR) bench --scenario $(SCENARIO)

soak: $(VENV)/.installed-bench ## 24/7 in miniature: 10k streamers, faults, memory/fds/threads sampled (DURATION=1800 s, PG_RESTARTS=1; exit 1 on FAIL)
	$(KICK_MONITOR) bench --scenario soak --runs 1 --duration $(DURATION) --pg-restarts $(PG_RESTARTS)

# -- operating an installed service (docs/deployment.md); thin wrappers over scripts/ ------------
N ?=
SHARDS ?=
DRY_RUN ?=
OPS := $(if $(CONFIG),KICK_MONITOR_ENV_FILE=$(CONFIG)) sh scripts/ops.sh
.PHONY: install-systemd restart-shard logs metrics

install-systemd: ## install user, data dir, env file, /opt/kick-monitor and the systemd units (root; SHARDS=4 for one unit per shard, DRY_RUN=1 to preview)
	sh scripts/install.sh $(if $(DRY_RUN),--dry-run) $(if $(SHARDS),--shards $(SHARDS))

restart-shard: ## restart shard N of the installed service (N=3): systemd kick-monitor@N, else supervisord
	@test -n "$(N)" || { echo "usage: make restart-shard N=3"; exit 2; }
	$(OPS) restart-shard $(N)

logs: ## follow the installed service's logs (N=3: one shard's)
	$(OPS) logs $(N)

metrics: ## print one scrape of the metrics endpoint (KICK_MONITOR_METRICS_HOST/PORT or CONFIG=file; N=3: a shard's)
	@$(OPS) metrics $(N)
