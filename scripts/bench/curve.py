"""The learning-curve benchmark (``make bench-curve`` runs it through ``scripts/bench_curve.py``).

Accuracy against the number N of training recordings, under a Zipf and a uniform message
distribution (see docs/benchmark.md). For each distribution ONE demo data set is
generated with enough training recordings for the largest N, plus a fixed test set from unseen
speakers; a share of the training speakers is held out for validation (``common.split_speakers``).
Each smaller N is a seeded subset of the remaining training rows, nested (N = 600 is part of
N = 1200 for the same seed), so the feature cache computes each clip once. The exact labels are
drawn again for every (N, rate, seed) (``common.label_rows``).

Rows: the oracle (``grid.baseline_cell``: plcli's student trained on true labels, from the
pretrained encoder where plcli's student starts from it, see ``compute_cell``), plcli with its
defaults and its teacher alone (one ``grid.pipeline_cell`` run gives both), plcli without
pretraining (``finetune --pretrained none``, then distill) and pocketsphinx with a per-recording
grammar of the recording's candidates (``plcli.grammar``, no training: one cell per
distribution, reported as not available when that module or its recogniser is missing). Every
cell is a JSON file under OUT/<dist>/n<N>/cells (the recogniser's under OUT/<dist>/cells), so an
interrupted run continues.

Cells (flat dicts, as in ``bench.report``) carry ``dist`` and ``n``; the oracle's ``rate`` is
None (it does not use the exact labels) and the recogniser's ``n``, ``rate`` and ``seed`` are None.
The report functions here are pure (cells in, text or a PNG out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

from bench.common import (
    STAMPS,
    BenchConfig,
    absolute_audio,
    check_settings,
    code_version,
    config_from,
    label_rows,
    log,
    make_demo,
    read_jsonl,
    report_header,
    split_counts,
    split_speakers,
    stamped,
    utc_now,
    write_generated,
)
from bench.grid import baseline_cell, pipeline_cell, pretrain
from bench.report import cached_cell, fmt_mean_std, mean_std, save_figure
from plcli.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

ROW_NAMES = {
    "oracle": "Oracle (true labels)",
    "plcli": "plcli (defaults)",
    "teacher": "plcli teacher alone (pretrain → finetune)",
    "no-pretrain": "plcli without pretraining (finetune --pretrained none → distill)",
    "grammar": "pocketsphinx, grammar of the candidates",
}
ROWS = tuple(ROW_NAMES)
DISTS = {"zipf": 1.0, "uniform": 0.0}  # plcli demo-data --zipf exponent
# the work folder; its cells and settings are kept in git (.gitignore), so a later run continues the curve
OUT = "results/curve"
# the make target that publishes the report (``--report docs/results/curve.md``), named on its first line
MAKE_TARGET = "make bench-curve"

# the targets: (smallest N, ratio to the oracle), largest N first
PLCLI_RATIO = ((2400, 0.95), (1200, 0.90))
TEACHER_RATIO = ((1200, 0.70),)
PRETRAIN_UPTO = 1200  # pretraining must beat no pretraining by more than SD_MARGIN sd up to here
SD_MARGIN = 2.0
TARGETS = {
    "plcli": "plcli ≥ 0.90 × oracle (N = 1200), ≥ 0.95 × oracle (N ≥ 2400)",
    "teacher": "teacher ≥ 0.70 × oracle (N ≥ 1200)",
    "pretraining": "plcli − no-pretrain > 2 sd (N ≤ 1200)",
    "grammar": "plcli > pocketsphinx grammar, within candidates (every N)",
}


@dataclass(kw_only=True)
class CurveConfig(BenchConfig):
    """The learning curve's options (``parse`` builds it from the command line, which gives the
    defaults). It generates its data (``data`` stays None), one demo set per distribution."""

    SETTINGS: ClassVar[tuple[str, ...]] = (
        "phrases", "train", "test", "engines", "data_seed", "val_speakers", "views", "pretrain_epochs",
        "finetune_epochs", "distill_epochs", "baseline_epochs", "baseline_min_steps",
    )  # fmt: skip

    out: str  # work folder: data, runs, cells and the report
    sizes: list[int]  # training recordings N
    extra: list[tuple[int, float]]  # more (N, rate) cells
    dists: list[str]  # message distributions (``DISTS``)
    three_seeds_upto: int  # N up to which every seed runs
    engines: str  # plcli demo-data --engines
    report_only: bool  # compute nothing, write the report from the cells there are
    report: str | None  # also write the report as this generated markdown page
    png: str | None  # copy the chart here


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def nested_subset(rows: Sequence[dict], n: int, seed: int) -> list[dict]:
    """The ``n`` rows with the smallest seeded hash of their id, in their original order.

    The ranking depends only on the ids and the seed, so for one seed the subset of a smaller
    ``n`` is part of every larger one.
    """
    if n > len(rows):
        raise ValueError(f"{n} rows asked for, {len(rows)} available")
    rank = sorted(
        rows, key=lambda r: hashlib.blake2b(f"subset-{seed}:{r['id']}".encode(), digest_size=8).digest()
    )
    keep = {r["id"] for r in rank[:n]}
    return [r for r in rows if r["id"] in keep]


def rates_at(a: CurveConfig, n: int) -> list[float]:
    """The exact-label rates run at training size ``n``: ``--rates`` plus the ``--extra`` ones for ``n``."""
    return sorted(set(a.rates) | {rate for m, rate in a.extra if m == n})


def seeds_at(a: CurveConfig, n: int) -> list[int]:
    """Every seed up to ``--three-seeds-upto``, the first one above it."""
    return list(a.seeds) if n <= a.three_seeds_upto else list(a.seeds[:1])


def pairs(a: CurveConfig) -> list[tuple[int, float]]:
    """Every (N, rate) of the curve, in order."""
    return [(n, rate) for n in sorted(a.sizes) for rate in rates_at(a, n)]


def demo_train_size(sizes: Sequence[int], val_speakers: float) -> int:
    """Training recordings to generate so that, after the validation speakers are held out, the
    largest size still fits: a quarter more than the expected share (speakers differ in activity)."""
    return int(math.ceil(max(sizes) / (1.0 - val_speakers) * 1.25))


def prepare_dist(a: CurveConfig, root: Path, dist: str) -> dict:
    """Generate (once) one distribution's demo data; write its test, validation and truth files and
    the label-rate manifests of every (N, seed, rate). Returns ``{"sizes": {N: grid paths}, ...}``."""
    from plcli.data.labels import LabelNormalizer

    data = root / "data"
    demo = make_demo(a, data, ["--zipf", f"{DISTS[dist]:g}", "--engines", a.engines])
    train = absolute_audio(read_jsonl(demo / "train.jsonl"), demo)
    test = absolute_audio(read_jsonl(demo / "test.jsonl"), demo)
    truth = {r["id"]: r["label"] for r in read_jsonl(demo / "truth.jsonl")}
    fit, val = split_speakers(train, a.val_speakers, a.data_seed)
    if len(fit) < max(a.sizes):
        sys.exit(
            f"{dist}: {len(fit)} training rows after holding out the validation speakers, fewer than "
            f"N = {max(a.sizes)}; generate more with --train (in a new --out folder)"
        )
    val = [
        {**{k: v for k, v in r.items() if k != "label"}, "label": truth[r["id"]]}
        for r in val
        if r["id"] in truth
    ]
    base = {"test": data / "test.jsonl", "val": data / "val.jsonl", "truth": data / "truth.jsonl"}
    atomic_write_jsonl(base["test"], test)
    atomic_write_jsonl(base["val"], val)
    atomic_write_jsonl(base["truth"], [{"id": k, "label": v} for k, v in truth.items()])
    norm = LabelNormalizer()
    sizes = {}
    for n in sorted(a.sizes):
        paths = {**base, "manifests": {}}
        for seed in seeds_at(a, n):
            sub = nested_subset(fit, n, seed)
            for rate in rates_at(a, n):
                p = data / f"n{n}" / f"train-r{rate:g}-s{seed}.jsonl"
                atomic_write_jsonl(p, label_rows(sub, truth, rate, seed, norm))
                paths["manifests"][(rate, seed)] = (p, None)
        sizes[n] = paths
    meta = (
        json.loads((demo / "meta.json").read_text(encoding="utf-8")) if (demo / "meta.json").exists() else {}
    )
    counts = {
        **split_counts(train, fit, val, test, train_key="train_generated"),
        "voices": meta.get("voices"),
    }
    log(f"{dist} data: {counts}")
    kept = data_cell(root)  # kept in git with the cells, for --report-only; rewritten only when it changes
    if not kept.exists() or json.loads(kept.read_text(encoding="utf-8")) != counts:
        atomic_write_json(kept, counts)
    return {"sizes": sizes, "test": base["test"], "counts": counts}


def data_cell(root: Path) -> Path:
    """Where one distribution's data counts are kept beside its cells."""
    return root / "cells" / "data.json"


def prepared(a: CurveConfig, root: Path) -> dict:
    """``prepare_dist``'s answer for --report-only, from what is on disk: no data is generated, and
    the data counts come from the last run that prepared it (empty where none did)."""
    path = data_cell(root)
    counts = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {"sizes": {n: {} for n in a.sizes}, "test": None, "counts": counts}


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------


def cell_key(row: str, rate: float | None, seed: int) -> str:
    """File name (without .json) of a trained row's cell; the oracle's has no rate."""
    return f"oracle-s{seed}" if row == "oracle" else f"{row}-r{rate:g}-s{seed}"


def grammar_cell(a: CurveConfig, test: Path) -> dict:
    """pocketsphinx restricted to each test recording's candidates (``plcli.grammar``)."""
    from plcli.data.labels import LabelNormalizer
    from plcli.grammar import choose_with_grammar

    norm = LabelNormalizer()
    rows = [r for r in read_jsonl(test) if r.get("label")]
    cand = [r for r in rows if r.get("candidates")]
    log(f"pocketsphinx grammar: {len(cand)} test clips with {a.asr_workers} processes ...")
    chosen, timing = choose_with_grammar(
        [r["audio"] for r in cand], [r["candidates"] for r in cand], workers=a.asr_workers
    )
    right = sum(
        0 <= i < len(r["candidates"]) and norm(r["candidates"][i]) == norm(r["label"])
        for r, i in zip(cand, chosen, strict=True)
    )
    return {
        "row": "grammar",
        "n": None,
        "rate": None,
        "seed": None,
        "accuracy": right / max(1, len(rows)),
        "accuracy_within": right / max(1, len(cand)),
        "test_rows": len(rows),
        "no_choice": sum(i < 0 for i in chosen),
        "timing": timing,
        "clips_per_second": timing.get("clips_per_second"),
    }


def grammar_available() -> str | None:
    """None when the grammar row can run, else why not."""
    from plcli.grammar import unavailable

    return unavailable()


def _done(kind: str, key: str, c: dict, t: float, t0: float) -> None:
    log(
        f"{kind} {key}: accuracy {c['accuracy']:.3f}, within {c['accuracy_within']:.3f} "
        f"({time.perf_counter() - t:.0f} s; {time.perf_counter() - t0:.0f} s so far)"
    )


def compute_cell(a: CurveConfig, bench: Path, paths: dict, row: str, rate: float, seed: int, n: int) -> dict:
    """Train and evaluate one cell: ``plcli`` (its teacher under ``"teacher"``), ``teacher`` (the
    pipeline up to finetune, for a teacher-only run), ``no-pretrain`` or ``oracle``.

    The oracle is plcli's own student on true labels: below ``distill``'s ``small_data`` that
    student is the pretrained encoder (the plcli cell's pretrain run) with a new head, so the
    oracle starts from it too; above, both are the small student from scratch.
    """
    from plcli.distill import DistillConfig

    if row == "plcli":
        return pipeline_cell(a, bench, paths, "plcli", rate, seed, teacher=True)
    if row == "teacher":  # without the plcli cell: pretrain -> finetune only, in the plcli cell's runs
        return pipeline_cell(a, bench, paths, "plcli", rate, seed, teacher_only=True)
    if row == "no-pretrain":
        return pipeline_cell(a, bench, paths, "no-pretrain", rate, seed, pretrained=False)
    init = pretrain(a, bench, paths, seed)["dir"] / "encoder.pt" if n < DistillConfig().small_data else None
    return baseline_cell(a, bench, paths, row, rate, seed, init_encoder=init)


def _teacher_of(plcli_cell: dict) -> dict:
    """The teacher's cell inside a plcli cell, with the plcli cell's stamps (when and where it ran)."""
    return {**plcli_cell["teacher"], **{k: plcli_cell[k] for k in STAMPS if k in plcli_cell}}


def dist_cells(a: CurveConfig, root: Path, dist: str, sizes: dict) -> list[dict]:
    """Every trained cell of one distribution (computed, or read back from its JSON file).

    ``sizes``: N -> the grid's ``paths`` (test, val, truth, manifests[(rate, seed)]). plcli's cells
    come first at each N, so an interrupted run already has plcli against the oracle. The teacher
    row comes from the plcli cell where there is one; otherwise (rows naming the teacher but not
    plcli, or a report before the plcli cell is done) from a teacher cell of its own: pretrain ->
    finetune without distill, minutes instead of the half hour of a small-N plcli cell, in the same
    runs, which the plcli cell then continues.
    """
    train = [r for r in ("plcli", "oracle", "no-pretrain") if r in a.rows]
    out: list[dict] = []
    t0 = time.perf_counter()

    def cell(bench, paths, row, rate, seed, n):
        key = cell_key(row, rate, seed)
        path = bench / "cells" / f"{key}.json"
        if a.report_only and not path.exists():
            return None
        t = time.perf_counter()
        c = cached_cell(path, stamped(partial(compute_cell, a, bench, paths, row, rate, seed, n)))
        _done(f"{dist} N={n}", key, c, t, t0)
        return c

    for n in sorted(sizes):
        bench, paths = root / f"n{n}", sizes[n]
        for seed in seeds_at(a, n):
            for rate in rates_at(a, n):
                tag = {"dist": dist, "n": n, "rate": rate, "seed": seed}
                teacher = None
                for row in train:
                    if row == "oracle" and rate != rates_at(a, n)[0]:
                        continue  # one oracle per (N, seed): it does not use the exact labels
                    c = cell(bench, paths, row, rate, seed, n)
                    if c is None:
                        continue
                    if row == "plcli":
                        teacher = _teacher_of(c)
                    rest = {k: v for k, v in c.items() if k != "teacher"}
                    out.append({**rest, **tag, **({"rate": None} if row == "oracle" else {})})
                if "teacher" not in a.rows:
                    continue
                plcli_path = bench / "cells" / f"{cell_key('plcli', rate, seed)}.json"
                if teacher is None and plcli_path.exists():
                    teacher = _teacher_of(json.loads(plcli_path.read_text(encoding="utf-8")))
                if teacher is None:
                    teacher = cell(bench, paths, "teacher", rate, seed, n)
                if teacher is not None:
                    out.append({**teacher, **tag})
    return out


def run_grammar(a: CurveConfig, root: Path, dist: str, test: Path) -> dict | None:
    """The recogniser's cell of one distribution, or None when it cannot run (nothing is cached then)."""
    path = root / "cells" / "grammar.json"
    if "grammar" not in a.rows or grammar_available() or (a.report_only and not path.exists()):
        return None
    t = time.perf_counter()
    c = cached_cell(path, stamped(lambda: grammar_cell(a, test)))
    _done(dist, "grammar", c, t, t)
    return {**c, "dist": dist, "n": None, "rate": None, "seed": None}


# ---------------------------------------------------------------------------------------------
# Report (pure)
# ---------------------------------------------------------------------------------------------


def select(cells: Sequence[dict], dist: str, row: str, n: int, rate: float) -> list[dict]:
    """The cells of ``row`` at (dist, N, rate); a cell whose ``n`` or ``rate`` is None fits every one."""
    return [
        c
        for c in cells
        if c["dist"] == dist
        and c["row"] == row
        and (c.get("n") is None or c["n"] == n)
        and (c.get("rate") is None or math.isclose(c["rate"], rate))
    ]


def _mean(cells: Sequence[dict], key: str = "accuracy") -> tuple[float, float, int]:
    return mean_std(c.get(key) for c in cells)


def _threshold(table: tuple, n: int) -> float | None:
    return next((r for m, r in table if n >= m), None)


def _ratio_check(cells, dist, row, n, rate, table) -> dict:
    need = _threshold(table, n)
    if need is None:
        return {"status": "-", "text": "no target"}
    acc, oracle = (
        _mean(select(cells, dist, row, n, rate))[0],
        _mean(select(cells, dist, "oracle", n, rate))[0],
    )
    if not (math.isfinite(acc) and math.isfinite(oracle) and oracle > 0):
        return {"status": "missing", "text": "not measured"}
    ratio = acc / oracle
    ok = ratio >= need
    return {"status": "pass" if ok else "fail", "text": f"{ratio:.3f} {'≥' if ok else '<'} {need:.2f}"}


def _pretraining_check(cells, dist, n, rate) -> dict:
    if n > PRETRAIN_UPTO:
        return {"status": "-", "text": "no target"}
    (ma, sa, na), (mb, sb, nb) = (_mean(select(cells, dist, r, n, rate)) for r in ("plcli", "no-pretrain"))
    if na == 0 or nb == 0:
        return {"status": "missing", "text": "not measured"}
    if na < 2 or nb < 2:
        return {"status": "n/a", "text": f"{ma - mb:+.3f}, sd needs ≥ 2 seeds"}
    margin = SD_MARGIN * max(sa, sb)
    ok = ma - mb > margin
    return {"status": "pass" if ok else "fail", "text": f"{ma - mb:+.3f} {'>' if ok else '≤'} {margin:.3f}"}


def _grammar_check(cells, dist, n, rate, unavailable: str | None) -> dict:
    mg = _mean(select(cells, dist, "grammar", n, rate), "accuracy_within")[0]
    mp = _mean(select(cells, dist, "plcli", n, rate), "accuracy_within")[0]
    if not math.isfinite(mg):
        return {
            "status": "n/a" if unavailable else "missing",
            "text": "grammar row not available" if unavailable else "not measured",
        }
    if not math.isfinite(mp):
        return {"status": "missing", "text": "not measured"}
    ok = mp > mg
    return {"status": "pass" if ok else "fail", "text": f"{mp:.3f} {'>' if ok else '≤'} {mg:.3f}"}


def check_targets(
    cells: Sequence[dict], dist: str, n: int, rate: float, grammar_unavailable: str | None = None
) -> dict:
    """Target name (``TARGETS``) -> {"status": pass | fail | - (no target here) | n/a | missing, "text"}.

    Ratios are of mean all-class accuracies; the pretraining margin is ``SD_MARGIN`` times the larger
    of the two rows' sample standard deviations; plcli and the recogniser are compared within candidates.
    """
    return {
        "plcli": _ratio_check(cells, dist, "plcli", n, rate, PLCLI_RATIO),
        "teacher": _ratio_check(cells, dist, "teacher", n, rate, TEACHER_RATIO),
        "pretraining": _pretraining_check(cells, dist, n, rate),
        "grammar": _grammar_check(cells, dist, n, rate, grammar_unavailable),
    }


def curve_table(
    cells: Sequence[dict],
    dist: str,
    grid: Sequence[tuple[int, float]],
    rows: Sequence[str] = ROWS,
    grammar_unavailable: str | None = None,
) -> str:
    """Markdown: one line per (N, rate, row) with test accuracy (mean ± sd), within-candidate
    accuracy, seeds and the ratio to the oracle's mean accuracy."""
    lines = [
        "| N | exact labels | row | accuracy (all classes) | accuracy (within candidates) | seeds "
        "| ratio to oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, rate in grid:
        oracle = _mean(select(cells, dist, "oracle", n, rate))[0]
        for row in rows:
            cs = select(cells, dist, row, n, rate)
            head = f"| {n} | {rate * 100:g}% | {ROW_NAMES.get(row, row)} "
            if not cs:
                why = (
                    f"not available ({grammar_unavailable})"
                    if row == "grammar" and grammar_unavailable
                    else "not measured"
                )
                lines.append(head + f"| {why} | | | |")
                continue
            acc = _mean(cs)[0]
            ratio = (
                f"{acc / oracle:.3f}" if math.isfinite(oracle) and oracle > 0 and math.isfinite(acc) else "-"
            )
            seeds = "no training" if row == "grammar" else str(len(cs))
            lines.append(
                head
                + f"| {fmt_mean_std(c['accuracy'] for c in cs)} "
                + f"| {fmt_mean_std(c['accuracy_within'] for c in cs)} "
                f"| {seeds} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def targets_table(
    cells: Sequence[dict],
    dist: str,
    grid: Sequence[tuple[int, float]],
    grammar_unavailable: str | None = None,
) -> str:
    """Markdown: one line per (N, rate), one column per target (``TARGETS``), each 'pass'/'fail'
    with the numbers."""
    lines = [
        "| N | exact labels | " + " | ".join(TARGETS.values()) + " |",
        "|---|---|" + "---|" * len(TARGETS),
    ]
    for n, rate in grid:
        checks = check_targets(cells, dist, n, rate, grammar_unavailable)
        parts = [
            "-"
            if c["status"] == "-"
            else (
                f"**{c['status']}**: {c['text']}"
                if c["status"] in ("pass", "fail")
                else f"{c['status']}: {c['text']}"
            )
            for c in checks.values()
        ]
        lines.append(f"| {n} | {rate * 100:g}% | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def targets_summary(
    cells: Sequence[dict],
    dists: Sequence[str],
    grid: Sequence[tuple[int, float]],
    grammar_unavailable: str | None = None,
) -> dict:
    """Counts of each status over every (dist, N, rate, target) that has a target."""
    out: dict[str, int] = {}
    for dist in dists:
        for n, rate in grid:
            for c in check_targets(cells, dist, n, rate, grammar_unavailable).values():
                if c["status"] != "-":
                    out[c["status"]] = out.get(c["status"], 0) + 1
    return out


def curve_chart(
    cells: Sequence[dict],
    path: str | Path,
    dists: Sequence[str],
    grid: Sequence[tuple[int, float]],
    rows: Sequence[str] = ROWS,
) -> Path:
    """PNG: test accuracy (all classes) against N, one line per row at each rate, one panel per
    distribution, sample standard deviation over seeds as error bars; the recogniser (no training)
    is a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = sorted({n for n, _ in grid})
    rates = sorted({r for _, r in grid}, reverse=True)
    styles = ["-o", "--s", ":^", "-.v"]
    fig, axes = plt.subplots(1, len(dists), figsize=(5.5 * len(dists) + 2.5, 4.5), sharey=True, squeeze=False)
    for ax, dist in zip(axes[0], dists, strict=True):
        for k, row in enumerate(r for r in rows if r != "grammar"):
            color = f"C{k}"
            for j, rate in enumerate(rates[:1] if row == "oracle" else rates):
                # the oracle does not use the exact labels: one line through every N
                ns = [n for n in sizes if row == "oracle" or (n, rate) in grid]
                stats = [_mean(select(cells, dist, row, n, rate)) for n in ns]
                keep = [(n, m, s) for n, (m, s, c) in zip(ns, stats, strict=True) if c]
                if not keep:
                    continue
                x, m, s = (np.array(v, dtype=float) for v in zip(*keep, strict=True))
                ax.errorbar(
                    x,
                    m,
                    yerr=np.nan_to_num(s),
                    fmt=styles[j % len(styles)],
                    color=color,
                    mfc="none" if j else color,
                    capsize=3,
                    label=ROW_NAMES[row].split(" (")[0] + ("" if row == "oracle" else f", {rate * 100:g}%"),
                )
        g = select(cells, dist, "grammar", sizes[0], rates[0]) if "grammar" in rows and sizes else []
        if g:
            ax.axhline(_mean(g, "accuracy_within")[0], color="grey", ls="--", label="pocketsphinx grammar")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training recordings N")
        ax.set_title(f"{dist} message distribution")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean over seeds)")
    legend = {}
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    if legend:
        axes[0][-1].legend(
            legend.values(), legend.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0)
        )
    return save_figure(fig, path)


def report_markdown(
    cells: Sequence[dict],
    a: CurveConfig,
    counts: dict,
    started: str,
    png_name: str,
    grammar_unavailable: str | None = None,
) -> str:
    """The whole report: provenance, then per distribution the results and the targets table."""
    grid = pairs(a)
    rows = [r for r in ROWS if r in a.rows]
    summary = targets_summary(cells, a.dists, grid, grammar_unavailable)
    parts = [
        *report_header(cells, started),
        (
            f"Seeds {', '.join(map(str, a.seeds))} up to N = {a.three_seeds_upto}, seed {a.seeds[0]} above. "
            if len(a.seeds) > 1
            else f"Seed {a.seeds[0]}. "
        )
        + "Every (N, seed) trains on its own seeded subset of the training speakers' recordings "
        + "(nested in N). "
        "Accuracy is on each distribution's fixed test set (speakers unseen in training), mean ± sample "
        "standard deviation over seeds; the ratio is to the oracle's mean at the same N. "
        "Targets: " + (", ".join(f"{k} {v}" for k, v in sorted(summary.items())) or "none at these N") + ".",
        "",
    ]
    if grammar_unavailable:
        parts += [f"The pocketsphinx-grammar row is not available: {grammar_unavailable}.", ""]
    for dist in a.dists:
        parts += [
            f"#### {dist.capitalize()} messages (`--zipf {DISTS[dist]:g}`)",
            "",
            f"Data: {json.dumps(counts.get(dist, {}))}.",
            "",
            curve_table(cells, dist, grid, rows, grammar_unavailable),
            "Targets:",
            "",
            targets_table(cells, dist, grid, grammar_unavailable),
        ]
    parts += [f"![accuracy against N]({png_name})", ""]
    return "\n".join(parts)


def write_page(doc: Path, text: str) -> None:
    """``text`` (``report_markdown``) as the whole generated page ``doc``, under a line naming
    ``MAKE_TARGET``."""
    write_generated(doc, "The learning curve: results", text, MAKE_TARGET)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _extra(text: str) -> tuple[int, float]:
    try:
        n, rate = text.split(":")
        return int(n), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N:RATE, e.g. 1200:0.01") from None


def parse(argv=None) -> CurveConfig:
    """The benchmark's options (``scripts/bench_curve.py --help``) as a ``CurveConfig``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=OUT, help="work folder: data, runs, cells and the report")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[600, 1200, 2400, 4800], help="training recordings N"
    )
    ap.add_argument("--rates", type=float, nargs="+", default=[0.05], help="exact-label rates at every N")
    ap.add_argument(
        "--extra",
        type=_extra,
        nargs="*",
        default=[(1200, 0.01)],
        help="more N:RATE cells (default 1200:0.01; give none to drop it)",
    )
    ap.add_argument(
        "--dists", nargs="+", default=list(DISTS), choices=list(DISTS), help="message distributions"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--three-seeds-upto",
        type=int,
        default=1200,
        help="N up to which every seed runs; larger N use the first seed only",
    )
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--phrases", type=int, default=40, help="messages in the demo vocabulary")
    ap.add_argument(
        "--train",
        type=int,
        default=None,
        help="training recordings to generate (default: enough for the largest N after the "
        "validation speakers are held out, with a 25%% margin)",
    )
    ap.add_argument("--test", type=int, default=1000, help="fixed test recordings (unseen speakers)")
    ap.add_argument("--engines", default="auto", help="plcli demo-data --engines (auto: every installed one)")
    ap.add_argument("--data-seed", type=int, default=0, help="demo-data seed and speaker-split seed")
    ap.add_argument(
        "--val-speakers", type=float, default=0.1, help="share of training speakers held out for validation"
    )
    ap.add_argument(
        "--views", type=int, default=8, help="cached augmented views per clip (the pretrain default)"
    )
    ap.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="exactly this many epochs (min_steps off); default: the stage's own",
    )
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--distill-epochs", type=int, default=None)
    ap.add_argument(
        "--baseline-epochs", type=int, default=None, help="oracle epochs (default: --distill-epochs)"
    )
    ap.add_argument("--baseline-min-steps", type=int, default=300)
    ap.add_argument("--asr-workers", type=int, default=2, help="pocketsphinx processes")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--cache", default=None, help="feature cache (default: $PLCLI_CACHE, else OUT/cache)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="compute nothing and generate no data: write the report from the cells already in OUT "
        "(missing ones are left out)",
    )
    ap.add_argument(
        "--report",
        default=None,
        help="also write the report as this generated markdown page, whole "
        "(make bench-curve: docs/results/curve.md)",
    )
    ap.add_argument(
        "--png",
        default=None,
        help="copy the chart here (default with --report: benchmark-curve.png beside it)",
    )
    a = ap.parse_args(argv)
    return config_from(
        CurveConfig,
        a,
        baseline_epochs=a.distill_epochs if a.baseline_epochs is None else a.baseline_epochs,
        cache=Path(a.cache or os.environ.get("PLCLI_CACHE") or Path(a.out) / "cache").resolve(),
    )


SETTINGS = CurveConfig.SETTINGS


def resolve_train(a: CurveConfig, out: Path) -> None:
    """``--train``, else the size an earlier run in ``out`` generated, else ``demo_train_size``."""
    if a.train is None:
        old = out / "settings.json"
        a.train = (
            json.loads(old.read_text(encoding="utf-8")).get("train") if old.exists() else None
        ) or demo_train_size(a.sizes, a.val_speakers)


def main(argv=None) -> int:
    """Prepare the data, compute (or read back) every cell, write the report and the chart."""
    a = parse(argv)
    code_version()
    out = Path(a.out).resolve()
    started = utc_now()
    os.environ.setdefault("PLCLI_CACHE", str(a.cache))
    resolve_train(a, out)
    check_settings(a, out)
    unavailable = grammar_available() if "grammar" in a.rows else None
    cells: list[dict] = []
    counts = {}
    for dist in a.dists:
        root = out / dist
        prep = prepared(a, root) if a.report_only else prepare_dist(a, root, dist)
        counts[dist] = prep["counts"]
        cells += dist_cells(a, root, dist, prep["sizes"])
        g = run_grammar(a, root, dist, prep["test"])
        if g:
            cells.append(g)
    chart = curve_chart(cells, out / "curve.png", a.dists, pairs(a), [r for r in ROWS if r in a.rows])
    atomic_write_json(out / "results.json", cells)
    atomic_write_text(out / "results.md", report_markdown(cells, a, counts, started, chart.name, unavailable))
    if a.report:
        doc = Path(a.report)
        png = Path(a.png) if a.png else doc.with_name("benchmark-curve.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chart, png)
        write_page(
            doc, report_markdown(cells, a, counts, started, os.path.relpath(png, doc.parent), unavailable)
        )
        log(f"results written to {doc} and {png}")
    elif a.png:
        Path(a.png).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chart, a.png)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0
