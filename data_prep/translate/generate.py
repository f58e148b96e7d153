"""Speech-translation (AST) targets: an ASR dataset's transcripts, machine-translated twice, kept
where the two translations agree.

    python -m data_prep.translate --source work/corpus/en --source-language en \\
        --target-languages de,ja --out work/ast_en \\
        --primary-backend openai --primary-base-url http://localhost:8000/v1 --primary-model phi-4 \\
        --secondary-backend transformers --secondary-model google/madlad400-3b-mt \\
        --secondary-source-prefix '<2{tgt}> '

Data flow::

    SourceReader (hub id / parquet / audiofolder / JSONL, streamed; audio never decoded)
      -> cut into shards of --shard-size records; each record x its target language(s) = a pair
      -> per shard: skip if OUT/.shards/<split>-<k>.json carries the same fingerprint (resume)
         else: unique source texts per target, batches of --batch-size
               -> primary and secondary backend (in parallel threads)
               -> per pair: backend_error / empty_output / copied_source / disagreement / keep
                  (agreement: WER <= 0.3, CER <= 0.4 for ja/zh targets; see agreement.py)
               -> kept: target = primary output, or "[Transcription] src [Translation] tgt" for a
                  seeded share of examples
      -> OUT/data/<split>-<k:05d>.parquet (temp file + atomic rename), state file
      -> OUT/rejects.jsonl (every rejected pair, with reason and both outputs), OUT/README.md card

Output columns: see :func:`features`. The audio column is the source's, byte for byte (a file
referenced only by path is embedded unless ``embed_audio=False``).

Resume: a shard is finished when its parquet file exists and its state file carries the
fingerprint of its inputs (ids, texts, audio) and of every setting that shapes the output
(backends' ``describe()``, thresholds, seed, share, ...). A rerun reads the stream again (the
inputs are re-verified) but translates only unfinished or changed shards. Same inputs, seed and
backend outputs give byte-identical shards, whatever the batch size of the run that wrote them
(when the backends are batch-invariant, as greedy decoding on CPU and fake servers are).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.shards import (
    Shard,
    by_split,
    chunked,
    fingerprint,
    finished_states,
    reason_counts,
    remove_stale_shards,
    size_category,
    split_bytes,
    write_readme,
    write_rejects,
)
from data_prep.translate.agreement import AgreementConfig, agreement, is_empty
from data_prep.translate.backends import MTBackend, TranslationError, check_pair
from data_prep.tts.generate import normalize_sentence
from granite_train.data.sources import SourceReader, SourceSpec
from granite_train.text.languages import language_name
from granite_train.text.normalize import get_normalizer

TASK = "ast"

FORMAT_VERSION = 1
"""Bump when the shard content format changes, so that old shards are regenerated."""
TRANSCRIPTION_TEMPLATE = "[Transcription] {transcription} [Translation] {translation}"
"""Target of the share of examples that also ask for the transcript (RECIPE.md: 30% in 4.0-1b)."""
REJECT_REASONS = (
    "missing_text",
    "missing_audio",
    "backend_error",
    "empty_output",
    "copied_source",
    "disagreement",
)
"""Why a pair produced no example, in the order they are checked."""


class BackendFailureError(RuntimeError):
    """A backend failed on too many pairs of a shard: the shard is not written (rerun to retry)."""


# --------------------------------------------------------------------------------------- results


@dataclass
class TranslationSummary:
    """What ``generate_translations`` did, for one split. Counts cover the whole split (resumed
    shards included); ``pairs_translated`` and ``wall_seconds`` only this run."""

    out_dir: Path
    split: str
    num_records: int
    """Input records read."""
    num_pairs: int
    """(record, target language) pairs: the candidate examples."""
    num_kept: int
    num_transcription_format: int
    """Kept examples whose target is "[Transcription] ... [Translation] ..."."""
    rejects: dict[str, int]
    """Rejected pairs per reason (see ``REJECT_REASONS``); all listed in rejects.jsonl."""
    per_pair: dict[str, dict[str, Any]]
    """"en-de" -> {"pairs", "kept", "rejects": {reason: n}}."""
    shards_written: int
    shards_skipped: int
    pairs_translated: int
    """Pairs processed by this run (0 when every shard was already done)."""
    wall_seconds: float = 0.0
    backend_stats: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def keep_rate(self) -> float:
        return self.num_kept / self.num_pairs if self.num_pairs else 0.0

    @property
    def throughput(self) -> float:
        """Pairs (candidate examples) processed per wall-clock second in this run."""
        return self.pairs_translated / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def format(self) -> str:
        lines = [
            f"ast targets: {self.out_dir} [{self.split}]  records: {self.num_records}  "
            f"pairs: {self.num_pairs}  kept: {self.num_kept} ({100 * self.keep_rate:.1f}%)  "
            f"with transcription: {self.num_transcription_format}",
            f"shards: {self.shards_written} written, {self.shards_skipped} skipped (already done)",
            f"throughput: {self.pairs_translated} pairs in {self.wall_seconds:.1f} s wall"
            f" = {self.throughput:.1f} examples/s",
        ]
        for pair, v in self.per_pair.items():
            rate = v["kept"] / v["pairs"] if v["pairs"] else 0.0
            lines.append(f"  {pair}: kept {v['kept']}/{v['pairs']} ({100 * rate:.1f}%)")
        if self.rejects:
            lines.append("rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(self.rejects.items())))
        for name, stats in self.backend_stats.items():
            lines.append(f"backend {name}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- schema


def features():
    """The output columns (``datasets.Features``)."""
    from datasets import Audio, Features, Value

    return Features(
        {
            "id": Value("string"),
            "audio": Audio(),
            "source_text": Value("string"),
            "source_language": Value("string"),
            "target_language": Value("string"),
            "target_text": Value("string"),
            "target_format": Value("string"),
            "primary_output": Value("string"),
            "secondary_output": Value("string"),
            "primary_backend": Value("string"),
            "secondary_backend": Value("string"),
            "agreement_metric": Value("string"),
            "agreement_score": Value("float64"),
            "task": Value("string"),
        }
    )


COLUMN_DOCS = {
    "id": "`<source id>.<src>-<tgt>`",
    "audio": "the source's audio, byte for byte (not decoded or resampled)",
    "source_text": "the transcript (NFC, whitespace collapsed): what was translated",
    "source_language": "ISO 639-1 code of the speech",
    "target_language": "ISO 639-1 code of the translation",
    "target_text": "the training target: the primary backend's translation, or "
    "`[Transcription] {source_text} [Translation] {translation}` (`target_format`)",
    "target_format": "`translation` or `transcription_translation`",
    "primary_output": "the primary backend's translation (the target)",
    "secondary_output": "the secondary backend's translation (the check)",
    "primary_backend": "name of the primary backend",
    "secondary_backend": "name of the secondary backend",
    "agreement_metric": "`wer`, or `cer` for targets written without spaces",
    "agreement_score": "WER / CER of secondary_output against primary_output after normalisation",
    "task": "`ast`",
}


# ------------------------------------------------------------------------------------ shard work


def _unit(seed: int, *parts: str) -> float:
    """A uniform number in [0, 1) from (seed, parts): independent of shard layout and batch size."""
    h = hashlib.sha1("|".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


@dataclass
class _Settings:
    primary: MTBackend
    secondary: MTBackend
    source_language: str
    target_languages: tuple[str, ...]
    target_assignment: str
    agreement: AgreementConfig
    transcription_share: float
    seed: int
    reject_copies: bool
    embed_audio: bool
    batch_size: int
    max_error_rate: float

    def describe(self) -> dict[str, Any]:
        """Everything that shapes the shards' content (not batch size or concurrency)."""
        return {
            "primary": self.primary.describe(),
            "secondary": self.secondary.describe(),
            "source_language": self.source_language,
            "target_languages": list(self.target_languages),
            "target_assignment": self.target_assignment,
            "agreement": self.agreement.describe(),
            "transcription_share": self.transcription_share,
            "transcription_template": TRANSCRIPTION_TEMPLATE,
            "seed": self.seed,
            "reject_copies": self.reject_copies,
            "embed_audio": self.embed_audio,
        }

    def targets_of(self, sample_id: str) -> tuple[str, ...]:
        if self.target_assignment == "all":
            return self.target_languages
        k = int(_unit(self.seed, "target", sample_id) * len(self.target_languages))
        return (self.target_languages[k],)


def _sample_id(spec: SourceSpec, record: dict) -> str:
    rid = str(record["id"])
    prefix = f"{spec.name}/"
    return rid[len(prefix) :] if rid.startswith(prefix) else rid


def _audio_digest(audio: dict) -> str:
    if audio.get("bytes") is not None:
        return "sha1:" + hashlib.sha1(audio["bytes"]).hexdigest()
    return f"path:{audio.get('path')}"


def _load_audio(audio: dict, embed: bool) -> dict:
    """The audio struct to write; raises ``OSError`` when a file to embed cannot be read."""
    if audio.get("bytes") is not None or not embed:
        return {"bytes": audio.get("bytes"), "path": audio.get("path")}
    with open(audio["path"], "rb") as f:
        return {"bytes": f.read(), "path": os.path.basename(audio["path"])}


def _service_failure(out: str | BaseException) -> bool:
    """An error that says the backend, not the sentence, failed (see ``TranslationError``)."""
    if isinstance(out, TranslationError):
        return out.transient
    return isinstance(out, BaseException)


def _translate_all(backend: MTBackend, texts: list[str], source: str, target: str) -> list[str | Exception]:
    try:
        out = backend.translate(texts, source, target)
    except Exception as e:  # noqa: BLE001 - a backend that raises fails the whole batch
        return [e] * len(texts)
    if len(out) != len(texts):
        err = RuntimeError(f"backend {backend.name!r} returned {len(out)} outputs for {len(texts)} inputs")
        return [err] * len(texts)
    return list(out)


def _run_shard(
    shard: Shard,
    pairs: list[dict],
    settings: _Settings,
    pool: ThreadPoolExecutor | None,
    on_batch,
) -> dict:
    """Translate, filter and write one shard; returns its state (also saved next to the data)."""
    import pyarrow as pa

    norm = get_normalizer(settings.agreement.normalizer)
    rejected: list[dict] = []
    valid: list[dict] = []
    for p in pairs:
        if not p["source_text"]:
            rejected.append({**p["meta"], "reason": "missing_text", "detail": "no transcript"})
        elif p["audio"].get("bytes") is None and not p["audio"].get("path"):
            rejected.append({**p["meta"], "reason": "missing_audio", "detail": "no audio bytes or path"})
        else:
            valid.append(p)
    on_batch(len(pairs) - len(valid))

    # Unique texts per target language, in first-seen order, batched.
    outputs: dict[tuple[str, str], tuple[str | Exception, str | Exception]] = {}
    for target in settings.target_languages:
        uses = Counter(p["source_text"] for p in valid if p["target_language"] == target)
        texts = list(uses)
        for start in range(0, len(texts), settings.batch_size):
            batch = texts[start : start + settings.batch_size]
            args = (batch, settings.source_language, target)
            if pool is not None:
                fp = pool.submit(_translate_all, settings.primary, *args)
                fs = pool.submit(_translate_all, settings.secondary, *args)
                prim, sec = fp.result(), fs.result()
            else:
                prim = _translate_all(settings.primary, *args)
                sec = _translate_all(settings.secondary, *args)
            for text, a, b in zip(batch, prim, sec):
                outputs[(target, text)] = (a, b)
            on_batch(sum(uses[t] for t in batch))

    errors = Counter()
    first_error: dict[str, str] = {}
    for p in valid:
        for role, out in zip(("primary", "secondary"), outputs[(p["target_language"], p["source_text"])]):
            if _service_failure(out):
                errors[role] += 1
                first_error.setdefault(role, _short(out))
    for role, n in errors.items():
        if valid and n / len(valid) > settings.max_error_rate:
            backend = getattr(settings, role)
            raise BackendFailureError(
                f"shard {shard.name}: {role} backend {backend.name!r} is failing ({n} of {len(valid)} pairs) "
                f"(more than max_error_rate={settings.max_error_rate}); first error: {first_error[role]}. "
                "Nothing was written for this shard; fix the backend and rerun (finished shards are kept)."
            )

    rows: list[dict] = []
    share_count = 0
    for p in valid:
        prim, sec = outputs[(p["target_language"], p["source_text"])]
        rec = {**p["meta"]}
        if isinstance(prim, BaseException) or isinstance(sec, BaseException):
            details = [
                f"{role}: {_short(o)}"
                for role, o in (("primary", prim), ("secondary", sec))
                if isinstance(o, BaseException)
            ]
            rec.update(
                reason="backend_error",
                detail="; ".join(details),
                primary_output=None if isinstance(prim, BaseException) else prim,
                secondary_output=None if isinstance(sec, BaseException) else sec,
            )
            rejected.append(rec)
            continue
        rec.update(primary_output=prim, secondary_output=sec)
        empty = [
            role for role, o in (("primary", prim), ("secondary", sec)) if is_empty(o, settings.agreement)
        ]
        if empty:
            rejected.append({**rec, "reason": "empty_output", "detail": " and ".join(empty) + " empty"})
            continue
        if settings.reject_copies and norm(prim).split() == norm(p["source_text"]).split():
            rejected.append({**rec, "reason": "copied_source", "detail": "primary output equals the source"})
            continue
        agr = agreement(prim, sec, p["target_language"], settings.agreement)
        rec.update(agreement_metric=agr.metric, agreement_score=agr.score)
        if not agr.agree:
            rejected.append(
                {
                    **rec,
                    "reason": "disagreement",
                    "detail": f"{agr.metric} {agr.score:.3f} > {agr.threshold:g}",
                }
            )
            continue
        try:
            audio = _load_audio(p["audio"], settings.embed_audio)
        except OSError as e:
            rejected.append({**rec, "reason": "missing_audio", "detail": _short(e)})
            continue
        with_transcription = _unit(settings.seed, "transcription", p["id"]) < settings.transcription_share
        share_count += with_transcription
        target_text = (
            TRANSCRIPTION_TEMPLATE.format(transcription=p["source_text"], translation=prim)
            if with_transcription
            else prim
        )
        rows.append(
            {
                "id": p["id"],
                "audio": audio,
                "source_text": p["source_text"],
                "source_language": settings.source_language,
                "target_language": p["target_language"],
                "target_text": target_text,
                "target_format": "transcription_translation" if with_transcription else "translation",
                "primary_output": prim,
                "secondary_output": sec,
                "primary_backend": settings.primary.name,
                "secondary_backend": settings.secondary.name,
                "agreement_metric": agr.metric,
                "agreement_score": agr.score,
                "task": TASK,
            }
        )

    per_pair: dict[str, dict[str, Any]] = {}
    for target in settings.target_languages:
        key = f"{settings.source_language}-{target}"
        n = sum(p["target_language"] == target for p in pairs)
        if n:
            per_pair[key] = {
                "pairs": n,
                "kept": sum(r["target_language"] == target for r in rows),
                "rejects": reason_counts(r for r in rejected if r["target_language"] == target),
            }
    order = {p["id"]: i for i, p in enumerate(pairs)}
    rejected.sort(key=lambda r: order[r["id"]])  # stream order
    state = shard.new_state(
        FORMAT_VERSION,
        num_records=len({p["meta"]["source_id"] for p in pairs}),
        num_pairs=len(pairs),
        num_kept=len(rows),
        num_transcription_format=share_count,
        per_pair=per_pair,
        rejects=reason_counts(rejected),
        rejected=rejected,
        settings=settings.describe(),
    )
    shard.write(state, pa.Table.from_pylist(rows, schema=features().arrow_schema))
    return state


# ------------------------------------------------------------------------------------------- API


def _as_spec(source: SourceSpec | str, split: str, source_language: str) -> SourceSpec:
    if isinstance(source, str):
        source = SourceSpec("source", source, split=split)
    return dataclasses.replace(source, language=source_language)


def _records(spec: SourceSpec, max_records: int | None) -> Iterable[dict]:
    reader = SourceReader(spec)
    n = 0
    while max_records is None or n < max_records:
        record = reader.next_record()
        if record is None:
            return
        n += 1
        yield record


def generate_translations(
    source: SourceSpec | str,
    out_dir: str | os.PathLike,
    *,
    primary: MTBackend,
    secondary: MTBackend,
    source_language: str,
    target_languages: Sequence[str],
    split: str = "train",
    target_assignment: str = "all",
    agreement_config: AgreementConfig | None = None,
    transcription_share: float = 0.0,
    seed: int = 0,
    shard_size: int = 1000,
    batch_size: int = 32,
    max_records: int | None = None,
    reject_copies: bool = True,
    embed_audio: bool = True,
    max_error_rate: float = 0.5,
    parallel_backends: bool = True,
    progress: bool = True,
    license: str = "other",
    command: str | None = None,
) -> TranslationSummary:
    """Translate the transcripts of ``source`` and write the agreed pairs under ``out_dir``.

    Args:
        source: a ``SourceSpec`` (hub id, parquet, audiofolder or JSONL manifest, its text / audio /
            id columns) or a path / hub id (column names ``text``, ``audio``, ``id``).
        out_dir: dataset folder: ``data/<split>-XXXXX.parquet``, ``README.md``, ``rejects.jsonl``.
        primary: the backend whose translation is the target.
        secondary: the independent backend that must agree with it.
        source_language: language of the speech (overrides any language column).
        target_languages: translation targets; every pair must be supported (``SUPPORTED_PAIRS``).
        split: the input split to read; also the output split name.
        target_assignment: ``"all"`` (one example per target language per record) or ``"one"``
            (each record gets one target language, drawn from (seed, id)).
        agreement_config: thresholds (default WER <= 0.3, CER <= 0.4 for ja / zh).
        transcription_share: share of kept examples whose target is
            ``[Transcription] {source} [Translation] {translation}``, drawn from (seed, id).
        seed: target assignment and transcription share come from (seed, example id) only.
        shard_size: input records per shard (the unit of resume).
        batch_size: unique source texts per backend call.
        max_records: read at most this many input records.
        reject_copies: reject pairs whose primary output is the source text again (untranslated).
        embed_audio: copy the bytes of audio referenced only by a local path into the parquet.
        max_error_rate: a shard in which a backend fails on more than this share of pairs is not
            written and the run stops with ``BackendFailureError`` (a dead server should not turn
            a corpus into rejects). Sentence-level failures (``TranslationError`` with
            ``transient=False``: a 4xx, an output cut at the token limit) do not count: they
            only reject their pair.
        parallel_backends: call the two backends at the same time (threads).
        progress: tqdm bar and a final summary with throughput on stdout.
        license: ``license:`` of the dataset card.
        command: the command line recorded in the card.
    """
    t0 = time.perf_counter()
    targets = tuple(dict.fromkeys(target_languages))
    if not targets:
        raise ValueError("no target languages")
    for t in targets:
        check_pair(source_language, t)
    if target_assignment not in ("all", "one"):
        raise ValueError(f"target_assignment must be 'all' or 'one', got {target_assignment!r}")
    if not 0.0 <= transcription_share <= 1.0:
        raise ValueError("transcription_share must be in [0, 1]")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    if primary.name == secondary.name and primary.describe() == secondary.describe():
        raise ValueError("primary and secondary are the same backend; agreement needs two independent ones")
    spec = _as_spec(source, split, source_language)
    settings = _Settings(
        primary=primary,
        secondary=secondary,
        source_language=source_language,
        target_languages=targets,
        target_assignment=target_assignment,
        agreement=agreement_config or AgreementConfig(),
        transcription_share=transcription_share,
        seed=seed,
        reject_copies=reject_copies,
        embed_audio=embed_audio,
        batch_size=batch_size,
        max_error_rate=max_error_rate,
    )
    settings_json = json.dumps(settings.describe(), sort_keys=True, ensure_ascii=False)
    out = Path(out_dir)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=None
        if max_records is None
        else max_records * (len(targets) if target_assignment == "all" else 1),
        unit="ex",
        desc=f"ast {source_language}->{','.join(targets)}",
        disable=not progress,
        dynamic_ncols=True,
    )
    states: list[dict] = []
    written = skipped = translated = 0
    t_work = time.perf_counter()

    def on_batch(n: int) -> None:
        nonlocal translated
        translated += n
        bar.update(n)
        kept = sum(s["num_kept"] for s in states)
        seen = sum(s["num_pairs"] for s in states)
        elapsed = time.perf_counter() - t_work
        rate = f"{translated / elapsed:.1f} ex/s" if elapsed > 0 else ""
        bar.set_postfix_str(f"kept {kept}/{seen}, {rate}", refresh=False)

    pool = ThreadPoolExecutor(2, thread_name_prefix="ast-backend") if parallel_backends else None
    try:
        for index, chunk in enumerate(chunked(_records(spec, max_records), shard_size)):
            pairs: list[dict] = []
            items = []
            for record in chunk:
                sid = _sample_id(spec, record)
                text = normalize_sentence(record["text"] or "")
                audio = record["audio"] or {}
                tgts = settings.targets_of(sid)
                items.append([sid, text, _audio_digest(audio), list(tgts)])
                for tgt in tgts:
                    pid = f"{sid}.{source_language}-{tgt}"
                    meta = {
                        "id": pid,
                        "source_id": sid,
                        "source_text": text,
                        "source_language": source_language,
                        "target_language": tgt,
                    }
                    pairs.append(
                        {"id": pid, "source_text": text, "target_language": tgt, "audio": audio, "meta": meta}
                    )
            key = [FORMAT_VERSION, settings_json, split, index, items]
            shard = Shard(out, split, index, fingerprint(key))
            state = shard.done()
            if state is not None:
                skipped += 1
                bar.update(len(pairs))
            else:
                state = _run_shard(shard, pairs, settings, pool, on_batch)
                written += 1
            state.pop("rejected")  # on disk; kept out of memory over long runs
            states.append(state)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()
    if not states:
        raise ValueError(f"no records in {spec.path!r} (split {split!r})")
    remove_stale_shards(out, split, len(states))

    summary = _summarise(out, split, states)
    summary.shards_written, summary.shards_skipped = written, skipped
    summary.pairs_translated = translated
    for role, backend in (("primary", primary), ("secondary", secondary)):
        stats = getattr(backend, "stats", None)
        if stats:
            summary.backend_stats[f"{role} {backend.name}"] = dict(stats)

    all_states = _load_states(out)
    _write_rejects(out, all_states)
    _write_card(out, all_states, spec=spec, license=license, command=command)
    summary.wall_seconds = time.perf_counter() - t0
    if progress:
        print(summary.format(), flush=True)
    return summary


def _summarise(out: Path, split: str, states: list[dict]) -> TranslationSummary:
    per_pair: dict[str, dict[str, Any]] = {}
    rejects: Counter = Counter()
    for st in states:
        rejects.update(st["rejects"])
        for pair, v in st["per_pair"].items():
            agg = per_pair.setdefault(pair, {"pairs": 0, "kept": 0, "rejects": Counter()})
            agg["pairs"] += v["pairs"]
            agg["kept"] += v["kept"]
            agg["rejects"].update(v["rejects"])
    for v in per_pair.values():
        v["rejects"] = dict(sorted(v["rejects"].items()))
    return TranslationSummary(
        out_dir=out,
        split=split,
        num_records=sum(st["num_records"] for st in states),
        num_pairs=sum(st["num_pairs"] for st in states),
        num_kept=sum(st["num_kept"] for st in states),
        num_transcription_format=sum(st["num_transcription_format"] for st in states),
        rejects=dict(sorted(rejects.items())),
        per_pair=per_pair,
        shards_written=0,
        shards_skipped=0,
        pairs_translated=0,
    )


def _load_states(out: Path) -> dict[str, list[dict]]:
    """split -> states of its finished shards, in shard order, without their ``rejected`` lists
    (read back one file at a time by ``_write_rejects``: they can be large)."""
    states = finished_states(out, drop=("rejected",))
    return by_split(st for st in states if st.get("format_version") == FORMAT_VERSION)


def _write_rejects(out: Path, states: dict[str, list[dict]]) -> None:
    """rejects.jsonl: every shard's ``rejected`` list, read back from its state file one at a time."""

    def per_shard() -> Iterator[tuple[str, list[dict]]]:
        for split_states in states.values():
            for st in split_states:
                shard = Shard(out, st["split"], st["index"])
                yield shard.name, json.loads(shard.state_path.read_text(encoding="utf-8"))["rejected"]

    write_rejects(out / "rejects.jsonl", per_shard())


# ------------------------------------------------------------------------------------------ card


def _pct(kept: int, total: int) -> str:
    return f"{100 * kept / total:.1f}%" if total else "n/a"


def _write_card(
    out: Path, states: dict[str, list[dict]], *, spec: SourceSpec, license: str, command: str | None
) -> Path:
    """README.md with Hugging Face YAML metadata; no timings, so identical inputs give identical cards."""
    summaries = {split: _summarise(out, split, sts) for split, sts in states.items()}
    total_pairs = sum(s.num_pairs for s in summaries.values())
    total_kept = sum(s.num_kept for s in summaries.values())
    settings_by_split = {split: sts[0]["settings"] for split, sts in states.items()}
    languages = sorted(
        {s["source_language"] for s in settings_by_split.values()}
        | {t for s in settings_by_split.values() for t in s["target_languages"]}
    )
    meta: dict[str, Any] = {
        "license": license,
        "language": languages,
        "task_categories": ["automatic-speech-recognition", "translation"],
        "tags": ["speech-translation", "machine-translated", "ast"],
        "size_categories": [size_category(total_kept)],
        "pretty_name": "Speech translation targets (" + ", ".join(sorted(_pairs(summaries))) + ")",
    }
    lines = [
        "",
        "# Speech-translation (AST) targets",
        "",
        "Speech from an ASR corpus with its transcript machine-translated by two independent MT systems, "
        "generated by granite-train's `data_prep/translate`. An example is kept only where the two "
        "translations agree; the primary system's translation is the target. The translations are "
        "machine-made: check the licenses of the source corpus and of both MT models before use.",
        "",
        "## Contents",
        "",
        f"- Keep rate: {total_kept} of {total_pairs} translation pairs kept ({_pct(total_kept, total_pairs)})",
        f"- Examples: {total_kept} ("
        + ", ".join(f"{s}: {summ.num_kept}" for s, summ in summaries.items())
        + ")",
        "- Columns: " + ", ".join(f"`{c}`" for c in COLUMN_DOCS),
        "",
        "| split | pair | records x targets | kept | keep rate | " + " | ".join(REJECT_REASONS) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(REJECT_REASONS),
    ]
    for split, summ in summaries.items():
        for pair, v in summ.per_pair.items():
            counts = " | ".join(str(v["rejects"].get(r, 0)) for r in REJECT_REASONS)
            lines.append(
                f"| {split} | {pair} | {v['pairs']} | {v['kept']} | {_pct(v['kept'], v['pairs'])} | {counts} |"
            )
    lines += ["", "Columns:", ""]
    lines += [f"- `{c}`: {doc}" for c, doc in COLUMN_DOCS.items()]
    lines += ["", "## Source", ""]
    src = f"{spec.path}" + (f" (config {spec.config})" if spec.config else "")
    src += f", {spec.kind}, text column `{spec.text_column}`, audio column `{spec.audio_column}`"
    if spec.revision:
        src += f", revision {spec.revision}"
    lines.append(f"- {src}")
    for split, summ in summaries.items():
        st = settings_by_split[split]
        name = language_name(st["source_language"])
        lines.append(f"- split `{split}`: {summ.num_records} records of {name} speech")
    lines += ["", "## Filter and targets", ""]
    distinct = {json.dumps(s, sort_keys=True) for s in settings_by_split.values()}
    for split, st in settings_by_split.items():
        if len(distinct) > 1:
            lines += [f"### split `{split}`", ""]
        agr = st["agreement"]
        lines += [
            f"- Primary backend (target): `{st['primary']['name']}`; secondary (check): `{st['secondary']['name']}`",
            f"- Agreement: WER <= {agr['max_wer']:g}, or CER <= {agr['max_cer']:g} for "
            f"{', '.join(agr['cer_languages'])} targets, of the secondary output against the primary, "
            f"after the `{agr['normalizer']}` normaliser",
            f"- Untranslated outputs (primary equal to the source) rejected: {st['reject_copies']}",
            f"- Targets per record: {st['target_assignment']} of {', '.join(st['target_languages'])}",
            f"- `[Transcription] ... [Translation] ...` targets: share {st['transcription_share']:g} of kept "
            f"examples, drawn from (seed {st['seed']}, id)",
            "",
            "Backend settings:",
            "",
        ]
        for role in ("primary", "secondary"):
            lines.append(f"- {role}:")
            lines += [f"  - `{k}`: `{json.dumps(v, ensure_ascii=False)}`" for k, v in st[role].items()]
        lines.append("")
        if len(distinct) == 1:
            break
    lines += ["## Rejected pairs", ""]
    rejects: Counter = Counter()
    for summ in summaries.values():
        rejects.update(summ.rejects)
    if rejects:
        lines.append(
            "Pairs that produced no example, per reason (all listed in `rejects.jsonl` with both outputs):"
        )
        lines.append("")
        lines += [f"- {reason}: {rejects[reason]}" for reason in REJECT_REASONS if rejects.get(reason)]
    else:
        lines.append("None: every pair was kept.")
    lines += ["", "## Reproduce", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines.append(
        "Same inputs, settings and backend outputs give identical shards; a rerun skips finished shards."
    )
    sizes = split_bytes(out, (st for sts in states.values() for st in sts))
    return write_readme(out, meta, {s: (sizes[s], summaries[s].num_kept) for s in states}, features(), lines)


def _pairs(summaries: dict[str, TranslationSummary]) -> set[str]:
    return {pair.replace("-", "->") for s in summaries.values() for pair in s.per_pair}
