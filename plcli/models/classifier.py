"""The classifier every stage that predicts produces, and its Lightning-free file format.

``Classifier`` = encoder -> (first ``from_layer`` layers of the SimCLRv2 projection head) -> MLP
head -> logits over the label vocabulary, and optionally a CTC head on the encoder's frames
(``ctc=...``, see ``plcli.models.ctc``) that scores any text, also one never seen in training.
``model.pt`` in a finetune or distill run directory holds its constructor arguments (primitives,
the CTC tokenizer's inventory included), weights, label vocabulary and feature parameters, so
``predict``/``evaluate``/``export`` need neither Lightning nor the training config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plcli.config import FeatureConfig
from plcli.data.labels import Vocabulary
from plcli.errors import UserError
from plcli.models.encoders import build_encoder
from plcli.models.heads import MLPHead, ProjectionHead

MODEL_FORMAT = 1


class Classifier(nn.Module):
    """(B, n_mels, T) log-mel -> (B, num_classes) logits; with ``ctc`` also (T', B, V) CTC log-probabilities.

    ``ctc``: ``None``, or the CTC head's settings as primitives: ``tokenizer`` (``Tokenizer.to_dict()``),
    ``tap`` (encoder stage it reads, ``encoder_frames``) and ``CTCHead``'s ``hidden``, ``layers``,
    ``kernel_size``, ``dropout``.
    """

    def __init__(self, encoder: str, n_mels: int, num_classes: int, from_layer: int = 0,
                 proj_hidden_dim: int = 256, proj_dim: int = 128, proj_layers: int = 3,
                 head_hidden_dim: int = 256, head_layers: int = 2,
                 dropout: float = 0.1, ctc: dict | None = None, input_norm: str = "utterance"):
        super().__init__()
        self.kwargs = dict(encoder=encoder, n_mels=n_mels, num_classes=num_classes, from_layer=from_layer,
                           proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, proj_layers=proj_layers,
                           head_hidden_dim=head_hidden_dim, head_layers=head_layers, dropout=dropout,
                           input_norm=input_norm)
        if ctc is not None:
            self.kwargs["ctc"] = ctc
        self.encoder = build_encoder(encoder, n_mels, input_norm=input_norm)
        self.from_layer = from_layer
        if from_layer > 0:
            if from_layer > proj_layers:
                raise ValueError(f"from_layer={from_layer} exceeds proj_layers={proj_layers}")
            self.projector = ProjectionHead(self.encoder.embed_dim, proj_hidden_dim, proj_dim, proj_layers)
            in_dim = self.projector.layer_dim(from_layer)
        else:
            self.projector = None
            in_dim = self.encoder.embed_dim
        self.embed_dim = in_dim
        self.head = MLPHead(in_dim, num_classes, head_hidden_dim, head_layers, dropout)
        self.ctc_head, self.tokenizer, self.tap = None, None, 0
        if ctc is not None:
            from plcli.models.ctc import CTCHead, frames_channels
            from plcli.text import Tokenizer

            unknown = set(ctc) - {"tokenizer", "tap", "hidden", "layers", "kernel_size", "dropout"}
            if unknown or "tokenizer" not in ctc:
                raise ValueError(f"ctc needs 'tokenizer' and takes tap/hidden/layers/kernel_size/dropout; "
                                 f"got {sorted(ctc)}")
            self.tokenizer = Tokenizer.from_dict(ctc["tokenizer"])
            self.tap = int(ctc.get("tap", 1))
            head_args = {k: ctc[k] for k in ("hidden", "layers", "kernel_size", "dropout") if k in ctc}
            self.ctc_head = CTCHead(frames_channels(self.encoder, self.tap), self.tokenizer.size, **head_args,
                                    stride=2 if self.tap == -1 else 1)

    @property
    def has_ctc(self) -> bool:
        return self.ctc_head is not None

    def forward_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, num_classes) logits and the (B, C, T') frames the CTC head reads, from one encoder pass
        (training runs the CTC head on a subset of the rows: it costs more than the small encoder)."""
        from plcli.models.ctc import encoder_pass

        if self.ctc_head is None:
            raise ValueError("this classifier has no CTC head")
        h, frames = encoder_pass(self.encoder, x, self.tap)
        if self.projector is not None:
            h = self.projector(h, upto=self.from_layer)
        return self.head(h), frames

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, num_classes) logits and (T', B, V) CTC log-probabilities from one encoder pass."""
        logits, frames = self.forward_frames(x)
        return logits, self.ctc_head(frames)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) -> (B, embed_dim): the input of the head."""
        h = self.encoder(x)
        if self.projector is not None:
            h = self.projector(h, upto=self.from_layer)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class WaveClassifier(nn.Module):
    """Waveform in, class probabilities out: log-mel front end + classifier + softmax (for export).

    Input: (B, samples) or (samples,) mono float waveform at the model's sample rate, any length
    (the encoder pools over time); output (B, num_classes) probabilities.
    """

    def __init__(self, classifier: Classifier, features: FeatureConfig):
        super().__init__()
        from plcli.data.features import LogMel

        self.frontend = LogMel.from_config(features)
        self.classifier = classifier

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        return torch.softmax(self.classifier(self.frontend(wave)), dim=-1)


def save_model(path: str | Path, model: Classifier, vocab: Vocabulary, features: FeatureConfig, stage: str,
               extra: dict | None = None) -> None:
    """Write ``model.pt`` atomically."""
    from plcli.io import atomic_torch_save

    payload = {
        "format": MODEL_FORMAT,
        "stage": stage,
        "kwargs": dict(model.kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": vocab.to_dict(),
        "features": features.to_dict(),
        "extra": extra or {},
    }
    atomic_torch_save(payload, path)


def load_model(run_dir: str | Path,
               map_location: str = "cpu") -> tuple[Classifier, Vocabulary, FeatureConfig]:
    """Load the classifier of a finetune or distill run directory (or a ``model.pt`` path), in eval mode."""
    from plcli.config import LabelConfig
    from plcli.data.labels import LabelNormalizer

    p = Path(run_dir)
    if p.is_dir():
        p = p / "model.pt"
    if not p.exists():
        raise UserError(f"{run_dir}: no model.pt; --model takes a finetune or distill run directory")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise UserError(f"{p}: unreadable model file ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UserError(f"{p}: model from an incompatible plcli version")
    model = Classifier(**payload["kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    model.extra = dict(payload.get("extra") or {})  # e.g. the combined ranking's settings
    vd = payload["vocab"]
    vocab = Vocabulary([x["key"] for x in vd["labels"]], [x["text"] for x in vd["labels"]],
                       [x.get("count", 0) for x in vd["labels"]],
                       LabelNormalizer(LabelConfig.from_dict(vd.get("normalization", {}))))
    return model, vocab, FeatureConfig.from_dict(payload["features"])
