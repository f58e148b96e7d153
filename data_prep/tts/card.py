"""Dataset card (README.md with YAML metadata) for a generated TTS corpus.

The YAML header follows the Hugging Face dataset-card format: ``configs`` maps splits to the parquet
shards (so ``load_dataset(OUT_DIR)`` finds them) and ``dataset_info.features`` declares the Audio
column. The body records what is needed to reproduce the corpus. No timings or dates are written,
so the card, like the shards, is identical for identical inputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_prep.shards import size_category, write_readme
from data_prep.tts.corpus import CorpusSummary, features
from granite_train.text.languages import language_name


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3f}"


def write_dataset_card(
    out_dir: Path,
    *,
    summary: CorpusSummary,
    seconds_per_language: dict[str, dict[str, float]],
    split_bytes: dict[str, int],
    backend_info: dict[str, Any],
    sources: dict[str, str],
    seed: int,
    shard_size: int,
    test_fraction: float,
    max_sentences_per_language: int | None,
    license: str,
    command: str | None,
    extra_columns: Mapping[str, str] | None = None,
) -> Path:
    """``split_bytes``: parquet bytes per split; ``extra_columns``: column -> dtype of the
    ``generate_corpus`` hook, declared after the built-in columns."""
    splits = list(summary.num_examples)
    languages = sorted(
        {lang for per in summary.num_examples_per_language.values() for lang in per} | set(sources)
    )
    backend_name = backend_info.get("name", "tts")
    meta: dict[str, Any] = {
        "license": license,
        "language": languages,
        "task_categories": ["automatic-speech-recognition"],
        "tags": ["synthetic", "text-to-speech", str(backend_name)],
        "size_categories": [size_category(summary.total_examples)],
        "pretty_name": f"Synthetic {backend_name} speech ({', '.join(languages)})",
    }
    extra_names = "" if extra_columns is None else ", " + ", ".join(f"`{name}`" for name in extra_columns)
    lines = [
        "",
        f"# Synthetic speech corpus ({backend_name})",
        "",
        f"Text-to-speech audio generated offline with **{backend_name}** by granite-train's "
        "`data_prep/tts` generator, for training and testing speech recognition. The audio is synthetic; "
        "the transcripts are exactly the source sentences (whitespace-normalised, NFC).",
        "",
        "## Contents",
        "",
        f"- Examples: {summary.total_examples} ({', '.join(f'{s}: {n}' for s, n in summary.num_examples.items())})",
        f"- Audio: {_hours(summary.audio_seconds)} h, 16 kHz mono, 16-bit FLAC inside parquet",
        "- Columns: `id`, `audio` (`Audio(sampling_rate=16000)`), `text`, `language`, `voice`, `duration` (s)"
        + extra_names,
        "",
        "| split | language | examples | hours |",
        "|---|---|---:|---:|",
    ]
    for s in splits:
        for lang, n in sorted(summary.num_examples_per_language.get(s, {}).items()):
            lines.append(f"| {s} | {lang} | {n} | {_hours(seconds_per_language[s][lang])} |")
    lines += ["", "## Source texts", ""]
    for lang in sorted(sources):
        lines.append(f"- `{lang}` ({language_name(lang)}): {sources[lang]}")
    lines += [
        "",
        f"Sentences were deduplicated per language; the train/test split is by SHA-1 of the sentence "
        f"(test fraction {test_fraction:g}), so no sentence occurs in both splits."
        + (
            f" At most {max_sentences_per_language} sentences per language were used."
            if max_sentences_per_language
            else ""
        ),
        "",
        "## Synthesis",
        "",
        f"- Backend: {backend_name} {backend_info.get('version', '')}".rstrip(),
        f"- Seed: {seed} (shard k of a split draws its voices from (seed, split, k); {shard_size} sentences per shard)",
        "- The `voice` column records backend, voice, rate, pitch and word gap of every example.",
        "",
        "Backend settings:",
        "",
        *(f"- `{key}`: `{json.dumps(value, ensure_ascii=False)}`" for key, value in backend_info.items()),
        "",
        "## Sentences without audio",
        "",
    ]
    if summary.failures:
        lines.append("Sentences that produced no example, per reason (all listed in `failures.jsonl`):")
        lines.append("")
        lines += [f"- {reason}: {n}" for reason, n in summary.failures.items()]
    else:
        lines.append("None: every sentence was synthesised.")
    if summary.filtered:
        lines += ["", "Input lines dropped before synthesis:", ""]
        lines += [f"- {reason}: {n}" for reason, n in summary.filtered.items()]
    lines += ["", "## Reproduce", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines.append(
        "Same texts, seed, backend version and settings give byte-identical shards; a rerun skips "
        "finished shards."
    )
    splits_info = {s: (split_bytes[s], summary.num_examples[s]) for s in splits}
    return write_readme(out_dir, meta, splits_info, features(extra_columns), lines)
