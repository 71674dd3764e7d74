#!/bin/sh
# Installs a Debian package when apt-get is usable: install-debian.sh PACKAGE WHAT-FOR.
# make uses it for dataset-fashion-mnist (the official files, offline), chromium (the pages'
# browser test, driven headless through Playwright, whose own downloads are never used) and
# postgresql (the sweep's test starts its own server from its programs, in a temporary folder).
set -eu
package="$1"
purpose="$2"
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "install-debian: not root and no sudo; run: apt-get install $package ($purpose)" >&2; exit 1
        fi
    fi
    echo "install-debian: apt-get install $package ($purpose)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$package" >/dev/null
else
    echo "install-debian: no apt-get here; install $package yourself ($purpose)" >&2
    exit 1
fi
