#!/usr/bin/env bash
# Issue 17 at CPU scale: generated multi-task data -> a tiny LLM that knows Spanish -> the multi-task
# recipe and the ASR-only recipe at the same steps -> the held-out measurements (RESULTS.md).
#   bash scripts/multitask_tiny.sh                     (WORK=work/mt ENCODER=... CORPUS=... to move things)
# Every step is re-runnable: generators skip finished shards, the LLM build is reused for the same
# settings, training resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
PY="$VENV/bin/python"
WORK=${WORK:-work}
CORPUS=${CORPUS:-$WORK/corpus}                          # holds tts_en (granite-tts, scripts/ctc_tiny_en.sh)
ENCODER=${ENCODER:-$WORK/experiments/ctc_tiny_en/encoder_hf}   # the tiny stage-1 encoder
STEPS=${STEPS:-1800}
C=$CORPUS/tts_en

# 1. generated data: AST en -> es (Apertium, checked through Catalan), keyword lists, a biasing test set
for split in train test; do
  "$PY" -m data_prep.translate --source "$C" --split $split --source-language en --target-languages es \
    --out "$WORK/ast/tts_en_es" --transcription-share 0.3 \
    --primary-backend apertium --secondary-backend apertium --secondary-route '{src}-ca,ca-{tgt}' --quiet
done
"$PY" -m data_prep.keywords generate --source "$C" --split train --out "$WORK/kw/en" --common-top-k 500
"$PY" -m data_prep.keywords generate --source "$C" --split test --out "$WORK/kw/en" --common-top-k 500 \
  --frequency-file "$WORK/kw/en/word_counts-train.tsv"
"$PY" -m data_prep.keywords testset --out "$WORK/kw/testset" --num-sentences 300

# 2. the base LLM: English transcripts + the Spanish targets (the demo's LLM settings)
mkdir -p "$WORK/llm"
"$PY" - "$C" "$WORK/ast/tts_en_es" "$WORK/llm/texts_en_es.txt" <<'PYEOF'
import sys
import datasets
corpus, ast, out = sys.argv[1:]
en = datasets.load_dataset("parquet", data_files=f"{corpus}/data/train-*.parquet", split="train", columns=["text"])
es = datasets.load_dataset("parquet", data_files=f"{ast}/data/train-*.parquet", split="train", columns=["target_text"])
lines = [t for t in en["text"] if t] + [t for t in es["target_text"] if t]
open(out, "w").write("\n".join(line.replace("\n", " ") for line in lines) + "\n")
print(f"{len(lines)} texts -> {out}")
PYEOF
"$PY" -m data_prep.base_llm --texts "$WORK/llm/texts_en_es.txt" --out "$WORK/llm/tiny_en_es" \
  --preset tiny --vocab-size 1024 --pretrain-steps 900 --copy-share 0.9 --batch-size 32

# 3. the multi-task recipe, and the ASR-only recipe on the same encoder, LLM and steps
COMMON=(paths.work_dir="$WORK" paths.corpus_dir="$CORPUS" model.encoder="$ENCODER" model.llm="$WORK/llm/tiny_en_es"
        trainer.max_steps=$STEPS trainer.val_every_n_steps=600 trainer.checkpoint_every_n_steps=600)
"$VENV/bin/granite-train" train recipe=speech_llm_multitask_tiny "${COMMON[@]}"
"$VENV/bin/granite-train" train recipe=speech_llm_tiny_en "${COMMON[@]}" name=speech_llm_asr_only_tiny \
  output_dir="$WORK/experiments/speech_llm_asr_only_tiny"

# 4. held-out measurements
"$PY" scripts/multitask_eval.py --work "$WORK" --corpus "$CORPUS"
