"""Cost of each speculative-decoding path vs autoregressive decoding, at a size with random weights.

    .venv/bin/python benchmarks/speculative_full_size.py --device cuda        # full size, bf16, 32 x 10 s
    .venv/bin/python benchmarks/speculative_full_size.py --device cuda --shares 0.3,0.5,0.2 --json out.json
    nice -n 19 .venv/bin/python benchmarks/speculative_full_size.py --size tiny --device cpu \\
        --batch 2 --seconds 4 --new-tokens 5 --repeats 1 --threads 1      # CPU smoke run (seconds)

The model is built as in ``benchmarks/stage2_step.py`` (``--size full``: the granite-4.0-1b-speech
architecture, random weights, nothing downloaded). With random weights a CTC draft means nothing
and a random LLM never says EOS on cue, so instead of decoding a test set the script times each
path of :func:`~granite_train.eval.speculative.speculative_decode` on its own, with the token
counts under control, and projects the speculative RTFx for a given share of utterances per path.

The tokenizer is a shim (:class:`ForcedLengthTokenizer`): its EOS id is the LM head's size, a
token the model has no logit for, so every row of every decoding runs exactly ``--new-tokens``
steps (no ``min_new_tokens`` logits processor, which real decoding does not have either). One
batch = ``--batch`` utterances of ``--seconds`` s: random log-mel features (B, frames, 160) and
prompts of 3 text tokens + one ``<|audio|>`` per audio token + 14 text tokens (the published
prompt's shape). Measurements, each the median of ``--repeats`` after ``--warmup`` runs:

* ``autoregressive``: :meth:`SpeechLLM.generate`, greedy (``--num-beams``), N new tokens per row.
* ``ctc``: ``ctc_threshold`` 1e9, every utterance under the entropy gate: encoder, CTC head and
  greedy CTC decoding (and the projector, which ``speculative_decode`` runs before the gate).
* ``verified``: gate off, confidence threshold 0, ``draft_token_ids`` = N random ids per
  utterance: encoder + projector + one LLM forward over [prompt | audio | draft].
* ``fallback``: gate off, confidence threshold 2 (nothing accepted), ``resume=False``: the
  verification forward wasted, then autoregressive decoding of N tokens from scratch (the public
  notebook's fallback; with ``resume`` a real fallback reuses the agreeing prefix and costs less).
* ``mixed`` (``--shares``, unless ``--no-mixed``): one batch with the paths mixed as in
  ``--shares``: the entropy gate is set between the measured entropies so that the wanted number
  of utterances take the CTC path; of the others, the verified ones get an N-token draft and the
  fallback ones an empty one (an empty draft is never accepted; the verification forward is as
  wide as its longest row either way).

Each path is checked to be the one taken by every utterance (``paths``) and the forced
autoregressive decodings to emit exactly N tokens per row; a mismatch is an error (the mixed
batch's counts are reported). RTFx = B x S / (seconds per batch), features given (no feature
extraction, no audio decoding). The projection prices each utterance at its path's per-utterance
cost, ``T = c T_ctc + v T_verified + f T_fallback``: what the paths cost when each path's
utterances fill whole batches. Inside one batch the fallback sub-batch is smaller but decodes
almost as slowly per step as a full one (decoding is memory-bound): the measured mixed batch
includes that. The break-even is the fallback share at which the projection equals autoregressive
decoding, with ctc : verified kept as in ``--shares`` (and with no CTC path at all). On CUDA the
peak memory of each path above the resting state (weights, batch) is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from granite_train.eval.speculative import PATHS, SpeculativeSettings, speculative_decode  # noqa: E402
from granite_train.speech_format import encoder_frames, projector_tokens  # noqa: E402

SAMPLE_RATE = 16000
PROMPT_BEFORE, PROMPT_AFTER = 3, 14  # "USER: " | audio | "can you transcribe ...?\n ASSISTANT:"
GATE_OPEN = 1e9  # every utterance under the entropy gate


def _stage2_step_module():
    spec = importlib.util.spec_from_file_location("stage2_step", HERE / "stage2_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


STAGE2 = _stage2_step_module()


class ForcedLengthTokenizer(STAGE2.AudioIdOnly):
    """What ``speculative_decode`` and ``generate`` read of a tokenizer, with an EOS never emitted.

    ``eos_token_id`` is ``head_size`` (the LM head has logits for ids ``0 .. head_size - 1``), so
    every decoding runs its ``max_new_tokens``. Text is the space-joined ids: :meth:`decode` and
    :meth:`__call__` are inverse.
    """

    def __init__(self, audio_id: int, head_size: int, pad_id: int):
        super().__init__(audio_id)
        self.pad_token_id = pad_id
        self.eos_token_id = head_size

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)

    def __call__(self, text: str, add_special_tokens: bool = False):
        return SimpleNamespace(input_ids=[int(t) for t in text.split() if t.isdigit()])


def build_model(size: str, device: str, dtype: torch.dtype, attn_impl: str):
    """``stage2_step.build_ours`` for ``size``, in ``dtype`` on ``device``, eval mode, tokenizer shim."""
    spec = STAGE2.SIZES[size]
    build_device = device if "bpe_vocab" not in spec.llm else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        speech = STAGE2.build_ours(spec, build_device, dtype, attn_impl, Path(tmp))
    speech.to(device=device, dtype=dtype).eval()
    text = speech.config.text_config
    head = int(speech.hf.lm_head.out_features)
    pad = text.pad_token_id
    if pad is None or not 0 <= pad < head or pad == speech.audio_token_id:
        pad = 0
    speech.tokenizer = ForcedLengthTokenizer(speech.audio_token_id, head, pad)
    return speech


def make_batch(speech, batch: int, seconds: float, new_tokens: int, device: str, seed: int = 0):
    """Prompt ids / mask (left-padded), features, lengths, and N random draft ids per utterance."""
    g = torch.Generator().manual_seed(seed)
    frames = encoder_frames(int(seconds * SAMPLE_RATE))
    n_audio = projector_tokens(frames, speech.config.window_size, speech.config.downsample_rate)
    tok = speech.tokenizer
    avoid = {speech.audio_token_id, tok.pad_token_id}
    low, high = 2, tok.eos_token_id  # text ids: any id with a logit, but the audio and pad ids

    def text_ids(n: int) -> list[int]:
        ids = torch.randint(low, high, (n,), generator=g).tolist()
        return [low if i in avoid else i for i in ids]

    rows = [text_ids(PROMPT_BEFORE) + [speech.audio_token_id] * n_audio + text_ids(PROMPT_AFTER)] * batch
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    features = torch.randn(batch, frames, speech.config.encoder_config.input_dim, generator=g)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    drafts = [text_ids(new_tokens) for _ in range(batch)]
    return SimpleNamespace(
        ids=ids.to(device),
        mask=mask.to(device),
        features=features.to(device),
        lengths=lengths.to(device),
        drafts=drafts,
        audio_tokens=n_audio,
        frames=frames,
        prompt_tokens=width,
    )


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: str, warmup: int, repeats: int) -> dict[str, Any]:
    """Median wall seconds of ``fn()`` over ``repeats`` after ``warmup``; CUDA peak above resting."""
    for _ in range(warmup):
        fn()
    times, peaks, totals, out = [], [], [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if device == "cuda":
            totals.append(torch.cuda.max_memory_allocated())
            peaks.append(totals[-1] - base)
    result: dict[str, Any] = {"seconds": statistics.median(times), "runs": times}
    if peaks:
        result["peak_bytes"] = max(peaks)  # above the resting state: weights, batch
        result["peak_total_bytes"] = max(totals)
    return {"figures": result, "out": out}


def _gate_between(entropies: list[float], k: int) -> float:
    """A CTC threshold under which exactly the k lowest entropies fall (0: none, 1e9: all)."""
    if k <= 0:
        return 0.0
    ordered = sorted(entropies)
    if k >= len(ordered):
        return GATE_OPEN
    return (ordered[k - 1] + ordered[k]) / 2


def _counts(paths: list[str]) -> dict[str, int]:
    return {p: paths.count(p) for p in PATHS}


def project(seconds: dict[str, float], shares: tuple[float, float, float], audio_s: float) -> dict:
    """Per-utterance projection of the speculative cost and the break-even fallback shares."""
    c, v, f = shares
    t_ar, t_ctc, t_ver, t_fb = (seconds[p] for p in ("autoregressive", "ctc", "verified", "fallback"))
    t = c * t_ctc + v * t_ver + f * t_fb

    def break_even(accepted: float) -> float:
        """The fallback share f under which (1 - f) * accepted + f * t_fb < t_ar, in [0, 1]
        (1: speculative is faster whatever the share, 0: never faster)."""
        if t_fb <= accepted:  # the fallback is no dearer than the accepted paths: all or nothing
            return 1.0 if accepted < t_ar else 0.0
        return min(1.0, max(0.0, (t_ar - accepted) / (t_fb - accepted)))

    accepted = (c * t_ctc + v * t_ver) / (c + v) if c + v > 0 else t_ver
    return {
        "shares": {"ctc": c, "verified": v, "fallback": f},
        "seconds": t,
        "rtfx": audio_s / t,
        "speedup": t_ar / t,
        "break_even_fallback_share": break_even(accepted),
        "break_even_fallback_share_no_ctc": break_even(t_ver),
    }


def _fmt_share(x: float) -> str:
    return "100% (always faster)" if x >= 1.0 else "0% (never faster)" if x <= 0.0 else f"{100 * x:.1f}%"


def run(args) -> dict[str, Any]:
    device = args.device
    size = args.size or ("full" if device == "cuda" else "medium")
    spec = STAGE2.SIZES[size]
    dtype_name = args.dtype or (spec.dtype if device == "cuda" else "fp32")
    dtype = STAGE2.DTYPES[dtype_name]
    batch = args.batch or (32 if device == "cuda" else 4)
    n = args.new_tokens
    beams = args.num_beams
    speech = build_model(size, device, dtype, args.attn_impl)
    b = make_batch(speech, batch, args.seconds, n, device)
    audio_s = batch * args.seconds
    text, enc = speech.config.text_config, speech.config.encoder_config
    params = sum(p.numel() for p in speech.parameters())
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    result: dict[str, Any] = {
        "size": size,
        "device": device,
        "gpu": gpu,
        "dtype": dtype_name,
        "params": params,
        "batch": batch,
        "seconds": args.seconds,
        "audio_seconds": audio_s,
        "new_tokens": n,
        "num_beams": beams,
        "prompt_tokens": b.prompt_tokens,
        "audio_tokens": b.audio_tokens,
        "encoder_frames": b.frames,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "paths": {},
    }
    print(
        f"\n== {size}: encoder {enc.num_layers} x {enc.hidden_dim}, LLM {text.num_hidden_layers} x "
        f"{text.hidden_size} (vocab {text.vocab_size}), {params / 1e6:,.1f}M params, {dtype_name}, "
        f"{device}{f' ({gpu})' if gpu else ''} =="
    )
    print(
        f"  batch {batch} x {args.seconds:g} s = {audio_s:g} audio s; prompt {b.prompt_tokens} tokens "
        f"({b.audio_tokens} audio), {b.frames} encoder frames; {n} new tokens per utterance, "
        f"{'greedy' if beams == 1 else f'{beams} beams'}; median of {args.repeats} after {args.warmup} warm-up"
    )

    def spec_decode(settings: SpeculativeSettings, drafts=None):
        return speculative_decode(
            speech,
            b.ids,
            b.mask,
            b.features,
            b.lengths,
            settings,
            max_new_tokens=n,
            num_beams=beams,
            draft_token_ids=drafts,
        )

    def autoregressive():
        return speech.generate(b.ids, b.mask, b.features, b.lengths, max_new_tokens=n, num_beams=beams)

    runs = {
        "autoregressive": autoregressive,
        "ctc": lambda: spec_decode(SpeculativeSettings(ctc_threshold=GATE_OPEN, confidence_threshold=0.0)),
        "verified": lambda: spec_decode(SpeculativeSettings(0.0, 0.0), b.drafts),
        "fallback": lambda: spec_decode(SpeculativeSettings(0.0, 2.0, resume=False), b.drafts),
    }
    entropies: list[float] = []
    for name, fn in runs.items():
        m = measure(fn, device, args.warmup, args.repeats)
        fig, out = m["figures"], m["out"]
        if name == "autoregressive":
            tokens = [int(out.shape[1])] * batch
            fig["paths"] = {"autoregressive": batch}
        else:
            fig["paths"] = _counts(out.paths)
            tokens = out.generated_tokens
            if name == "ctc":
                entropies = out.entropies
            if fig["paths"][name] != batch:
                raise RuntimeError(f"path {name!r}: utterances took the paths {fig['paths']}")
        fig["new_tokens"] = tokens
        if name in ("autoregressive", "fallback") and tokens != [n] * batch:
            raise RuntimeError(f"{name}: decoded {tokens} new tokens, not {n} per utterance")
        result["paths"][name] = fig
    seconds = {name: fig["seconds"] for name, fig in result["paths"].items()}

    shares = args.shares
    if not args.no_mixed:
        k_ctc = round(shares[0] * batch)
        k_ver = min(round(shares[1] * batch), batch - k_ctc)
        gate = _gate_between(entropies, k_ctc)
        others = [i for i in range(batch) if not entropies[i] < gate]
        verified = set(others[:k_ver])
        drafts = [b.drafts[i] if i in verified else [] for i in range(batch)]
        settings = SpeculativeSettings(ctc_threshold=gate, confidence_threshold=0.0, resume=False)
        m = measure(lambda: spec_decode(settings, drafts), device, args.warmup, args.repeats)
        fig = m["figures"]
        fig["paths"] = _counts(m["out"].paths)
        fig["target_paths"] = {"ctc": k_ctc, "verified": k_ver, "fallback": batch - k_ctc - k_ver}
        fig["ctc_threshold"] = gate
        result["mixed"] = fig

    for fig in [*result["paths"].values(), *([result["mixed"]] if "mixed" in result else [])]:
        fig["rtfx"] = audio_s / fig["seconds"]
        fig["speedup"] = seconds["autoregressive"] / fig["seconds"]
    result["projection"] = project(seconds, shares, audio_s)

    gib = 2**30
    labels = {
        "autoregressive": "autoregressive",
        "ctc": "ctc (encoder + CTC)",
        "verified": "verified (+ 1 forward)",
        "fallback": "fallback (from scratch)",
    }
    rows = [(labels[name], fig) for name, fig in result["paths"].items()]
    if "mixed" in result:
        rows.append(("mixed " + "/".join(f"{s:.2f}" for s in shares), result["mixed"]))
    peak_col = device == "cuda"
    print(
        f"  {'path':26s} {'s/batch':>9s} {'RTFx':>9s} {'x AR':>7s}"
        + (f" {'peak +GiB':>10s}" if peak_col else "")
        + "  ctc/verified/fallback"
    )
    for label, fig in rows:
        counts = "/".join(str(fig["paths"].get(p, 0)) for p in PATHS) if "ctc" in fig["paths"] else "-"
        peak = f" {fig['peak_bytes'] / gib:10.2f}" if peak_col else ""
        print(f"  {label:26s} {fig['seconds']:9.3f} {fig['rtfx']:9.1f} {fig['speedup']:7.2f}{peak}  {counts}")
    if "mixed" in result and result["mixed"]["paths"] != result["mixed"]["target_paths"]:
        print(
            f"  note: the mixed batch took {result['mixed']['paths']}, not {result['mixed']['target_paths']}"
        )
    p = result["projection"]
    share_text = " / ".join(f"{k} {v:.2f}" for k, v in p["shares"].items())
    print(
        f"  projected speculative RTFx at {share_text}: {p['rtfx']:.1f} ({p['speedup']:.2f}x autoregressive, "
        f"per-utterance path costs)"
    )
    print(
        f"  break-even: speculative beats autoregressive while the fallback share < "
        f"{_fmt_share(p['break_even_fallback_share'])} (ctc : verified as above), < "
        f"{_fmt_share(p['break_even_fallback_share_no_ctc'])} with no CTC path"
    )
    if device == "cuda":
        result["process_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def _shares(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected three numbers such as 0.5,0.4,0.1, got {text!r}") from err
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"expected ctc,verified,fallback shares >= 0 summing to 1, got {text!r}"
        )
    return values  # type: ignore[return-value]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--size", default=None, choices=sorted(STAGE2.SIZES), help="default: full on CUDA, medium on CPU"
    )
    parser.add_argument(
        "--dtype", default=None, choices=sorted(STAGE2.DTYPES), help="default: full bf16 on CUDA, else fp32"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="utterances per batch (default: 32 on CUDA, 4 on CPU)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length")
    parser.add_argument(
        "--new-tokens", type=int, default=30, help="tokens decoded per utterance (~10 s of speech)"
    )
    parser.add_argument(
        "--num-beams", type=int, default=1, help="beams of autoregressive / fallback decoding"
    )
    parser.add_argument(
        "--shares",
        type=_shares,
        default=(0.5, 0.4, 0.1),
        help="ctc,verified,fallback shares of utterances for the projection and the mixed batch",
    )
    parser.add_argument("--no-mixed", action="store_true", help="skip the measured mixed batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per path first")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--attn-impl", default="sdpa", choices=["sdpa", "math"], help="the encoder's kernel")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.repeats < 1 or args.new_tokens < 1:
        parser.error("--repeats and --new-tokens must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"  figures in {args.json}")
    return result


if __name__ == "__main__":
    main()
