"""Audio encoders: (B, n_mels, T) log-mel -> (B, embed_dim) utterance embedding.

Every encoder normalises its input itself (per-utterance mean/variance over all bins and frames,
then a per-bin BatchNorm), so a recording's gain, which shifts a log-mel by a constant, changes
nothing. Every encoder ends in a global pooling over time that accepts any number of frames and a
Linear-BN-ReLU layer to ``embed_dim``. Constructor arguments are plain ints/floats/strings so that
Lightning can store them in ``hparams``.

``tcresnet*`` are 1D temporal CNNs (Choi et al. 2019, "Temporal Convolution for Real-time Keyword
Spotting on Mobile Devices"): mel bins are channels and the convolutions run over time only, which
is far cheaper on a CPU than a 2D CNN (in earlier measurements here, 450 against 11 training views/s
for a 66k-parameter 1D and a 287k-parameter plain 2D CNN). ``resnet2d`` is a 2D residual CNN
with a stride-2 stem, the larger option for a GPU.

Pooling (``pool``):

- ``"asp"`` (default) attentive statistics pooling (Okabe et al. 2018): a small attention network
  weighs the frames, then the weighted mean and standard deviation are concatenated. The weights
  let the model ignore the padding and silence around a short phrase, which a plain mean cannot.
- ``"meanmax"``: mean and max over time, concatenated. No parameters; max pooling also ignores
  silence but keeps only the single strongest frame per channel.
- ``"mean"``: plain average.

Presets (``ENCODERS``) and SimCLR training throughput (encoder + 3-layer projection head,
forward/backward + AdamW, B=256, (64, 151) inputs, 2 CPU threads; ``scripts/bench_models.py``).
The machine is shared: on a quiet one the numbers were

==================  ==========  =====  ===========  =====================================
name                parameters  embed  train view/s role
==================  ==========  =====  ===========  =====================================
``tcresnet``           155 k     128     ~2600      default CPU teacher (TC-ResNet14 layout)
``tcresnet-small``      50 k      96     ~3700      distillation student (3x fewer params)
``tcresnet-wide``      1.3 M     256      ~560      larger option, still trainable on CPU
``resnet2d``           0.8 M     256      ~190      2D CNN, meant for a GPU
==================  ==========  =====  ===========  =====================================

and 5-20x lower while other jobs saturated both cores. With such small channel counts a CPU
step is partly overhead-bound, so the student trains only ~1.4x faster than the teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

POOLS = ("asp", "meanmax", "mean")
INPUT_NORMS = ("utterance", "cmn", "batch", "none")
# what new runs use (docs/benchmark.md); modules default to "utterance", which
# is what models saved before the option existed were trained with
DEFAULT_INPUT_NORM = "cmn"


class InputNorm(nn.Module):
    """Per-utterance mean/variance normalisation over (F, T), then BatchNorm over mel bins.

    ``mode="utterance"`` removes gain (a constant log offset) and overall dynamic range per clip;
    ``"cmn"`` also removes each bin's mean over the clip's frames (cepstral mean normalisation in the
    log-mel domain), the long-term spectrum that the speaker's voice and the channel add to every frame;
    ``"batch"`` keeps only the BatchNorm (each bin standardised with batch statistics);
    ``"none"`` passes the input through.
    """

    def __init__(self, n_mels: int, mode: str = "utterance", eps: float = 1e-5):
        super().__init__()
        if mode not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {mode!r}")
        self.mode = mode
        self.eps = eps
        self.bn = nn.BatchNorm1d(n_mels) if mode != "none" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("utterance", "cmn"):
            # two-pass mean/variance: 10x faster on CPU than torch.std over two dims; cmn takes each
            # bin's mean over time, utterance one mean over the clip, and both the clip's variance
            x = x - x.mean(dim=2 if self.mode == "cmn" else (1, 2), keepdim=True)  # (B, F, T)
            x = x * torch.rsqrt(x.square().mean(dim=(1, 2), keepdim=True) + self.eps)
        return self.bn(x)


class TemporalPool(nn.Module):
    """(B, C, T) -> (B, out_dim) for any T >= 1; see the module docstring for the modes."""

    def __init__(self, channels: int, mode: str = "asp", attn_dim: int = 64, eps: float = 1e-5):
        super().__init__()
        if mode not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {mode!r}")
        self.mode = mode
        self.eps = eps
        self.out_dim = channels if mode == "mean" else 2 * channels
        if mode == "asp":
            # per-channel attention over frames, conditioned on the frame only (cheap variant of ECAPA)
            self.attn = nn.Sequential(
                nn.Conv1d(channels, attn_dim, 1),
                nn.Tanh(),
                nn.Conv1d(attn_dim, channels, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean":
            return x.mean(dim=-1)
        if self.mode == "meanmax":
            return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1)
        w = torch.softmax(self.attn(x), dim=-1)  # (B, C, T), sums to 1 over T
        mu = (w * x).sum(dim=-1)  # (B, C)
        var = (w * x * x).sum(dim=-1) - mu * mu
        sd = var.clamp(min=self.eps).sqrt()
        return torch.cat([mu, sd], dim=1)


class EmbedHead(nn.Module):
    """Pooled features -> Linear-BN-ReLU -> (B, embed_dim), with optional dropout before it."""

    def __init__(self, in_dim: int, embed_dim: int, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# TC-ResNet (1D convolution over time, mel bins as channels)
# ---------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Basic residual block (He et al. 2016): conv(k, stride)-BN-ReLU-conv(k)-BN plus a shortcut
    (1x1 conv + BN when the shape changes), in 1D (TC-ResNet, over time) or 2D (over F x T)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, dim: int = 1):
        super().__init__()
        conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}[dim]
        pad = kernel_size // 2
        self.conv1 = conv(cin, cout, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, kernel_size, padding=pad, bias=False)
        self.bn2 = bn(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class TCResNet(nn.Module):
    """TC-ResNet encoder (Choi et al. 2019) with input normalisation and temporal pooling.

    Layout: stem conv (k=3, ``stem_stride``) with ``width`` channels, then three stages with
    ``width * (1.5, 2, 3)`` channels (TC-ResNet8's 16-24-32-48 for ``width=16``), each of
    ``depth`` residual blocks whose first has stride 2. 151 input frames become 19 (or 10 with
    ``stem_stride=2``) before pooling.

    Args:
        n_mels: number of mel bins (input channels).
        width: stem channels; the stages scale from it.
        depth: residual blocks per stage (1 = TC-ResNet8, 2 = TC-ResNet14).
        kernel_size: temporal kernel of the residual blocks (odd).
        stem_stride: 1 or 2; 2 halves the compute at some loss of time resolution.
        embed_dim: output size.
        pool: "asp", "meanmax" or "mean".
        input_norm: "utterance", "batch" or "none" (see ``InputNorm``).
        dropout: dropout before the embedding layer.
    """

    def __init__(
        self,
        n_mels: int = 64,
        width: int = 16,
        depth: int = 1,
        kernel_size: int = 9,
        stem_stride: int = 1,
        embed_dim: int = 128,
        pool: str = "asp",
        input_norm: str = "utterance",
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_positive(n_mels=n_mels, width=width, depth=depth, embed_dim=embed_dim)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.embed_dim = embed_dim
        self.norm = InputNorm(n_mels, input_norm)
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, width, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
        )
        blocks = []
        cin = width
        for mult in (1.5, 2.0, 3.0):
            cout = int(round(width * mult))
            for i in range(depth):
                blocks.append(ResidualBlock(cin, cout, kernel_size, stride=2 if i == 0 else 1, dim=1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = TemporalPool(cin, pool)
        self.head = EmbedHead(self.pool.out_dim, embed_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        x = self.norm(x)  # (B, F, T)
        x = self.blocks(self.stem(x))  # (B, C, T / 8 or T / 16)
        return self.head(self.pool(x))  # (B, embed_dim)


# ---------------------------------------------------------------------------------------------
# 2D ResNet (time-frequency convolution)
# ---------------------------------------------------------------------------------------------


class ResNet2d(nn.Module):
    """2D residual CNN over (F, T): stride-2 stem, three stages of ``width * (1, 2, 4)`` channels.

    Each stage halves F and T; after the last, frequency is averaged out and the remaining
    (B, C, T') sequence is pooled over time like the TC-ResNet. 64 x 151 becomes 4 x 10.

    Args:
        n_mels: number of mel bins.
        width: stem and first-stage channels.
        depth: residual blocks per stage.
        embed_dim, pool, input_norm, dropout: as for ``TCResNet``.
    """

    def __init__(
        self,
        n_mels: int = 64,
        width: int = 32,
        depth: int = 1,
        embed_dim: int = 256,
        pool: str = "asp",
        input_norm: str = "utterance",
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_positive(n_mels=n_mels, width=width, depth=depth, embed_dim=embed_dim)
        self.embed_dim = embed_dim
        self.norm = InputNorm(n_mels, input_norm)
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks = []
        cin = width
        for mult in (1, 2, 4):
            cout = width * mult
            for i in range(depth):
                blocks.append(ResidualBlock(cin, cout, 3, stride=2 if i == 0 else 1, dim=2))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = TemporalPool(cin, pool)
        self.head = EmbedHead(self.pool.out_dim, embed_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        x = self.norm(x).unsqueeze(1)  # (B, 1, F, T)
        x = self.blocks(self.stem(x))  # (B, C, F / 16, T / 16)
        return self.head(self.pool(x.mean(dim=2)))  # (B, embed_dim)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def _preset(cls: type[nn.Module], **defaults) -> Callable[..., nn.Module]:
    def build(n_mels: int, **kwargs) -> nn.Module:
        return cls(n_mels=n_mels, **{**defaults, **kwargs})

    build.defaults = defaults  # type: ignore[attr-defined]
    build.__doc__ = f"{cls.__name__} with {defaults}"
    return build


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    # the CPU teacher: TC-ResNet14 layout (16-24-32-48, two blocks per stage)
    "tcresnet": _preset(TCResNet, width=16, depth=2, embed_dim=128),
    # the distillation student: TC-ResNet8 layout at 3/4 width
    "tcresnet-small": _preset(TCResNet, width=12, depth=1, embed_dim=96),
    # ~1M parameters: 3x wider TC-ResNet14
    "tcresnet-wide": _preset(TCResNet, width=48, depth=2, embed_dim=256),
    # 2D CNN for GPUs
    "resnet2d": _preset(ResNet2d, width=32, depth=2, embed_dim=256),
}


def build_encoder(name: str, n_mels: int, **kwargs) -> nn.Module:
    """Build the encoder ``name`` from ``ENCODERS``; ``kwargs`` override the preset's arguments."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name](n_mels, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _check_positive(**values: int) -> None:
    for k, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"expected a (batch, n_mels, frames) tensor, got shape {tuple(x.shape)}")
