#!/usr/bin/env bash
# One-command GPU check at full size (about 9 minutes on one H100 / H200; nothing downloaded):
# encoder training step, stage-2 training step at 32 x 30 s, speculative vs autoregressive decoding,
# the 5.0 TurboCTC training step vs the 4.0 encoder.
# Writes one JSON (default work/gpu_check/gpu_check.json, or the first argument) and prints a summary.
#
#     benchmarks/gpu_check.sh [OUT.json] [--parts encoder,stage2,speculative,turboctc] [--caps stage2=240] [--budget 530]
#     GT_VENV=/path/to/venv benchmarks/gpu_check.sh      # default: the repository's .venv
#
# Details and the figures recorded: benchmarks/gpu_check.py (--help).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GT_VENV:-$repo/.venv}"
python="$venv/bin/python"
if [[ ! -x "$python" ]]; then
    echo "gpu_check: no Python at $python (set GT_VENV to the virtual environment)" >&2
    exit 2
fi
exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
