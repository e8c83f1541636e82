#!/usr/bin/env bash
# The main job: a short SDPO training run on the embedded default model (about 10 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh embedded
# shellcheck disable=SC1091
. .venv/bin/activate
resd train --preset demo "$@"
