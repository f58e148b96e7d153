#!/usr/bin/env bash
# Issue 19: does synthetic speech transfer? The tiny stage-1 recipe at the same number of steps on
#   (a) espeak-ng only                    recipe ctc_tiny_en
#   (b) espeak-ng + Festival (no flite)   recipe ctc_tiny_engines
#   (c) (b) + acoustic variety            recipe ctc_tiny_engines_degrade
#   (d) (c) + FSDD george/jackson/nicolas recipe ctc_tiny_mix
# each scored by greedy CTC on the espeak-ng test split, the same test sentences read by Flite (an
# engine no row trains on) and FSDD speaker yweweler (real speech no row trains on).
#
#   bash scripts/transfer_table.sh                 # everything, in order (resumable)
#   bash scripts/transfer_table.sh corpora         # the three corpora only
#   bash scripts/transfer_table.sh train a|b|c|d   # one row's training (resumes from its checkpoint)
#   bash scripts/transfer_table.sh eval a|b|c|d    # one row's three scores
#   bash scripts/transfer_table.sh table           # the markdown table (and a plot) of what is scored
# Training overrides come from TRAIN_ARGS, e.g. TRAIN_ARGS="trainer.threads=1" to run two rows at
# once on 2 cores. Outputs: work/transfer/<row>/ (checkpoints, encoder_hf/, eval/).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
CORPUS=${CORPUS_DIR:-work/corpus}
OUT=${TRANSFER_DIR:-work/transfer}
GEN=(--languages en --test-fraction 0.05 --shard-size 250 --seed 0)
declare -A RECIPE=([a]=ctc_tiny_en [b]=ctc_tiny_engines [c]=ctc_tiny_engines_degrade [d]=ctc_tiny_mix)

corpora() {
  "$VENV/bin/granite-tts" "${GEN[@]}" --out "$CORPUS/tts_en"                                  # (a)
  "$VENV/bin/granite-tts" "${GEN[@]}" --engines flite --splits test --out "$CORPUS/tts_en_flite"  # held out
  "$VENV/bin/granite-tts" "${GEN[@]}" --engines espeak=0.5,festival=0.5 --out "$CORPUS/tts_en_engines"  # (b)-(d)
}

train() {
  local row=$1
  # shellcheck disable=SC2086
  "$VENV/bin/granite-train" train recipe="${RECIPE[$row]}" output_dir="$OUT/$row" \
    paths.corpus_dir="$PWD/$CORPUS" ${TRAIN_ARGS:-}
}

evaluate() {
  local row=$1
  # (one line: Hydra's override grammar takes no newline inside a value)
  local sets="[{name: espeak_test, path: $CORPUS/tts_en, split: test, language: en},"
  sets+=" {name: flite_test, path: $CORPUS/tts_en_flite, split: test, language: en},"
  sets+=" {name: fsdd_yweweler, path: ../shared/data/fsdd, kind: audiofolder, split: train, id_column: null,"
  sets+=" language: en, holdout: only, holdout_speakers: [yweweler]}]"
  "$VENV/bin/granite-train" eval model_path="$OUT/$row/encoder_hf" output_dir="$OUT/$row/eval" normalizer=basic \
    "datasets=$sets"
}

table() {
  "$VENV/bin/python" scripts/transfer_table.py --runs "$OUT" --out "$OUT/table"
}

case "${1:-all}" in
  corpora) corpora ;;
  train) train "$2" ;;
  eval) evaluate "$2" ;;
  table) table ;;
  all)
    bash scripts/setup.sh
    corpora
    for row in a b c d; do train "$row"; evaluate "$row"; done
    table
    ;;
  *) echo "usage: $0 [all|corpora|train ROW|eval ROW|table]" >&2; exit 2 ;;
esac
