"""Reference / hypothesis pairs that exercise scoring: compounds split or joined, contractions,
numbers, spellings, fillers, punctuation and case. Deterministic for a seed."""

from __future__ import annotations

import random

COMPOUNDS = [
    ("white paper", "whitepaper"),
    ("note book", "notebook"),
    ("data base", "database"),
    ("every one", "everyone"),
    ("week end", "weekend"),
    ("some time", "sometime"),
    ("in to", "into"),
    ("foot ball", "football"),
    ("web site", "website"),
    ("life style", "lifestyle"),
]
CONTRACTIONS = [
    ("can't", "can not"),
    ("won't", "will not"),
    ("it's", "it is"),
    ("we're", "we are"),
    ("I'd", "I would"),
    ("they've", "they have"),
    ("you'll", "you will"),
    ("didn't", "did not"),
    ("let's", "let us"),
]
WORDS = (
    "the market report shows a steady rise in revenue for the third quarter and our team will "
    "review every line before the meeting on monday while the board expects growth"
).split()
EXTRAS = [
    ("twenty five", "25"),
    ("colour", "color"),
    ("Mr. Smith", "mister smith"),
    ("uh", ""),
    ("10%", "ten percent"),
    ("$5", "five dollars"),
    # where the leaderboard's normaliser (2026-08) adds to Whisper's: compounds, acronyms, names, slang
    ("all right", "alright"),
    ("the B B C", "the BBC"),
    ("Alan", "Allen"),
    ("gonna", "going to"),
]


def sentence_pairs(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (reference, hypothesis) pairs; in about half, one side splits a compound the other joins."""
    rng = random.Random(seed)
    pairs = []
    for k in range(n):
        ref = rng.sample(WORDS, rng.randint(4, 12))
        hyp = list(ref)
        if k % 2 == 0:  # a compound, split on one side, joined on the other
            split, joined = rng.choice(COMPOUNDS)
            at = rng.randrange(len(ref) + 1)
            a, b = (split, joined) if rng.random() < 0.5 else (joined, split)
            ref.insert(at, a)
            hyp.insert(at, b)
        if k % 3 == 0:  # a contraction, expanded on one side
            short, long = rng.choice(CONTRACTIONS)
            at = rng.randrange(len(ref) + 1)
            ref.insert(at, short)
            hyp.insert(at, long if rng.random() < 0.7 else short)
        if k % 5 == 0:
            written, spoken = rng.choice(EXTRAS)
            ref.append(written)
            hyp.append(spoken)
        if k % 4 == 1 and len(hyp) > 3:  # real errors too
            hyp[rng.randrange(len(hyp))] = rng.choice(WORDS)
            del hyp[rng.randrange(len(hyp))]
        if k % 7 == 3:
            hyp.insert(rng.randrange(len(hyp) + 1), rng.choice(WORDS))
        text = " ".join(ref)
        pairs.append((text[0].upper() + text[1:] + ".", " ".join(hyp)))
    return pairs
