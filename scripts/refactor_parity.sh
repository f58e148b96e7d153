#!/usr/bin/env bash
# Behaviour check for structural changes: a 60-step stage-1 run and a 60-step stage-2 run (tiny
# recipes, CPU, deterministic, fp32, same seed) and the SHA-256 of their final weights. Run it
# before and after a refactor; equal hashes mean the change did not touch what training computes.
#   bash scripts/refactor_parity.sh [WORK_DIR]      (default work/parity; ~4 min on 2 CPU cores)
# The corpus (400 bundled English sentences, espeak-ng) and the stand-in base LLM are built once and
# reused; both runs start from scratch each time (resume=null).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
WORK=${1:-work/parity}
PY="$VENV/bin/python"
mkdir -p "$WORK"
COMMON=(seed=0 resume=null trainer.deterministic=true trainer.precision=32-true trainer.threads=1
  trainer.val_every_n_steps=null trainer.max_steps=60 trainer.checkpoint_every_n_steps=60
  trainer.enable_progress_bar=false data.num_workers=0 logger.wandb.mode=disabled)

# 1. corpus: the first 400 bundled English sentences
head -n 400 data_prep/texts/en.txt > "$WORK/en400.txt"
"$VENV/bin/granite-tts" --texts "en=$WORK/en400.txt" --out "$WORK/corpus" --test-fraction 0.05 \
  --shard-size 200 --seed 0 --quiet

# 2. stage 1, 60 steps
"$VENV/bin/granite-train" train recipe=ctc_tiny_en "${COMMON[@]}" output_dir="$WORK/stage1" \
  "data.train.sources=[{name: tts_en, path: $WORK/corpus, split: train, language: en}]" \
  "data.val.sources=[{name: tts_en_test, path: $WORK/corpus, split: test, language: en}]"

# 3. the stand-in base LLM (built once; its weights are an input of stage 2, hashed below)
if [ ! -f "$WORK/llm/model.safetensors" ]; then
  if "$PY" -c "import data_prep.base_llm" 2>/dev/null; then mod=data_prep.base_llm; \
  else mod=granite_train.models.tiny_llm; fi
  "$PY" -m "$mod" --corpus "$WORK/corpus" --out "$WORK/llm" --pretrain-steps 30 --copy-share 0.9 --batch-size 8
fi

# 4. stage 2, 60 steps (the LLM held for the first 30: both optimizer phases run)
"$VENV/bin/granite-train" train recipe=speech_llm_tiny_en "${COMMON[@]}" output_dir="$WORK/stage2" \
  model.encoder="$WORK/stage1/encoder_hf" model.llm="$WORK/llm" 'optim.start_step={language_model: 30}' \
  "data.train.sources=[{name: tts_en, path: $WORK/corpus, split: train, language: en, task: asr}]" \
  "data.val.sources=[{name: tts_en_test, path: $WORK/corpus, split: test, language: en, task: asr}]"

# 5. hashes of the final weights (every tensor of the checkpoint's state_dict, in key order)
"$PY" - "$WORK" <<'EOF'
import hashlib, sys
from pathlib import Path
import torch
from safetensors.torch import load_file

work = Path(sys.argv[1])
def digest(state):
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode()); h.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
print(f"base LLM weights: {digest(load_file(work / 'llm' / 'model.safetensors'))}")
for stage in ("stage1", "stage2"):
    ckpt = torch.load(work / stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    print(f"{stage} step {ckpt['global_step']} weights: {digest(ckpt['state_dict'])}")
EOF
