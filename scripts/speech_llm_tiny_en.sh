#!/usr/bin/env bash
# Stage 2 end to end on CPU: the tiny base LLM (BPE tokenizer + language-model and in-context copy
# pretraining), then the tiny stage-2 recipe on the frozen stage-1 encoder, then generation-based
# eval of the exported transformers folder on the held-out sentences (greedy and 8-beam search).
# Needs the corpus and the stage-1 encoder of scripts/ctc_tiny_en.sh.
# Extra arguments are Hydra overrides for the training run, e.g. trainer.max_steps=100.
# Re-runnable: the LLM is built once, training resumes from its last checkpoint (resume=auto);
# start over with `rm -rf work/llm/tiny_en work/experiments/speech_llm_tiny_en`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${GT_VENV:-.venv}
# ENCODER / OUT: another stage-1 encoder and run folder (e.g. ENCODER=work/transfer/a/encoder_hf)
CORPUS=work/corpus/tts_en
ENCODER=${ENCODER:-work/experiments/ctc_tiny_en/encoder_hf}
LLM=work/llm/tiny_en
OUT=${OUT:-work/experiments/speech_llm_tiny_en}
[ -f "$ENCODER/config.json" ] || { echo "no stage-1 encoder at $ENCODER: run scripts/ctc_tiny_en.sh first" >&2; exit 1; }

# 1. the base LLM (a stand-in for granite-4.0-1b-base: it must know the language and copy from context)
if [ ! -f "$LLM/model.safetensors" ]; then
  start=$(date +%s)
  "$VENV/bin/python" -m data_prep.base_llm --corpus "$CORPUS" --out "$LLM" \
    --pretrain-steps 1500 --copy-share 0.9 --batch-size 32
  echo "base LLM wall time: $(( $(date +%s) - start )) s"
fi

# 2. stage 2 (timed: the recipe's target is WER <= 30% within 30 minutes on 2 cores)
start=$(date +%s)
"$VENV/bin/granite-train" train recipe=speech_llm_tiny_en model.encoder="$ENCODER" model.llm="$LLM" \
  output_dir="$OUT" "$@"
echo "training wall time: $(( $(date +%s) - start )) s"

# 3. greedy generation on the held-out sentences, from the exported transformers folder
# greedy, then beam search (8 beams: 5-10 WER points better on this model, RESULTS.md trials 13-17)
for beams in 1 8; do
  "$VENV/bin/granite-train" eval model_path="$OUT/speech_llm_hf" output_dir="$OUT/eval_beam$beams" \
    num_beams=$beams "datasets=[{name: tts_en_test, path: $CORPUS, split: test, language: en}]"
done
