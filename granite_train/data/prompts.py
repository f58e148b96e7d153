"""Stage-2 examples: prompt-formatted token sequences for ASR, AST and keyword-biased ASR.

One example's layout (the chat template of the tokenizer; granite-4.0-1b-speech's is shown)::

    USER: <|audio|> x N  {instruction}[ Keywords: kw1, kw2][ Draft: {draft}]\\n ASSISTANT:  {target} <|end_of_text|>
    |------------------------- prompt: labels -100 ---------------------|  |--- labels = ids ---|

``N`` is the published audio-token count ``ceil(((n_samples // 160 + 1) // 2) / 15) * 3``. The
instruction is drawn from the task's variants by a hash of (seed, example id), so a resumed run
builds the same prompts. Training sequences are right-padded (labels -100 on padding); the
generation prompt (everything up to ``ASSISTANT:``) is also returned left-padded, as ``generate``
needs it.

A record's ``draft`` (a first-pass transcript: the stage-1 encoder's greedy CTC, written by
``python -m data_prep.drafts``; ``eval prompt_draft=ctc`` decodes it from the model's own CTC head)
is appended to the instruction as ``Draft: ...``: the LLM corrects a transcript it can read instead
of writing one from audio tokens alone.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from granite_train.data.collate import Batch, Collator, ExampleBatch
from granite_train.data.prepare import Example
from granite_train.speech_format import (
    ASR_INSTRUCTIONS,
    AST_INSTRUCTIONS,
    AUDIO_TOKEN,
    IGNORE_INDEX,
    TASKS,
    audio_token_count,
    language_name,
)

_PUNCT = re.compile(r"[^\w\s']")
DRAFT_PREFIX = "Draft:"
_TEMPLATE_CACHE_SIZE = 4096  # drafts and keyword lists make most instructions unique


@dataclass
class PromptConfig:
    """How examples become prompts and targets.

    Attributes:
        asr_instructions / ast_instructions: instruction variants (AST ones contain ``{language}``).
        vary_instructions: draw a variant per example; ``False`` always uses the first (evaluation).
        system_prompt: optional system message before the user turn.
        normalize_targets: lowercase and strip punctuation from ASR targets (espeak audio carries
            neither case nor punctuation); AST targets are left as written unless
            ``normalize_translations``.
        normalize_translations: the same for AST targets, keeping the ``[Transcription]`` /
            ``[Translation]`` marks (a tiny LLM pretrained on normalised text).
        max_target_tokens: longer targets are truncated (EOS kept) and counted.
    """

    asr_instructions: list[str] = field(default_factory=lambda: list(ASR_INSTRUCTIONS))
    ast_instructions: list[str] = field(default_factory=lambda: list(AST_INSTRUCTIONS))
    vary_instructions: bool = True
    system_prompt: str | None = None
    normalize_targets: bool = False
    normalize_translations: bool = False
    max_target_tokens: int = 256

    def __post_init__(self) -> None:
        if not self.asr_instructions or not self.ast_instructions:
            raise ValueError("prompts: asr_instructions and ast_instructions must not be empty")
        bad = [i for i in self.ast_instructions if "{language}" not in i]
        if bad:
            raise ValueError(f"prompts.ast_instructions need a {{language}} placeholder: {bad}")


@dataclass
class TokenizedExample:
    prompt_ids: list[int]  # chat-formatted prompt with the audio placeholders expanded
    target_ids: list[int]  # target tokens + EOS
    instruction: str
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.target_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * len(self.prompt_ids) + self.target_ids


def target_token_ids(tokenizer, text: str, normalize: bool) -> list[int]:
    """A target's tokens as stage 2 learns them (EOS not included): normalised when asked, with
    one leading space. Also how a new language's transcripts are measured against the
    ``max_target_tokens`` budget (a new script can take several byte tokens per character)."""
    if normalize:
        text = normalize_target(text)
    return tokenizer(" " + text.strip(), add_special_tokens=False).input_ids


def normalize_target(text: str) -> str:
    """Lowercased, punctuation-free, whitespace collapsed; a ``[Transcription] ... [Translation]
    ...`` target keeps its two marks (each part normalised)."""
    marked = text.lstrip()
    if marked.startswith(TRANSCRIPTION_MARK) and TRANSLATION_MARK in marked:
        source = marked[len(TRANSCRIPTION_MARK) : marked.rfind(TRANSLATION_MARK)]
        translation = normalize_target(translation_part(marked))
        return f"{TRANSCRIPTION_MARK} {normalize_target(source)} {TRANSLATION_MARK} {translation}"
    text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return " ".join(text.split())


class PromptBuilder:
    """Tokenizes one example into prompt + target ids (see the module docstring).

    Args:
        tokenizer: the LLM tokenizer, with ``<|audio|>`` and a chat template.
        config: :class:`PromptConfig`.
        window_size / downsample_rate: the projector's (they fix the audio-token count).
        seed: seed of the instruction draw.
    """

    def __init__(
        self,
        tokenizer,
        config: PromptConfig | None = None,
        window_size: int = 15,
        downsample_rate: int = 5,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.config = config or PromptConfig()
        self.window_size = window_size
        self.downsample_rate = downsample_rate
        self.seed = seed
        self.audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        if self.audio_id is None or self.audio_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {AUDIO_TOKEN} token")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token")
        if not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template")
        self._template_cache: dict[str, list[int]] = {}

    def _pick(self, variants: Sequence[str], key: str) -> str:
        if not self.config.vary_instructions:
            return variants[0]
        return variants[zlib.crc32(f"{self.seed}/{key}".encode()) % len(variants)]

    def instruction(self, record: Mapping[str, Any]) -> str:
        """The user instruction of ``record``: task variant (+ the keyword suffix, when given)."""
        task = record.get("task") or "asr"
        key = str(record.get("id", ""))
        if task == "asr":
            text = self._pick(self.config.asr_instructions, key)
        elif task == "ast":
            target = record.get("target_language")
            if not target:
                raise ValueError(f"{key}: task ast needs a target_language")
            language = language_name(target)
            text = self._pick(self.config.ast_instructions, key).format(language=language)
        else:
            raise ValueError(f"{key}: unknown task {task!r}; known: {TASKS}")
        suffix = record.get("prompt_suffix")
        text = f"{text} {suffix}" if suffix else text
        draft = record.get("draft")
        return with_draft(text, draft) if draft is not None else text

    def prompt_ids(self, instruction: str, num_audio_tokens: int) -> list[int]:
        """Chat-formatted prompt ids with the single ``<|audio|>`` expanded to ``num_audio_tokens``."""
        ids = self._template_cache.get(instruction)
        if ids is None:
            messages = [{"role": "user", "content": f"{AUDIO_TOKEN}{instruction}"}]
            if self.config.system_prompt:
                messages.insert(0, {"role": "system", "content": self.config.system_prompt})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            if ids.count(self.audio_id) != 1:
                raise ValueError(f"chat template must keep exactly one {AUDIO_TOKEN}: {text!r}")
            if len(self._template_cache) >= _TEMPLATE_CACHE_SIZE:
                self._template_cache.clear()
            self._template_cache[instruction] = ids
        at = ids.index(self.audio_id)
        return ids[:at] + [self.audio_id] * num_audio_tokens + ids[at + 1 :]

    def target_ids(self, record: Mapping[str, Any]) -> tuple[list[int], bool]:
        text = record.get("text") or ""
        task = record.get("task") or "asr"
        normalize = (self.config.normalize_targets and task == "asr") or (
            self.config.normalize_translations and task == "ast"
        )
        ids = target_token_ids(self.tokenizer, text, normalize=bool(normalize))
        limit = self.config.max_target_tokens
        truncated = len(ids) > limit
        return ids[:limit] + [self.tokenizer.eos_token_id], truncated

    def __call__(self, record: Mapping[str, Any], num_samples: int) -> TokenizedExample:
        instruction = self.instruction(record)
        n_audio = audio_token_count(num_samples, self.window_size, self.downsample_rate)
        target, truncated = self.target_ids(record)
        return TokenizedExample(self.prompt_ids(instruction, n_audio), target, instruction, truncated)


TRANSCRIPTION_MARK, TRANSLATION_MARK = "[Transcription]", "[Translation]"


def with_draft(instruction: str, draft: str) -> str:
    """``instruction`` with a first-pass transcript appended (``... Draft: the draft``)."""
    return f"{instruction} {DRAFT_PREFIX} {' '.join(str(draft).split())}".rstrip()


def translation_part(text: str) -> str:
    """The translation of a ``[Transcription] ... [Translation] ...`` target (else ``text``)."""
    at = text.rfind(TRANSLATION_MARK)
    return text[at + len(TRANSLATION_MARK) :].strip() if at >= 0 else text.strip()


def task_label(record: Mapping[str, Any]) -> str:
    """``asr``, ``asr+keywords`` (a keyword list in the prompt), ``asr+draft`` (a first-pass
    transcript in it) or ``ast``: the counted task."""
    task = record.get("task") or "asr"
    task = f"{task}+keywords" if record.get("prompt_suffix") else task
    return f"{task}+draft" if record.get("draft") is not None else task


@dataclass
class SpeechLLMBatch(Batch):
    """A :class:`Batch` plus the token tensors of stage 2 (``L`` tokens, ``P`` prompt tokens)."""

    input_ids: torch.Tensor | None = None  # (B, L) prompt + target, right-padded
    attention_mask: torch.Tensor | None = None  # (B, L)
    labels: torch.Tensor | None = None  # (B, L) -100 on prompt and padding
    prompt_ids: torch.Tensor | None = None  # (B, P) prompt only, left-padded (generation)
    prompt_mask: torch.Tensor | None = None  # (B, P)
    instructions: list[str] | None = None
    tasks: list[str] | None = None
    target_languages: list[str | None] | None = None
    task_labels: list[str] | None = None  # asr, asr+keywords, ast: what the mixture served, per example
    bias_words: list[list[str]] | None = None  # a keyword example's words to be biased towards (else [])


def pad_id(tokenizer) -> int:
    """The tokenizer's padding id, its EOS when it has none (as generation pads)."""
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id


def pad_token_rows(
    seqs: Sequence[list[int]], value: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded with ``value`` to one width (on the left for generation): ids and mask (B, L)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class SpeechLLMCollator:
    """Audio features (via :class:`Collator`) + prompt / target tokens -> :class:`SpeechLLMBatch`."""

    def __init__(self, prompts: PromptBuilder, audio: Collator | None = None):
        self.prompts = prompts
        self.audio = audio or Collator(compute_features=True)
        self.pad_id = pad_id(prompts.tokenizer)

    def __call__(self, examples: ExampleBatch | Sequence[Example]) -> SpeechLLMBatch:
        base = self.audio(examples)
        items = examples.examples if isinstance(examples, ExampleBatch) else list(examples)
        tokens = [self.prompts(e.record, int(e.waveform.shape[-1])) for e in items]
        input_ids, attention_mask = pad_token_rows([t.input_ids for t in tokens], self.pad_id)
        labels, _ = pad_token_rows([t.labels for t in tokens], IGNORE_INDEX)
        prompt_ids, prompt_mask = pad_token_rows([t.prompt_ids for t in tokens], self.pad_id, left=True)
        skipped = dict(base.skipped)
        truncated = sum(t.truncated for t in tokens)
        if truncated:
            skipped["target_truncated"] = skipped.get("target_truncated", 0) + truncated
        return SpeechLLMBatch(
            **{**base.__dict__, "skipped": skipped},
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            instructions=[t.instruction for t in tokens],
            tasks=[e.record.get("task") or "asr" for e in items],
            target_languages=[e.record.get("target_language") for e in items],
            task_labels=[task_label(e.record) for e in items],
            bias_words=[list(e.record.get("bias_words") or []) for e in items],
        )
