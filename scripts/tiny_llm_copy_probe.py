"""Can the tiny LLM learn to read a span of tokens? (stage-2 diagnosis, CPU, text only).

Builds a fresh tiny Granite LLM (as the demo does) and trains it on a mix of
* language-model rows: ``" " + transcript + EOS``, and
* copy rows: the stage-2 ASR prompt with its audio span filled with the transcript's first
  ``--max-tokens`` tokens at random positions among blanks (the pad token), ``--span-factor``
  (default 1.3-2.2) span positions per token and ``--noise`` (10%) of them replaced by random
  tokens; loss on the target only.

A copy row is what stage 2 asks of the LLM once the projector carries the transcript: read the
span in order. Prints the loss of each row type; copying is learned when the copy loss falls well
below the LM loss.

    .venv/bin/python scripts/tiny_llm_copy_probe.py --out work/llm/copy_probe --steps 400
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder of the LLM built and trained here")
    parser.add_argument("--corpus", default="work/corpus/tts_en")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--copy-share", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=16, help="target tokens per copy row")
    parser.add_argument(
        "--span-factor", default="1.3,2.2", help="span positions per target token: a uniform range LO,HI"
    )
    parser.add_argument("--noise", type=float, default=0.1, help="share of span tokens replaced at random")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attention-multiplier",
        type=float,
        default=None,
        help="GraniteConfig.attention_multiplier (softmax scale) of the new LLM (default: the preset's)",
    )
    args = parser.parse_args(argv)
    span_lo, span_hi = (float(x) for x in args.span_factor.split(","))
    if not 1.0 <= span_lo <= span_hi:
        parser.error("--span-factor needs 1 <= LO <= HI")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from granite_train.data.prompts import ASR_INSTRUCTIONS, PromptBuilder, normalize_target
    from granite_train.models.tiny_llm import build_tiny_llm, copy_row, corpus_texts
    from granite_train.training.schedules import build_schedule

    texts = [normalize_target(t) for t in corpus_texts(args.corpus)]
    prompts = [f"USER: {i}\n ASSISTANT:" for i in ASR_INSTRUCTIONS] * 20
    overrides = (
        {} if args.attention_multiplier is None else {"attention_multiplier": args.attention_multiplier}
    )
    build_tiny_llm(args.out, texts + prompts, "tiny", 1024, args.seed, **overrides)
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    model = AutoModelForCausalLM.from_pretrained(args.out).train()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs = [ids + [eos] for ids in tokenizer([" " + t for t in texts], add_special_tokens=False).input_ids]
    builder = PromptBuilder(tokenizer)
    audio_id = builder.audio_id
    gen = torch.Generator().manual_seed(args.seed)

    def rand() -> float:
        return float(torch.rand((), generator=gen))

    def row(seq: list[int]) -> tuple[list[int], list[int]]:
        instruction = ASR_INSTRUCTIONS[int(torch.randint(len(ASR_INSTRUCTIONS), (), generator=gen))]
        prompt = builder.prompt_ids(instruction, 1)
        target = seq[:-1][: args.max_tokens]
        return copy_row(target, prompt, audio_id, pad, eos, gen, (span_lo, span_hi), args.noise)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, build_schedule("cosine", args.steps, args.lr, warmup_steps=max(1, args.steps // 10))
    )
    copy_losses: list[float] = []
    lm_losses: list[float] = []
    start = time.time()
    for step in range(1, args.steps + 1):
        rows, is_copy = [], []
        for i in torch.randint(len(seqs), (args.batch_size,), generator=gen).tolist():
            is_copy.append(rand() < args.copy_share)
            rows.append(row(seqs[i]) if is_copy[-1] else (seqs[i], seqs[i]))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (seq, lab) in enumerate(rows):
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, : len(lab)] = torch.tensor(lab)
            mask[r, : len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        labelled = targets != -100
        token_loss[labelled].mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        copy_rows = torch.tensor(is_copy)[:, None]
        if (labelled & copy_rows).any():
            copy_losses.append(float(token_loss[labelled & copy_rows].mean()))
        if (labelled & ~copy_rows).any():
            lm_losses.append(float(token_loss[labelled & ~copy_rows].mean()))
        if step % 25 == 0 or step == args.steps:
            recent = lambda xs: sum(xs[-25:]) / max(1, len(xs[-25:]))  # noqa: E731
            print(
                f"[copy probe] step {step:5d}  copy rows {recent(copy_losses):.3f}  "
                f"LM rows {recent(lm_losses):.3f}  {time.time() - start:.0f} s",
                flush=True,
            )
    model.save_pretrained(args.out)


if __name__ == "__main__":
    main()
