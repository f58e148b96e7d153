"""Stage-2 step with the frozen encoder's outputs served from memory vs computed every step.

    nice -n 19 .venv/bin/python benchmarks/encoder_cache.py                 # CPU, tiny (the CPU recipe's shape)
    .venv/bin/python benchmarks/encoder_cache.py --size medium --steps 10

Same model, same batch: one step = forward + loss + backward + AdamW step, trained parts as in the
tiny recipe (projector + full LLM, encoder frozen). "cached" serves the encoder output from
:class:`~granite_train.models.encoder_cache.EncoderOutputCache` (filled by one warm-up step), what
every step after an utterance's first epoch does with ``model.encoder_cache_gb`` > 0. Steps
alternate (plain, cached, ...) after warm-up and medians are reported, so machine noise hits both
alike. The two losses are printed first: the cache must not change them.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from granite_train.models.encoder_cache import EncoderOutputCache  # noqa: E402


def _stage2_step_module():
    spec = importlib.util.spec_from_file_location("stage2_step", HERE / "stage2_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="tiny", choices=["tiny", "medium"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _stage2_step_module()
    spec = bench.SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        speech = bench.build_ours(spec, "cpu", torch.float32, "sdpa", Path(tmp))
    speech.set_trainable(projector=True, lora=False, llm=True, encoder=False)
    speech.train()
    b = bench.make_batch(speech.config, spec.batch, spec.seconds, 24, 24, "cpu", torch.float32)
    ids = [f"utt{i}" for i in range(spec.batch)]
    cache = EncoderOutputCache(1 << 34)
    optimizer = torch.optim.AdamW([p for p in speech.parameters() if p.requires_grad], lr=1e-6, fused=True)

    def step(cached: bool) -> float:
        start = time.perf_counter()
        hidden = cache(ids, b.features, b.feature_lengths, speech.encode) if cached else None
        loss = speech(
            b.input_ids, b.attention_mask, b.features, b.feature_lengths, b.labels, encoder_hidden=hidden
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    speech.eval()  # dropout off for the comparison
    with torch.no_grad():
        plain_loss = float(bench.ours_loss(speech, b))
        cache(ids, b.features, b.feature_lengths, speech.encode)  # fill
        hidden = cache(ids, b.features, b.feature_lengths, speech.encode)
        cached_loss = float(
            speech(
                b.input_ids, b.attention_mask, b.features, b.feature_lengths, b.labels, encoder_hidden=hidden
            ).loss
        )
    speech.train()
    print(
        f"loss plain {plain_loss:.6f}  cached {cached_loss:.6f}  |diff| {abs(plain_loss - cached_loss):.2e}"
    )
    for _ in range(args.warmup):
        step(False)
        step(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.steps):
        for cached in (False, True):
            times[cached].append(step(cached))
    plain, cached = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"{args.size}: batch {spec.batch} x {spec.seconds:g} s, {torch.get_num_threads()} threads, "
        f"cache {cache.bytes / 2**20:.1f} MiB\n"
        f"  step plain  {1000 * plain:8.1f} ms\n"
        f"  step cached {1000 * cached:8.1f} ms\n"
        f"  cached / plain: {cached / plain:.3f} ({plain / cached:.2f}x steps per second)"
    )
    return {"plain_s": plain, "cached_s": cached, "loss_diff": abs(plain_loss - cached_loss)}


if __name__ == "__main__":
    main()
