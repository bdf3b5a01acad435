# The commands the README names.  `make demo` and `make test` work on a fresh machine: `deps`
# (scripts/bootstrap.sh) installs PostgreSQL, pgbouncer and the build tools when missing.
PY ?= python3
PIP = $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: all deps build native python demo test test-native test-python lint bench compat wheels \
	wheels-check clean

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
	$(PY) -m ruff check python tests bench compat
	$(PY) -m ruff format --check python tests bench compat
	$(PY) -m mypy
	$(PY) -m mypy.stubtest veilgate_native --allowlist native/py/stubtest-allowlist.txt

test-native:
	cargo test --locked -p veilgate-core

test-python:
	$(PY) -m pytest $(PYTEST_ARGS)

test: build lint test-native test-python

bench: build
	$(PY) bench/run.py relay

# psycopg's own test suite direct, through veilgate as a relay, and through veilgate with a
# masking policy; prints the totals and every test that fails only through veilgate
# (compat/run.py --help; e.g. make compat COMPAT_ARGS="-k copy").
COMPAT_ARGS ?=
compat: build
	$(PY) compat/run.py $(COMPAT_ARGS)

# Release wheels + sdists of both distributions into wheels/ (scripts/build_wheels.sh: abi3
# veilgate-native, one veilgate wheel per CPython in WHEEL_PYTHONS, auditwheel-repaired to
# manylinux, stripped).  Needs Rust and the CPython versions, not PostgreSQL.
WHEEL_PYTHONS ?= 3.11 3.12 3.13
wheels:
	WHEEL_PYTHONS="$(WHEEL_PYTHONS)" bash scripts/build_wheels.sh

# Install the built wheels into a fresh venv per CPython version and smoke-test them (serve,
# connect through it, mask) against the throwaway cluster; run once by .ci/run, not by pytest.
wheels-check: wheels
	VEILGATE_WHEELS_DIR=wheels VEILGATE_WHEEL_PYTHONS="$(WHEEL_PYTHONS)" \
		$(PY) -m pytest -x -q -p no:cacheprovider tests/wheels

clean:
	cargo clean
	rm -rf build dist wheels .wheel-build .compat python/*.egg-info python/veilgate/gateway/_relay.c python/veilgate/gateway/_relay*.so
