"""Keyword-biasing data: selection rules, the dataset generator end to end, the TTS test set."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from data_prep.keywords.__main__ import main as keywords_main
from data_prep.keywords.generate import generate_keyword_dataset
from data_prep.keywords.select import (
    KeywordConfig,
    KeywordSelector,
    Vocabulary,
    count_words,
    format_prompt_suffix,
    occurs_in,
    tokenize,
)
from granite_train.data.sources import SourceSpec
from tests.corpus import audio_bytes, speechlike, write_parquet

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

COMMON = "the a to of and in is was we at for on it that with this from".split()
RARE = (
    "zeppelin quokka marzipan obelisk tundra sextant gazebo hammock walrus lantern mosaic "
    "parsnip quartz saffron trombone velvet wombat yodel zither kayak"
).split()
NAMES = "Priya Oslo Dagny Kigali Magnus Zanzibar Octavia Nuuk".split()
ACRONYMS = "NASA FIFA CERN UNESCO".split()


def _corpus_texts(n: int = 300, seed: int = 0) -> list[str]:
    """Cased sentences: many common words, some rare ones, names mid-sentence, acronyms, digits."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(COMMON) for _ in range(rng.randint(4, 9))]
        for pool, p in ((RARE, 0.6), (NAMES, 0.5), (ACRONYMS, 0.3)):
            if rng.random() < p:
                words.insert(rng.randint(1, len(words)), rng.choice(pool))
        if rng.random() < 0.2:
            words.insert(rng.randint(1, len(words)), str(rng.randint(2, 99)))
        words[0] = words[0].capitalize()
        texts.append(" ".join(words) + ".")
    return texts


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return count_words(_corpus_texts(), common_top_k=len(COMMON))


# -------------------------------------------------------------------------------- selection rules


def test_tokenize_strips_punctuation_and_marks_sentence_starts():
    toks = tokenize('Mr. Darcy met J. K. Rowling in the U.S. Then "NASA\'s" GPT-4 cost $3.5 million!')
    assert [t.text for t in toks] == [
        "Mr", "Darcy", "met", "J", "K", "Rowling", "in", "the", "U.S", "Then", "NASA's", "GPT-4",
        "cost", "3.5", "million",
    ]  # fmt: skip
    initial = {t.text for t in toks if t.initial}
    assert initial == {"Mr", "Then"}  # titles and initials do not end a sentence


def test_candidates_follow_the_rules(vocab):
    sel = KeywordSelector(vocab, KeywordConfig(common_top_k=len(COMMON), no_list_fraction=0.0))
    text = "The team from NASA met Priya and the walrus at 10 in the morning, then flew to Oslo."
    reasons = {c.word: set(c.reasons) for c in sel.candidates(text)}
    assert "acronym" in reasons["NASA"]
    assert "name" in reasons["Priya"] and "name" in reasons["Oslo"]
    assert reasons["walrus"] == {"rare"}
    assert reasons["10"] == {"digit"}
    assert reasons["morning"] == {"rare"}  # unseen in the corpus -> rare
    for word in ("The", "the", "from", "and", "at", "in", "to"):  # the corpus' common words
        assert word not in reasons, word


def test_sentence_initial_capital_is_not_a_name_unless_the_corpus_says_so(vocab):
    sel = KeywordSelector(vocab, KeywordConfig(common_top_k=len(COMMON)))

    def names(text):
        return [c.word for c in sel.candidates(text) if "name" in c.reasons]

    # "Yesterday" is capitalised only because it starts the sentence (it is rare: unseen)
    assert names("Yesterday we sat in the garden.") == []
    # "Kigali" starts this sentence, but the corpus has it capitalised mid-sentence
    assert names("Kigali is warm. Walrus is not a name.") == ["Kigali"]
    # a capitalised word mid-sentence is a name even if the corpus never saw it
    assert names("We met Svetlana there.") == ["Svetlana"]
    assert names("Then I left, and I'm back.") == []  # "I" is not a name


def test_uncased_transcripts_use_only_rarity_and_digits(vocab):
    sel = KeywordSelector(vocab, KeywordConfig(common_top_k=len(COMMON)))
    reasons = {c.word: c.reasons for c in sel.candidates("THE NASA TEAM MET PRIYA AT 10")}
    assert reasons == {
        "NASA": ("rare",),
        "TEAM": ("rare",),
        "MET": ("rare",),
        "PRIYA": ("rare",),
        "10": ("digit",),
    }


def test_positives_are_the_rarest_candidates_and_capped(vocab):
    cfg = KeywordConfig(common_top_k=len(COMMON), max_positives=2, num_distractors=0, no_list_fraction=0.0)
    sel = KeywordSelector(vocab, cfg)
    text = "It was Priya and the quokka at CERN with a flamingo."  # flamingo: unseen (count 0)
    s = sel.select(text, "x")
    assert len(s.bias_words) == 2 and "flamingo" in s.bias_words
    counts = {c.word: c.count for c in sel.candidates(text)}
    chosen = max(counts[w] for w in s.bias_words)
    assert all(counts[w] >= chosen for w in counts if w not in s.bias_words)
    assert s.reasons["flamingo"] == ("rare",)


def test_distractors_are_never_in_the_transcript(vocab):
    cfg = KeywordConfig(common_top_k=len(COMMON), num_distractors=6, no_list_fraction=0.0)
    sel = KeywordSelector(vocab, cfg)
    texts = _corpus_texts(400, seed=1)
    for i, text in enumerate(texts):
        s = sel.select(text, f"ex{i}")
        distractors = s.distractors
        assert len(distractors) == 6  # the pool is large enough
        tokens = {t.key for t in tokenize(text)}
        for d in distractors:
            assert d.lower() not in tokens and not occurs_in(d, text), (d, text)
        for b in s.bias_words:
            assert occurs_in(b, text)
        assert len({k.lower() for k in s.keywords}) == len(s.keywords)  # no duplicates
        assert s.prompt_suffix == "Keywords: " + ", ".join(s.keywords)


def test_distractor_pool_overlapping_the_transcript_is_filtered():
    # A tiny pool where most words are in the transcript: only the others may be drawn.
    vocab = count_words(["we saw the obelisk and the gazebo near Nuuk", "the kayak"], common_top_k=1)
    sel = KeywordSelector(vocab, KeywordConfig(common_top_k=1, num_distractors=5, no_list_fraction=0.0))
    # "we" was seen only at a sentence start (spelling unknown): not in the pool
    assert sel.pool == ["Nuuk", "and", "gazebo", "kayak", "near", "obelisk", "saw"]
    for i in range(50):
        s = sel.select("The obelisk and the gazebo near Nuuk.", str(i))
        assert sorted(s.distractors) == ["kayak", "saw"]  # all the pool has left


def test_no_list_share_is_honoured(vocab):
    texts = _corpus_texts(1000, seed=2)
    for fraction in (0.0, 0.25, 1.0):
        cfg = KeywordConfig(common_top_k=len(COMMON), no_list_fraction=fraction, num_distractors=3)
        sel = KeywordSelector(vocab, cfg)
        selections = [sel.select(t, f"utt-{i}") for i, t in enumerate(texts)]
        empty = sum(not s.keywords for s in selections) / len(texts)
        # Binomial(1000, p): 4 standard deviations = 0.055 at p = 0.25
        assert abs(empty - fraction) < 0.055, (fraction, empty)
        assert all(s.prompt_suffix == "" for s in selections if not s.keywords)
        assert all(not s.bias_words for s in selections if not s.keywords)


def test_selection_is_deterministic_per_seed_and_id(vocab):
    texts = _corpus_texts(200, seed=3)
    ids = [f"id{i}" for i in range(len(texts))]

    def run(seed, order):
        sel = KeywordSelector(vocab, KeywordConfig(common_top_k=len(COMMON), seed=seed, no_list_fraction=0.2))
        return {ids[i]: sel.select(texts[i], ids[i]).keywords for i in order}

    forward = run(0, range(len(texts)))
    assert forward == run(0, reversed(range(len(texts))))  # independent of the processing order
    other = run(1, range(len(texts)))
    assert sum(forward[k] != other[k] for k in ids) > len(ids) // 2  # the seed matters


def test_keyword_order_is_shuffled(vocab):
    cfg = KeywordConfig(common_top_k=len(COMMON), num_distractors=4, no_list_fraction=0.0)
    sel = KeywordSelector(vocab, cfg)
    first_is_bias = []
    in_text_order = 0
    listed = 0
    for i, text in enumerate(_corpus_texts(300, seed=4)):
        s = sel.select(text, str(i))
        if len(s.bias_words) < 2:
            continue
        listed += 1
        first_is_bias.append(s.keywords[0] in s.bias_words)
        positions = [text.index(w) for w in s.bias_words]
        in_text_order += positions == sorted(positions)
    assert listed > 50
    share = sum(first_is_bias) / len(first_is_bias)
    assert 0.1 < share < 0.9  # positives are not always first (nor always last)
    assert in_text_order < listed  # and not always in transcript order


def test_vocabulary_roundtrip_and_frequency_files(tmp_path, vocab):
    path = vocab.save(tmp_path / "counts.tsv")
    loaded = Vocabulary.load(path, common_top_k=vocab.common_top_k)
    assert loaded.digest() == vocab.digest()
    assert loaded.distractor_pool() == vocab.distractor_pool()
    # plain "word count" lines, and a ranked word list
    (tmp_path / "wc.txt").write_text("# comment\nthe 100\nThe 5\nzeppelin 1\nOslo 2\n")
    wc = Vocabulary.load(tmp_path / "wc.txt", common_top_k=1)
    assert wc.count("the") == 105 and wc.is_rare("oslo") and not wc.is_rare("the")
    assert "Oslo" in wc.distractor_pool()
    (tmp_path / "ranked.txt").write_text("the\nof\nquokka\n")
    ranked = Vocabulary.load(tmp_path / "ranked.txt", common_top_k=2)
    assert ranked.common == {"the", "of"}
    assert format_prompt_suffix([]) == "" and format_prompt_suffix(["A", "b"]) == "Keywords: A, b"


def test_config_validation():
    with pytest.raises(ValueError):
        KeywordConfig(no_list_fraction=1.5)
    with pytest.raises(ValueError):
        KeywordConfig(max_positives=-1)


# ----------------------------------------------------------------------------- the generator


BAD = {
    "bad-notext": "no_text",
    "bad-empty": "empty_text",
    "bad-garbage": "decode_error",
    "bad-missing": "missing_file",
    "bad-noaudio": "no_audio",
}


def _make_source(root: Path, n: int = 23) -> Path:
    """A parquet corpus (tests/corpus.py helpers) of cased transcripts + one record per bad reason."""
    texts = _corpus_texts(n, seed=5)
    rows = [
        {
            "id": f"utt-{i:03d}",
            "audio": {"bytes": audio_bytes(speechlike(0.3, seed=i)), "path": None},
            "text": t,
            "language": "en",
        }
        for i, t in enumerate(texts)
    ]
    good = audio_bytes(speechlike(0.3, seed=999))
    bad = [
        {"id": "bad-notext", "audio": {"bytes": good, "path": None}, "text": None, "language": "en"},
        {"id": "bad-empty", "audio": {"bytes": good, "path": None}, "text": "   ", "language": "en"},
        {
            "id": "bad-garbage",
            "audio": {"bytes": b"not audio at all", "path": None},
            "text": "Hi",
            "language": "en",
        },
        {
            "id": "bad-missing",
            "audio": {"bytes": None, "path": str(root / "gone.flac")},
            "text": "Hi",
            "language": "en",
        },
        {"id": "bad-noaudio", "audio": None, "text": "Hi there", "language": "en"},
    ]
    src = root / "src"
    write_parquet(src / "part-000.parquet", rows[: n // 2] + bad[:2])
    write_parquet(src / "part-001.parquet", rows[n // 2 :] + bad[2:])
    return src


def _hashes(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))
    }


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_generator_end_to_end_resume_and_bad_records(tmp_path):
    src = _make_source(tmp_path)
    spec = SourceSpec("src", str(src))
    cfg = KeywordConfig(common_top_k=len(COMMON), max_positives=3, num_distractors=2, no_list_fraction=0.2)
    out = tmp_path / "out"
    s1 = generate_keyword_dataset(spec, out, config=cfg, shard_size=8, progress=False)
    total = 23 + len(BAD)
    assert s1.num_records == total and s1.num_examples == 23
    assert s1.shards_written == 4 and s1.shards_skipped == 0  # 28 records / 8
    assert s1.failures == {reason: 1 for reason in BAD.values()}
    assert s1.records_processed == total and s1.examples_per_second > 0

    rows = _rows(out)
    assert len(rows) == 23
    assert set(rows[0]) == {"id", "audio", "text", "language", "keywords", "bias_words", "prompt_suffix"}
    assert {r["id"] for r in rows} == {f"utt-{i:03d}" for i in range(23)}
    source_audio = {
        r["id"]: r["audio"] and r["audio"]["bytes"]
        for p in sorted(src.glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    }
    for r in rows:
        assert r["audio"]["bytes"] == source_audio[r["id"]]  # audio passed through untouched
        assert set(r["bias_words"]) <= set(r["keywords"])
        assert all(occurs_in(w, r["text"]) for w in r["bias_words"])
        assert not any(occurs_in(w, r["text"]) for w in set(r["keywords"]) - set(r["bias_words"]))
        assert r["prompt_suffix"] == format_prompt_suffix(r["keywords"])
    assert any(r["keywords"] for r in rows) and any(r["bias_words"] for r in rows)

    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["id"]: f["reason"] for f in failures} == BAD
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 23
    assert "missing_file: 1" in card and (out / "word_counts-train.tsv").is_file()

    import datasets

    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows == 23 and ds.features["keywords"].feature.dtype == "string"

    # Rerun: every shard is skipped, nothing changes.
    before = _hashes(out)
    s2 = generate_keyword_dataset(spec, out, config=cfg, shard_size=8, progress=False)
    assert (s2.shards_written, s2.shards_skipped, s2.records_processed) == (0, 4, 0)
    assert s2.failures == s1.failures and _hashes(out) == before

    # A lost middle shard is regenerated alone, byte-identical.
    (out / "data" / "train-00001.parquet").unlink()
    s3 = generate_keyword_dataset(spec, out, config=cfg, shard_size=8, progress=False)
    assert (s3.shards_written, s3.shards_skipped, s3.records_processed) == (1, 3, 8)
    assert _hashes(out) == before

    # A lost last shard: the stream restarts after shard 2 (saved position), reads only 4 records.
    (out / "data" / "train-00003.parquet").unlink()
    s4 = generate_keyword_dataset(spec, out, config=cfg, shard_size=8, progress=False)
    assert (s4.shards_written, s4.records_processed) == (1, 4)
    assert _hashes(out) == before

    # Another seed changes the lists (and redoes every shard).
    s5 = generate_keyword_dataset(
        spec,
        tmp_path / "out_seed1",
        config=KeywordConfig(**{**cfg.__dict__, "seed": 1}),
        shard_size=8,
        progress=False,
    )
    assert s5.num_examples == 23
    assert [r["keywords"] for r in _rows(tmp_path / "out_seed1")] != [r["keywords"] for r in rows]


def test_generator_cli_with_frequency_file_gives_the_same_lists(tmp_path):
    src = _make_source(tmp_path, n=12)
    common = ["--common-top-k", str(len(COMMON)), "--shard-size", "5", "--quiet", "--seed", "3"]
    assert keywords_main(["generate", "--source", str(src), "--out", str(tmp_path / "a"), *common]) == 0
    counts = tmp_path / "a" / "word_counts-train.tsv"
    argv = ["generate", "--source", str(src), "--out", str(tmp_path / "b"), "--frequency-file", str(counts)]
    assert keywords_main([*argv, *common, "--check-audio", "decode"]) == 0
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert len(a) == 12 and [r["keywords"] for r in a] == [r["keywords"] for r in b]
    assert "python -m data_prep.keywords generate" in (tmp_path / "a" / "README.md").read_text()
    with pytest.raises(SystemExit) as e:
        keywords_main(["--help"])
    assert e.value.code == 0


def test_generator_reads_a_jsonl_manifest_with_audio_files(tmp_path):
    # NeMo-style manifest, relative paths: audio is read from the files into the output bytes
    root = tmp_path / "manifest"
    root.mkdir()
    lines = []
    for i, text in enumerate(_corpus_texts(6, seed=7)):
        (root / f"a{i}.flac").write_bytes(audio_bytes(speechlike(0.2, seed=i)))
        lines.append(json.dumps({"id": f"m{i}", "audio_filepath": f"a{i}.flac", "text": text}))
    lines.append(json.dumps({"id": "gone", "audio_filepath": "gone.flac", "text": "Hello there"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    spec = SourceSpec("m", str(root / "train.jsonl"), language="en")
    out = tmp_path / "out"
    summary = generate_keyword_dataset(spec, out, config=KeywordConfig(common_top_k=5), progress=False)
    assert summary.num_examples == 6 and summary.failures == {"missing_file": 1}
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"m{i}" for i in range(6)]
    assert rows[0]["audio"]["bytes"] == (root / "a0.flac").read_bytes()
    assert rows[0]["audio"]["path"] == "a0.flac" and rows[0]["language"] == "en"


# ------------------------------------------------------------------------------- the test set


def test_testset_sentences_are_distinct_and_annotated():
    from data_prep.keywords.testset import ENTITIES, make_sentences

    assert len(ENTITIES) >= 250
    sentences = make_sentences(200, seed=0, num_distractors=8)
    assert len({s.text for s in sentences}) == 200
    assert sentences == make_sentences(200, seed=0, num_distractors=8)
    for s in sentences:
        assert 1 <= len(s.bias_words) and all(occurs_in(w, s.text) for w in s.bias_words)
        distractors = [k for k in s.keywords if k not in s.bias_words]
        assert len(distractors) == 8 and not any(occurs_in(d, s.text) for d in distractors)
        assert sorted(s.keywords) == sorted(s.bias_words + distractors)


@needs_espeak
def test_testset_end_to_end_with_espeak(tmp_path):
    from data_prep.keywords.testset import build_testset

    out = tmp_path / "testset"
    summary = build_testset(out, num_sentences=6, num_distractors=3, num_workers=1, progress=False)
    assert summary.num_examples == 6 and not summary.failures
    rows = _rows(out)
    assert len(rows) == 6
    for r in rows:
        assert r["duration"] > 0.5 and r["audio"]["bytes"][:4] == b"fLaC"
        assert r["bias_words"] and set(r["bias_words"]) <= set(r["keywords"])
        assert len(r["keywords"]) == len(r["bias_words"]) + 3
        assert r["prompt_suffix"].startswith("Keywords: ")
    assert (out / "README.md").is_file() and len((out / "sentences.jsonl").read_text().splitlines()) == 6
    again = build_testset(out, num_sentences=6, num_distractors=3, num_workers=1, progress=False)
    assert again.tts.shards_written == 0 and again.num_examples == 6


def test_testset_from_unseen_entities_uses_no_name_said_in_training():
    from data_prep.keywords.testset import ENTITIES, make_sentences, unseen_entities

    training = ["We flew to Reykjavik with Ingrid.", "The NASA launch was late.", "ingrid sings"]
    kept = unseen_entities(training)
    # by hand: exactly the three named entities are gone, matched case-insensitively
    assert set(ENTITIES) - set(kept) == {"Reykjavik", "Ingrid", "NASA"}
    sentences = make_sentences(60, seed=1, entities=kept)
    used = {w for s in sentences for w in [*s.bias_words, *s.keywords]}
    assert used and used <= set(kept)
    with pytest.raises(ValueError, match="fewer than 2 allowed entities"):
        make_sentences(5, entities=("Ingrid", "Reykjavik"))
