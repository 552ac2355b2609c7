# The two commands of the README's quick start: `make serve` and `make test`.
# Each creates .venv and installs the project into it on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck unit system-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/chargegrid serve

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(BIN)/.installed
	$(BIN)/mypy
	$(BIN)/mypy --strict examples  # the public API, as an embedding application uses it

# Programs the tests drive for real: Debian's chromium (dashboard tests, through Playwright's
# Python package with executable_path), nginx (the two-node test) and redis-server (the Redis
# outage test starts its own). Installed when missing and
# this is root (as in CI); elsewhere those tests skip, and fail under CI=true.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "note: install$$missing (Debian packages) to run the browser and multi-node tests"; \
		fi; \
	fi

unit: $(BIN)/.installed system-deps
	$(BIN)/pytest

test: lint typecheck unit

# `make demo`: serve, provision DEMO_CPS simulated charge points, a dashboard user and an id tag,
# then run the simulator against the server until DEMO_DURATION seconds are over (Ctrl-C stops
# both). Watch it on http://127.0.0.1:8180/ (user demo, password demo-password).
DEMO_CPS ?= 50
DEMO_DURATION ?= 3600
DEMO_SPEED ?= 10
DEMO_DB ?= demo.db

.PHONY: demo
demo: $(BIN)/.installed
	@echo "identity,auth_key,security_profile" > .demo-fleet.csv
	@i=1; while [ $$i -le $(DEMO_CPS) ]; do printf 'SIM%05d,,0\n' $$i >> .demo-fleet.csv; i=$$((i+1)); done
	CHARGEGRID_DATABASE_URL=sqlite+aiosqlite:///$(DEMO_DB) $(BIN)/chargegrid charge-points import .demo-fleet.csv --skip-existing
	-CHARGEGRID_DATABASE_URL=sqlite+aiosqlite:///$(DEMO_DB) $(BIN)/chargegrid id-tags add SIMTAG 2>/dev/null
	-CHARGEGRID_DATABASE_URL=sqlite+aiosqlite:///$(DEMO_DB) $(BIN)/chargegrid users add demo --role admin --password demo-password 2>/dev/null
	@# One shared id tag for the whole fleet, so the concurrent-use check is off for the demo.
	CHARGEGRID_DATABASE_URL=sqlite+aiosqlite:///$(DEMO_DB) CHARGEGRID_AUTHORIZE_CONCURRENT_TX=false \
	  $(BIN)/chargegrid serve & server=$$!; trap 'kill $$server' EXIT INT TERM; sleep 3; \
	  $(BIN)/chargegrid simulate --url ws://127.0.0.1:8180/ocpp --charge-points $(DEMO_CPS) \
	    --duration $(DEMO_DURATION) --speed $(DEMO_SPEED) --summary-json demo-summary.json
