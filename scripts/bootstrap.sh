#!/usr/bin/env bash
# Installs what building and testing veilgate needs and the machine lacks: PostgreSQL server
# binaries, pgbench, pgbouncer (the bench's reference pooler), a C compiler, and the Python build
# tools.  Idempotent and quiet when everything is already there.  Used by `make` and `.ci/run`.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pg_bin_present() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }

need_apt=()
pg_bin_present || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need_apt+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 && [ -x "$(command -v pgbouncer)" ] || need_apt+=(pgbouncer)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package may start its own cluster on 5432; veilgate's tests and demo never use it.

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found. Install Rust (https://rustup.rs) and re-run." >&2
  exit 1
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true

python3 -m pip --disable-pip-version-check install -q -U \
  "setuptools>=77" wheel "maturin>=1.7,<2" "Cython>=3.0" 2>&1 | grep -v "Running pip as the 'root'" || true
