"""``granite-train demo``'s settings (``configs/demo.yaml``): typed, documented dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoLLMSettings:
    """The tiny base LLM and its tokenizer (``data_prep.base_llm.build_base_llm``): a *base* LLM
    knows the language and can copy from its context (language-model rows + in-context copy rows).

    Attributes:
        preset: the tiny Granite LLM's size preset.
        vocab_size: its byte-level BPE vocabulary.
        pretrain_steps: pretraining steps on the training transcripts (~11 minutes on 2 cores).
        copy_share: share of in-context copy rows, in [0, 1].
        batch_size: pretraining rows per step.
    """

    preset: str = "tiny"
    vocab_size: int = 1024
    pretrain_steps: int = 900
    copy_share: float = 0.9
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0.0 <= self.copy_share <= 1.0:
            raise ValueError(f"demo.llm.copy_share must be in [0, 1], got {self.copy_share}")


@dataclass
class DemoSettings:
    """The demo's phases: corpus -> stage 1 -> tiny LLM -> stage 2 -> export -> transformers reload.

    Attributes:
        work_dir: ``corpus/``, ``experiments/``, ``llm/``, ``results.md`` (the YAML:
            ``${paths.work_dir}/demo``).
        texts: the English sentences read by espeak-ng (the YAML: the bundled
            ``data_prep/texts/en.txt``).
        test_fraction: held-out sentences (disjoint from train), in (0, 1).
        max_sentences: None = every sentence of ``texts``.
        shard_size: utterances per corpus shard.
        tts_workers: TTS processes; None = all cores.
        stage1_recipe / stage1_overrides: the stage-1 recipe and its overrides (~10 minutes on 2 cores).
        llm: the tiny base LLM (:class:`DemoLLMSettings`).
        stage2_recipe / stage2_overrides: the stage-2 recipe and its overrides (~15 minutes).
        eval_max_new_tokens: stage-2 evaluation and the transformers reload: generation limit.
    """

    work_dir: str
    texts: str
    test_fraction: float = 0.05
    max_sentences: int | None = None
    shard_size: int = 250
    tts_workers: int | None = None
    stage1_recipe: str = "ctc_tiny_en"
    stage1_overrides: list[str] = field(
        default_factory=lambda: ["trainer.max_steps=1200", "trainer.val_every_n_steps=600"]
    )
    llm: DemoLLMSettings = field(default_factory=DemoLLMSettings)
    stage2_recipe: str = "speech_llm_tiny_en"
    stage2_overrides: list[str] = field(
        default_factory=lambda: [
            "trainer.max_steps=1800",
            "trainer.val_every_n_steps=600",
            "trainer.checkpoint_every_n_steps=600",
        ]
    )
    eval_max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"demo.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class DemoConfig:
    """``configs/demo.yaml``: the seed of every phase and the phases' settings.

    Attributes:
        seed: of the corpus, the LLM and both training runs.
        demo: the phases (:class:`DemoSettings`).
    """

    demo: DemoSettings
    seed: int = 0


__all__ = ["DemoConfig", "DemoLLMSettings", "DemoSettings"]
