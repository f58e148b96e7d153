"""``granite-train finetune``'s settings (``configs/finetune.yaml``): one typed, documented dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

TRAINS: dict[str, tuple[dict[str, bool], bool]] = {
    "projector_lora": ({"projector": True, "lora": True, "llm": False, "encoder": False}, True),
    "lora": ({"projector": False, "lora": True, "llm": False, "encoder": False}, True),
    "projector": ({"projector": True, "lora": False, "llm": False, "encoder": False}, False),
    "llm": ({"projector": True, "lora": False, "llm": True, "encoder": False}, False),
    # + the top `encoder_layers` conformer layers and the CTC head, with the encoder CTC as an auxiliary
    "encoder_top": ({"projector": True, "lora": True, "llm": False, "encoder": False}, True),
    # a granite-speech-5.0 TurboCTC model: the whole of it (encoder_top: its top `encoder_layers`)
    "all": ({"projector": False, "lora": False, "llm": False, "encoder": True}, False),
}
"""What trains, by name: the recipe's ``model.train`` flags, and whether a LoRA adapter is added."""


@dataclass
class FinetuneConfig:
    """A released checkpoint fine-tuned on your audio, scored before and after.

    Attributes:
        model_path: (``model=`` on the command line) a released GraniteSpeech folder or hub id
            (4.0 merged weights, or 3.3 with its adapter).
        data_path: (``data=``) your audio: an audiofolder folder, a CSV / TSV / JSONL manifest, a
            parquet folder or a hub id.
        output_dir: where the training run, the evaluations and ``results.md`` / ``results.json``
            go (the YAML: ``${paths.work_dir}/finetune/${name}``).
        data_split: the split of the data to read.
        language: of your audio (scoring: Whisper's English normaliser for ``en``; CER matters otherwise).
        eval_data: your own held-out set (same forms as ``data_path``); None = held out from the data.
        holdout_share: share of the usable utterances held out when ``eval_data`` is None, in (0,
            1): whole speakers when the data names at least two, else whole recordings, else audio
            contents (:func:`granite_train.data.holdout.plan_holdout`; at least one, never all).
        holdout_speakers: these speakers are the held-out split instead.
        min_heldout_utterances: the held-out split holds at least this many utterances where the
            share would hold fewer (never more than half the data beyond its first speaker).
        text_column: the column of your data holding the transcript.
        audio_column: the column holding the audio (a path, bytes or an Audio struct); NeMo's
            ``audio_filepath`` and audiofolder's ``file_name`` are found without it.
        speaker_column: the column naming the speaker (the held-out split is by speaker); None: none.
        encoding: text encoding of a CSV / TSV / JSONL manifest; None detects it (UTF-8, UTF-16
            with a BOM, else a logged guess such as cp1252).
        check: only check the data (every record read once, from the audio headers: usable hours,
            skips per reason with an example row and the fix) and print the held-out split, then
            stop; the same check always runs first.
        trains: what trains, one of :data:`TRAINS`: ``projector_lora`` (published), ``lora``,
            ``projector``, ``llm`` (the full LLM, no LoRA) or ``encoder_top``; a granite-speech-5.0
            TurboCTC model (``model_path`` a 5.0 folder) takes ``all`` (the whole model, as IBM's
            notebook) or ``encoder_top`` (its top ``encoder_layers`` conformer layers and CTC heads).
        lora_rank: rank (and alpha) of the LoRA adapter, >= 1.
        encoder_layers: ``trains=encoder_top``: the top k conformer layers (and the CTC head) that
            train; >= 1 (0 would train no encoder layer: that is ``trains=projector_lora``).
        encoder_ctc_weight: ``trains=encoder_top``: weight of the encoder's own CTC loss, which
            keeps the training CTC head valid; > 0 (the recipe refuses a training encoder without it).
        ctc_lowercase: ``trains=encoder_top``: CTC targets lowercased, without punctuation (the form
            a tiny espeak-trained encoder knows).
        gradient_checkpointing: recompute the LLM's (and a training encoder's) layers in backward:
            less memory, ~30% slower.
        steps: optimizer steps, >= 1.
        lr: peak LR; None = the recipe's (3e-5, IBM's fine-tuning notebook).
        warmup_steps: None = a tenth of the steps (at least 1); 0 = no warmup.
        max_frames: padded 50 Hz frames per batch (4000: 80 s of audio).
        replay: general-domain data mixed into training to limit forgetting (same forms as ``data_path``).
        replay_share: share of the training examples drawn from ``replay``, in [0, 1); > 0 needs ``replay``.
        regression: a general-domain test set scored before and after: what was forgotten.
        regression_language: the language of ``replay`` and ``regression``.
        num_beams: evaluation: 1 = greedy, more = beam search.
        max_new_tokens: evaluation: generation limit per utterance.
        merge_lora: False also keeps the LoRA as a peft adapter beside the base weights.
            ``trains=lora`` also writes ``train/speech_llm_lora/``: the LoRA alone, for
            ``vllm serve MODEL --enable-lora``.
        name: the run's name (the recipe's ``name``; the default ``output_dir`` ends with it).
        overrides: any field of ``recipes/speech_llm_finetune.yaml``, e.g. ``["trainer.threads=2"]``.
    """

    model_path: str
    data_path: str
    output_dir: str
    data_split: str = "train"
    language: str = "en"
    eval_data: str | None = None
    holdout_share: float = 0.1
    holdout_speakers: list[str] = field(default_factory=list)
    min_heldout_utterances: int = 20
    text_column: str = "text"
    audio_column: str = "audio"
    speaker_column: str | None = "speaker"
    encoding: str | None = None
    check: bool = False
    trains: str = "projector_lora"
    lora_rank: int = 64
    encoder_layers: int = 2
    encoder_ctc_weight: float = 0.2
    ctc_lowercase: bool = False
    gradient_checkpointing: bool = False
    steps: int = 300
    lr: float | None = None
    warmup_steps: int | None = None
    max_frames: int = 4000
    replay: str | None = None
    replay_share: float = 0.0
    regression: str | None = None
    regression_language: str = "en"
    num_beams: int = 1
    max_new_tokens: int = 128
    merge_lora: bool = True
    name: str = "finetune"
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.trains not in TRAINS:
            raise ValueError(f"trains must be one of {sorted(TRAINS)}, got {self.trains!r}")
        if not 0.0 <= self.replay_share < 1.0:
            raise ValueError(f"replay_share must be in [0, 1), got {self.replay_share}")
        if self.replay_share > 0 and not self.replay:
            raise ValueError("replay_share > 0 needs `replay` (general-domain data to mix in)")
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(f"holdout_share must be in (0, 1), got {self.holdout_share}")
        for name in (
            "steps",
            "lora_rank",
            "max_frames",
            "num_beams",
            "max_new_tokens",
            "min_heldout_utterances",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(
                f"warmup_steps must be >= 0 (or null: a tenth of the steps), got {self.warmup_steps}"
            )
        if self.trains == "encoder_top":
            if self.encoder_layers < 1:
                raise ValueError(
                    f"encoder_layers must be >= 1 with trains=encoder_top (the top k conformer layers "
                    f"train), got {self.encoder_layers}; trains=projector_lora trains no encoder layer"
                )
            if self.encoder_ctc_weight <= 0:
                raise ValueError(
                    f"encoder_ctc_weight must be > 0 with trains=encoder_top (the encoder's CTC loss "
                    f"keeps its training CTC head valid), got {self.encoder_ctc_weight}"
                )

    @property
    def trained_parts(self) -> dict[str, bool]:
        """The recipe's ``model.train`` flags for :attr:`trains`."""
        return TRAINS[self.trains][0]

    @property
    def adds_lora(self) -> bool:
        """Whether :attr:`trains` adds a LoRA adapter to the LLM."""
        return TRAINS[self.trains][1]

    @property
    def warmup(self) -> int:
        """Warmup steps: :attr:`warmup_steps`, or a tenth of the steps (at least 1)."""
        return max(1, self.steps // 10) if self.warmup_steps is None else self.warmup_steps


__all__ = ["TRAINS", "FinetuneConfig"]
