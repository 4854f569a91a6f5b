"""A CTC head: token posteriors per frame, from an encoder's frame sequence or from the log-mel.

The closed-set head sees one pooled vector per recording and can only name messages it was
trained on. The CTC head sees the frames before pooling and emits a distribution over tokens
(phonemes or characters, ``plcli.text``) per frame, so any candidate text can be scored by its
CTC likelihood -- including messages never heard in training.

Frame rates: with the default 20 ms hop a 3-s clip has 151 frames. The TC-ResNet stem keeps that
rate, each stage halves it; ``tap`` chooses where the head reads (0: after the stem, 20 ms;
1: after the first stage, 40 ms -- a phoneme lasts ~80 ms, so 40 ms leaves room for CTC's blanks).
"""

from __future__ import annotations

import torch
from torch import nn

from plcli.models.encoders import ResidualBlock, TCResNet


def encoder_frames(encoder: nn.Module, x: torch.Tensor, tap: int = 1) -> torch.Tensor:
    """(B, n_mels, T) log-mel -> (B, C, T') frames of a TC-ResNet after the stem and ``tap`` of
    its residual stages (``tap`` counts stages, not blocks)."""
    if not isinstance(encoder, TCResNet):
        raise ValueError(f"frames are read from a TCResNet encoder, got {type(encoder).__name__}")
    blocks = list(encoder.blocks)
    per_stage = len(blocks) // 3
    if not 0 <= tap <= 3:
        raise ValueError(f"tap must be 0-3 (stages after the stem), got {tap}")
    h = encoder.stem(encoder.norm(x))
    for b in blocks[: tap * per_stage]:
        h = b(h)
    return h


def frames_channels(encoder: nn.Module, tap: int = 1) -> int:
    """Channels of ``encoder_frames(encoder, x, tap)``."""
    if tap == 0:
        return encoder.stem[0].out_channels
    return list(encoder.blocks)[tap * (len(encoder.blocks) // 3) - 1].conv2.out_channels


class CTCHead(nn.Module):
    """(B, C, T) frames -> (T, B, V) log-probabilities over ``vocab_size`` tokens (blank = 0).

    ``layers`` residual temporal convolutions of ``hidden`` channels (kernel ``kernel_size``) widen
    the receptive field to several phonemes, then a 1x1 convolution gives the token logits.

    Args:
        in_channels: channels of the frames it reads.
        vocab_size: tokens including the blank (``Tokenizer.size``).
        hidden: channels of the convolutions.
        layers: residual blocks.
        kernel_size: temporal kernel (odd).
        dropout: dropout before the output layer.
    """

    def __init__(self, in_channels: int, vocab_size: int, hidden: int = 96, layers: int = 3,
                 kernel_size: int = 9, dropout: float = 0.1):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("vocab_size", vocab_size), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must count the blank and at least one token, got {vocab_size}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(f"layers must be a non-negative int, got {layers!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.kwargs = dict(in_channels=in_channels, vocab_size=vocab_size, hidden=hidden, layers=layers,
                           kernel_size=kernel_size, dropout=dropout)
        self.proj = nn.Sequential(nn.Conv1d(in_channels, hidden, 1, bias=False), nn.BatchNorm1d(hidden),
                                  nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, hidden, kernel_size, 1) for _ in range(layers)])
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Conv1d(hidden, vocab_size, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 3:
            raise ValueError(f"expected (B, C, T) frames, got shape {tuple(frames.shape)}")
        logits = self.out(self.blocks(self.proj(frames)))  # (B, V, T)
        return logits.permute(2, 0, 1).log_softmax(-1)  # (T, B, V)


def greedy_decode(log_probs: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of (T, B, V) log-probabilities: argmax per frame, merge repeats, drop
    blanks. For inspection; candidates are scored by their full CTC likelihood instead."""
    best = log_probs.argmax(-1).T.tolist()  # (B, T)
    out = []
    for seq in best:
        toks, prev = [], None
        for t in seq:
            if t != prev and t != blank:
                toks.append(t)
            prev = t
        out.append(toks)
    return out
