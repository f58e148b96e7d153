"""Stage-2 prompts: the token layout of one example, instruction choice, and the collator's padding."""

from __future__ import annotations

import pytest
import torch

from granite_train.data.collate import Collator, ExampleBatch
from granite_train.data.prepare import Example
from granite_train.data.prompts import (
    ASR_INSTRUCTIONS,
    AST_INSTRUCTIONS,
    PromptBuilder,
    PromptConfig,
    SpeechLLMCollator,
)
from granite_train.models.tiny_llm import train_bpe_tokenizer
from granite_train.speech_format import AUDIO_TOKEN, IGNORE_INDEX, audio_token_count

SENTENCES = [
    "alpha bravo charlie delta echo foxtrot golf hotel",
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny test sentence",
    "translate the speech to german please",
    "keywords are listed after the instruction",
] * 4 + [f"USER: {i}\n ASSISTANT:" for i in ASR_INSTRUCTIONS + AST_INSTRUCTIONS]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(SENTENCES, vocab_size=300)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def test_audio_token_count_published_formula():
    # by hand: 16000 // 160 + 1 = 101 -> // 2 = 50 frames -> ceil(50 / 15) = 4 windows -> x 3 = 12
    assert audio_token_count(16000) == 12
    # 4640 samples: 29 + 1 = 30 -> 15 frames -> 1 window -> 3 tokens; one more 10 ms frame pair -> 2 windows
    assert audio_token_count(4640) == 3
    assert audio_token_count(4960) == 6  # 31 + 1 = 32 -> 16 frames -> 2 windows
    assert audio_token_count(1) == 0  # (0 + 1) // 2 = 0 frames


def test_asr_example_layout_is_pinned(tok):
    builder = PromptBuilder(tok, PromptConfig(vary_instructions=False))
    ex = builder({"id": "u1", "task": "asr", "text": "hello world"}, num_samples=16000)
    audio = tok.convert_tokens_to_ids(AUDIO_TOKEN)
    instruction = ASR_INSTRUCTIONS[0]
    assert ex.instruction == instruction
    # independently: "USER: " <|audio|> x 12, instruction "\n ASSISTANT:", then " hello world" EOS
    expected_prompt = _ids(tok, "USER: ") + [audio] * 12 + _ids(tok, instruction + "\n ASSISTANT:")
    expected_target = _ids(tok, " hello world") + [tok.eos_token_id]
    assert ex.prompt_ids == expected_prompt
    assert ex.target_ids == expected_target
    assert ex.input_ids == expected_prompt + expected_target
    assert ex.labels == [IGNORE_INDEX] * len(expected_prompt) + expected_target
    assert ex.input_ids.count(audio) == 12
    assert tok.decode(ex.prompt_ids).replace(AUDIO_TOKEN, "") == f"USER: {instruction}\n ASSISTANT:"
    assert not ex.truncated


def test_system_prompt_goes_first(tok):
    builder = PromptBuilder(tok, PromptConfig(vary_instructions=False, system_prompt="be brief"))
    ex = builder({"id": "u1", "text": "hi"}, num_samples=16000)
    assert tok.decode(ex.prompt_ids).startswith("be brief\nUSER: ")


def test_ast_prompt_uses_language_name_and_keywords_suffix(tok):
    builder = PromptBuilder(tok, PromptConfig(vary_instructions=False))
    ex = builder({"id": "a", "task": "ast", "target_language": "de", "text": "Hallo"}, 8000)
    assert ex.instruction == "translate the speech to German."
    assert "German" in tok.decode(ex.prompt_ids)
    # an unknown code is used as written
    assert builder.instruction({"id": "a", "task": "ast", "target_language": "Klingon"}).endswith("Klingon.")
    kw = builder.instruction({"id": "k", "task": "asr", "prompt_suffix": "Keywords: a, b"})
    assert kw == f"{ASR_INSTRUCTIONS[0]} Keywords: a, b"
    ex = builder({"id": "k", "task": "asr", "prompt_suffix": "Keywords: a, b", "text": "x"}, 8000)
    assert tok.decode(ex.prompt_ids).endswith("Keywords: a, b\n ASSISTANT:")


def test_instruction_choice_deterministic_per_seed_and_id(tok):
    a = PromptBuilder(tok, PromptConfig(), seed=0)
    b = PromptBuilder(tok, PromptConfig(), seed=0)
    ids = [f"utt-{i}" for i in range(60)]
    first = [a.instruction({"id": i}) for i in ids]
    assert first == [b.instruction({"id": i}) for i in ids]  # same (seed, id) -> same instruction
    assert first == [a.instruction({"id": i}) for i in ids]  # and stable on repeat
    assert len(set(first)) >= 6  # varies across ids
    assert set(first) <= set(ASR_INSTRUCTIONS)
    other = [PromptBuilder(tok, PromptConfig(), seed=1).instruction({"id": i}) for i in ids]
    assert other != first  # the seed matters
    fixed = PromptBuilder(tok, PromptConfig(vary_instructions=False), seed=0)
    assert {fixed.instruction({"id": i}) for i in ids} == {ASR_INSTRUCTIONS[0]}
    ast = {fixed.instruction({"id": i, "task": "ast", "target_language": "fr"}) for i in ids}
    assert ast == {AST_INSTRUCTIONS[0].format(language="French")}


def test_prompt_errors(tok):
    builder = PromptBuilder(tok)
    with pytest.raises(ValueError, match="unknown task"):
        builder.instruction({"id": "x", "task": "summarize"})
    with pytest.raises(ValueError, match="target_language"):
        builder.instruction({"id": "x", "task": "ast"})
    with pytest.raises(ValueError, match="language"):
        PromptConfig(ast_instructions=["translate this."])
    with pytest.raises(ValueError):
        PromptConfig(asr_instructions=[])
    no_template = train_bpe_tokenizer(SENTENCES[:5], vocab_size=280)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        PromptBuilder(no_template)


def test_normalize_targets_only_for_asr(tok):
    builder = PromptBuilder(tok, PromptConfig(vary_instructions=False, normalize_targets=True))
    asr = builder({"id": "a", "task": "asr", "text": "Hello, World!"}, 8000)
    assert asr.target_ids == _ids(tok, " hello world") + [tok.eos_token_id]
    ast = builder({"id": "a", "task": "ast", "target_language": "de", "text": "Hello, World!"}, 8000)
    assert ast.target_ids == _ids(tok, " Hello, World!") + [tok.eos_token_id]


def _example(i: int, n: int, text: str, **record) -> Example:
    g = torch.Generator().manual_seed(i)
    wave = 0.1 * torch.randn(n, generator=g)
    return Example({"id": f"e{i}", "source": "s", "language": "en", "text": text, **record}, wave, [])


def test_collator_padding_and_masks(tok):
    builder = PromptBuilder(tok, PromptConfig(vary_instructions=False, max_target_tokens=8))
    collator = SpeechLLMCollator(builder, Collator(compute_features=True))
    examples = [
        _example(0, 16000, "alpha bravo charlie delta echo foxtrot golf hotel"),  # truncated to 8
        _example(1, 4000, "hello"),
        _example(2, 9000, "Hallo", task="ast", target_language="de"),
    ]
    batch = collator(ExampleBatch(examples, skipped={"too_short": 2}))
    single = [builder(e.record, int(e.waveform.shape[-1])) for e in examples]
    assert batch.skipped == {"too_short": 2, "target_truncated": 1}
    assert single[0].truncated and len(single[0].target_ids) == 9  # 8 tokens + EOS
    assert single[0].target_ids[-1] == tok.eos_token_id
    width = max(len(t.input_ids) for t in single)
    pwidth = max(len(t.prompt_ids) for t in single)
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (3, width)
    assert batch.prompt_ids.shape == batch.prompt_mask.shape == (3, pwidth)
    pad = tok.pad_token_id
    for i, t in enumerate(single):
        n, p = len(t.input_ids), len(t.prompt_ids)
        # right padding for training
        assert batch.input_ids[i, :n].tolist() == t.input_ids
        assert (batch.input_ids[i, n:] == pad).all()
        assert batch.labels[i, :n].tolist() == t.labels
        assert (batch.labels[i, n:] == IGNORE_INDEX).all()
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (width - n)
        # left padding for generation
        assert batch.prompt_ids[i, pwidth - p :].tolist() == t.prompt_ids
        assert (batch.prompt_ids[i, : pwidth - p] == pad).all()
        assert batch.prompt_mask[i].tolist() == [0] * (pwidth - p) + [1] * p
        # audio placeholders match the features' frames
        frames = int(batch.feature_lengths[i])
        assert int((batch.input_ids[i] == builder.audio_id).sum()) == -(-frames // 15) * 3
    assert batch.tasks == ["asr", "asr", "ast"]
    assert batch.target_languages == [None, None, "de"]
    assert batch.instructions[2] == "translate the speech to German."
    # no truncation -> no counter
    plain = SpeechLLMCollator(PromptBuilder(tok, PromptConfig(vary_instructions=False)))(examples[1:])
    assert "target_truncated" not in plain.skipped


def test_draft_goes_after_keywords_and_labels_the_task(tok):
    from granite_train.data.prompts import task_label

    builder = PromptBuilder(tok, PromptConfig(vary_instructions=False))
    record = {
        "id": "d",
        "task": "asr",
        "prompt_suffix": "Keywords: a, b",
        "draft": " the  qick\tfox ",
        "text": "x",
    }
    assert builder.instruction(record) == f"{ASR_INSTRUCTIONS[0]} Keywords: a, b Draft: the qick fox"
    ex = builder(record, 8000)
    assert tok.decode(ex.prompt_ids).endswith("Keywords: a, b Draft: the qick fox\n ASSISTANT:")
    # the target is the transcript, never the draft
    assert ex.target_ids == _ids(tok, " x") + [tok.eos_token_id]
    # an empty draft still says that the first pass heard nothing; no draft column: no mark
    assert builder.instruction({"id": "e", "draft": ""}) == f"{ASR_INSTRUCTIONS[0]} Draft:"
    assert "Draft" not in builder.instruction({"id": "e"})
    assert task_label(record) == "asr+keywords+draft"
    assert task_label({"draft": ""}) == "asr+draft" and task_label({"prompt_suffix": "K"}) == "asr+keywords"
