#!/usr/bin/env bash
# Creates .venv in the repository and installs resd with the given extras (default: test,embedded).
# Without CUDA it installs the CPU build of torch (an unpinned torch would download a multi-GB
# CUDA build); with an NVIDIA GPU it installs the regular torch. Re-running is cheap.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-test,embedded}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# bubblewrap gives the sandbox for model-written code its namespaces (no network, private
# filesystem view); without it resd falls back to resource limits only (see README).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
      || echo "warning: could not install bubblewrap; the sandbox will use resource limits only" >&2
  else
    echo "note: install bubblewrap (e.g. sudo apt-get install bubblewrap) for a stronger sandbox" >&2
  fi
fi
# Debian's Chromium renders report pages in the browser test (skipped without it).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && [ "${RESD_SKIP_CHROMIUM:-0}" != 1 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the report browser test will be skipped" >&2
fi
stamp=".venv/.resd-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  if ! python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      python -m pip install torch
    else
      # A local CPU wheel (this project's machines) or PyTorch's CPU index elsewhere.
      python -m pip install "torch==2.13.0+cpu" 2>/dev/null \
        || python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
  python -m pip install -e ".[${extras}]"
  touch "$stamp"
fi
