# The two commands of the README: `make demo` and `make test`. Both install
# what is missing first (Open vSwitch and tools from the OS packages, a
# virtualenv with the project), so they work on a fresh Debian/Ubuntu box.
# (prometheus is there for its promtool: the suite checks ops/'s alerting rules;
# the Prometheus service Debian would start with it is disabled again.)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WORKDIR ?= /tmp/bluefield-coordinator-demo
SOURCES := coordinator tests proto examples

.PHONY: test demo deps system-deps proto lint typecheck unit golden fuzz-policy fuzz-api bfb-overlay bench soak

deps: system-deps $(STAMP)

system-deps:
	@if ! command -v ovs-vswitchd >/dev/null || ! command -v ping >/dev/null || ! command -v ip >/dev/null \
	     || ! command -v curl >/dev/null || ! command -v systemd-analyze >/dev/null \
	     || ! command -v promtool >/dev/null \
	     || ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "installing system packages (openvswitch-switch iputils-ping iproute2 curl systemd python3-venv prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    openvswitch-switch iputils-ping iproute2 curl systemd python3-venv prometheus >/dev/null; \
	  if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

proto: $(STAMP)
	$(BIN)/python proto/generate.py

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy

test: deps lint typecheck
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The differential test of the flow compiler against the reference evaluator,
# ten times the probes of `make test` (packets traced through a private OVS).
fuzz-policy: deps
	POLICY_FUZZ_PROBES=20000 $(BIN)/python -m pytest -q tests/integration/test_differential.py

# The fuzz test of the real API server (random messages and bytes for every
# RPC as host, admin and a role-less identity), a hundred times the batches of
# `make test`, with shrinking of what fails.
fuzz-api: deps
	API_FUZZ_BATCHES=1200 $(BIN)/python -m pytest -q -p no:logging --timeout=7200 tests/integration/test_api_fuzz.py

# The restart-safety storm, longer: concurrent clients, SIGKILL at random
# moments, invariants checked after every restart.
soak: deps
	STORM_ROUNDS=20 STORM_CLIENTS=8 $(BIN)/python -m pytest -q -s tests/integration/test_restart_safety.py -k storm

demo: deps
	$(BIN)/python -m coordinator.dev.demo --workdir $(DEMO_WORKDIR)

BFB_PLATFORM ?=
BFB_PYTHON ?= 3.10
# The archive layered onto the BFB image; for the DPU:
#   make bfb-overlay BFB_PLATFORM=manylinux2014_aarch64 BFB_PYTHON=3.10
bfb-overlay: $(STAMP)
	bash bfb-overlay/build.sh --python $(BIN)/python $(if $(BFB_PLATFORM),--platform $(BFB_PLATFORM) --python-version $(BFB_PYTHON))

# The benchmark (docs/BENCHMARKS.md): the daemon against a raw ovs-ofctl bundle
# and against OVN 23.03, all private (own OVS, OVN, daemon, namespaces). Prints
# the table, writes bench/results/latest.json and rewrites docs/BENCHMARKS.md.
bench: deps
	@if ! command -v ovn-nbctl >/dev/null || ! command -v ovn-northd >/dev/null \
	     || ! command -v ovn-controller >/dev/null; then \
	  echo "installing system packages (ovn-central ovn-host)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    ovn-central ovn-host >/dev/null; \
	fi
	$(BIN)/python -m bench

golden: $(STAMP)
	$(BIN)/python -m tests.golden.regen
