"""Serving proven by vLLM itself (benchmarks/vllm_serving.py).

Default tier: what the check decides before vLLM starts (a folder vLLM will refuse, the venv that is
missing, the agreement count) and that our export writes the released tensor names vLLM loads.
Slow tier (runs where the serving venv exists: ``bash scripts/serve_setup.sh``; CI builds it):
vLLM's offline ``LLM`` API on our merged export and on a released-layout stand-in + our LoRA
adapter gives the same greedy tokens as transformers, and ``vllm serve``'s OpenAI transcription
route answers a posted WAV file with the offline transcript.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DIGITS = "zero one two three four five six seven eight nine".split()


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("vllm_serving", BENCHMARKS / "vllm_serving.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vllm_serving = _load_benchmark()


def _stand_in(root: Path, heads: int) -> Path:
    """A released-layout micro model whose LLM has ``64 // heads``-wide attention heads, its weights
    drawn wide and its projector output scaled up, so that the audio, not the prompt, decides what
    the random LLM says (at the default init every clip gets the same output)."""
    from granite_train.models.speech_export import export_speech_llm
    from granite_train.models.speech_llm import load_speech_llm
    from granite_train.models.tiny_llm import build_tiny_llm
    from granite_train.models.tiny_release import build_tiny_released_model

    texts = [" ".join(DIGITS[i:] + DIGITS[:i]) for i in range(10)] * 4
    llm = build_tiny_llm(root / "llm", texts, preset="micro", vocab_size=300, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 2))  # fmt: skip
    released = build_tiny_released_model(root, llm=llm)
    speech = load_speech_llm(released)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # wide random LLM matrices: logits far apart, no near-ties to flip
        for param in speech.hf.model.language_model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        speech.hf.model.projector.linear.weight.mul_(40.0)
    return export_speech_llm(speech.eval(), root / "served")


def _fsdd_manifest(fsdd_dir: Path, out: Path, num: int = 4) -> Path:
    rows = ["audio,text"]
    for digit in range(num):
        rows.append(f"{fsdd_dir / 'recordings' / f'{digit}_george_0.wav'},{DIGITS[digit]}")
    out.write_text("\n".join(rows) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# default tier: decided before vLLM starts
# --------------------------------------------------------------------------------------------------
def test_export_writes_the_released_tensor_names_and_transformers_reads_them_back(tmp_path):
    from transformers import GraniteSpeechForConditionalGeneration

    from granite_train.models.speech_llm import load_speech_llm

    folder = _stand_in(tmp_path, heads=2)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())  # noqa: SIM118
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"encoder", "projector", "language_model"}, prefixes
    assert "language_model.model.embed_tokens.weight" in keys and not any(
        k.startswith("model.") for k in keys
    )
    assert vllm_serving.vllm_problems(folder) == []
    # transformers 5 maps the released names onto its own layout: every tensor lands, none is new
    model, info = GraniteSpeechForConditionalGeneration.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ours = load_speech_llm(folder).hf
    theirs = dict(model.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(param, theirs[name]), name


def test_refuses_what_vllm_on_cpu_would_refuse_naming_the_fix(tmp_path):
    from safetensors.torch import load_file, save_file

    narrow = _stand_in(tmp_path / "narrow", heads=4)  # head_dim 16: vLLM's CPU attention has no kernel
    problems = vllm_serving.vllm_problems(narrow)
    assert len(problems) == 1 and "head_dim 16" in problems[0] and "32, 64" in problems[0]
    # a folder with transformers-5 names (an export from before the rename) is named too
    state = load_file(str(narrow / "model.safetensors"))  # memory-mapped: write a new file, then rename
    save_file({"model." + k: v for k, v in state.items()}, str(narrow / "renamed.safetensors"))
    del state
    (narrow / "renamed.safetensors").replace(narrow / "model.safetensors")
    problems = vllm_serving.vllm_problems(narrow)
    assert len(problems) == 2 and "re-export with granite-train export" in problems[1]


def test_missing_serving_venv_says_how_to_create_it(tmp_path):
    with pytest.raises(vllm_serving.ServingCheckError, match="bash scripts/serve_setup.sh"):
        vllm_serving.serve_python(tmp_path / "nowhere")


def test_agreement_counts_tokens_apart_from_end_tokens_and_lists_differences():
    reference = [{"id": "a", "token_ids": [5, 6, 0], "text": "five six"},
                 {"id": "b", "token_ids": [7, 8], "text": "seven eight", "top2_margins": [3.0, 0.25]},
                 {"id": "c", "token_ids": [9], "text": "nine"}]  # fmt: skip
    served = [{"id": "a", "token_ids": [5, 6], "text": "five six"},  # vLLM leaves the EOS (0) out
              {"id": "b", "token_ids": [7, 9, 0], "text": "seven nine"}]  # fmt: skip
    result = vllm_serving.compare(reference, served, end_ids={0})
    assert (result["n"], result["identical_tokens"], result["identical_text"]) == (3, 1, 1)
    assert result["differences"][0] == {"id": "b", "first_different_token": 1, "transformers": "seven eight",
                                        "vllm": "seven nine", "transformers_top2_logit_margin": 0.25}  # fmt: skip
    assert result["differences"][1] == {"id": "c", "reason": "no vLLM output"}


# --------------------------------------------------------------------------------------------------
# slow tier: vLLM itself
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serve_python():
    try:
        return vllm_serving.serve_python()
    except vllm_serving.ServingCheckError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def served(tmp_path_factory, fsdd_dir):
    root = tmp_path_factory.mktemp("served")
    return {
        "model": _stand_in(root, heads=2),
        "manifest": _fsdd_manifest(fsdd_dir, root / "fsdd.csv"),
        "root": root,
    }


def _check(served, out: Path, **kwargs):
    args = vllm_serving.parse_args(["--model", str(kwargs.pop("model", served["model"])), "--data",
                                    str(served["manifest"]), "--num", "4", "--max-tokens", "12", "--out", str(out)])  # fmt: skip
    for key, value in kwargs.items():
        setattr(args, key, value)
    return vllm_serving.run_check(args)


@pytest.mark.slow
def test_vllm_transcribes_our_merged_export_as_transformers_does_and_serves_it(serve_python, served):
    report = _check(served, served["root"] / "merged", endpoint=True)
    agree = report["agreement"]
    assert agree["identical_tokens"] == agree["n"] == 4, agree["differences"]
    texts = [t["vllm"] for t in report["transcripts"]]
    assert len(set(texts)) >= 2, texts  # the audio decides the output: the comparison means something
    endpoint = report["endpoint"]
    assert endpoint["text"].strip() == endpoint["offline_text"].strip()
    assert json.loads((served["root"] / "merged" / "serving.json").read_text())["agreement"]["n"] == 4
    served["merged_texts"] = texts


@pytest.mark.slow
def test_vllm_serves_our_lora_adapter_on_the_base_as_transformers_peft_does(serve_python, served):
    from granite_train.models.config import LoraSettings
    from granite_train.models.speech_export import export_lora_adapter
    from granite_train.models.speech_llm import load_speech_llm

    tuned = load_speech_llm(served["model"])
    tuned.add_lora(LoraSettings(rank=4, alpha=8.0, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in tuned.hf.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    adapter = export_lora_adapter(
        tuned.eval(), served["root"] / "lora", base_model_name_or_path=str(served["model"])
    )
    report = _check(served, served["root"] / "with_lora", lora=str(adapter))
    agree = report["agreement"]
    assert agree["identical_tokens"] == agree["n"] == 4, agree["differences"]
    base = served.get("merged_texts") or [
        t["vllm"] for t in _check(served, served["root"] / "base")["transcripts"]
    ]
    assert [t["vllm"] for t in report["transcripts"]] != base  # the adapter was applied, not ignored


def test_max_lora_rank_is_one_vllm_accepts():
    from granite_train.models.speech_export import SpeechExportError, vllm_max_lora_rank

    # vLLM 0.32's MaxLoRARanks: 1, 8, 16, 32, 64, 128, 256, 320, 512
    assert [vllm_max_lora_rank(r) for r in (1, 2, 4, 8, 9, 48, 64, 300, 512)] == [1, 8, 8, 8, 16, 64, 64, 320, 512]
    with pytest.raises(SpeechExportError, match="above vLLM's largest"):
        vllm_max_lora_rank(1024)
