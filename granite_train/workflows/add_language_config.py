"""``granite-train add-language``'s settings (``configs/add_language.yaml``): typed, documented
dataclasses for the command and its ``stage1`` / ``stage2`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from granite_train.data.sources import SourceSpec
from granite_train.typed_config import from_mapping

NEW_SYMBOL_INITS = ("similar", "zero")


@dataclass
class AddLanguageStage1:
    """The continued stage 1: the extended encoder trained on the new language (+ replay).

    Attributes:
        recipe: the stage-1 recipe continued (the encoder architecture is taken from the
            starting encoder folder, whatever the recipe names); None = ``ctc_tiny_en`` for a 4.0
            encoder, ``turboctc_finetune`` for a granite-speech-5.0 TurboCTC folder.
        steps: optimizer steps, >= 1.
        lr: peak LR; None = the recipe's.
        old_layers_lr_scale: LR factor of the encoder below the CTC head (< 1: it learns slower,
            less forgetting); > 0, as ``optim.lr_scale`` takes it. To hold the old layers still,
            use ``head_only_steps`` (up to ``steps``: never trained) instead of 0.
        head_only_steps: the layers below the head wait this many steps (``optim.start_step``), so
            the new rows learn first; >= 0.
        overrides: any field of the recipe, e.g. ``["trainer.threads=1"]``.
    """

    recipe: str | None = None
    steps: int = 1500
    lr: float | None = None
    old_layers_lr_scale: float = 1.0
    head_only_steps: int = 0
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"stage1.steps must be >= 1, got {self.steps}")
        if not self.old_layers_lr_scale > 0:
            raise ValueError(
                f"stage1.old_layers_lr_scale must be > 0 (1 = the head's LR), got {self.old_layers_lr_scale}; "
                "to hold the old layers still, set stage1.head_only_steps (up to stage1.steps) instead"
            )
        if self.head_only_steps < 0:
            raise ValueError(f"stage1.head_only_steps must be >= 0, got {self.head_only_steps}")


@dataclass
class AddLanguageStage2:
    """The optional stage 2: a trained speech LLM continued on the new encoder (projector + LoRA).

    Attributes:
        speech_llm: the trained speech LLM folder to continue; None = no stage 2.
        recipe: the stage-2 recipe continued.
        steps: optimizer steps, >= 1.
        lr: peak LR; None = the recipe's.
        overrides: any field of the recipe.
    """

    speech_llm: str | None = None
    recipe: str = "speech_llm_finetune"
    steps: int = 300
    lr: float | None = None
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"stage2.steps must be >= 1, got {self.steps}")


@dataclass
class AddLanguageConfig:
    """A new language taught to trained models, step by step (:mod:`granite_train.add_language`).

    Attributes:
        language: ISO 639-1 tag of the new language (an espeak-ng voice must speak it).
        encoder: the trained stage-1 encoder to extend (export folder or ``.ckpt``), or a
            granite-speech-5.0 TurboCTC folder (its BPE vocabulary grows; no stage 2).
        old_corpus: the old language's corpus: replay (train split) and forgetting (test split)
            (the YAML: ``${paths.corpus_dir}/tts_en``).
        reference: English lines for the tokenizer's tokens-per-character ratio (the YAML: the
            bundled ``data_prep/texts/en.txt``).
        output_dir: one folder per step, ``results.md`` / ``results.json`` (the YAML:
            ``${paths.work_dir}/add_language/${language}``).
        texts: the new language's sentences, one a line; None = the bundled
            ``data_prep/texts/<language>.txt``.
        old_language: the language of ``old_corpus``.
        extra_sources: your own audio of the new language, as
            :class:`~granite_train.data.sources.SourceSpec` fields (``name`` defaults to
            ``user_<i>``, ``language`` to ``language``); every key checked.
        engines: the ``granite-tts`` engine mix for the new language (e.g.
            ``espeak=0.5,festival=0.5``); None = espeak-ng.
        test_fraction: share of the sentences held out as the new language's test set, in (0, 1).
        lowercase / strip_punctuation: targets as the tiny recipe builds them (report, training
            and evaluation agree).
        coverage: add the out-of-vocabulary letters covering this share of their occurrences, in (0, 1].
        new_symbol_init: new CTC rows: ``similar`` (a copy of a look-alike old letter's row, a
            margin below it) or ``zero``.
        new_symbol_margin: ``similar``: how far below its source letter a new row starts (>= 25:
            old decoding unchanged).
        new_symbol_bias: ``zero`` (and letters without a look-alike): the bias of a zero row.
        new_pieces: a granite-speech-5.0 TurboCTC model only: the new language's most frequent
            multi-letter pieces added as tokens besides its letters (learnt from the training
            split's transcripts), so that its targets fit the 12.5 Hz output frames; >= 0.
        replay_share: share of training examples from ``old_corpus``, in [0, 1) (0: no replay,
            forgetting shown).
        seed: of the TTS corpus.
        num_workers: TTS worker processes; None = all cores.
        stage1 / stage2: the training steps (:class:`AddLanguageStage1`, :class:`AddLanguageStage2`).
    """

    language: str
    encoder: str
    old_corpus: str
    reference: str
    output_dir: str
    texts: str | None = None
    old_language: str = "en"
    extra_sources: list[SourceSpec] = field(default_factory=list)
    engines: str | None = None
    test_fraction: float = 0.1
    lowercase: bool = True
    strip_punctuation: bool = True
    coverage: float = 0.999
    new_symbol_init: str = "similar"
    new_symbol_margin: float = 25.0
    new_symbol_bias: float = -50.0
    new_pieces: int = 200
    replay_share: float = 0.5
    seed: int = 0
    num_workers: int | None = None
    stage1: AddLanguageStage1 = field(default_factory=AddLanguageStage1)
    stage2: AddLanguageStage2 = field(default_factory=AddLanguageStage2)

    def __post_init__(self) -> None:
        self.extra_sources = [self._user_source(i, s) for i, s in enumerate(self.extra_sources or [])]
        if not 0.0 <= self.replay_share < 1.0:
            raise ValueError(f"replay_share must be in [0, 1), got {self.replay_share}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.new_pieces < 0:
            raise ValueError(f"new_pieces must be >= 0, got {self.new_pieces}")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage}")
        if self.new_symbol_init not in NEW_SYMBOL_INITS:
            raise ValueError(
                f"new_symbol_init must be one of {NEW_SYMBOL_INITS}, got {self.new_symbol_init!r}"
            )

    def _user_source(self, index: int, source: SourceSpec | dict[str, Any]) -> SourceSpec:
        if isinstance(source, SourceSpec):
            return source
        defaults = {"name": f"user_{index}", "language": self.language}
        return from_mapping(SourceSpec, {**defaults, **source}, f"extra_sources[{index}]")


__all__ = ["NEW_SYMBOL_INITS", "AddLanguageConfig", "AddLanguageStage1", "AddLanguageStage2"]
