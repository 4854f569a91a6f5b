"""``plcli evaluate``: metrics of a trained classifier on a labelled manifest, plus the shared metrics.

The metric functions are pure functions on numpy arrays so that the benchmark and the training
stages compute exactly the same numbers. Conventions:

- ``probs`` is ``(N, C)`` class probabilities, ``pred`` ``(N,)`` predicted class indices.
- ``y`` is ``(N,)`` true class indices; ``-1`` marks a true label outside the model's vocabulary:
  it can never be predicted, so it counts as an error wherever accuracy is computed, and as a
  false positive for the predicted class in the per-class table.
- ``mask`` is ``(N, C)`` bool, True for the classes in a row's candidate set; an all-False row has
  no candidates.
- Averages over zero rows are ``nan`` (written as ``null`` in JSON): "not measurable", not 0.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plcli.config import Config, opt
from plcli.errors import UserError

ECE_BINS = 15


# ---------------------------------------------------------------------------------------------
# Metrics (pure functions on arrays)
# ---------------------------------------------------------------------------------------------


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else math.nan


def restricted_predictions(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) argmax over each row's candidates; rows without candidates take the plain argmax."""
    probs, mask = np.asarray(probs), np.asarray(mask, dtype=bool)
    if probs.shape != mask.shape:
        raise ValueError(f"probs {probs.shape} and mask {mask.shape} must have the same shape")
    allowed = mask | ~mask.any(axis=1, keepdims=True)
    return np.where(allowed, probs, -np.inf).argmax(axis=1)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of rows with ``pred == y`` (a ``-1`` truth is never matched)."""
    pred, y = np.asarray(pred), np.asarray(y)
    return _mean(pred == y)


def within_candidate_accuracy(probs: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Accuracy of the candidate-restricted argmax, over the rows that have candidates."""
    mask = np.asarray(mask, dtype=bool)
    has = mask.any(axis=1)
    return accuracy(restricted_predictions(probs, mask)[has], np.asarray(y)[has])


def covering_rate(pred: np.ndarray, mask: np.ndarray) -> float:
    """Share of rows with candidates whose (unrestricted) prediction lies in their candidate set."""
    pred, mask = np.asarray(pred), np.asarray(mask, dtype=bool)
    has = mask.any(axis=1)
    return _mean(mask[np.flatnonzero(has), pred[has]])


def confusion_matrix(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class; ``y == -1`` rows are left out."""
    pred, y = np.asarray(pred), np.asarray(y)
    keep = y >= 0
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y[keep], pred[keep]), 1)
    return cm


def per_class_metrics(pred: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1, support (true rows) and predicted count, each (C,).

    Precision is ``nan`` for a class never predicted, recall ``nan`` for a class with no support;
    F1 is 0 when either is 0 or undefined while the other side has rows (a missed or spurious
    class), and ``nan`` only when the class neither occurs nor is predicted.
    """
    pred, y = np.asarray(pred), np.asarray(y)
    tp = np.bincount(pred[pred == y], minlength=num_classes)[:num_classes].astype(np.float64)
    predicted = np.bincount(pred, minlength=num_classes)[:num_classes].astype(np.float64)
    support = np.bincount(y[y >= 0], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(predicted + support > 0, 2 * tp / (predicted + support), np.nan)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
    }


def macro_f1(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes that occur in ``y`` or in ``pred`` (scikit-learn's default labels)."""
    f1 = per_class_metrics(pred, y, num_classes)["f1"]
    f1 = f1[~np.isnan(f1)]
    return _mean(f1)


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width confidence bins ``(k/n, (k+1)/n]`` (bin 0 also takes 0): counts, mean confidence, accuracy.

    Empty bins have ``nan`` mean confidence and accuracy.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        acc = np.bincount(idx, weights=corr, minlength=n_bins) / counts
    return counts, mean_conf, acc


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): sum over bins of ``|bin| / N * |accuracy(bin) - confidence(bin)|``."""
    counts, mean_conf, acc = calibration_bins(confidence, correct, n_bins)
    n = counts.sum()
    if n == 0:
        return math.nan
    used = counts > 0
    return float(np.sum(counts[used] / n * np.abs(acc[used] - mean_conf[used])))


def classification_metrics(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None, n_bins: int = ECE_BINS
) -> dict:
    """Every summary metric of ``plcli evaluate`` on arrays; ``y == -2`` marks rows without a truth.

    Accuracy, macro-F1 and ECE use the rows with a truth; within-candidate accuracy the rows with a
    truth and candidates; the covering rate every row with candidates (it needs no truth).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n, c = probs.shape
    y = np.asarray(y, dtype=np.int64)
    mask = np.zeros((n, c), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    lab = y != -2
    has = mask.any(axis=1)
    yl, pl = y[lab], pred[lab]
    return {
        "rows": int(n),
        "labelled_rows": int(lab.sum()),
        "candidate_rows": int(has.sum()),
        "labelled_candidate_rows": int((lab & has).sum()),
        "unknown_labels": int((yl == -1).sum()),
        "accuracy": accuracy(pl, yl),
        "accuracy_within_candidates": within_candidate_accuracy(probs[lab], yl, mask[lab]),
        "macro_f1": macro_f1(pl, yl, c),
        "covering_rate": covering_rate(pred, mask),
        "ece": expected_calibration_error(conf[lab], pl == yl, n_bins),
        "ece_bins": n_bins,
        "mean_candidates": _mean(mask[has].sum(axis=1)),
        "chance": 1.0 / c,
    }


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@dataclass
class EvaluateConfig(Config):
    """``plcli evaluate`` options."""

    manifests: list[str] = opt(factory=list, help="manifests to evaluate on (JSONL or CSV)")
    model: str = opt("", "run directory with a classifier (finetune or distill)")
    truth: str | None = opt(None, "JSONL or CSV of id,label; overrides the manifest's labels")
    json_out: str | None = opt(None, "write the metrics as JSON here")
    report_dir: str | None = opt(None, "folder for confusion_matrix.png, reliability.png and per_class.csv")
    batch_size: int = opt(1024, "inference batch size", min=1)
    cache_dir: str | None = opt(None, "feature cache folder (default: $PLCLI_CACHE or ~/.cache/plcli)")
    skip_invalid: bool = opt(False, "drop invalid manifest rows instead of stopping")
    rejects: str | None = opt(None, "where --skip-invalid writes rejected rows")
    bins: int = opt(ECE_BINS, "confidence bins of the calibration error and reliability diagram", min=2)

    def check(self) -> None:
        if not self.manifests:
            raise UserError("no manifest given")
        if not self.model:
            raise UserError("--model is required")


def run(cfg: EvaluateConfig, log=print, console=None) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.manifests``; prints tables, writes JSON/plots; returns the metrics."""
    from plcli.data.datasets import candidate_matrix
    from plcli.data.manifest import read_truth
    from plcli.predict import infer, load_predictor
    from plcli.training import jsonable

    model, vocab, features, stage = load_predictor(cfg.model)
    rows = _load_rows(cfg, vocab, log)
    truth = {r.id: r.label for r in rows if r.label is not None}
    if cfg.truth:
        from_file = read_truth(cfg.truth)
        ids = {r.id for r in rows}
        missing = len(set(from_file) - ids)
        if missing:
            log(f"warning: {missing} id(s) of the truth file are not in the manifest")
        disagree = sum(
            1
            for k, v in from_file.items()
            if k in truth and vocab.normalizer(truth[k]) != vocab.normalizer(v)
        )
        if disagree:
            log(f"warning: the truth file overrides {disagree} manifest label(s) that differ from it")
        truth.update({k: v for k, v in from_file.items() if k in ids})
    y = np.full(len(rows), -2, dtype=np.int64)  # -2 no truth, -1 truth outside the vocabulary
    for i, r in enumerate(rows):
        if r.id in truth:
            j = vocab.index(truth[r.id])
            y[i] = -1 if j is None else j
    if not (y != -2).any():
        log(
            "warning: no row has a label (give --truth or label the manifest): only the covering rate is measured"
        )

    probs, timing = infer(model, features, [r.audio for r in rows], cfg.cache_dir, cfg.batch_size, log=log)
    mask = candidate_matrix(rows, vocab)
    metrics = {
        "model": str(cfg.model),
        "stage": stage,
        "classes": len(vocab),
        **classification_metrics(probs, y, mask, cfg.bins),
        **timing,
    }
    lab = y != -2
    pred = probs.argmax(axis=1)
    pc = per_class_metrics(pred[lab], y[lab], len(vocab))
    metrics["per_class"] = [
        {
            "label": vocab.display[j],
            "precision": pc["precision"][j],
            "recall": pc["recall"][j],
            "f1": pc["f1"][j],
            "support": int(pc["support"][j]),
            "predicted": int(pc["predicted"][j]),
        }
        for j in range(len(vocab))
        if pc["support"][j] or pc["predicted"][j]
    ]
    metrics = jsonable(metrics)
    if cfg.report_dir and lab.any():
        paths = write_report(
            Path(cfg.report_dir), probs[lab], y[lab], vocab.display, cfg.bins, metrics["per_class"]
        )
        metrics["report_files"] = [str(p) for p in paths]
    if cfg.json_out:
        from plcli.io import atomic_write_json

        atomic_write_json(cfg.json_out, metrics)
    print_report(metrics, console)
    return metrics


def _load_rows(cfg: EvaluateConfig, vocab, log):
    from plcli.data.validate import load_rows

    rejects = cfg.rejects
    if cfg.skip_invalid and rejects is None:
        base = Path(cfg.json_out) if cfg.json_out else Path(cfg.manifests[0])
        rejects = str(base.with_name(base.stem + ".rejects.jsonl"))
    return load_rows(cfg.manifests, vocab.normalizer, cfg.skip_invalid, rejects, log=log).rows


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_report(metrics: dict, console=None, max_classes: int = 40) -> None:
    """The summary and per-class tables of ``metrics`` (as returned by ``run``) with rich."""
    from rich.table import Table

    if console is None:
        from plcli.console import console
    t = Table(title=f"evaluation of {metrics.get('model', 'the model')}", show_header=False)
    for k, name in (
        ("rows", "rows"),
        ("labelled_rows", "labelled rows"),
        ("candidate_rows", "rows with candidates"),
        ("accuracy", "accuracy (all classes)"),
        ("accuracy_within_candidates", "accuracy within candidates"),
        ("macro_f1", "macro-F1"),
        ("covering_rate", "covering rate"),
        ("ece", f"expected calibration error ({metrics.get('ece_bins', ECE_BINS)} bins)"),
        ("chance", "chance (1 / classes)"),
        ("unknown_labels", "labels outside the vocabulary"),
        ("clips_per_second", "inference clips/s (model)"),
    ):
        if k in metrics:
            v = metrics[k]
            t.add_row(name, f"{v:.0f}" if k == "clips_per_second" and v is not None else _fmt(v))
    console.print(t)
    per_class = metrics.get("per_class") or []
    if per_class:
        shown = sorted(per_class, key=lambda r: (-r["support"], r["label"]))[:max_classes]
        pt = Table(
            title="per class"
            + (f" (top {max_classes} by support; all in the JSON)" if len(per_class) > max_classes else "")
        )
        for col in ("label", "precision", "recall", "F1", "support"):
            pt.add_column(col, justify="left" if col == "label" else "right")
        for r in shown:
            pt.add_row(r["label"], _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), str(r["support"]))
        console.print(pt)


def write_report(
    folder: Path, probs: np.ndarray, y: np.ndarray, labels: list[str], n_bins: int, per_class: list[dict]
) -> list[Path]:
    """Confusion-matrix and reliability-diagram PNGs plus ``per_class.csv`` in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plcli.io import atomic_open

    folder.mkdir(parents=True, exist_ok=True)
    c = len(labels)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(pred, y, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(axis=1, keepdims=True)  # row-normalised: the diagonal is each class's recall
    side = min(20.0, 4.0 + 0.25 * c)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if c <= 60:
        short = [s if len(s) <= 24 else s[:23] + "…" for s in labels]
        ax.set_xticks(range(c), short, rotation=90, fontsize=7)
        ax.set_yticks(range(c), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({len(y)} rows, accuracy {accuracy(pred, y):.3f})")
    fig.tight_layout()
    cm_path = folder / "confusion_matrix.png"
    with atomic_open(cm_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)

    conf = probs.max(axis=1)
    counts, mean_conf, acc = calibration_bins(conf, pred == y, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1], np.nan_to_num(acc), width=1.0 / n_bins, align="edge", edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability (ECE {expected_calibration_error(conf, pred == y, n_bins):.3f})")
    ax.legend(loc="upper left")
    ax2.bar(edges[:-1], counts, width=1.0 / n_bins, align="edge", edgecolor="k", color="gray")
    ax2.set_xlabel("confidence (top-1 probability)")
    ax2.set_ylabel("rows")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    rel_path = folder / "reliability.png"
    with atomic_open(rel_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)

    csv_path = folder / "per_class.csv"
    with atomic_open(csv_path, "w") as f:
        w = csv.writer(f)
        w.writerow(["label", "precision", "recall", "f1", "support", "predicted"])
        for r in per_class:
            w.writerow(
                [
                    r["label"],
                    *("" if r[k] is None else f"{r[k]:.6f}" for k in ("precision", "recall", "f1")),
                    r["support"],
                    r["predicted"],
                ]
            )
    return [cm_path, rel_path, csv_path]
