"""The generators' outputs are stage-2 sources as written: translation, keyword lists, Japanese.

Each generator runs for real on a tiny corpus; its output folder is then named as a source (path +
split, nothing mapped by hand) and read through the training pipeline into prompts and targets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from granite_train.data.prompts import (
    PromptBuilder,
    PromptConfig,
    SpeechLLMCollator,
    normalize_target,
    task_label,
    translation_part,
)
from granite_train.data.sources import SourceReader, SourceSpec
from granite_train.models.tiny_llm import build_tiny_llm
from granite_train.training.step_module import counter_shares
from tests.corpus import make_corpus


def _records(path: Path, split: str = "train") -> list[dict]:
    reader, out = SourceReader(SourceSpec("gen", str(path), split=split)), []
    while (record := reader.next_record()) is not None:
        out.append(record)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen_corpus")
    make_corpus(root, "train", n=12, num_shards=1, durations=(0.5, 1.2), seed=3)
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    texts = ["alpha bravo charlie delta", "echo foxtrot golf hotel", "hola mundo", "el golf del hotel"] * 5
    folder = build_tiny_llm(tmp_path_factory.mktemp("tok"), texts, preset="micro", vocab_size=300)
    return AutoTokenizer.from_pretrained(str(folder))


def _builder(tokenizer, **config) -> PromptBuilder:
    return PromptBuilder(tokenizer, PromptConfig(vary_instructions=False, **config))


SENTENCES = ["The hotel is very big.", "I have a red car.", "We live in a small house.", "The dog eats bread.",
             "My sister reads a book.", "The water is cold.", "They play in the garden.", "The city is beautiful."]  # fmt: skip


@pytest.mark.skipif(shutil.which("apertium") is None, reason="needs apertium (scripts/setup.sh installs it)")
def test_translation_output_is_an_ast_source_as_written(tmp_path, tokenizer):
    from tests.corpus import audio_bytes, speechlike, write_parquet

    sentences = tmp_path / "en"
    write_parquet(sentences / "train-00000.parquet", [
        {"id": f"s{i}", "audio": {"bytes": audio_bytes(speechlike(0.6, seed=i)), "path": None}, "text": t,
         "language": "en"} for i, t in enumerate(SENTENCES)
    ])  # fmt: skip
    from data_prep.translate import generate_translations
    from data_prep.translate.backends import ApertiumBackend

    backend, pivot = ApertiumBackend(), ApertiumBackend("{src}-ca,ca-{tgt}")
    try:
        backend.resolve("en", "es"), pivot.resolve("en", "es")
    except ValueError:
        pytest.skip("apertium-eng-spa, -eng-cat and -spa-cat are not all installed")
    out = tmp_path / "ast"
    summary = generate_translations(
        SourceSpec("c", str(sentences)), out, primary=backend, secondary=pivot,
        source_language="en", target_languages=["es"], transcription_share=0.5, progress=False,
    )  # fmt: skip
    assert summary.num_kept > 0, summary.rejects
    records = _records(out)
    assert len(records) == summary.num_kept
    builder = _builder(tokenizer, normalize_translations=True)
    marked = 0
    for r in records:
        # the target is the generator's target_text (no text column to map by hand), the task and
        # the target language come from its columns
        assert r["text"] and r["task"] == "ast" and r["target_language"] == "es" and task_label(r) == "ast"
        assert builder.instruction(r) == "translate the speech to Spanish."
        target = tokenizer.decode(builder(r, 16000).target_ids[:-1]).strip()
        assert target == normalize_target(r["text"])
        marked += r["text"].startswith("[Transcription]")
        assert translation_part(target) == normalize_target(translation_part(r["text"]))
    assert marked == summary.num_transcription_format and 0 < marked < len(
        records
    )  # some in the "[Transcription] ... [Translation] ..." form


def test_keyword_output_is_a_keyword_prompted_asr_source_as_written(corpus, tmp_path, tokenizer):
    from data_prep.keywords.generate import generate_keyword_dataset
    from data_prep.keywords.select import KeywordConfig

    out = tmp_path / "kw"
    config = KeywordConfig(common_top_k=2, max_positives=2, num_distractors=2, no_list_fraction=0.3)
    generate_keyword_dataset(SourceSpec("c", str(corpus / "train")), out, config=config, progress=False)
    records = _records(out)
    assert records
    builder = _builder(tokenizer)
    labels = []
    for r in records:
        labels.append(task_label(r))
        instruction = builder.instruction(r)
        if r.get("prompt_suffix"):
            assert instruction.endswith(r["prompt_suffix"]) and r["prompt_suffix"].startswith("Keywords: ")
            assert set(r["bias_words"]) <= set(r["text"].split())
        else:
            assert instruction == "can you transcribe the speech into a written format?"
    assert {"asr", "asr+keywords"} == set(labels)  # lists on most, none on some


def test_collated_batches_count_examples_per_task(tokenizer):
    from granite_train.data.collate import Collator
    from granite_train.data.prepare import Example
    from tests.corpus import speechlike

    records = [
        {"id": "a", "text": "alpha", "language": "en"},
        {"id": "b", "text": "bravo", "language": "en", "prompt_suffix": "Keywords: bravo, golf", "bias_words": ["bravo"]},
        {"id": "c", "text": "hola", "language": "en", "task": "ast", "target_language": "es"},
    ]  # fmt: skip
    examples = [
        Example({**r, "source": "s"}, torch.from_numpy(speechlike(0.4, seed=i)), [])
        for i, r in enumerate(records)
    ]
    batch = SpeechLLMCollator(_builder(tokenizer), Collator(compute_features=True))(examples)
    assert batch.task_labels == ["asr", "asr+keywords", "ast"]
    assert batch.bias_words == [[], ["bravo"], []]
    counters = {"task/asr": 6, "task/ast": 3, "task/asr+keywords": 3, "seen/x": 12}
    assert counter_shares(counters, "task/") == "asr 6 (50.0%), asr+keywords 3 (25.0%), ast 3 (25.0%)"


def test_japanese_corpus_is_an_asr_source_as_written(tmp_path, tokenizer):
    """``data_prep.japanese`` writes a TTS corpus (text, language ja, ctc_text): ASR as it is."""
    from tests.corpus import audio_bytes, speechlike, write_parquet

    write_parquet(tmp_path / "ja" / "data" / "train-00000.parquet", [
        {"id": "j0", "audio": {"bytes": audio_bytes(speechlike(0.5)), "path": None}, "text": "東京へ行きます。",
         "language": "ja", "ctc_text": "トウキョウヘイキマス"},
    ])  # fmt: skip
    (r,) = _records(tmp_path / "ja")
    assert (r["text"], r["language"], task_label(r)) == ("東京へ行きます。", "ja", "asr")


def test_translation_bleu_scores_the_translation_part_like_sacrebleu():
    from sacrebleu.metrics import BLEU

    from granite_train.eval.generate import translation_bleu

    refs = [
        "[Transcription] the big hotel [Translation] El hotel grande, muy grande.",
        "Hola, mundo de los perros.",
    ]
    hyps = ["[Transcription] the big hotel [Translation] el hotel grande muy grande", "hola mundo de perros"]
    expected = BLEU(tokenize="13a").corpus_score(
        ["el hotel grande muy grande", "hola mundo de perros"],
        [["el hotel grande muy grande", "hola mundo de los perros"]],
    )
    assert 0 < expected.score < 100
    assert translation_bleu(refs, hyps, "es", normalized=True)[0].score == pytest.approx(expected.score)
    assert (
        translation_bleu(refs, hyps, "es", normalized=False)[0].score < expected.score
    )  # case and commas count
