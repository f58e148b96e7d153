"""Stage-2 export: a :class:`SpeechLLM` (or a stage-2 training checkpoint) as a transformers folder.

The folder is what ``AutoModelForSpeechSeq2Seq.from_pretrained(dir)`` and
``AutoProcessor.from_pretrained(dir)`` read, with nothing from granite-train installed:

* ``config.json`` (``GraniteSpeechConfig``, ``architectures: [GraniteSpeechForConditionalGeneration]``,
  ``has_lora_adapter``), ``generation_config.json`` and ``model.safetensors`` written by transformers'
  own ``save_pretrained``, its tensors then renamed to the on-disk layout of the released checkpoints
  (``encoder.*``, ``projector.*``, ``language_model.model.*``): the names vLLM's loader knows, and
  transformers 5 maps back when loading;
* the tokenizer files, ``processor_config.json`` (``GraniteSpeechProcessor`` with its
  ``GraniteSpeechFeatureExtractor``) and ``chat_template.jinja``;
* ``README.md``, a short model card.

LoRA, two layouts:

* ``merge_lora=True``: ``W + B A * alpha / r`` folded into the LLM weights; ``has_lora_adapter: false``;
* ``merge_lora=False``: the granite-speech-3.3 layout: the *base* weights in ``model.safetensors`` plus
  ``adapter_config.json`` and ``adapter_model.safetensors`` in the same folder, ``has_lora_adapter:
  true``. transformers (``maybe_load_adapters``) loads a local folder that holds both a ``config.json``
  and an ``adapter_config.json`` as base + adapter from that folder, whatever the adapter config's
  ``base_model_name_or_path`` says, so the folder can be moved or copied. For a hub repository that
  field *is* followed: set it to the repository id (``base_model_name_or_path=``) before uploading.
  ``GraniteSpeechForConditionalGeneration.generate`` switches the adapter on only when
  ``input_features`` are passed (text-only prompts run the base LLM), as for the released 3.3 models.

A stage-2 Lightning checkpoint (:func:`export_speech_checkpoint`) holds ``state_dict`` with the
SpeechLLM under ``model.`` (``model.hf.<transformers key>``, LoRA keys as the PEFT integration names
them) and ``ckpt["speech_llm"] = {"config": GraniteSpeechConfig.to_dict(), "lora": LoraConfig as a
plain dict or None}`` (:func:`granite_train.models.checkpoints.speech_llm_metadata` builds it). The tokenizer is not in the checkpoint:
the training run writes it with :func:`save_processor` to ``<output_dir>/processor``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import GraniteSpeechConfig, GraniteSpeechForConditionalGeneration

from granite_train.models.checkpoints import (
    ENCODER_CONFIG_KEY,
    SPEECH_LLM_KEY,
    SPEECH_LLM_PREFIX,
    STATE_KEY,
    CheckpointError,
    checkpoint_stage,
    load_checkpoint,
    prefixed_state,
)
from granite_train.models.speech_llm import (
    SpeechLLM,
    load_tokenizer,
    speech_config_from_dict,
    speech_model_class,
)

log = logging.getLogger(__name__)

__all__ = [
    "SpeechCheckpoint",
    "SpeechExportError",
    "build_processor",
    "checkpoint_stage",
    "export_lora_adapter",
    "export_speech_checkpoint",
    "export_speech_llm",
    "only_lora_trained",
    "read_speech_checkpoint",
    "save_processor",
    "speech_llm_from_checkpoint",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# files of an earlier export that would change what a re-export into the same folder loads as
_STALE_PATTERNS = (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    "model.safetensors.index.json",
    "model-*.safetensors",
)
# the released (transformers 4.x) key layout of the adapter, as in granite-speech-3.3
_RELEASED_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.encoder.", "encoder."),
    ("model.projector.", "projector."),
    ("lm_head.", "language_model.lm_head."),
)


# vLLM's --max-lora-rank takes only these (vllm/config/lora.py MaxLoRARanks, 0.32)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """The ``--max-lora-rank`` vLLM accepts for an adapter of ``rank``: the next allowed value up."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise SpeechExportError(
        f"LoRA rank {rank} is above vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}"
    )


class SpeechExportError(CheckpointError):
    """A checkpoint, folder or model that cannot be exported (the message says why)."""


# --------------------------------------------------------------------------------------------------
# processor
# --------------------------------------------------------------------------------------------------
def build_processor(tokenizer, window_size: int = 15, downsample_rate: int = 5):
    """transformers' ``GraniteSpeechProcessor`` for ``tokenizer``: features + ``<|audio|>`` expansion.

    The feature extractor's window / downsample rate must be the projector's: they set how many
    ``<|audio|>`` copies the processor writes per utterance.
    """
    from transformers import GraniteSpeechFeatureExtractor, GraniteSpeechProcessor

    extractor = GraniteSpeechFeatureExtractor(
        projector_window_size=int(window_size), projector_downsample_rate=int(downsample_rate)
    )
    return GraniteSpeechProcessor(extractor, tokenizer, chat_template=tokenizer.chat_template)


def save_processor(speech_or_tokenizer: SpeechLLM | Any, out_dir: str | Path) -> Path:
    """Write tokenizer + feature extractor + chat template (``AutoProcessor.from_pretrained`` reads it).

    A :class:`SpeechLLM` gives its tokenizer and the projector's window / downsample rate; a bare
    tokenizer gets the published 15 / 5.
    """
    if isinstance(speech_or_tokenizer, SpeechLLM):
        config = speech_or_tokenizer.config
        processor = build_processor(speech_or_tokenizer.tokenizer, config.window_size, config.downsample_rate)
    else:
        processor = build_processor(speech_or_tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(str(out))
    return out


# --------------------------------------------------------------------------------------------------
# state dicts
# --------------------------------------------------------------------------------------------------
def _is_lora_key(key: str) -> bool:
    return ".lora_" in key


def _lora_layers(hf: torch.nn.Module) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in hf.named_modules() if isinstance(module, LoraLayer)}


def _adapter_name(hf: GraniteSpeechForConditionalGeneration) -> str:
    names = list(getattr(hf, "peft_config", {}) or {})
    if len(names) != 1:
        raise SpeechExportError(f"expected exactly one LoRA adapter on the model, found {names}")
    return names[0]


def _base_state(hf: GraniteSpeechForConditionalGeneration, merge: bool) -> dict[str, torch.Tensor]:
    """``hf``'s weights under transformers' own key names: LoRA dropped, or merged when ``merge``.

    Merging here (new tensors for the LoRA targets only) leaves the training model untouched and
    copies nothing else.
    """
    state = {
        key.replace("_orig_mod.", "").replace(".base_layer.", "."): value.detach()
        for key, value in hf.state_dict().items()
        if not _is_lora_key(key)
    }
    if not merge:
        return state
    adapter = _adapter_name(hf)
    with torch.no_grad():
        for name, layer in _lora_layers(hf).items():
            if adapter not in layer.lora_A:
                continue
            if layer.use_dora.get(adapter, False) or getattr(layer, "lora_bias", {}).get(adapter, False):
                raise SpeechExportError(f"{name}: merging DoRA / LoRA-bias adapters is not supported")
            key = f"{name}.weight".replace("_orig_mod.", "")
            weight = state[key]
            delta = layer.get_delta_weight(adapter).to(weight.device, torch.float32)
            state[key] = (weight.float() + delta).to(weight.dtype)
    return state


def _released_key(key: str) -> str:
    for new, old in _RELEASED_PREFIXES:
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def _adapter_state(hf: GraniteSpeechForConditionalGeneration, dtype: torch.dtype | None) -> dict:
    """The adapter tensors as PEFT saves them, in the released 3.3 key layout.

    ``base_model.model.language_model.model.layers.N...q_proj.lora_A.weight``: what transformers 4.x
    wrote for granite-speech-3.3; transformers 5 maps it onto its own layout when loading.
    """
    adapter = _adapter_name(hf)
    state = hf.get_adapter_state_dict(adapter_name=adapter)
    return {
        f"base_model.model.{_released_key(k.replace('_orig_mod.', ''))}": (
            v.detach()
            .to("cpu", dtype if dtype is not None and v.is_floating_point() else v.dtype)
            .contiguous()
        )
        for k, v in state.items()
    }


def _llm_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype the exported model (one ``dtype`` in its config) is built in: the LLM's."""
    embed = state.get("model.language_model.embed_tokens.weight")
    if embed is not None:
        return embed.dtype
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise SpeechExportError(f"unknown floating-point dtype {dtype!r} (e.g. float32, bfloat16)")
    return value


def _reference_model(
    config: GraniteSpeechConfig, state: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> GraniteSpeechForConditionalGeneration:
    """transformers' own ``GraniteSpeechForConditionalGeneration`` holding ``state`` (on CPU).

    Loading through ``from_pretrained`` checks the keys and shapes against transformers' class (an
    export that needs our code to load fails here, before anything is written), builds the model
    without a random initialisation, and restores the non-persistent buffers (rotary frequencies).
    """
    cls = speech_model_class(config)  # 4.0 / 3.3, or 4.1-plus
    model, info = cls.from_pretrained(
        None, config=copy.deepcopy(config), state_dict=dict(state), dtype=dtype, output_loading_info=True
    )
    problems = {
        k: sorted(info.get(k) or ())[:3] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if any(problems.values()):
        raise SpeechExportError(f"weights do not match transformers' {cls.__name__}: {problems}")
    model.name_or_path = ""  # not the string "None": PEFT would look that up on the hub
    return model.eval()


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------
_CARD = """\
---
library_name: transformers
pipeline_tag: automatic-speech-recognition
tags:
- granite-speech
- speech-llm
---

# Granite-Speech model

A Granite-Speech speech LLM trained with granite-train: a CTC conformer encoder, a windowed
Q-Former projector ({audio_rate} audio tokens per second) and a Granite LLM, as
`GraniteSpeechForConditionalGeneration`.

| | |
|---|---|
| parameters | {num_params:,} |
| encoder | {enc_layers} conformer layers x {enc_hidden} |
| projector | Q-Former, window {window_size} frames -> {queries} queries |
| LLM | {llm_type}, {llm_layers} layers x {llm_hidden}, vocabulary {vocab_size} |
| LoRA | {lora} |
| weights dtype | {dtype} |

## Use with transformers

```python
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

processor = AutoProcessor.from_pretrained("path/to/this/folder")
model = AutoModelForSpeechSeq2Seq.from_pretrained("path/to/this/folder").eval()
chat = [{{"role": "user", "content": "<|audio|>can you transcribe the speech into a written format?"}}]
prompt = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
inputs = processor(prompt, waveform_16khz, return_tensors="pt")  # 1-D float tensor, 16 kHz mono
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=200, do_sample=False, num_beams=1)
print(processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Serve with vLLM

```bash
vllm serve path/to/this/folder
curl http://localhost:8000/v1/audio/transcriptions -F model=path/to/this/folder -F file=@audio.wav
```

On CPU add `--dtype float32 --kv-cache-memory-bytes 2147483648` (vLLM reserves 92% of the RAM for
its cache by default and will not start when less is free). The speech LLM's `head_dim` must be
one that vLLM's attention supports (32, 64, 80, 96, 112, 128, ...). `benchmarks/vllm_serving.py`
in granite-train checks a folder: vLLM's greedy transcripts against transformers', and this route.

The processor writes one `<|audio|>` per audio token (`ceil(((n_samples // 160 + 1) // 2) / {window_size}) *
{queries}`); the prompt holds a single `<|audio|>` where the audio goes.
{adapter_note}"""

_ADAPTER_NOTE = """
The LoRA adapter is kept apart from the LLM weights (`adapter_config.json` +
`adapter_model.safetensors`, the granite-speech-3.3 layout): `from_pretrained` on this folder loads
both (needs `peft`), and `generate` enables the adapter only when audio (`input_features`) is passed.
Uploaded to the hub, set `base_model_name_or_path` in `adapter_config.json` to the repository id.
"""


def _write_card(
    out: Path, model: GraniteSpeechForConditionalGeneration, keep_adapter: bool, lora: Any | None
) -> None:
    config = model.config
    text, enc = config.text_config, config.encoder_config
    queries = config.window_size // config.downsample_rate
    if lora is None:
        lora_text = "none"
    else:
        targets = ", ".join(sorted(lora.target_modules))
        how = "kept as a separate adapter" if keep_adapter else "merged into the LLM weights"
        lora_text = f"rank {lora.r}, alpha {lora.lora_alpha} on {targets}; {how}"
    (out / "README.md").write_text(
        _CARD.format(
            audio_rate=50 * queries / config.window_size,
            num_params=sum(p.numel() for p in model.parameters()),
            enc_layers=enc.num_layers,
            enc_hidden=enc.hidden_dim,
            window_size=config.window_size,
            queries=queries,
            llm_type=text.model_type,
            llm_layers=text.num_hidden_layers,
            llm_hidden=text.hidden_size,
            vocab_size=text.vocab_size,
            lora=lora_text,
            dtype=str(model.dtype).removeprefix("torch."),
            adapter_note=_ADAPTER_NOTE if keep_adapter else "",
        )
    )


def _add_released_keys(config_file: Path) -> None:
    """Write the keys the released ``config.json`` files carry that transformers 5 renamed.

    granite-4.0-1b-speech's config was written by transformers 4.x: ``torch_dtype`` (5: ``dtype``)
    in every section, ``rope_theta`` / ``rope_scaling`` in the text config (5:
    ``rope_parameters``) and the Q-Former's ``position_embedding_type``. Readers on transformers 4
    (vLLM's pinned versions among them) look for those names; transformers 5 reads either.
    """
    config = json.loads(config_file.read_text())
    dtype = config.get("dtype") or config.get("torch_dtype")
    for section in (
        config,
        *(config.get(k) or {} for k in ("encoder_config", "projector_config", "text_config")),
    ):
        if dtype is not None:
            section.setdefault("torch_dtype", section.get("dtype") or dtype)
    text = config.get("text_config") or {}
    rope = text.get("rope_parameters") or {}
    if "rope_theta" in rope:
        text.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        text.setdefault("rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling)
    (config.get("projector_config") or {}).setdefault("position_embedding_type", "absolute")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_released_names(out: Path) -> None:
    """Rename the tensors transformers 5 just wrote (``model.encoder.*``, ``model.projector.*``,
    ``model.language_model.*``, ``lm_head.*``) to the released checkpoints' names.

    vLLM's ``granite_speech`` loader knows only the released names ("There is no module or parameter
    named 'model'" otherwise); transformers 5 maps them back when loading (its ``granite_speech``
    conversion mapping), so one folder serves both. Sharded saves keep their shards and index.
    """
    from safetensors.torch import load_file

    index_file = out / "model.safetensors.index.json"
    for file in sorted(out.glob("model*.safetensors")):
        tensors = load_file(str(file))  # may be memory-mapped from `file`: never write over it in place
        renamed = {_released_key(k): v for k, v in tensors.items()}
        if renamed.keys() != tensors.keys():
            tmp = file.with_name(f".{file.name}.tmp")
            save_file(renamed, str(tmp), metadata={"format": "pt"})
            del tensors, renamed
            os.replace(tmp, file)  # a new inode: a mapping of the old file stays valid
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        index["weight_map"] = {_released_key(k): v for k, v in index["weight_map"].items()}
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _remove_stale(out: Path) -> None:
    for pattern in _STALE_PATTERNS:
        for path in out.glob(pattern):
            path.unlink()


def _save_adapter(
    hf: GraniteSpeechForConditionalGeneration,
    out: Path,
    dtype: torch.dtype | None,
    base_model_name_or_path: str,
) -> None:
    config = copy.deepcopy(hf.peft_config[_adapter_name(hf)])
    config.base_model_name_or_path = base_model_name_or_path
    config.inference_mode = True
    config.save_pretrained(str(out))
    save_file(_adapter_state(hf, dtype), str(out / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})


def export_speech_llm(
    speech: SpeechLLM,
    out_dir: str | Path,
    merge_lora: bool = True,
    dtype: torch.dtype | str | None = None,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write ``speech`` as a transformers GraniteSpeech folder (module docstring); returns the folder.

    Args:
        speech: the model; it is not modified (LoRA is merged into new tensors, not in place).
        out_dir: folder to write (created; files of an earlier export there are replaced).
        merge_lora: fold the LoRA adapter into the LLM weights; ``False`` keeps it as a separate
            adapter next to the base weights (``has_lora_adapter: true``). No effect without LoRA.
        dtype: weights dtype of the export (``"bfloat16"``, ...); default: the LLM's current dtype.
        base_model_name_or_path: written into ``adapter_config.json`` (kept adapter only); default
            the folder's name. Only a hub upload reads it: set it to the repository id.
    """
    out = Path(out_dir)
    hf = speech.hf
    keep_adapter = speech.has_lora and not merge_lora
    state = _base_state(hf, merge=speech.has_lora and merge_lora)
    target_dtype = _as_dtype(dtype) or _llm_dtype(state)
    config = copy.deepcopy(speech.config)
    config.has_lora_adapter = keep_adapter
    model = _reference_model(config, state, target_dtype)
    model.generation_config = copy.deepcopy(hf.generation_config)
    tokenizer = speech.tokenizer
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(model.generation_config, field, None) is None:
            setattr(model.generation_config, field, getattr(tokenizer, field))

    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    model.save_pretrained(str(out))
    _write_released_names(out)
    _add_released_keys(out / "config.json")
    lora = hf.peft_config[_adapter_name(hf)] if speech.has_lora else None
    if keep_adapter:
        _save_adapter(hf, out, _as_dtype(dtype), base_model_name_or_path or out.resolve().name)
    save_processor(speech, out)
    if speech.encoder.extra_symbols:  # a new language's CTC symbols: the table travels with the model
        from granite_train.models.export import write_ctc_vocab

        write_ctc_vocab(speech.encoder.ctc_vocab(), out)
    _write_card(out, model, keep_adapter, lora)
    log.info(
        "exported speech LLM (%s) to %s",
        "LoRA kept as adapter" if keep_adapter else "LoRA merged" if lora is not None else "no LoRA",
        out,
    )
    return out


_VLLM_CARD = """\
# LoRA adapter for {base}

A peft LoRA adapter (rank {rank}, alpha {alpha} on {targets}) on the LLM of the GraniteSpeech
model `{base}`, which stays as it is. Only the LLM changed: the encoder and the projector are the
base model's.

Serve with vLLM (its `granite_speech` serves a LoRA on the LLM):

```bash
vllm serve {base} --enable-lora --max-lora-rank {max_rank} --lora-modules {name}=<path to this folder>
curl http://localhost:8000/v1/audio/transcriptions -F model={name} -F file=@audio.wav
```

(`--max-lora-rank` takes 1, 8, 16, 32, 64, ...: the next one up from the rank.) Offline:
`LLM(model="{base}", enable_lora=True, max_lora_rank={max_rank}).generate(..., lora_request=LoRARequest("{name}", 1,
"<path to this folder>"))`. The serving check `benchmarks/vllm_serving.py --lora` compares what vLLM says
with transformers + peft. With transformers (needs `peft`):
`model = AutoModelForSpeechSeq2Seq.from_pretrained("{base}"); model.load_adapter("<this folder>")`.
"""


def export_lora_adapter(
    speech: SpeechLLM,
    out_dir: str | Path,
    base_model_name_or_path: str,
    dtype: torch.dtype | str | None = None,
    served_name: str = "finetuned",
) -> Path:
    """Write ``speech``'s LoRA alone as a peft adapter folder, to serve on top of its base model.

    The keys are the released granite-speech-3.3 adapter's
    (``base_model.model.language_model.model.layers.N.self_attn.q_proj.lora_A.weight``): what vLLM's
    ``granite_speech`` loads with ``--enable-lora`` and transformers' ``load_adapter`` reads. Only
    valid when nothing but the LoRA trained: the server keeps the base model's encoder and
    projector (see :func:`only_lora_trained`).
    """
    if not speech.has_lora:
        raise SpeechExportError("the model has no LoRA adapter to export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_adapter(speech.hf, out, _as_dtype(dtype), str(base_model_name_or_path))
    lora = speech.hf.peft_config[_adapter_name(speech.hf)]
    (out / "README.md").write_text(
        _VLLM_CARD.format(
            base=base_model_name_or_path,
            rank=lora.r,
            max_rank=vllm_max_lora_rank(lora.r),
            alpha=lora.lora_alpha,
            targets=", ".join(sorted(lora.target_modules)),
            name=served_name,
        )
    )
    log.info("exported the LoRA adapter alone to %s (base: %s)", out, base_model_name_or_path)
    return out


def only_lora_trained(speech: SpeechLLM) -> str | None:
    """None when only the LoRA trained (an adapter on the base model serves it); else why not."""
    trained = [part for part in ("encoder", "projector", "llm") if part not in speech.frozen]
    if not speech.has_lora:
        return "the model has no LoRA adapter"
    if trained:
        return (
            f"this run trained the {' and the '.join(trained)} as well as the LoRA; vLLM serves a LoRA on "
            "the LLM only, so serve the merged export instead"
        )
    return None


# --------------------------------------------------------------------------------------------------
# stage-2 training checkpoints
# --------------------------------------------------------------------------------------------------
@dataclass
class SpeechCheckpoint:
    config: dict[str, Any]  # GraniteSpeechConfig.to_dict()
    lora: dict[str, Any] | None  # LoraConfig fields
    state: dict[str, torch.Tensor]  # SpeechLLM.hf state dict (LoRA keys included)


def read_speech_checkpoint(path: str | Path) -> SpeechCheckpoint:
    """Config, LoRA settings and SpeechLLM state dict (``model.hf.`` removed) of a stage-2 checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    ckpt = load_checkpoint(path, error=SpeechExportError)
    if not isinstance(ckpt, Mapping):
        raise SpeechExportError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    if SPEECH_LLM_KEY not in ckpt:
        if ENCODER_CONFIG_KEY in ckpt:
            raise SpeechExportError(
                f"{path}: a stage-1 (CTC encoder) checkpoint, not a speech LLM; export it with "
                "granite_train.models.export.export_checkpoint (`granite-train export` picks it itself)"
            )
        raise SpeechExportError(
            f"{path}: not a stage-2 checkpoint, no ckpt[{SPEECH_LLM_KEY!r}] "
            f"(has {sorted(map(str, ckpt))[:10]})"
        )
    meta = ckpt[SPEECH_LLM_KEY]
    if not isinstance(meta, Mapping) or not isinstance(meta.get("config"), Mapping):
        raise SpeechExportError(
            f"{path}: ckpt[{SPEECH_LLM_KEY!r}] must be {{'config': dict, 'lora': dict | None}}"
        )
    lora = meta.get("lora")
    if lora is not None and not isinstance(lora, Mapping):
        raise SpeechExportError(f"{path}: ckpt[{SPEECH_LLM_KEY!r}]['lora'] must be a dict or None")
    raw = ckpt.get(STATE_KEY)
    if not isinstance(raw, Mapping):
        raise SpeechExportError(f"{path}: no ckpt[{STATE_KEY!r}] dict")
    state = prefixed_state(raw, SPEECH_LLM_PREFIX)
    if not state:
        raise SpeechExportError(
            f"{path}: no {SPEECH_LLM_PREFIX!r} keys in ckpt[{STATE_KEY!r}] (first: {sorted(raw)[:5]})"
        )
    return SpeechCheckpoint(
        config=dict(meta["config"]), lora=None if lora is None else dict(lora), state=state
    )


def _processor_dir(checkpoint: Path, processor_dir: str | Path | None) -> Path:
    """``processor_dir``, or the run's ``processor/`` folder: ``<ckpt dir>/../processor`` (or beside it)."""
    if processor_dir is not None:
        candidates = [Path(processor_dir)]
    else:
        candidates = [checkpoint.parent.parent / "processor", checkpoint.parent / "processor"]
    for folder in candidates:
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            return folder
    raise SpeechExportError(
        f"no tokenizer / processor at {' or '.join(map(str, candidates))}: the training run writes it to "
        "<output_dir>/processor; pass processor_dir= (any folder with the run's tokenizer files)"
    )


def _lora_config(values: Mapping[str, Any]) -> Any:
    """A trainable ``LoraConfig`` from its plain-dict form (:func:`~granite_train.models.checkpoints.speech_llm_metadata`)."""
    from peft import PeftConfig

    values = dict(values)
    values.pop("peft_type", None)
    values["inference_mode"] = False
    return PeftConfig.from_peft_type(peft_type="LORA", **values)


def _attach_lora(
    hf: GraniteSpeechForConditionalGeneration, lora: Mapping[str, Any], state: Mapping, where: str
) -> None:
    """Add the checkpoint's adapter to ``hf`` and load its tensors (every LoRA key, none left over)."""
    lora_state = {k: v for k, v in state.items() if _is_lora_key(k)}
    names = {k.split(".lora_A.")[1].split(".")[0] for k in lora_state if ".lora_A." in k} or {"default"}
    if len(names) != 1:
        raise SpeechExportError(f"{where}: more than one LoRA adapter in the state dict: {sorted(names)}")
    hf.add_adapter(_lora_config(lora), adapter_name=names.pop())
    expected = {k for k in hf.state_dict() if _is_lora_key(k)}
    if set(lora_state) != expected:
        missing, unexpected = sorted(expected - set(lora_state)), sorted(set(lora_state) - expected)
        raise SpeechExportError(
            f"{where}: LoRA tensors do not match ckpt['speech_llm']['lora']: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    hf.load_state_dict(lora_state, strict=False)
    hf.config.has_lora_adapter = True


def speech_llm_from_checkpoint(checkpoint: str | Path, processor_dir: str | Path | None = None) -> SpeechLLM:
    """The :class:`SpeechLLM` of a stage-2 checkpoint (LoRA attached, not merged), on CPU, eval mode."""
    checkpoint = Path(checkpoint)
    ckpt = read_speech_checkpoint(checkpoint)
    tokenizer = load_tokenizer(_processor_dir(checkpoint, processor_dir))
    try:
        config = speech_config_from_dict(ckpt.config)
    except Exception as err:
        raise SpeechExportError(
            f"{checkpoint}: ckpt['speech_llm']['config'] is not a GraniteSpeechConfig: {err}"
        ) from err
    base = {k.replace(".base_layer.", "."): v for k, v in ckpt.state.items() if not _is_lora_key(k)}
    config.has_lora_adapter = False
    try:
        hf = _reference_model(config, base, _llm_dtype(base))
    except SpeechExportError as err:
        raise SpeechExportError(f"{checkpoint}: {err}") from err
    if ckpt.lora is not None:
        _attach_lora(hf, ckpt.lora, ckpt.state, str(checkpoint))
    elif any(_is_lora_key(k) for k in ckpt.state):
        raise SpeechExportError(
            f"{checkpoint}: LoRA tensors in the state dict but ckpt['speech_llm']['lora'] is None"
        )
    return SpeechLLM(hf, tokenizer).eval()


def export_speech_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    merge_lora: bool = True,
    processor_dir: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Export a stage-2 training checkpoint as a transformers folder (:func:`export_speech_llm`).

    ``out_dir`` defaults to ``<checkpoint without suffix>-hf`` next to the checkpoint; the tokenizer
    comes from ``processor_dir`` (default: the run's ``processor/`` folder, ``<ckpt dir>/../processor``).
    """
    checkpoint = Path(checkpoint)
    speech = speech_llm_from_checkpoint(checkpoint, processor_dir)
    if out_dir is None:
        out_dir = checkpoint.with_name(checkpoint.stem + "-hf")
    return export_speech_llm(speech, out_dir, merge_lora=merge_lora, dtype=dtype)
