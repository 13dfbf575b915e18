#!/usr/bin/env bash
# Install the pinned stack into an existing venv (the Makefile's setup step; CI's set-up).
#   scripts/install_venv.sh VENV EXTRAS INSTALLER
# EXTRAS: the project's extras, comma-separated (Makefile EXTRAS). INSTALLER: uv or pip.
# Both install the same packages: requirements-ci.txt (the CPU torch and the pinned extras), the project editable with
# its EXTRAS, and requirements-ci-nodeps.txt with --no-deps. uv (pinned: UV_VERSION) does it in about 40 s on a fresh
# 2-core machine where pip takes about 85 s, bytecode compiled by both. uv reads no pip configuration, so the find-links
# and constraint files pip is configured with (the local CPU torch wheel on these machines) are handed to it. A uv
# install that fails says so in one line and pip installs instead.
set -euo pipefail
VENV=$1 EXTRAS=$2 INSTALLER=${3:-uv}
UV_VERSION=0.13.10
PY="$VENV/bin/python"
case "$INSTALLER" in
    uv|pip) ;;
    *) echo "install_venv.sh: INSTALLER=$INSTALLER: use uv or pip" >&2; exit 2 ;;
esac

with_pip() {
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -r requirements-ci.txt
    "$PY" -m pip install -q -e ".[$EXTRAS]"
    "$PY" -m pip install -q --no-deps -r requirements-ci-nodeps.txt
}

with_uv() {
    "$PY" -m pip install -q "uv==$UV_VERSION" || return 1
    local args=() link
    # pip's own view of its configuration (files and PIP_* variables): find-links and constraint
    while IFS= read -r link; do
        [ -n "$link" ] && [ -e "$link" ] && args+=(--find-links "$link")
    done < <("$PY" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.find-links='\(.*\)'$/\1/p" | tr ' ' '\n' | sort -u)
    while IFS= read -r link; do
        [ -n "$link" ] && [ -e "$link" ] && args+=(--constraint "$link")
    done < <("$PY" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.constraint='\(.*\)'$/\1/p" | tr ' ' '\n' | sort -u)
    local uv=("$VENV/bin/uv" pip install -q --python "$PY" --compile-bytecode "${args[@]}")
    "${uv[@]}" -r requirements-ci.txt -e ".[$EXTRAS]" && "${uv[@]}" --no-deps -r requirements-ci-nodeps.txt
}

if [ "$INSTALLER" = pip ]; then
    with_pip
elif ! with_uv; then
    echo "install_venv.sh: the uv install failed (above); installing with pip (INSTALLER=pip skips uv)" >&2
    with_pip
fi
