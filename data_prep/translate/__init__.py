"""Speech-translation (AST) targets: ``generate.generate_translations`` / ``python -m data_prep.translate``.

An ASR dataset's transcripts are translated by two independent MT backends (``backends``: a local
transformers model, an OpenAI-compatible chat endpoint) and an example is kept only where the two
agree (``agreement``: WER <= 0.3, CER <= 0.4 for ja / zh targets), as for granite-4.0-1b-speech.
"""

from data_prep.translate.agreement import Agreement, AgreementConfig, agreement
from data_prep.translate.backends import (
    SUPPORTED_PAIRS,
    MTBackend,
    OpenAIChatBackend,
    TransformersBackend,
    TranslationError,
    check_pair,
)
from data_prep.translate.generate import BackendFailureError, TranslationSummary, generate_translations

__all__ = [
    "SUPPORTED_PAIRS",
    "Agreement",
    "AgreementConfig",
    "BackendFailureError",
    "MTBackend",
    "OpenAIChatBackend",
    "TransformersBackend",
    "TranslationError",
    "TranslationSummary",
    "agreement",
    "check_pair",
    "generate_translations",
]
