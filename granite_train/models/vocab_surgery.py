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
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from granite_train.models.encoder import CTCEncoder
from granite_train.text.vocab import CharVocab

log = logging.getLogger(__name__)

__all__ = ["NEW_LOGIT_BIAS", "extend_ctc_vocab", "extend_encoder_folder"]

NEW_LOGIT_BIAS = -50.0


def extend_ctc_vocab(
    encoder: CTCEncoder, new_symbols: Iterable[str], new_logit_bias: float = NEW_LOGIT_BIAS
) -> CTCEncoder:
    """A copy of ``encoder`` whose CTC head also outputs ``new_symbols`` (ids after the old ones).

    The original is left untouched; the copy keeps its dtype, device, training flag and
    ``requires_grad`` settings, and its ``config.output_dim`` and ``extra_symbols`` grow.

    Args:
        encoder: a :class:`CTCEncoder` whose head matches its vocabulary (``encoder.ctc_vocab()``).
        new_symbols: characters to add, in id order; none may be in the vocabulary already.
        new_logit_bias: bias of the new output rows (see the module doc for why -50).

    Raises:
        ValueError: no new symbols, a symbol already in the vocabulary (named, with its id), or a
            symbol :class:`CharVocab` refuses (not one NFC-stable character, listed twice).
    """
    new = tuple(new_symbols)
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
        mid = _linear_like(encoder.out_mid, size, encoder.out_mid.out_features)  # (D, V')
        mid.weight[:, :old_size] = encoder.out_mid.weight
        mid.weight[:, old_size:] = 0.0
        mid.bias.copy_(encoder.out_mid.bias)
    out.out, out.out_mid = head, mid
    log.info("CTC vocabulary %d -> %d symbols: added %s", old_size, size, "".join(new))
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
    return export_hf_encoder(extend_ctc_vocab(encoder, new, new_logit_bias), out_dir)
