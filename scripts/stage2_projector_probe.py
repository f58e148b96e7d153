"""How fast does a new projector learn to carry the transcript? (stage-2 diagnosis, CPU).

Trains only a projector on top of the frozen stage-1 encoder, with the auxiliary audio-token CTC
(:class:`granite_train.models.speech_llm.AudioCTCHead`) as its only loss: no LLM in the loop. The
CTC loss per target token says how much of the transcript the projected audio tokens carry
(uniform over the vocabulary: ~6.9 nats; a unigram prior: ~6).

Variants (``--projector``):
  qformer  the Granite Q-Former of the recipe, new (N(0, initializer_range))
  stack    reference: 5 stacked encoder frames -> Linear (10 Hz, no Q-Former)

    .venv/bin/python scripts/stage2_projector_probe.py --projector qformer --steps 200

Needs the stage-1 encoder and the tiny LLM of ``recipes/speech_llm_tiny_en.yaml`` (the LLM only
for its tokenizer and width). Prints the CTC loss every ``--every`` steps.
"""

from __future__ import annotations

import argparse
import time

import torch

VARIANTS = ("qformer", "stack")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projector", choices=VARIANTS, default="qformer")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the stage-2 recipe")
    args = parser.parse_args(argv)

    from granite_train.data.prompts import PromptBuilder, PromptConfig, SpeechLLMCollator
    from granite_train.models.speech_llm import build_speech_llm
    from granite_train.recipes import load_recipe
    from granite_train.training.run import SpeechDataModule
    from granite_train.training.speech_llm_losses import AudioCTCHead

    torch.manual_seed(args.seed)
    cfg = load_recipe("speech_llm_tiny_en", ["data.num_workers=0", "model.train.llm=false", *args.overrides])
    speech = build_speech_llm(cfg["model"])

    def wrap_collator(collator, train):
        builder = PromptBuilder(
            speech.tokenizer,
            PromptConfig(**{**dict(cfg.get("prompts") or {}), "vary_instructions": False}),
            speech.config.window_size,
            speech.config.downsample_rate,
        )
        return SpeechLLMCollator(builder, collator)

    data = SpeechDataModule(
        cfg["data"], seed=args.seed, snapshot_every_n_batches=10**9, wrap_collator=wrap_collator
    )
    data.setup("fit")
    batches = iter(data.train_dataloader())

    width = speech.config.text_config.hidden_size
    head = AudioCTCHead(width, len(speech.tokenizer))
    params = list(head.parameters())
    stack = None
    if args.projector == "stack":
        stack = torch.nn.Linear(5 * speech.encoder.config.hidden_dim, width)
        params += list(stack.parameters())
    else:
        params += list(speech.projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr)

    print(f"[probe] projector {args.projector}, {sum(p.numel() for p in params):,} trainable parameters")
    start = time.time()
    for step in range(1, args.steps + 1):
        batch = next(batches)
        if stack is None:
            audio, counts = speech.audio_embeds(batch.features, batch.feature_lengths)
        else:
            with torch.no_grad():
                hidden = speech.encoder(batch.features, batch.feature_lengths).last_hidden_state
            frames = hidden.shape[1] // 5 * 5
            audio = stack(hidden[:, :frames].reshape(hidden.shape[0], frames // 5, -1))
            counts = torch.clamp(batch.feature_lengths // 5, max=audio.shape[1])
        loss, dropped = speech.audio_ctc_loss(audio, counts, batch.labels, head)
        if loss is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == 1:
            with torch.no_grad():
                spread = float(audio[0, : int(counts[0])].std(0).mean() / audio.pow(2).mean().sqrt())
            print(
                f"[probe] step {step:5d}  audio CTC {float(loss):.3f}  "
                f"spread across tokens {spread:.3f}  dropped {dropped}  {time.time() - start:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
