"""``granite-train add-language``: teach trained models a new language, step by step, resumable.

The steps (``configs/add_language.yaml``), each in its own folder under ``output_dir``:

1. ``report``  -- how the language's text fits the CTC vocabulary (and the LLM tokenizer, when a
   speech LLM is given): :func:`granite_train.text.coverage.coverage_report`; its recommended
   characters are the symbols to add.
2. ``extend``  -- the encoder with those symbols appended to its CTC head, old outputs unchanged
   (:func:`granite_train.models.vocab_surgery.extend_encoder_folder`).
3. ``data``    -- speech for the language from its sentences (``granite-tts``'s generator; the
   bundled ``data_prep/texts/<language>.txt`` by default), train/test disjoint by sentence.
4. ``stage1``  -- the stage-1 recipe continued from the extended encoder on the new language plus a
   ``replay_share`` of the old language (0: none), optionally with a lower LR on the old layers.
5. ``stage2``  -- (when ``stage2.speech_llm`` is set) that speech LLM continued on the new encoder:
   projector + LoRA on the new language's ASR, with the same replay.
6. ``eval``    -- the old and the new language's test sets, before (the given models) and after;
   ``results.md`` / ``results.json``.

A step that finished wrote ``<step>/done.json`` and is skipped on a re-run; a training step that was
interrupted resumes from its last checkpoint. Delete a step's folder to run it again (and the
steps after it, which depend on it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from granite_train.data.prompts import PromptConfig

log = logging.getLogger(__name__)

STEPS = ("report", "extend", "data", "stage1", "stage2", "eval")
OLD_LAYER_PARAMETERS = ("encoder.input_linear", "encoder.layers")
"""Parameter-name prefixes of the encoder below its CTC head (``optim.lr_scale`` keys)."""


def _done(folder: Path) -> dict[str, Any] | None:
    marker = folder / "done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def run_step(out: Path, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run step ``name`` in ``out/name`` unless it finished before; returns what it recorded."""
    folder = out / name
    previous = _done(folder)
    if previous is not None:
        print(f"[add-language] {name}: done before, skipped ({folder / 'done.json'})", flush=True)
        return previous
    print(f"[add-language] {name} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    record = fn(folder)
    (folder / "done.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record


def texts_path(cfg: Mapping[str, Any]) -> Path:
    """The new language's sentences: ``texts``, or the bundled ``data_prep/texts/<language>.txt``."""
    from data_prep.tts.generate import DEFAULT_TEXTS_DIR

    path = Path(cfg["texts"]) if cfg.get("texts") else DEFAULT_TEXTS_DIR / f"{cfg['language']}.txt"
    if not path.is_file():
        bundled = sorted(p.stem for p in DEFAULT_TEXTS_DIR.glob("*.txt"))
        raise FileNotFoundError(
            f"no sentences for language {cfg['language']!r} at {path}: give texts=FILE (one sentence a "
            f"line) or use a bundled language ({', '.join(bundled)})"
        )
    return path


def _source(name: str, path: str | Path, split: str, language: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": str(path), "split": split, "language": language, **extra}


def training_sources(cfg: Mapping[str, Any], corpus: Path) -> list[dict[str, Any]]:
    """The new language's corpus (and the user's sources) with the old corpus as replay.

    With ``replay_share`` s, the old language is s of the examples and the new sources share the
    rest by their weights (``alpha`` 1 and size 1 in the recipe: the weights are the shares).
    """
    share = float(cfg.get("replay_share") or 0.0)
    if not 0.0 <= share < 1.0:
        raise ValueError(f"replay_share must be in [0, 1), got {share}")
    language = cfg["language"]
    new = [_source(f"new_{language}", corpus, "train", language, weight=1.0)]
    for i, extra in enumerate(cfg.get("extra_sources") or []):
        extra = dict(extra)
        extra.setdefault("name", f"user_{i}")
        extra.setdefault("language", language)
        new.append(extra)
    total = sum(float(s.get("weight", 1.0)) for s in new)
    for s in new:
        s["weight"] = (1.0 - share) * float(s.get("weight", 1.0)) / total
    if share > 0:
        new.append(_source("replay", cfg["old_corpus"], "train", cfg["old_language"], weight=share))
    return new


def test_sets(cfg: Mapping[str, Any], corpus: Path) -> list[dict[str, Any]]:
    """The old language's test split and the new one's."""
    old, new = cfg["old_language"], cfg["language"]
    return [
        _source(f"old_{old}_test", cfg["old_corpus"], "test", old),
        _source(f"new_{new}_test", corpus, "test", new),
    ]


def stage1_overrides(
    cfg: Mapping[str, Any], init: Path, sources: list[dict], tests: list[dict], out: Path
) -> list[str]:
    """Overrides of the stage-1 recipe: init, data, steps, LR (and the old layers' LR factor)."""
    from granite_train.models.export import read_hf_folder
    from granite_train.recipes import override_value

    stage = cfg["stage1"]
    steps = int(stage["steps"])
    overrides = [
        f"output_dir={out}",
        f"model.init={init}",
        "data.train.sources=" + override_value(sources),
        "data.train.alpha=1.0",
        f"data.train.lowercase={str(bool(cfg['lowercase'])).lower()}",
        f"data.train.strip_punctuation={str(bool(cfg['strip_punctuation'])).lower()}",
        "data.val.sources=" + override_value(tests),
        f"data.val.lowercase={str(bool(cfg['lowercase'])).lower()}",
        f"data.val.strip_punctuation={str(bool(cfg['strip_punctuation'])).lower()}",
        f"trainer.max_steps={steps}",
        f"trainer.val_every_n_steps={max(1, steps // 2)}",
        f"trainer.checkpoint_every_n_steps={max(1, steps // 4)}",
    ]
    if Path(init).is_dir():  # the recipe's model group names the base head size: the init's instead
        overrides.append(f"model.encoder.output_dim={read_hf_folder(init)[0].output_dim}")
    if stage.get("lr") is not None:
        overrides.append(f"optim.lr={float(stage['lr'])}")
    head_only = int(stage.get("head_only_steps") or 0)
    if head_only < 0:
        raise ValueError(f"stage1.head_only_steps must be >= 0, got {head_only}")
    if head_only:  # the grown head first learns the new letters from the old features
        overrides.append("optim.start_step=" + override_value({k: head_only for k in OLD_LAYER_PARAMETERS}))
    scale = float(stage.get("old_layers_lr_scale") or 1.0)
    if scale <= 0:
        raise ValueError(f"stage1.old_layers_lr_scale must be > 0, got {scale}")
    if scale != 1.0:
        overrides.append("optim.lr_scale=" + override_value({k: scale for k in OLD_LAYER_PARAMETERS}))
    return overrides + list(stage.get("overrides") or [])


def stage2_overrides(cfg: Mapping[str, Any], encoder: Path, sources: list[dict], out: Path) -> list[str]:
    """Overrides of the stage-2 recipe: the speech LLM continued on the new encoder."""
    import torch

    from granite_train.recipes import override_value

    stage = cfg["stage2"]
    steps = int(stage["steps"])
    asr = [{**s, "task": "asr", "id_column": s.get("id_column", "id")} for s in sources]
    trainer = ["trainer=gpu"] if torch.cuda.is_available() else ["trainer=cpu", "trainer.precision=auto"]
    overrides = [
        *trainer,
        f"output_dir={out}",
        f"model.init={stage['speech_llm']}",
        f"model.encoder={encoder}",
        "data.train.sources=" + override_value(asr),
        "data.train.alpha=1.0",
        f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every_n_steps={max(1, steps // 2)}",
        "trainer.val_every_n_steps=null",  # scored before and after instead
        f"optim.schedule.warmup_steps={max(1, steps // 10)}",
    ]
    if stage.get("lr") is not None:
        overrides.append(f"optim.lr={float(stage['lr'])}")
    return overrides + list(stage.get("overrides") or [])


def longest_target_tokens(tokenizer: Any, texts: Iterable[str], normalize: bool) -> int:
    """The most tokens any of ``texts`` takes as a stage-2 target (EOS not counted)."""
    from granite_train.data.prompts import target_token_ids

    return max((len(target_token_ids(tokenizer, t, normalize=normalize)) for t in texts), default=0)


def target_budget_override(prompts: PromptConfig, overrides: Iterable[str], longest: int) -> str | None:
    """The override raising ``prompts.max_target_tokens`` to ``longest`` when the recipe's budget
    would truncate a transcript (a new script can take several byte tokens per character); None
    when it fits or the user set the budget."""
    if any(o.startswith("prompts.max_target_tokens=") for o in overrides):
        return None
    if longest <= prompts.max_target_tokens:
        return None
    return f"prompts.max_target_tokens={longest}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def results_markdown(rows: list[dict[str, Any]]) -> str:
    """One row per (model, test set): CER / WER before and after."""
    lines = [
        "| model | test set | utts | CER before % | CER after % | WER before % | WER after % |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['test set']} | {r['utts']} | {_pct(r['cer_before'])} | "
            f"{_pct(r['cer_after'])} | {_pct(r['wer_before'])} | {_pct(r['wer_after'])} |"
        )
    return "\n".join(lines) + "\n"


def run_add_language(cfg: Mapping[str, Any]) -> str:
    """Run (or resume) every step; ``cfg`` is the resolved ``configs/add_language.yaml``. Returns
    the results table."""
    from granite_train.eval.settings import EvalSettings

    out = Path(cfg["output_dir"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    language = cfg["language"]
    sentences = texts_path(cfg)
    speech_llm = (cfg.get("stage2") or {}).get("speech_llm")

    def report(folder: Path) -> dict[str, Any]:
        from granite_train.models.export import read_ctc_vocab
        from granite_train.text.coverage import coverage_report, read_lines

        vocab = read_ctc_vocab(cfg["encoder"])
        rep = coverage_report(
            read_lines(sentences),
            vocab,
            language=language,
            lowercase=bool(cfg["lowercase"]),
            strip_punctuation=bool(cfg["strip_punctuation"]),
            coverage=float(cfg["coverage"]),
            tokenizer=str(speech_llm) if speech_llm else None,
            reference=read_lines(Path(cfg["reference"]), limit=1000) if speech_llm else None,
            sample_name=str(sentences),
        )
        (folder / "coverage.md").write_text(rep.to_markdown())
        (folder / "coverage.json").write_text(json.dumps(rep.to_json(), indent=2, ensure_ascii=False) + "\n")
        print(rep.to_markdown(), flush=True)
        return {"symbols": list(rep.recommended), "oov_share": rep.oov_share}

    symbols = run_step(out, "report", report)["symbols"]

    def extend(folder: Path) -> dict[str, Any]:
        from granite_train.models.export import load_encoder
        from granite_train.models.vocab_surgery import extend_encoder_folder

        target = folder / "encoder_hf"
        new = [c for c in symbols if c not in load_encoder(cfg["encoder"]).ctc_vocab()]
        if not new:
            print(f"[add-language] extend: the vocabulary already writes {language}; nothing added")
            return {"encoder": str(Path(cfg["encoder"]).resolve()), "added": []}
        extend_encoder_folder(
            cfg["encoder"],
            new,
            target,
            new_logit_bias=float(cfg.get("new_symbol_bias", -50.0)),
            init=str(cfg.get("new_symbol_init", "similar")),
            margin=float(cfg.get("new_symbol_margin", 25.0)),
        )
        return {"encoder": str(target), "added": new}

    extended = Path(run_step(out, "extend", extend)["encoder"])

    def data(folder: Path) -> dict[str, Any]:
        from data_prep.tts.backends import get_backend, get_engines
        from data_prep.tts.generate import generate_corpus

        engines = cfg.get("engines")
        backend = get_engines(engines) if engines else get_backend("espeak")
        summary = generate_corpus(
            {language: sentences},
            folder / "corpus",
            backend=backend,
            seed=int(cfg["seed"]),
            shard_size=250,
            test_fraction=float(cfg["test_fraction"]),
            num_workers=cfg.get("num_workers"),
            license="other",
            command=f"granite-train add-language language={language}",
        )
        return {"corpus": str(folder / "corpus"), "examples": summary.num_examples}

    corpus = Path(run_step(out, "data", data)["corpus"])
    sources = training_sources(cfg, corpus)
    tests = test_sets(cfg, corpus)

    def stage1(folder: Path) -> dict[str, Any]:
        from granite_train.recipes import load_recipe
        from granite_train.training.run import train

        recipe = load_recipe(cfg["stage1"]["recipe"], stage1_overrides(cfg, extended, sources, tests, folder))
        result = train(recipe)
        return {"encoder": str(result.output_dir / "encoder_hf"), "steps": result.global_step}

    encoder_after = Path(run_step(out, "stage1", stage1)["encoder"])

    speech_after: Path | None = None
    generate_settings = EvalSettings(normalizer="basic")
    if speech_llm:

        def stage2(folder: Path) -> dict[str, Any]:
            from data_prep.base_llm import corpus_texts
            from granite_train.models.speech_llm import load_tokenizer
            from granite_train.recipes import load_recipe
            from granite_train.training.config import load_recipe_config
            from granite_train.training.run import train

            overrides = stage2_overrides(cfg, encoder_after, sources, folder)
            recipe = load_recipe(cfg["stage2"]["recipe"], overrides)
            prompts = load_recipe_config(recipe).prompts
            longest = longest_target_tokens(
                load_tokenizer(speech_llm), corpus_texts(corpus, "train"), normalize=prompts.normalize_targets
            )
            raised = target_budget_override(prompts, overrides, longest)
            if raised:
                print(
                    f"[add-language] stage2: {language} transcripts take up to {longest} tokens in the "
                    f"LLM's tokenizer; prompts.max_target_tokens raised from {prompts.max_target_tokens} "
                    f"to {longest} (no target truncated)",
                    flush=True,
                )
                recipe = load_recipe(cfg["stage2"]["recipe"], [*overrides, raised])
            result = train(recipe)
            return {
                "speech_llm": str(result.output_dir / "speech_llm_hf"),
                "steps": result.global_step,
                "longest_target_tokens": longest,
            }

        stage2_record = run_step(out, "stage2", stage2)
        speech_after = Path(stage2_record["speech_llm"])
        # generation must be able to write the longest training transcript, with room to spare
        longest = int(stage2_record.get("longest_target_tokens") or 0)
        generate_settings = EvalSettings(normalizer="basic", max_new_tokens=max(200, 2 * longest))

    def evaluate(folder: Path) -> dict[str, Any]:
        from granite_train.eval.generate import run_generate_eval
        from granite_train.eval.run import run_eval

        settings = EvalSettings(normalizer="basic")
        pairs = [("encoder (greedy CTC)", run_eval, cfg["encoder"], encoder_after, tests, settings)]
        if speech_after is not None:
            pairs.append(
                ("speech LLM", run_generate_eval, speech_llm, speech_after, tests, generate_settings)
            )
        rows = []
        for label, run, before_model, after_model, sets, how in pairs:
            key = label.split()[0]
            before, _ = run(before_model, sets, folder / f"{key}_before", how)
            after, _ = run(after_model, sets, folder / f"{key}_after", how)
            for b, a in zip(before, after):
                rows.append(
                    {
                        "model": label,
                        "test set": a.name,
                        "utts": a.num_utts,
                        "cer_before": b.cer,
                        "cer_after": a.cer,
                        "wer_before": b.wer,
                        "wer_after": a.wer,
                    }
                )
        return {"rows": rows}

    rows = run_step(out, "eval", evaluate)["rows"]
    table = results_markdown(rows)
    share = float(cfg.get("replay_share") or 0.0)
    header = (
        f"# Adding {language} to `{cfg['encoder']}`\n\nnew CTC symbols: "
        f"{''.join(symbols) or '(none)'}; replay share of {cfg['old_language']}: {share:.2f}; "
        f"stage 1: `{encoder_after}`" + (f"; stage 2: `{speech_after}`" if speech_after else "") + "\n\n"
    )
    (out / "results.md").write_text(header + table)
    (out / "results.json").write_text(
        json.dumps({"symbols": symbols, "rows": rows}, indent=2, ensure_ascii=False)
    )
    return table


__all__ = [
    "OLD_LAYER_PARAMETERS",
    "STEPS",
    "longest_target_tokens",
    "results_markdown",
    "run_add_language",
    "run_step",
    "stage1_overrides",
    "target_budget_override",
    "stage2_overrides",
    "test_sets",
    "texts_path",
    "training_sources",
]
