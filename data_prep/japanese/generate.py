"""Japanese synthetic speech at scale: streamed web text -> sentences -> TTS -> parquet shards.

    python -m data_prep.japanese --out work/tts_ja                                  # bundled ja.txt
    python -m data_prep.japanese --dataset HuggingFaceFW/fineweb-2 --config jpn_Jpan \\
        --max-sentences 2000000 --backend kokoro --kokoro-device cuda --out work/fineweb2_ja

granite-4.0-1b-speech trained on 9.6k h of Fineweb-2 Japanese text read by Kokoro-82M
(``../shared/RECIPE.md``, "Japanese"). Data flow::

    documents, read lazily (text file lines / paragraphs, or a streamed dataset column)
      -> sentences.SentenceFilter: split on 。．！？!? and newlines, filter, count every drop
      -> data_prep.tts.generate.generate_corpus(language "ja", extra_columns=JapaneseTargets()):
         shards of --shard-size sentences, one worker process each, voices from (seed, split, shard)
      -> OUT/data/<split>-XXXXX.parquet: id, audio, text (original script, for stage 2), language,
         voice, duration, ctc_text (katakana reading = the stage-1 CTC target)
      -> OUT/README.md (dataset card + filter counts + throughput), failures.jsonl,
         filter_stats.json, rejected_examples.jsonl, runs.jsonl

Resume: the filter is deterministic, so a rerun with the same input and settings plans the same
shards and ``generate_corpus`` skips the finished ones (it re-reads and re-filters the input).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.japanese.sentences import FilterStats, SentenceFilter, iter_paragraphs
from data_prep.tts.backends import BackendUnavailableError, TTSBackend, describe_backend, get_backend
from data_prep.tts.corpus import CorpusSummary
from data_prep.tts.generate import available_cores, generate_corpus, iter_dataset_texts

LANGUAGE = "ja"
BUNDLED_TEXT = Path(__file__).resolve().parents[1] / "texts" / "ja.txt"

# -------------------------------------------------------------------------------------- targets


@functools.lru_cache(maxsize=4)
def _target_builder(split_mode: str, dict_type: str):
    # One per worker process (the hook is unpickled once per shard; Sudachi loads in ~0.5 s).
    from granite_train.text.japanese import KatakanaConverter
    from granite_train.text.targets import CTCTargetBuilder
    from granite_train.text.vocab import CharVocab

    return CTCTargetBuilder(CharVocab(), japanese=KatakanaConverter(split_mode, dict_type))


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class JapaneseTargets:
    """``generate_corpus`` hook adding ``ctc_text``: the katakana reading that the training
    pipeline's ``CTCTargetBuilder.target_text(text, "ja")`` makes of ``text`` (lowercasing and
    punctuation stripping off). ``text`` itself stays in the original script for stage 2."""

    split_mode: str = "C"
    dict_type: str = "core"

    features = {"ctc_text": "string"}

    def __call__(self, language: str, text: str) -> dict[str, str]:
        return {"ctc_text": _target_builder(self.split_mode, self.dict_type).target_text(text, language)}

    def describe(self) -> dict[str, Any]:
        # Part of the shard fingerprint: a new Sudachi dictionary regenerates the targets.
        return {
            "ctc_text": "CTCTargetBuilder.target_text(text, language) (KatakanaConverter for ja)",
            "split_mode": self.split_mode,
            "dict_type": self.dict_type,
            "sudachipy": _version("sudachipy"),
            "sudachidict": _version(f"sudachidict-{self.dict_type}"),
        }


# --------------------------------------------------------------------------------------- inputs


def iter_text_file(path: str | os.PathLike, paragraphs: bool = False) -> Iterator[str]:
    """Documents of a UTF-8 text file, read lazily: one per line (a sentence or a whole document),
    or with ``paragraphs`` one per blank-line separated block, hard-wrapped lines joined."""
    with open(path, encoding="utf-8") as f:
        if paragraphs:
            yield from iter_paragraphs(f)
        else:
            for line in f:
                if line.strip():
                    yield line


_BUILDER_BY_SUFFIX = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text"}


def resolve_dataset(dataset: str, data_files: list[str] | None) -> tuple[str, list[str] | None]:
    """A local file (``texts.parquet``, ``docs.jsonl``...) -> (builder, [file]); anything else
    (hub id, builder name with data_files, local dataset folder) is passed on unchanged."""
    path = Path(dataset)
    if data_files is None and path.is_file():
        builder = _BUILDER_BY_SUFFIX.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"cannot tell the format of {dataset!r}; use --dataset BUILDER --data-files")
        return builder, [str(path)]
    return dataset, data_files


def iter_dataset_documents(
    dataset: str,
    column: str = "text",
    *,
    config: str | None = None,
    split: str = "train",
    data_files: list[str] | None = None,
) -> Iterator[str]:
    """Stream one text column of a dataset (``datasets`` streaming: nothing is downloaded
    beyond what is read). ``dataset``: a hub id, a builder name with ``data_files``, a local
    dataset folder, or a single parquet/jsonl/csv/txt file."""
    builder, files = resolve_dataset(dataset, data_files)
    yield from iter_dataset_texts(builder, column, config=config, split=split, data_files=files)


def describe_dataset(dataset: str, column: str, config: str | None, split: str, data_files) -> str:
    desc = dataset + (f" ({config})" if config else "") + f", split {split}, column {column!r}"
    return desc + (f", data_files {data_files}" if data_files else "")


def default_license(dataset: str | None, texts: str | os.PathLike | None) -> str:
    """The card's license: that of the source texts where known."""
    if dataset and "fineweb-2" in dataset.lower():
        return "odc-by"  # Fineweb-2 is ODC-By 1.0 (and subject to CommonCrawl's terms of use)
    if texts is not None and Path(texts).resolve() == BUNDLED_TEXT:
        return "apache-2.0"
    return "other"


# -------------------------------------------------------------------------------------- backend


def make_backend(
    name: str = "auto",
    *,
    kokoro_dir: str | None = None,
    kokoro_device: str = "cpu",
    ja_reading: str = "auto",
    log=print,
) -> TTSBackend:
    """ "kokoro", "espeak", or "auto" (Kokoro-82M when it can speak Japanese here, else espeak-ng).

    Kokoro is tried with one short sentence, so that a missing ``misaki[ja]`` or missing weights
    show up now rather than in a worker. Raises ``BackendUnavailableError`` with install help.
    """
    if name not in ("auto", "kokoro", "espeak"):
        raise ValueError(f"backend must be auto, kokoro or espeak, got {name!r}")
    if name in ("auto", "kokoro"):
        try:
            backend = get_backend("kokoro", model_dir=kokoro_dir, device=kokoro_device)
            _probe(backend)
            return backend
        except BackendUnavailableError as e:
            if name == "kokoro":
                raise
            log(f"Kokoro-82M unavailable, using espeak-ng ja: {str(e).splitlines()[0][:300]}")
    return get_backend("espeak", ja_reading=ja_reading)


def _probe(backend: TTSBackend) -> None:
    import numpy as np

    voice = backend.sample_voice(LANGUAGE, np.random.default_rng(0))
    try:
        wave, _ = backend.synthesize("こんにちは。", LANGUAGE, voice)
    except BackendUnavailableError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the backend is not usable
        raise BackendUnavailableError(f"{backend.name} failed on a test sentence: {e!r}") from e
    if len(wave) == 0:
        raise BackendUnavailableError(f"{backend.name} produced no audio for a test sentence")


# ---------------------------------------------------------------------------------------- run


@dataclass
class JapaneseSummary:
    """What ``generate_japanese`` did."""

    corpus: CorpusSummary
    filter: FilterStats
    wall_seconds: float
    """The whole run: reading and filtering the text, synthesis, writing."""
    num_workers: int
    backend: str

    @property
    def hours_per_wall_hour(self) -> float:
        """Hours of audio generated by this run per hour of wall-clock time."""
        return self.corpus.generated_audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "num_workers": self.num_workers,
            "cpu_cores": available_cores(),
            "shards_written": self.corpus.shards_written,
            "shards_skipped": self.corpus.shards_skipped,
            "examples": self.corpus.total_examples,
            "corpus_hours": round(self.corpus.hours, 6),
            "generated_hours": round(self.corpus.generated_audio_seconds / 3600, 6),
            "wall_seconds": round(self.wall_seconds, 3),
            "hours_per_wall_hour": round(self.hours_per_wall_hour, 3),
            "filter": self.filter.as_dict(),
            "synthesis_failures": dict(self.corpus.failures),
        }

    def format(self) -> str:
        gen_h = self.corpus.generated_audio_seconds / 3600
        if self.corpus.shards_written:
            rate = (
                f"throughput: {gen_h:.4f} h of audio in {self.wall_seconds:.1f} s wall = "
                f"{self.hours_per_wall_hour:.1f} h per wall hour ({self.backend}, {self.num_workers} workers, "
                f"{available_cores()} cores)"
            )
        else:
            rate = f"throughput: nothing to generate (all {self.corpus.shards_skipped} shards already done)"
        return "\n".join([self.filter.format(), rate])


def _kept_texts(
    documents: Iterable[str], sentence_filter: SentenceFilter, max_sentences: int | None, progress: bool
) -> Iterator[str]:
    """The filtered sentences, read lazily; a tqdm bar over the documents while reading."""
    from tqdm.auto import tqdm

    bar = tqdm(documents, unit="doc", desc="text", disable=not progress, dynamic_ncols=True)
    try:
        n = 0
        for text, _reading in sentence_filter.iter_documents(bar):
            yield text
            n += 1
            if max_sentences is not None and n >= max_sentences:
                break  # before reading on: the counts cover exactly what was used
            if n % 256 == 0:
                bar.set_postfix_str(f"{n} sentences kept", refresh=False)
    finally:
        bar.set_postfix_str(f"{sentence_filter.stats.kept} sentences kept")
        bar.close()


def generate_japanese(
    documents: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    sentence_filter: SentenceFilter | None = None,
    backend: TTSBackend | str = "espeak",
    max_sentences: int | None = None,
    seed: int = 0,
    shard_size: int = 500,
    test_fraction: float = 0.0,
    num_workers: int | None = None,
    progress: bool = True,
    license: str = "other",
    command: str | None = None,
    source: str = "in-memory documents",
    targets: JapaneseTargets | None = None,
) -> JapaneseSummary:
    """Split, filter and synthesise Japanese ``documents`` into a parquet speech dataset.

    Args:
        documents: texts read lazily (lines of a file, dataset rows); each is split into sentences.
        out_dir: the dataset folder (see the module docstring for what is written).
        sentence_filter: splitting/filter settings; a default ``SentenceFilter()`` if None. Its
            ``stats`` hold the counts afterwards.
        backend: a ``TTSBackend`` or a name for ``get_backend`` ("espeak", "kokoro").
        max_sentences: stop reading after this many kept sentences.
        seed, shard_size, test_fraction, num_workers, license, command: as ``generate_corpus``.
        progress: tqdm bars (text, then synthesis) and the summary lines on stdout.
        source: where the documents come from, for the dataset card.
        targets: the ``ctc_text`` hook; default ``JapaneseTargets()``.
    """
    t0 = time.perf_counter()
    sentence_filter = sentence_filter if sentence_filter is not None else SentenceFilter()
    targets = targets if targets is not None else JapaneseTargets()
    if isinstance(backend, str):
        backend = get_backend(backend)
    out = Path(out_dir)
    if max_sentences is not None and max_sentences < 1:
        raise ValueError("max_sentences must be >= 1")
    if num_workers is None:
        num_workers = getattr(backend, "default_num_workers", None) or available_cores()
    texts = _kept_texts(documents, sentence_filter, max_sentences, progress)
    try:
        corpus = generate_corpus(
            {LANGUAGE: texts},
            out,
            backend=backend,
            seed=seed,
            shard_size=shard_size,
            test_fraction=test_fraction,
            max_chars=None,  # the sentence filter has applied its own limits
            num_workers=num_workers,
            progress=progress,
            license=license,
            command=command,
            sources={LANGUAGE: f"{source}; split into sentences and filtered (see below)"},
            extra_columns=targets,
        )
    except ValueError as e:
        if sentence_filter.stats.kept == 0:
            raise ValueError(f"no sentence passed the filter. {sentence_filter.stats.format()}") from e
        raise
    for reason, n in corpus.filtered.items():  # nothing expected: same normalisation, no limits
        sentence_filter.stats.rejected[reason] += n
    summary = JapaneseSummary(
        corpus=corpus,
        filter=sentence_filter.stats,
        wall_seconds=0.0,
        num_workers=max(1, min(num_workers, corpus.shards_written or 1)),
        backend=str(describe_backend(backend).get("name", backend.name)),
    )
    summary.wall_seconds = time.perf_counter() - t0
    _write_reports(out, summary, sentence_filter)
    if progress:
        print(summary.format(), flush=True)
    return summary


def _write_reports(out: Path, summary: JapaneseSummary, sentence_filter: SentenceFilter) -> None:
    stats = sentence_filter.stats
    (out / "filter_stats.json").write_text(
        json.dumps({"settings": sentence_filter.describe(), **stats.as_dict()}, ensure_ascii=False, indent=1)
        + "\n",
        encoding="utf-8",
    )
    with open(out / "rejected_examples.jsonl", "w", encoding="utf-8") as f:
        for reason, texts in sorted(stats.examples.items()):
            for text in texts:
                f.write(json.dumps({"reason": reason, "text": text}, ensure_ascii=False) + "\n")
    runs_path = out / "runs.jsonl"
    with open(runs_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(summary.as_dict(), ensure_ascii=False) + "\n")
    runs = [json.loads(line) for line in runs_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    _append_card_section(out / "README.md", summary, sentence_filter, runs)


def _append_card_section(
    card: Path, summary: JapaneseSummary, sentence_filter: SentenceFilter, runs: list[dict]
) -> None:
    stats = sentence_filter.stats
    lines = [
        "",
        "## Japanese text and targets",
        "",
        "- `text`: the sentence in its original script (kanji and kana), for stage 2 (LLM targets).",
        "- `ctc_text`: its katakana reading (`granite_train.text` KatakanaConverter via SudachiPy), the "
        "stage-1 CTC target; what `CTCTargetBuilder.target_text(text, 'ja')` gives, so a pipeline "
        "can read either column.",
        "",
        "Sentence filter (`data_prep/japanese/sentences.py`): "
        + ", ".join(f"{k}={json.dumps(v)}" for k, v in sentence_filter.describe().items()),
        "",
        f"Input: {stats.documents} documents -> {stats.sentences} sentences -> {stats.kept} kept "
        f"({stats.kept_chars} characters). Rejected sentences per reason (the first of each are in "
        "`rejected_examples.jsonl`):",
        "",
        "| reason | sentences |",
        "|---|---:|",
        *(f"| {reason} | {n} |" for reason, n in stats.as_dict()["rejected"].items()),
        f"| **total rejected** | {stats.total_rejected} |",
        "",
        "## Generation runs",
        "",
        "Timings differ from run to run (everything above does not); one row per run, from `runs.jsonl`.",
        "",
        "| run | backend | workers | cores | shards written / skipped | hours generated | wall s "
        "| hours per wall hour |",
        "|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['backend']} | {r['num_workers']} | {r['cpu_cores']} | {r['shards_written']} / "
            f"{r['shards_skipped']} | {r['generated_hours']:.4f} | {r['wall_seconds']:.1f} "
            f"| {r['hours_per_wall_hour']:.1f} |"
        )
    with open(card, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def take_documents(documents: Iterable[str], skip: int = 0, limit: int | None = None) -> Iterator[str]:
    """Documents ``skip .. skip + limit`` of a stream (to cut a big corpus into parts)."""
    stop = None if limit is None else skip + limit
    return itertools.islice(documents, skip, stop)
