"""``plcli evaluate``: metrics of a trained classifier on a labelled manifest (``plcli.metrics``),
printed as tables and optionally written as JSON, plots and a per-class CSV."""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plcli.cascade import FallbackOptions
from plcli.config import opt
from plcli.errors import UserError
from plcli.metrics import (
    ECE_BINS,
    accuracy,
    calibration_bins,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    per_class_metrics,
)

# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@dataclass
class EvaluateConfig(FallbackOptions):
    """``plcli evaluate`` options."""

    manifests: list[str] = opt(factory=list, help="manifests to evaluate on (JSONL or CSV)")
    model: str = opt("", "run directory with a classifier (finetune or distill)")
    truth: str | None = opt(None, "JSONL or CSV of id,label; overrides the manifest's labels")
    json_out: str | None = opt(None, "write the metrics as JSON here")
    report_dir: str | None = opt(None, "folder for confusion_matrix.png, reliability.png and per_class.csv")
    batch_size: int = opt(
        256, "inference batch size (256 ranked fastest on 2 CPU cores, scripts/bench_ranking.py)", min=1
    )
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
    from plcli.data.datasets import candidate_matrix, truth_vector
    from plcli.inference import load_predictor
    from plcli.runs import jsonable

    model, vocab, features, stage = load_predictor(cfg.model)
    rows = _load_rows(cfg, vocab, log)
    truth = _truth(cfg, rows, vocab, log)
    y = truth_vector(rows, truth, vocab)  # -2 no truth, -1 outside the vocabulary
    if not (y != -2).any():
        log(
            "warning: no row has a label (give --truth or label the manifest): only the covering rate is "
            "measured"
        )

    from plcli.cascade import setting_for
    from plcli.config import cache_dir

    setting = setting_for(cfg.fallback, cfg.fallback_below, cfg.model, getattr(model, "extra", None),
                          cache_dir(cfg.cache_dir), cfg.asr_model, cfg.asr_window)
    ranked = bool(model.has_ctc or setting)
    probs, scores, timing = _infer(cfg, model, features, rows, ranked, log)
    mask = candidate_matrix(rows, vocab)
    metrics = {
        "model": str(cfg.model),
        "stage": stage,
        "classes": len(vocab),
        **classification_metrics(probs, y, mask, cfg.bins),
        **timing,
    }
    if ranked:
        metrics.update(
            ranked_metrics(
                rows,
                truth,
                probs,
                scores,
                vocab,
                getattr(model, "extra", None),
                setting,
                cache_dir(cfg.cache_dir),
                cfg.fallback == "whisper",
                log,
            )
        )
    metrics.update(missing_truth_metrics(probs, y, mask, rows, truth, vocab))
    lab = y != -2
    metrics["per_class"] = _per_class(probs.argmax(axis=1)[lab], y[lab], vocab)
    metrics = jsonable(metrics)
    _write_files(cfg, metrics, probs[lab], y[lab], vocab)
    print_report(metrics, console)
    return metrics


def _infer(cfg: EvaluateConfig, model, features, rows, ranked: bool, log):
    """(N, C) probabilities, the ranking's scores of the candidates (None unless ``ranked``: a CTC
    head or a recogniser to fall back on) and the timings."""
    if ranked:
        from plcli.inference import infer_ranked

        return infer_ranked(model, features, [r.audio for r in rows], [r.candidates for r in rows],
                            cfg.cache_dir, cfg.batch_size, log=log)
    from plcli.inference import infer

    probs, timing = infer(model, features, [r.audio for r in rows], cfg.cache_dir, cfg.batch_size, log=log)
    return probs, None, timing


def _write_files(cfg: EvaluateConfig, metrics: dict, probs: np.ndarray, y: np.ndarray, vocab) -> None:
    """--report-dir's files from the labelled rows' ``probs`` and ``y`` (listed in
    ``metrics["report_files"]``), then --json-out's JSON of ``metrics``."""
    if cfg.report_dir and len(y):
        paths = write_report(Path(cfg.report_dir), probs, y, vocab.display, cfg.bins, metrics["per_class"])
        metrics["report_files"] = [str(p) for p in paths]
    if cfg.json_out:
        from plcli.io import atomic_write_json

        atomic_write_json(cfg.json_out, metrics)


def missing_truth_metrics(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, rows, truth: dict[str, str], vocab
) -> dict:
    """Where some labelled rows' candidates miss their truth (nobody typed the note): how many, the
    all-class accuracy on the rows whose candidates hold it, and the AUROC of ``none_of_these``
    (``plcli.metrics``) for telling the two apart. Empty where every set holds its truth."""
    from plcli.metrics import accuracy, auroc, none_of_these
    from plcli.ranking import truth_positions

    cands = [r.candidates for r in rows]
    pos = truth_positions(cands, [truth.get(r.id) for r in rows], vocab.normalizer)
    has = np.array([r.id in truth and bool(r.candidates) for r in rows], dtype=bool)
    held, missed = has & (pos >= 0), has & (pos < 0)
    if not missed.any():
        return {}
    score = none_of_these(probs, mask)
    ok = has & np.isfinite(score)
    return {
        "missing_truth_rows": int(missed.sum()),
        "accuracy_truth_held": accuracy(probs.argmax(1)[held], y[held]),
        "none_of_these_auroc": auroc(score[ok], missed[ok]),
    }


def ranked_metrics(
    rows,
    truth: dict[str, str],
    probs: np.ndarray,
    scores: dict,
    vocab,
    extra: dict | None,
    cascade: dict | None = None,
    cache=None,
    curve: bool = False,
    log=print,
) -> dict:
    """Within-candidate accuracy of the combined ranking (``plcli.ranking``) and of each scorer alone,
    overall and split by whether the true message is in the model's vocabulary; which scorer decided;
    the calibration error of the ranking's candidate probabilities. With ``cascade``
    (``plcli.cascade.setting_for``), the ranking is the cascade's, the model's own is ``_model``, and
    ``curve`` scores every row with the recogniser for its accuracy and each threshold's."""
    from plcli.ranking import candidate_classes, rank, ranking_of, truth_positions

    cands = [r.candidates for r in rows]
    setting = ranking_of(extra)
    classes = candidate_classes(cands, vocab)
    ranked = rank(probs, scores, classes, setting, vocab.counts)
    texts = [truth.get(r.id) for r in rows]
    pos = truth_positions(cands, texts, vocab.normalizer)
    use = np.array([t is not None and bool(c) for t, c in zip(texts, cands, strict=True)])
    known = np.array([t is not None and vocab.index(t) is not None for t in texts])
    out: dict = {"ranking": setting}
    if cascade:
        from plcli.cascade import apply, curve_metrics

        model_ranked = ranked
        ranked, info = apply(ranked, rows, classes, cascade, cache, log, every_row=curve)
        out["cascade"] = {
            **{k: v for k, v in cascade.items() if k != "grid"},
            "rows_sent": int(info["sent"][use].sum()),
        }
        if curve:
            out["cascade"].update(curve_metrics(model_ranked["probs"], info["scores"], classes, pos, cascade))
        ranked["model"] = model_ranked["combined"]
    for name, key in (("combined", ""), ("model", "_model"), ("classifier", "_classifier"), ("ctc", "_ctc")):
        sc = ranked.get(name)
        if sc is None:
            continue
        hit = sc.argmax(1) == pos
        out[f"accuracy_within_candidates{key}"] = _share(hit, use)
        out[f"accuracy_within_candidates{key}_known"] = _share(hit, use & known)
        out[f"accuracy_within_candidates{key}_unknown"] = _share(hit, use & ~known)
    if use.any():
        # the candidate probabilities predict writes (softmax at the ranking's calibrated temperature)
        p = ranked["probs"][use]
        out["ece_within_candidates"] = expected_calibration_error(p.max(1), p.argmax(1) == pos[use])
    out["unknown_truth_rows"] = int((use & ~known).sum())
    out["decided_by"] = dict(Counter(d for d, u in zip(ranked["decided_by"], use, strict=True) if u))
    return out


def _share(hit: np.ndarray, rows: np.ndarray) -> float:
    return float(hit[rows].mean()) if rows.any() else math.nan


def _truth(cfg: EvaluateConfig, rows, vocab, log) -> dict[str, str]:
    """id -> true label: the manifest's labels, overridden by ``--truth`` (with warnings)."""
    from plcli.data.manifest import read_truth

    truth = {r.id: r.label for r in rows if r.label is not None}
    if not cfg.truth:
        return truth
    from_file = read_truth(cfg.truth)
    ids = {r.id for r in rows}
    missing = len(set(from_file) - ids)
    if missing:
        log(f"warning: {missing} id(s) of the truth file are not in the manifest")
    disagree = sum(
        1 for k, v in from_file.items() if k in truth and vocab.normalizer(truth[k]) != vocab.normalizer(v)
    )
    if disagree:
        log(f"warning: the truth file overrides {disagree} manifest label(s) that differ from it")
    truth.update({k: v for k, v in from_file.items() if k in ids})
    return truth


def _per_class(pred: np.ndarray, y: np.ndarray, vocab) -> list[dict]:
    """The per-class table rows of the classes that occur or are predicted."""
    pc = per_class_metrics(pred, y, len(vocab))
    return [
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


def _print_cascade(c: dict, model_speed: float | None, console) -> None:
    """The cascade's accuracy and throughput at each threshold (``evaluate --fallback whisper``)."""
    from rich.table import Table

    if not c.get("grid"):
        return
    rec = c.get("recogniser_clips_per_second")
    t = Table(
        title=f"cascade (recogniser alone: {_fmt(c['accuracy_recogniser'])} within candidates; "
        f"model alone: {_fmt(c['accuracy_model'])})"
    )
    for col in ("threshold P", "rows sent", "accuracy within candidates", "clips/s (estimated)"):
        t.add_column(col)
    for g in c["grid"]:
        speed = None
        if rec and model_speed:
            speed = 1.0 / (1.0 / model_speed + g["share"] / rec)
        mark = " (chosen)" if g["threshold"] == c.get("threshold") else ""
        t.add_row(
            f"{g['threshold']:g}{mark}",
            f"{g['share']:.2f}",
            _fmt(g["accuracy"]),
            f"{speed:.1f}" if speed else "-",
        )
    console.print(t)


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
        ("accuracy_within_candidates_model", "  the model alone (before the recogniser)"),
        ("accuracy_within_candidates_classifier", "  closed-set head alone"),
        ("accuracy_within_candidates_ctc", "  CTC head alone"),
        ("accuracy_within_candidates_unknown", "  on messages outside the vocabulary"),
        ("unknown_truth_rows", "  rows whose message is outside the vocabulary"),
        ("missing_truth_rows", "rows whose candidates miss their message"),
        ("accuracy_truth_held", "  accuracy (all classes) on the rows whose candidates hold it"),
        ("none_of_these_auroc", "  AUROC of none_of_these for telling them apart"),
        ("macro_f1", "macro-F1"),
        ("covering_rate", "covering rate"),
        ("ece", f"expected calibration error ({metrics.get('ece_bins', ECE_BINS)} bins)"),
        ("ece_within_candidates", "  of the candidate probabilities"),
        ("chance", "chance (1 / classes)"),
        ("unknown_labels", "labels outside the vocabulary"),
        ("clips_per_second", "inference clips/s (model)"),
    ):
        if k in metrics:
            v = metrics[k]
            t.add_row(name, f"{v:.0f}" if k == "clips_per_second" and v is not None else _fmt(v))
    console.print(t)
    _print_cascade(metrics.get("cascade") or {}, metrics.get("clips_per_second"), console)
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
    folder.mkdir(parents=True, exist_ok=True)
    return [
        _confusion_png(folder / "confusion_matrix.png", probs.argmax(axis=1), y, labels),
        _reliability_png(folder / "reliability.png", probs, y, n_bins),
        _per_class_csv(folder / "per_class.csv", per_class),
    ]


def _save_png(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from plcli.io import atomic_open

    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def _confusion_png(path: Path, pred: np.ndarray, y: np.ndarray, labels: list[str]) -> Path:
    import matplotlib.pyplot as plt

    c = len(labels)
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
    return _save_png(fig, path)


def _reliability_png(path: Path, probs: np.ndarray, y: np.ndarray, n_bins: int) -> Path:
    import matplotlib.pyplot as plt

    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
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
    return _save_png(fig, path)


def _per_class_csv(path: Path, per_class: list[dict]) -> Path:
    from plcli.io import atomic_open

    with atomic_open(path, "w") as f:
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
    return path
