#!/usr/bin/env bash
# Creates .venv and installs inspector with everything to train, run, test and demo it.
# Idempotent: make only calls it when pyproject.toml changed or .venv is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
# torch comes from the registry's CUDA build (runs on CPU too): torchvision's wheels need it.
.venv/bin/python -m pip install --quiet -e '.[train,runtime,dev]'
# Debian's Chromium for the dashboard's browser tests (never a downloaded browser).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "setup: could not install chromium; browser tests will be skipped" >&2
  else
    echo "setup: chromium missing (sudo apt-get install chromium chromium-driver); browser tests will be skipped" >&2
  fi
fi
