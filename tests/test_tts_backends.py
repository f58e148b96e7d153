"""TTS backends: espeak-ng speaks every language, voices vary, errors are clear."""

from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from data_prep.tts.backends import (
    ESPEAK_VOICES,
    BackendUnavailableError,
    EspeakBackend,
    KokoroBackend,
    SynthesisError,
    TTSBackend,
    VoiceSpec,
    get_backend,
)
from data_prep.tts.generate import SAMPLING_RATE, to_flac_16k

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

SAMPLES = {
    "en": "The quick brown fox jumps over the lazy dog.",
    "fr": "Le petit chat dort au soleil près de la fenêtre.",
    "de": "Der Zug nach Berlin fährt um acht Uhr ab.",
    "es": "Mañana vamos a la playa con nuestros amigos.",
    "pt": "O comboio para Lisboa parte às nove horas.",
    "it": "Domani andiamo al mare con i nostri amici.",
    "ja": "今日は天気がいいので、公園を散歩しました。",
    "zh": "今天天气很好，我们去公园散步吧。",
    "el": "Αύριο πάμε στη θάλασσα με τους φίλους μας.",
}


@pytest.fixture(scope="module")
def espeak() -> EspeakBackend:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    return EspeakBackend()


@needs_espeak
@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_espeak_speaks_every_language(espeak: EspeakBackend, language: str) -> None:
    voice = espeak.sample_voice(language, np.random.default_rng(0))
    wave, sr = espeak.synthesize(SAMPLES[language], language, voice)
    assert wave.dtype == np.float32 and wave.ndim == 1
    flac, n = to_flac_16k(wave, sr)
    audio, sr16 = sf.read(io.BytesIO(flac), dtype="float32")
    assert sr16 == SAMPLING_RATE and audio.ndim == 1 and len(audio) == n
    duration = len(audio) / sr16
    assert 1.0 < duration < 8.0, f"{language}: implausible duration {duration:.2f}s"
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 0.01, f"{language}: nearly silent (rms {rms:.4f})"


@needs_espeak
def test_japanese_kanji_are_read_not_spelled(espeak: EspeakBackend) -> None:
    """Kanji passed as-is are spoken as the English words "Chinese letter" (much longer audio)."""
    text = "東京駅で友達と会いました。"
    voice = VoiceSpec("espeak-ng", "ja", rate=175, pitch=50)
    kana = espeak.speakable_text(text, "ja")
    assert not re.search(r"[\u4e00-\u9fff]", kana), kana  # no kanji left
    read, _ = espeak.synthesize(text, "ja", voice)
    raw = EspeakBackend(ja_reading="none")
    spelled, _ = raw.synthesize(text, "ja", voice)
    assert len(read) < 0.8 * len(spelled)


def test_kana_reading_particles_and_digits() -> None:
    pytest.importorskip("sudachipy")
    from data_prep.tts.ja_reading import to_kana

    assert to_kana("私は東京へ行きます。") == "ワタクシワトウキョウエイキマス。"
    reading = to_kana("2024年の売上は123億円でした。")
    assert "2024" in reading and "123" in reading  # espeak-ng reads numbers better than Sudachi
    assert to_kana("本当？") == "ホントウ?"


@needs_espeak
def test_every_base_voice_takes_variants(espeak: EspeakBackend) -> None:
    """espeak-ng silently ignores +variant on some aliases (en-gb, fr-fr): keep those out of the table."""
    for language, voices in ESPEAK_VOICES.items():
        for base in voices:
            plain, _ = espeak.synthesize(SAMPLES[language], language, VoiceSpec("espeak-ng", base, 175, 50))
            varied, _ = espeak.synthesize(
                SAMPLES[language], language, VoiceSpec("espeak-ng", f"{base}+f3", 175, 50)
            )
            assert len(plain) > 0
            assert len(plain) != len(varied) or not np.array_equal(plain, varied), base


@needs_espeak
def test_voice_sampling_is_seeded_and_varied(espeak: EspeakBackend) -> None:
    a = [espeak.sample_voice("en", np.random.default_rng(7)) for _ in range(3)]
    b = [espeak.sample_voice("en", np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(1)
    voices = {espeak.sample_voice("en", rng).tag for _ in range(50)}
    assert len(voices) > 40
    assert isinstance(espeak, TTSBackend)


@needs_espeak
def test_espeak_text_is_not_parsed_as_options(espeak: EspeakBackend) -> None:
    wave, _ = espeak.synthesize("--help -v xx and more", "en", VoiceSpec("espeak-ng", "en-us", 175, 50))
    assert len(wave) > 0


@needs_espeak
def test_espeak_unknown_voice_is_a_synthesis_error(espeak: EspeakBackend) -> None:
    with pytest.raises(SynthesisError, match="voice"):
        espeak.synthesize("hello", "en", VoiceSpec("espeak-ng", "xx-nonexistent", 175, 50))


def test_missing_espeak_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailableError, match="apt-get install espeak-ng"):
        EspeakBackend(executable="espeak-ng-not-installed-here")


def test_kokoro_without_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "kokoro" else real_find_spec(name, *a)
    )
    with pytest.raises(BackendUnavailableError) as err:
        KokoroBackend()
    message = str(err.value)
    assert "pip install" in message and "kokoro" in message and "Kokoro-82M" in message
    with pytest.raises(BackendUnavailableError):
        get_backend("kokoro")


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match="unknown TTS backend"):
        get_backend("mbrola")


def _fake_kokoro(monkeypatch: pytest.MonkeyPatch) -> list:
    """Install a stand-in `kokoro` module with the documented API (KModel, KPipeline yielding results)."""
    import importlib.machinery
    import importlib.util
    import sys
    import types

    import torch

    calls: list = []

    class KModel:
        def __init__(self, repo_id=None, config=None, model=None):
            calls.append(("KModel", repo_id, config, model))

        def to(self, device):
            return self

        def eval(self):
            return self

    class KPipeline:
        def __init__(self, lang_code, repo_id=None, model=True):
            calls.append(("KPipeline", lang_code))

        def __call__(self, text, voice=None, speed=1, split_pattern=r"\n+"):
            calls.append(("call", text, voice, speed))
            for _ in range(2):  # two chunks, like a long text
                yield ("graphemes", "phonemes", torch.full((2400,), 0.1))

    module = types.ModuleType("kokoro")
    module.KModel, module.KPipeline = KModel, KPipeline
    monkeypatch.setitem(sys.modules, "kokoro", module)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            importlib.machinery.ModuleSpec("kokoro", None) if name == "kokoro" else real_find_spec(name, *a)
        ),
    )
    return calls


def test_kokoro_with_local_weights(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import pickle

    calls = _fake_kokoro(monkeypatch)
    with pytest.raises(BackendUnavailableError, match="weights missing"):
        KokoroBackend(model_dir=str(tmp_path))
    (tmp_path / "voices").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "kokoro-v1_0.pth").write_bytes(b"")
    (tmp_path / "voices" / "jf_alpha.pt").write_bytes(b"")
    backend = pickle.loads(pickle.dumps(KokoroBackend(model_dir=str(tmp_path))))  # workers get a pickled copy
    assert "de" not in backend.languages and {"en", "ja", "zh"} <= set(backend.languages)
    voice = backend.sample_voice("ja", np.random.default_rng(0))
    assert voice.name.startswith("j") and 0.85 <= voice.rate <= 1.15
    voice = VoiceSpec("kokoro", "jf_alpha", rate=1.1)
    wave, sr = backend.synthesize("今日は いい 天気です。", "ja", voice)
    assert sr == 24000 and wave.dtype == np.float32 and wave.shape == (4800,)
    assert ("KPipeline", "j") in calls
    assert ("call", "今日は いい 天気です。", str(tmp_path / "voices" / "jf_alpha.pt"), 1.1) in calls
    en = backend.sample_voice("en", np.random.default_rng(3))
    backend.synthesize("Hello.", "en", en)
    assert ("KPipeline", en.name[0]) in calls and en.name[0] in "ab"
