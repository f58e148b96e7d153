"""A tiny Granite LLM + BPE tokenizer, built locally: the stand-in for a hub LLM in tests and demos.

Nothing can be downloaded at test time, so tests and the CPU demo train a byte-level BPE tokenizer
(``tokenizers``) on their own sentences and save a randomly initialised ``GraniteForCausalLM`` next
to it. The folder has the layout of a hub checkpoint (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json`` with a chat template), so it is loaded by the same
``from_pretrained`` code path as ``ibm-granite/granite-4.0-1b-base``. Its pretraining into a
stand-in *base* LLM (language modelling + in-context copying) is :mod:`data_prep.base_llm`.

The tokenizer mirrors the released speech model's: ``<|end_of_text|>`` (bos = eos), ``<|pad|>``,
and ``<|audio|>`` as the last id (as 100352 is in granite-4.0-1b-speech), and the 4.0 speech chat
template ``USER: {content}\\n ASSISTANT:``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from granite_train.speech_format import AUDIO_TOKEN, CHAT_TEMPLATE

EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"

# Granite LLM shapes: ``tiny`` for CPU tests / demos; the published base for reference.
LLM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "micro": dict(  # unit tests: a few hundred thousand parameters
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    ),
}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, chat_template: str = CHAT_TEMPLATE):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with the speech specials.

    Ids: ``<|end_of_text|>`` 0, ``<|pad|>`` 1, the BPE vocabulary, then ``<|audio|>`` last.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=4096,
        padding_side="left",  # generation pads on the left; training collation pads itself
    )
    fast.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]})
    fast.chat_template = chat_template
    return fast


def build_tiny_llm(
    out_dir: str | Path,
    texts: Iterable[str],
    preset: str = "tiny",
    vocab_size: int = 1024,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Write a random-init ``GraniteForCausalLM`` + tokenizer trained on ``texts`` to ``out_dir``.

    Args:
        out_dir: folder to write (created); loadable with ``AutoModelForCausalLM.from_pretrained``.
        texts: sentences to train the BPE tokenizer on (the training transcripts).
        preset: a :data:`LLM_PRESETS` name; ``overrides`` replace its fields (any ``GraniteConfig`` field).
        vocab_size: BPE vocabulary size before the special tokens.
        seed: seed of the random initialisation.
    """
    import torch
    from transformers import GraniteConfig, GraniteForCausalLM

    if preset not in LLM_PRESETS:
        raise ValueError(f"unknown LLM preset {preset!r}; choose from {sorted(LLM_PRESETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    shape = {**LLM_PRESETS[preset], **overrides}
    # GraniteConfig's attention_multiplier *is* the softmax scale (default 1.0: no 1/sqrt(head_dim);
    # the released Granite models use 1/head_dim, their muP setting). At 1.0 the tiny LLM's
    # attention learns much more slowly (RESULTS.md, "Stage 2: why the tiny model did not learn").
    shape.setdefault("attention_multiplier", (shape["hidden_size"] // shape["num_attention_heads"]) ** -0.5)
    config = GraniteConfig(
        **shape,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = GraniteForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


__all__ = ["EOS_TOKEN", "LLM_PRESETS", "PAD_TOKEN", "build_tiny_llm", "train_bpe_tokenizer"]
