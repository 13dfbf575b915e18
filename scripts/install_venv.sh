#!/usr/bin/env bash
# Install the pinned stack into an existing venv (the Makefile's setup step; CI's set-up).
#   scripts/install_venv.sh VENV EXTRAS INSTALLER
# EXTRAS: the project's extras, comma-separated (Makefile EXTRAS). INSTALLER: uv or pip.
# Both install the same packages: requirements-ci.txt (the CPU torch and the pinned extras), the project editable with
# its EXTRAS, and requirements-ci-nodeps.txt with --no-deps (pip freeze equal but for uv). With uv (pinned: UV_VERSION)
# `make setup` took 38-46 s on a fresh 2-core machine, with pip 87-99 s (two rounds, alternating), bytecode compiled by
# both. uv reads no pip configuration, so the indexes, find-links and constraints pip is configured with (the local CPU
# torch wheel on these machines) are handed to it. A uv install that fails says so in one line and pip installs instead.
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
    # pip's own view of its configuration (files and PIP_* variables), handed to uv: the indexes, find-links and
    # constraints that exist (pip skips a missing local one with a warning; uv would stop), and pip's choice of the
    # best match over all indexes (uv's default takes the first index that has the package)
    local config args=(--index-strategy unsafe-best-match) key value
    config=$("$PY" -m pip config list 2>/dev/null || true)
    for key in index-url extra-index-url find-links constraint; do
        while IFS= read -r value; do
            [ -n "$value" ] || continue
            case "$value" in
                file://*) [ -e "${value#file://}" ] || continue ;;
                http://*|https://*) ;;
                *) [ -e "$value" ] || continue ;;
            esac
            args+=("--$key" "$value")
        done < <(sed -n "s/^[^=]*\.$key='\(.*\)'$/\1/p" <<<"$config" | tr ' ' '\n' | sort -u)
    done
    local uv=("$VENV/bin/uv" pip install -q --python "$PY" --compile-bytecode "${args[@]}")
    "${uv[@]}" -r requirements-ci.txt -e ".[$EXTRAS]" && "${uv[@]}" --no-deps -r requirements-ci-nodeps.txt
}

if [ "$INSTALLER" = pip ]; then
    with_pip
elif ! with_uv; then
    echo "install_venv.sh: the uv install failed (above); installing with pip (INSTALLER=pip skips uv)" >&2
    with_pip
fi
