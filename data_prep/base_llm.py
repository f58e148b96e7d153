"""A stand-in for a hub base LLM, built locally: tiny Granite LLM + BPE tokenizer + pretraining.

Nothing can be downloaded at test time, and a random LLM is no stand-in for
``ibm-granite/granite-4.0-1b-base``: that one knows the language before stage 2 starts and can copy
from its context, which is what reading the projected audio tokens takes. This module trains the
tiny model (:func:`granite_train.models.tiny_llm.build_tiny_llm`) on the stage-2 transcripts with
language-model rows and in-context copy rows (RESULTS.md, "Stage 2: why the tiny model did not
learn"), and caches the result by its settings.

    python -m data_prep.base_llm --corpus work/corpus/tts_en --out work/llm/tiny_en \
        --pretrain-steps 1500 --copy-share 0.9 --batch-size 32
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from granite_train.models.tiny_llm import LLM_PRESETS, build_tiny_llm
from granite_train.speech_format import ASR_INSTRUCTIONS, AST_INSTRUCTIONS, AUDIO_TOKEN


def copy_row(
    target: Sequence[int],
    prompt: Sequence[int],
    audio_id: int,
    blank_id: int,
    eos_id: int,
    generator: Any,
    span_factor: tuple[float, float] = (1.3, 2.2),
    noise: float = 0.1,
) -> tuple[list[int], list[int]]:
    """One in-context copy example in the stage-2 layout -> (input ids, labels).

    ``prompt`` is a stage-2 prompt with one ``audio_id`` placeholder. It becomes a span of
    ``len(target) * U(span_factor)`` positions holding ``target`` in order at random positions among
    ``blank_id`` tokens, with a ``noise`` share of them swapped for random tokens -- roughly what a
    CTC-trained projector shows the LLM. The labels are the target (+ EOS) only: the row teaches
    reading a span in order, which stage 2 asks of the LLM and a base LLM can already do.
    """
    import torch

    def rand() -> float:
        return float(torch.rand((), generator=generator))

    n = len(target)
    lo, hi = span_factor
    span = max(n, int(n * (lo + (hi - lo) * rand())))
    where = sorted(torch.randperm(span, generator=generator)[:n].tolist())
    audio = [blank_id] * span
    for pos, tok in zip(where, target):
        audio[pos] = tok if rand() >= noise else int(torch.randint(2, audio_id, (), generator=generator))
    at = list(prompt).index(audio_id)
    ids = list(prompt[:at]) + audio + list(prompt[at + 1 :])
    return ids + list(target) + [eos_id], [-100] * len(ids) + list(target) + [eos_id]


def pretrain_text_lm(
    llm_dir: str | Path,
    texts: Sequence[str],
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    copy_share: float = 0.0,
    copy_max_tokens: int = 32,
    copy_span_factor: tuple[float, float] = (1.3, 2.2),
    copy_noise: float = 0.1,
) -> dict[str, float]:
    """Pretrain the tiny LLM in ``llm_dir`` on ``texts``, in place: language modelling + copying.

    A random LLM is no stand-in for a *base* LLM. granite-4.0-1b-base knows the language before
    stage 2 starts, and it can copy from its context, which is what reading the projected audio
    tokens takes. Language-model rows (``" " + text + EOS``, the form of a stage-2 target: pass the
    texts as the targets look, e.g. through ``prompts.normalize_target``) give the first;
    ``copy_share`` of the rows are :func:`copy_row` examples (the text's first ``copy_max_tokens``
    tokens, in an ASR prompt, ``copy_span_factor`` span positions per token, ``copy_noise`` of them
    random) and give the second. Without copy rows the tiny LLM never learns to
    read its audio span on a CPU budget (RESULTS.md, "Stage 2: why the tiny model did not learn").
    Returns the first and last losses, overall and of each row type.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from granite_train.data.prompts import PromptBuilder
    from granite_train.training.schedules import build_schedule

    if not 0.0 <= copy_share <= 1.0:
        raise ValueError(f"copy_share must be in [0, 1], got {copy_share}")
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir)).train()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs = [
        ids + [eos] for ids in tokenizer([" " + t.strip() for t in texts], add_special_tokens=False).input_ids
    ]
    prompts = (
        [[]] if copy_share == 0 else [PromptBuilder(tokenizer).prompt_ids(i, 1) for i in ASR_INSTRUCTIONS]
    )
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = build_schedule("cosine", steps, lr, warmup_steps=max(1, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    losses: dict[str, list[float]] = {"all": [], "lm": [], "copy": []}
    bar = tqdm(
        range(steps), desc="base LM pretraining", unit="step", disable=not progress, dynamic_ncols=True
    )
    for _ in bar:
        rows, is_copy = [], []
        for i in torch.randint(len(seqs), (batch_size,), generator=generator).tolist():
            is_copy.append(copy_share > 0 and float(torch.rand((), generator=generator)) < copy_share)
            if is_copy[-1]:
                prompt = prompts[int(torch.randint(len(prompts), (), generator=generator))]
                target = seqs[i][:-1][:copy_max_tokens]
                rows.append(
                    copy_row(target, prompt, audio_id, pad, eos, generator, copy_span_factor, copy_noise)
                )
            else:
                rows.append((seqs[i], seqs[i]))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (seq, lab) in enumerate(rows):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        labelled = targets != -100
        loss = token_loss[labelled].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses["all"].append(float(loss.detach()))
        copy_rows = torch.tensor(is_copy)[:, None]
        for name, rows_mask in (("copy", copy_rows), ("lm", ~copy_rows)):
            if (labelled & rows_mask).any():
                losses[name].append(float(token_loss.detach()[labelled & rows_mask].mean()))
        postfix = {name: f"{sum(v[-20:]) / len(v[-20:]):.3f}" for name, v in losses.items() if v}
        bar.set_postfix(postfix)
    model.save_pretrained(str(llm_dir))
    out = {"first_loss": losses["all"][0], "last_loss": sum(losses["all"][-20:]) / len(losses["all"][-20:])}
    for name in ("lm", "copy"):
        if losses[name]:
            out[f"last_{name}_loss"] = sum(losses[name][-20:]) / len(losses[name][-20:])
    return out


def corpus_texts(path: str | Path, split: str = "train", column: str = "text") -> list[str]:
    """Transcripts of a parquet corpus folder written by ``granite-tts`` (``<path>/<split>/*.parquet``)."""
    import pyarrow.parquet as pq

    files = sorted(Path(path).glob(f"{split}/**/*.parquet")) or sorted(
        Path(path).glob(f"**/{split}*.parquet")
    )
    if not files:
        raise FileNotFoundError(f"no {split} parquet files under {path}")
    texts: list[str] = []
    for file in files:
        texts += [t for t in pq.read_table(file, columns=[column]).column(column).to_pylist() if t]
    return texts


PRETRAINING_RECORD = "pretraining.json"


def build_base_llm(
    out_dir: str | Path,
    texts: Sequence[str],
    preset: str = "tiny",
    vocab_size: int = 1024,
    seed: int = 0,
    pretrain_steps: int = 0,
    copy_share: float = 0.0,
    batch_size: int = 64,
    keep_case: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The local stand-in for a base LLM: tokenizer + tiny Granite LLM + pretraining, in ``out_dir``.

    ``texts`` are the stage-2 training transcripts; unless ``keep_case`` they are normalised as the
    targets are (``prompts.normalize_target``). The prompts the model always reads are in the
    tokenizer's training text, so they tokenize compactly. A finished build leaves
    :data:`PRETRAINING_RECORD` (settings and losses) and is reused when asked again for the same
    settings, so a re-run demo does not rebuild the LLM under a resumed stage 2.
    """
    import hashlib
    import json

    from granite_train.data.prompts import normalize_target

    out = Path(out_dir)
    # the texts themselves, not just their number: a changed corpus must not reuse an old build
    texts_sha256 = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    settings = dict(
        preset=preset, vocab_size=vocab_size, seed=seed, pretrain_steps=pretrain_steps,
        copy_share=copy_share, batch_size=batch_size, keep_case=keep_case, texts_sha256=texts_sha256,
    )  # fmt: skip
    record = out / PRETRAINING_RECORD
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("settings") == settings:
            print(f"[tiny-llm] {out} is already built with these settings: reusing it", flush=True)
            return done
    if not keep_case:  # the form stage-2 targets take with prompts.normalize_targets
        texts = [normalize_target(t) for t in texts]
    prompts = [f"USER: {i}\n ASSISTANT:" for i in ASR_INSTRUCTIONS + AST_INSTRUCTIONS]
    build_tiny_llm(out, list(texts) + prompts * 20, preset, vocab_size, seed)
    print(
        f"[tiny-llm] {preset} Granite LLM + {vocab_size}-token BPE ({len(texts)} texts) -> {out}", flush=True
    )
    losses: dict[str, float] = {}
    if pretrain_steps:
        losses = pretrain_text_lm(
            out, texts, steps=pretrain_steps, batch_size=batch_size, seed=seed, copy_share=copy_share,
            progress=progress,
        )  # fmt: skip
        print("[tiny-llm] pretraining losses: " + ", ".join(f"{k} {v:.2f}" for k, v in losses.items()))
    done = {"settings": settings, "losses": losses}
    record.write_text(json.dumps(done, indent=2))
    return done


def main(argv: list[str] | None = None) -> None:
    """``python -m data_prep.base_llm --corpus DIR --out DIR``: a local stand-in base LLM."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--corpus", action="append", default=[], help="parquet corpus folder (train split)")
    parser.add_argument("--texts", action="append", default=[], help="text file, one sentence per line")
    parser.add_argument("--preset", default="tiny", choices=sorted(LLM_PRESETS))
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrain-steps", type=int, default=0, help="pretraining steps on the texts (LM + copy rows)"
    )
    parser.add_argument(
        "--copy-share", type=float, default=0.0, help="share of in-context copy rows in pretraining"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="pretraining rows per step")
    parser.add_argument(
        "--keep-case",
        action="store_true",
        help="train the tokenizer and LM on the texts as they are (default: lower-cased, no "
        "punctuation, as stage-2 targets are with prompts.normalize_targets)",
    )
    args = parser.parse_args(argv)
    texts: list[str] = []
    for corpus in args.corpus:
        texts += corpus_texts(corpus)
    for file in args.texts:
        texts += [line.strip() for line in open(file, encoding="utf-8") if line.strip()]
    if not texts:
        parser.error("give at least one --corpus or --texts")
    build_base_llm(
        args.out, texts, args.preset, args.vocab_size, args.seed, args.pretrain_steps, args.copy_share,
        args.batch_size, args.keep_case,
    )  # fmt: skip


if __name__ == "__main__":
    main()
