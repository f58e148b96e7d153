"""The Granite Speech prompt format: one owner for what data and models must agree on.

A stage-2 example is the chat template applied to ``<|audio|>{instruction}``, with the single
``<|audio|>`` expanded to one placeholder per projected audio token, followed by the target and
EOS; labels are :data:`IGNORE_INDEX` on the prompt. The data pipeline builds such examples
(:mod:`granite_train.data.prompts`) and the model fills the placeholders
(:mod:`granite_train.models.speech_llm`): both import the constants and the token arithmetic from
here, which depends on the audio front-end alone (the frame count is the feature extractor's).
"""

from __future__ import annotations

import math

import torch

from granite_train.audio.features import LogMelFeatures
from granite_train.text.languages import LANGUAGE_NAMES, language_name

AUDIO_TOKEN = "<|audio|>"
IGNORE_INDEX = -100  # label of a position that is not a target (prompt, audio, padding)
TASKS = ("asr", "ast")

# granite-4.0-1b-speech's prompt: "USER: <|audio|>{instruction}\n ASSISTANT:"; a base LLM without a
# chat template gets this one.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ ' ASSISTANT: ' + message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
)

# The first variant is the one the published model card uses; the others vary the wording.
ASR_INSTRUCTIONS = [
    "can you transcribe the speech into a written format?",
    "transcribe the speech to text.",
    "please transcribe the following audio to text.",
    "write down what is said in this audio.",
    "what is being said in this recording?",
    "convert the spoken words into text.",
    "give me a transcript of the audio.",
    "listen to the audio and write out the words.",
    "produce a verbatim transcription of the speech.",
    "type out exactly what the speaker says.",
    "could you write out what you hear?",
    "turn this speech into written text.",
]
AST_INSTRUCTIONS = [
    "translate the speech to {language}.",
    "can you translate the speech into {language}?",
    "listen to the audio and translate it to {language}.",
    "what is the {language} translation of this speech?",
    "render the spoken words in {language}.",
    "translate what is said into {language}.",
    "give me the {language} translation of the audio.",
    "please translate this recording into {language}.",
]

# the published projector: 15-frame windows, 3 queries each (10 Hz audio tokens)
WINDOW_SIZE = 15
DOWNSAMPLE_RATE = 5


def encoder_frames(num_samples: int) -> int:
    """50 Hz encoder frames of ``num_samples`` of 16 kHz audio: the feature extractor's count."""
    return int(LogMelFeatures.num_frames(num_samples))


def projector_tokens(
    num_frames: torch.Tensor | int, window_size: int = WINDOW_SIZE, downsample_rate: int = DOWNSAMPLE_RATE
):
    """Audio tokens the projector emits for ``num_frames`` encoder frames: whole windows x queries."""
    queries = window_size // downsample_rate
    if isinstance(num_frames, torch.Tensor):
        return torch.div(num_frames + window_size - 1, window_size, rounding_mode="floor") * queries
    return math.ceil(num_frames / window_size) * queries


def audio_token_count(
    num_samples: int, window_size: int = WINDOW_SIZE, downsample_rate: int = DOWNSAMPLE_RATE
) -> int:
    """The published formula: ``ceil(((n_samples // 160 + 1) // 2) / 15) * 3`` (10 Hz audio tokens)."""
    return projector_tokens(encoder_frames(num_samples), window_size, downsample_rate)


__all__ = [
    "ASR_INSTRUCTIONS",
    "AST_INSTRUCTIONS",
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "DOWNSAMPLE_RATE",
    "IGNORE_INDEX",
    "LANGUAGE_NAMES",
    "TASKS",
    "WINDOW_SIZE",
    "audio_token_count",
    "encoder_frames",
    "language_name",
    "projector_tokens",
]
