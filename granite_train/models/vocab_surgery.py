"""Grow a trained CTC encoder's vocabulary for a new language, leaving its old behaviour intact.

New symbols get the ids after the existing ones (:class:`~granite_train.text.vocab.CharVocab`), so
every old id keeps its row. Two layers see the vocabulary size (names as in transformers'
``GraniteSpeechCTCEncoder``, so the state dict still loads there strictly)::

    out      Linear(hidden -> V)    new output rows:  weight 0, bias NEW_LOGIT_BIAS
    out_mid  Linear(V -> hidden)    new input columns: 0   (self-conditioning reads softmax(out(h)))

Why this keeps decoding identical before any training: a new logit is ``NEW_LOGIT_BIAS`` (-50)
whatever the input. The old log-probabilities shift by ``-log(1 + n * exp(-50 - lse))``, where
``lse`` is the logsumexp of the old logits; that is below fp32's resolution (1e-7) while ``lse >
-34 + ln n``. Since ``lse >= mean logit + ln V`` and softmax training leaves the mean logit near
its initial 0 (the softmax gradient sums to zero over classes), that holds with a wide margin: the
old softmax, log-softmax and argmax are unchanged (up to summation order), and the
self-conditioning input gains ``0 * p_new``. Why not -inf or -1e4: the new rows must still learn.
The CTC gradient of a target symbol's logit does not vanish however unlikely the symbol is, but
Adam moves each weight and the bias by about the learning rate per step, so the farther below the
old logits the new ones start, the more steps they take to come up (``new_logit_bias`` trades
that against the margin above).

``init="similar"`` starts each new row as a copy of an old letter that probably sounds alike (its
base letter, "é" -> "e", or the first letter of its Unicode name, "GREEK SMALL LETTER THETA" -> "t":
:func:`similar_symbol`), its bias ``margin`` (25) below that letter's: the new logit is the old
letter's minus 25, so the old log-probabilities move by at most ``n * exp(-25)`` (5e-10 for 36
symbols, below fp32's resolution) and decoding stays identical, while the row already fires where
the old letter does. Measured on Greek (RESULTS.md, issue 20): zero rows at -50 had learnt no Greek
letter after 100 steps; copied rows climb the 25 nats because the copy and its source part ways
(each step moves both, in opposite directions, where the new letter is spoken).
"""

from __future__ import annotations

import copy
import logging
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from granite_train.models.encoder import CTCEncoder
from granite_train.text.vocab import CharVocab

log = logging.getLogger(__name__)

__all__ = [
    "INITS",
    "NEW_LOGIT_BIAS",
    "SIMILAR_MARGIN",
    "extend_ctc_vocab",
    "extend_encoder_folder",
    "similar_symbol",
]

NEW_LOGIT_BIAS = -50.0
SIMILAR_MARGIN = 25.0
INITS = ("zero", "similar")
_NAME_QUALIFIERS = {"SMALL", "CAPITAL", "FINAL", "LETTER"}


def similar_symbol(char: str, vocab: CharVocab) -> str | None:
    """An old symbol that ``char`` probably sounds like: its base letter when that is in ``vocab``
    ("ά" -> "α" only if "α" is there; "é" -> "e"), else the first letter of the word after LETTER
    in its Unicode name, lowercased ("θ" GREEK SMALL LETTER THETA -> "t", "ж" CYRILLIC SMALL LETTER
    ZHE -> "z"); None when neither is in ``vocab``."""
    base = unicodedata.normalize("NFD", char)[0]
    if base != char and base in vocab:
        return base
    words = unicodedata.name(char, "").split()
    if "LETTER" not in words:
        return None
    rest = [w for w in words[words.index("LETTER") + 1 :] if w not in _NAME_QUALIFIERS]
    if not rest:
        return None
    guess = rest[0][0].lower()
    return guess if guess in vocab else None


def extend_ctc_vocab(
    encoder: CTCEncoder,
    new_symbols: Iterable[str],
    new_logit_bias: float = NEW_LOGIT_BIAS,
    init: str = "zero",
    margin: float = SIMILAR_MARGIN,
) -> CTCEncoder:
    """A copy of ``encoder`` whose CTC head also outputs ``new_symbols`` (ids after the old ones).

    The original is left untouched; the copy keeps its dtype, device, training flag and
    ``requires_grad`` settings, and its ``config.output_dim`` and ``extra_symbols`` grow.

    Args:
        encoder: a :class:`CTCEncoder` whose head matches its vocabulary (``encoder.ctc_vocab()``).
        new_symbols: characters to add, in id order; none may be in the vocabulary already.
        new_logit_bias: bias of the new output rows (see the module doc for why -50).
        init: ``zero`` (weight 0, bias ``new_logit_bias``) or ``similar`` (a copy of the row of
            :func:`similar_symbol`, bias ``margin`` below it; ``zero`` where there is none).
        margin: how far below its source letter a ``similar`` row starts (>= 25 keeps decoding).

    Raises:
        ValueError: no new symbols, a symbol already in the vocabulary (named, with its id), or a
            symbol :class:`CharVocab` refuses (not one NFC-stable character, listed twice).
    """
    new = tuple(new_symbols)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not new:
        raise ValueError("no new symbols to add to the CTC vocabulary")
    old_vocab = encoder.ctc_vocab()
    if len(old_vocab) != encoder.config.output_dim:
        raise ValueError(
            f"the CTC head has {encoder.config.output_dim} outputs but its vocabulary "
            f"{len(old_vocab)} symbols: only a head that matches its vocabulary can be extended"
        )
    present = [f"{c!r} (id {old_vocab.char_to_id(c)})" for c in new if c in old_vocab]
    if present:
        raise ValueError(f"already in the CTC vocabulary: {', '.join(present)}")
    vocab = CharVocab(extra_symbols=old_vocab.extra_symbols + new)  # checks each new symbol

    old_size, size = len(old_vocab), len(vocab)
    out = copy.deepcopy(encoder)
    out.config = copy.deepcopy(encoder.config)
    out.config.output_dim = size
    out.extra_symbols = vocab.extra_symbols
    with torch.no_grad():
        head = _linear_like(encoder.out, encoder.out.in_features, size)  # (V', D)
        head.weight[:old_size] = encoder.out.weight
        head.weight[old_size:] = 0.0
        head.bias[:old_size] = encoder.out.bias
        head.bias[old_size:] = new_logit_bias
        sources = {}
        if init == "similar":
            for k, char in enumerate(new):
                source = similar_symbol(char, old_vocab)
                if source is not None:
                    i = old_vocab.char_to_id(source)
                    head.weight[old_size + k] = encoder.out.weight[i]
                    head.bias[old_size + k] = encoder.out.bias[i] - margin
                    sources[char] = source
        mid = _linear_like(encoder.out_mid, size, encoder.out_mid.out_features)  # (D, V')
        mid.weight[:, :old_size] = encoder.out_mid.weight
        mid.weight[:, old_size:] = 0.0
        mid.bias.copy_(encoder.out_mid.bias)
    out.out, out.out_mid = head, mid
    log.info("CTC vocabulary %d -> %d symbols: added %s", old_size, size, "".join(new))
    if sources:
        log.info(
            "new rows copied from (margin %.1f): %s",
            margin,
            " ".join(f"{k}<-{v}" for k, v in sources.items()),
        )
    return out


def _linear_like(layer: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A new ``nn.Linear`` on ``layer``'s device, dtype and ``requires_grad``."""
    new = nn.Linear(
        in_features, out_features, bias=True, device=layer.weight.device, dtype=layer.weight.dtype
    )
    new.requires_grad_(layer.weight.requires_grad)
    new.train(layer.training)
    return new


def extend_encoder_folder(
    model_path: str | Path,
    new_symbols: Iterable[str],
    out_dir: str | Path,
    skip_present: bool = False,
    new_logit_bias: float = NEW_LOGIT_BIAS,
    init: str = "zero",
    margin: float = SIMILAR_MARGIN,
) -> Path:
    """Extend the encoder of an export folder or stage-1 ``.ckpt`` and write it as a new folder.

    ``skip_present`` leaves out symbols that are in the vocabulary already (instead of an error);
    the symbol table written with the folder lists the old ids, then the new ones.
    """
    from granite_train.models.export import export_hf_encoder, load_encoder

    model_path, out_dir = Path(model_path), Path(out_dir)
    if out_dir.resolve() == model_path.resolve():
        raise ValueError(f"out must be a new folder, not the model itself ({model_path})")
    encoder = load_encoder(model_path)
    new = list(new_symbols)
    if skip_present:
        vocab = encoder.ctc_vocab()
        new = [c for c in dict.fromkeys(new) if c not in vocab]
    return export_hf_encoder(extend_ctc_vocab(encoder, new, new_logit_bias, init, margin), out_dir)
