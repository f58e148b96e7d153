"""Text-to-speech backends for the synthetic corpus generator.

A backend turns ``(text, language, voice)`` into a mono float32 waveform at the backend's own
sample rate; the generator resamples to 16 kHz. Two backends:

- ``EspeakBackend``: espeak-ng through a subprocess. Offline, fast (hundreds of times real time
  per core), robotic. Voice variety comes from the regional voices, the ``+variant`` voices
  (``en-us+f3``, ``de+m2``, ``fr+klatt``...), speaking rate, pitch and word gap.
- ``KokoroBackend``: Kokoro-82M (``pip install kokoro``), neural and far more natural, 24 kHz.
  Used only where the package and the weights are installed locally; never downloads.

Backends must be picklable: the generator sends them to worker processes. Anything heavy (a model,
a tokenizer) is created lazily inside the worker.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
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


# ------------------------------------------------------------------------------------------ factory

BACKENDS = {"espeak": EspeakBackend, "espeak-ng": EspeakBackend, "kokoro": KokoroBackend}


def get_backend(name: str, **kwargs: Any) -> TTSBackend:
    """Build a backend by name ("espeak" or "kokoro"); kwargs go to its constructor."""
    try:
        cls = BACKENDS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown TTS backend {name!r}; choose from {sorted(set(BACKENDS))}") from None
    return cls(**kwargs)


__all__ = [
    "BACKENDS",
    "ESPEAK_VARIANTS",
    "ESPEAK_VOICES",
    "KOKORO_VOICES",
    "BackendUnavailableError",
    "EspeakBackend",
    "KokoroBackend",
    "SynthesisError",
    "TTSBackend",
    "VoiceSpec",
    "describe_backend",
    "get_backend",
]
