"""Which words of a transcript go into its keyword list, and which distractors join them.

Keyword-biased ASR appends ``Keywords: kw1, kw2, ...`` to the instruction (RECIPE.md "Keyword
biasing"); keywords absent from the audio are allowed. Per example::

    transcript -> word tokens (case kept, outer punctuation stripped)
      -> candidates: the "hard" words, each for one or more reasons
           rare     its lowercase form is outside the ``common_top_k`` most frequent words of the
                    corpus (Le et al. 2021, "Contextualized streaming end-to-end speech recognition
                    with trie-based deep biasing and shallow fusion": common = top 5000 words of the
                    training text, every other word is rare)
           name     capitalised, with lowercase letters, and not capitalised only because it starts a
                    sentence: capitalised mid-sentence here, or usually capitalised mid-sentence in
                    the corpus ("Paris" at the start of a sentence still counts, "The" does not)
           acronym  two or more letters, all upper case ("NASA", "U.S", "GPT-4")
           digit    contains a digit ("42", "3.5", "GPT-4")
      -> positives: up to ``max_positives`` candidates, rarest first (ties in random order)
      -> distractors: ``num_distractors`` words of the corpus's pool of hard words (the same four
         reasons) that do not occur in the transcript
      -> keywords = shuffle(positives + distractors); prompt suffix "Keywords: kw1, kw2, ..."

A share ``no_list_fraction`` of the examples gets no list at all (empty ``keywords``, empty suffix),
so the model also learns to transcribe without one. Every random draw of an example comes from
``random.Random`` seeded with (seed, example id): the same corpus, vocabulary and seed give the same
lists whatever the order, sharding or resumption of the run.

Case rules need cased text: a transcript without a single lowercase letter (LibriSpeech is all
upper case) is treated as uncased, and only the rare and digit rules apply to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

KEYWORDS_PREFIX = "Keywords: "
"""The instruction suffix is ``KEYWORDS_PREFIX + ", ".join(keywords)``."""

WORD_RE = re.compile(r"[^\W_](?:[\w'’.&\-]*[^\W_])?")
"""A word: starts and ends with a letter or digit; inner apostrophes, dots, hyphens and ampersands
are kept ("don't", "U.S", "GPT-4", "AT&T", "3.5"), outer punctuation is not."""
_SENTENCE_END = re.compile(r"[.!?…。！？]")
_NOT_ALNUM = re.compile(r"[\W_]+")
_POSSESSIVE = re.compile(r"['’]s$")
_TITLES = frozenset(
    "mr mrs ms dr prof st mt jr sr sgt capt col gen lt rev hon gov sen rep pres messrs mme mlle".split()
)
_NEVER_NAMES = frozenset({"i", "i'm", "i'll", "i've", "i'd", "i’m", "i’ll", "i’ve", "i’d"})
"""Capitalised in every position but not names."""

REASONS = ("rare", "name", "acronym", "digit")


# -------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    """One word of a transcript."""

    text: str
    """As written, outer punctuation stripped."""
    initial: bool
    """First word of a sentence (first of the transcript, or after ``.!?``)."""

    @property
    def key(self) -> str:
        """The case-folded form frequencies are counted on."""
        return self.text.lower()


def tokenize(text: str) -> list[Token]:
    """Word tokens of ``text`` with their sentence-initial flag."""
    tokens: list[Token] = []
    end = 0
    for m in WORD_RE.finditer(text):
        gap = text[end : m.start()]
        initial = not tokens or (
            bool(_SENTENCE_END.search(gap))
            # "Mr. Darcy", "J. K. Rowling": a dot after a title or an initial ends no sentence
            and not (gap.lstrip().startswith(".") and _is_abbreviation(tokens[-1].text))
        )
        tokens.append(Token(m.group(), initial))
        end = m.end()
    return tokens


def _is_abbreviation(word: str) -> bool:
    return word.lower() in _TITLES or (len(word) == 1 and word.isupper())


def is_cased(text: str) -> bool:
    """Whether case carries information: the text has at least one lowercase letter."""
    return any(c.islower() for c in text)


def _letters(word: str) -> list[str]:
    return [c for c in word if c.isalpha()]


def is_acronym(word: str) -> bool:
    """Two or more letters, every letter upper case (digits, ``.-&`` and a possessive ``'s``
    allowed: "NASA", "U.S", "GPT-4", "NASA's")."""
    letters = _letters(_POSSESSIVE.sub("", word))
    return len(letters) >= 2 and all(c.isupper() for c in letters)


def is_capitalized(word: str) -> bool:
    """Upper-case first letter and at least one lowercase letter ("Paris", "McDonald", "O'Brien")."""
    return word[:1].isupper() and any(c.islower() for c in word)


def _caseless(word: str) -> bool:
    return word.lower() == word.upper()


def has_digit(word: str) -> bool:
    return any(c.isdigit() for c in word)


def _spaced(text: str) -> str:
    """Lowercase, every run of non-alphanumerics -> one space, padded: for "occurs in" tests."""
    return " " + _NOT_ALNUM.sub(" ", text.lower()).strip() + " "


def occurs_in(word: str, text: str) -> bool:
    """Whether ``word`` is said in ``text``: its alphanumeric parts appear as consecutive words,
    case and punctuation ignored ("well-known" ~ "well known", "U.S" ~ "u.s.", "known" in
    "well-known")."""
    needle = _spaced(word)
    return needle.strip() != "" and needle in _spaced(text)


# ---------------------------------------------------------------------------------- vocabulary


@dataclass
class Vocabulary:
    """Word statistics of a corpus: what makes a word rare or name-like, and the distractor pool.

    Built by :meth:`add` over every transcript (the generator's first pass) or read from a
    frequency file (:meth:`load`); call :meth:`finalize` before use.
    """

    common_top_k: int = 5000
    """The ``common_top_k`` most frequent words are common, all others rare (Le et al. 2021)."""
    counts: Counter = field(default_factory=Counter)
    """lowercase word -> occurrences."""
    mid: Counter = field(default_factory=Counter)
    """lowercase word -> occurrences not at a sentence start, in cased transcripts."""
    capitalized: Counter = field(default_factory=Counter)
    """lowercase word -> of those, occurrences capitalised (or all caps)."""
    forms: dict[str, str] = field(default_factory=dict)
    """lowercase word -> surface form used for distractors (first mid-sentence spelling seen)."""
    num_texts: int = 0
    _common: frozenset[str] | None = field(default=None, repr=False)

    def add(self, text: str) -> None:
        """Count the words of one transcript."""
        self.num_texts += 1
        cased = is_cased(text)
        for tok in tokenize(text):
            key = tok.key
            self.counts[key] += 1
            if cased and not tok.initial:
                if not self.mid[key]:  # the first mid-sentence spelling is the one kept
                    self.forms[key] = tok.text
                self.mid[key] += 1
                if tok.text[:1].isupper():
                    self.capitalized[key] += 1
            elif key not in self.forms and (not cased or _caseless(tok.text)):
                self.forms[key] = tok.text  # uncased text (all upper case) keeps its case
            # A word seen only at sentence starts of cased text has no known spelling: no form, and
            # it stays out of the distractor pool (a lowercase "kenji" beside "Paris" gives away
            # which keywords are distractors).
        self._common = None

    def finalize(self) -> Vocabulary:
        """Fix the common-word set (ties at the cut-off broken alphabetically)."""
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self._common = frozenset(w for w, _ in ranked[: self.common_top_k])
        return self

    @property
    def common(self) -> frozenset[str]:
        if self._common is None:
            self.finalize()
        assert self._common is not None
        return self._common

    def count(self, key: str) -> int:
        return self.counts.get(key, 0)

    def is_rare(self, key: str) -> bool:
        """Not among the ``common_top_k`` most frequent words (unseen words are rare)."""
        return key not in self.common

    def is_name_like(self, key: str) -> bool:
        """Capitalised in at least half of its mid-sentence occurrences in the corpus."""
        m = self.mid.get(key, 0)
        return m > 0 and 2 * self.capitalized.get(key, 0) >= m and key not in _NEVER_NAMES

    def form(self, key: str) -> str:
        return self.forms.get(key, key)

    def distractor_pool(self, pool_size: int | None = None, seed: int = 0) -> list[str]:
        """Hard words of the corpus (rare, name-like, acronyms, digits), as surface forms, sorted.

        With more than ``pool_size`` of them a fixed pseudo-random subset is kept (by a hash of
        (seed, word), so independent of counting order).
        """
        pool = []
        for key in self.counts:
            form = self.forms.get(key)
            if form is None:
                continue
            if len(_letters(form)) < 2 and not has_digit(form):
                continue
            if self.is_rare(key) or self.is_name_like(key) or is_acronym(form) or has_digit(form):
                pool.append(form)
        if pool_size is not None and len(pool) > pool_size:

            def rank(w: str) -> bytes:
                return hashlib.sha1(f"{seed}\x00{w}".encode()).digest()

            pool = sorted(pool, key=rank)[:pool_size]
        return sorted(set(pool))

    # ------------------------------------------------------------------------ frequency files

    def save(self, path: str | Path) -> Path:
        """TSV ``form<TAB>count<TAB>mid<TAB>capitalized``, most frequent first; :meth:`load` reads it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"# word counts of {self.num_texts} transcripts: form, count, mid-sentence, capitalised\n"
            )
            for key, n in ranked:
                f.write(f"{self.form(key)}\t{n}\t{self.mid.get(key, 0)}\t{self.capitalized.get(key, 0)}\n")
        return path

    @classmethod
    def load(cls, path: str | Path, common_top_k: int = 5000) -> Vocabulary:
        """Read a frequency file. Lines (``#`` comments and blank lines skipped), tab- or
        space-separated:

        - ``word count`` or ``word count mid capitalized`` (what :meth:`save` writes): counts of
          the same word in several spellings are summed; the first spelling is the distractor form;
        - ``word`` alone: a word list ordered most frequent first (counts follow the rank).

        Words are used in the spelling given (capitalise names in a file you write yourself: the
        spelling is what distractors look like); ``save`` then ``load`` gives the same vocabulary.
        """
        vocab = cls(common_top_k=common_top_k)
        with open(path, encoding="utf-8") as f:
            lines = [ln.split() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        for rank, parts in enumerate(lines):
            word = parts[0]
            key = word.lower()
            try:
                n = int(parts[1]) if len(parts) > 1 else len(lines) - rank
                mid = int(parts[2]) if len(parts) > 3 else 0
                cap = int(parts[3]) if len(parts) > 3 else 0
            except ValueError as e:
                raise ValueError(f"{path}: bad frequency line {' '.join(parts)!r}") from e
            vocab.counts[key] += n
            if mid:
                vocab.mid[key] += mid
                vocab.capitalized[key] += cap
            # Saved files mark "spelling unknown" (seen only at sentence starts) by a lowercase
            # form with no mid-sentence count; word lists and plain counts give their spelling.
            known = len(parts) <= 3 or mid > 0 or word != word.lower() or _caseless(word)
            if known:
                vocab.forms.setdefault(key, word)
        return vocab.finalize()

    def digest(self) -> str:
        """Content hash (counts, case statistics, forms, ``common_top_k``): part of shard fingerprints."""
        h = hashlib.sha1(f"{self.common_top_k}\n".encode())
        for key in sorted(self.counts):
            h.update(
                f"{key}\t{self.forms.get(key)}\t{self.counts[key]}\t{self.mid.get(key, 0)}\t"
                f"{self.capitalized.get(key, 0)}\n".encode()
            )
        return h.hexdigest()


def count_words(texts: Iterable[str | None], common_top_k: int = 5000) -> Vocabulary:
    """A finalized :class:`Vocabulary` of ``texts`` (``None`` and non-strings skipped)."""
    vocab = Vocabulary(common_top_k=common_top_k)
    for text in texts:
        if isinstance(text, str):
            vocab.add(text)
    return vocab.finalize()


# ----------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class KeywordConfig:
    """How keyword lists are drawn (see the module docstring)."""

    max_positives: int = 5
    """Most transcript words in a list (fewer when the transcript has fewer hard words)."""
    num_distractors: int = 5
    """Words not in the transcript added to every list."""
    no_list_fraction: float = 0.1
    """Share of examples given no keyword list at all (empty prompt suffix)."""
    seed: int = 0
    """With the example id, seeds every draw of an example."""
    common_top_k: int = 5000
    """Words outside the ``common_top_k`` most frequent are rare (Le et al. 2021 use 5000)."""
    pool_size: int | None = 100_000
    """Most words in the distractor pool (a fixed random subset when the corpus has more)."""

    def __post_init__(self) -> None:
        if self.max_positives < 0 or self.num_distractors < 0:
            raise ValueError("max_positives and num_distractors must be >= 0")
        if not 0.0 <= self.no_list_fraction <= 1.0:
            raise ValueError(f"no_list_fraction must be in [0, 1], got {self.no_list_fraction}")
        if self.common_top_k < 0:
            raise ValueError("common_top_k must be >= 0")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError("pool_size must be >= 1 or None")


@dataclass(frozen=True)
class Candidate:
    word: str
    """Surface form in the transcript."""
    reasons: tuple[str, ...]
    """Subset of :data:`REASONS`."""
    count: int
    """Corpus frequency of the word (0 if unseen)."""


@dataclass(frozen=True)
class Selection:
    """The keyword list of one example."""

    keywords: list[str]
    """Positives and distractors, shuffled: what goes into the prompt."""
    bias_words: list[str]
    """The positives (keywords that occur in the transcript), in list order."""
    reasons: dict[str, tuple[str, ...]]
    """bias word -> why it was chosen."""

    @property
    def prompt_suffix(self) -> str:
        return format_prompt_suffix(self.keywords)

    @property
    def distractors(self) -> list[str]:
        bias = set(self.bias_words)
        return [k for k in self.keywords if k not in bias]


def format_prompt_suffix(keywords: Iterable[str]) -> str:
    """``"Keywords: kw1, kw2"``, or ``""`` for an empty list."""
    keywords = list(keywords)
    return KEYWORDS_PREFIX + ", ".join(keywords) if keywords else ""


def example_rng(seed: int, example_id: str) -> random.Random:
    """The RNG of one example: a function of (seed, id) only (``random`` seeds a str via SHA-512)."""
    return random.Random(f"keywords\x00{seed}\x00{example_id}")


class KeywordSelector:
    """Draws keyword lists from a finalized :class:`Vocabulary` (see the module docstring)."""

    def __init__(self, vocab: Vocabulary, config: KeywordConfig | None = None):
        self.config = config or KeywordConfig(common_top_k=vocab.common_top_k)
        if vocab.common_top_k != self.config.common_top_k:  # the config decides; vocab is not modified
            vocab = dataclasses.replace(vocab, common_top_k=self.config.common_top_k, _common=None)
        self.vocab = vocab.finalize() if vocab._common is None else vocab
        self.pool = vocab.distractor_pool(self.config.pool_size, self.config.seed)

    def candidates(self, text: str) -> list[Candidate]:
        """Hard words of ``text`` in order of first occurrence, one per lowercase form."""
        cased = is_cased(text)
        tokens = tokenize(text)
        # A word capitalised mid-sentence anywhere in this transcript is a name everywhere in it.
        mid_capitalized = {t.key for t in tokens if cased and not t.initial and is_capitalized(t.text)}
        out: dict[str, Candidate] = {}
        for tok in tokens:
            key = tok.key
            if key in out:
                continue
            word = tok.text
            reasons = []
            if len(_letters(word)) >= 2 and self.vocab.is_rare(key):
                reasons.append("rare")
            if (
                cased
                and is_capitalized(word)
                and key not in _NEVER_NAMES
                and (key in mid_capitalized or self.vocab.is_name_like(key))
            ):
                reasons.append("name")
            if cased and is_acronym(word):
                reasons.append("acronym")
            if has_digit(word):
                reasons.append("digit")
            if reasons:
                out[key] = Candidate(word, tuple(reasons), self.vocab.count(key))
        return list(out.values())

    def distractors(self, text: str, k: int, rng: random.Random) -> list[str]:
        """``k`` pool words not said in ``text`` (fewer only if the pool runs out)."""
        if k <= 0 or not self.pool:
            return []
        spaced = _spaced(text)
        n_tokens = len(spaced.split())
        picked: list[str] = []
        seen: set[str] = set()
        # At most n_tokens pool words can be excluded by the transcript's words: one draw suffices.
        # (Pool words that span several transcript words are rarer still: top up if needed.)
        for attempt in range(3):
            draw = min(len(self.pool), k + n_tokens + attempt * (k + n_tokens))
            for i in rng.sample(range(len(self.pool)), draw):
                word = self.pool[i]
                key = word.lower()
                if key in seen:
                    continue
                seen.add(key)
                needle = _spaced(word)
                if needle.strip() and needle not in spaced:
                    picked.append(word)
                    if len(picked) == k:
                        return picked
            if draw == len(self.pool):
                break
        return picked

    def select(self, text: str, example_id: str) -> Selection:
        """The keyword list of one example (deterministic in (config.seed, example_id))."""
        cfg = self.config
        rng = example_rng(cfg.seed, example_id)
        if rng.random() < cfg.no_list_fraction:
            return Selection([], [], {})
        candidates = self.candidates(text)
        # Rarest first; a random key breaks ties.
        tiebreak = [rng.random() for _ in candidates]
        order = sorted(range(len(candidates)), key=lambda i: (candidates[i].count, tiebreak[i]))
        positives = [candidates[i] for i in order[: cfg.max_positives]]
        distractors = self.distractors(text, cfg.num_distractors, rng)
        keywords = [c.word for c in positives] + distractors
        rng.shuffle(keywords)
        bias = {c.word for c in positives}
        return Selection(
            keywords=keywords,
            bias_words=[k for k in keywords if k in bias],
            reasons={c.word: c.reasons for c in positives},
        )


def iter_selections(
    selector: KeywordSelector, examples: Iterable[tuple[str, str]]
) -> Iterator[tuple[str, Selection]]:
    """``(id, text)`` pairs -> ``(id, selection)``."""
    for example_id, text in examples:
        yield example_id, selector.select(text, example_id)
