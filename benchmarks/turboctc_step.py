"""Training-step time: the 5.0 TurboCTC encoder vs the 4.0 encoder of the same width and depth.

    .venv/bin/python benchmarks/turboctc_step.py                      # CPU: tiny and medium sizes
    .venv/bin/python benchmarks/turboctc_step.py --sizes medium --batch 8 --seconds 8 --json out.json
    .venv/bin/python benchmarks/turboctc_step.py --device cuda --dtype bf16 --sizes full --bpe-vocab 16384 --batch 16

Both sides get the same clips' worth of input (``--batch`` x ``--seconds``) and one step is forward,
CTC loss, backward:

* **4.0**: our :class:`~granite_train.models.encoder.CTCEncoder` (the released architecture: 50 Hz
  stacked log-mel in, 50 Hz out, a character head of 348 outputs), self-conditioned CTC;
* **5.0**: transformers' ``GraniteSpeech5ForCTC`` built by
  :func:`~granite_train.models.turboctc.tiny_turboctc_config` at the same width, depth, heads and
  FFN size (two subsampling blocks: 50 Hz in, 12.5 Hz out, a BPE head of ``--bpe-vocab``), its own
  CTC loss (``forward(labels=...)``).

Steps of the two alternate and the medians are compared (one process: machine noise hits both).
The conformer layers after subsampling see a quarter of the frames, which is what the 8x
subsampling of the release (vs 4.0's 2x frame stacking) should show.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import GraniteSpeech5ForCTC  # noqa: E402

from granite_train.models.ctc_loss import SelfConditionedCTCLoss  # noqa: E402
from granite_train.models.encoder import CTCEncoder, encoder_config  # noqa: E402
from granite_train.models.turboctc import tiny_turboctc_config  # noqa: E402

# layers x width x heads; the FFN is 4x the width on both sides (4.0's feedforward_mult is 4)
SIZES = {
    "tiny": dict(layers=4, width=128, heads=4),
    "medium": dict(layers=6, width=256, heads=4),
    "full": dict(layers=16, width=1024, heads=8),  # the 5.0 release's encoder (GPU)
}


def build(size: str, bpe_vocab: int):
    spec = SIZES[size]
    width, layers, heads = spec["width"], spec["layers"], spec["heads"]
    torch.manual_seed(0)
    config40 = encoder_config(
        "tiny", num_layers=layers, hidden_dim=width, num_heads=heads, dim_head=width // heads
    )
    config40.dropout = 0.0
    ours40 = CTCEncoder(config40)
    config50 = tiny_turboctc_config(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=width // heads,
        vocab_size=bpe_vocab,
    )
    model50 = GraniteSpeech5ForCTC(config50)
    return config40, ours40, config50, model50


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(size: str, args) -> dict:
    device = torch.device(args.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    config40, ours40, config50, model50 = build(size, args.bpe_vocab)
    ours40, model50 = ours40.to(device), model50.to(device)
    frames = int(args.seconds * 50)  # 50 Hz stacked frames: both models' input rate
    g = torch.Generator().manual_seed(0)
    feats40 = torch.randn(args.batch, frames, config40.input_dim, generator=g)
    lengths = torch.full((args.batch,), frames, dtype=torch.long)
    chars = max(1, int(args.seconds * 12))  # ~12 characters a second of speech
    targets40 = torch.randint(1, config40.output_dim, (args.batch, chars), generator=g)
    target_lengths40 = torch.full((args.batch,), chars, dtype=torch.long)
    feats50 = torch.randn(args.batch, frames, 2 * 2 * config50.encoder_config.num_mel_bins, generator=g)
    mask50 = torch.ones(args.batch, frames, dtype=torch.long)
    bpe = max(1, int(args.seconds * 3))  # ~3 BPE units a second
    labels50 = torch.randint(1, args.bpe_vocab, (args.batch, bpe), generator=g)
    feats40, lengths, targets40, target_lengths40 = (
        t.to(device) for t in (feats40, lengths, targets40, target_lengths40)
    )
    feats50, mask50, labels50 = feats50.to(device), mask50.to(device), labels50.to(device)
    loss40 = SelfConditionedCTCLoss()

    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)

    def timed(step) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def step40():
        ours40.zero_grad(set_to_none=True)
        with autocast():
            out = ours40(feats40, lengths)
        loss40(
            out.logits, out.lengths, targets40, target_lengths40, mid_logits=out.mid_logits
        ).loss.backward()
        return out.logits.shape[1]

    def step50():
        model50.zero_grad(set_to_none=True)
        with autocast():
            out = model50(input_features=feats50, attention_mask=mask50, labels=labels50)
        out.loss.backward()
        return out.logits.shape[1]

    ours40.train()
    model50.train()
    out_frames40, out_frames50 = step40(), step50()  # warm-up, and the output lengths
    for _ in range(args.warmup - 1):
        step40()
        step50()
    t40, t50 = [], []
    for _ in range(args.steps):
        t40.append(timed(step40))
        t50.append(timed(step50))
    m40, m50 = statistics.median(t40), statistics.median(t50)
    result = {
        "size": size,
        "layers": SIZES[size]["layers"],
        "width": SIZES[size]["width"],
        "batch": args.batch,
        "seconds": args.seconds,
        "params_4_0": _params(ours40),
        "params_5_0": _params(model50),
        "output_hz_4_0": out_frames40 / args.seconds,
        "output_hz_5_0": out_frames50 / args.seconds,
        "step_s_4_0": m40,
        "step_s_5_0": m50,
        "time_ratio_5_0_over_4_0": m50 / m40,
        "steps": args.steps,
        "device": str(device),
        "dtype": args.dtype,
    }
    if device.type == "cuda":
        result.update(gpu=torch.cuda.get_device_name(), peak_memory_bytes=torch.cuda.max_memory_allocated())
    print(
        f"\n== {size}: {result['layers']} x {result['width']}, batch {args.batch} x {args.seconds:g} s, "
        f"{torch.get_num_threads()} threads =="
    )
    print(
        f"  4.0 encoder   {1000 * m40:8.1f} ms/step  {result['params_4_0'] / 1e6:6.2f}M params  "
        f"out {result['output_hz_4_0']:.1f} Hz"
    )
    print(
        f"  5.0 TurboCTC  {1000 * m50:8.1f} ms/step  {result['params_5_0'] / 1e6:6.2f}M params  "
        f"out {result['output_hz_5_0']:.1f} Hz"
    )
    print(f"  5.0 / 4.0 step time: {m50 / m40:.2f}x (median of {args.steps}, alternating)")
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny,medium", help=f"comma-separated: {', '.join(SIZES)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bpe-vocab", type=int, default=1024, help="5.0 head size (the release: 16384)")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    results = [run(size, args) for size in sizes]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
