#!/usr/bin/env bash
# System packages the tests need besides the Python venv: Debian's Chromium, which the report test uses to open the
# HTML report headless (console errors, a screenshot). CI runs as root; quick no-op when it is already installed.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ci_system_deps: chromium is missing; install it as root: apt-get update && apt-get install -y chromium" >&2
    exit 1
fi
echo "ci_system_deps: installing chromium from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q chromium >/dev/null
echo "ci_system_deps: done" >&2
