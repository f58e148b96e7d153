"""Streaming speech data: sources, mixture, validation, bucketing, collation, exact resume."""

from granite_train.data.bucketing import DurationBucketer, geometric_bounds, quantile_bounds
from granite_train.data.builders import build_pipeline_config
from granite_train.data.collate import Batch, Collator, ExampleBatch
from granite_train.data.mixture import MixtureSampler, mixture_probabilities
from granite_train.data.pipeline import PipelineConfig, SpeechDataPipeline, build_dataloader
from granite_train.data.prepare import Example, ExamplePreparer, PrepareConfig, SkipReason
from granite_train.data.report import DataReport
from granite_train.data.sources import SourceReader, SourceSpec, open_stream

__all__ = [
    "Batch",
    "Collator",
    "DataReport",
    "DurationBucketer",
    "Example",
    "ExampleBatch",
    "ExamplePreparer",
    "MixtureSampler",
    "PipelineConfig",
    "PrepareConfig",
    "SkipReason",
    "SourceReader",
    "SourceSpec",
    "SpeechDataPipeline",
    "build_dataloader",
    "build_pipeline_config",
    "geometric_bounds",
    "mixture_probabilities",
    "open_stream",
    "quantile_bounds",
]
