#!/usr/bin/env bash
# The main job: a short SDPO training run on the embedded default model (about 7 minutes on 2 CPU cores).
# It prints a start summary, a line per step and each validation, and ends with the closing summary:
# held-out accuracy before -> after training (and the best), the run directory and `resd report RUN_DIR`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh embedded
# shellcheck disable=SC1091
. .venv/bin/activate
resd train --preset demo "$@"
