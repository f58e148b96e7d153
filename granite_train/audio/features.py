"""Granite-Speech log-mel features, batched and exact under padding."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

__all__ = ["LogMelFeatures"]


class LogMelFeatures(nn.Module):
    """Batched equivalent of transformers' ``GraniteSpeechFeatureExtractor``.

    16 kHz audio -> 80 log-mel bins (n_fft 512, Hann window 400, hop 160, power spectrum, HTK mel) ->
    ``log10(max(mel, 1e-10))`` -> floor at (utterance max - 8) -> ``/ 4 + 1`` -> drop an odd last frame ->
    stack pairs of frames: 160-dim vectors at 50 Hz.

    Unlike the transformers extractor, a padded batch gives every utterance exactly the features it
    gets alone. The extractor's ``center=True`` STFT reflect-pads the *padded* tensor, so the last
    frames of a shorter utterance see its zero padding rather than its reflection, and its max is taken
    over padding frames too. Here each utterance is reflect-padded at its own end, the STFT runs with
    ``center=False``, and the max only covers that utterance's valid frames.

    Utterances need at least ``MIN_SAMPLES`` (257) samples, the least that reflect padding by
    ``n_fft // 2`` accepts (the transformers extractor fails on them as well); shorter ones raise
    ``ValueError``. The data pipeline drops clips under ~0.1 s long before this point.

    The mel filterbank and window are buffers, so ``.to(device)`` moves them. Features are computed in
    float32 with autocast disabled: a bf16 filterbank matmul would shift the log-mels visibly.
    """

    SAMPLE_RATE = 16000
    N_FFT = 512
    WIN_LENGTH = 400
    HOP_LENGTH = 160
    N_MELS = 80
    STACK = 2
    DYNAMIC_RANGE = 8.0  # log10 units kept below the utterance max (80 dB)
    MIN_SAMPLES = N_FFT // 2 + 1
    FEATURE_DIM = STACK * N_MELS
    FRAME_RATE = SAMPLE_RATE // (HOP_LENGTH * STACK)  # 50 stacked frames per second

    def __init__(self, padding_value: float = 0.0) -> None:
        """Args:
        padding_value: value of output features beyond each utterance's length.
        """
        super().__init__()
        self.padding_value = padding_value
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.SAMPLE_RATE,
            n_fft=self.N_FFT,
            win_length=self.WIN_LENGTH,
            hop_length=self.HOP_LENGTH,
            n_mels=self.N_MELS,
            center=False,  # padding is done per utterance in _reflect_pad
        )

    @staticmethod
    def num_frames(n_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Stacked 50 Hz frames for ``n_samples`` of 16 kHz audio: ``(n // 160 + 1) // 2``."""
        return (n_samples // LogMelFeatures.HOP_LENGTH + 1) // LogMelFeatures.STACK

    def _reflect_pad(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reflect-pad each row by ``n_fft // 2`` around its own valid span.

        ``(B, T) -> (B, T + n_fft)``. Row ``b`` holds ``reflect_pad(waves[b, :n_b])`` in
        ``[0, n_b + n_fft)``; what lies beyond is never read by a valid frame.
        """
        pad = self.N_FFT // 2
        out = F.pad(waves, (pad, pad))  # (B, T) -> (B, T + 2 * pad)
        # Left edge: the same positions for every row.
        out[:, :pad] = waves[:, 1 : pad + 1].flip(-1)
        # Right edge: row b gets waves[b, n_b - 2], ..., waves[b, n_b - 1 - pad] at n_b + pad, ...
        offsets = torch.arange(pad, device=waves.device)  # (pad,)
        end = lengths.unsqueeze(1)  # (B, 1)
        right = waves.gather(1, end - 2 - offsets)  # (B, pad)
        return out.scatter(1, end + pad + offsets, right)

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute stacked log-mel features.

        Args:
            waves: 16 kHz audio ``(B, T)`` (or ``(T,)``, treated as a batch of one), zero- or
                anything-padded beyond ``lengths``.
            lengths: valid samples per row ``(B,)``; ``None`` means all rows are ``T`` long.

        Returns:
            ``features`` ``(B, num_frames(T), 160)`` float32, ``padding_value`` beyond each row's
            length, and ``feature_lengths`` ``(B,)`` int64 equal to ``num_frames(lengths)``.
        """
        if waves.ndim == 1:
            waves = waves.unsqueeze(0)
        if waves.ndim != 2:
            raise ValueError(f"expected waves shaped (B, T), got {tuple(waves.shape)}")
        batch, max_len = waves.shape
        if lengths is None:
            lengths = torch.full((batch,), max_len, dtype=torch.long, device=waves.device)
        else:
            lengths = lengths.to(device=waves.device, dtype=torch.long)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be shaped ({batch},), got {tuple(lengths.shape)}")
        if not waves.is_meta:  # meta tensors carry no values to check
            if max_len < self.MIN_SAMPLES or bool(((lengths < self.MIN_SAMPLES) | (lengths > max_len)).any()):
                raise ValueError(
                    f"every length must lie in [{self.MIN_SAMPLES}, T={max_len}] samples "
                    f"(reflect padding needs > n_fft // 2); got lengths {lengths.tolist()}"
                )

        no_autocast = (
            torch.autocast(waves.device.type, enabled=False)
            if torch.amp.is_autocast_available(waves.device.type)
            else contextlib.nullcontext()
        )
        with no_autocast:
            padded = self._reflect_pad(waves.float(), lengths)  # (B, T) -> (B, T + 512)
            mel = self.melspec(padded)  # (B, T + 512) -> (B, 80, L), L = T // 160 + 1
        logmel = mel.clamp_min(1e-10).log10().transpose(1, 2)  # (B, 80, L) -> (B, L, 80)

        # Dynamic-range floor relative to each utterance's max over its own frames, including an odd
        # last frame that is dropped below (as the extractor does).
        n_valid = lengths // self.HOP_LENGTH + 1  # (B,)
        frame_idx = torch.arange(logmel.shape[1], device=waves.device)  # (L,)
        valid = (frame_idx < n_valid.unsqueeze(1)).unsqueeze(-1)  # (B, L, 1)
        peak = logmel.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        logmel = torch.maximum(logmel, peak - self.DYNAMIC_RANGE) / 4 + 1

        # Stack pairs of frames; an odd last frame of the padded batch has no partner.
        n_stacked = logmel.shape[1] // self.STACK
        feats = logmel[:, : n_stacked * self.STACK].reshape(batch, n_stacked, self.FEATURE_DIM)  # (B, F, 160)
        feat_lengths = n_valid // self.STACK  # (B,)
        keep = torch.arange(n_stacked, device=waves.device) < feat_lengths.unsqueeze(1)  # (B, F)
        feats = feats.masked_fill(~keep.unsqueeze(-1), self.padding_value)
        return feats, feat_lengths
