"""Memory of a full-size granite-4.0-1b-speech fine-tuning step, from a dry run (no GPU needed).

    .venv/bin/python benchmarks/finetune_memory.py                 # 16 x 30 s, the issue's batch
    .venv/bin/python benchmarks/finetune_memory.py --seconds 30 --batch 8 16 32 --json out.json

The published architecture (random weights, built on ``meta``: nothing is allocated) with a
fresh LoRA (rank 64 on q, v) and the projector training, the encoder frozen (the fine-tuning
notebook's set). For each batch, precision and activation-checkpointing choice it prints the
estimate of :mod:`granite_train.training.memory` (weights, gradients, AdamW state, and the
activations the step's forward saves, counted on ``meta``) against 24, 80 and 141 GiB devices.
These are estimates: allocator fragmentation, CUDA context (~0.5 GiB) and kernels' workspaces
come on top. A measured GPU step is ``benchmarks/stage2_step.py --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage2_step import SIZES, AudioIdOnly, default_dtype, speech_config  # noqa: E402

from granite_train.models.config import LoraSettings  # noqa: E402
from granite_train.models.speech_llm import SpeechLLM  # noqa: E402
from granite_train.training.memory import GIB, MemoryEstimate, estimate_step_memory  # noqa: E402

DEVICES_GIB = (24, 80, 141)


def full_size_model(weights_dtype: torch.dtype) -> SpeechLLM:
    from transformers import GraniteSpeechForConditionalGeneration

    config = speech_config(SIZES["full"])
    with torch.device("meta"), default_dtype(weights_dtype):
        hf = GraniteSpeechForConditionalGeneration(config)
        speech = SpeechLLM(hf, AudioIdOnly(config.audio_token_index))
        speech.add_lora(LoraSettings(rank=64, alpha=64.0))
    speech.set_trainable(projector=True, lora=True)
    return speech


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="utterance length")
    parser.add_argument("--batch", type=int, nargs="+", default=[16], help="utterances per batch")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()

    rows = []
    print(
        "| batch | precision | LLM checkpointing | weights | grads + AdamW | activations | total | fits 24 / 80 / 141 GiB | batch that fits 24 GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for precision, weights_dtype in (("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)):
        speech = full_size_model(weights_dtype)
        for checkpointing in (False, True):
            speech.set_gradient_checkpointing(llm=checkpointing)
            for batch in args.batch:
                frames = int(batch * args.seconds * 50)
                est = estimate_step_memory(speech, frames, precision, "meta", utterance_seconds=args.seconds)
                fits = [MemoryEstimate(**{**vars(est), "capacity": g * GIB}) for g in DEVICES_GIB]
                fit24 = fits[0].frames_that_fit()
                row = {
                    "batch": batch, "seconds": args.seconds, "precision": precision, "llm_checkpointing": checkpointing,
                    "weights_gib": est.weights / GIB, "gradients_gib": est.gradients / GIB,
                    "optimizer_gib": est.optimizer / GIB, "activations_gib": est.activations / GIB,
                    "total_gib": est.total / GIB, "fits": {g: f.fits() for g, f in zip(DEVICES_GIB, fits)},
                    "utterances_that_fit_24gib": int(fit24 // (args.seconds * 50)),
                }  # fmt: skip
                rows.append(row)
                print(
                    f"| {batch} x {args.seconds:.0f} s | {precision} | {'on' if checkpointing else 'off'} | "
                    f"{row['weights_gib']:.2f} | {row['gradients_gib'] + row['optimizer_gib']:.2f} | "
                    f"{row['activations_gib']:.2f} | **{row['total_gib']:.2f}** | "
                    f"{' / '.join('yes' if f.fits() else 'no' for f in fits)} | "
                    f"{row['utterances_that_fit_24gib']} x {args.seconds:.0f} s |",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
