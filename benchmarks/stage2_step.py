"""Stage-2 training-step benchmark: SpeechLLM vs transformers' GraniteSpeechForConditionalGeneration.

    nice -n 19 .venv/bin/python benchmarks/stage2_step.py --threads 1        # CPU: tiny and medium
    .venv/bin/python benchmarks/stage2_step.py --device cuda                  # full size, bf16, 32 x 30 s
    .venv/bin/python benchmarks/stage2_step.py --sizes full --dry-run         # full size on `meta`: counts

Both models hold the same weights (the reference is a second instance loaded from our state dict)
and train the same parameters, in the published stage-2 configuration: encoder frozen (no
gradients, eval mode), projector and LoRA (rank 64 on ``q_proj`` / ``v_proj``) trainable, LLM body
frozen. Ours is :meth:`SpeechLLM.forward` (padding-aware ``CTCEncoder``, LM head only at labelled
positions, fp32 cross-entropy); the reference is the plain transformers call
``hf(input_ids, input_features, input_features_mask, attention_mask, labels).loss`` with its own
``GraniteSpeechCTCEncoder`` (full-sequence logits, cross-entropy in the weights' dtype).

One step = forward + loss + backward (+ ``AdamW.step()`` with ``--optimizer``). Every utterance of
the batch has the same length: the reference has no padding mask, so only equal lengths make the
two compute the same thing. Before timing, the losses of both (dropout off) are printed with their
absolute difference. Steps alternate (ours, reference, ours, ...) after warm-up, and the medians
are reported, so machine noise hits both alike. On CPU the process CPU time of a step is printed
too: on a shared machine it is steadier than wall time, the more so with ``--threads 1`` (idle
OpenMP threads spin while the others are descheduled).

Peak memory is the step's transient memory above the resting state (weights, batch, optimizer
state), so the two models resident in one process do not count against each other; "model +
step" adds that model's own parameter and buffer bytes.

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus the
  allocated bytes at the step's start, over the timed steps.
* CPU: the kernel's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, reset by
  writing ``5`` to ``/proc/self/clear_refs`` before the step) minus ``VmRSS`` at the step's start:
  allocator-independent, and exact rather than sampled. glibc would otherwise keep freed blocks
  resident and reuse them unseen, so ``malloc_trim(0)`` runs before the step, and these steps run
  with fixed malloc thresholds (:class:`Glibc`): three per model after the timed ones, median
  (they vary by a few MiB of small blocks). Linux + glibc only (``nan`` elsewhere).

Sizes (``--sizes``): ``tiny`` (4 x 128 encoder, tiny projector, 4 x 256 LLM with a 4096-token BPE
tokenizer from ``data_prep/texts/en.txt`` built by ``build_tiny_llm``; batch 8 x 4 s), ``medium``
(6 x 256 encoder, 8 x 512 LLM with a 32k vocabulary, random token ids; where label-only logits start
to matter), ``full`` (granite-4.0-1b-speech: 16 x 1024 encoder, the published projector, a
random-init granite-4.0-1b-base; batch 32 x 30 s in bf16).

The full-size LLM config (:data:`GRANITE_4_0_1B_BASE`) is built without a download. RECIPE.md gives
40 layers, hidden 2048, GQA 16 / 4, vocab 100353 with ``<|audio|>`` = 100352, logits_scaling 8; the
rest is from the GGUF metadata of granite-4.0-1b (same architecture as the base): feed-forward 4096,
RoPE base 1e7, context 131072, embedding x12, residual x0.22, attention scale 1/128, RMSNorm eps
1e-5; attention dropout 0 is assumed. The release is ``granitemoehybrid`` with attention-only
layers and a dense shared MLP, which computes what ``GraniteConfig`` / ``GraniteModel`` computes.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import math
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import (  # noqa: E402
    Blip2QFormerConfig,
    GraniteConfig,
    GraniteSpeechConfig,
    GraniteSpeechForConditionalGeneration,
)

from granite_train.models.config import PROJECTOR_PRESETS, LoraSettings  # noqa: E402
from granite_train.models.encoder import CTCEncoder, encoder_config  # noqa: E402
from granite_train.models.speech_llm import SpeechLLM, assemble_speech_llm, format_counts  # noqa: E402
from granite_train.models.tiny_llm import build_tiny_llm  # noqa: E402
from granite_train.speech_format import (  # noqa: E402
    AUDIO_TOKEN,
    IGNORE_INDEX,
    encoder_frames,
    projector_tokens,
)
from granite_train.training.memory import default_dtype  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000

# granite-4.0-1b-base as a GraniteConfig (sources in the module docstring)
GRANITE_4_0_1B_BASE: dict[str, Any] = dict(
    vocab_size=100353,  # 100352 text tokens + <|audio|> (id 100352)
    hidden_size=2048,
    intermediate_size=4096,
    num_hidden_layers=40,
    num_attention_heads=16,
    num_key_value_heads=4,
    max_position_embeddings=131072,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7},
    rms_norm_eps=1e-5,
    embedding_multiplier=12.0,
    residual_multiplier=0.22,
    attention_multiplier=0.0078125,
    logits_scaling=8.0,
    attention_dropout=0.0,
    tie_word_embeddings=True,
    bos_token_id=100257,
    eos_token_id=100257,
    pad_token_id=100256,
)


@dataclass(frozen=True)
class Size:
    encoder: dict[str, Any]  # encoder_config("preset", **rest)
    projector: str  # PROJECTOR_PRESETS name
    llm: dict[str, Any]  # GraniteConfig fields, or {"bpe_vocab": n}: build_tiny_llm("tiny") + BPE tokenizer
    batch: int
    seconds: float
    dtype: str  # default weight dtype
    notes: list[str] = field(default_factory=list)


SIZES: dict[str, Size] = {
    "tiny": Size(dict(preset="tiny"), "tiny", {"bpe_vocab": 4096}, batch=8, seconds=4.0, dtype="fp32"),
    "medium": Size(
        dict(preset="tiny", num_layers=6, hidden_dim=256, num_heads=4, dim_head=64),
        "tiny",
        dict(
            vocab_size=32769,  # 32768 + <|audio|>
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=1 / 64,
            logits_scaling=8.0,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
        ),
        batch=8,
        seconds=4.0,
        dtype="fp32",
    ),
    "full": Size(
        dict(preset="granite_4_0_1b"),
        "granite_4_0_1b",
        GRANITE_4_0_1B_BASE,
        batch=32,
        seconds=30.0,
        dtype="bf16",
    ),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------
class Glibc:
    """glibc malloc thresholds: exact (64 KiB mmap / 128 KiB trim) for CPU peaks, else 32 / 64 MiB.

    glibc raises its mmap threshold to the largest block freed (up to 32 MiB) and keeps freed heap
    blocks resident for reuse, which the resident set cannot see. With the exact thresholds every
    block over 64 KiB is its own mapping, returned when freed; that costs page faults (steps about 2x
    slower on CPU), so only the memory steps run with them, and the timed steps run with glibc's
    steady state (its dynamic maxima, 32 MiB / 64 MiB).
    """

    def __init__(self):
        try:
            self.libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self.libc = None

    def exact(self, on: bool) -> bool:
        if self.libc is None:
            return False
        m_trim_threshold, m_mmap_threshold = -1, -3
        mmap, trim = (64 * 1024, 128 * 1024) if on else (32 * 2**20, 64 * 2**20)
        ok = self.libc.mallopt(m_mmap_threshold, mmap)
        return bool(ok and self.libc.mallopt(m_trim_threshold, trim))

    def trim(self) -> None:
        """Hand the free blocks that the heaps still hold back to the kernel (out of the resident set)."""
        if self.libc is not None:
            self.libc.malloc_trim(0)


GLIBC = Glibc()


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"no {field_name} in /proc/self/status")
    return int(match.group(1))


class StepPeak:
    """Transient peak bytes of one step above the bytes in use at its start (see module docstring)."""

    def __init__(self, device: str):
        self.device = device
        self.base = 0
        self.available = True
        if device == "cpu":
            try:
                self._reset_hwm()
                _proc_status_kib("VmHWM")
            except OSError:
                self.available = False

    @staticmethod
    def _reset_hwm() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self.available:
            GLIBC.trim()  # resident = live: blocks freed by an earlier step must not be reused unseen
            self._reset_hwm()
            self.base = 1024 * _proc_status_kib("VmRSS")

    def stop(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated() - self.base)
        if not self.available:
            return float("nan")
        return float(1024 * _proc_status_kib("VmHWM") - self.base)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


# --------------------------------------------------------------------------------------------------
# models and batch
# --------------------------------------------------------------------------------------------------
class AudioIdOnly:
    """The one tokenizer method SpeechLLM needs when the token ids are made up (medium / full)."""

    def __init__(self, audio_id: int):
        self.audio_id = audio_id
        self.pad_token_id = self.eos_token_id = None

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.audio_id if token == AUDIO_TOKEN else None


def speech_config(spec: Size) -> GraniteSpeechConfig:
    enc = dict(spec.encoder)
    enc_cfg = encoder_config(enc.pop("preset"), **enc)
    text = GraniteConfig(**spec.llm)
    qformer = Blip2QFormerConfig(**PROJECTOR_PRESETS[spec.projector], encoder_hidden_size=enc_cfg.hidden_dim)
    return GraniteSpeechConfig(
        text_config=text.to_dict(),
        encoder_config=enc_cfg.to_dict(),
        projector_config=qformer.to_dict(),
        audio_token_index=text.vocab_size - 1,
        has_lora_adapter=False,
        window_size=15,
        downsample_rate=5,
        tie_word_embeddings=True,
    )


def build_ours(spec: Size, build_device: str, dtype: torch.dtype, attn_impl: str, workdir: Path) -> SpeechLLM:
    torch.manual_seed(0)
    if "bpe_vocab" in spec.llm:  # the real assembly route: LLM folder + tokenizer, stage-1 encoder
        texts = (REPO / "data_prep" / "texts" / "en.txt").read_text(encoding="utf-8").splitlines()
        llm_dir = build_tiny_llm(workdir / "llm", texts, preset="tiny", vocab_size=spec.llm["bpe_vocab"])
        enc = dict(spec.encoder)
        encoder = CTCEncoder(encoder_config(enc.pop("preset"), **enc), attn_impl=attn_impl)
        return assemble_speech_llm(
            encoder, llm_dir, projector={"preset": spec.projector}, attn_impl=attn_impl
        )
    config = speech_config(spec)
    # straight on the GPU / on `meta`, in the target dtype: full size fits CPU memory twice over
    with torch.device(build_device), default_dtype(dtype):
        hf = GraniteSpeechForConditionalGeneration(config)
        return SpeechLLM(hf, AudioIdOnly(config.audio_token_index), attn_impl=attn_impl)


def build_reference(speech: SpeechLLM, lora: LoraSettings, build_device: str):
    """A plain transformers model (reference encoder), same LoRA, same weights, same trainable set."""
    dtype = next(speech.encoder.parameters()).dtype
    with torch.device(build_device), default_dtype(dtype):
        ref = GraniteSpeechForConditionalGeneration(copy.deepcopy(speech.config))
        ref.to(dtype)  # as ours: cast, then LoRA (peft picks its dtype)
        ref.add_adapter(lora.peft_config())
    ref.load_state_dict(speech.hf.state_dict(), strict=True, assign=build_device == "meta")
    if ref.config.tie_word_embeddings:
        ref.tie_weights()  # `assign` replaces the tied tensors
    trainable = {name: p.requires_grad for name, p in speech.hf.named_parameters()}
    for name, param in ref.named_parameters():
        param.requires_grad_(trainable[name])
    return ref


def set_train_mode(speech: SpeechLLM, ref, training: bool) -> None:
    speech.train(training)  # keeps the frozen encoder in eval mode
    ref.train(training)
    ref.model.encoder.eval()


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L), all ones: equal lengths
    labels: torch.Tensor  # (B, L), -100 except the target tokens
    features: torch.Tensor  # (B, T, 160) stacked log-mels at 50 Hz
    feature_lengths: torch.Tensor  # (B,), all T
    input_features_mask: torch.Tensor  # (B, Q) bool, all True: every projector output is audio


def make_batch(
    config: GraniteSpeechConfig,
    batch: int,
    seconds: float,
    prompt_tokens: int,
    target_tokens: int,
    device: str,
    dtype: torch.dtype,
) -> Batch:
    """Equal-length utterances: [prompt prefix | <|audio|> x Q | prompt suffix | target], random ids."""
    g = torch.Generator().manual_seed(0)
    frames = encoder_frames(int(seconds * SAMPLE_RATE))
    n_audio = projector_tokens(frames, config.window_size, config.downsample_rate)
    vocab, audio_id = config.text_config.vocab_size, config.audio_token_index
    prefix = prompt_tokens // 4  # "USER: " before the audio, the instruction after it
    length = prompt_tokens + n_audio + target_tokens
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    ids = torch.where(ids == audio_id, 2, ids)
    ids[:, prefix : prefix + n_audio] = audio_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -target_tokens:] = ids[:, -target_tokens:]
    features = torch.randn(batch, frames, config.encoder_config.input_dim, generator=g)
    return Batch(
        input_ids=ids.to(device),
        attention_mask=torch.ones_like(ids).to(device),
        labels=labels.to(device),
        features=features.to(device=device, dtype=dtype),
        feature_lengths=torch.full((batch,), frames, dtype=torch.long, device=device),
        input_features_mask=torch.ones(batch, n_audio, dtype=torch.bool, device=device),
    )


def ours_loss(speech: SpeechLLM, b: Batch) -> torch.Tensor:
    return speech(b.input_ids, b.attention_mask, b.features, b.feature_lengths, b.labels).loss


def reference_loss(ref, b: Batch) -> torch.Tensor:
    return ref(
        input_ids=b.input_ids,
        input_features=b.features,
        input_features_mask=b.input_features_mask,
        attention_mask=b.attention_mask,
        labels=b.labels,
    ).loss


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)


# --------------------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------------------
def run(size: str, args) -> dict[str, Any]:
    """Build, check the losses, time; returns the figures (also printed)."""
    spec = SIZES[size]
    device = args.device
    dtype = DTYPES[args.dtype or spec.dtype]
    batch_size = args.batch or spec.batch
    seconds = args.seconds or spec.seconds
    target_tokens = args.target_tokens or max(4, round(seconds * 10 / 3))  # ~100 tokens per 30 s
    meta = args.dry_run and size == "full"
    build_device = "meta" if meta else (device if "bpe_vocab" not in spec.llm else "cpu")
    lora = LoraSettings(rank=args.lora_rank)
    result: dict[str, Any] = {"size": size}

    with tempfile.TemporaryDirectory() as tmp:
        speech = build_ours(spec, build_device, dtype, args.attn_impl, Path(tmp))
    speech.to(dtype)
    speech.add_lora(lora)
    speech.set_trainable(projector=True, lora=True, llm=False, encoder=False)
    if not meta:
        speech.to(device)
    ref = build_reference(speech, lora, "meta" if meta else device)
    counts = speech.parameter_counts()
    ref_trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    if ref_trainable != counts["trainable"]:
        raise RuntimeError(
            f"trainable parameters differ: ours {counts['trainable']}, reference {ref_trainable}"
        )
    b = make_batch(speech.config, batch_size, seconds, args.prompt_tokens, target_tokens, device, dtype)
    text, enc = speech.config.text_config, speech.config.encoder_config
    result.update(params=counts["total"], trainable=counts["trainable"], seq_len=b.input_ids.shape[1])
    print(
        f"\n== {size}: encoder {enc.num_layers} x {enc.hidden_dim}, LLM {text.num_hidden_layers} x "
        f"{text.hidden_size} (vocab {text.vocab_size}), {counts['total'] / 1e6:,.1f}M params, "
        f"{args.dtype or spec.dtype}, {'meta (dry run)' if meta else device} =="
    )
    print(f"  {format_counts(counts)}")
    n_audio = int(b.input_features_mask.shape[1])
    print(
        f"  batch {batch_size} x {seconds:g} s, all utterances the same length (the reference has no "
        f"padding mask): {b.input_ids.shape[1]} tokens each = {args.prompt_tokens} prompt + {n_audio} audio "
        f"+ {target_tokens} target (labelled), {b.features.shape[1]} encoder frames"
    )
    if meta:
        print("  dry run on `meta`: nothing computed")
        return result

    # the two losses, dropout off
    set_train_mode(speech, ref, False)
    with torch.no_grad():
        loss_o = float(ours_loss(speech, b))
        try:
            loss_r = float(reference_loss(ref, b))
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            loss_r = float("nan")
            print("  reference forward: out of memory")
    result.update(loss_ours=loss_o, loss_ref=loss_r, loss_diff=abs(loss_o - loss_r))
    note = ""
    if dtype != torch.float32 and loss_r == loss_r and loss_r > 0:  # its cross-entropy ran in bf16
        spacing = 2.0 ** (math.floor(math.log2(loss_r)) - 7)
        note = f"; the reference's loss is a bf16 number (spacing {spacing:g} here)"
    diff = abs(loss_o - loss_r)
    print(
        f"  loss ours {loss_o:.7f}  reference {loss_r:.7f}  |diff| {diff:.1e}  (eval mode, no dropout{note})"
    )
    if args.dry_run:
        return result

    set_train_mode(speech, ref, True)
    opt_ours = torch.optim.AdamW([p for p in speech.parameters() if p.requires_grad], lr=1e-5)
    opt_ref = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-5)
    peak = StepPeak(device)
    ref_ok = loss_r == loss_r  # not NaN (OOM in the forward)

    def step(model_loss, opt) -> tuple[float, float, float]:
        """(wall s, process CPU s, transient peak bytes) of one step."""
        peak.start()
        wall, cpu = time.perf_counter(), time.process_time()
        model_loss().backward()
        if args.optimizer:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu, peak.stop()

    def ours_step():
        return step(lambda: ours_loss(speech, b), opt_ours)

    def ref_step():
        nonlocal ref_ok
        if not ref_ok:
            return None
        try:
            return step(lambda: reference_loss(ref, b), opt_ref)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
        # outside the `except`: its traceback no longer holds the step's tensors
        ref_ok = False
        opt_ref.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        print("  reference step: out of memory")
        return None

    for _ in range(args.warmup):
        ours_step()
        ref_step()
    runs: dict[str, list[tuple[float, float, float]]] = {"ours": [], "ref": []}
    for _ in range(args.steps):
        runs["ours"].append(ours_step())
        if (r := ref_step()) is not None:
            runs["ref"].append(r)
    peaks = {name: max(m for *_, m in steps) for name, steps in runs.items() if steps}
    if device == "cpu":  # peaks from separate steps with exact malloc thresholds (they slow steps down)
        exact = GLIBC.exact(True)
        mem: dict[str, list[float]] = {"ours": [], "ref": []}
        for _ in range(3):
            mem["ours"].append(ours_step()[2])
            if (r := ref_step()) is not None:
                mem["ref"].append(r[2])
        peaks = {name: statistics.median(m) for name, m in mem.items() if m}
        GLIBC.exact(False)
        if not exact:
            peaks = {name: float("nan") for name in peaks}

    gib = 2**30
    audio_s = batch_size * seconds
    what = "forward + backward" + (" + AdamW step" if args.optimizer else " (no optimizer step)")
    print(
        f"  step = {what}; median of {args.steps} after {args.warmup} warm-up, ours / reference interleaved"
    )
    own = {"ours": module_bytes(speech), "ref": module_bytes(ref)}
    for name, label in (("ref", "reference"), ("ours", "ours")):
        if not runs[name]:
            continue
        wall = statistics.median(w for w, _, _ in runs[name])
        cpu = statistics.median(c for _, c, _ in runs[name])
        result.update({f"time_{name}": wall, f"cpu_{name}": cpu, f"peak_{name}": peaks[name]})
        result[f"throughput_{name}"] = audio_s / wall
        cpu_s = f"  cpu {1000 * cpu:9.1f} ms" if device == "cpu" else ""
        print(
            f"  {label:9s} step {1000 * wall:9.1f} ms{cpu_s}  {audio_s / wall:8.1f} audio-s/s  "
            f"peak +{peaks[name] / gib:6.3f} GiB  (model + step {(own[name] + peaks[name]) / gib:6.2f} GiB)"
        )
    if "time_ref" in result:
        result["time_ratio"] = result["time_ours"] / result["time_ref"]
        result["cpu_ratio"] = result["cpu_ours"] / result["cpu_ref"]
        result["peak_ratio"] = result["peak_ours"] / result["peak_ref"]
        cpu_s = f", CPU time {result['cpu_ratio']:.2f}x" if device == "cpu" else ""
        print(
            f"  ratio ours/reference: step time {result['time_ratio']:.2f}x{cpu_s}, step peak memory "
            f"{result['peak_ratio']:.2f}x (goal <= 1.0x)"
        )
    else:
        print("  reference: out of memory at this batch, no ratio")
    if device == "cuda":
        print(
            f"  process peak {torch.cuda.max_memory_allocated() / gib:.1f} GiB (both models resident), "
            f"GPU {torch.cuda.get_device_name()}"
        )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default=None, help="comma-separated: tiny, medium, full")
    parser.add_argument("--batch", type=int, default=None, help="utterances (default: per size)")
    parser.add_argument("--seconds", type=float, default=None, help="utterance length (default: per size)")
    parser.add_argument("--prompt-tokens", type=int, default=20)
    parser.add_argument("--target-tokens", type=int, default=None, help="default: 10 per 3 s of audio")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32, full size bf16")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--optimizer", action="store_true", help="include AdamW.step() in the step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--attn-impl", default="sdpa", choices=["sdpa", "math"], help="our encoder's kernel")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build and print counts (full size on `meta`), check the losses (other sizes), no timing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    sizes = args.sizes or ("full" if args.device == "cuda" else "tiny,medium")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    results = []
    for size in sizes.split(","):
        results.append(run(size.strip(), args))
    return results


if __name__ == "__main__":
    main()
