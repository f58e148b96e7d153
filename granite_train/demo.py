"""The demos: end to end (``granite-train demo``: corpus -> stage 1 -> stage 2 -> export -> reload)
and the multilingual corpus of ``granite-train data-demo``.

Each phase reuses the library's own entry points (the TTS generator, ``train`` with the tiny
recipes, the evaluators, the export), so the demo is also the integration test of the whole
system at CPU scale. Phases are timed and summarised in ``<work_dir>/results.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from granite_train.typed_config import from_mapping
from granite_train.workflows.demo_config import DemoConfig

log = logging.getLogger(__name__)


class _Timer:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"\n[demo] === {name} ===", flush=True)
        start = time.perf_counter()
        yield
        self.phases[name] = time.perf_counter() - start
        print(f"[demo] {name}: {self.phases[name]:.0f} s", flush=True)


def transcribe_with_transformers(model_dir: str | Path, waveform, max_new_tokens: int = 64) -> str:
    """Plain transformers, no granite-train code: what a user of the exported folder runs."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    from granite_train.speech_format import ASR_INSTRUCTIONS

    processor = AutoProcessor.from_pretrained(str(model_dir))
    model = AutoModelForSpeechSeq2Seq.from_pretrained(str(model_dir)).eval()
    # the published instruction, as training and evaluation use it
    return greedy_transcript(model, processor, waveform, ASR_INSTRUCTIONS[0], max_new_tokens)


def greedy_transcript(model, processor, waveform, instruction: str, max_new_tokens: int = 64) -> str:
    """Greedy transcript of one utterance from a transformers GraniteSpeech model and its processor."""
    import torch

    from granite_train.speech_format import AUDIO_TOKEN

    chat = [{"role": "user", "content": AUDIO_TOKEN + instruction}]
    prompt = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    inputs = processor(prompt, torch.as_tensor(waveform, dtype=torch.float32), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return processor.tokenizer.decode(
        out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    ).strip()


def _first_test_utterance(corpus: Path) -> tuple[str, str, Any]:
    import io

    import pyarrow.parquet as pq
    import soundfile as sf

    table = pq.read_table(
        sorted((corpus / "data").glob("test-*.parquet"))[0], columns=["id", "text", "audio"]
    )
    row = table.slice(0, 1).to_pylist()[0]
    wave, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    return row["id"], row["text"], wave


def generate_demo_corpus(demo: Mapping[str, Any], corpus_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Synthesise one dataset per language under ``corpus_dir/<lang>`` (finished shards are kept)."""
    from data_prep.tts.generate import generate_corpus

    texts_dir = Path(demo["texts_dir"])
    summaries = {}
    for lang in demo["languages"]:
        n = demo["sentences_per_language"] * (4 if lang == "en" else 1)
        print(f"[demo] {lang}: synthesising up to {n} sentences with {demo['backend']}", flush=True)
        summaries[lang] = generate_corpus(
            {lang: texts_dir / f"{lang}.txt"},
            Path(corpus_dir) / lang,
            backend=demo["backend"],
            seed=seed,
            test_fraction=demo["test_fraction"],
            max_sentences_per_language=n,
            num_workers=demo.get("num_workers"),
            shard_size=max(1, n // 2),
        )
    hours = sum(s.audio_seconds for s in summaries.values()) / 3600
    generated = sum(s.generated_audio_seconds for s in summaries.values())
    wall = sum(s.wall_seconds for s in summaries.values())
    speed = f"{generated / wall:.0f}x realtime" if generated else "all shards already done"
    print(f"[demo] corpus: {hours:.2f} h in {len(summaries)} languages at {corpus_dir} ({speed})", flush=True)
    return summaries


def run_demo(config: DemoConfig | Mapping[str, Any]) -> str:
    """Run every phase of the demo; returns the table.

    ``config``: a :class:`DemoConfig`, or its fields as a mapping (checked key by key).
    """
    from data_prep.base_llm import build_base_llm, corpus_texts
    from data_prep.tts.generate import generate_corpus
    from granite_train.data.sources import SourceSpec
    from granite_train.eval.settings import EvalSettings
    from granite_train.recipes import load_recipe
    from granite_train.training.run import train
    from granite_train.workflows.before_after import Scoring, write_results

    config = from_mapping(DemoConfig, config)
    demo, seed = config.demo, config.seed
    work = Path(demo.work_dir).resolve()
    corpus = work / "corpus" / "tts_en"
    paths = [f"paths.work_dir={work}", f"seed={seed}"]
    timer = _Timer()
    total_start = time.perf_counter()

    with timer.phase("corpus"):
        summary = generate_corpus(
            {"en": demo.texts},
            corpus,
            backend="espeak",
            seed=seed,
            test_fraction=demo.test_fraction,
            max_sentences_per_language=demo.max_sentences,
            shard_size=demo.shard_size,
            num_workers=demo.tts_workers,
        )
    hours = summary.audio_seconds / 3600
    # built once the corpus exists: a SourceSpec reads its kind from what is at the path
    test_set = SourceSpec("tts_en_test", str(corpus), split="test", language="en")

    with timer.phase("stage 1: CTC encoder"):
        stage1 = train(load_recipe(demo.stage1_recipe, [*paths, *demo.stage1_overrides]))
    encoder_dir = stage1.output_dir / "encoder_hf"
    with timer.phase("stage 1: eval"):
        scoring = Scoring("encoder (greedy CTC)", "stage1", "ctc", EvalSettings(normalizer="basic"))
        (ctc,) = scoring.run(encoder_dir, [test_set], stage1.output_dir / "eval")

    llm_dir = work / "llm" / "tiny_en"
    with timer.phase("tiny LLM + tokenizer"):
        llm = demo.llm  # a *base* LLM knows the language and can copy from its context
        build_base_llm(
            llm_dir,
            corpus_texts(corpus),
            llm.preset,
            llm.vocab_size,
            seed=seed,
            pretrain_steps=llm.pretrain_steps,
            copy_share=llm.copy_share,
            batch_size=llm.batch_size,
        )

    overrides = [*paths, f"model.encoder={encoder_dir}", f"model.llm={llm_dir}", *demo.stage2_overrides]
    with timer.phase("stage 2: Q-Former + LLM"):
        stage2 = train(load_recipe(demo.stage2_recipe, overrides))
    export_dir = stage2.output_dir / "speech_llm_hf"
    with timer.phase("stage 2: eval"):
        settings = EvalSettings(max_new_tokens=demo.eval_max_new_tokens)
        (gen,) = Scoring("speech LLM", "stage2", "generate", settings).run(
            export_dir, [test_set], stage2.output_dir / "eval"
        )

    with timer.phase("reload export with plain transformers"):
        utt_id, reference, wave = _first_test_utterance(corpus)
        hypothesis = transcribe_with_transformers(export_dir, wave, demo.eval_max_new_tokens)
    print(f"[demo] {utt_id}\n  reference:  {reference}\n  transformers: {hypothesis}", flush=True)

    total = time.perf_counter() - total_start
    rows = [
        (
            "corpus",
            f"{summary.num_examples.get('train', 0)} train / {summary.num_examples.get('test', 0)} test "
            f"utterances, {hours:.2f} h of espeak-ng English",
            timer.phases["corpus"],
        ),
        (
            "stage 1 (CTC encoder)",
            f"greedy CTC CER {100 * ctc.cer:.2f}%, WER {100 * ctc.wer:.2f}% "
            f"({ctc.num_utts} held-out utterances, RTFx {ctc.rtfx:.0f})",
            timer.phases["stage 1: CTC encoder"] + timer.phases["stage 1: eval"],
        ),
        (
            "stage 2 (Q-Former + LLM)",
            f"greedy WER {100 * gen.wer:.2f}% (Whisper normalizer), CER "
            f"{100 * gen.cer:.2f}%, RTFx {gen.rtfx:.1f}",
            timer.phases["tiny LLM + tokenizer"]
            + timer.phases["stage 2: Q-Former + LLM"]
            + timer.phases["stage 2: eval"],
        ),
        (
            "export reloaded in transformers",
            f'`{utt_id}`: "{hypothesis}" (reference: "{reference}")',
            timer.phases["reload export with plain transformers"],
        ),
        ("total", "", total),
    ]
    table = "| phase | result | wall time |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {result} | {seconds / 60:.1f} min |" for name, result, seconds in rows
    )
    write_results(
        work,
        title="granite-train demo",
        intro="",
        table=table,
        payload={
            "phases_s": timer.phases,
            "total_s": total,
            "stage1": {"cer": ctc.cer, "wer": ctc.wer, "rtfx": ctc.rtfx},
            "stage2": {"wer": gen.wer, "cer": gen.cer, "rtfx": gen.rtfx},
            "transformers_reload": {"id": utt_id, "reference": reference, "hypothesis": hypothesis},
        },
    )
    return table
