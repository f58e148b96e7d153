"""Encoder training-step benchmark: ours vs transformers' GraniteSpeechCTCEncoder, same weights and batch.

    .venv/bin/python benchmarks/encoder_step.py                          # CPU: tiny and medium sizes
    .venv/bin/python benchmarks/encoder_step.py --device cuda --sizes full --dtype bf16 --batch 16

One step = forward, self-conditioned CTC loss (0.8 final + 0.2 mid-layer logits), backward. The
reference has no mid-logits output, so a forward hook on its shared ``out`` head captures the
mid-layer call. Steps of the two models alternate, and the median is reported, to keep machine
noise out of the ratio. On CUDA the script also prints model FLOP utilisation (MFU) against the
GPU's dense bf16 peak (``--peak-tflops``, default 989 for an H100 SXM).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechCTCEncoder  # noqa: E402

from granite_train.models.ctc_loss import SelfConditionedCTCLoss  # noqa: E402
from granite_train.models.encoder import CTCEncoder, encoder_config  # noqa: E402

SIZES = {
    "tiny": dict(preset="tiny"),
    "medium": dict(preset="tiny", num_layers=6, hidden_dim=256, num_heads=4, dim_head=64),
    "full": dict(preset="granite_4_0_1b"),
}


def build(size: str, device: str, attn_impl: str):
    spec = dict(SIZES[size])
    config = encoder_config(spec.pop("preset"), **spec)
    config.dropout = 0.0  # identical randomness-free steps on both sides
    torch.manual_seed(0)
    ref = GraniteSpeechCTCEncoder(config).to(device)
    ours = CTCEncoder(config, attn_impl=attn_impl).to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return config, ref, ours


def reference_logits(ref: GraniteSpeechCTCEncoder, features: torch.Tensor):
    mid: list[torch.Tensor] = []
    handle = ref.out.register_forward_hook(lambda _m, _i, out: mid.append(out))
    hidden = ref(features).last_hidden_state
    handle.remove()
    return ref.out(hidden), mid[0]


def step_time(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def encoder_flops(config, batch: int, frames: int) -> float:
    """Training FLOPs of one step: 3x forward (fwd + 2x bwd) of matmuls and block attention."""
    d, layers = config.hidden_dim, config.num_layers
    params_per_layer = (
        2 * (2 * d * d * config.feedforward_mult) + 4 * d * d + 2 * d * d * config.conv_expansion_factor
    )
    tokens = batch * frames
    matmul = 2 * tokens * (layers * params_per_layer + config.input_dim * d + 2 * d * config.output_dim)
    context = min(config.context_size, frames)
    attention = (
        layers * 2 * 2 * tokens * context * config.num_heads * config.dim_head * 2
    )  # scores, values, rel-pos
    return 3.0 * (matmul + attention)


def run(size: str, args) -> dict:
    """Build, time; returns the figures (also printed)."""
    device = args.device
    config, ref, ours = build(size, device, args.attn_impl)
    frames = int(args.seconds * 50)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(args.batch, frames, config.input_dim, generator=g).to(device)
    lengths = torch.full((args.batch,), frames, dtype=torch.long, device=device)
    targets = torch.randint(1, config.output_dim, (args.batch, frames // 4), generator=g).to(device)
    target_lengths = torch.full((args.batch,), frames // 4, dtype=torch.long, device=device)
    loss_fn = SelfConditionedCTCLoss()
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]

    def autocast():
        return torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)

    def ours_step():
        ours.zero_grad(set_to_none=True)
        with autocast():
            out = ours(features, lengths)
        loss_fn(out.logits, out.lengths, targets, target_lengths, mid_logits=out.mid_logits).loss.backward()

    def ref_step():
        ref.zero_grad(set_to_none=True)
        with autocast():
            logits, mid = reference_logits(ref, features)
        loss_fn(logits, lengths, targets, target_lengths, mid_logits=mid).loss.backward()

    ours.train()
    ref.train()
    for _ in range(args.warmup):
        ours_step()
        ref_step()
    t_ours, t_ref = [], []
    for _ in range(args.steps):
        t_ours.append(step_time(ours_step, device))
        t_ref.append(step_time(ref_step, device))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"\n== {size}: {config.num_layers} x {config.hidden_dim}, {params / 1e6:.1f}M params, "
        f"batch {args.batch} x {args.seconds:g} s, {args.dtype}, attn={args.attn_impl}, {device} =="
    )
    print(f"  reference step  {1000 * mr:9.1f} ms (median of {args.steps})")
    print(f"  ours step       {1000 * mo:9.1f} ms")
    print(f"  ratio ours/reference time: {mo / mr:.2f}x  (goal <= 1.0x; on GPU >= 2x faster = <= 0.5x)")
    result = {
        "size": size,
        "params": params,
        "batch": args.batch,
        "seconds": args.seconds,
        "frames": frames,
        "dtype": args.dtype,
        "attn_impl": args.attn_impl,
        "device": device,
        "steps": args.steps,
        "time_ours": mo,
        "time_ref": mr,
        "time_ratio": mo / mr,
    }
    if device == "cuda":
        flops = encoder_flops(config, args.batch, frames)
        result.update(
            flops_per_step=flops,
            peak_tflops=args.peak_tflops,
            mfu_ours=flops / mo / (args.peak_tflops * 1e12),
            mfu_ref=flops / mr / (args.peak_tflops * 1e12),
            peak_memory_bytes=torch.cuda.max_memory_allocated(),
            gpu=torch.cuda.get_device_name(),
        )
        print(
            f"  MFU ours {100 * result['mfu_ours']:.1f}%  "
            f"reference {100 * result['mfu_ref']:.1f}%  (peak {args.peak_tflops} TFLOP/s)"
        )
        print(f"  peak memory {result['peak_memory_bytes'] / 2**30:.1f} GiB")
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default=None, help="comma-separated: tiny, medium, full")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="utterance length")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--attn-impl", default="sdpa", choices=["sdpa", "math"])
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    sizes = args.sizes or ("full" if args.device == "cuda" else "tiny,medium")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    return [run(size.strip(), args) for size in sizes.split(",")]


if __name__ == "__main__":
    main()
