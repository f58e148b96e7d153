#!/usr/bin/env bash
# Set up (idempotent) and run the main job. Extra arguments are Hydra overrides for `granite-train demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${GT_VENV:-.venv}
"$VENV/bin/granite-train" demo "$@"
