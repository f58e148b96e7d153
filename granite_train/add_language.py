"""``granite-train add-language``: teach trained models a new language, step by step, resumable.

The steps (``configs/add_language.yaml``), each in its own folder under ``output_dir``:

1. ``report``  -- how the language's text fits the CTC vocabulary (and the LLM tokenizer, when a
   speech LLM is given): :func:`granite_train.text.coverage.coverage_report`; its recommended
   characters are the symbols to add. For a granite-speech-5.0 TurboCTC folder: the characters its
   BPE tokenizer cannot write (:func:`granite_train.text.bpe_coverage.bpe_coverage`).
2. ``extend``  -- the encoder with those symbols appended to its CTC head, old outputs unchanged
   (:func:`granite_train.models.vocab_surgery.extend_encoder_folder`). For 5.0, new BPE tokens:
   the letters and ``new_pieces`` multi-letter pieces of the language
   (:mod:`granite_train.models.turboctc_vocab`, which says why); this step runs after ``data``, whose
   training split the pieces are learnt from.
3. ``data``    -- speech for the language from its sentences (``granite-tts``'s generator; the
   bundled ``data_prep/texts/<language>.txt`` by default), train/test disjoint by sentence.
4. ``stage1``  -- the stage-1 recipe continued from the extended encoder on the new language plus a
   ``replay_share`` of the old language (0: none), optionally with a lower LR on the old layers
   (for 5.0: ``recipes/turboctc_finetune.yaml``, the whole model).
5. ``stage2``  -- (when ``stage2.speech_llm`` is set) that speech LLM continued on the new encoder:
   projector + LoRA on the new language's ASR, with the same replay (none for 5.0: CTC only).
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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granite_train.data.prompts import normalize_target
from granite_train.data.sources import SourceSpec
from granite_train.typed_config import from_mapping
from granite_train.workflows.add_language_config import AddLanguageConfig

if TYPE_CHECKING:
    from granite_train.data.prompts import PromptConfig

log = logging.getLogger(__name__)

STEPS = ("report", "extend", "data", "stage1", "stage2", "eval")
STAGE1_RECIPES = {"ctc": "ctc_tiny_en", "turboctc": "turboctc_finetune"}
"""``stage1.recipe`` when it is not set: by the family of the starting ``encoder``."""
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


def texts_path(language: str, texts: str | Path | None = None) -> Path:
    """The new language's sentences: ``texts``, or the bundled ``data_prep/texts/<language>.txt``."""
    from data_prep.tts.generate import DEFAULT_TEXTS_DIR

    path = Path(texts) if texts else DEFAULT_TEXTS_DIR / f"{language}.txt"
    if not path.is_file():
        bundled = sorted(p.stem for p in DEFAULT_TEXTS_DIR.glob("*.txt"))
        raise FileNotFoundError(
            f"no sentences for language {language!r} at {path}: give texts=FILE (one sentence a "
            f"line) or use a bundled language ({', '.join(bundled)})"
        )
    return path


def check_training_sources(sources: list[SourceSpec], recipe: Mapping[str, Any]) -> str:
    """Every record of the training sources read once (audio headers) against the stage-1
    recipe's limits, the report printed; a :class:`~granite_train.data.errors.DataError` when one
    has nothing usable (a user's ``extra_sources`` manifest, say) before the model is built."""
    from granite_train.data.builders import build_pipeline_config
    from granite_train.data.check import check_and_report

    prepare = build_pipeline_config(recipe["data"]["train"], "data.train").prepare
    title = "[add-language] the training data, every record read once (headers):"
    return check_and_report(sources, prepare, title).to_markdown()


def training_sources(config: AddLanguageConfig, corpus: Path) -> list[SourceSpec]:
    """The new language's corpus (and the user's sources) with the old corpus as replay.

    With ``replay_share`` s, the old language is s of the examples and the new sources share the
    rest by their weights (``alpha`` 1 and size 1 in the recipe: the weights are the shares).
    """
    share, language = config.replay_share, config.language
    new = [
        SourceSpec(f"new_{language}", str(corpus), split="train", language=language),
        *config.extra_sources,
    ]
    total = sum(s.weight for s in new)
    sources = [replace(s, weight=(1.0 - share) * s.weight / total) for s in new]
    if share > 0:
        sources.append(
            SourceSpec("replay", config.old_corpus, split="train", language=config.old_language, weight=share)
        )
    return sources


def test_sets(config: AddLanguageConfig, corpus: Path) -> list[SourceSpec]:
    """The old language's test split and the new one's."""
    old, new = config.old_language, config.language
    return [
        SourceSpec(f"old_{old}_test", config.old_corpus, split="test", language=old),
        SourceSpec(f"new_{new}_test", str(corpus), split="test", language=new),
    ]


ENCODER_ARCHITECTURE = (
    "input_dim", "num_layers", "hidden_dim", "feedforward_mult", "num_heads", "dim_head", "output_dim",
    "context_size", "max_pos_emb", "conv_kernel_size", "conv_expansion_factor",
)  # fmt: skip
"""Encoder config fields a stage-1 recipe names and a continued encoder must keep (not dropout)."""


def stage1_overrides(
    config: AddLanguageConfig, init: Path, sources: list[SourceSpec], tests: list[SourceSpec], out: Path
) -> list[str]:
    """Overrides of the stage-1 recipe: init, data, steps, LR (and the old layers' LR factor)."""
    from granite_train.models.export import read_hf_folder
    from granite_train.workflows.recipe_overrides import sources_override

    stage = config.stage1
    lowercase, strip = str(config.lowercase).lower(), str(config.strip_punctuation).lower()
    overrides = [
        f"output_dir={out}",
        f"model.init={init}",
        sources_override("data.train.sources", sources),
        "data.train.alpha=1.0",
        f"data.train.lowercase={lowercase}",
        f"data.train.strip_punctuation={strip}",
        sources_override("data.val.sources", tests),
        f"data.val.lowercase={lowercase}",
        f"data.val.strip_punctuation={strip}",
        f"trainer.max_steps={stage.steps}",
        f"trainer.val_every_n_steps={max(1, stage.steps // 2)}",
        f"trainer.checkpoint_every_n_steps={max(1, stage.steps // 4)}",
    ]
    if Path(init).is_dir():  # the recipe's model group names an architecture: the init's instead
        encoder = read_hf_folder(init)[0]
        overrides += [f"model.encoder.{k}={getattr(encoder, k)}" for k in ENCODER_ARCHITECTURE]
    return overrides + _stage1_optim_overrides(config)


def _stage1_optim_overrides(config: AddLanguageConfig) -> list[str]:
    """LR, the old layers' start step and LR factor, then the user's overrides. The parameter-name
    substrings match the 4.0 encoder and the 5.0 TurboCTC model alike (``encoder.layers.*``)."""
    from granite_train.recipes import override_value

    stage, overrides = config.stage1, []
    if stage.lr is not None:
        overrides.append(f"optim.lr={float(stage.lr)}")
    if stage.head_only_steps:  # the grown head first learns the new letters from the old features
        starts = {k: stage.head_only_steps for k in OLD_LAYER_PARAMETERS}
        overrides.append("optim.start_step=" + override_value(starts))
    if stage.old_layers_lr_scale != 1.0:
        scales = {k: float(stage.old_layers_lr_scale) for k in OLD_LAYER_PARAMETERS}
        overrides.append("optim.lr_scale=" + override_value(scales))
    return overrides + list(stage.overrides)


def turboctc_normalize(config: AddLanguageConfig) -> bool:
    """A TurboCTC model normalises its targets all or nothing (``model.normalize_targets``:
    lowercase and no punctuation); ``lowercase`` and ``strip_punctuation`` must agree."""
    if config.lowercase != config.strip_punctuation:
        raise ValueError(
            f"lowercase={config.lowercase} but strip_punctuation={config.strip_punctuation}: a granite-speech-5.0 "
            "TurboCTC model normalises its targets all or nothing (model.normalize_targets); set both alike"
        )
    return config.lowercase


def turboctc_stage1_overrides(
    config: AddLanguageConfig, init: Path, sources: list[SourceSpec], out: Path
) -> list[str]:
    """Overrides of ``turboctc_finetune`` continuing a 5.0 TurboCTC model with grown BPE tokens
    (the whole model trains; the eval step scores before and after)."""
    from granite_train.workflows.recipe_overrides import device_trainer_overrides, sources_override

    steps = config.stage1.steps
    overrides = [
        *device_trainer_overrides(),
        f"output_dir={out}",
        f"model.init={init}",
        f"model.normalize_targets={str(turboctc_normalize(config)).lower()}",
        sources_override("data.train.sources", sources),
        "data.train.alpha=1.0",
        f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every_n_steps={max(1, steps // 4)}",
        f"optim.schedule.warmup_steps={max(1, steps // 10)}",
    ]
    return overrides + _stage1_optim_overrides(config)


def stage2_overrides(
    config: AddLanguageConfig, encoder: Path, sources: list[SourceSpec], out: Path
) -> list[str]:
    """Overrides of the stage-2 recipe: the speech LLM continued on the new encoder."""
    from granite_train.workflows.recipe_overrides import device_trainer_overrides, sources_override

    stage = config.stage2
    overrides = [
        *device_trainer_overrides(),
        f"output_dir={out}",
        f"model.init={stage.speech_llm}",
        f"model.encoder={encoder}",
        sources_override("data.train.sources", [replace(s, task="asr") for s in sources]),
        "data.train.alpha=1.0",
        f"trainer.max_steps={stage.steps}",
        f"trainer.checkpoint_every_n_steps={max(1, stage.steps // 2)}",
        "trainer.val_every_n_steps=null",  # scored before and after instead
        f"optim.schedule.warmup_steps={max(1, stage.steps // 10)}",
    ]
    if stage.lr is not None:
        overrides.append(f"optim.lr={float(stage.lr)}")
    return overrides + list(stage.overrides)


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


def run_add_language(config: AddLanguageConfig | Mapping[str, Any]) -> str:
    """Run (or resume) every step; returns the results table.

    ``config``: an :class:`AddLanguageConfig`, or its fields as a mapping (checked key by key).
    """
    from granite_train.eval.settings import EvalSettings
    from granite_train.eval.turboctc import is_turboctc_folder
    from granite_train.workflows.before_after import (
        ScoreRow,
        Scoring,
        comparison_table,
        score_before_after,
        write_results,
    )

    config = from_mapping(AddLanguageConfig, config)
    language = config.language
    sentences = texts_path(language, config.texts)
    speech_llm = config.stage2.speech_llm
    turbo = is_turboctc_folder(config.encoder)
    if turbo:
        if speech_llm:
            raise ValueError(
                f"{config.encoder} is a granite-speech-5.0 TurboCTC model (CTC only: no LLM); "
                "leave stage2.speech_llm unset"
            )
        turboctc_normalize(config)  # refused before anything runs
    stage1_recipe = config.stage1.recipe or STAGE1_RECIPES["turboctc" if turbo else "ctc"]
    # a TurboCTC model's targets as its training will see them (model.normalize_targets)
    turboctc_target = normalize_target if turbo and config.lowercase else None
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    def turboctc_tokenizer():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(config.encoder)

    def turboctc_report(folder: Path) -> dict[str, Any]:
        from granite_train.text.bpe_coverage import bpe_coverage
        from granite_train.text.coverage import read_lines

        rep = bpe_coverage(
            read_lines(sentences),
            turboctc_tokenizer(),
            normalize=turboctc_target,
            coverage=config.coverage,
            sample_name=str(sentences),
        )
        (folder / "coverage.md").write_text(rep.to_markdown(), encoding="utf-8")
        print(rep.to_markdown(), flush=True)
        return {"symbols": list(rep.recommended), "oov_share": rep.oov_share}

    def report(folder: Path) -> dict[str, Any]:
        from granite_train.models.export import read_ctc_vocab
        from granite_train.text.coverage import coverage_report, read_lines
        from granite_train.workflows.coverage_files import write_coverage_report

        rep = coverage_report(
            read_lines(sentences),
            read_ctc_vocab(config.encoder),
            language=language,
            lowercase=config.lowercase,
            strip_punctuation=config.strip_punctuation,
            coverage=config.coverage,
            tokenizer=str(speech_llm) if speech_llm else None,
            reference=read_lines(Path(config.reference), limit=1000) if speech_llm else None,
            sample_name=str(sentences),
        )
        write_coverage_report(rep, folder)
        print(rep.to_markdown(), flush=True)
        return {"symbols": list(rep.recommended), "oov_share": rep.oov_share}

    symbols = run_step(out, "report", turboctc_report if turbo else report)["symbols"]

    def turboctc_extend(folder: Path) -> dict[str, Any]:
        from granite_train.models.turboctc_new import corpus_texts
        from granite_train.models.turboctc_vocab import extend_turboctc_folder, new_language_pieces
        from granite_train.text.bpe_coverage import writable

        tokenizer = turboctc_tokenizer()
        letters = [c for c in symbols if not writable(tokenizer, c)]
        if not letters:
            print(f"[add-language] extend: the BPE vocabulary already writes {language}; nothing added")
            return {"encoder": str(Path(config.encoder).resolve()), "added": []}
        texts = corpus_texts(corpus, "train")  # the training split only: no test sentence shapes the tokens
        texts = [turboctc_target(t) for t in texts] if turboctc_target else texts
        pieces = new_language_pieces(texts, letters, config.new_pieces)
        new = letters + pieces
        target = extend_turboctc_folder(
            config.encoder,
            new,
            folder / "turboctc_hf",
            new_logit_bias=float(config.new_symbol_bias),
            init=config.new_symbol_init,
            margin=float(config.new_symbol_margin),
        )
        return {"encoder": str(target), "added": letters, "pieces": pieces}

    def extend(folder: Path) -> dict[str, Any]:
        from granite_train.models.export import load_encoder
        from granite_train.models.vocab_surgery import extend_encoder_folder

        target = folder / "encoder_hf"
        new = [c for c in symbols if c not in load_encoder(config.encoder).ctc_vocab()]
        if not new:
            print(f"[add-language] extend: the vocabulary already writes {language}; nothing added")
            return {"encoder": str(Path(config.encoder).resolve()), "added": []}
        extend_encoder_folder(
            config.encoder,
            new,
            target,
            new_logit_bias=float(config.new_symbol_bias),
            init=config.new_symbol_init,
            margin=float(config.new_symbol_margin),
        )
        return {"encoder": str(target), "added": new}

    def data(folder: Path) -> dict[str, Any]:
        from data_prep.tts.backends import get_backend, get_engines
        from data_prep.tts.generate import generate_corpus

        backend = get_engines(config.engines) if config.engines else get_backend("espeak")
        summary = generate_corpus(
            {language: sentences},
            folder / "corpus",
            backend=backend,
            seed=config.seed,
            shard_size=250,
            test_fraction=config.test_fraction,
            num_workers=config.num_workers,
            license="other",
            command=f"granite-train add-language language={language}",
        )
        return {"corpus": str(folder / "corpus"), "examples": summary.num_examples}

    if not turbo:
        extended = Path(run_step(out, "extend", extend)["encoder"])
    corpus = Path(run_step(out, "data", data)["corpus"])
    if turbo:  # its new pieces are learnt from the training split, which the data step makes
        extend_record = run_step(out, "extend", turboctc_extend)
        extended, pieces = Path(extend_record["encoder"]), extend_record.get("pieces", [])
    sources = training_sources(config, corpus)
    tests = test_sets(config, corpus)

    def stage1(folder: Path) -> dict[str, Any]:
        from granite_train.recipes import load_recipe
        from granite_train.training.run import skipped_summary, train

        if turbo:
            recipe = load_recipe(stage1_recipe, turboctc_stage1_overrides(config, extended, sources, folder))
        else:
            recipe = load_recipe(stage1_recipe, stage1_overrides(config, extended, sources, tests, folder))
        stage = recipe.get("stage")
        if (stage == "turboctc") != turbo:
            raise ValueError(
                f"stage1.recipe={stage1_recipe} trains stage {stage!r}, but {config.encoder} is "
                f"{'a 5.0 TurboCTC model' if turbo else 'a 4.0 CTC encoder'}: use a recipe of stage "
                f"{'turboctc' if turbo else 'ctc'} (e.g. {STAGE1_RECIPES['turboctc' if turbo else 'ctc']})"
            )
        checked = check_training_sources(sources, recipe)
        result = train(recipe)
        export = result.output_dir / ("turboctc_hf" if turbo else "encoder_hf")
        return {"encoder": str(export), "steps": result.global_step,
                "data_check": checked, "skipped": skipped_summary(result.counters)}  # fmt: skip

    stage1_record = run_step(out, "stage1", stage1)
    encoder_after = Path(stage1_record["encoder"])
    data_report = [stage1_record.get("data_check", ""), "Stage 1 skipped or repaired: "]
    data_report += stage1_record.get("skipped", [])[1:] or ["nothing."]
    label = "TurboCTC (greedy CTC)" if turbo else "encoder (greedy CTC)"
    pairs = [
        (Scoring(label, "encoder", "ctc", EvalSettings(normalizer="basic")), config.encoder, encoder_after)
    ]

    speech_after: Path | None = None
    if speech_llm:

        def stage2(folder: Path) -> dict[str, Any]:
            from data_prep.base_llm import corpus_texts
            from granite_train.models.speech_llm import load_tokenizer
            from granite_train.recipes import load_recipe
            from granite_train.training.config import load_recipe_config
            from granite_train.training.run import skipped_summary, train

            overrides = stage2_overrides(config, encoder_after, sources, folder)
            recipe = load_recipe(config.stage2.recipe, overrides)
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
                recipe = load_recipe(config.stage2.recipe, [*overrides, raised])
            result = train(recipe)
            return {
                "speech_llm": str(result.output_dir / "speech_llm_hf"),
                "steps": result.global_step,
                "longest_target_tokens": longest,
                "skipped": skipped_summary(result.counters),
            }

        stage2_record = run_step(out, "stage2", stage2)
        data_report += [
            "",
            "Stage 2 skipped or repaired: ",
            *(stage2_record.get("skipped", [])[1:] or ["nothing."]),
        ]
        speech_after = Path(stage2_record["speech_llm"])
        # generation must be able to write the longest training transcript, with room to spare
        longest = int(stage2_record.get("longest_target_tokens", 0))
        settings = EvalSettings(normalizer="basic", max_new_tokens=max(200, 2 * longest))
        pairs.append((Scoring("speech LLM", "speech", "generate", settings), speech_llm, speech_after))

    def evaluate(folder: Path) -> dict[str, Any]:
        rows = score_before_after(pairs, tests, folder, tag="add-language")
        return {"rows": [row.to_json() for row in rows]}

    rows = [ScoreRow.from_json(row) for row in run_step(out, "eval", evaluate)["rows"]]
    table = comparison_table(rows, model_column=True)
    stages = f"stage 1: `{encoder_after}`" + (f"; stage 2: `{speech_after}`" if speech_after else "")
    write_results(
        out,
        title=f"Adding {language} to `{config.encoder}`",
        intro=f"new CTC symbols: {''.join(symbols) or '(none)'}"
        + (f" and {len(pieces)} multi-letter BPE pieces" if turbo else "")
        + f"; replay share of {config.old_language}: "
        f"{config.replay_share:.2f}; {stages}",
        table=table,
        payload={"symbols": symbols, "rows": [row.to_json() for row in rows]},
        data_report="\n".join(data_report) + "\n",
    )
    return table


__all__ = [
    "OLD_LAYER_PARAMETERS",
    "STAGE1_RECIPES",
    "STEPS",
    "AddLanguageConfig",
    "longest_target_tokens",
    "run_add_language",
    "run_step",
    "stage1_overrides",
    "target_budget_override",
    "stage2_overrides",
    "test_sets",
    "texts_path",
    "training_sources",
    "turboctc_stage1_overrides",
]
