"""Offline synthetic speech corpus: sentences -> TTS -> Hugging Face parquet dataset.

    granite-tts --texts data_prep/texts --languages en,ja --out work/tts --test-fraction 0.1
    granite-tts --texts en=my_en.txt fr=my_fr.txt --out work/tts --num-workers 8
    granite-tts --dataset parquet --data-files 'texts/*.parquet' --column text --language ja --out work/tts_ja
    granite-tts --languages en --engines espeak=0.3,festival=0.7 --out work/tts_mix
    granite-tts --languages en --engines flite --test-fraction 0.05 --out work/tts_flite   # held-out engine

Data flow::

    texts per language (txt file / iterable / streamed HF dataset column)
      -> normalise whitespace, drop duplicates and over-long lines (counted)
      -> split by sha1(sentence): train / test, so no sentence is in both
      -> interleave languages round-robin, cut into shards of --shard-size sentences
      -> per shard (one worker process each, RNG = (seed, split, shard index)):
         [draw the engine (--engines mix)] -> sample voice -> backend.synthesize -> mono 16 kHz
         -> 16-bit FLAC bytes
      -> OUT/data/<split>-<index:05d>.parquet  (temp file + atomic rename)
      -> OUT/README.md dataset card, OUT/failures.jsonl

Output columns: id (str), audio (datasets.Audio(16000): {bytes: FLAC, path}), text, language, voice,
duration (float32 seconds), then ``engine`` (espeak-ng, festival, flite, kokoro, kokoro-ja) when the
backend is an engine mix (``MultiEngineBackend``: every ``--engines`` run, the CLI default), then any
``extra_columns`` (e.g. the katakana CTC target of Japanese, see ``data_prep.japanese``). Same inputs
+ seed -> byte-identical shards, whatever the worker count.

Resume: a shard is finished when its parquet file exists and its state file
``OUT/.shards/<split>-<index>.json`` carries the fingerprint of the shard's inputs (sentences, seed,
backend settings); a rerun skips those and regenerates the rest. Changing inputs only redoes the
shards whose sentences changed.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import shlex
import sys
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data_prep.shards import (
    Rejected,
    Shard,
    chunked,
    fingerprint,
    reason_counts,
    remove_unplanned_shards,
    split_bytes,
    write_rejects,
)
from data_prep.tts.backends import (
    DEFAULT_ENGINES,
    ENGINES,
    HELD_OUT_ENGINES,
    BackendUnavailableError,
    TTSBackend,
    describe_backend,
    get_backend,
    get_engines,
    parse_engine_weights,
)
from data_prep.tts.card import write_dataset_card
from data_prep.tts.corpus import SAMPLING_RATE, CorpusSummary, features

DEFAULT_TEXTS_DIR = Path(__file__).resolve().parents[1] / "texts"
"""Bundled sentences, ``<lang>.txt`` (written for this project; Apache-2.0 like the code)."""
SILENCE_PEAK = 1e-3
"""A waveform whose peak stays below this is counted as ``silent_audio``."""
FORMAT_VERSION = 1
"""Bump when the shard content format changes, so that old shards are regenerated."""


# ---------------------------------------------------------------------------------------- hooks


class ExtraColumns(Protocol):
    """Optional hook of ``generate_corpus``: more columns per example, computed in the worker.

    Must be picklable (it travels with every shard task) and deterministic. ``describe()``, when
    present, goes into the shard fingerprint, so that changing the hook's settings regenerates.
    """

    features: Mapping[str, str]
    """Column name -> ``datasets.Value`` dtype ("string", "float32", ...), in output order."""

    def __call__(self, language: str, text: str) -> Mapping[str, Any]:
        """Values of the extra columns for one sentence; raising counts the sentence as failed
        (``extra_columns_error:<Exception>``) instead of crashing the run."""
        ...


def _describe_extra(extra: ExtraColumns | None) -> Any:
    if extra is None:
        return None
    describe = getattr(extra, "describe", None)
    info = describe() if callable(describe) else {"class": type(extra).__qualname__}
    return {"features": dict(extra.features), "hook": info}


# ---------------------------------------------------------------------------------------- inputs


def read_sentences(path: str | os.PathLike) -> Iterator[str]:
    """Lines of a UTF-8 text file (one sentence per line; blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line


def iter_dataset_texts(
    dataset: str,
    column: str,
    *,
    config: str | None = None,
    split: str = "train",
    data_files: str | list[str] | None = None,
) -> Iterator[str]:
    """Stream one text column of a Hugging Face dataset: a hub id (``HuggingFaceFW/fineweb-2``) or a
    local builder (``parquet``, ``json``, ``text``, ``csv``) with ``data_files``."""
    import datasets

    ds = datasets.load_dataset(dataset, config, split=split, data_files=data_files, streaming=True)
    for row in ds:
        value = row[column]
        if isinstance(value, str):
            yield value


def resolve_text_specs(specs: Iterable[str], languages: Iterable[str] | None = None) -> dict[str, Path]:
    """``["en=a.txt", "fr=b.txt"]`` or ``["some/dir"]`` (``<lang>.txt`` files) -> {lang: path}."""
    wanted = set(languages) if languages else None
    out: dict[str, Path] = {}
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            lang, path = spec.split("=", 1)
            out[lang.strip()] = Path(path)
        elif Path(spec).is_dir():
            for p in sorted(Path(spec).glob("*.txt")):
                out[p.stem] = p
        else:
            raise ValueError(f"--texts takes LANG=PATH or a directory of <lang>.txt files, got {spec!r}")
    for lang, path in out.items():
        if not path.is_file():
            raise FileNotFoundError(f"text file for {lang!r} not found: {path}")
    if wanted is not None:
        missing = wanted - set(out)
        if missing:
            raise ValueError(f"no text file for language(s) {sorted(missing)}; have {sorted(out)}")
        out = {k: v for k, v in out.items() if k in wanted}
    return out


def normalize_sentence(text: str) -> str:
    """NFC + collapsed whitespace: the form that is synthesised, stored and hashed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def split_of(text: str, test_fraction: float) -> str:
    """Deterministic train/test assignment from the sentence text alone."""
    if test_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "test" if h < test_fraction else "train"


def _collect(
    texts: Mapping[str, Iterable[str]],
    *,
    max_sentences_per_language: int | None,
    max_chars: int | None,
    test_fraction: float,
) -> tuple[dict[str, list[tuple[str, str]]], Counter]:
    """-> ({split: [(language, text), ...]} interleaved round-robin over languages, filtered counts)."""
    filtered: Counter = Counter()
    per_split_lang: dict[str, dict[str, list[str]]] = {}
    for lang in sorted(texts):
        seen: set[str] = set()
        kept = 0
        for raw in texts[lang]:
            if max_sentences_per_language is not None and kept >= max_sentences_per_language:
                break
            text = normalize_sentence(raw)
            if not text:
                continue
            if max_chars is not None and len(text) > max_chars:
                filtered["too_long"] += 1
                continue
            if text in seen:
                filtered["duplicate"] += 1
                continue
            seen.add(text)
            kept += 1
            per_split_lang.setdefault(split_of(text, test_fraction), {}).setdefault(lang, []).append(text)
    items: dict[str, list[tuple[str, str]]] = {}
    for split in sorted(per_split_lang, key=lambda s: (s != "train", s)):
        by_lang = per_split_lang[split]
        columns = [[(lang, t) for t in by_lang[lang]] for lang in sorted(by_lang)]
        items[split] = [x for group in itertools.zip_longest(*columns) for x in group if x is not None]
    return items, filtered


# ------------------------------------------------------------------------------------ shard work


@dataclass(frozen=True)
class _ShardTask:
    """One shard's work, sent to a worker process (so everything in it is picklable)."""

    shard: Shard
    items: tuple[tuple[str, str], ...]
    seed: int
    backend: Any
    extra_columns: ExtraColumns | None = None
    record_engine: bool = False


def records_engine(backend: Any) -> bool:
    """Whether ``backend`` mixes engines, so that the corpus gets an ``engine`` column."""
    return bool(getattr(backend, "records_engine", False))


def _column_types(extra: ExtraColumns | None, record_engine: bool) -> dict[str, str] | None:
    """Columns after the built-in ones: ``engine`` (engine mixes), then the hook's."""
    columns = {"engine": "string"} if record_engine else {}
    if extra is not None:
        if record_engine and "engine" in extra.features:
            raise ValueError("extra column 'engine' clashes with the engine column of an engine mix")
        columns.update(extra.features)
    return columns or None


def _shard_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # Independent of every other shard, so any subset can be (re)generated alone.
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def _example_id(language: str, text: str, voice_tag: str) -> str:
    return f"{language}-{hashlib.sha1(f'{text}|{voice_tag}'.encode()).hexdigest()[:12]}"


def to_flac_16k(wave: np.ndarray, sample_rate: int) -> tuple[bytes, int]:
    """Mono float waveform at any rate -> (16-bit FLAC bytes at 16 kHz, number of samples)."""
    import torch

    from granite_train.audio.io import encode_flac
    from granite_train.audio.resample import resample

    with torch.no_grad():
        wave16k = resample(
            torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), sample_rate, SAMPLING_RATE
        )
    return encode_flac(wave16k, SAMPLING_RATE), int(wave16k.shape[-1])


def _synthesize_one(backend: Any, language: str, text: str, voice) -> tuple[np.ndarray, int]:
    """Backend call + validation; raises ``Rejected(reason, detail)`` for a sentence-level failure."""
    try:
        wave, sr = backend.synthesize(text, language, voice)
    except BackendUnavailableError:
        raise
    except Exception as e:  # noqa: BLE001 - any per-sentence error is counted, not fatal
        raise Rejected(f"backend_error:{type(e).__name__}", str(e)[:500]) from e
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:  # tolerate (C, N) / (N, C) from third-party backends
        wave = wave.mean(axis=0 if wave.shape[0] < wave.shape[1] else 1)
    if wave.ndim != 1 or wave.size == 0:
        raise Rejected("empty_audio", f"shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise Rejected("nonfinite_audio", "NaN or inf samples")
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        raise Rejected("silent_audio", f"peak {float(np.abs(wave).max()):.2e}")
    if not isinstance(sr, int | np.integer) or sr <= 0:
        raise Rejected("bad_sample_rate", repr(sr))
    return wave, int(sr)


def _run_shard(task: _ShardTask, on_sentence: Callable[[float], None] | None = None) -> dict:
    """Synthesise one shard and write it; returns its state dict (also saved next to the data)."""
    t0 = time.perf_counter()
    shard = task.shard
    rng = _shard_rng(task.seed, shard.split, shard.index)
    rows: list[dict] = []
    failed: list[dict] = []
    per_language: dict[str, list[float]] = {}
    for language, text in task.items:
        voice = task.backend.sample_voice(language, rng)
        seconds = 0.0
        try:
            extra = _extra_values(task.extra_columns, language, text)
            wave, sr = _synthesize_one(task.backend, language, text, voice)
            flac, n = to_flac_16k(wave, sr)
            if n == 0:
                raise Rejected("empty_audio", "0 samples after resampling")
        except Rejected as f:
            failed.append(
                {
                    "language": language,
                    "text": text,
                    "voice": voice.tag,
                    **({"engine": voice.backend} if task.record_engine else {}),
                    "reason": f.reason,
                    "detail": f.detail,
                }
            )
        else:
            seconds = n / SAMPLING_RATE
            example_id = _example_id(language, text, voice.tag)
            rows.append(
                {
                    "id": example_id,
                    "audio": {"bytes": flac, "path": f"{example_id}.flac"},
                    "text": text,
                    "language": language,
                    "voice": voice.tag,
                    "duration": seconds,
                    **({"engine": voice.backend} if task.record_engine else {}),
                    **extra,
                }
            )
            stats = per_language.setdefault(language, [0, 0.0])
            stats[0] += 1
            stats[1] += seconds
        if on_sentence is not None:
            on_sentence(seconds)

    import pyarrow as pa

    table = pa.Table.from_pylist(
        rows, schema=features(_column_types(task.extra_columns, task.record_engine)).arrow_schema
    )
    state = shard.new_state(
        FORMAT_VERSION,
        num_sentences=len(task.items),
        num_examples=len(rows),
        audio_seconds=sum(r["duration"] for r in rows),
        per_language={k: {"examples": v[0], "seconds": v[1]} for k, v in sorted(per_language.items())},
        failures=reason_counts(failed),
        failed=failed,
    )
    shard.write(state, table)
    state["wall_seconds"] = time.perf_counter() - t0
    return state


def _extra_values(extra: ExtraColumns | None, language: str, text: str) -> dict[str, Any]:
    if extra is None:
        return {}
    try:
        values = dict(extra(language, text))
    except Exception as e:  # noqa: BLE001 - a per-sentence error is counted, not fatal
        raise Rejected(f"extra_columns_error:{type(e).__name__}", str(e)[:500]) from e
    if set(values) != set(extra.features):
        raise ValueError(f"extra_columns returned {sorted(values)}, declared {sorted(extra.features)}")
    return values


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; also keeps resampling bit-identical across runs


# ------------------------------------------------------------------------------------------- API


def generate_corpus(
    texts: Mapping[str, str | os.PathLike | Iterable[str]],
    out_dir: str | os.PathLike,
    *,
    backend: TTSBackend | str = "espeak",
    seed: int = 0,
    shard_size: int = 500,
    test_fraction: float = 0.0,
    splits: Sequence[str] | None = None,
    max_sentences_per_language: int | None = None,
    max_chars: int | None = 500,
    num_workers: int | None = None,
    progress: bool = True,
    license: str = "other",
    command: str | None = None,
    sources: Mapping[str, str] | None = None,
    extra_columns: ExtraColumns | None = None,
) -> CorpusSummary:
    """Synthesise ``texts`` into a parquet dataset under ``out_dir`` (see the module docstring).

    Args:
        texts: language -> a text file path (one sentence per line) or an iterable of sentences
            (e.g. ``iter_dataset_texts(...)``; read lazily up to ``max_sentences_per_language``).
        out_dir: dataset folder: ``data/<split>-XXXXX.parquet``, ``README.md``, ``failures.jsonl``.
        backend: a ``TTSBackend`` (a ``MultiEngineBackend`` for an engine mix, which adds the
            ``engine`` column) or a name for ``get_backend`` ("espeak", "festival", "flite", "kokoro",
            "kokoro-ja").
        seed: engines, voices, rates and pitches of shard k come from (seed, split, k) only.
        shard_size: sentences per shard (the unit of parallelism and of resume).
        test_fraction: share of sentences (by sha1 of the text) put in the ``test`` split.
        splits: synthesise only these splits (e.g. ``["test"]``: the same held-out sentences read
            by another engine); ``None`` synthesises every split. The split of a sentence does not
            depend on this, so a test-only corpus holds exactly the test sentences of a full one.
        max_sentences_per_language: keep the first N distinct sentences of each language.
        max_chars: sentences longer than this are dropped and counted as ``too_long``.
        num_workers: processes; default the backend's ``default_num_workers`` or all cores.
        progress: tqdm bar and a final throughput line on stdout.
        license: ``license:`` of the dataset card (the license of the source texts).
        command: the command line recorded in the card.
        sources: language -> human-readable origin of its texts, for the card.
        extra_columns: optional hook adding columns to every example (see ``ExtraColumns``); it
            runs in the workers, and its ``describe()`` is part of the shard fingerprint.
    """
    t0 = time.perf_counter()
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    if isinstance(backend, str):
        backend = get_backend(backend)
    unsupported = sorted(set(texts) - set(backend.languages))
    if unsupported:
        raise ValueError(
            f"backend {backend.name!r} cannot speak {unsupported}; it knows {list(backend.languages)}"
        )
    record_engine = records_engine(backend)
    column_types = _column_types(extra_columns, record_engine)
    features(column_types)  # fail early on a clash with a built-in column
    out = Path(out_dir)
    sources = dict(sources or {})
    iterables: dict[str, Iterable[str]] = {}
    for lang, src in texts.items():
        if isinstance(src, str | os.PathLike):
            sources.setdefault(lang, str(src))
            iterables[lang] = read_sentences(src)
        else:
            sources.setdefault(lang, "in-memory sentences")
            iterables[lang] = src
    items, filtered = _collect(
        iterables,
        max_sentences_per_language=max_sentences_per_language,
        max_chars=max_chars,
        test_fraction=test_fraction,
    )

    if splits is not None:
        unknown = sorted(set(splits) - {"train", "test"})
        if unknown:
            raise ValueError(f"splits must be a subset of ['test', 'train'], got {unknown}")
        if "test" in splits and test_fraction <= 0:
            raise ValueError("splits asks for 'test' but test_fraction is 0 (no sentence is in it)")
        items = {split: rows for split, rows in items.items() if split in splits}
    if not any(items.values()):
        raise ValueError(f"no sentences to synthesise in {sorted(texts)} (empty sources?)")
    backend_info = describe_backend(backend)
    extra_info = _describe_extra(extra_columns)
    tasks: list[_ShardTask] = []
    for split, split_items in items.items():
        for index, chunk in enumerate(map(tuple, chunked(split_items, shard_size))):
            parts = [FORMAT_VERSION, seed, split, index, SAMPLING_RATE, backend_info, chunk]
            if extra_info is not None:  # without the hook, fingerprints are those of older versions
                parts.append(extra_info)
            shard = Shard(out, split, index, fingerprint(parts))
            tasks.append(_ShardTask(shard, chunk, seed, backend, extra_columns, record_engine))
    remove_unplanned_shards(out, {t.shard.name for t in tasks}, splits)

    states: dict[str, dict] = {}
    pending: list[_ShardTask] = []
    for task in tasks:
        state = task.shard.done()
        if state is not None:
            states[task.shard.name] = state
        else:
            pending.append(task)
    skipped = len(tasks) - len(pending)

    if num_workers is None:
        num_workers = getattr(backend, "default_num_workers", None) or available_cores()
    num_workers = max(1, min(num_workers, len(pending)))
    generated = _run_pending(pending, num_workers, progress)
    states.update(generated)

    ordered = [states[t.shard.name] for t in tasks]
    num_examples: dict[str, int] = {}
    per_language: dict[str, dict[str, int]] = {}
    seconds_per_language: dict[str, dict[str, float]] = {}
    failures: Counter = Counter()
    for st in ordered:
        num_examples[st["split"]] = num_examples.get(st["split"], 0) + st["num_examples"]
        for lang, v in st["per_language"].items():
            per_language.setdefault(st["split"], {}).setdefault(lang, 0)
            per_language[st["split"]][lang] += v["examples"]
            seconds_per_language.setdefault(st["split"], {}).setdefault(lang, 0.0)
            seconds_per_language[st["split"]][lang] += v["seconds"]
        failures.update(st["failures"])
    summary = CorpusSummary(
        out_dir=out,
        num_examples=num_examples,
        num_examples_per_language=per_language,
        audio_seconds=sum(st["audio_seconds"] for st in ordered),
        generated_audio_seconds=sum(st["audio_seconds"] for st in generated.values()),
        wall_seconds=0.0,
        shards_written=len(generated),
        shards_skipped=skipped,
        failures=dict(sorted(failures.items())),
        filtered=dict(sorted(filtered.items())),
    )
    write_rejects(out / "failures.jsonl", ((t.shard.name, st["failed"]) for t, st in zip(tasks, ordered)))
    write_dataset_card(
        out,
        summary=summary,
        seconds_per_language=seconds_per_language,
        split_bytes=split_bytes(out, ordered),
        backend_info=backend_info,
        sources=sources,
        seed=seed,
        shard_size=shard_size,
        test_fraction=test_fraction,
        max_sentences_per_language=max_sentences_per_language,
        license=license,
        command=command,
        extra_columns=column_types,
    )
    summary.wall_seconds = time.perf_counter() - t0
    if progress:
        print(summary.format(), flush=True)
    return summary


def available_cores() -> int:
    """CPU cores this process may run on: the default number of worker processes."""
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroup CPU pinning
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _run_pending(pending: list[_ShardTask], num_workers: int, progress: bool) -> dict[str, dict]:
    from tqdm.auto import tqdm

    results: dict[str, dict] = {}
    if not pending:
        return results
    total = sum(len(t.items) for t in pending)
    bar = tqdm(total=total, unit="sent", desc="tts", disable=not progress, dynamic_ncols=True)
    audio = 0.0
    t0 = time.perf_counter()

    def advance(n_sentences: int, seconds: float) -> None:
        nonlocal audio
        audio += seconds
        bar.update(n_sentences)
        elapsed = time.perf_counter() - t0
        if elapsed > 0:
            bar.set_postfix_str(f"{audio / elapsed:.1f}x rt, {audio / 3600:.2f} h", refresh=False)

    try:
        if num_workers == 1:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # same arithmetic as in the worker processes
            try:
                for task in pending:
                    results[task.shard.name] = _run_shard(task, on_sentence=lambda s: advance(1, s))
            finally:
                torch.set_num_threads(threads)
        else:
            import multiprocessing as mp

            # forkserver: workers start from a clean process (no inherited torch/OpenMP threads).
            ctx = mp.get_context("forkserver")
            # Import the heavy modules (torch, datasets) once in the server, not in every worker.
            ctx.set_forkserver_preload(["data_prep.tts.backends", "granite_train.audio.io", "datasets"])
            with ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_worker_init) as pool:
                futures = {pool.submit(_run_shard, task): task for task in pending}
                try:
                    remaining = set(futures)
                    while remaining:
                        done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                        for fut in done:
                            state = fut.result()  # re-raises BackendUnavailableError & co
                            task = futures[fut]
                            results[task.shard.name] = state
                            advance(len(task.items), state["audio_seconds"])
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return results


# ------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="granite-tts",
        description="Synthesise a speech corpus (Hugging Face parquet + dataset card) from text with "
        "a mix of offline TTS engines (espeak-ng, Festival; Flite for held-out test sets; Kokoro where "
        "its weights are installed). Re-runnable: finished shards are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("text source (default: the bundled data_prep/texts/<lang>.txt)")
    src.add_argument(
        "--texts",
        nargs="+",
        metavar="LANG=PATH|DIR",
        help="text files, one sentence per line: en=a.txt fr=b.txt ..., or a directory of <lang>.txt",
    )
    src.add_argument("--languages", help="comma-separated subset of languages to use, e.g. en,ja")
    src.add_argument("--dataset", help="HF dataset id or builder (parquet, json, csv, text), streamed")
    src.add_argument("--config", help="dataset config name")
    src.add_argument("--split", default="train", help="dataset split to read texts from")
    src.add_argument("--column", default="text", help="dataset column holding the text")
    src.add_argument("--data-files", nargs="+", help="data_files for a local builder (globs allowed)")
    src.add_argument("--language", help="language of the --dataset texts (ISO 639-1)")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument(
        "--engines",
        metavar="ENGINE=WEIGHT,...",
        help=f"engine mix, drawn per sentence from the seed; engines: {', '.join(ENGINES)} (flite is the "
        "held-out test engine); a language only some engines speak is spread over those, weights "
        f"renormalised; adds an `engine` column. The recommended training mix: {DEFAULT_ENGINES}. "
        "Neither --engines nor --backend: espeak alone",
    )
    p.add_argument(
        "--backend",
        choices=list(ENGINES),
        help="a single engine instead of a mix: the corpus layout of granite-tts before --engines "
        "(no `engine` column; espeak output byte-identical to it)",
    )
    p.add_argument("--festival-voices", help="comma-separated Festival voices; None: every installed voice")
    p.add_argument("--flite-voices", help="comma-separated Flite voices; None: kal16, awb, rms, slt")
    p.add_argument("--kokoro-dir", help="local Kokoro-82M folder (config.json, kokoro-v1_0.pth, voices/)")
    p.add_argument("--kokoro-device", default="cpu", help="torch device for Kokoro (cpu, cuda)")
    p.add_argument(
        "--ja-reading",
        default="auto",
        choices=["auto", "sudachi", "none"],
        help="espeak Japanese: speak the katakana reading (sudachi) or the raw text (none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=500, help="sentences per parquet shard")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share of sentences in the test split")
    p.add_argument(
        "--splits",
        help="comma-separated splits to synthesise (train,test); default both. `--splits test` with "
        "the same --test-fraction and texts reads exactly another corpus's test sentences",
    )
    p.add_argument("--max-sentences-per-language", type=int, help="first N distinct sentences per language")
    p.add_argument("--max-chars", type=int, default=500, help="drop (and count) longer sentences")
    p.add_argument("--num-workers", type=int, help="worker processes (default: all cores; Kokoro: 1)")
    p.add_argument(
        "--license", help="dataset card license (default: apache-2.0 for bundled texts, else other)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def _engine_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    def names(value: str | None) -> tuple[str, ...] | None:
        return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None

    return {
        "espeak": {"ja_reading": args.ja_reading},
        "kokoro": {"model_dir": args.kokoro_dir, "device": args.kokoro_device},
        "festival": {"voices": names(args.festival_voices)},
        "flite": {"voices": names(args.flite_voices)},
    }


def backend_from_args(args: argparse.Namespace) -> TTSBackend:
    """The backend the CLI options ask for: one engine (``--backend``) or a mix (``--engines``)."""
    options = _engine_options(args)
    if args.backend and args.engines:
        raise ValueError("give --engines (a mix) or --backend (one engine), not both")
    if args.backend:
        return get_backend(args.backend, **options.get(args.backend, {}))
    if not args.engines:  # the default stays espeak alone: existing corpora and their commands unchanged
        return get_backend("espeak", **options.get("espeak", {}))
    spec = args.engines
    weights = parse_engine_weights(spec)
    held_out = [e for e in weights if e in HELD_OUT_ENGINES]
    if held_out and len(weights) > 1:
        print(
            f"warning: {', '.join(held_out)} is the held-out test engine; mixing it with training "
            "engines puts its voices into the same corpus",
            file=sys.stderr,
        )
    return get_engines(weights, {k: v for k, v in options.items() if k in weights})


def main(argv: list[str] | None = None) -> int:
    """``granite-tts`` entry point (``--help`` for the options)."""
    run_cli(argv)
    return 0


def run_cli(argv: list[str] | None = None) -> CorpusSummary:
    """Parse ``argv`` and generate; returns the summary (``main`` returns an exit code)."""
    args = build_parser().parse_args(argv)
    languages = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages else None
    texts: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if args.dataset:
        if not args.language:
            raise SystemExit("--dataset needs --language (the language of its texts)")
        texts[args.language] = iter_dataset_texts(
            args.dataset, args.column, config=args.config, split=args.split, data_files=args.data_files
        )
        desc = f"{args.dataset}" + (f" ({args.config})" if args.config else "")
        desc += f", split {args.split}, column {args.column!r}"
        if args.data_files:
            desc += f", data_files {args.data_files}"
        sources[args.language] = desc
    if args.texts or not args.dataset:
        try:
            paths = resolve_text_specs(args.texts or [str(DEFAULT_TEXTS_DIR)], languages)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(str(e)) from e
        for lang, path in paths.items():
            if lang in texts:
                raise SystemExit(f"language {lang!r} given twice (--texts and --dataset)")
            texts[lang] = path
    bundled = all(isinstance(v, Path) and v.resolve().parent == DEFAULT_TEXTS_DIR for v in texts.values())
    license = args.license or ("apache-2.0" if bundled else "other")

    try:
        backend = backend_from_args(args)
    except (BackendUnavailableError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    command = "granite-tts " + shlex.join(sys.argv[1:] if argv is None else argv)
    return generate_corpus(
        texts,
        args.out,
        backend=backend,
        seed=args.seed,
        shard_size=args.shard_size,
        test_fraction=args.test_fraction,
        splits=[x.strip() for x in args.splits.split(",") if x.strip()] if args.splits else None,
        max_sentences_per_language=args.max_sentences_per_language,
        max_chars=args.max_chars,
        num_workers=args.num_workers,
        progress=not args.quiet,
        license=license,
        command=command,
        sources=sources,
    )


if __name__ == "__main__":
    sys.exit(main())
