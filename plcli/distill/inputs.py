"""What a distillation reads: the teacher (and what the student inherits from its run) and the rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plcli.asr_prior import resolve as resolve_prior
from plcli.config import (
    FeatureConfig,
    LabelConfig,
)
from plcli.data.augment import AugmentConfig
from plcli.data.datasets import (
    candidate_matrix,
    holdout_ids,
    label_vector,
    load_training_rows,
    truth_vector,
)
from plcli.data.labels import NO_TRUTH, Vocabulary
from plcli.distill.config import STAGE, DistillConfig
from plcli.errors import UserError
from plcli.inference import load_predictor
from plcli.models.classifier import Classifier
from plcli.runs import (
    UpstreamRun,
    read_upstream,
)


@dataclass
class Teacher:
    """The teacher's classifier and what the student inherits from its run."""

    model: Classifier
    vocab: Vocabulary
    features: FeatureConfig
    stage: str
    file: Path  # the model.pt whose content keys the target cache
    run: UpstreamRun | None  # its run directory (None for a bare model.pt)


def open_teacher(path: str) -> Teacher:
    model, vocab, features, stage = load_predictor(path)
    p = Path(path)
    run = read_upstream(p, "--teacher") if (p / "config.yaml").is_file() else None
    return Teacher(model, vocab, features, stage, p / "model.pt" if p.is_dir() else p, run)


def inherit(cfg: DistillConfig, teacher: Teacher, log) -> tuple[float, int, int]:
    """Take label normalisation, the held-out split and (optionally) the augmentations from the teacher.

    A distilled teacher's own split (its metrics' ``held_out``) wins over its trainer seed.
    Returns (held-out fraction, split seed, view seed).
    """
    run = teacher.run or UpstreamRun(teacher.file, None, {})
    cfg.data.labels = LabelConfig.from_dict(teacher.vocab.normalizer.cfg.to_dict())
    fraction = float(run.get("data.val_fraction", cfg.data.val_fraction))
    split_seed = int(run.get("trainer.seed", cfg.trainer.seed))
    held_out = run.metrics().get("held_out") if run.stage == STAGE else None
    if held_out:
        # a distilled teacher held out its own teacher's rows: keep holding out those
        fraction = float(held_out.get("fraction", fraction))
        split_seed = int(held_out.get("seed", split_seed))
    if fraction != cfg.data.val_fraction:
        log(f"holding out the teacher's validation rows (val_fraction {fraction}, seed {split_seed})")
    cfg.data.val_fraction = fraction
    view_seed = cfg.view_seed if cfg.view_seed is not None else cfg.trainer.seed
    if cfg.inherit_augment and "augment" in run.config:
        cfg.augment = run.section(AugmentConfig, "augment")
        views_from = run if run.stage == STAGE else _pretrain_run(run)
        if views_from is not None:
            cfg.views = int(views_from.get("views", cfg.views))
            if cfg.view_seed is None:
                view_seed = int(
                    views_from.get("view_seed" if run.stage == STAGE else "trainer.seed", view_seed)
                )
    cfg.view_seed = view_seed
    if cfg.asr_prior == "auto":  # the teacher's setting; a teacher from before the option had none
        cfg.asr_prior = resolve_prior(str(run.get("asr_prior", "none") or "none"))
        if cfg.asr_accuracy is None and run.get("asr_accuracy") is not None:
            cfg.asr_accuracy = float(run.get("asr_accuracy"))
    cfg.asr_model = cfg.asr_model or str(run.get("asr_model", "base") or "base")
    cfg.asr_window = cfg.asr_window or float(run.get("asr_window", 30.0) or 30.0)
    cfg.validate()
    return fraction, split_seed, view_seed


def pretrained_dir(run: UpstreamRun | None) -> str | None:
    """The pretrain run a finetune teacher's encoder came from, as its config names it (None for
    ``--pretrained none``, or for a teacher that is not a finetune run)."""
    pre_dir = run.get("pretrained") if run is not None and run.stage == "finetune" else None
    return None if not pre_dir or str(pre_dir).lower() == "none" else str(pre_dir)


def _pretrain_run(finetune_run: UpstreamRun) -> UpstreamRun | None:
    """The pretrain run a finetune teacher was built on, when it is still there."""
    pre_dir = pretrained_dir(finetune_run)
    if pre_dir is None or not (Path(pre_dir) / "config.yaml").is_file():
        return None
    pre = read_upstream(pre_dir, "--pretrained")
    return pre if pre.stage == "pretrain" else None


@dataclass
class Rows:
    """The manifest rows in the teacher's vocabulary, and who trains and who validates."""

    rows: list
    mask: np.ndarray  # (N, C) bool candidates known to the teacher
    y: np.ndarray  # (N,) exact label, -1 none or unknown
    unknown_label: np.ndarray  # (N,) bool: an exact label the teacher does not know (left out)
    pool: np.ndarray  # rows that may train the student
    val_idx: np.ndarray  # held-out exact rows
    truth: np.ndarray  # (N,) --truth label: -2 none, -1 outside the vocabulary
    untyped: np.ndarray | None = None  # (N,) the teacher's belief that a row's set misses its truth


def load_rows(cfg: DistillConfig, vocab: Vocabulary, fraction: float, split_seed: int, log) -> Rows:
    from plcli.data.manifest import read_truth

    rows = load_training_rows(cfg.data, Path(cfg.out), log=log).rows
    mask, y = candidate_matrix(rows, vocab), label_vector(rows, vocab)
    unknown_label = np.array([r.label is not None for r in rows]) & (y < 0)
    if unknown_label.any():
        log(
            f"left out {int(unknown_label.sum())} exact row(s) whose label is not in the teacher's vocabulary"
        )
    held = holdout_ids([r.id for r in rows if r.label is not None], fraction, split_seed)
    is_held = np.array([r.id in held for r in rows])
    pool = np.flatnonzero(~is_held & ~unknown_label)
    if len(pool) == 0:
        raise UserError("no training rows left after the held-out split")
    truth = truth_vector(rows, read_truth(cfg.truth), vocab) if cfg.truth else np.full(len(rows), NO_TRUTH)
    return Rows(rows, mask, y, unknown_label, pool, np.flatnonzero(is_held & (y >= 0)), truth)
