"""Benchmark rows 1-3: the distillation student's architecture trained directly on a given label source.

- ``oracle``: cross-entropy on the true label of every training recording (the upper bound);
- ``exact``: cross-entropy on the exact-label rows alone;
- ``indicator-mse``: ``sigmoid(logits)`` regressed onto the 0/1 candidate indicator vector with
  MSE (``plcli.losses.CandidateIndicatorMSELoss``); an exact row's indicator is its one-hot label;
  prediction is the argmax, as for every other row.

All three train the same ``Classifier`` as ``plcli distill`` (its student encoder, head and
defaults are read from ``DistillConfig``) from scratch on the same cached augmented views
(``FeatureCache.views``) with the same batched spectrogram augmentations, optimiser and cosine
schedule, so the rows differ only in their labels and loss. Training length is the distill
stage's epochs over the rows that have a label, but at least ``min_steps`` optimiser steps, so
that the 1% exact-only row is not starved of updates (40 rows would give 30 steps otherwise).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from plcli.data.augment import SpecAugmentConfig, SpectrogramAugment
from plcli.data.datasets import FeatureRows, ViewRows, candidate_matrix, label_vector, truth_vector
from plcli.losses import CandidateIndicatorMSELoss
from plcli.models.classifier import Classifier
from plcli.training import adamw_cosine

SOURCES = ("oracle", "exact", "indicator-mse")


def _student_defaults(from_encoder: bool) -> dict[str, Any]:
    """The distill stage's student settings; ``from_encoder``: its small-data student, the pretrained
    encoder with a new head, whose batch is capped as ``resolve_student`` caps it."""
    from plcli.distill import SMALL_STUDENT, DistillConfig, capped_batch

    d = DistillConfig()
    batch = capped_batch(d.trainer.batch_size, d.small_data_batch) if from_encoder else d.trainer.batch_size
    return {
        "student": SMALL_STUDENT,  # from scratch; with init_encoder the encoder.pt names the architecture
        "head_hidden_dim": d.head_hidden_dim,
        "head_layers": d.head_layers,
        "dropout": d.dropout,
        "epochs": d.trainer.epochs,
        "batch_size": batch,
        "lr": d.trainer.lr,
        "weight_decay": d.trainer.weight_decay,
    }


@dataclass
class BaselineConfig:
    """Training settings of a baseline row; ``None`` fields take the distill stage's defaults."""

    student: str | None = None
    head_hidden_dim: int | None = None
    head_layers: int | None = None
    dropout: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    min_steps: int = 300
    seed: int = 0
    accelerator: str = "auto"
    # a pretrain run's encoder.pt: the student is that encoder (architecture, input normalisation and
    # weights) with a new head, as plcli's own student on small data (distill --student auto)
    init_encoder: str | None = None

    def resolved(self) -> BaselineConfig:
        defaults = _student_defaults(from_encoder=bool(self.init_encoder))
        out = BaselineConfig(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        for k, v in defaults.items():
            if getattr(out, k) is None:
                setattr(out, k, v)
        return out


def label_source(source: str, rows, vocab, truth: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Training rows and targets of a baseline.

    Returns ``index`` (M,) positions in ``rows`` that train, ``y`` (M,) class indices (-1 for the
    MSE row, which uses no hard label) and ``mask`` (M, C) bool indicator targets.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    mask = candidate_matrix(rows, vocab)
    y = label_vector(rows, vocab)
    if source == "oracle":
        if truth is None:
            raise ValueError("the oracle needs the true label of every row (truth)")
        y = truth_vector(rows, truth, vocab).clip(min=-1)
        index = np.flatnonzero(y >= 0)
    elif source == "exact":
        index = np.flatnonzero(y >= 0)
    else:
        exact = y >= 0
        mask[exact] = False
        mask[np.flatnonzero(exact), y[exact]] = True  # an exact label is a candidate set of one
        index = np.flatnonzero(mask.any(axis=1))
        y = np.full_like(y, -1)
    if len(index) == 0:
        raise ValueError(f"no training rows for the {source} baseline")
    return {"index": index, "y": y[index], "mask": mask[index]}


class SupervisedModule(L.LightningModule):
    """The student classifier with cross-entropy (``loss="ce"``) or candidate-indicator MSE."""

    def __init__(
        self,
        classifier: dict,
        loss: str = "ce",
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        spec_augment: dict | None = None,
        mel_range: list[float] | None = None,
    ):
        super().__init__()
        if loss not in ("ce", "indicator-mse"):
            raise ValueError(f"loss must be 'ce' or 'indicator-mse', got {loss!r}")
        self.save_hyperparameters()
        self.model = Classifier(**classifier)
        self.spec_aug = SpectrogramAugment(SpecAugmentConfig.from_dict(spec_augment or {}),
                                           mel_range=mel_range)
        self.mse = CandidateIndicatorMSELoss()

    def training_step(self, batch, batch_idx):
        logits = self.model(self.spec_aug(batch["x"])).float()  # (B, C)
        if self.hparams.loss == "ce":
            loss = F.cross_entropy(logits, batch["y"])
        else:
            loss = self.mse(logits, batch["mask"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=logits.shape[0])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_cosine([(self.model.parameters(), hp.lr)], hp.weight_decay,
                            self.trainer.estimated_stepping_batches)


def train_baseline(
    source: str,
    rows,
    vocab,
    views: np.ndarray,
    n_mels: int,
    cfg: BaselineConfig | None = None,
    truth: dict[str, str] | None = None,
    spec_augment: dict | None = None,
    mel_range: list[float] | None = None,
) -> tuple[Classifier, dict]:
    """Train one baseline row; returns the classifier (CPU, eval mode) and a summary.

    ``views`` is the (N, V, n_mels, frames) pack of augmented views of ``rows`` (same order);
    ``mel_range`` the features' ``[f_min, f_max]`` (for VTLP).
    """
    from plcli.distill import student_args
    from plcli.runs import Timer

    cfg = (cfg or BaselineConfig()).resolved()
    init = torch.load(cfg.init_encoder, map_location="cpu", weights_only=True) if cfg.init_encoder else None
    if init is not None:
        cfg.student = init["encoder"]
    if views.shape[0] != len(rows):
        raise ValueError(f"{views.shape[0]} view rows for {len(rows)} manifest rows")
    src = label_source(source, rows, vocab, truth)
    L.seed_everything(cfg.seed, workers=True)
    ds = ViewRows(views, index=src["index"], y=torch.from_numpy(src["y"]), mask=torch.from_numpy(src["mask"]))
    bs = min(cfg.batch_size, len(ds))
    steps_per_epoch = max(1, len(ds) // bs)
    steps = max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    loader = DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, collate_fn=FeatureRows.collate_fn)
    args = student_args(cfg, n_mels, len(vocab), **({"input_norm": init["input_norm"]} if init else {}))
    module = SupervisedModule(
        args,
        loss="indicator-mse" if source == "indicator-mse" else "ce",
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        spec_augment=spec_augment,
        mel_range=mel_range,
    )
    if init is not None:
        module.model.encoder.load_state_dict(init["state_dict"])
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t = Timer()
    trainer.fit(module, loader)
    model = module.model.cpu().eval()
    return model, {
        "source": source,
        "student": cfg.student,
        "student_init": "pretrained encoder" if init is not None else "scratch",
        "training_rows": int(len(ds)),
        "steps": int(trainer.global_step),
        "epochs": math.ceil(trainer.global_step / steps_per_epoch),
        "fit_seconds": t.seconds,
    }


def evaluate_probs(probs: np.ndarray, rows, vocab) -> dict:
    """Test metrics of (N, C) probabilities on labelled ``rows``
    (``plcli.evaluate.classification_metrics``)."""
    from plcli.data.labels import class_indices
    from plcli.metrics import classification_metrics

    y = class_indices([r.label for r in rows], vocab)  # -2 no label, -1 outside the vocabulary
    m = classification_metrics(probs, y, candidate_matrix(rows, vocab))
    return {
        k: m[k] for k in ("accuracy", "accuracy_within_candidates", "macro_f1", "labelled_rows", "chance")
    }


def evaluate_model(model: Classifier, vocab, features, rows, cache: str | None = None) -> dict:
    """Metrics of ``model`` on labelled ``rows`` through the feature cache (as ``plcli evaluate``)."""
    from plcli.inference import infer

    probs, _ = infer(model, features, [r.audio for r in rows], cache, log=lambda *_: None)
    return evaluate_probs(probs, rows, vocab)


@torch.inference_mode()
def clips_per_second(
    model: Classifier, features, waves: list[np.ndarray], threads: int = 2, batch: int = 64, repeats: int = 3
) -> float:
    """Inference throughput from fixed-length waveforms: log-mel front end + classifier, ``threads``
    CPU threads.

    The best of ``repeats`` passes (the first also warms up the kernels).
    """
    from plcli.data.features import LogMel

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        frontend = LogMel.from_config(features).eval()
        model = model.cpu().eval()
        x = torch.from_numpy(np.stack(waves).astype(np.float32))
        best = math.inf
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            for s in range(0, len(x), batch):
                model(frontend(x[s : s + batch]))
            best = min(best, time.perf_counter() - t0)
        return len(waves) / best
    finally:
        torch.set_num_threads(old)
