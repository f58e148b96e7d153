"""Our Open ASR scoring against the leaderboard's own code, on generated sentence pairs.

    python scripts/open_asr_scoring_check.py --leaderboard PATH/TO/open_asr_leaderboard [--pairs 400]

PATH is a checkout of github.com/huggingface/open_asr_leaderboard (its ``normalizer`` package is
imported from there at run time; nothing of it is copied here). Prints the corpus WER both ways,
and the pairs whose per-pair edits differ, with both normalised forms: the leaderboard's
``EnglishTextNormalizer`` is Whisper's plus name / acronym / compound tables; ours is the
``whisper-normalizer`` package's (Whisper's own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import kaldialign

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from granite_train.eval.metrics import error_rates  # noqa: E402
from granite_train.text.normalize import get_normalizer  # noqa: E402
from tests.scoring_pairs import sentence_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leaderboard", required=True, type=Path, help="open_asr_leaderboard checkout")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=10, help="differing pairs to print")
    args = parser.parse_args()
    sys.path.insert(0, str(args.leaderboard))
    from normalizer.normalizer import EnglishTextNormalizer  # the leaderboard's

    theirs_norm, ours_norm = EnglishTextNormalizer(), get_normalizer("whisper_english")
    pairs = sentence_pairs(args.pairs, args.seed)
    # the leaderboard: normalise, drop empty references, kaldialign with merge_compounds
    kept = [(theirs_norm(r), theirs_norm(h)) for r, h in pairs]
    kept = [(r, h) for r, h in kept if r.strip() and r.strip() != "ignore time segment in scoring"]
    theirs = kaldialign.batch_error_rate(
        [tuple(r.split()) for r, _ in kept], [tuple(h.split()) for _, h in kept], merge_compounds=True
    )
    ours_pairs = [(r, h) for r, h in pairs if " ".join(ours_norm(r).split())]
    ours = error_rates([r for r, _ in ours_pairs], [h for _, h in ours_pairs], merge_compounds=True)
    plain = error_rates([r for r, _ in ours_pairs], [h for _, h in ours_pairs])
    print(f"pairs: {len(pairs)} (scored: leaderboard {len(kept)}, ours {len(ours_pairs)})")
    print(
        f"leaderboard WER           : {100 * theirs['err_rate']:.3f} %  ({theirs['total']} edits / {theirs['ref_len']})"
    )
    print(
        f"ours, protocol=open_asr   : {100 * ours['wer']:.3f} %  "
        f"({ours['substitutions'] + ours['deletions'] + ours['insertions']} edits / {ours['ref_words']})"
    )
    print(f"ours, jiwer (no merging)  : {100 * plain['wer']:.3f} %")
    differ = 0
    for r, h in pairs:
        a, b = theirs_norm(r), ours_norm(r)
        c, d = theirs_norm(h), ours_norm(h)
        if a.split() != b.split() or c.split() != d.split():
            differ += 1
            if differ <= args.show:
                print(
                    f"- ref {r!r}\n    leaderboard {a!r} | ours {b!r}\n  hyp {h!r}\n    leaderboard {c!r} | ours {d!r}"
                )
    print(f"pairs normalised differently: {differ} of {len(pairs)}")


if __name__ == "__main__":
    main()
