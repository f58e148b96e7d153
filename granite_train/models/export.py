"""Load a stage-1 encoder from a training checkpoint or a transformers folder; export the latter.

Two on-disk forms of the same weights:

* a **training checkpoint** (``*.ckpt``, Lightning): ``ckpt["state_dict"]`` holds the
  LightningModule's state with the encoder's keys under ``encoder.`` (``encoder.input_linear.weight``,
  ...), and ``ckpt["encoder_config"]`` is ``GraniteSpeechEncoderConfig.to_dict()``;
* a **transformers folder**: ``config.json`` (``model_type: granite_speech_encoder``) and
  ``model.safetensors`` (or sharded ``model-*.safetensors`` with an index), exactly what
  ``transformers.GraniteSpeechCTCEncoder.save_pretrained`` writes and ``from_pretrained`` reads.

:class:`~granite_train.models.encoder.CTCEncoder` is key for key ``GraniteSpeechCTCEncoder``, so the
state dict moves between them unchanged, BatchNorm running statistics included. Checkpoints are read
with ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles.

Both forms carry the CTC **symbol table** (id -> character, :meth:`CharVocab.to_table`): the
folder as ``ctc_vocab.json`` beside ``config.json``, the checkpoint as ``ckpt["ctc_vocab"]``. It is
what lets a head with a new language's extra rows be decoded; without one (older exports) the
vocabulary is the base 348 symbols, and a head larger than that is refused.

A folder of the full ``granite_speech`` model (encoder + projector + LLM, e.g. the published
granite-4.0-1b-speech) is accepted by :func:`load_encoder` too: only its ``encoder.*`` tensors are
read, so its CTC head can be evaluated on its own.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from granite_train.models.checkpoints import (
    CTC_VOCAB_KEY,
    ENCODER_CONFIG_KEY,
    ENCODER_PREFIX,
    STATE_KEY,
    CheckpointError,
    load_checkpoint,
    prefixed_state,
    strip_compile_prefix,
)
from granite_train.models.encoder import AttnImpl, CTCEncoder, GraniteSpeechEncoderConfig
from granite_train.text.vocab import VOCAB_SIZE, CharVocab

log = logging.getLogger(__name__)

__all__ = [
    "CTC_VOCAB_NAME",
    "check_head_matches_vocab",
    "export_checkpoint",
    "export_hf_encoder",
    "load_encoder",
    "read_checkpoint",
    "read_ctc_vocab",
    "read_hf_folder",
    "write_ctc_vocab",
]

ENCODER_MODEL_TYPE = "granite_speech_encoder"
FULL_MODEL_TYPE = "granite_speech"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
CTC_VOCAB_NAME = "ctc_vocab.json"  # the CTC symbol table beside config.json
# key prefixes of the encoder inside a full granite_speech model (transformers v4 and v5 layouts)
FULL_MODEL_PREFIXES = ("encoder.", "model.encoder.")


class EncoderLoadError(CheckpointError):
    """A checkpoint or folder that does not hold a loadable encoder (the message says why)."""


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _config_from_dict(values: Mapping[str, Any], where: str) -> GraniteSpeechEncoderConfig:
    model_type = values.get("model_type", ENCODER_MODEL_TYPE)
    if model_type != ENCODER_MODEL_TYPE:
        raise EncoderLoadError(f"{where}: model_type is {model_type!r}, expected {ENCODER_MODEL_TYPE!r}")
    return GraniteSpeechEncoderConfig.from_dict(dict(values))


def read_checkpoint(path: str | Path) -> tuple[GraniteSpeechEncoderConfig, dict[str, torch.Tensor]]:
    """Encoder config and state dict (``encoder.`` prefix removed) of a training checkpoint."""
    config, state, _ = _read_checkpoint(path)
    return config, state


def _read_checkpoint(
    path: str | Path,
) -> tuple[GraniteSpeechEncoderConfig, dict[str, torch.Tensor], CharVocab | None]:
    """:func:`read_checkpoint` plus the checkpoint's symbol table (None in older checkpoints)."""
    path = Path(path)
    ckpt = load_checkpoint(path, error=EncoderLoadError)
    if not isinstance(ckpt, Mapping):
        raise EncoderLoadError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in (STATE_KEY, ENCODER_CONFIG_KEY) if k not in ckpt]
    if missing:
        raise EncoderLoadError(
            f"{path}: not a granite-train checkpoint, missing key(s) {missing} "
            f"(has {sorted(map(str, ckpt))[:10]})"
        )
    if not isinstance(ckpt[ENCODER_CONFIG_KEY], Mapping):
        raise EncoderLoadError(
            f"{path}: ckpt[{ENCODER_CONFIG_KEY!r}] must be a dict (GraniteSpeechEncoderConfig.to_dict())"
        )
    config = _config_from_dict(ckpt[ENCODER_CONFIG_KEY], f"{path}[{ENCODER_CONFIG_KEY!r}]")
    state = prefixed_state(ckpt[STATE_KEY], ENCODER_PREFIX)
    if not state:
        keys = sorted(ckpt[STATE_KEY])[:5]
        raise EncoderLoadError(
            f"{path}: no {ENCODER_PREFIX!r} keys in ckpt[{STATE_KEY!r}] (first keys: {keys})"
        )
    vocab = None
    if ckpt.get(CTC_VOCAB_KEY) is not None:
        vocab = _vocab_from_table(ckpt[CTC_VOCAB_KEY], f"{path}[{CTC_VOCAB_KEY!r}]")
    return config, state, vocab


def _vocab_from_table(table: Any, where: str) -> CharVocab:
    try:
        return CharVocab.from_table(table, where)
    except ValueError as err:
        raise EncoderLoadError(str(err)) from None


def read_ctc_vocab(path: str | Path) -> CharVocab | None:
    """The CTC symbol table stored with a model: ``ctc_vocab.json`` of a folder, or
    ``ckpt["ctc_vocab"]`` of a training checkpoint; None where there is none (older exports).
    """
    path = Path(path)
    if path.is_dir():
        file = path / CTC_VOCAB_NAME
        if not file.is_file():
            return None
        try:
            table = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EncoderLoadError(f"{file}: not valid JSON ({err})") from None
        return _vocab_from_table(table, str(file))
    return _read_checkpoint(path)[2]


def check_head_matches_vocab(output_dim: int, vocab: CharVocab | None, where: str) -> tuple[str, ...]:
    """The extra symbols of a head of ``output_dim`` outputs with this stored table (or none).

    Raises:
        EncoderLoadError: naming both sizes, where the table's length is not ``output_dim``, or
            where there is no table and the head is larger than the base vocabulary.
    """
    if vocab is not None:
        if len(vocab) != output_dim:
            raise EncoderLoadError(
                f"{where}: the CTC head has {output_dim} outputs (config output_dim) but its symbol "
                f"table {CTC_VOCAB_NAME} has {len(vocab)} symbols"
            )
        return vocab.extra_symbols
    if output_dim > VOCAB_SIZE:
        raise EncoderLoadError(
            f"{where}: the CTC head has {output_dim} outputs (config output_dim) but there is no symbol "
            f"table ({CTC_VOCAB_NAME}), and the default vocabulary has {VOCAB_SIZE} symbols: ids "
            f"{VOCAB_SIZE}..{output_dim - 1} could not be decoded. Copy the {CTC_VOCAB_NAME} of the "
            "model it was extended from (granite-train extend-vocab writes one)"
        )
    return ()


def _weight_files(folder: Path) -> list[Path]:
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    found = sorted(p.name for p in folder.iterdir())
    raise EncoderLoadError(f"{folder}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} (found {found[:10]})")


def read_hf_folder(folder: str | Path) -> tuple[GraniteSpeechEncoderConfig, dict[str, torch.Tensor]]:
    """Encoder config and state dict of a transformers folder (encoder alone, or full granite_speech)."""
    folder = Path(folder)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise EncoderLoadError(f"{folder}: no {CONFIG_NAME}; expected a transformers model folder")
    values = json.loads(config_file.read_text())
    if values.get("model_type") == FULL_MODEL_TYPE:
        if not isinstance(values.get("encoder_config"), Mapping):
            raise EncoderLoadError(f"{config_file}: granite_speech config without an encoder_config")
        config = _config_from_dict(values["encoder_config"], f"{config_file}[encoder_config]")
        prefixes = FULL_MODEL_PREFIXES
    else:
        config = _config_from_dict(values, str(config_file))
        prefixes = ("",)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        if not file.is_file():
            raise EncoderLoadError(f"{folder}: weight file {file.name} listed in the index is missing")
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not __iter__)
                prefix = next((p for p in prefixes if key.startswith(p)), None)
                if prefix is not None:
                    state[key[len(prefix) :]] = f.get_tensor(key)
    if not state:
        raise EncoderLoadError(f"{folder}: no encoder tensors found in its safetensors files")
    return config, state


def _load_strict(encoder: CTCEncoder, state: Mapping[str, torch.Tensor], where: str) -> None:
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
            )
        raise EncoderLoadError(f"{where}: encoder weights do not match its config: " + "; ".join(parts))
    encoder.load_state_dict(dict(state), strict=True)


def load_encoder(path: str | Path, attn_impl: AttnImpl = "sdpa") -> CTCEncoder:
    """A :class:`CTCEncoder` in eval mode from a transformers folder or a training ``.ckpt``.

    Args:
        path: a folder written by :func:`export_hf_encoder` / ``GraniteSpeechCTCEncoder.save_pretrained``
            (or a full ``granite_speech`` model folder: its encoder is read), or a Lightning checkpoint
            file in the format of the module docstring.
        attn_impl: attention kernel of the returned encoder.

    The stored symbol table (if any) becomes the encoder's ``extra_symbols``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        EncoderLoadError: (a ``ValueError``) the path holds no loadable encoder, or its head and its
            symbol table (or the default vocabulary, without one) differ in size; the message says why.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no encoder at {path}: expected a transformers folder or a .ckpt file")
    if path.is_dir():
        config, state = read_hf_folder(path)
        vocab = read_ctc_vocab(path)
    else:
        config, state, vocab = _read_checkpoint(path)
    extra = check_head_matches_vocab(config.output_dim, vocab, str(path))
    encoder = CTCEncoder(config, attn_impl=attn_impl, extra_symbols=extra)
    _load_strict(encoder, state, str(path))
    # weights keep their stored dtype (a bf16 export stays bf16)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        encoder.to(dtypes.pop())
    return encoder.eval()


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
_CARD = """\
---
library_name: transformers
pipeline_tag: automatic-speech-recognition
tags:
- granite-speech
- ctc
- conformer
---

# Granite-Speech CTC encoder

A stage-1 character-CTC conformer encoder of the Granite-Speech family, trained with
[granite-train](https://github.com/ibm-granite). It is the encoder of granite-4.0-1b-speech
(`GraniteSpeechCTCEncoder`) with its own CTC head, usable on its own as an ASR model.

| | |
|---|---|
| layers / hidden / heads | {num_layers} / {hidden_dim} / {num_heads} x {dim_head} |
| parameters | {num_params:,} |
| input | 160-dim stacked log-mel features at 50 Hz (`GraniteSpeechFeatureExtractor`, 16 kHz audio) |
| output | {output_dim} character CTC logits per frame |
| weights dtype | {dtype} |

## Vocabulary

{output_dim} symbols, blank = id 0; ids 1..255 are the Latin-1 code points U+0001..U+00FF; ids
256..347 are katakana U+30A1..U+30FC (Japanese is transcribed as its katakana reading){extra}.
`ctc_vocab.json` lists every symbol by id (`symbols[i]`, "" for the blank). Greedy decoding:
per-frame argmax, merge repeats, drop blanks, map ids to characters.

## Load with transformers

```python
import json
import torch
from transformers import GraniteSpeechCTCEncoder, GraniteSpeechFeatureExtractor

encoder = GraniteSpeechCTCEncoder.from_pretrained("path/to/this/folder").eval()
features = GraniteSpeechFeatureExtractor()(torch.as_tensor(waveform_16khz))["input_features"]  # (1, T, 160)
with torch.no_grad():
    hidden = encoder(features).last_hidden_state   # (B, T, {hidden_dim})
    logits = encoder.out(hidden)                   # (B, T, {output_dim}) CTC logits, blank = 0

symbols = json.load(open("path/to/this/folder/ctc_vocab.json", encoding="utf-8"))["symbols"]
ids = logits.argmax(-1)[0].tolist()
chars, prev = [], 0
for i in ids:
    if i != prev and i != 0:
        chars.append(symbols[i])
    prev = i
print("".join(chars))
```

`forward` returns the last hidden state only (the projector's input); the CTC logits are
`encoder.out(last_hidden_state)`. With granite-train: `granite_train.models.export.load_encoder(path)`
gives the training module (padding masks, SDPA), and `granite-train eval model=path` scores it.
"""


def export_hf_encoder(encoder: CTCEncoder, out_dir: str | Path) -> Path:
    """Write ``encoder`` as a transformers ``GraniteSpeechCTCEncoder`` folder; returns the folder.

    The folder holds ``config.json`` (``model_type: granite_speech_encoder``, ``architectures``,
    ``dtype``), ``model.safetensors`` (every persistent tensor of the state dict, BatchNorm running
    statistics and counters included, in the encoder's dtype), ``ctc_vocab.json`` (the symbol table
    of ``encoder.ctc_vocab()``, as long as ``output_dim``) and a ``README.md`` model card. A toy head
    smaller than the base vocabulary (tests) gets no symbol table.
    ``transformers.GraniteSpeechCTCEncoder.from_pretrained(out_dir)`` loads it with no missing or
    unexpected keys; :func:`load_encoder` reads it back.
    """
    from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechCTCEncoder

    out = Path(out_dir)
    config = copy.deepcopy(encoder.config)
    state = {
        strip_compile_prefix(k): v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()
    }
    # the reference's keys and shapes, checked before anything is written (meta: no memory, no init)
    with torch.device("meta"):
        reference = GraniteSpeechCTCEncoder(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or sorted(k for k in got if got[k] != expected[k])
        raise EncoderLoadError(f"encoder state dict does not match GraniteSpeechCTCEncoder (e.g. {diff[:3]})")

    vocab = _export_vocab(encoder)

    float_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    dtype = float_dtypes.pop() if len(float_dtypes) == 1 else torch.float32
    config.architectures = ["GraniteSpeechCTCEncoder"]
    config.dtype = dtype
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    config.save_pretrained(out)
    if vocab is not None:
        write_ctc_vocab(vocab, out)
    elif (out / CTC_VOCAB_NAME).exists():  # a stale table from an earlier export would mislead
        (out / CTC_VOCAB_NAME).unlink()
    num_params = sum(p.numel() for p in encoder.parameters())
    (out / "README.md").write_text(
        _CARD.format(
            num_layers=config.num_layers,
            hidden_dim=config.hidden_dim,
            num_heads=config.num_heads,
            dim_head=config.dim_head,
            output_dim=config.output_dim,
            extra=_card_extra(vocab),
            num_params=num_params,
            dtype=str(dtype).removeprefix("torch."),
        )
    )
    log.info("exported encoder (%d parameters) to %s", num_params, out)
    return out


def write_ctc_vocab(vocab: CharVocab, folder: str | Path) -> Path:
    """Write ``vocab``'s symbol table as ``folder/ctc_vocab.json`` (UTF-8, one symbol a line)."""
    table = vocab.to_table()
    symbols = table.pop("symbols")
    head = json.dumps(table, ensure_ascii=False)[:-1]
    lines = ",\n".join("    " + json.dumps(c, ensure_ascii=False) for c in symbols)
    path = Path(folder) / CTC_VOCAB_NAME
    path.write_text(f'{head}, "symbols": [\n{lines}\n]}}\n', encoding="utf-8")
    return path


def _export_vocab(encoder: CTCEncoder) -> CharVocab | None:
    """The symbol table to write with ``encoder``; None for a toy head below the base vocabulary."""
    extra = tuple(getattr(encoder, "extra_symbols", ()))
    output_dim = encoder.config.output_dim
    if not extra and output_dim < VOCAB_SIZE:
        log.info("CTC head of %d outputs (< %d): no symbol table written", output_dim, VOCAB_SIZE)
        return None
    vocab = CharVocab(extra_symbols=extra)
    if len(vocab) != output_dim:
        raise EncoderLoadError(
            f"the CTC head has {output_dim} outputs (config output_dim) but the encoder's vocabulary "
            f"has {len(vocab)} symbols ({VOCAB_SIZE} base + {len(extra)} extra)"
        )
    return vocab


def _card_extra(vocab: CharVocab | None) -> str:
    if vocab is None or not vocab.extra_symbols:
        return ""
    n = len(vocab.extra_symbols)
    return f"; ids {VOCAB_SIZE}..{VOCAB_SIZE + n - 1} were added for new languages: {''.join(vocab.extra_symbols)}"


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    """Export the encoder of a training checkpoint (or re-export a folder) as a transformers folder.

    ``out_dir`` defaults to ``<checkpoint without suffix>-hf`` next to the checkpoint.
    """
    checkpoint = Path(checkpoint)
    encoder = load_encoder(checkpoint)
    if out_dir is None:
        out_dir = checkpoint.with_name(checkpoint.stem + "-hf")
    return export_hf_encoder(encoder, out_dir)
