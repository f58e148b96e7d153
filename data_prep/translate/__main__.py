"""``python -m data_prep.translate``: speech-translation targets from an ASR dataset (``--help``).

    python -m data_prep.translate --source work/corpus/en --source-language en \\
        --target-languages de,fr,ja --out work/ast/en --transcription-share 0.3 \\
        --primary-backend openai --primary-base-url http://localhost:8000/v1 --primary-model microsoft/phi-4 \\
        --secondary-backend transformers --secondary-model google/madlad400-3b-mt \\
        --secondary-source-prefix '<2{tgt}> ' --secondary-device cuda --secondary-dtype bfloat16

    # offline, CPU only: two Apertium routes (apt-get install apertium-eng-spa apertium-eng-cat apertium-spa-cat)
    python -m data_prep.translate --source work/corpus/tts_en --split test --source-language en \
        --target-languages es --out work/ast/en_es_apertium \
        --primary-backend apertium --secondary-backend apertium --secondary-route '{src}-ca,ca-{tgt}'
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from data_prep.translate.agreement import DEFAULT_MAX_CER, DEFAULT_MAX_WER, AgreementConfig
from data_prep.translate.backends import DEFAULT_PROMPT, SUPPORTED_PAIRS
from data_prep.translate.generate import BackendFailureError, TranslationSummary, generate_translations
from granite_train.data.sources import SOURCE_KINDS, SourceSpec

ROLES = ("primary", "secondary")


def _add_backend_args(p: argparse.ArgumentParser, role: str) -> None:
    what = "its translation is the target" if role == "primary" else "must agree with the primary"
    g = p.add_argument_group(f"{role} backend ({what})")
    g.add_argument(f"--{role}-backend", required=True, choices=["openai", "transformers", "apertium"])
    g.add_argument(f"--{role}-model", help="served model name, or a local folder / hub id (not apertium)")
    g.add_argument(f"--{role}-name", help="short name for the card and columns (default: the model)")
    g.add_argument(
        f"--{role}-prompt", default=DEFAULT_PROMPT, help="chat prompt template (openai, causal LM)"
    )
    g.add_argument(f"--{role}-system-prompt", help="optional system message")
    g.add_argument(f"--{role}-max-new-tokens", type=int, default=256, help="generation limit per sentence")
    g.add_argument(f"--{role}-base-url", help="openai: API root, e.g. http://localhost:8000/v1")
    g.add_argument(f"--{role}-api-key-env", default="OPENAI_API_KEY", help="openai: env var with the key")
    g.add_argument(f"--{role}-concurrency", type=int, default=8, help="openai: requests in flight")
    g.add_argument(f"--{role}-max-retries", type=int, default=4, help="openai: retries per sentence")
    g.add_argument(f"--{role}-timeout", type=float, default=60.0, help="openai: seconds per request")
    g.add_argument(
        f"--{role}-extra-body", help="openai: JSON merged into every request, e.g. '{\"seed\": 0}'"
    )
    g.add_argument(
        f"--{role}-model-type", default="auto", choices=["auto", "seq2seq", "causal"], help="transformers"
    )
    g.add_argument(
        f"--{role}-source-prefix",
        default="",
        help="transformers seq2seq: template before each sentence, e.g. '<2{tgt}> ' (MADLAD-400)",
    )
    g.add_argument(
        f"--{role}-lang-codes",
        help="transformers seq2seq: LANG=CODE,... (NLLB: en=eng_Latn,de=deu_Latn): src_lang + forced BOS",
    )
    g.add_argument(f"--{role}-device", default="cpu", help="transformers: torch device")
    g.add_argument(
        f"--{role}-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="transformers",
    )
    g.add_argument(f"--{role}-revision", help="transformers: hub revision to pin")
    g.add_argument(
        f"--{role}-route",
        default="{src}-{tgt}",
        help="apertium: comma-separated modes, e.g. '{src}-ca,ca-{tgt}' to pivot through Catalan",
    )
    g.add_argument(f"--{role}-apertium-dir", help="apertium: a folder of modes (apertium -d)")
    g.add_argument(
        f"--{role}-trust-remote-code", action="store_true", help="transformers: run the repository's code"
    )


def build_parser() -> argparse.ArgumentParser:
    pairs = ", ".join(f"{s}->{t}" for s, t in sorted(SUPPORTED_PAIRS))
    p = argparse.ArgumentParser(
        prog="python -m data_prep.translate",
        description="Speech-translation targets: translate an ASR dataset's transcripts with two MT "
        "backends, keep the examples where they agree, write a parquet dataset + card + rejects.jsonl. "
        f"Re-runnable: finished shards are skipped. Pairs: {pairs}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("source (streamed; audio passed through undecoded)")
    src.add_argument(
        "--source", required=True, help="hub id, parquet file/glob/dir, audiofolder dir or JSONL"
    )
    src.add_argument("--source-kind", choices=SOURCE_KINDS, help="default: guessed from --source")
    src.add_argument("--config", help="hub dataset config")
    src.add_argument("--split", default="train", help="split to read (also the output split)")
    src.add_argument("--data-files", nargs="+", help="explicit data files (parquet / JSONL)")
    src.add_argument("--revision", help="hub dataset revision")
    src.add_argument("--text-column", default="text", help="transcript column (CommonVoice: sentence)")
    src.add_argument("--audio-column", default="audio")
    src.add_argument("--id-column", default="id", help="unique id column (CommonVoice: path)")
    src.add_argument("--source-language", required=True, help="language of the speech")
    src.add_argument("--target-languages", required=True, help="comma-separated, e.g. de,fr,ja")
    src.add_argument(
        "--target-assignment",
        default="all",
        choices=["all", "one"],
        help="all: every record into every target; one: one target per record, drawn from (seed, id)",
    )
    src.add_argument("--max-records", type=int, help="read at most N records")
    p.add_argument("--out", required=True, help="output dataset folder")
    for role in ROLES:
        _add_backend_args(p, role)
    f = p.add_argument_group("agreement filter")
    f.add_argument("--max-wer", type=float, default=DEFAULT_MAX_WER)
    f.add_argument("--max-cer", type=float, default=DEFAULT_MAX_CER, help="for --cer-languages targets")
    f.add_argument("--cer-languages", default="ja,zh", help="targets scored by CER")
    f.add_argument("--normalizer", default="basic", choices=["basic", "whisper_english", "none"])
    f.add_argument("--keep-copies", action="store_true", help="do not reject outputs equal to the source")
    o = p.add_argument_group("output")
    o.add_argument(
        "--transcription-share",
        type=float,
        default=0.0,
        help="share of kept examples with target '[Transcription] src [Translation] tgt' (4.0-1b: 0.3)",
    )
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--shard-size", type=int, default=1000, help="input records per shard (unit of resume)")
    o.add_argument("--batch-size", type=int, default=32, help="unique sentences per backend call")
    o.add_argument(
        "--max-error-rate", type=float, default=0.5, help="stop when a backend fails more in a shard"
    )
    o.add_argument("--no-embed-audio", action="store_true", help="keep path-only audio as paths")
    o.add_argument("--sequential-backends", action="store_true", help="call the backends one after the other")
    o.add_argument("--license", default="other", help="license of the dataset card")
    o.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def _codes(spec: str | None) -> dict[str, str] | None:
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        lang, sep, code = item.partition("=")
        if not sep or not lang.strip() or not code.strip():
            raise SystemExit(f"--*-lang-codes takes LANG=CODE,..., got {item!r}")
        out[lang.strip()] = code.strip()
    return out


def build_backend(args: argparse.Namespace, role: str, batch_size: int):
    """The backend described by the ``--{role}-*`` options."""
    a = {k[len(role) + 1 :]: v for k, v in vars(args).items() if k.startswith(f"{role}_")}
    if a["backend"] == "apertium":
        from data_prep.translate.backends import ApertiumBackend

        return ApertiumBackend(a["route"], data_dir=a["apertium_dir"], name=a["name"])
    if not a["model"]:
        raise SystemExit(f"--{role}-backend {a['backend']} needs --{role}-model")
    if a["backend"] == "openai":
        from data_prep.translate.backends import OpenAIChatBackend

        if not a["base_url"]:
            raise SystemExit(f"--{role}-backend openai needs --{role}-base-url")
        try:
            extra = json.loads(a["extra_body"]) if a["extra_body"] else None
        except ValueError as e:
            raise SystemExit(f"--{role}-extra-body is not JSON: {e}") from e
        return OpenAIChatBackend(
            a["base_url"],
            a["model"],
            api_key_env=a["api_key_env"],
            prompt_template=a["prompt"],
            system_prompt=a["system_prompt"],
            max_tokens=a["max_new_tokens"],
            concurrency=a["concurrency"],
            max_retries=a["max_retries"],
            timeout=a["timeout"],
            extra_body=extra,
            name=a["name"],
        )
    from data_prep.translate.backends import TransformersBackend

    return TransformersBackend(
        a["model"],
        model_type=a["model_type"],
        source_prefix=a["source_prefix"],
        lang_codes=_codes(a["lang_codes"]),
        prompt_template=a["prompt"],
        system_prompt=a["system_prompt"],
        batch_size=batch_size,
        max_new_tokens=a["max_new_tokens"],
        device=a["device"],
        dtype=a["dtype"],
        trust_remote_code=a["trust_remote_code"],
        revision=a["revision"],
        name=a["name"],
    )


def run_cli(argv: list[str] | None = None) -> TranslationSummary:
    """Parse ``argv`` and generate; returns the summary (``main`` returns an exit code)."""
    args = build_parser().parse_args(argv)
    targets = [t.strip() for t in args.target_languages.split(",") if t.strip()]
    try:
        spec = SourceSpec(
            "source",
            args.source,
            kind=args.source_kind,
            split=args.split,
            config=args.config,
            revision=args.revision,
            data_files=list(args.data_files or []),
            text_column=args.text_column,
            audio_column=args.audio_column,
            id_column=args.id_column or None,
            language=args.source_language,
        )
        agreement = AgreementConfig(
            max_wer=args.max_wer,
            max_cer=args.max_cer,
            cer_languages=frozenset(x.strip() for x in args.cer_languages.split(",") if x.strip()),
            normalizer=args.normalizer,
        )
        from data_prep.translate.backends import check_pair

        for t in targets:
            check_pair(args.source_language, t)  # before loading any model
        primary, secondary = (build_backend(args, role, args.batch_size) for role in ROLES)
        command = "python -m data_prep.translate " + shlex.join(sys.argv[1:] if argv is None else argv)
        return generate_translations(
            spec,
            args.out,
            primary=primary,
            secondary=secondary,
            source_language=args.source_language,
            target_languages=targets,
            split=args.split,
            target_assignment=args.target_assignment,
            agreement_config=agreement,
            transcription_share=args.transcription_share,
            seed=args.seed,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            max_records=args.max_records,
            reject_copies=not args.keep_copies,
            embed_audio=not args.no_embed_audio,
            max_error_rate=args.max_error_rate,
            parallel_backends=not args.sequential_backends,
            progress=not args.quiet,
            license=args.license,
            command=command,
        )
    except (ValueError, FileNotFoundError, BackendFailureError) as e:
        raise SystemExit(f"error: {e}") from e


def main(argv: list[str] | None = None) -> int:
    """Entry point (``--help`` for the options)."""
    run_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
