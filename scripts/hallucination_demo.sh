#!/usr/bin/env bash
# Issue 18: the demo's stage-2 model on one-word real speech (FSDD speaker yweweler, held out of
# fine-tuning in RESULTS.md issue 16) plus the built-in hallucination probes, decoded
# autoregressively and with CTC-draft speculative decoding at two threshold pairs.
#   bash scripts/hallucination_demo.sh       (MODEL=..., FSDD_CSV=..., OUT=... to move things)
# FSDD_CSV: a CSV with audio,text,speaker,split columns (work/fsdd_sets/yweweler.csv from issue 16).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
MODEL=${MODEL:-work/released/demo_tiny_en}
FSDD_CSV=${FSDD_CSV:-work/fsdd_sets/yweweler.csv}
OUT=${OUT:-work/hallucination}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # steadier timings on a shared CPU
DS="datasets=[{name: fsdd_yweweler, path: $FSDD_CSV, split: test, language: en}]"
run() {  # name, extra overrides...
  local name=$1; shift
  "$VENV/bin/granite-train" eval model_path="$MODEL" "$DS" probes=true device=cpu "$@" \
    output_dir="$OUT/$name" hydra.run.dir="$OUT/hydra/$name"
}
run autoregressive
run speculative_3.0_0.1 decoding=speculative speculative.ctc_threshold=3.0 speculative.confidence_threshold=0.1
run speculative_0.7_0.2 decoding=speculative
