"""Model components: the CTC conformer encoder and its self-conditioned CTC loss."""

from granite_train.models.ctc_loss import CTCLossOutput, SelfConditionedCTCLoss
from granite_train.models.encoder import (
    PRESETS,
    CTCEncoder,
    EncoderOutput,
    GraniteSpeechEncoderConfig,
    encoder_config,
    lengths_to_mask,
)

__all__ = [
    "PRESETS",
    "CTCEncoder",
    "CTCLossOutput",
    "EncoderOutput",
    "GraniteSpeechEncoderConfig",
    "SelfConditionedCTCLoss",
    "encoder_config",
    "lengths_to_mask",
]
