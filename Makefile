# SecureComm. `make run` installs what is missing, builds and starts the app; `make test` runs
# every test. See README.md.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build run run-node test lint bench fuzz screenshots

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace

run: deps
	$(CARGO) run --release -p securecomm-app --bin securecomm -- $(ARGS)

# The headless node's command line (servers, scripts, machines without a display).
run-node: deps
	$(CARGO) run --release -p securecomm-node --bin securecomm-node -- $(ARGS)

test: deps
	scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench --workspace

# Starts the real window under Xvfb and saves the main screens into docs/screenshots/.
screenshots:
	scripts/screenshots.sh

# Runs every fuzz target for FUZZ_SECONDS each (needs cargo-fuzz; see README).
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)
