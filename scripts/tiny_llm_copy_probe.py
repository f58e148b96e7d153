"""Can the tiny LLM learn to read a span of tokens? (stage-2 diagnosis, CPU, text only).

Builds a fresh tiny Granite LLM (as the demo does) and trains it on a mix of
* language-model rows: ``" " + transcript + EOS``, and
* copy rows: the stage-2 ASR prompt with its audio span filled with the transcript's first
  ``--max-tokens`` tokens at random positions among blanks (the pad token), ``--span-factor``
  (default 1.3-2.2) span positions per token and ``--noise`` (10%) of them replaced by random
  tokens; loss on the target only.

A copy row is what stage 2 asks of the LLM once the projector carries the transcript: read the
span in order. The loop is ``data_prep.base_llm.pretrain_text_lm`` (its progress bar shows the running loss of
each row type); copying is learned when the copy loss falls well below the LM loss.

    .venv/bin/python scripts/tiny_llm_copy_probe.py --out work/llm/copy_probe --steps 400
"""

from __future__ import annotations

import argparse
import time


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

    from data_prep.base_llm import corpus_texts, pretrain_text_lm
    from granite_train.data.prompts import normalize_target
    from granite_train.models.tiny_llm import build_tiny_llm
    from granite_train.speech_format import ASR_INSTRUCTIONS

    texts = [normalize_target(t) for t in corpus_texts(args.corpus)]
    prompts = [f"USER: {i}\n ASSISTANT:" for i in ASR_INSTRUCTIONS] * 20
    overrides = (
        {} if args.attention_multiplier is None else {"attention_multiplier": args.attention_multiplier}
    )
    build_tiny_llm(args.out, texts + prompts, "tiny", 1024, args.seed, **overrides)
    start = time.time()
    losses = pretrain_text_lm(
        args.out,
        texts,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        copy_share=args.copy_share,
        copy_max_tokens=args.max_tokens,
        copy_span_factor=(span_lo, span_hi),
        copy_noise=args.noise,
    )
    print(
        f"[copy probe] {args.steps} steps in {time.time() - start:.0f} s: copy rows "
        f"{losses.get('last_copy_loss', float('nan')):.3f}, LM rows {losses.get('last_lm_loss', float('nan')):.3f} "
        "(nats/token, mean of the last 20 steps)"
    )


if __name__ == "__main__":
    main()
