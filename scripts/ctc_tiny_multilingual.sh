#!/usr/bin/env bash
# Stage 1 from scratch on four languages (issue 20, item 6): English, German, Spanish and Japanese
# espeak-ng speech (Japanese through its katakana targets), the tiny recipe, then greedy-CTC eval of
# the exported encoder on each language's held-out sentences. Extra arguments are Hydra overrides
# of the training run (e.g. trainer.threads=1). Re-runnable: corpora are kept, training resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${GT_VENV:-.venv}
CORPUS=${CORPUS_DIR:-work/corpus}
OUT=${OUT:-work/experiments/ctc_tiny_multilingual}

for lang in en de es ja; do
  "$VENV/bin/granite-tts" --languages "$lang" --test-fraction 0.05 --shard-size 250 --seed 0 --out "$CORPUS/tts_$lang"
done
start=$(date +%s)
"$VENV/bin/granite-train" train recipe=ctc_tiny_multilingual output_dir="$OUT" paths.corpus_dir="$PWD/$CORPUS" "$@"
echo "training wall time: $(( $(date +%s) - start )) s"
# Japanese is scored on its katakana target (reference: ctc_target), the others on their text
sets="[{name: en_test, path: $CORPUS/tts_en, split: test, language: en},"
sets+=" {name: de_test, path: $CORPUS/tts_de, split: test, language: de},"
sets+=" {name: es_test, path: $CORPUS/tts_es, split: test, language: es},"
sets+=" {name: ja_test, path: $CORPUS/tts_ja, split: test, language: ja, reference: ctc_target}]"
# (one line: Hydra's override grammar takes no newline inside a value)
"$VENV/bin/granite-train" eval model_path="$OUT/encoder_hf" output_dir="$OUT/eval" normalizer=basic "datasets=$sets"
