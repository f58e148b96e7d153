"""Japanese synthetic speech: sentence splitting, filters (exact counts), ctc_text, CLI, resume."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from data_prep.japanese.__main__ import main, run_cli
from data_prep.japanese.generate import (
    JapaneseTargets,
    generate_japanese,
    iter_dataset_documents,
    iter_text_file,
    make_backend,
    resolve_dataset,
)
from data_prep.japanese.sentences import (
    REASONS,
    SentenceFilter,
    UnspeakableRules,
    iter_paragraphs,
    japanese_ratio,
    split_sentences,
)
from data_prep.tts.backends import BackendUnavailableError, VoiceSpec
from data_prep.tts.generate import generate_corpus
from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import CharVocab

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

KATAKANA_ONLY = re.compile(r"[\u30a1-\u30fc ]+")

GOOD = [
    "今日は朝から雨が降っています。",
    "駅までの道を教えていただけませんか？",
    "祖母は毎週日曜日にお菓子を焼いてくれます。",
    "大阪行きの新幹線は二十分遅れて出発しました。",
    "会議は午後三時から第二会議室で始まります。",
    "昨日の夜、近くの川で花火大会がありました。",
    "この近くにコンビニはありますか？",
    "図書館は祝日のため月曜日は休館です。",
    "医者に毎日三十分歩くように言われました。",
    "強い風で公園の木が何本も倒れました。",
    "会社の売り上げは去年より四パーセント増えました。",
    "喫茶店に傘を忘れてしまいました。",
]


class ToneBackend:
    """Fast deterministic stand-in for a TTS engine that speaks Japanese (a tone per sentence)."""

    name = "tone"
    languages = ("ja",)

    def describe(self) -> dict:
        return {"name": self.name}

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        return VoiceSpec(self.name, "tone", rate=1.0, pitch=int(rng.integers(100, 400)))

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        t = np.arange(int(0.02 * len(text) * 16000)) / 16000
        return (0.5 * np.sin(2 * np.pi * voice.pitch * t)).astype(np.float32), 16000


def _rows(out: Path) -> list[dict]:
    rows = []
    for p in sorted((out / "data").glob("*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return rows


# -------------------------------------------------------------------------------------- splitting


def test_split_on_terminators_keeps_closing_brackets_and_quotes() -> None:
    assert split_sentences("今日は晴れ。明日は雨！本当？") == ["今日は晴れ。", "明日は雨！", "本当？"]
    # a terminator inside 「」 does not end the sentence; closers stay with their sentence
    assert split_sentences("彼は「今日は晴れ。明日は雨。」と言った。次です。") == [
        "彼は「今日は晴れ。明日は雨。」と言った。",
        "次です。",
    ]
    assert split_sentences("「はい。」と彼は言った。「いいえ。」「本当？」") == [
        "「はい。」と彼は言った。",
        "「いいえ。」",
        "「本当？」",
    ]
    assert split_sentences("本当に？」そうです。') 終わり。）次。") == [
        "本当に？」",
        "そうです。')",
        "終わり。）",
        "次。",
    ]
    assert split_sentences("『「あ。」』次。") == ["『「あ。」』", "次。"]


def test_split_mixed_punctuation_newlines_and_unbalanced_brackets() -> None:
    # runs of mixed terminators (！？, ?!, 。。) stay together; ASCII "." never splits
    assert split_sentences("えっ！？本当に?!そうなの。。はい．3.5キロです") == [
        "えっ！？",
        "本当に?!",
        "そうなの。。",
        "はい．",
        "3.5キロです",
    ]
    # newlines always split; blank lines vanish
    assert split_sentences("一行目です\n\n二行目です。三文目\n") == ["一行目です", "二行目です。", "三文目"]
    # an unclosed bracket would swallow the line: it is split ignoring brackets
    assert split_sentences("（注：これは例です。次の文。最後。") == [
        "（注：これは例です。",
        "次の文。",
        "最後。",
    ]
    # wrapped paragraphs: lines joined (no space between Japanese, one between ASCII words)
    paragraphs = list(
        iter_paragraphs(["今日は朝から\n", "雨です。the\n", "end\n", "\n", "\n", "二段落目。\n"])
    )
    assert paragraphs == ["今日は朝から雨です。the end", "二段落目。"]


# ---------------------------------------------------------------------------------------- filters


def test_each_filter_reason_is_counted_exactly() -> None:
    kept_texts = ["今日は朝から雨が降っています。", "駅までの道を教えていただけませんか？"]
    cases = {
        "too_short": ["今何時？", "はい。"],
        "too_long": ["あ" * 121],
        "unspeakable_email": ["連絡はinfo@example.jpまでお願いします。"],
        "unspeakable_url": ["詳しくはhttps://example.jp/abcを見てください。", "詳細はexample.comへどうぞ。"],
        "unspeakable_code": ["関数print()を呼び出します。", "条件がa==bなら終了します。"],
        "unspeakable_markup": [
            "｜項目｜値｜合計｜",
            "<b>太字</b>にしてください。",
            "■お知らせ■本日休業します。",
        ],
        "unspeakable_emoji": ["今日はいい天気ですね😀", "★新発売の商品です★"],
        "unspeakable_digits": ["番号は123456789です。", "電話は03-1234-5678です。"],
        "not_japanese": ["This is an English sentence.", "Bonjour à tous, ça va。"],
        "duplicate": ["今日は朝から雨が降っています。", "今日は朝から雨が降っています。"],
        "reading_oov": ["𠮷野家で牛丼を食べました。", "今日は한국語の勉強をしました。"],
        "reading_non_katakana": ["新しいiPhoneを買いました。"],
    }
    f = SentenceFilter()
    kept = [f(s) for s in kept_texts]
    for texts in cases.values():
        for s in texts:
            assert f(s) is None, s
    assert all(k is not None for k in kept)
    assert [t for t, _ in kept] == kept_texts
    assert kept[0][1] == "キョウハアサカラアメガフッテイマス"
    expected = {reason: len(texts) for reason, texts in cases.items()}
    assert dict(f.stats.rejected) == expected
    assert f.stats.sentences == len(kept_texts) + sum(expected.values()) and f.stats.kept == 2
    assert f.stats.examples["unspeakable_url"] == cases["unspeakable_url"]
    assert list(f.stats.as_dict()["rejected"]) == [r for r in REASONS if r in expected]  # check order
    # Latin words are in the CTC vocabulary: allow_latin keeps them
    assert SentenceFilter(allow_latin=True)("新しいiPhoneを買いました。") == (
        "新しいiPhoneを買いました。",
        "アタラシイiPhoneヲカイマシタ",
    )


def test_reading_empty_and_error_reasons_and_settings() -> None:
    def reader(text: str) -> str:
        if "空" in text:
            return "  "
        if "壊" in text:
            raise RuntimeError("sudachi broke")
        return "カタカナ"

    f = SentenceFilter(reader=reader, min_chars=2, max_chars=10, min_japanese_ratio=0.9, dedupe=False)
    for s in ["空っぽの読み", "壊れた読み", "普通の文", "普通の文", "あ", "漢字とABC"]:
        f(s)
    assert dict(f.stats.rejected) == {
        "reading_empty": 1,
        "reading_error": 1,
        "too_short": 1,
        "not_japanese": 1,
    }
    assert f.stats.kept == 2  # no dedupe
    with pytest.raises(ValueError):
        SentenceFilter(min_chars=10, max_chars=5)
    # digit rules are configurable
    assert UnspeakableRules(max_digits=12).check("番号は123456789です。") is None
    assert UnspeakableRules(reject_digit_groups=False).check("2024/01/01に") is None
    assert UnspeakableRules().check("1,000,000円の車と10～20万円の家") is None
    assert UnspeakableRules().check("NHK（日本放送協会）の番組") is None  # not code
    assert japanese_ratio("2024年1月1日") == 1.0 and japanese_ratio("123") == 0.0


def test_documents_are_split_then_filtered() -> None:
    f = SentenceFilter()
    docs = ["今日は晴れです。明日は雨です！https://a.jp です。", "", "今日は晴れです。\n今何時？"]
    kept = [t for t, _ in f.iter_documents(docs)]
    assert kept == ["今日は晴れです。", "明日は雨です！"]
    assert f.stats.documents == 3 and f.stats.sentences == 5
    assert dict(f.stats.rejected) == {"unspeakable_url": 1, "duplicate": 1, "too_short": 1}


def test_ctc_text_hook_matches_the_training_targets() -> None:
    hook = JapaneseTargets()
    builder = CTCTargetBuilder(CharVocab())
    for text in GOOD[:4]:
        assert hook("ja", text)["ctc_text"] == builder.target_text(text, "ja")
    assert set(hook.describe()) >= {"sudachipy", "sudachidict", "split_mode"}


def test_extra_columns_hook_errors_are_counted(tmp_path: Path) -> None:
    class Upper:
        features = {"upper": "string"}

        def __call__(self, language: str, text: str) -> dict:
            if "BAD" in text:
                raise KeyError(text)
            return {"upper": text.upper()}

    class EnTone(ToneBackend):
        languages = ("en",)

    summary = generate_corpus(
        {"en": ["one sentence", "BAD sentence", "two sentence"]},
        tmp_path,
        backend=EnTone(),
        num_workers=1,
        progress=False,
        extra_columns=Upper(),
    )
    assert summary.failures == {"extra_columns_error:KeyError": 1}
    assert [r["upper"] for r in _rows(tmp_path)] == ["ONE SENTENCE", "TWO SENTENCE"]
    header = yaml.safe_load((tmp_path / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert {"name": "upper", "dtype": "string"} in header["dataset_info"]["features"]


# ------------------------------------------------------------------------------------ generation


def test_resume_skips_finished_shards_and_regenerates_identically(tmp_path: Path) -> None:
    kwargs = dict(backend=ToneBackend(), shard_size=4, num_workers=1, progress=False, seed=3)
    first = generate_japanese(GOOD, tmp_path, **kwargs)
    assert first.corpus.shards_written == 3 and first.corpus.total_examples == 12
    shards = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in (tmp_path / "data").iterdir()}
    again = generate_japanese(GOOD, tmp_path, **kwargs)
    assert again.corpus.shards_written == 0 and again.corpus.shards_skipped == 3
    assert again.filter.kept == 12 and again.corpus.generated_audio_seconds == 0
    (tmp_path / "data" / "train-00001.parquet").unlink()
    resumed = generate_japanese(GOOD, tmp_path, **kwargs)
    assert resumed.corpus.shards_written == 1 and resumed.corpus.shards_skipped == 2
    assert {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in (tmp_path / "data").iterdir()} == shards
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 3
    rows = _rows(tmp_path)
    assert [r["text"] for r in rows] == GOOD
    assert all(KATAKANA_ONLY.fullmatch(r["ctc_text"]) for r in rows)
    # max_sentences stops reading: the counts cover exactly what was used
    capped = generate_japanese(GOOD, tmp_path / "capped", max_sentences=5, **kwargs)
    assert capped.filter.kept == 5 and capped.corpus.total_examples == 5


@needs_espeak
def test_cli_end_to_end_with_espeak(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = [
        "詳しくはhttps://example.jp/abcを見てください。",  # unspeakable_url
        "This line is English only.",  # not_japanese
        "今日はいい天気ですね😀",  # unspeakable_emoji
        GOOD[0],  # duplicate
    ]
    lines = [*GOOD[:10], " ".join(GOOD[10:]), *bad]  # 12 good sentences, two on one line
    src = tmp_path / "ja.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--texts", str(src), "--out", str(out), "--backend", "espeak", "--shard-size", "5"]
    summary = run_cli([*argv, "--num-workers", "2"])
    printed = capsys.readouterr().out
    assert "h per wall hour" in printed and "unspeakable_url=1" in printed

    counts = {"unspeakable_url": 1, "not_japanese": 1, "unspeakable_emoji": 1, "duplicate": 1}
    assert dict(summary.filter.rejected) == counts and summary.filter.kept == 12
    assert summary.corpus.shards_written == 3 and summary.corpus.failures == {}
    assert summary.hours_per_wall_hour > 0

    files = sorted((out / "data").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in files])
    assert {"text", "ctc_text", "audio", "duration"} <= set(table.column_names)
    rows = table.to_pylist()
    assert sorted(r["text"] for r in rows) == sorted(GOOD)
    vocab = CharVocab()
    for r in rows:
        assert r["language"] == "ja" and r["duration"] > 0.3 and r["audio"]["bytes"][:4] == b"fLaC"
        assert KATAKANA_ONLY.fullmatch(r["ctc_text"]) and all(c in vocab for c in r["ctc_text"])
    from datasets import Audio, load_dataset

    ds = load_dataset(str(out), split="train", streaming=True).cast_column("audio", Audio(decode=False))
    assert sum(1 for ex in ds if ex["ctc_text"]) == 12  # the card declares ctc_text

    card = (out / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---\n")[1])
    assert {"name": "ctc_text", "dtype": "string"} in header["dataset_info"]["features"]
    assert header["license"] == "other" and header["language"] == ["ja"]
    for reason, n in counts.items():
        assert f"| {reason} | {n} |" in card
    assert "| **total rejected** | 4 |" in card and "hours per wall hour" in card
    assert re.search(r"\| 1 \| espeak-ng \| 2 \| \d+ \| 3 / 0 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", card)
    stats = json.loads((out / "filter_stats.json").read_text(encoding="utf-8"))
    assert stats["rejected"] == counts and stats["kept"] == 12
    rejected = [json.loads(x) for x in (out / "rejected_examples.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in rejected) == counts

    assert main([*argv, "--quiet"]) == 0  # rerun: every shard skipped
    assert "| 2 | espeak-ng |" in (out / "README.md").read_text(encoding="utf-8")


@needs_espeak
def test_local_parquet_dataset_input(tmp_path: Path) -> None:
    docs = [
        "今日は朝から雨が降っています。駅までの道を教えていただけませんか？",
        "Only English here.\n祖母は毎週日曜日にお菓子を焼いてくれます。",
        "大阪行きの新幹線は二十分遅れて出発しました。",
    ]
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "content": docs}), path)
    assert resolve_dataset(str(path), None) == ("parquet", [str(path)])
    assert list(iter_dataset_documents(str(path), "content")) == docs
    out = tmp_path / "out"
    summary = run_cli(
        ["--dataset", str(path), "--column", "content", "--out", str(out), "--backend", "espeak"]
        + ["--max-sentences", "3", "--num-workers", "1", "--quiet"]
    )
    assert summary.filter.documents == 2 and summary.filter.kept == 3  # the third is never read
    assert dict(summary.filter.rejected) == {"not_japanese": 1}
    rows = _rows(out)
    assert [r["text"] for r in rows] == [
        "今日は朝から雨が降っています。",
        "駅までの道を教えていただけませんか？",
        "祖母は毎週日曜日にお菓子を焼いてくれます。",
    ]
    assert rows[0]["ctc_text"] == "キョウハアサカラアメガフッテイマス"
    assert str(path) in (out / "README.md").read_text(encoding="utf-8")


def test_text_file_paragraph_mode(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("今日は朝から\n雨です。\n\n二段落目です。\n", encoding="utf-8")
    assert list(iter_text_file(path)) == ["今日は朝から\n", "雨です。\n", "二段落目です。\n"]
    assert list(iter_text_file(path, paragraphs=True)) == ["今日は朝から雨です。", "二段落目です。"]


def test_cli_help_and_backends(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--texts", "--backend", "--min-chars", "--min-japanese-ratio", "--num-workers"):
        assert flag in text
    if importlib.util.find_spec("kokoro") is None:
        with pytest.raises(BackendUnavailableError, match="kokoro"):
            make_backend("kokoro")
        if shutil.which("espeak-ng"):
            messages: list[str] = []
            assert make_backend("auto", log=messages.append).name == "espeak-ng"
            assert "Kokoro-82M unavailable" in messages[0]
