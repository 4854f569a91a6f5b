"""Heads on top of an encoder: the SimCLR projection head and the classifier MLP."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLRv2 projection head (Chen et al. 2020b, "Big Self-Supervised Models are Strong
    Semi-Supervised Learners").

    ``num_layers`` linear layers: the first ``num_layers - 1`` are Linear-BN-ReLU with
    ``hidden_dim`` outputs, the last is Linear-BN with ``out_dim`` outputs, no bias, no BN shift
    and no ReLU (as in SimCLRv2). Layer 0 is the head's input (the encoder output); layer ``i`` is
    the output of the i-th linear layer. SimCLRv2 fine-tunes from the middle of the head (layer 1
    of a 3-layer head) rather than from the encoder output: ``forward(x, upto=1)``.

    Args:
        in_dim: encoder embedding size.
        hidden_dim: width of the hidden layers.
        out_dim: size of the output used by the contrastive loss.
        num_layers: number of linear layers (>= 1).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        for k, v in (
            ("in_dim", in_dim),
            ("hidden_dim", hidden_dim),
            ("out_dim", out_dim),
            ("num_layers", num_layers),
        ):
            if v < 1:
                raise ValueError(f"{k} must be >= 1, got {v}")
        self.in_dim, self.hidden_dim, self.out_dim, self.num_layers = in_dim, hidden_dim, out_dim, num_layers
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            layers.append(
                nn.Sequential(nn.Linear(d, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True))
            )
            d = hidden_dim
        # last layer: BN without shift (SimCLRv2's center=False), no ReLU
        layers.append(nn.Sequential(nn.Linear(d, out_dim, bias=False), _ScaleOnlyBatchNorm(out_dim)))
        self.layers = nn.ModuleList(layers)

    def layer_dim(self, i: int) -> int:
        """Feature size after layer ``i`` (0 = input)."""
        if not 0 <= i <= self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}], got {i}")
        if i == 0:
            return self.in_dim
        return self.out_dim if i == self.num_layers else self.hidden_dim

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """(B, in_dim) -> (B, layer_dim(upto)); ``upto=None`` runs the whole head."""
        upto = self.num_layers if upto is None else upto
        if not 0 <= upto <= self.num_layers:
            raise ValueError(f"upto must be in [0, {self.num_layers}], got {upto}")
        for layer in self.layers[:upto]:
            x = layer(x)
        return x

    def hiddens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every layer, ``[input, layer 1, ..., layer num_layers]``."""
        out = [x]
        for layer in self.layers:
            out.append(layer(out[-1]))
        return out


class _ScaleOnlyBatchNorm(nn.Module):
    """BatchNorm1d with a learned scale but no learned shift."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.weight


class MLPHead(nn.Module):
    """Classifier MLP: ``num_layers - 1`` hidden Linear-ReLU-Dropout layers, then Linear to logits.

    ``num_layers=1`` is dropout followed by a linear classifier (a linear probe).

    Args:
        in_dim: input feature size.
        num_classes: number of output logits.
        hidden_dim: width of the hidden layers.
        num_layers: number of linear layers (>= 1).
        dropout: dropout probability after each hidden layer (before the only layer of a one-layer head).
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden_dim: int = 256, num_layers: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        for k, v in (
            ("in_dim", in_dim),
            ("num_classes", num_classes),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
        ):
            if v < 1:
                raise ValueError(f"{k} must be >= 1, got {v}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.num_classes = in_dim, num_classes
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(d, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = hidden_dim
        if num_layers == 1:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, num_classes) logits."""
        return self.net(x)
