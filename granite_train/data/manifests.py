"""Manifests as customers send them: the file's text encoding, and which column is which.

A manifest from a spreadsheet may be Latin-1 / Windows-1252 or UTF-16 instead of UTF-8, and its
transcript column may be called ``transcript`` or ``sentence`` instead of ``text``. These helpers
detect the encoding (or check a given one) and name the column a user most likely meant, so a
run stops with one line naming the fix instead of a traceback from deep inside the reader.
"""

from __future__ import annotations

import codecs
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from granite_train.data.errors import DataError

log = logging.getLogger(__name__)

SAMPLE_BYTES = 16 << 20  # enough of a manifest to detect its encoding (most are far smaller)

# column names that usually hold a transcript / an audio file, most likely first
TEXT_COLUMN_NAMES = (
    "text", "transcript", "transcription", "sentence", "normalized_text", "text_normalized",
    "raw_text", "utterance", "words", "label", "target_text", "source_text", "caption",
)  # fmt: skip
AUDIO_COLUMN_NAMES = (
    "audio", "audio_filepath", "file_name", "path", "audio_path", "filepath", "file", "filename",
    "wav", "wav_path", "recording", "audio_file", "flac", "mp3",
)  # fmt: skip
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif", ".sph", ".webm")


def _line_of(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of byte ``offset`` in ``raw``."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _sample(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The first :data:`SAMPLE_BYTES` of a manifest: a local file, or a URL read through fsspec."""
    from granite_train.data.remote import is_url, read_head

    if is_url(str(path)):
        return read_head(str(path), SAMPLE_BYTES, storage_options)
    return Path(path).read_bytes()[:SAMPLE_BYTES]


def check_encoding(path: str | Path, encoding: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`DataError` naming the file, line and byte when ``path`` is not ``encoding`` text."""
    raw = _sample(path, storage_options)
    try:
        codecs.lookup(encoding)
    except LookupError as err:
        raise DataError(
            f"manifest {path}: unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252, utf-16)"
        ) from err
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as err:
        if err.start >= len(raw) - 4 and len(raw) == SAMPLE_BYTES:
            return  # the sample cut a character in two
        line, column = _line_of(raw, err.start)
        raise DataError(
            f"manifest {path}: line {line}, column {column} is not {encoding} text (byte "
            f"0x{raw[err.start]:02x}); set encoding= to the file's encoding (e.g. latin-1, cp1252, utf-16)"
        ) from err


def detect_encoding(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> str:
    """The text encoding of a manifest (see :func:`_detect`), detected once per file version."""
    from granite_train.data.remote import is_url

    if is_url(str(path)):  # no mtime to key a cache on: read the head again (once per open)
        return _encoding_of(_sample(path, storage_options), str(path))
    stat = Path(path).stat()
    return _detect(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _detect(path: str, mtime_ns: int, size: int) -> str:
    """The text encoding of a manifest: UTF-8 (``utf-8-sig`` with a BOM, ``utf-16`` with its BOM),
    else the best guess of ``charset_normalizer``, logged; :class:`DataError` if nothing fits."""
    return _encoding_of(Path(path).read_bytes()[:SAMPLE_BYTES], path)


def _encoding_of(raw: bytes, path: str) -> str:
    if raw.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        raw.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as err:
        if err.start >= len(raw) - 4 and len(raw) == SAMPLE_BYTES:
            return "utf-8"
        first_bad = err.start
    best = _best_guess(raw)
    if best is None:
        line, column = _line_of(raw, first_bad)
        raise DataError(
            f"manifest {path}: line {line}, column {column} is not UTF-8 (byte 0x{raw[first_bad]:02x}) and "
            "no other text encoding fits; set encoding= to the file's encoding (e.g. latin-1, cp1252, utf-16)"
        )
    encoding = codecs.lookup(best).name
    log.warning("manifest %s is not UTF-8: read as %s (detected; set encoding= to override)", path, encoding)
    return encoding


def _best_guess(raw: bytes) -> str | None:
    """``charset_normalizer``'s guess, made for manifests: among the least chaotic decodings, one
    in which it recognises a language (cp1251 for Russian), else Windows-1252, which spreadsheets
    write for Western European text and which short samples cannot tell from cp1250 and others."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    if not matches:
        return None
    least = min(m.chaos for m in matches)
    calm = [m for m in matches if m.chaos <= least + 1e-9]
    known = [m for m in calm if m.language and m.language != "Unknown"]
    western = [m for m in calm if codecs.lookup(m.encoding).name == "cp1252"]
    return (known or western or calm)[0].encoding


def manifest_encoding(
    files: Sequence[str], given: str | None, storage_options: Mapping[str, Any] | None = None
) -> str:
    """One encoding for a source's manifest files: ``given`` (checked) or the detected one;
    ``storage_options`` open manifests given as URLs (see :mod:`granite_train.data.remote`)."""
    encodings = set()
    for file in files:
        if given:
            check_encoding(file, given, storage_options)
            encodings.add(given)
        else:
            encodings.add(detect_encoding(file, storage_options))
    if len(encodings) > 1:
        raise DataError(f"the manifest files {list(files)} have different encodings {sorted(encodings)}: "
                        "convert them to one (UTF-8) or read them as separate sources")  # fmt: skip
    return encodings.pop() if encodings else (given or "utf-8")


def _looks_like_audio(value: Any) -> bool:
    if isinstance(value, Mapping):
        return bool(value.get("bytes") or value.get("path"))
    if isinstance(value, (bytes, bytearray)):
        return True
    return isinstance(value, str) and value.lower().endswith(AUDIO_SUFFIXES)


def suggest_text_column(row: Mapping[str, Any], exclude: Iterable[str] = ()) -> str | None:
    """The column of ``row`` that most likely holds the transcript, or ``None``."""
    skip = set(exclude)
    text_like = [
        k for k, v in row.items() if k not in skip and isinstance(v, str) and not _looks_like_audio(v)
    ]
    for name in TEXT_COLUMN_NAMES:
        if name in text_like:
            return name
    lowered = {k.lower(): k for k in text_like}
    for name in TEXT_COLUMN_NAMES:
        if name in lowered:
            return lowered[name]
    # else the string column with the most spaces: sentences have them, ids and speakers do not
    spaced = sorted(text_like, key=lambda k: -str(row[k]).count(" "))
    return spaced[0] if spaced and " " in str(row[spaced[0]]) else None


def suggest_audio_column(row: Mapping[str, Any]) -> str | None:
    """The column of ``row`` that most likely holds the audio (a struct, bytes or a file path)."""
    audio_like = [k for k, v in row.items() if _looks_like_audio(v)]
    for name in AUDIO_COLUMN_NAMES:
        if name in audio_like:
            return name
    return audio_like[0] if audio_like else None


def missing_column_message(kind: str, column: str, row: Mapping[str, Any], suggestion: str | None) -> str:
    """E.g. "column 'text' not found; columns are: audio, transcript; set text_column=transcript"."""
    columns = ", ".join(map(str, row)) or "(none)"
    fix = f"set {kind}_column={suggestion}" if suggestion else f"set {kind}_column= to the {kind} column"
    return f"column {column!r} not found; columns are: {columns}; {fix}"


__all__ = [
    "check_encoding",
    "detect_encoding",
    "manifest_encoding",
    "missing_column_message",
    "suggest_audio_column",
    "suggest_text_column",
]
