"""A CTC head: token posteriors per frame, from an encoder's frame sequence or from the log-mel.

The closed-set head sees one pooled vector per recording and can only name messages it was
trained on. The CTC head sees the frames before pooling and emits a distribution over tokens
(phonemes or characters, ``plcli.text``) per frame, so any candidate text can be scored by its
CTC likelihood -- including messages never heard in training.

Frame rates: with the default 20 ms hop a 3-s clip has 151 frames. The TC-ResNet stem keeps that
rate, each stage halves it; ``tap`` chooses where the head reads (0: after the stem, 20 ms;
1: after the first stage, 40 ms -- a phoneme lasts ~80 ms, so 40 ms leaves room for CTC's blanks;
-1: the encoder's normalised log-mel itself, and the head's first convolution has stride 2, so it
has its own front end at 40 ms and does not share the small student's thin early channels).
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
    if not -1 <= tap <= 3:
        raise ValueError(f"tap must be -1 (the log-mel) or 0-3 (stages after the stem), got {tap}")
    if tap == -1:
        return encoder.norm(x)
    h = encoder.stem(encoder.norm(x))
    for b in blocks[: tap * per_stage]:
        h = b(h)
    return h


def encoder_pass(encoder: nn.Module, x: torch.Tensor, tap: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One TC-ResNet forward pass: the (B, embed_dim) embedding and the (B, C, T') frames at ``tap``,
    equal to ``encoder(x)`` and ``encoder_frames(encoder, x, tap)``."""
    if not isinstance(encoder, TCResNet):
        raise ValueError(f"frames are read from a TCResNet encoder, got {type(encoder).__name__}")
    if not -1 <= tap <= 3:
        raise ValueError(f"tap must be -1 (the log-mel) or 0-3 (stages after the stem), got {tap}")
    blocks = list(encoder.blocks)
    upto = tap * (len(blocks) // 3)
    xn = encoder.norm(x)
    h = encoder.stem(xn)
    frames = xn if tap == -1 else h
    for i, b in enumerate(blocks, 1):
        h = b(h)
        if i == upto:
            frames = h
    return encoder.head(encoder.pool(h)), frames


def text_targets(tokenizer, texts) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``texts``: (N, L) long padded with 1 and (N,) lengths (0 for a text without
    tokens, which no CTC path can emit, so it scores as impossible)."""
    enc = [tokenizer.encode(t) for t in texts]
    L = max([1, *map(len, enc)])
    out = torch.ones(len(enc), L, dtype=torch.long)
    lengths = torch.zeros(len(enc), dtype=torch.long)
    for i, e in enumerate(enc):
        if e:
            out[i, : len(e)] = torch.tensor(e)
            lengths[i] = len(e)
    return out, lengths


def class_candidates(mask: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) candidate mask -> (B, K) class indices and (B, K) bool validity, K the largest set.

    Rows with ``y >= 0`` (exact labels) get their label as the only candidate.
    """
    if y is not None:
        exact = y >= 0
        if bool(exact.any()):
            mask = mask.clone()
            mask[exact] = False
            mask[exact, y[exact]] = True
    k = max(1, int(mask.sum(1).max()) if mask.numel() else 1)
    valid, idx = mask.float().topk(k, dim=1)  # the True entries first
    return idx, valid.bool()


def frames_channels(encoder: nn.Module, tap: int = 1) -> int:
    """Channels of ``encoder_frames(encoder, x, tap)``."""
    if tap == -1:
        return encoder.stem[0].in_channels
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
        stride: 1, or 2 for a head reading the log-mel (its input convolution then has kernel 5
            and halves the frame rate).
    """

    def __init__(self, in_channels: int, vocab_size: int, hidden: int = 96, layers: int = 3,
                 kernel_size: int = 9, dropout: float = 0.1, stride: int = 1):
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
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.kwargs = dict(in_channels=in_channels, vocab_size=vocab_size, hidden=hidden, layers=layers,
                           kernel_size=kernel_size, dropout=dropout, stride=stride)
        k = 5 if stride == 2 else 1
        self.proj = nn.Sequential(nn.Conv1d(in_channels, hidden, k, stride=stride, padding=k // 2,
                                            bias=False),
                                  nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
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


def class_ctc_loss(log_probs: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
                   class_tokens: torch.Tensor, class_lengths: torch.Tensor,
                   weights: torch.Tensor | None = None,
                   log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) CTC loss of each row's candidate messages, given as class indices.

    ``log_probs`` (T, B, V); ``idx``/``valid`` (B, K) from ``class_candidates``; ``class_tokens``
    (C, L) and ``class_lengths`` (C,) from ``text_targets`` over the vocabulary. Without ``weights``
    the candidate set's likelihood ``-log sum_k p_CTC(c_k|x) [/ q_k]`` (``log_prior`` (C,) log q);
    with ``weights`` (B, K, zero where invalid) the weighted CTC loss. Each row is divided by its
    candidates' mean token count, as ``F.ctc_loss(reduction="mean")`` does, so the weight of the
    term does not depend on how long the messages are.
    """
    from plcli.losses import CandidateCTCLoss

    targets, lengths = class_tokens[idx], class_lengths[idx]  # (B, K, L), (B, K)
    valid = valid & (lengths > 0)
    T, B = log_probs.shape[:2]
    input_lengths = torch.full((B,), T, dtype=torch.long, device=log_probs.device)
    lp = None if log_prior is None or weights is not None else log_prior[idx]
    w = None if weights is None else weights * valid
    per_row = CandidateCTCLoss(reduction="none")(log_probs, input_lengths, targets, lengths, valid,
                                                 log_prior=lp, weights=w)
    mean_len = (lengths * valid).sum(1) / valid.sum(1).clamp_min(1)
    return per_row / mean_len.clamp_min(1)
