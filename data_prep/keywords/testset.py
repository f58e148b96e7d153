"""A synthetic keyword-biasing test set: template sentences full of names and acronyms, spoken by TTS.

    python -m data_prep.keywords testset --out work/kw/testset --num-sentences 300

Data flow::

    bundled entities (people, places, companies: 200 names; 50 acronyms) x 40 templates
      -> sentences, seeded, unique ("Ingrid flew to Reykjavik to meet the UNESCO team.")
      -> per sentence: bias words = the entities in it; distractors = other entities, not in it;
         keywords = shuffle(bias words + distractors)
      -> data_prep.tts.generate_corpus (espeak-ng by default) -> OUT/.tts/ (resumable TTS corpus)
      -> OUT/data/<split>-XXXXX.parquet: the TTS columns (id, audio, text, language, voice,
         duration) + keywords, bias_words, prompt_suffix; OUT/sentences.jsonl; OUT/README.md

Score a model on it with :func:`granite_train.eval.biasing.compare_biasing` (decode once without
and once with ``prompt_suffix``). The entity lists and templates were written for this project.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.keywords.select import format_prompt_suffix, occurs_in
from data_prep.shards import ROW_GROUP_SIZE, remove_unplanned_shards, write_atomic, write_readme

PEOPLE = (
    "Abernathy Adebayo Alejandro Anastasia Annika Aurelio Bartholomew Beatriz Bjorn Callum Caspian "
    "Chidinma Cordelia Dagny Desmond Dmitri Esperanza Evander Fatima Fiorella Gwendolyn Hamish "
    "Hiroshi Ignatius Ingrid Isadora Jovana Kalinda Kwame Lachlan Leopold Ludmila Magnus Marisol "
    "Maximilian Mehmet Mirela Nadezhda Niamh Octavia Oluwaseun Ophelia Padraig Perpetua Priyanka "
    "Quentin Rafferty Rosalind Rupert Saoirse Sebastiano Siobhan Soraya Svetlana Tatiana Thaddeus "
    "Ulrich Valentina Wojciech Xiomara Yevgenia Yusuf Zbigniew Zenobia Okonkwo Nakamura Castellanos "
    "Fitzgerald Papadopoulos Kowalczyk"
).split()
"""Given names and surnames, one word each."""

PLACES = (
    "Reykjavik Ouagadougou Kathmandu Tegucigalpa Ljubljana Bratislava Montevideo Antananarivo "
    "Vladivostok Marrakesh Thessaloniki Bydgoszcz Gothenburg Valparaiso Cartagena Zanzibar Timbuktu "
    "Samarkand Ushuaia Nuuk Tromso Windhoek Kigali Asuncion Paramaribo Chisinau Tbilisi Yerevan "
    "Ulaanbaatar Bishkek Dushanbe Mandalay Yogyakarta Cebu Hokkaido Okinawa Tasmania "
    "Queenstown Wollongong Saskatoon Winnipeg Halifax Anchorage Albuquerque Tucson Savannah "
    "Chattanooga Milwaukee Sacramento Guadalajara Oaxaca Cusco Arequipa Medellin Barranquilla "
    "Manaus Recife Fortaleza Porto Coimbra Seville Bilbao Marseille Grenoble Strasbourg Innsbruck "
    "Salzburg Dubrovnik Heraklion Cappadocia Lausanne"
).split()
"""Cities and regions, one word each."""

COMPANIES = (
    "Accenture Bosch Cargill Danone Ericsson Fujitsu Genentech Heineken Infosys Juniper Kyocera "
    "Lufthansa Maersk Nestle Novartis Olympus Panasonic Qualcomm Rakuten Salesforce Tencent Unilever "
    "Vodafone Wipro Xerox Yamaha Zalando Alibaba Baidu Carrefour Deloitte Equinor Ferrero Garmin "
    "Hitachi Ikea Kellogg Logitech Mitsubishi Nokia Oracle Pirelli Renault Siemens Toshiba Ubisoft "
    "Volvo Atlassian Xiaomi Zeiss Airbus Bombardier Continental Daimler Embraer Philips Schneider Sanofi "
    "Bayer Spotify"
).split()
"""Companies and brands, one word each."""

ACRONYMS = (
    "NASA UNESCO FIFA NATO IBM BBC CERN OPEC FBI CIA UNICEF OECD IMF WTO NHS MIT UCLA NBA NFL "
    "ESPN MRI DNA GPS HTML CPU GPU USB LED AWS SQL API PDF NGO CEO CFO ASEAN NAFTA EPA FDA "
    "IRS ICU BMW HSBC KPMG AMD DHL IATA UEFA NYU CNN"
).split()
"""All-caps abbreviations (some read as words, some spelled out by TTS)."""

TEMPLATES = (
    "{person} flew to {place} to meet the {acronym} team.",
    "{person} and {person2} opened a new {company} office in {place}.",
    "The {acronym} report from {place} was written by {person}.",
    "{company} hired {person} to lead its {acronym} division.",
    "Last spring {person} moved from {place} to {place2}.",
    "{person} told the {acronym} panel that {company} would invest in {place}.",
    "Our flight to {place} was booked through {company} by {person}.",
    "The {acronym} conference in {place} starts on Monday.",
    "{person} works for {company} and studies at {acronym} in the evening.",
    "Did {person} send the {acronym} files to {person2}?",
    "{company} and {company2} signed a deal in {place} yesterday.",
    "The new {acronym} rules worry {person} at {company}.",
    "{person} spent three weeks hiking near {place}.",
    "Please ask {person} whether {company} still uses the {acronym} system.",
    "After the {acronym} meeting, {person} took a train to {place}.",
    "{person} sold her shares in {company} before the {acronym} audit.",
    "The museum in {place} was designed by {person}.",
    "{person} called {person2} from the {company} booth at the {acronym} fair.",
    "A delegation from {place} visited the {acronym} headquarters with {person}.",
    "{company} will open a factory in {place} next year, said {person}.",
    "{person} wrote a book about {place} and {place2}.",
    "My cousin {person} got a job at {company} in {place}.",
    "The {acronym} and the {acronym2} disagreed about the budget for {place}.",
    "{person} fixed the {acronym} problem on the {company} laptop.",
    "We met {person} at the airport in {place}.",
    "{person} thinks {company} should partner with {company2}.",
    "The {acronym} grant sent {person} to a lab in {place}.",
    "On Friday {person} presented the {company} results to the {acronym} board.",
    "The bus from {place} to {place2} was late again.",
    "{person} bought a {company} phone in {place}.",
    "According to {person}, the {acronym} data from {place} looks wrong.",
    "{person} and {person2} both applied to {acronym} this year.",
    "The {company} team in {place} reports to {person}.",
    "Nobody at {company} had heard of the {acronym} standard before {person} explained it.",
    "{person} grew up in {place} and now lives in {place2}.",
    "The {acronym} office asked {person} for the {company} invoices.",
    "{person} recommended a small hotel in {place}.",
    "Shares of {company} rose after the {acronym} announcement.",
    "{person} is giving a talk on {acronym} tools at {company} tomorrow.",
    "The road between {place} and {place2} reopened after the storm, {person} said.",
)
"""Slots: {person}, {person2}, {place}, {place2}, {company}, {company2}, {acronym}, {acronym2}."""

_SLOT = re.compile(r"\{(person|place|company|acronym)(2?)\}")
_POOLS = {"person": PEOPLE, "place": PLACES, "company": COMPANIES, "acronym": ACRONYMS}
ENTITIES = tuple(dict.fromkeys((*PEOPLE, *PLACES, *COMPANIES, *ACRONYMS)))
"""Every bundled entity (the distractor pool)."""


@dataclass(frozen=True)
class BiasSentence:
    text: str
    bias_words: list[str]
    """The entities in the sentence, in order."""
    keywords: list[str]
    """Bias words + distractors, shuffled."""

    @property
    def prompt_suffix(self) -> str:
        return format_prompt_suffix(self.keywords)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "bias_words": self.bias_words, "keywords": self.keywords}


def unseen_entities(texts) -> tuple[str, ...]:
    """The bundled entities said in none of ``texts`` (e.g. a training set's transcripts): a test
    set made of these measures biasing on words the model never heard in training."""
    from data_prep.keywords.select import _spaced

    spoken = " ".join(_spaced(t) for t in texts) + " "
    return tuple(e for e in ENTITIES if _spaced(e) not in spoken)


def make_sentences(
    num_sentences: int, *, seed: int = 0, num_distractors: int = 10, entities: tuple[str, ...] | None = None
) -> list[BiasSentence]:
    """``num_sentences`` distinct template sentences with their keyword lists (deterministic).

    ``entities``: the entities they may use, bias words and distractors alike (default: all)."""
    if num_sentences < 1:
        raise ValueError("num_sentences must be >= 1")
    allowed = set(ENTITIES if entities is None else entities)
    pools = {kind: [e for e in pool if e in allowed] for kind, pool in _POOLS.items()}
    short = {kind: len(pool) for kind, pool in pools.items() if len(pool) < 2}
    if short:
        raise ValueError(f"fewer than 2 allowed entities of kind {short}: the templates need two of each")
    rng = random.Random(f"keyword-testset\x00{seed}")
    out: list[BiasSentence] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < num_sentences:
        attempts += 1
        if attempts > 100 * num_sentences + 1000:
            raise RuntimeError(f"could not make {num_sentences} distinct sentences")
        template = rng.choice(TEMPLATES)
        chosen: dict[str, str] = {}
        for kind in ("person", "place", "company", "acronym"):
            a, b = rng.sample(pools[kind], 2)
            chosen[kind], chosen[kind + "2"] = a, b
        bias: list[str] = []

        def fill(m: re.Match, chosen=chosen, bias=bias) -> str:
            word = chosen[m.group(1) + m.group(2)]
            bias.append(word)
            return word

        text = _SLOT.sub(fill, template)
        if text in seen:
            continue
        seen.add(text)
        others = [e for e in ENTITIES if e in allowed and not occurs_in(e, text)]
        distractors = rng.sample(others, min(num_distractors, len(others)))
        keywords = list(dict.fromkeys(bias)) + distractors
        rng.shuffle(keywords)
        out.append(BiasSentence(text, list(dict.fromkeys(bias)), keywords))
    return out


@dataclass
class TestsetSummary:
    out_dir: Path
    num_sentences: int
    num_examples: int
    failures: dict[str, int]
    tts: Any
    """The ``CorpusSummary`` of the TTS stage."""

    def format(self) -> str:
        lines = [
            f"biasing test set: {self.out_dir}  examples: {self.num_examples} of {self.num_sentences} "
            f"sentences, {self.tts.hours:.3f} h",
        ]
        if self.failures:
            lines.append(
                "sentences without audio: " + ", ".join(f"{k}={v}" for k, v in self.failures.items())
            )
        return "\n".join(lines)


def build_testset(
    out_dir: str | os.PathLike,
    *,
    num_sentences: int = 200,
    seed: int = 0,
    num_distractors: int = 10,
    backend: Any = "espeak",
    split: str = "test",
    shard_size: int = 500,
    num_workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
    entities: tuple[str, ...] | None = None,
) -> TestsetSummary:
    """Make the sentences, speak them (resumable, in ``OUT/.tts``) and write the annotated dataset.

    ``entities``: restrict the names and acronyms (:func:`unseen_entities`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.tts.generate import generate_corpus, normalize_sentence

    out = Path(out_dir)
    sentences = make_sentences(num_sentences, seed=seed, num_distractors=num_distractors, entities=entities)
    by_text = {normalize_sentence(s.text): s for s in sentences}
    tts = generate_corpus(
        {"en": [s.text for s in sentences]},
        out / ".tts",
        backend=backend,
        seed=seed,
        shard_size=shard_size,
        num_workers=num_workers,
        progress=progress,
        license="apache-2.0",
        command=command,
        sources={"en": "data_prep.keywords.testset templates"},
    )
    written: set[str] = set()  # shard names
    num_examples = 0
    for i, path in enumerate(sorted((out / ".tts" / "data").glob("*.parquet"))):
        table = pq.read_table(path)
        picked = [by_text[t] for t in table.column("text").to_pylist()]
        strings = pa.list_(pa.string())
        table = table.append_column("keywords", pa.array([s.keywords for s in picked], strings))
        table = table.append_column("bias_words", pa.array([s.bias_words for s in picked], strings))
        table = table.append_column("prompt_suffix", pa.array([s.prompt_suffix for s in picked], pa.string()))
        table = table.replace_schema_metadata(_features(table.schema).arrow_schema.metadata)
        target = out / "data" / f"{split}-{i:05d}.parquet"
        write_atomic(target, lambda p, table=table: pq.write_table(table, p, row_group_size=ROW_GROUP_SIZE))
        written.add(target.stem)
        num_examples += table.num_rows
    remove_unplanned_shards(out, written)
    with open(out / "sentences.jsonl", "w", encoding="utf-8") as f:
        for s in sentences:
            f.write(json.dumps(s.to_dict(), ensure_ascii=False) + "\n")
    summary = TestsetSummary(out, len(sentences), num_examples, dict(tts.failures), tts)
    _write_card(
        out,
        summary,
        sentences,
        split=split,
        seed=seed,
        num_distractors=num_distractors,
        backend_name=backend if isinstance(backend, str) else getattr(backend, "name", "tts"),
        command=command,
    )
    if progress:
        print(summary.format(), flush=True)
    return summary


def _features(schema=None):
    """The TTS corpus' features (read from ``schema``, else the default) + the keyword columns."""
    from datasets import Features

    from data_prep.keywords.generate import features as keyword_features
    from data_prep.tts.corpus import features as tts_features

    kw = keyword_features()
    base = Features.from_arrow_schema(schema) if schema is not None else tts_features()
    base = {k: v for k, v in base.items() if k not in kw}
    return Features({**base, **{k: kw[k] for k in ("keywords", "bias_words", "prompt_suffix")}})


def _write_card(
    out: Path,
    summary: TestsetSummary,
    sentences: list[BiasSentence],
    *,
    split: str,
    seed: int,
    num_distractors: int,
    backend_name: str,
    command: str | None,
) -> Path:
    import pyarrow.parquet as pq

    files = sorted((out / "data").glob("*.parquet"))
    size = sum(p.stat().st_size for p in files)
    schema = pq.read_schema(files[0]) if files else None
    meta = {
        "license": "apache-2.0",
        "language": ["en"],
        "task_categories": ["automatic-speech-recognition"],
        "tags": ["synthetic", "text-to-speech", "keyword-biasing", "contextual-biasing"],
        "size_categories": ["n<1K" if summary.num_examples < 1000 else "1K<n<10K"],
        "pretty_name": "Synthetic keyword-biasing test set",
    }
    n_bias = Counter(len(s.bias_words) for s in sentences)
    lines = [
        "",
        "# Synthetic keyword-biasing test set",
        "",
        "Template sentences full of rare names (people, places, companies) and acronyms, spoken by "
        f"{backend_name} (`.tts/README.md` has the synthesis details), each with "
        "a keyword list: its `bias_words` (the entities in the sentence) plus "
        f"{num_distractors} distractors (other entities, not in the sentence), shuffled. Made by "
        "granite-train's `data_prep/keywords/testset.py`; sentences and entity lists were written "
        "for this project.",
        "",
        f"- Examples: {summary.num_examples} of {summary.num_sentences} sentences, "
        f"{summary.tts.hours:.3f} h, seed {seed}",
        "- Columns: `id`, `audio`, `text`, `language`, `voice`, `duration`, `keywords`, `bias_words`, "
        "`prompt_suffix`",
        "- Bias words per sentence: " + ", ".join(f"{k}: {v}" for k, v in sorted(n_bias.items())),
        "- `sentences.jsonl`: every sentence with its lists",
        "",
        "Score with `granite_train.eval.biasing` (WER, B-WER on bias words, U-WER on the others, "
        "keyword recall), decoding with and without `prompt_suffix`.",
        "",
    ]
    if summary.failures:
        lines += [
            "Sentences without audio: " + ", ".join(f"{k}: {v}" for k, v in summary.failures.items()),
            "",
        ]
    if command:
        lines += ["## Reproduce", "", "```bash", command, "```", ""]
    body = lines[:-1]  # every block above ends with a blank line; write_readme adds the final newline
    return write_readme(out, meta, {split: (size, summary.num_examples)}, _features(schema), body)
