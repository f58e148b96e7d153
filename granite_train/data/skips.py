"""What was skipped, said so that a user can fix it: per source and reason, with one example row
each and the fix, for the console, ``results.md`` and the error that stops a run with no data."""

from __future__ import annotations

from collections.abc import Mapping

from granite_train.data.errors import DataError

# how to fix each reason a record was skipped (or left out by the source's split)
HINTS: dict[str, str] = {
    "no_text": "a transcript is required: fill it in, or point text_column= at the transcript column",
    "no_audio": "no audio in the row: point audio_column= at the audio (a path, bytes or an Audio struct)",
    "missing_file": "relative paths resolve against the manifest's folder: check the paths",
    "decode_error": "not a readable audio file (libsndfile: WAV, FLAC, OGG/Opus, MP3): convert or remove it",
    "empty_audio": "a file without samples",
    "non_finite_samples": "NaN or infinite samples: the file is corrupt",
    "silence": "quieter than the silence threshold (prepare.silence_db)",
    "too_short": "shorter than prepare.min_duration",
    "too_long": "longer than prepare.max_duration: cut long recordings with `python -m data_prep.segment`",
    "oov_text": "characters outside the CTC vocabulary: `granite-train coverage` / `extend-vocab`, or oov_policy=drop",
    "empty_target": "no character of the transcript is in the CTC vocabulary",
    "fewer_frames_than_targets": "more characters than the audio has frames: a transcript that does not fit its audio",
    "held_out": "the held-out split took it (holdout=exclude)",
    "not_held_out": "outside the held-out split (holdout=only)",
    "other_split": "its manifest `split` column names another split",
    "unreadable_file": "a data file stayed unreadable after the source's read_attempts (deleted, no access): "
    "the rest of its records were left out; restore it, or remove it from the source",
}


def format_reasons(
    counts: Mapping[str, int], examples: Mapping[str, str] | None = None, indent: str = "  - "
) -> list[str]:
    """One line per reason, most frequent first: ``- no_text: 4 (e.g. row: detail) - fix``."""
    lines = []
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        example = (examples or {}).get(reason)
        line = f"{indent}{reason}: {n}"
        if example:
            line += f" (e.g. {example})"
        if reason in HINTS:
            line += f" -- {HINTS[reason]}"
        lines.append(line)
    return lines


def no_usable_example_error(
    source: str,
    path: str,
    rows: int,
    reasons: Mapping[str, int],
    examples: Mapping[str, str],
    where: str = "",
) -> DataError:
    """The error for a source of which a full pass yielded nothing usable."""
    head = (
        f"source {source!r} ({path}): a full pass over its {rows} record(s){where} yielded no usable "
        "example. Why:"
    )
    return DataError("\n".join([head, *format_reasons(reasons, examples)]))


def consecutive_skips_error(limit: int, reasons: Mapping[str, Mapping[str, int]], examples) -> DataError:
    """The error for a stream that skipped ``limit`` records in a row without serving one."""
    lines = [f"no usable example after {limit} records in a row were skipped (data.max_consecutive_skips):"]
    for source, counts in reasons.items():
        lines.append(f"  source {source!r}:")
        lines += format_reasons(counts, examples.get(source, {}), indent="    - ")
    return DataError("\n".join(lines))


def skip_report_lines(
    by_source: Mapping[str, Mapping[str, int]], examples=None, title: str = ""
) -> list[str]:
    """A readable report of what was skipped (and repaired), per source."""
    lines = [title] if title else []
    for source, counts in sorted(by_source.items()):
        if counts:
            lines.append(f"  source {source!r}: {sum(counts.values())} record(s)")
            lines += format_reasons(counts, (examples or {}).get(source, {}), indent="    - ")
    return lines


__all__ = [
    "HINTS",
    "consecutive_skips_error",
    "format_reasons",
    "no_usable_example_error",
    "skip_report_lines",
]
