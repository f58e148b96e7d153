"""Evaluation: corpus-level WER / CER, greedy CTC decoding, and result reports."""

from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.eval.metrics import NO_SPACE_LANGUAGES, error_rates
from granite_train.eval.report import (
    EvalResult,
    read_results_json,
    results_to_markdown,
    write_results_json,
)

__all__ = [
    "NO_SPACE_LANGUAGES",
    "EvalResult",
    "error_rates",
    "greedy_ctc_decode",
    "read_results_json",
    "results_to_markdown",
    "write_results_json",
]
