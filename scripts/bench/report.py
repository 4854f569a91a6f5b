"""Benchmark results: the per-cell cache, the markdown tables and the accuracy chart.

A *cell* is one (row, label rate, seed) result, a flat dict::

    {"row": "plcli", "rate": 0.01, "seed": 0, "accuracy": 0.81, "accuracy_within": 0.93,
     "val_accuracy": 0.80, "val_accuracy_within": 0.92, "seconds": {"finetune": 31.0, "distill": 240.2},
     "clips_per_second": 910.0}

Every function here is pure (cells in, text or a file out) so it is tested without training.
Means and standard deviations are over seeds; the standard deviation is the sample one (ddof=1)
and is left out when a row has one seed. The ratio to the oracle is the ratio of the mean
all-class accuracies at the same label rate. A cell may hold ``None`` for a figure its row does not
define (the grammar-constrained recogniser has no all-class accuracy); tables show ``-`` for it.
A cell with ``accuracy_within_unseen`` (test recordings whose message no training recording has)
gets a line under the tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from plcli.io import atomic_write_json

ROW_NAMES = {
    "oracle": "1. Oracle (true labels)",
    "exact": "2. Exact labels only",
    "indicator-mse": "3. Candidate-indicator MSE",
    "simclrv2": "4. SimCLRv2, no candidates",
    "asr": "5. Speech recogniser (pocketsphinx)",
    "asr-grammar": "5b. Speech recogniser, grammar of the candidates (pocketsphinx)",
    "plcli": "6. plcli (defaults)",
    "plcli-no-vote": "6b. plcli without the recogniser's vote (`--asr-prior none`)",
}
ROWS = tuple(ROW_NAMES)


def cached_cell(path: str | Path, compute: Callable[[], dict]) -> dict:
    """The cell stored at ``path``, or ``compute()`` written there atomically (so reruns skip it)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except json.JSONDecodeError:
        path.unlink()  # a torn write cannot happen (atomic), but a hand-edited file can be broken
    cell = compute()
    atomic_write_json(path, cell)
    return cell


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, count) of the finite values; nan where undefined."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def fmt_mean_std(values: Iterable[float | None], digits: int = 3) -> str:
    """``0.812 ± 0.013`` over several values, ``0.812`` for one, ``-`` for none."""
    m, s, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def _cells(cells: Iterable[dict], row: str, rate: float) -> list[dict]:
    return [c for c in cells if c["row"] == row and math.isclose(c["rate"], rate)]


def _seconds(cells: list[dict]) -> str:
    stages: dict[str, list[float]] = {}
    for c in cells:
        for k, v in (c.get("seconds") or {}).items():
            stages.setdefault(k, []).append(v)
    return " · ".join(f"{k} {np.mean(v):.0f} s" for k, v in stages.items()) or "-"


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def results_table(cells: Sequence[dict], rate: float, rows: Sequence[str] = ROWS) -> str:
    """Markdown table of one label rate: accuracy, within-candidate accuracy, ratio to the oracle,
    seeds, wall time per stage (mean over seeds) and inference clips/s."""
    oracle = mean_std(c["accuracy"] for c in _cells(cells, "oracle", rate))[0]
    lines = [
        "| row | accuracy (all classes) | accuracy (within candidates) | ratio to oracle | seeds "
        "| wall time per stage | inference clips/s (2 cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cs = _cells(cells, row, rate)
        if not cs:
            continue
        acc = mean_std(c["accuracy"] for c in cs)[0]
        ratio = f"{acc / oracle:.2f}" if math.isfinite(oracle) and oracle > 0 and math.isfinite(acc) else "-"
        cps = [c["clips_per_second"] for c in cs if c.get("clips_per_second")]
        lines.append(
            f"| {ROW_NAMES.get(row, row)} | {fmt_mean_std(c['accuracy'] for c in cs)} "
            f"| {fmt_mean_std(c['accuracy_within'] for c in cs)} | {ratio} | {len(cs)} | {_seconds(cs)} "
            f"| {_rate(np.mean(cps)) if cps else '-'} |"
        )
    return "\n".join(lines) + "\n"


def results_markdown(cells: Sequence[dict], rows: Sequence[str] = ROWS, title_level: int = 3) -> str:
    """One ``results_table`` per label rate, each under a heading."""
    rates = sorted({c["rate"] for c in cells})
    h = "#" * title_level
    parts = [f"{h} {rate * 100:g}% exact labels\n\n{results_table(cells, rate, rows)}" for rate in rates]
    note = unseen_note(cells, rows)
    return "\n".join(parts + ([note] if note else []))


def unseen_note(cells: Sequence[dict], rows: Sequence[str] = ROWS) -> str:
    """One line per row whose cells report ``accuracy_within_unseen``: within-candidate accuracy on
    the test recordings whose message never occurs in training ("" when no cell has it)."""
    lines = []
    for row in rows:
        cs = [c for c in cells if c["row"] == row and "accuracy_within_unseen" in c]
        if not cs:
            continue
        # a row that does not depend on the label rate repeats one cell per rate: count it once
        cs = list({(c.get("seed"), c.get("finished"), c.get("accuracy_within_unseen")): c
                   for c in cs}.values())
        n = max(c.get("unseen_rows") or 0 for c in cs)
        seen = fmt_mean_std(c.get("accuracy_within_seen") for c in cs)
        lines.append(
            f"- {ROW_NAMES.get(row, row)}: {fmt_mean_std(c['accuracy_within_unseen'] for c in cs)} within "
            f"candidates on the {n} never-heard test recordings (heard messages: {seen})."
        )
    if not lines:
        return ""
    return "Messages never heard in training (no training recording has them):\n\n" + "\n".join(lines) + "\n"


def accuracy_chart(cells: Sequence[dict], path: str | Path, rows: Sequence[str] = ROWS) -> Path:
    """PNG bar chart: all-class and within-candidate test accuracy per row, one bar per label rate,
    standard deviation over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({c["rate"] for c in cells})
    rows = [r for r in rows if any(c["row"] == r for c in cells)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(rates))
    for ax, key, title in (
        (axes[0], "accuracy", "all classes"),
        (axes[1], "accuracy_within", "within candidates"),
    ):
        for k, rate in enumerate(rates):
            stats = [mean_std(c[key] for c in _cells(cells, r, rate)) for r in rows]
            means = [m for m, _, _ in stats]
            errs = [0.0 if not math.isfinite(s) else s for _, s, _ in stats]
            ax.bar(
                x + (k - (len(rates) - 1) / 2) * width,
                means,
                width,
                yerr=errs if any(errs) else None,
                capsize=3,
                label=f"{rate * 100:g}% exact labels",
            )
        ax.set_xticks(
            x, [ROW_NAMES.get(r, r).split(". ", 1)[-1] for r in rows], rotation=30, ha="right", fontsize=8
        )
        ax.set_title(f"test accuracy, {title}")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (mean over seeds)")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` (folders created) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
