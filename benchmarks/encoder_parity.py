"""Measured parity of our CTCEncoder with transformers' GraniteSpeechCTCEncoder (the figures the tests bound).

    .venv/bin/python benchmarks/encoder_parity.py

Prints max abs differences (fp32, eval mode, non-trivial BatchNorm statistics) for: the same weights
in both models on an unpadded input spanning several 4 s attention blocks (math and SDPA kernels);
each sample of a padded batch against the sample alone; an exported transformers folder reloaded
with plain ``from_pretrained``; and the parameter count at the published configuration.
"""

from __future__ import annotations

import tempfile

import torch
from transformers import GraniteSpeechCTCEncoder

from granite_train.models.encoder import CTCEncoder, encoder_config
from granite_train.models.export import export_hf_encoder


def _randomize_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


@torch.no_grad()
def main() -> None:
    torch.manual_seed(0)
    config = encoder_config("tiny")
    ref = GraniteSpeechCTCEncoder(config).eval()
    _randomize_bn(ref)
    x = torch.randn(2, 450, 160)  # 9 s: three 200-frame blocks, the last one partial
    r = ref(x).last_hidden_state
    for impl in ("math", "sdpa"):
        ours = CTCEncoder(config, attn_impl=impl).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        o = ours(x)
        print(
            f"forward parity ({impl}): hidden {(o.last_hidden_state - r).abs().max():.2e}, "
            f"logits {(o.logits - ref.out(r)).abs().max():.2e}  (bound 1e-5)"
        )

    ours = CTCEncoder(config, attn_impl="sdpa").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    lengths = torch.tensor([450, 300, 120])
    batch = torch.randn(3, 450, 160)
    padded = ours(batch, lengths)
    worst = max(
        (padded.logits[b, :n] - ours(batch[b : b + 1, :n]).logits[0]).abs().max().item()
        for b, n in enumerate(lengths.tolist())
    )
    print(f"padding invariance (eval, sdpa): max abs diff {worst:.2e}  (bound 1e-5)")

    with tempfile.TemporaryDirectory() as tmp:
        export_hf_encoder(ours, tmp)
        reloaded = GraniteSpeechCTCEncoder.from_pretrained(tmp).eval()
        diff = (reloaded.out(reloaded(x).last_hidden_state) - ours(x).logits).abs().max()
        print(f"export -> transformers from_pretrained: logits max abs diff {diff:.2e}")

    full = encoder_config("granite_4_0_1b")
    with torch.device("meta"):
        n_ours = sum(p.numel() for p in CTCEncoder(full).parameters())
        n_ref = sum(p.numel() for p in GraniteSpeechCTCEncoder(full).parameters())
    print(f"granite_4_0_1b parameters: ours {n_ours:,}, transformers {n_ref:,}")


if __name__ == "__main__":
    main()
