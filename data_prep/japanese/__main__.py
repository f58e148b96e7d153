"""``python -m data_prep.japanese``: Japanese text -> filtered sentences -> TTS parquet dataset.

    python -m data_prep.japanese --out work/tts_ja --num-workers 2          # bundled ja.txt, espeak-ng
    python -m data_prep.japanese --texts corpus.txt --paragraphs --out work/my_ja
    python -m data_prep.japanese --dataset texts.parquet --column text --out work/my_ja
    python -m data_prep.japanese --dataset HuggingFaceFW/fineweb-2 --config jpn_Jpan \\
        --max-sentences 100000 --backend kokoro --kokoro-device cuda --out work/fineweb2_ja
"""

from __future__ import annotations

import argparse
import shlex
import sys

from data_prep.japanese.generate import (
    BUNDLED_TEXT,
    JapaneseSummary,
    default_license,
    describe_dataset,
    generate_japanese,
    iter_dataset_documents,
    iter_text_file,
    make_backend,
    take_documents,
)
from data_prep.japanese.sentences import FilterStats, SentenceFilter, UnspeakableRules
from data_prep.tts.backends import BackendUnavailableError

PROG = "python -m data_prep.japanese"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Japanese synthetic speech: stream text (a file or a Hugging Face dataset such as "
        "Fineweb-2 jpn_Jpan), split it into sentences, filter them (every drop counted per reason), "
        "and synthesise them with Kokoro-82M or espeak-ng into parquet shards carrying both the "
        "original-script `text` and the katakana CTC target `ctc_text`. Re-runnable: finished shards "
        "are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("text source (default: the bundled data_prep/texts/ja.txt)")
    src.add_argument("--texts", help="UTF-8 text file: one sentence or document per line")
    src.add_argument(
        "--paragraphs",
        action="store_true",
        help="--texts holds blank-line separated paragraphs of hard-wrapped lines (joined first)",
    )
    src.add_argument(
        "--dataset",
        help="HF hub id (HuggingFaceFW/fineweb-2), a builder (parquet, json) with --data-files, a local "
        "dataset folder or one .parquet/.jsonl/.csv/.txt file; streamed",
    )
    src.add_argument("--config", help="dataset config, e.g. jpn_Jpan for Fineweb-2")
    src.add_argument("--split", default="train", help="dataset split")
    src.add_argument("--column", default="text", help="dataset column holding the text")
    src.add_argument("--data-files", nargs="+", help="data_files for a builder (globs allowed)")
    src.add_argument("--skip-documents", type=int, default=0, help="skip the first N documents")
    src.add_argument("--max-documents", type=int, help="read at most N documents (after the skipped)")
    src.add_argument("--max-sentences", type=int, help="stop after N kept sentences")

    flt = p.add_argument_group("sentence filter")
    flt.add_argument("--min-chars", type=int, default=5, help="shorter sentences: too_short")
    flt.add_argument("--max-chars", type=int, default=120, help="longer sentences: too_long")
    flt.add_argument(
        "--min-japanese-ratio",
        type=float,
        default=0.6,
        help="minimum share of kana/kanji among the letters (else not_japanese)",
    )
    flt.add_argument("--max-digits", type=int, default=8, help="longer digit runs: unspeakable_digits")
    flt.add_argument(
        "--allow-digit-groups",
        action="store_true",
        help="keep 03-1234-5678 / 2024/01/01 style digit groups (rejected by default)",
    )
    flt.add_argument(
        "--allow-latin",
        action="store_true",
        help="keep sentences whose katakana reading keeps Latin words (iPhone, LDK); TTS voices read "
        "them unreliably, so they are rejected by default (reading_non_katakana)",
    )
    flt.add_argument("--no-dedupe", action="store_true", help="keep duplicate sentences")
    flt.add_argument(
        "--rejected-examples", type=int, default=20, help="rejected sentences kept per reason for review"
    )

    tts = p.add_argument_group("speech synthesis")
    tts.add_argument("--out", required=True, help="output dataset folder")
    tts.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "kokoro", "espeak"],
        help="auto = Kokoro-82M when installed with its weights and misaki[ja], else espeak-ng",
    )
    tts.add_argument("--kokoro-dir", help="local Kokoro-82M folder (config.json, kokoro-v1_0.pth, voices/)")
    tts.add_argument("--kokoro-device", default="cpu", help="torch device for Kokoro (cpu, cuda)")
    tts.add_argument("--seed", type=int, default=0, help="voices of shard k come from (seed, split, k)")
    tts.add_argument("--shard-size", type=int, default=500, help="sentences per parquet shard")
    tts.add_argument("--test-fraction", type=float, default=0.0, help="share of sentences in the test split")
    tts.add_argument("--num-workers", type=int, help="worker processes (default: all cores; Kokoro: 1)")
    tts.add_argument("--license", help="dataset card license (default: that of the source texts if known)")
    tts.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return p


def run_cli(argv: list[str] | None = None) -> JapaneseSummary:
    """Parse ``argv`` and generate; returns the summary (``main`` returns an exit code)."""
    args = build_parser().parse_args(argv)
    if args.texts and args.dataset:
        raise SystemExit("give --texts or --dataset, not both")
    if args.paragraphs and args.dataset:
        raise SystemExit("--paragraphs applies to --texts only")
    if args.dataset:
        documents = iter_dataset_documents(
            args.dataset, args.column, config=args.config, split=args.split, data_files=args.data_files
        )
        source = describe_dataset(args.dataset, args.column, args.config, args.split, args.data_files)
    else:
        path = args.texts or str(BUNDLED_TEXT)
        try:
            open(path, encoding="utf-8").close()
        except OSError as e:
            raise SystemExit(f"cannot read --texts {path}: {e}") from e
        documents = iter_text_file(path, paragraphs=args.paragraphs)
        source = f"{path}" + (" (paragraphs)" if args.paragraphs else " (one document per line)")
    if args.skip_documents or args.max_documents is not None:
        documents = take_documents(documents, args.skip_documents, args.max_documents)
        source += f", documents {args.skip_documents}..{'' if args.max_documents is None else args.skip_documents + args.max_documents}"

    try:
        sentence_filter = SentenceFilter(
            min_chars=args.min_chars,
            max_chars=args.max_chars,
            min_japanese_ratio=args.min_japanese_ratio,
            allow_latin=args.allow_latin,
            unspeakable=UnspeakableRules(
                max_digits=args.max_digits, reject_digit_groups=not args.allow_digit_groups
            ),
            dedupe=not args.no_dedupe,
            stats=FilterStats(max_examples=args.rejected_examples),
        )
        log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
        backend = make_backend(
            args.backend, kokoro_dir=args.kokoro_dir, kokoro_device=args.kokoro_device, log=log
        )
    except BackendUnavailableError as e:
        raise SystemExit(f"error: {e}") from e
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    command = f"{PROG} " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return generate_japanese(
            documents,
            args.out,
            sentence_filter=sentence_filter,
            backend=backend,
            max_sentences=args.max_sentences,
            seed=args.seed,
            shard_size=args.shard_size,
            test_fraction=args.test_fraction,
            num_workers=args.num_workers,
            progress=not args.quiet,
            license=args.license or default_license(args.dataset, args.texts or BUNDLED_TEXT),
            command=command,
            source=source,
        )
    except BackendUnavailableError as e:
        raise SystemExit(f"error: {e}") from e


def main(argv: list[str] | None = None) -> int:
    run_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
