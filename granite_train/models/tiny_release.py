"""A tiny speech model in the released 4.0 layout, built locally: the stand-in for
``ibm-granite/granite-4.0-1b-speech`` where the hub cannot be reached (tests, scripts that drive
``finetune`` end to end). Random weights: it reads nothing until trained."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def build_tiny_released_model(
    root: Path, sentences: Sequence[str] | None = None, seed: int = 0, llm: str | Path | None = None
) -> Path:
    """``root/released``: a 2-layer encoder, a tiny Q-Former and a micro Granite LLM whose BPE
    tokenizer was trained on ``sentences`` (default: rotations of the ten digit words), exported
    merged as granite-4.0-1b-speech is. Returns the folder.

    ``llm``: a Granite LLM folder to use instead of the micro one (e.g. what ``granite-train
    import-llm`` wrote from a GGUF file); its tokenizer comes with it, so ``sentences`` must not be given."""
    import torch

    from granite_train.models.encoder import CTCEncoder, encoder_config
    from granite_train.models.speech_export import export_speech_llm
    from granite_train.models.speech_llm import assemble_speech_llm
    from granite_train.models.tiny_llm import build_tiny_llm

    if llm is not None and sentences:
        raise ValueError("give sentences (for the micro LLM's tokenizer) or llm (a folder), not both")
    if llm is None:
        words = DIGIT_WORDS
        texts = list(sentences) if sentences else [" ".join(words[i:] + words[:i]) for i in range(10)] * 4
        llm = build_tiny_llm(Path(root) / "llm", texts, preset="micro", vocab_size=300)
    torch.manual_seed(seed)
    encoder = CTCEncoder(encoder_config("tiny", num_layers=2, hidden_dim=64, num_heads=4, dim_head=16)).eval()
    projector = dict(preset="tiny", hidden_size=32, num_attention_heads=2, intermediate_size=64)
    speech = assemble_speech_llm(encoder, llm, projector=projector)
    return export_speech_llm(speech, Path(root) / "released")  # the 4.0 layout: merged, no adapter


__all__ = ["DIGIT_WORDS", "build_tiny_released_model"]
