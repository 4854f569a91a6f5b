"""Encoders (log-mel -> embedding) and heads (projection, classifier)."""

from plcli.models.encoders import ENCODERS, ResNet2d, TCResNet, build_encoder, count_parameters
from plcli.models.heads import MLPHead, ProjectionHead

__all__ = [
    "ENCODERS",
    "MLPHead",
    "ProjectionHead",
    "ResNet2d",
    "TCResNet",
    "build_encoder",
    "count_parameters",
]
