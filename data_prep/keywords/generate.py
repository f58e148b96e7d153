"""Keyword-biased ASR data: any ASR dataset -> the same examples with a keyword list each.

    python -m data_prep.keywords generate --source work/corpus/en --split train --out work/kw/en
    python -m data_prep.keywords generate --source openslr/librispeech_asr --config clean \\
        --split train.100 --out work/kw/ls100 --max-positives 3 --num-distractors 7

Data flow::

    source (SourceSpec: hub id / parquet / audiofolder / JSONL manifest, streamed)
      -> pass 1 (skipped with --frequency-file): word counts of every transcript
         -> OUT/word_counts-<split>.tsv (reused by reruns; pass it as --frequency-file elsewhere)
      -> pass 2, shard by shard (--shard-size consecutive input records):
         check text and audio (bad records counted per reason, listed in failures.jsonl)
         -> select.KeywordSelector: positives (hard transcript words) + distractors, shuffled
         -> OUT/data/<split>-<index:05d>.parquet  (temp file + atomic rename)
      -> OUT/README.md dataset card, OUT/failures.jsonl

Output columns: ``id``, ``audio`` ({bytes, path}: the input's encoded bytes, untouched; a path-only
input is read into bytes so the output stands alone), ``text``, ``language`` (as in the input),
``keywords`` (list[str], shuffled; empty for the ``no_list_fraction`` share), ``bias_words`` (the
keywords that occur in the transcript) and ``prompt_suffix`` (``"Keywords: kw1, kw2, ..."`` or ``""``).
Other input columns are not carried over.

Resume: shard k is finished when its parquet file exists and ``OUT/.shards/<split>-<k>.json``
carries the fingerprint of (source, keyword settings, vocabulary, shard size, k). The state also
holds the input stream's position after the shard, so a rerun restarts the stream after the last
finished shard instead of reading everything again. Same source + settings + seed -> identical
shards.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.keywords.select import REASONS, KeywordConfig, KeywordSelector, Vocabulary
from data_prep.shards import (
    STATE_DIR,
    Rejected,
    Shard,
    by_split,
    fingerprint,
    finished_states,
    reason_counts,
    remove_stale_shards,
    shard_name,
    size_category,
    split_bytes,
    write_atomic,
    write_readme,
    write_rejects,
)
from granite_train.data.sources import SourceReader, SourceSpec

log = logging.getLogger(__name__)


FORMAT_VERSION = 1
"""Bump when the shard content format changes, so that old shards are regenerated."""
CHECK_AUDIO = ("header", "decode", "none")
"""``header``: libsndfile reads the header (format, frames) — catches garbage and empty files, fast;
``decode``: full decode, also catches truncated data and NaN samples; ``none``: no check."""


# --------------------------------------------------------------------------------------- results


@dataclass
class KeywordSummary:
    """What ``generate_keyword_dataset`` did. Counts cover the whole split (resumed shards
    included); ``records_processed`` and the timings only this run."""

    out_dir: Path
    split: str
    num_records: int
    """Input records read (good and bad)."""
    num_examples: int
    """Examples written."""
    shards_written: int
    shards_skipped: int
    records_processed: int
    """Input records processed by this run (0 when every shard was already done)."""
    count_seconds: float
    """Word-counting pass of this run (0 with a frequency file or a cached count)."""
    generate_seconds: float
    """Selection + writing pass of this run."""
    failures: dict[str, int] = field(default_factory=dict)
    """Records without an output example, per reason."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Keyword statistics over the written examples (see ``_aggregate``)."""

    @property
    def examples_per_second(self) -> float:
        return self.records_processed / self.generate_seconds if self.generate_seconds > 0 else 0.0

    def format(self) -> str:
        s = self.stats
        lines = [
            f"keywords: {self.out_dir} [{self.split}]  examples: {self.num_examples} of "
            f"{self.num_records} records",
            f"shards: {self.shards_written} written, {self.shards_skipped} skipped (already done)",
            f"throughput: {self.records_processed} records in {self.generate_seconds:.1f} s = "
            f"{self.examples_per_second:.0f} examples/s"
            + (f" (+ {self.count_seconds:.1f} s word counting)" if self.count_seconds else ""),
        ]
        if self.num_examples:
            lines.append(
                f"lists: {s['no_list']} without a list ({100 * s['no_list_share']:.1f}%), "
                f"{s['mean_keywords']:.2f} keywords and {s['mean_bias_words']:.2f} bias words per list; "
                "bias words by reason: " + ", ".join(f"{r}={s['reasons'].get(r, 0)}" for r in REASONS)
            )
        if self.failures:
            lines.append(
                "bad records (skipped, listed in failures.jsonl): "
                + ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items()))
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------- vocabulary pass


def iter_texts(spec: SourceSpec, max_records: int | None = None) -> Iterator[str | None]:
    """The transcripts of a source, in stream order (``None`` where a record has none).

    Local parquet is read column-wise with pyarrow (no audio bytes are touched); every other kind
    streams through ``datasets`` with audio left undecoded.
    """
    n = 0
    if spec.kind == "parquet":
        import pyarrow.parquet as pq

        from granite_train.data.sources import split_files

        for path in spec.data_files or split_files(spec.path, spec.split):
            pf = pq.ParquetFile(path)
            if spec.text_column not in pf.schema_arrow.names:
                raise KeyError(f"{path}: no column {spec.text_column!r} (have {pf.schema_arrow.names})")
            for batch in pf.iter_batches(columns=[spec.text_column], batch_size=4096):
                for text in batch.column(0).to_pylist():
                    if max_records is not None and n >= max_records:
                        return
                    n += 1
                    yield text
        return
    reader = SourceReader(spec)
    while max_records is None or n < max_records:
        record = reader.next_record()
        if record is None:
            return
        n += 1
        yield record["text"]


def _spec_dict(spec: SourceSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    for key in ("weight", "size"):  # mixture settings: no effect on the records
        d.pop(key, None)
    return d


def build_vocabulary(
    spec: SourceSpec,
    out_dir: Path,
    *,
    common_top_k: int,
    frequency_file: str | os.PathLike | None = None,
    max_records: int | None = None,
    progress: bool = True,
) -> tuple[Vocabulary, str, float]:
    """-> (vocabulary, where it came from, seconds spent counting). A count of the source is saved
    as ``OUT/word_counts-<split>.tsv`` and reused while the source is unchanged."""
    if frequency_file is not None:
        return Vocabulary.load(frequency_file, common_top_k), f"frequency file `{frequency_file}`", 0.0
    from tqdm.auto import tqdm

    path = out_dir / f"word_counts-{spec.split}.tsv"
    state_path = out_dir / STATE_DIR / f"word_counts-{spec.split}.json"
    # ensure_ascii: the JSON options are part of the digest that existing state files hold
    key = fingerprint([FORMAT_VERSION, _spec_dict(spec), max_records], sort_keys=True, ensure_ascii=True)
    desc = f"word counts of the source's `{spec.split}` transcripts (`{path.name}`)"
    try:
        if json.loads(state_path.read_text())["fingerprint"] == key and path.is_file():
            return Vocabulary.load(path, common_top_k), desc, 0.0
    except (OSError, ValueError, KeyError):
        pass
    t0 = time.perf_counter()
    vocab = Vocabulary(common_top_k=common_top_k)
    bar = tqdm(desc="counting words", unit="text", disable=not progress, dynamic_ncols=True)
    for text in iter_texts(spec, max_records):
        if isinstance(text, str):
            vocab.add(text)
        bar.update(1)
    bar.close()
    write_atomic(path, lambda p: vocab.save(p))
    write_atomic(state_path, lambda p: p.write_text(json.dumps({"fingerprint": key})))
    # Read back what was saved, so a first run and a resumed one select from the same vocabulary.
    return Vocabulary.load(path, common_top_k), desc, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ shard work


def features():
    """The output schema: the input's columns + keyword columns (audio passed through undecoded)."""
    from datasets import Audio, Features, Value

    try:
        from datasets import List
    except ImportError:  # datasets < 4
        from datasets import Sequence as List

    return Features(
        {
            "id": Value("string"),
            "audio": Audio(),
            "text": Value("string"),
            "language": Value("string"),
            "keywords": List(Value("string")),
            "bias_words": List(Value("string")),
            "prompt_suffix": Value("string"),
        }
    )


def _audio_bytes(audio: dict[str, Any]) -> tuple[bytes, str | None]:
    """The encoded bytes of a raw record's audio (read from its path if needed) and its path."""
    data, path = audio.get("bytes"), audio.get("path")
    if data:
        return bytes(data), path
    if not path:
        raise Rejected("no_audio" if data is None else "empty_audio")
    if not os.path.isfile(path):
        raise Rejected("missing_file", path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Rejected("missing_file", f"{path}: {e}") from e
    if not data:
        raise Rejected("empty_audio", path)
    return data, os.path.basename(path)


def _check_audio(data: bytes, mode: str) -> float | None:
    """Validate encoded audio; -> duration in seconds (None with ``mode="none"``)."""
    if mode == "none":
        return None
    import numpy as np
    import soundfile as sf

    if mode == "header":
        try:
            info = sf.info(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - libsndfile raises several types
            raise Rejected("decode_error", str(e)[:300]) from e
        if info.frames <= 0 or info.samplerate <= 0:
            raise Rejected("empty_audio", f"{info.frames} frames")
        return info.frames / info.samplerate
    from granite_train.audio.io import AudioDecodeError, decode_audio

    try:
        wave, sr = decode_audio(data)
    except AudioDecodeError as e:
        raise Rejected("decode_error", str(e)[:300]) from e
    if wave.size == 0:
        raise Rejected("empty_audio", "0 samples")
    if not np.isfinite(wave).all():
        raise Rejected("non_finite_samples", "NaN or inf samples")
    return wave.shape[-1] / sr


def _make_row(record: dict[str, Any], example_id: str, selector: KeywordSelector, check_audio: str):
    text = record.get("text")
    if text is None:
        raise Rejected("no_text")
    if not text.strip():
        raise Rejected("empty_text")
    data, path = _audio_bytes(record.get("audio") or {})
    seconds = _check_audio(data, check_audio)
    sel = selector.select(text, example_id)
    row = {
        "id": example_id,
        "audio": {"bytes": data, "path": path},
        "text": text,
        "language": record.get("language"),
        "keywords": sel.keywords,
        "bias_words": sel.bias_words,
        "prompt_suffix": sel.prompt_suffix,
    }
    return row, sel, seconds


def _write_shard(
    shard: Shard,
    records: list[dict[str, Any]],
    id_prefix: str,
    selector: KeywordSelector,
    check_audio: str,
    reader_state: dict | None,
    settings: dict[str, Any],
) -> dict:
    import pyarrow as pa

    rows: list[dict] = []
    failed: list[dict] = []
    reasons: Counter = Counter()
    stats = Counter()
    audio_seconds = 0.0
    for record in records:
        rid = record.get("id") or ""
        example_id = rid[len(id_prefix) :] if rid.startswith(id_prefix) else rid
        try:
            row, sel, seconds = _make_row(record, example_id, selector, check_audio)
        except Rejected as bad:
            failed.append({"id": example_id, "reason": bad.reason, "detail": bad.detail})
            continue
        rows.append(row)
        audio_seconds += seconds or 0.0
        stats["keywords"] += len(sel.keywords)
        stats["bias_words"] += len(sel.bias_words)
        stats["no_list"] += not sel.keywords
        stats["lists_without_bias_words"] += bool(sel.keywords) and not sel.bias_words
        for word in sel.bias_words:
            reasons.update(sel.reasons[word])
    table = pa.Table.from_pylist(rows, schema=features().arrow_schema)
    state = shard.new_state(
        FORMAT_VERSION,
        num_records=len(records),
        num_examples=len(rows),
        audio_seconds=audio_seconds if check_audio != "none" else None,
        languages=dict(Counter(str(r["language"]) for r in rows)),
        stats=dict(stats),
        reasons=dict(reasons),
        failures=reason_counts(failed),
        failed=failed,
        reader_state=reader_state,
        settings=settings,
    )
    shard.write(state, table)
    return state


def _aggregate(states: list[dict]) -> dict[str, Any]:
    n = sum(st["num_examples"] for st in states)
    stats: Counter = Counter()
    reasons: Counter = Counter()
    languages: Counter = Counter()
    for st in states:
        stats.update(st["stats"])
        reasons.update(st["reasons"])
        languages.update(st["languages"])
    listed = n - stats["no_list"]
    seconds = [st.get("audio_seconds") for st in states]
    return {
        "examples": n,
        "no_list": stats["no_list"],
        "no_list_share": stats["no_list"] / n if n else 0.0,
        "mean_keywords": stats["keywords"] / listed if listed else 0.0,
        "mean_bias_words": stats["bias_words"] / listed if listed else 0.0,
        "lists_without_bias_words": stats["lists_without_bias_words"],
        "reasons": dict(reasons),
        "languages": dict(sorted(languages.items())),
        "audio_seconds": None if any(s is None for s in seconds) else sum(seconds),
    }


# ------------------------------------------------------------------------------------------- API


def generate_keyword_dataset(
    source: SourceSpec,
    out_dir: str | os.PathLike,
    *,
    config: KeywordConfig | None = None,
    frequency_file: str | os.PathLike | None = None,
    shard_size: int = 2000,
    check_audio: str = "header",
    max_records: int | None = None,
    progress: bool = True,
    license: str = "other",
    command: str | None = None,
) -> KeywordSummary:
    """Write ``source`` with keyword lists under ``out_dir`` (see the module docstring).

    Args:
        source: the ASR dataset (its ``split`` is the one processed).
        out_dir: ``data/<split>-XXXXX.parquet``, ``README.md``, ``failures.jsonl``,
            ``word_counts-<split>.tsv``. Several splits can share one folder (one call each).
        config: keyword list settings (:class:`~data_prep.keywords.select.KeywordConfig`).
        frequency_file: word frequencies to use instead of counting the source (for a test split,
            pass the train split's ``word_counts-train.tsv``).
        shard_size: input records per output shard (the unit of resume).
        check_audio: one of :data:`CHECK_AUDIO`.
        max_records: read only the first N records of the source (both passes).
        progress: tqdm bars and a final summary with the throughput on stdout.
        license: ``license:`` of the dataset card (that of the source dataset).
        command: the command line recorded in the card.
    """
    config = config or KeywordConfig()
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if check_audio not in CHECK_AUDIO:
        raise ValueError(f"check_audio must be one of {CHECK_AUDIO}, got {check_audio!r}")
    out = Path(out_dir)
    split = source.split
    vocab, vocab_desc, count_seconds = build_vocabulary(
        source,
        out,
        common_top_k=config.common_top_k,
        frequency_file=frequency_file,
        max_records=max_records,
        progress=progress,
    )
    if len(vocab.counts) <= config.common_top_k:
        log.warning(
            "the vocabulary has %d distinct words, no more than common_top_k=%d: no seen word is rare "
            "(only names, acronyms, digits and unseen words are bias words); lower common_top_k",
            len(vocab.counts),
            config.common_top_k,
        )
    selector = KeywordSelector(vocab, config)
    base_key = [
        FORMAT_VERSION,
        _spec_dict(source),
        dataclasses.asdict(config),
        vocab.digest(),
        shard_size,
        check_audio,
    ]

    def shard(index: int) -> Shard:
        return Shard(out, split, index, fingerprint([*base_key, index], sort_keys=True))

    settings = {
        "source": _spec_dict(source),
        "config": dataclasses.asdict(config),
        "vocabulary": vocab_desc,
        "shard_size": shard_size,
        "check_audio": check_audio,
        "command": command,
    }
    t0 = time.perf_counter()
    states, written, skipped, processed = _run(
        source, shard, shard_size, selector, check_audio, max_records, progress, settings
    )
    generate_seconds = time.perf_counter() - t0
    remove_stale_shards(out, split, len(states))

    out.mkdir(parents=True, exist_ok=True)
    all_states = finished_states(out)
    failures: Counter = Counter()
    for st in states:
        failures.update(st["failures"])
    summary = KeywordSummary(
        out_dir=out,
        split=split,
        num_records=sum(st["num_records"] for st in states),
        num_examples=sum(st["num_examples"] for st in states),
        shards_written=written,
        shards_skipped=skipped,
        records_processed=processed,
        count_seconds=count_seconds,
        generate_seconds=generate_seconds,
        failures=dict(sorted(failures.items())),
        stats=_aggregate(states),
    )
    write_rejects(
        out / "failures.jsonl", ((shard_name(st["split"], st["index"]), st["failed"]) for st in all_states)
    )
    write_card(out, all_states, license=license)
    if progress:
        print(summary.format(), flush=True)
    return summary


def _run(source, shard, shard_size, selector, check_audio, max_records, progress, settings):
    """Stream the source shard by shard; -> (states in order, written, skipped, records processed)."""
    from tqdm.auto import tqdm

    reader = SourceReader(source)
    id_prefix = f"{source.name}/"
    # Finished shards at the start: jump over them with the stream position saved after the last.
    states: list[dict] = []
    while (st := shard(len(states)).done()) is not None:
        states.append(st)
    if states and states[-1]["num_records"] < shard_size:
        # A short (last) shard is re-read below: done only if the source still ends after it.
        states.pop()
    if states and not _restore(reader, states[-1]):
        states = []  # no usable stream position: read from the start, skipping finished shards
    position = sum(st["num_records"] for st in states)  # records consumed from the stream
    skipped = len(states)
    written = processed = 0
    bar = tqdm(desc="keywords", unit="ex", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        while True:
            current = shard(len(states))
            limit = shard_size if max_records is None else min(shard_size, max_records - position)
            records = []
            while len(records) < limit:
                record = reader.next_record()
                if record is None:
                    break
                records.append(record)
            position += len(records)
            if not records:
                break
            state = current.done()
            if state is not None and state["num_records"] == len(records):
                skipped += 1
            else:
                state = _write_shard(
                    current, records, id_prefix, selector, check_audio, reader.state_dict(), settings
                )
                written += 1
                processed += len(records)
                bar.update(len(records))
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{processed / elapsed:.0f} ex/s", refresh=False)
            states.append(state)
            if len(records) < shard_size:
                break
    finally:
        bar.close()
    return states, written, skipped, processed


def _restore(reader: SourceReader, state: dict) -> bool:
    """Put ``reader`` at the stream position saved after ``state``'s shard; False if impossible."""
    saved = state.get("reader_state")
    if not saved:
        return False
    try:
        reader.load_state_dict(saved)
    except Exception as e:  # noqa: BLE001 - e.g. a state from another datasets version
        log.warning("cannot restore the stream position (%s): reading from the start", e)
        return False
    return True


# ------------------------------------------------------------------------------------------ card


def write_card(out_dir: Path, states: list[dict], *, license: str = "other") -> Path:
    """README.md with Hugging Face YAML metadata for every split in ``out_dir`` (from the shard
    states: each split is described with the settings it was made with)."""

    splits = by_split(states)
    stats = {s: _aggregate(sts) for s, sts in splits.items()}
    sizes = split_bytes(out_dir, states)
    total = sum(v["examples"] for v in stats.values())
    languages = sorted({lang for v in stats.values() for lang in v["languages"] if lang != "None"})
    settings = {s: sts[0].get("settings") or {} for s, sts in splits.items()}
    paths = sorted({st.get("source", {}).get("path", "?") for st in settings.values()})
    meta: dict[str, Any] = {
        "license": license,
        **({"language": languages} if languages else {}),
        "task_categories": ["automatic-speech-recognition"],
        "tags": ["keyword-biasing", "contextual-biasing"],
        "size_categories": [size_category(total)],
        "pretty_name": f"Keyword-biased ASR: {', '.join(paths)}",
    }
    lines = [
        "",
        "# Keyword-biased ASR data",
        "",
        f"The examples of {', '.join(f'`{p}`' for p in paths)} with a keyword list each, made by granite-train's "
        "`data_prep/keywords` generator for keyword-biased speech recognition: the prompt gets "
        '`prompt_suffix` ("Keywords: kw1, kw2, ...") appended to its instruction. Audio and '
        "transcripts are the source's, unchanged.",
        "",
        "## Columns",
        "",
        "- `id`, `audio` (encoded bytes as in the source), `text`, `language`: from the source",
        "- `keywords`: the list, shuffled: bias words + distractors (empty for examples without a list)",
        "- `bias_words`: the keywords that occur in the transcript",
        '- `prompt_suffix`: `"Keywords: " + ", ".join(keywords)`, or `""` without a list',
        "",
        "## Contents",
        "",
        "| split | examples | hours | no list | keywords / list | bias words / list | "
        "lists without bias words | bad records |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, v in stats.items():
        hours = "n/a" if v["audio_seconds"] is None else f"{v['audio_seconds'] / 3600:.3f}"
        bad = sum(sum(st["failures"].values()) for st in splits[s])
        lines.append(
            f"| {s} | {v['examples']} | {hours} | {100 * v['no_list_share']:.1f}% | "
            f"{v['mean_keywords']:.2f} | {v['mean_bias_words']:.2f} | {v['lists_without_bias_words']} | {bad} |"
        )
    lines += ["", "Bias words by reason (a word can have several):", ""]
    lines += ["| split | " + " | ".join(REASONS) + " |", "|---|" + "---:|" * len(REASONS)]
    for s, v in stats.items():
        lines.append(f"| {s} | " + " | ".join(str(v["reasons"].get(r, 0)) for r in REASONS) + " |")
    lines += [
        "",
        "## How the lists are drawn",
        "",
        "Bias words are the transcript's hard words: *rare* (outside the most frequent words of the "
        "corpus), *names* (capitalised, not only at sentence starts), *acronyms* (two or more "
        "capitals) and words with *digits*; rarest first. Distractors are drawn from the other hard "
        "words of the corpus, never from the transcript. A share of the examples gets no list. Each "
        "example's draws come from (seed, example id) alone.",
        "",
    ]
    for split, st in settings.items():
        cfg = st.get("config", {})
        src = st.get("source", {})
        lines.append(
            f"- `{split}`: from `{src.get('path')}`"
            + (f" (config `{src['config']}`)" if src.get("config") else "")
            + f", split `{src.get('split')}`; rare = outside the top {cfg.get('common_top_k')} words of "
            f"the {st.get('vocabulary')}; at most {cfg.get('max_positives')} bias words and "
            f"{cfg.get('num_distractors')} distractors per list, {100 * cfg.get('no_list_fraction', 0):g}% "
            f"without a list, seed {cfg.get('seed')}, pool of at most {cfg.get('pool_size')} words; "
            f"{st.get('shard_size')} records per shard, audio check `{st.get('check_audio')}`"
        )
    lines += [
        "",
        "## Records without an example",
        "",
    ]
    failures: Counter = Counter()
    for st in states:
        failures.update(st["failures"])
    if failures:
        lines += ["Counted per reason and listed in `failures.jsonl`:", ""]
        lines += [f"- {reason}: {n}" for reason, n in sorted(failures.items())]
    else:
        lines.append("None: every record had a transcript and readable audio.")
    lines += ["", "## Reproduce", ""]
    commands = [st["command"] for st in settings.values() if st.get("command")]
    if commands:
        lines += ["```bash", *dict.fromkeys(commands), "```", ""]
    lines.append("Same source, settings and seed give identical shards; a rerun skips finished shards.")
    return write_readme(
        out_dir, meta, {s: (sizes[s], stats[s]["examples"]) for s in splits}, features(), lines
    )
