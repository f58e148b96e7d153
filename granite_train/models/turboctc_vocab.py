"""Grow a granite-speech-5.0 TurboCTC model's BPE vocabulary for a new language, its old outputs intact.

The same surgery as the 4.0 character head (:mod:`granite_train.models.vocab_surgery`, whose module
doc explains the numbers), on the 5.0 layout:

* **tokenizer**: the new symbols (a new script's letters, say) become added tokens with the ids after
  the old ones (``tokenizer.add_tokens``). Added tokens are matched before BPE, so a text without
  them tokenizes exactly as before, and a new-language text round-trips (spaces stay ``▁``).
* **model**: three tensors see the vocabulary size. ``encoder.out`` (hidden -> V, which the CTC
  head ``ctc_head`` shares) gains rows with weight 0 and bias ``new_logit_bias`` (-50), or, with
  ``init="similar"``, a copy of the row of an old token that probably sounds alike, ``margin`` (25)
  below it. ``encoder.out_mid`` (V -> hidden) gains zero columns. The old log-probabilities move
  by less than fp32 resolves, so decoding is unchanged until training moves the new rows.

``vocab_size`` grows in both configs (``validate_architecture`` wants them equal).

**Letters are not enough at 12.5 Hz.** One token per letter gives a new-language sentence more
targets than the model has output frames (speech runs at ~12-15 letters a second): most of it cannot
be aligned (``skipped/too_many_targets``). :func:`new_language_pieces` therefore also adds the
language's most frequent multi-letter pieces, the first merges a BPE trained on its transcripts
learns. Added tokens are matched longest first before BPE, so a word becomes a few pieces; every
piece is made of new symbols only, so old-language text still tokenizes exactly as before.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import GraniteSpeech5ForCTC

from granite_train.models.turboctc import load_turboctc, save_turboctc
from granite_train.models.vocab_surgery import INITS, NEW_LOGIT_BIAS, SIMILAR_MARGIN

log = logging.getLogger(__name__)


def _similar_token(char: str, tokenizer) -> int | None:
    """The id of an old single-letter token that ``char`` probably sounds like: its base letter, or
    the letter its Unicode name starts with (:func:`~.vocab_surgery.similar_symbol`)."""
    from granite_train.models.vocab_surgery import similar_symbol

    source = similar_symbol(char, _Letters(t for t in tokenizer.get_vocab() if len(t) == 1))
    return tokenizer.convert_tokens_to_ids(source) if source else None


class _Letters:
    """The single-letter tokens as the membership test ``similar_symbol`` asks (``in``)."""

    def __init__(self, letters: Iterable[str]):
        self.letters = set(letters)

    def __contains__(self, item: str) -> bool:
        return item in self.letters


def new_language_pieces(texts: Iterable[str], new_symbols: Iterable[str], count: int) -> list[str]:
    """Up to ``count`` multi-letter pieces of the new language, in the order a BPE trained on
    ``texts`` (its normalised transcripts) merges them, each made of ``new_symbols`` only.

    Raises ValueError for a negative ``count``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if count < 0:
        raise ValueError(f"the number of new pieces must be >= 0, got {count}")
    symbols = set(new_symbols)
    texts = [t for t in texts if t.strip()]
    if count == 0 or not symbols or not texts:
        return []
    alphabet = {c for t in texts for c in t if not c.isspace()}
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # room for the merges that mix in old symbols (digits, Latin), which are dropped below
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 4 * count, show_progress=False)
    backend.train_from_iterator(texts, trainer)
    merges = json.loads(backend.to_str())["model"]["merges"]
    pieces: list[str] = []
    for merge in merges:
        piece = "".join(merge.split(" ") if isinstance(merge, str) else merge)
        if set(piece) <= symbols and piece not in pieces:
            pieces.append(piece)
            if len(pieces) == count:
                break
    return pieces


def extend_turboctc_vocab(
    model: GraniteSpeech5ForCTC,
    tokenizer,
    new_symbols: Iterable[str],
    new_logit_bias: float = NEW_LOGIT_BIAS,
    init: str = "zero",
    margin: float = SIMILAR_MARGIN,
):
    """``(model, tokenizer)`` copies whose vocabulary also holds ``new_symbols`` (ids after the old).

    Raises ValueError for no symbols, an unknown ``init``, or a symbol the tokenizer already
    writes as one token (named, with its id).
    """
    new = list(dict.fromkeys(new_symbols))
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not new:
        raise ValueError("no new symbols to add to the BPE vocabulary")
    vocab = tokenizer.get_vocab()
    present = [f"{s!r} (id {vocab[s]})" for s in new if s in vocab]
    if present:
        raise ValueError(f"already in the BPE vocabulary: {', '.join(present)}")
    old_size = int(model.config.vocab_size)
    if len(tokenizer) != old_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} ids but the CTC head {old_size}: they must match"
        )

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens(new)
    size = len(tokenizer)
    config = copy.deepcopy(model.config)
    config.vocab_size = config.encoder_config.vocab_size = size
    grown = GraniteSpeech5ForCTC(config)
    state = model.state_dict()
    with torch.no_grad():
        weight, bias = state["encoder.out.weight"], state["encoder.out.bias"]  # (V, D), (V,)
        new_weight = torch.zeros(size, weight.shape[1], dtype=weight.dtype)
        new_bias = torch.full((size,), float(new_logit_bias), dtype=bias.dtype)
        new_weight[:old_size], new_bias[:old_size] = weight, bias
        sources = {}
        if init == "similar":
            for k, char in enumerate(new):  # a piece starts like its first letter
                source = _similar_token(char[0], tokenizer)
                if source is not None and source < old_size:
                    new_weight[old_size + k] = weight[source]
                    new_bias[old_size + k] = bias[source] - margin
                    sources[char] = tokenizer.convert_ids_to_tokens(source)
        mid = state["encoder.out_mid.weight"]  # (D, V)
        new_mid = torch.zeros(mid.shape[0], size, dtype=mid.dtype)
        new_mid[:, :old_size] = mid
        state.update({
            "encoder.out.weight": new_weight, "encoder.out.bias": new_bias,
            "ctc_head.weight": new_weight, "ctc_head.bias": new_bias,
            "encoder.out_mid.weight": new_mid,
        })  # fmt: skip
    grown.load_state_dict(state, strict=True)
    grown.train(model.training)
    log.info("BPE vocabulary %d -> %d: added %s", old_size, size, "".join(new))
    if sources:
        log.info(
            "new rows copied from (margin %.1f): %s",
            margin,
            " ".join(f"{k}<-{v}" for k, v in sources.items()),
        )
    return grown, tokenizer


def extend_turboctc_folder(
    folder: str | Path, new_symbols: Iterable[str], out_dir: str | Path, **kwargs
) -> Path:
    """:func:`extend_turboctc_vocab` on a folder, written as a new folder in the released layout."""
    folder, out_dir = Path(folder), Path(out_dir)
    if out_dir.resolve() == folder.resolve():
        raise ValueError(f"out must be a new folder, not the model itself ({folder})")
    loaded = load_turboctc(folder)
    model, tokenizer = extend_turboctc_vocab(loaded.model, loaded.processor.tokenizer, new_symbols, **kwargs)
    return save_turboctc(model, tokenizer, out_dir, loaded.processor.feature_extractor)


__all__ = ["extend_turboctc_folder", "extend_turboctc_vocab", "new_language_pieces"]
