"""Dataset card (README.md with YAML metadata) for a generated TTS corpus.

The YAML header follows the Hugging Face dataset-card format: ``configs`` maps splits to the parquet
shards (so ``load_dataset(OUT_DIR)`` finds them) and ``dataset_info.features`` declares the Audio
column. The body records what is needed to reproduce the corpus. No timings or dates are written,
so the card, like the shards, is identical for identical inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from data_prep.tts.generate import CorpusSummary

LANGUAGE_NAMES = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "pt": "Portuguese",
    "it": "Italian",
    "ja": "Japanese",
    "zh": "Chinese (Mandarin)",
    "hi": "Hindi",
}


def with_hub_layout(meta: dict[str, Any], splits: dict[str, tuple[int, int]], features: Any) -> dict[str, Any]:
    """``meta`` plus the Hugging Face ``configs`` / ``dataset_info`` entries of a generated dataset.

    Every generator writes ``data/<split>-XXXXX.parquet``; ``splits`` maps a split to
    ``(bytes, examples)`` and ``features`` is the ``datasets.Features`` of the shards.
    """
    total_bytes = sum(b for b, _ in splits.values())
    return {
        **meta,
        "configs": [
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [{"name": s, "num_bytes": b, "num_examples": n} for s, (b, n) in splits.items()],
            "download_size": total_bytes,
            "dataset_size": total_bytes,
        },
    }


def front_matter(meta: dict[str, Any]) -> list[str]:
    """The YAML header lines of a dataset card."""
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000).rstrip(), "---"]


def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3f}"


def write_dataset_card(
    out_dir: Path,
    *,
    summary: CorpusSummary,
    seconds_per_language: dict[str, dict[str, float]],
    shard_sizes: dict[str, tuple[str, int]],
    backend_info: dict[str, Any],
    sources: dict[str, str],
    seed: int,
    shard_size: int,
    test_fraction: float,
    max_sentences_per_language: int | None,
    license: str,
    command: str | None,
) -> Path:
    from data_prep.tts.generate import _features

    splits = list(summary.num_examples)
    languages = sorted(
        {lang for per in summary.num_examples_per_language.values() for lang in per} | set(sources)
    )
    split_bytes = {s: sum(size for split, size in shard_sizes.values() if split == s) for s in splits}
    backend_name = backend_info.get("name", "tts")
    meta: dict[str, Any] = {
        "license": license,
        "language": languages,
        "task_categories": ["automatic-speech-recognition"],
        "tags": ["synthetic", "text-to-speech", str(backend_name)],
        "size_categories": [size_category(summary.total_examples)],
        "pretty_name": f"Synthetic {backend_name} speech ({', '.join(languages)})",
    }
    meta = with_hub_layout(meta, {s: (split_bytes[s], summary.num_examples[s]) for s in splits}, _features())
    lines = [
        *front_matter(meta),
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
        "- Columns: `id`, `audio` (`Audio(sampling_rate=16000)`), `text`, `language`, `voice`, `duration` (s)",
        "",
        "| split | language | examples | hours |",
        "|---|---|---:|---:|",
    ]
    for s in splits:
        for lang, n in sorted(summary.num_examples_per_language.get(s, {}).items()):
            lines.append(f"| {s} | {lang} | {n} | {_hours(seconds_per_language[s][lang])} |")
    lines += ["", "## Source texts", ""]
    for lang in sorted(sources):
        lines.append(f"- `{lang}` ({LANGUAGE_NAMES.get(lang, lang)}): {sources[lang]}")
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
    path = out_dir / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

