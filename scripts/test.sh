#!/usr/bin/env bash
# The test suite: installs what it needs into .venv, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh test,embedded
# shellcheck disable=SC1091
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false
python -m pytest -q "$@"
