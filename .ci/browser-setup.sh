#!/usr/bin/env bash
# Install Debian's Chromium for the JupyterLab browser test (tests/test_browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Playwright's own browser download
# does not work on these machines, so the test launches this binary via executable_path.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "browser-setup: /usr/bin/chromium present ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
echo "browser-setup: installed $(/usr/bin/chromium --version 2>/dev/null)"
