#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite: lint, then pytest without the slow tier.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m ""` for every tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${GT_VENV:-.venv}
"$VENV/bin/ruff" check granite_train data_prep tests benchmarks scripts
"$VENV/bin/python" -m pytest -m "not slow" "$@"
