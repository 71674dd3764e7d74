#!/bin/sh
# Installs Debian's dataset-fashion-mnist (the official files, offline) when apt-get is usable.
set -eu
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "install-dataset: not root and no sudo; run: apt-get install dataset-fashion-mnist" >&2; exit 1
        fi
    fi
    echo "install-dataset: apt-get install dataset-fashion-mnist"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
    echo "install-dataset: no apt-get here; run 'fashionlab data download' or pass --data-dir DIR" >&2
    exit 1
fi
