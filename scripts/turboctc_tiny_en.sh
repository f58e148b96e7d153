#!/usr/bin/env bash
# A tiny granite-speech-5.0 TurboCTC model (BPE CTC at 12.5 Hz) trained on CPU from a fresh clone
# (issue 30), through the same data path, trainer and eval as the 4.0 encoder:
#   1. the multi-engine English corpus (espeak-ng + Festival), as scripts/smollm2_parts.sh makes it
#   2. a new folder in the released layout: a BPE tokenizer trained on the train transcripts, a
#      4 x 128 model (the width and depth of the 4.0 tiny encoder)
#   3. recipes/turboctc_tiny_en.yaml, timed; the export turboctc_hf/ is the released layout
#   4. greedy CTC eval of the export on the test split (plain transformers loads the same folder)
# Extra arguments are Hydra overrides for the training run, e.g. trainer.max_steps=200.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
GT="$VENV/bin/granite-train"
CORPUS=${CORPUS:-work/corpus/tts_en_engines}
INIT=${INIT:-work/turboctc/init_4x128}
OUT=${OUT:-work/experiments/turboctc_tiny_en}
if [ ! -f "$CORPUS/done.json" ] && [ ! -d "$CORPUS/test" ]; then
  "$VENV/bin/granite-tts" --languages en --test-fraction 0.05 --shard-size 250 --seed 0 \
    --engines espeak=0.5,festival=0.5 --out "$CORPUS"
fi
if [ ! -f "$INIT/config.json" ]; then
  "$VENV/bin/python" -m granite_train.models.turboctc_new --texts-from "$CORPUS" --split train \
    --vocab-size 256 --hidden-size 128 --num-layers 4 --num-heads 4 --out "$INIT"
fi
start=$(date +%s)
"$GT" train recipe=turboctc_tiny_en model.init="$INIT" output_dir="$OUT" "$@"
echo "training wall time: $(( $(date +%s) - start )) s"
"$GT" eval model_path="$OUT/turboctc_hf" output_dir="$OUT/eval_greedy" \
  "datasets=[{name: tts_en_engines_test, path: $CORPUS, split: test, language: en}]"
