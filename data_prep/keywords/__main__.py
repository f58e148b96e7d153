"""``python -m data_prep.keywords generate|testset ...``: keyword-biased ASR data (``--help``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from data_prep.keywords.generate import CHECK_AUDIO
from data_prep.keywords.select import KeywordConfig

_DEFAULTS = KeywordConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.keywords",
        description="Keyword-biased ASR data: attach keyword lists to an ASR dataset (generate), "
        "or synthesise a biasing test set full of names and acronyms (testset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser(
        "generate",
        help="add keywords / bias_words / prompt_suffix to every example of a dataset",
        description="Stream an ASR dataset, give every example a keyword list (hard words of its "
        "transcript + distractors) and write parquet shards + a dataset card. Re-runnable: "
        "finished shards are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = g.add_argument_group("source (granite_train.data.SourceSpec)")
    src.add_argument(
        "--source", required=True, help="hub id, parquet file/glob/dir, audiofolder dir or JSONL"
    )
    src.add_argument("--kind", choices=["hub", "parquet", "audiofolder", "jsonl"], help="default: guessed")
    src.add_argument("--config", help="hub dataset config")
    src.add_argument("--split", default="train")
    src.add_argument("--name", help="source name (default: last part of --source)")
    src.add_argument("--text-column", default="text")
    src.add_argument("--audio-column", default="audio")
    src.add_argument("--id-column", default="id", help="'' to number the records instead")
    src.add_argument("--language", help="language of every example (default: --language-column)")
    src.add_argument("--language-column", default="language")
    src.add_argument("--revision", help="hub revision to pin")
    src.add_argument("--data-files", nargs="+", default=[], help="explicit data files (parquet / JSONL)")
    g.add_argument("--out", required=True, help="output dataset folder")
    g.add_argument(
        "--frequency-file", help="word frequencies instead of counting the source ('word count' lines)"
    )
    g.add_argument(
        "--max-positives", type=int, default=_DEFAULTS.max_positives, help="bias words per list, at most"
    )
    g.add_argument(
        "--num-distractors", type=int, default=_DEFAULTS.num_distractors, help="distractors per list"
    )
    g.add_argument(
        "--no-list-fraction", type=float, default=_DEFAULTS.no_list_fraction, help="share without a list"
    )
    g.add_argument(
        "--common-top-k", type=int, default=_DEFAULTS.common_top_k, help="words outside the top K are rare"
    )
    g.add_argument("--pool-size", type=int, default=_DEFAULTS.pool_size, help="distractor pool size, at most")
    g.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    g.add_argument("--shard-size", type=int, default=2000, help="input records per output shard")
    g.add_argument("--check-audio", default="header", choices=CHECK_AUDIO, help="audio validation")
    g.add_argument("--max-records", type=int, help="only the first N records of the source")
    g.add_argument("--license", default="other", help="dataset card license (the source's)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or summary")

    t = sub.add_parser(
        "testset",
        help="synthesise a keyword-biasing test set (template sentences, espeak-ng)",
        description="Template sentences full of names and acronyms -> TTS -> parquet with "
        "keywords / bias_words / prompt_suffix. Re-runnable (finished TTS shards are kept).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--out", required=True, help="output dataset folder")
    t.add_argument("--num-sentences", type=int, default=200)
    t.add_argument("--num-distractors", type=int, default=10, help="distractors per keyword list")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--split", default="test")
    t.add_argument("--backend", default="espeak", choices=["espeak", "kokoro"])
    t.add_argument("--kokoro-dir", help="local Kokoro-82M folder")
    t.add_argument("--shard-size", type=int, default=500)
    t.add_argument("--num-workers", type=int, help="TTS worker processes (default: all cores)")
    t.add_argument(
        "--unseen-in",
        help="a dataset folder (parquet with a text column, e.g. the training corpus): use only the "
        "names and acronyms said in none of its transcripts",
    )
    t.add_argument("--quiet", action="store_true")
    return p


def _unseen_in(folder: str, quiet: bool) -> tuple[str, ...]:
    """The bundled entities said in no transcript of the parquet dataset under ``folder``."""
    import pyarrow.parquet as pq

    from data_prep.keywords.testset import ENTITIES, unseen_entities

    files = sorted(Path(folder).rglob("*.parquet"))
    if not files:
        raise SystemExit(f"--unseen-in {folder}: no parquet files there (a dataset folder with a text column)")
    texts = [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]
    kept = unseen_entities(texts)
    if not quiet:
        print(f"entities said in none of {len(texts)} transcripts of {folder}: {len(kept)} of {len(ENTITIES)}")
    return kept


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m data_prep.keywords " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.command == "generate":
        from data_prep.keywords.generate import generate_keyword_dataset
        from granite_train.data.sources import SourceSpec

        name = args.name or args.source.rstrip("/").split("/")[-1].split("*")[0] or "source"
        try:
            spec = SourceSpec(
                name,
                args.source,
                kind=args.kind,
                split=args.split,
                config=args.config,
                text_column=args.text_column,
                audio_column=args.audio_column,
                id_column=args.id_column or None,
                language=args.language,
                language_column=args.language_column or None,
                revision=args.revision,
                data_files=list(args.data_files),
            )
            config = KeywordConfig(
                max_positives=args.max_positives,
                num_distractors=args.num_distractors,
                no_list_fraction=args.no_list_fraction,
                seed=args.seed,
                common_top_k=args.common_top_k,
                pool_size=args.pool_size,
            )
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e
        generate_keyword_dataset(
            spec,
            args.out,
            config=config,
            frequency_file=args.frequency_file,
            shard_size=args.shard_size,
            check_audio=args.check_audio,
            max_records=args.max_records,
            progress=not args.quiet,
            license=args.license,
            command=command,
        )
    else:
        from data_prep.keywords.testset import build_testset
        from data_prep.tts.backends import BackendUnavailableError, get_backend

        try:
            if args.backend == "kokoro":
                backend = get_backend("kokoro", model_dir=args.kokoro_dir)
            else:
                backend = get_backend("espeak")
        except BackendUnavailableError as e:
            raise SystemExit(f"error: {e}") from e
        entities = None
        if args.unseen_in:
            entities = _unseen_in(args.unseen_in, quiet=args.quiet)
        build_testset(
            args.out,
            entities=entities,
            num_sentences=args.num_sentences,
            seed=args.seed,
            num_distractors=args.num_distractors,
            backend=backend,
            split=args.split,
            shard_size=args.shard_size,
            num_workers=args.num_workers,
            progress=not args.quiet,
            command=command,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
