"""``python -m granite_train.models.turboctc_new``: a new (random) granite-speech-5.0 TurboCTC folder in
the released layout, with a BPE tokenizer trained on a corpus's transcripts: the ``model.init`` of
``recipe=turboctc_tiny_en`` when no released checkpoint is at hand (tests, CPU experiments).

    python -m granite_train.models.turboctc_new --texts-from work/corpus/tts_en_engines --split train \\
        --vocab-size 256 --hidden-size 128 --num-layers 4 --num-heads 4 --out work/turboctc/init

Every architecture key not given keeps the release's value (:func:`~.turboctc.tiny_turboctc_config`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from granite_train.data.prompts import normalize_target
from granite_train.models.turboctc import build_bpe_tokenizer, save_turboctc, tiny_turboctc_config


def corpus_texts(folder: str | Path, split: str) -> list[str]:
    """The ``text`` column of ``folder/data/<split>-*.parquet`` (a granite-tts corpus) or of
    ``folder/<split>/*.parquet``."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    files = sorted((folder / "data").glob(f"{split}-*.parquet")) or sorted((folder / split).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no {split} parquet shards under {folder} (data/{split}-*.parquet or {split}/*.parquet)"
        )
    texts = [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]
    if not texts:
        raise ValueError(f"{folder}: the {split} shards hold no transcripts")
    return texts


def new_turboctc_folder(
    texts: Iterable[str],
    out: str | Path,
    vocab_size: int,
    normalize: bool = True,
    seed: int = 0,
    **sizes: int,
) -> Path:
    """Train the tokenizer on ``texts`` (normalised as ``model.normalize_targets`` trains), build the
    model with its head sized to the tokenizer, save both."""
    texts = [normalize_target(t) if normalize else t for t in texts]
    tokenizer = build_bpe_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    from transformers import GraniteSpeech5ForCTC

    model = GraniteSpeech5ForCTC(tiny_turboctc_config(vocab_size=len(tokenizer), **sizes))
    return save_turboctc(model, tokenizer, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m granite_train.models.turboctc_new", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--texts-from", required=True, help="corpus folder whose transcripts train the BPE tokenizer"
    )
    p.add_argument("--split", default="train")
    p.add_argument("--vocab-size", type=int, default=256, help="BPE units (the release: 16384)")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--keep-case", action="store_true", help="do not lowercase / strip punctuation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        texts = corpus_texts(args.texts_from, args.split)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = {
        "hidden_size": args.hidden_size,
        "intermediate_size": 4 * args.hidden_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_heads,
        "num_key_value_heads": args.num_heads,
        "head_dim": args.hidden_size // args.num_heads,
    }
    out = new_turboctc_folder(
        texts, args.out, args.vocab_size, normalize=not args.keep_case, seed=args.seed, **sizes
    )
    print(f"{out}: {len(texts)} transcripts, {sizes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
