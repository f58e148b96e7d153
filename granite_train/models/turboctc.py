"""Granite Speech 5.0 TurboCTC: the model entry for ``transformers.GraniteSpeech5ForCTC``.

The released ``ibm-granite/granite-speech-5.0-470m-turboctc`` is a pure CTC conformer (16 layers,
hidden 1024, 128-frame attention blocks, self-conditioned CTC from the middle layer) over 16,384 BPE
units. This module does not re-implement it: the network, its loss and its folder format are the
pinned transformers' own, and everything here is derived from that code:

* **inputs** -- ``GraniteSpeech5FeatureExtractor``: 80-bin log-mel at 100 Hz (hop 160 samples of 16 kHz
  audio), each frame concatenated with its delta (160) and pairs of frames stacked (320 values at
  50 Hz), with an ``attention_mask`` of ``ceil((num_samples // 160) / 2)`` valid frames per clip;
* **output rate** -- the two subsampling blocks (``subsample_layers = [0, 1]``) halve the frame
  count each with a floor (``_get_subsampling_output_length``; the mask is halved by
  ``downsample_attention_mask``), so 50 Hz becomes 12.5 Hz: :func:`turboctc_frames`;
* **blank** -- ``config.pad_token_id`` (0) is the CTC blank *and* the label pad: ``ForCTCLoss``
  drops every 0 (and -100) from the labels, so a target never contains the blank, and
  :func:`build_bpe_tokenizer` puts ``<blank>`` at id 0 as the tokenizer's pad token;
* **loss** -- ``GraniteSpeech5ForCTC.forward(labels=...)`` computes ``F.ctc_loss`` over
  ``log_softmax(logits)`` in float32 with the encoder's output lengths, ``blank=0``,
  ``reduction=config.ctc_loss_reduction`` ("mean") and ``zero_infinity=config.ctc_zero_infinity``
  (True): :func:`ctc_loss_turbo` calls it;
* **folder** -- ``save_pretrained`` of the model (``config.json`` + ``model.safetensors``, the CTC
  head tied to the encoder's mid-layer head) and of a ``GraniteSpeech5Processor`` (feature-extractor
  config + tokenizer files, ``ParakeetTokenizer``, the class ``AutoTokenizer`` maps
  ``granite_speech5_ctc`` to): :func:`save_turboctc` / :func:`load_turboctc`.

It is one more entry behind the model builders (a tiny config for tests, a tokenizer, targets, a loss,
a folder, a decoder), not a fork of the 4.0 character-CTC encoder in :mod:`granite_train.models.encoder`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCTC,
    AutoProcessor,
    GraniteSpeech5CTCConfig,
    GraniteSpeech5EncoderConfig,
    GraniteSpeech5FeatureExtractor,
    GraniteSpeech5ForCTC,
    GraniteSpeech5Processor,
    ParakeetTokenizer,
    PreTrainedTokenizerBase,
)

__all__ = [
    "BLANK_ID",
    "BLANK_TOKEN",
    "RELEASED_CHECKPOINT",
    "TINY_SIZES",
    "TurboCTCBatch",
    "TurboCTCFolder",
    "build_bpe_tokenizer",
    "ctc_loss_turbo",
    "greedy_ctc_decode",
    "load_turboctc",
    "make_turboctc_batch",
    "pad_labels",
    "save_turboctc",
    "tiny_turboctc_config",
    "too_many_targets",
    "turboctc_frames",
    "turboctc_targets",
]

RELEASED_CHECKPOINT = "ibm-granite/granite-speech-5.0-470m-turboctc"
BLANK_ID = 0  # GraniteSpeech5CTCConfig.pad_token_id: the CTC blank and the label pad
BLANK_TOKEN = "<blank>"
UNK_TOKEN = "<unk>"

SAMPLE_RATE = 16000  # GraniteSpeech5FeatureExtractor.sampling_rate
HOP_LENGTH = 160  # GraniteSpeech5FeatureExtractor.hop_length: 100 Hz mel frames
FRAME_STACKING = GraniteSpeech5FeatureExtractor.frame_stacking  # 2: 50 Hz encoder input

# the sizes shrunk for tests; every other key keeps the class default, which is the released value
# (16 layers x hidden 1024 x ffn 4096 with a 16,384-row head and its self-conditioning inverse is
# the 470M parameters of the release)
TINY_SIZES: dict[str, int] = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
}

# keys that belong to the encoder sub-config (vocab_size goes to both: validate_architecture wants them equal)
_ENCODER_KEYS = frozenset(GraniteSpeech5EncoderConfig.__annotations__)


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------
def tiny_turboctc_config(**overrides: Any) -> GraniteSpeech5CTCConfig:
    """A ``GraniteSpeech5CTCConfig`` with the released architecture at :data:`TINY_SIZES`.

    ``overrides`` may name keys of either config: encoder keys (``hidden_size``, ``context_size``, ...)
    go into ``encoder_config``, ``vocab_size`` into both (the two must agree), the rest
    (``ctc_loss_reduction``, ``pad_token_id``, ...) into the CTC config. Nothing is downloaded.
    """
    encoder: dict[str, Any] = dict(TINY_SIZES)
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _ENCODER_KEYS:
            encoder[key] = value
        else:
            top[key] = value
    top["vocab_size"] = encoder["vocab_size"]
    return GraniteSpeech5CTCConfig(encoder_config=GraniteSpeech5EncoderConfig(**encoder), **top)


# --------------------------------------------------------------------------------------------------
# tokenizer and targets
# --------------------------------------------------------------------------------------------------
def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> ParakeetTokenizer:
    """Train a BPE tokenizer on ``texts`` with ``<blank>`` at id 0 (the CTC blank and pad).

    SentencePiece-style: words are split on spaces, which become a leading ``▁`` (``Metaspace``), so
    decoding restores them. ``<unk>`` is id 1 and stands for characters never seen in ``texts``.
    The result is a ``ParakeetTokenizer`` -- a ``PreTrainedTokenizerFast`` whose ``decode`` also
    collapses CTC repeats and drops the blank, and the class ``AutoTokenizer`` gives
    ``granite_speech5_ctc`` -- with ``pad_token == "<blank>"``. On a small corpus BPE may stop
    short of ``vocab_size``: size the model's head by ``len(tokenizer)``.
    """
    if vocab_size < 3:
        raise ValueError(
            f"vocab_size must leave room for {BLANK_TOKEN}, {UNK_TOKEN} and a symbol: {vocab_size}"
        )
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BLANK_TOKEN, UNK_TOKEN], show_progress=False
    )
    backend.train_from_iterator(list(texts), trainer)
    if backend.token_to_id(BLANK_TOKEN) != BLANK_ID:
        raise RuntimeError(f"{BLANK_TOKEN} did not land at id {BLANK_ID}")  # BpeTrainer adds specials first
    return ParakeetTokenizer(tokenizer_object=backend, pad_token=BLANK_TOKEN, unk_token=UNK_TOKEN)


def turboctc_targets(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The CTC target of ``text``: the tokenizer's own BPE ids, no special tokens added.

    A target never holds the blank (``ForCTCLoss`` would silently drop it), so a text that spells the
    blank token is refused.
    """
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    blank = _blank_id(tokenizer)
    if blank in ids:
        raise ValueError(f"target of {text!r} contains the CTC blank id {blank}")
    return ids


def turboctc_frames(num_samples: int, num_subsample_layers: int = 2) -> int:
    """Output frames (12.5 Hz) of ``GraniteSpeech5ForCTC`` for ``num_samples`` of 16 kHz audio.

    The feature extractor's mask holds ``ceil((num_samples // 160) / 2)`` valid frames; each of the
    ``len(config.encoder_config.subsample_layers)`` subsampling blocks floors that by 2
    (``GraniteSpeech5PreTrainedModel._get_subsampling_output_length``).

    The model itself cannot run a batch padded to fewer than 4 input frames (1,120 samples): its
    pooling ``unfold`` fails on a 1-frame sequence in the second subsampling block.
    """
    mel_frames = num_samples // HOP_LENGTH
    frames = -(-mel_frames // FRAME_STACKING)
    for _ in range(num_subsample_layers):
        frames //= 2
    return frames


def too_many_targets(num_targets: int, num_samples: int) -> bool:
    """The notebook's drop rule: more target tokens than output frames.

    (CTC also needs a blank between repeated tokens, so a target this rule keeps can still be
    infeasible; the model's ``zero_infinity=True`` zeroes such a loss instead of returning inf.)
    """
    return num_targets > turboctc_frames(num_samples)


def _blank_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    return BLANK_ID if pad is None else int(pad)


# --------------------------------------------------------------------------------------------------
# batches and loss
# --------------------------------------------------------------------------------------------------
@dataclass
class TurboCTCBatch:
    """Model inputs for a list of clips, with the utterances the drop rule removed.

    ``labels`` are right-padded with the blank id (0), as the released notebook does; ``kept`` are
    the indices of the input clips in the batch, ``dropped`` how many were left out.
    """

    input_features: torch.Tensor  # (B, T, 320)
    attention_mask: torch.Tensor  # (B, T) 1 = valid 50 Hz input frame
    labels: torch.Tensor  # (B, U) BPE ids, blank-padded
    kept: list[int] = field(default_factory=list)
    dropped: int = 0

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_features": self.input_features,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
        }


def make_turboctc_batch(
    feature_extractor: GraniteSpeech5FeatureExtractor,
    tokenizer: PreTrainedTokenizerBase,
    audios: Sequence[torch.Tensor | np.ndarray],
    texts: Sequence[str],
) -> TurboCTCBatch:
    """Featurize 16 kHz mono clips and tokenize their texts, dropping clips whose target is longer
    than their output frames (:func:`too_many_targets`). Raises ValueError when none is left.
    """
    if len(audios) != len(texts):
        raise ValueError(f"{len(audios)} clips but {len(texts)} texts")
    kept: list[int] = []
    targets: list[list[int]] = []
    for index, (audio, text) in enumerate(zip(audios, texts)):
        ids = turboctc_targets(tokenizer, text)
        if not too_many_targets(len(ids), len(audio)):
            kept.append(index)
            targets.append(ids)
    dropped = len(audios) - len(kept)
    if not kept:
        raise ValueError(f"all {dropped} utterances have more targets than output frames")
    clips = [np.asarray(audio, dtype=np.float32) for audio in (audios[i] for i in kept)]
    features = feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    return TurboCTCBatch(
        input_features=features["input_features"],
        attention_mask=features["attention_mask"],
        labels=pad_labels(targets, _blank_id(tokenizer)),
        kept=kept,
        dropped=dropped,
    )


def pad_labels(targets: Sequence[Sequence[int]], blank: int = BLANK_ID) -> torch.Tensor:
    """(B, U) label rows right-padded with the blank (``ForCTCLoss`` drops it), at least one column."""
    labels = torch.full((len(targets), max([1, *map(len, targets)])), blank, dtype=torch.long)
    for row, ids in enumerate(targets):
        labels[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    return labels


def ctc_loss_turbo(
    model: GraniteSpeech5ForCTC, batch: TurboCTCBatch | dict[str, torch.Tensor]
) -> torch.Tensor:
    """The training loss exactly as ``GraniteSpeech5ForCTC`` computes it: ``model(..., labels=...)``.

    The model needs the ``attention_mask`` to know each clip's output length (without one its
    forward cannot compute a loss), so an all-ones mask is supplied when the batch has none.
    """
    inputs = batch.model_inputs() if isinstance(batch, TurboCTCBatch) else dict(batch)
    features = inputs["input_features"]
    if inputs.get("attention_mask") is None:
        inputs["attention_mask"] = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return model(**inputs).loss


# --------------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------------
class TurboCTCFolder(NamedTuple):
    model: GraniteSpeech5ForCTC
    processor: GraniteSpeech5Processor


def save_turboctc(
    model: GraniteSpeech5ForCTC,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    feature_extractor: GraniteSpeech5FeatureExtractor | None = None,
) -> Path:
    """Write the released layout: ``config.json`` + ``model.safetensors`` (``save_pretrained``) and
    the processor (``processor_config.json`` / feature-extractor config + tokenizer files).

    The feature extractor defaults to the released one for ``encoder_config.num_mel_bins``. The
    tokenizer must fit the head and use the model's blank as its pad token.
    """
    config = model.config
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, the CTC head only {config.vocab_size}")
    if _blank_id(tokenizer) != config.pad_token_id:
        raise ValueError(f"tokenizer pad id {tokenizer.pad_token_id} is not the blank {config.pad_token_id}")
    if feature_extractor is None:
        feature_extractor = GraniteSpeech5FeatureExtractor(num_mel_bins=config.encoder_config.num_mel_bins)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GraniteSpeech5Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    return out


def load_turboctc(folder: str | Path) -> TurboCTCFolder:
    """Model (eval mode) and processor of a TurboCTC folder, through the plain transformers Auto classes."""
    model = AutoModelForCTC.from_pretrained(folder)
    if not isinstance(model, GraniteSpeech5ForCTC):
        raise ValueError(f"{folder}: holds a {type(model).__name__}, not GraniteSpeech5ForCTC")
    return TurboCTCFolder(model=model.eval(), processor=AutoProcessor.from_pretrained(folder))


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------
def greedy_ctc_decode(
    logits: torch.Tensor, lengths: torch.Tensor | Sequence[int], tokenizer: PreTrainedTokenizerBase
) -> list[str]:
    """Best-path decoding: argmax per frame over the first ``lengths[b]`` frames, collapse repeats,
    drop blanks, detokenize the BPE ids (special tokens skipped).
    """
    blank = _blank_id(tokenizer)
    best = logits.argmax(dim=-1).tolist()
    texts = []
    for path, length in zip(best, [int(n) for n in lengths]):
        ids = [token for token, _ in itertools.groupby(path[:length]) if token != blank]
        # group_tokens=False: ParakeetTokenizer would collapse again and merge "a <blank> a"
        texts.append(tokenizer.decode(ids, skip_special_tokens=True, group_tokens=False))
    return texts
