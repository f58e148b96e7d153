#!/usr/bin/env bash
# Stage 1 end to end on CPU: English espeak-ng corpus (6.85 h train, 8 voices, held-out sentences),
# the tiny recipe, then greedy-CTC eval of the exported encoder on the test split.
# Extra arguments are Hydra overrides for the training run, e.g. trainer.max_steps=100.
# Re-runnable: the corpus is kept, training resumes from its last checkpoint (resume=auto);
# start over with `rm -rf work/experiments/ctc_tiny_en`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${GT_VENV:-.venv}
CORPUS=work/corpus/tts_en
OUT=work/experiments/ctc_tiny_en

# 1. corpus (finished shards are skipped on a re-run)
"$VENV/bin/granite-tts" --languages en --out "$CORPUS" --test-fraction 0.05 --shard-size 250 --seed 0

# 2. training (timed: the recipe's target is CER <= 10% within 20 minutes on 2 cores)
start=$(date +%s)
"$VENV/bin/granite-train" train recipe=ctc_tiny_en output_dir="$OUT" "$@"
echo "training wall time: $(( $(date +%s) - start )) s"

# 3. evaluation of the exported transformers folder on the held-out sentences
"$VENV/bin/granite-train" eval model_path="$OUT/encoder_hf" output_dir="$OUT/eval" normalizer=basic \
  "datasets=[{name: tts_en_test, path: $CORPUS, split: test, language: en}]"
