#!/usr/bin/env bash
# Install Debian's chromium for the HTML report test when it is absent; a second run does nothing.
# Never fails the test run: without chromium the report test skips and says why.
set -u
CHROMIUM="${ELM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_chromium: no apt-get here; the report test will skip (install chromium yourself)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup_chromium: not root and no password-less sudo; the report test will skip" >&2
        exit 0
    fi
fi
echo "setup_chromium: installing Debian's chromium for the report test" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null 2>&1 || true
    $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || echo "setup_chromium: apt-get could not install chromium; the report test will skip" >&2
fi
exit 0
