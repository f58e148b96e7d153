"""Stage 2 as a LightningModule: projector (+ LoRA, optionally LLM / encoder) on a frozen encoder.

The model is :class:`~granite_train.models.speech_llm.SpeechLLM` (transformers'
``GraniteSpeechForConditionalGeneration``); the loss is next-token cross-entropy on the target
tokens only (labels -100 on prompt, audio and padding). Validation reports the teacher-forced loss
and token accuracy on every batch, and greedy-decoding WER / CER on the first
``val_generate_batches`` batches (generation is the costly part).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from granite_train.models.checkpoints import SPEECH_LLM_KEY, speech_llm_metadata
from granite_train.models.config import SpeechLLMModelConfig
from granite_train.models.ctc_loss import SelfConditionedCTCLoss
from granite_train.models.encoder_cache import EncoderOutputCache
from granite_train.models.speech_llm import build_speech_llm, format_counts
from granite_train.training.config import OptimConfig
from granite_train.training.speech_llm_losses import (
    AudioCTCHead,
    audio_ctc_loss,
    audio_embed_loss,
    audio_rms,
    corrupt_target_inputs,
)
from granite_train.training.step_module import StepSkippingModule
from granite_train.typed_config import from_mapping

log = logging.getLogger(__name__)


class SpeechLLMModule(StepSkippingModule):
    """Joint projector + LoRA training of :class:`SpeechLLM`.

    Args:
        model: :class:`~granite_train.models.config.SpeechLLMModelConfig` (or its mapping form);
            its ``loss`` section sets the training-only objectives
            (:mod:`~granite_train.training.speech_llm_losses`), which live here, not in the model.
        optim, total_steps, seed, fault_injection: see :class:`StepSkippingModule`.
        val_normalizer: normalizer of the validation WER (``auto``: Whisper English for en).
        val_generate_batches: validation batches decoded with greedy generation (0: loss only).
        max_new_tokens: generation length limit in validation.
        normalized_translations: validation BLEU against references normalised as the AST targets
            were (``prompts.normalize_translations``).
    """

    def __init__(
        self,
        model: SpeechLLMModelConfig | Mapping[str, Any],
        optim: OptimConfig | Mapping[str, Any],
        total_steps: int,
        seed: int = 0,
        val_normalizer: str = "auto",
        val_generate_batches: int = 4,
        max_new_tokens: int = 64,
        fault_injection: dict[str, Any] | None = None,
        normalized_translations: bool = False,
    ):
        super().__init__(optim, total_steps, seed=seed, fault_injection=fault_injection)
        model = from_mapping(SpeechLLMModelConfig, model, "model")
        self.save_config(
            model,
            val_normalizer=val_normalizer,
            val_generate_batches=val_generate_batches,
            max_new_tokens=max_new_tokens,
            normalized_translations=normalized_translations,
        )
        self.normalized_translations = bool(normalized_translations)
        self.audio_ctc_weight = float(model.loss.audio_ctc_weight)
        self.audio_embed_weight = float(model.loss.audio_embed_weight)
        self.target_token_noise = float(model.loss.target_token_noise)
        self.encoder_ctc_weight = float(model.loss.encoder_ctc_weight)
        self.projector_warmup_steps = int(model.loss.projector_warmup_steps)
        self.model = build_speech_llm(model)
        self.encoder_cache = None
        cache_gb = float(model.encoder_cache_gb or 0)
        if cache_gb > 0:
            if "encoder" not in self.model.frozen:
                raise ValueError("model.encoder_cache_gb needs a frozen encoder (model.train.encoder=false)")
            self.encoder_cache = EncoderOutputCache(int(cache_gb * 2**30))
        # random replacements: ordinary tokens only (an extra <|audio|> would break the audio merge)
        special = set(self.model.tokenizer.all_special_ids) | {self.model.audio_token_id}
        self.register_buffer(
            "noise_tokens",
            torch.tensor([i for i in range(len(self.model.tokenizer)) if i not in special]),
            persistent=False,
        )
        # training-only: it lives here, not in the exported model
        self.audio_ctc_head = None
        if self.audio_ctc_weight > 0:
            tied = model.loss.audio_ctc_head == "tied"
            self.audio_ctc_head = AudioCTCHead(
                self.model.config.text_config.hidden_size,
                len(self.model.tokenizer),
                tied_to=(lambda: self.model.hf.get_input_embeddings().weight) if tied else None,
                blank=self.tokenizer.pad_token_id,
            )
        # a training encoder keeps its CTC head valid (the speculative-decoding draft)
        self.encoder_ctc = SelfConditionedCTCLoss() if self.encoder_ctc_weight > 0 else None
        self.param_counts = self.model.parameter_counts()
        log.info("%s", format_counts(self.param_counts))
        self.val_normalizer = val_normalizer
        self.val_generate_batches = int(val_generate_batches)
        self.max_new_tokens = int(max_new_tokens)
        self._val: dict[str, list] = {}

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def configure_model(self) -> None:
        """``trainer.strategy=fsdp2``: shard the LLM layer by layer (:mod:`..sharding`); a no-op
        under any other strategy (only Lightning's model-parallel strategies set a device mesh)."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_sharded", False):
            return
        from granite_train.training.sharding import shard_speech_llm

        shard_speech_llm(self, mesh["data_parallel"])
        self._sharded = True

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            print(f"[stage 2] {format_counts(self.param_counts)}", flush=True)
            if self.audio_ctc_head is not None:
                n = sum(p.numel() for p in self.audio_ctc_head.parameters())
                print(
                    f"[stage 2] + audio-token CTC head (weight {self.audio_ctc_weight}, training only): "
                    f"{n:,} parameters",
                    flush=True,
                )

    def compute_loss(self, batch):
        input_ids = batch.input_ids
        if self.training and self.target_token_noise > 0:
            input_ids = corrupt_target_inputs(
                input_ids, batch.labels, self.target_token_noise, self.noise_tokens
            )
        hidden = None
        if self.training and self.encoder_cache is not None:
            hidden = self.encoder_cache(batch.ids, batch.features, batch.feature_lengths, self.model.encode)
            self.counters.update({f"encoder_cache/{k}": v for k, v in self.encoder_cache.counts.items()})
            self.encoder_cache.counts.clear()
        if self.training and self.global_step < self.projector_warmup_steps:
            return self._projector_warmup_loss(batch, hidden)
        out = self.model(
            input_ids,
            batch.attention_mask,
            batch.features,
            batch.feature_lengths,
            batch.labels,
            encoder_hidden=hidden,
        )
        self.counters["target_tokens"] += out.num_tokens
        loss = out.loss
        extra = {"token_acc": out.num_correct / out.num_tokens, "lm_loss": out.loss.detach()}
        loss = self._add_audio_losses(loss, extra, batch, out.audio_embeds, out.audio_token_counts)
        if self.encoder_ctc is not None and out.encoder is not None:
            if batch.targets is None or not bool(batch.target_lengths.any()):
                raise ValueError(
                    "model.loss.encoder_ctc_weight > 0 needs CTC targets: set data.train.prepare.ctc_targets=true"
                )
            enc = out.encoder
            ctc = self.encoder_ctc(
                enc.logits, enc.lengths, batch.targets, batch.target_lengths, enc.mid_logits
            )
            self.counters["skipped/encoder_ctc_too_short"] += ctc.num_dropped
            loss = loss + self.encoder_ctc_weight * ctc.loss  # zero, with a graph, when all dropped (DDP)
            if not ctc.all_dropped:
                extra["encoder_ctc_loss"] = ctc.loss.detach()
        return loss, extra

    def _projector_warmup_loss(self, batch, hidden):
        """The audio-token CTC (+ embedding pull) on the projector's output alone: the LLM does not
        run (``model.loss.projector_warmup_steps``). Trainable LLM parameters join the loss at zero
        weight so that DDP, which reduces every trainable gradient, does not wait on them."""
        audio, counts = self.model.audio_embeds(batch.features, batch.feature_lengths, hidden)
        extra: dict = {}
        resting = [p for p in self.model.language_model.parameters() if p.requires_grad]
        loss = 0.0 * sum(p.sum() for p in resting) if resting else audio.sum() * 0.0
        loss = self._add_audio_losses(loss, extra, batch, audio, counts)
        return loss, extra

    def _add_audio_losses(self, loss, extra: dict, batch, audio, counts):
        """``loss`` + the weighted training-only audio-token objectives; their values go in ``extra``."""
        rms = audio_rms(audio, counts)
        if rms is not None:
            extra["audio_rms"] = rms
        if self.audio_ctc_head is None:
            return loss
        ctc, dropped = audio_ctc_loss(
            audio, counts, batch.labels, self.audio_ctc_head, blank=self.tokenizer.pad_token_id
        )
        if self.global_step in self.aux_dropped_steps and (
            self.fault_ranks is None or self.global_rank in self.fault_ranks
        ):  # test hook: as if no utterance of this batch could be aligned
            ctc, dropped = None, len(batch.ids)
            log.warning(
                "fault injection: no audio-CTC loss at step %d on rank %d",
                self.global_step,
                self.global_rank,
            )
        if dropped:
            self.counters["skipped/audio_ctc_too_short"] += dropped
        if ctc is not None:
            loss = loss + self.audio_ctc_weight * ctc
            extra["audio_ctc_loss"] = ctc.detach()
        else:  # every utterance dropped: the head stays in the graph with a zero gradient, so
            # that DDP, reducing every parameter's gradient, does not wait on this rank
            loss = loss + 0.0 * sum(p.sum() for p in self.audio_ctc_head.parameters())
        if self.audio_embed_weight > 0:
            table = self.model.hf.get_input_embeddings().weight
            pull = audio_embed_loss(audio, counts, self.audio_ctc_head, table)
            loss = loss + self.audio_embed_weight * pull
            extra["audio_embed_loss"] = pull.detach()
        return loss

    # ------------------------------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {"loss": [], "refs": [], "hyps": [], "langs": [], "tasks": [], "targets": [], "bias": []}

    def validation_step(self, batch, batch_idx: int) -> None:
        # No collectives here: ranks may hold different numbers of validation batches.
        out = self.model(
            batch.input_ids, batch.attention_mask, batch.features, batch.feature_lengths, batch.labels
        )
        self._val["loss"].append((float(out.loss) * out.num_tokens, out.num_correct, out.num_tokens))
        if batch_idx >= self.val_generate_batches:
            return
        generated = self.model.generate(
            batch.prompt_ids,
            batch.prompt_mask,
            batch.features,
            batch.feature_lengths,
            max_new_tokens=self.max_new_tokens,
        )
        self._val["hyps"] += [
            t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        ]
        self._val["refs"] += [t or "" for t in batch.texts]
        self._val["langs"] += [t or lang for t, lang in zip(batch.target_languages, batch.languages)]
        self._val["tasks"] += batch.task_labels or ["asr"] * len(batch.texts)
        self._val["targets"] += list(batch.target_languages or [None] * len(batch.texts))
        self._val["bias"] += batch.bias_words or [[] for _ in batch.texts]

    def on_validation_epoch_end(self) -> None:
        val = self._val
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, val)
            val = {k: [x for part in gathered for x in part[k]] for k in val}
        if val["loss"]:
            total, correct, count = map(sum, zip(*val["loss"]))
            self.log("val/loss", total / count, rank_zero_only=True)
            self.log("val/token_acc", correct / count, rank_zero_only=True)
        if not val["refs"]:
            return
        # per task: WER on transcription (with or without a keyword list), B-WER / U-WER on the
        # keyword-prompted examples, BLEU on translation
        rows = list(zip(val["tasks"], val["refs"], val["hyps"], val["langs"], val["targets"], val["bias"]))
        asr = [r for r in rows if not r[0].startswith("ast")]
        if asr:
            langs = [r[3] for r in asr]
            language = max(set(langs), key=langs.count)
            normalizer = self.val_normalizer
            if normalizer == "auto":
                normalizer = "whisper_english" if language in (None, "en") else "basic"
            self.log_error_rates([r[1] for r in asr], [r[2] for r in asr], normalizer,
                                 language=language or "en", primary="wer")  # fmt: skip
            keyword = [r for r in asr if "+keywords" in r[0] and r[5]]
            if keyword:
                from granite_train.eval.biasing import biasing_error_rates

                rates = biasing_error_rates([r[1] for r in keyword], [r[2] for r in keyword],
                                            [r[5] for r in keyword], normalizer=normalizer)  # fmt: skip
                for key in ("b_wer", "u_wer", "recall"):
                    if rates[key] is not None:
                        self.log(f"val/keywords_{key}", rates[key], rank_zero_only=True)
        ast = [r for r in rows if r[0].startswith("ast")]
        if ast:
            from granite_train.eval.generate import translation_bleu

            score, _ = translation_bleu([r[1] for r in ast], [r[2] for r in ast], ast[0][4],
                                        normalized=self.normalized_translations)  # fmt: skip
            self.log("val/bleu", float(score.score), rank_zero_only=True)
        self.log_mixture()

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[SPEECH_LLM_KEY] = speech_llm_metadata(self.model)


__all__ = ["SPEECH_LLM_KEY", "SpeechLLMModule"]
