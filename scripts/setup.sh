#!/usr/bin/env bash
# Idempotent set-up: system packages (espeak-ng, festival + voices, flite, apertium-eng-spa / eng-cat / spa-cat), a virtualenv, granite-train with pinned deps.
# Re-running is cheap: pip runs again only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
# TTS engines of data_prep.tts: Festival with its English (kal, ked diphones; slt HTS) and Italian
# (lp, pc) voices is in the recommended training mix (`--engines espeak=0.5,festival=0.5`); flite is the held-out engine for test sets
command -v festival >/dev/null 2>&1 || missing+=(festival)
for pkg in festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k festvox-itapc16k; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == *"ok installed"* ]] || missing+=("$pkg")
done
command -v flite >/dev/null 2>&1 || missing+=(flite)
# Apertium English-Spanish: the offline MT backend of data_prep.translate (its test translates for real)
# (list first, then grep: `grep -q` closing the pipe early would fail the pipeline under pipefail)
modes=$(apertium -l 2>/dev/null || true)
grep -qE '^\s*(en-es|eng-spa)\s*$' <<<"$modes" || missing+=(apertium apertium-eng-spa)
# and the English->Catalan->Spanish pivot that checks it (the multi-task recipe's AST data)
grep -qE '^\s*(en-ca|eng-cat)\s*$' <<<"$modes" || missing+=(apertium-eng-cat)
grep -qE '^\s*(ca-es|cat-spa)\s*$' <<<"$modes" || missing+=(apertium-spa-cat)
if ((${#missing[@]})); then
  echo "[setup] installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; python3 -m venv "$VENV"; }
stamp="$VENV/.granite-train-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing granite-train and pinned dependencies into $VENV (torch pinned in constraints.txt)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  echo "$want" > "$stamp"
fi
