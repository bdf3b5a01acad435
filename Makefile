# The commands the README names.  `make demo` and `make test` work on a fresh machine: `deps`
# (scripts/bootstrap.sh) installs PostgreSQL, pgbouncer and the build tools when missing.
PY ?= python3
PIP = $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: all deps build native python demo test test-native test-python lint bench wheels clean

all: build

deps:
	bash scripts/bootstrap.sh

# Release build of the Rust engine (maturin, --locked via pyproject), then the Cython glue.
native:
	$(PIP) install -q --no-deps --no-build-isolation ./native/py

python:
	$(PIP) install -q --no-build-isolation -e ".[test]"

build: deps native python

demo: build
	$(PY) -m veilgate.demo

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	$(PY) -m ruff check python tests bench
	$(PY) -m ruff format --check python tests bench
	$(PY) -m mypy
	$(PY) -m mypy.stubtest veilgate_native --allowlist native/py/stubtest-allowlist.txt

test-native:
	cargo test --locked -p veilgate-core

test-python:
	$(PY) -m pytest $(PYTEST_ARGS)

test: build lint test-native test-python

bench: build
	$(PY) bench/run.py relay

wheels: deps
	rm -rf wheels && mkdir -p wheels
	$(PIP) wheel --no-deps --no-build-isolation -w wheels ./native/py .

clean:
	cargo clean
	rm -rf build dist wheels python/*.egg-info python/veilgate/gateway/_relay.c python/veilgate/gateway/_relay*.so
