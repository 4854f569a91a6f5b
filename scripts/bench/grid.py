"""The accuracy benchmark grid (``make bench`` runs it through ``scripts/benchmark.py``; docs/benchmark.md).

Rows: oracle, exact-only, candidate-indicator MSE (same student as distill, trained directly),
SimCLRv2 without candidates (pretrain -> finetune --loss ce-only -> distill on the teacher's full
softmax), pocketsphinx + fuzzy matching, pocketsphinx with a grammar of each recording's
candidates, and plcli with its defaults (and, only when --rows names it, plcli without the speech
recogniser's vote, row 6b); at each exact-label rate and seed. Every finished cell is a JSON file
under BENCH/cells and every stage run a run directory under BENCH/runs (continued with --resume
auto), so an interrupted benchmark continues where it stopped. Settings are chosen on a validation
split of the training speakers, never on the test manifest.

    python scripts/benchmark.py                        # the full grid (hours on 2 CPU cores)
    python scripts/benchmark.py --quick                # a small smoke run (minutes)
    python scripts/benchmark.py --single-seed-rows exact indicator-mse simclrv2   # the reduced grid
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.common import (
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
from bench.report import ROWS, accuracy_chart, cached_cell, results_markdown
from plcli.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

# the work folder (cells, runs, data, the report), under results/ beside the other benchmarks' cells
BENCH_DIR = "results/grid"
# the make target that publishes the report (``--docs docs/results/grid.md``), named on its first line
MAKE_TARGET = "make bench"
# row 6b is an ablation of row 6 (six more distill runs): run it by naming it in --rows
DEFAULT_ROWS = tuple(r for r in ROWS if r != "plcli-no-vote")

QUICK = {
    "phrases": 40,
    "train": 200,
    "test": 60,
    "rates": [0.05, 0.2],
    "seeds": [0],
    "views": 2,
    "pretrain_epochs": 2,
    "finetune_epochs": 5,
    "distill_epochs": 2,
    "baseline_min_steps": 20,
    "asr_val_rows": 20,
}


@dataclass(kw_only=True)
class GridConfig(BenchConfig):
    """The grid's options (``parse`` builds it from the command line, which gives the defaults)."""

    SETTINGS: ClassVar[tuple[str, ...]] = (
        "data", "phrases", "train", "test", "data_seed", "val_speakers", "views", "pretrain_epochs",
        "finetune_epochs", "distill_epochs", "baseline_epochs", "baseline_min_steps", "asr_val_rows",
    )  # fmt: skip

    bench_dir: str  # cells, runs, data and the report go here
    single_seed_rows: list[str]  # rows run with the first seed only
    asr_val_rows: int  # validation clips of the recogniser rows
    docs: str | None  # also write the report as this generated markdown page
    png: str | None  # where that page's chart goes (default: benchmark-accuracy.png beside it)


SETTINGS = GridConfig.SETTINGS


def prepare(a: GridConfig, bench: Path) -> dict:
    """Write the benchmark's manifests; returns their paths and the row counts."""
    from plcli.data.labels import LabelNormalizer

    data = bench / "data"
    demo = make_demo(a, data)
    train = absolute_audio(read_jsonl(demo / "train.jsonl"), demo)
    test = absolute_audio(read_jsonl(demo / "test.jsonl"), demo)
    truth = {r["id"]: r["label"] for r in read_jsonl(demo / "truth.jsonl")}
    fit, val = split_speakers(train, a.val_speakers, a.data_seed)
    val = [
        {**{k: v for k, v in r.items() if k != "label"}, "label": truth[r["id"]]}
        for r in val
        if r["id"] in truth
    ]
    norm = LabelNormalizer()
    paths = {
        "test": data / "test.jsonl",
        "val": data / "val.jsonl",
        "truth": data / "truth.jsonl",
        "manifests": {},
    }
    atomic_write_jsonl(paths["test"], test)
    atomic_write_jsonl(paths["val"], val)
    atomic_write_jsonl(paths["truth"], [{"id": k, "label": v} for k, v in truth.items()])
    for seed in a.seeds:
        for rate in a.rates:
            rows = label_rows(fit, truth, rate, seed, norm)
            p = data / f"train-r{rate:g}-s{seed}.jsonl"
            atomic_write_jsonl(p, rows)
            nocand = data / f"train-r{rate:g}-s{seed}-nocand.jsonl"
            atomic_write_jsonl(nocand, [{**r, "candidates": []} for r in rows])
            paths["manifests"][(rate, seed)] = (p, nocand)
    paths["counts"] = split_counts(train, fit, val, test)
    log(f"data: {paths['counts']}")
    return paths


# ---------------------------------------------------------------------------------------------
# Stage runs (plcli's own run functions; each run directory resumes)
# ---------------------------------------------------------------------------------------------


def trainer_opts(a: BenchConfig, epochs: int | None, seed: int) -> dict:
    out = {
        "trainer.seed": seed,
        "trainer.accelerator": a.accelerator,
        "trainer.devices": "1",
        "trainer.progress": False,
        "trainer.resume": "auto",
    }
    if epochs:
        out["trainer.epochs"] = epochs
    return out


def run_stage(name: str, out: Path, overrides: dict) -> dict:
    """``plcli.<name>.run`` with a default config plus ``overrides``; a finished run is not rerun."""
    from plcli import stages

    metrics = out / "metrics.json"
    if metrics.exists():
        return json.loads(metrics.read_text())
    stage = stages.get(name)
    cfg = stage.load_config(None, {"out": str(out), **overrides})
    log(f"{name} -> {out}")
    return stage.run(cfg, log=lambda *m: None)


def pretrain(a: BenchConfig, bench: Path, paths: dict, seed: int, rate: float | None = None) -> dict:
    """One encoder per exact-label rate and seed, shared by rows 4 and 6 (``rate`` None: the highest
    rate's, which the oracle starts from). Pretraining's transcript CTC reads the exact labels (and
    the recogniser's vote), so a rate's cells must not share a run that saw another rate's labels;
    its kNN probe only monitors, and the last epoch's encoder is kept."""
    rate = max(r for r, s in paths["manifests"] if s == seed) if rate is None else rate
    manifest = paths["manifests"][(rate, seed)][0]
    out = bench / "runs" / f"pretrain-r{rate:g}-s{seed}"
    m = run_stage(
        "pretrain",
        out,
        {
            "data.manifests": [str(manifest)],
            "data.cache_dir": str(a.cache),
            "views": a.views,
            **trainer_opts(a, a.pretrain_epochs, seed),
            # --pretrain-epochs means that many epochs (a smoke run), not at least min_steps
            **({"min_steps": 0} if a.pretrain_epochs else {}),
        },
    )
    return {"dir": out, "seconds": m.get("total_seconds")}


def pipeline_cell(
    a: BenchConfig,
    bench: Path,
    paths: dict,
    row: str,
    rate: float,
    seed: int,
    pretrained: bool = True,
    teacher: bool = False,
    teacher_only: bool = False,
) -> dict:
    """Rows 4 (``simclrv2``) and 6 (``plcli``): pretrain -> finetune -> distill, evaluated on val and test.

    ``pretrained=False``: finetune ``--pretrained none`` (a random frozen encoder), no pretrain run;
    ``teacher=True``: the cell also holds the finetune model's own cell under ``"teacher"``;
    ``teacher_only=True``: stop after finetune and return the teacher's cell (row ``"teacher"``). The
    runs are the ones the full cell uses, so computing it later only adds the distill run.
    """
    from plcli.models.classifier import load_model

    pre = pretrain(a, bench, paths, seed, rate) if pretrained else None
    manifest, nocand = paths["manifests"][(rate, seed)]
    tag = f"{row}-r{rate:g}-s{seed}"
    ft_dir, ds_dir = bench / "runs" / f"{tag}-finetune", bench / "runs" / f"{tag}-distill"
    ft = run_stage(
        "finetune",
        ft_dir,
        {
            "data.manifests": [str(manifest)],
            "data.cache_dir": str(a.cache),
            "pretrained": str(pre["dir"]) if pre else "none",
            "truth": str(paths["truth"]),
            "loss": "ce-only" if row == "simclrv2" else None,
            # row 6b: the default pipeline without the speech recogniser's vote (docs/asr-prior.md)
            "asr_prior": "none" if row in ("simclrv2", "plcli-no-vote") else None,
            **trainer_opts(a, a.finetune_epochs, seed),
            **({"min_steps": 0} if a.finetune_epochs else {}),
        },
    )
    seconds = {"pretrain": pre["seconds"]} if pre else {}
    seconds["finetune"] = ft.get("total_seconds")

    def teacher_cell() -> dict:
        return finish_cell(a, paths, "teacher", rate, seed, *load_model(ft_dir), dict(seconds))

    if teacher_only:
        return teacher_cell()
    if row == "simclrv2":
        # textbook SimCLRv2 distillation: the teacher's full softmax on every row, no candidate sets
        # (a manifest without them), no confidence filter, no candidate refinement, one round
        dist = {"data.manifests": [str(nocand)], "confidence": 0.0, "refine": False, "rounds": 1}
    else:
        dist = {"data.manifests": [str(manifest)], "truth": str(paths["truth"])}
    ds = run_stage(
        "distill",
        ds_dir,
        {
            "teacher": str(ft_dir),
            "data.cache_dir": str(a.cache),
            **dist,
            **trainer_opts(a, a.distill_epochs, seed),
        },
    )
    times = {**seconds, "distill": ds.get("total_seconds")}
    cell = finish_cell(a, paths, row, rate, seed, *load_model(ds_dir), times)
    if teacher:
        cell["teacher"] = teacher_cell()
    return cell


def finish_cell(a: BenchConfig, paths, row, rate, seed, model, vocab, features, seconds) -> dict:
    """Test and validation metrics and the inference throughput of a trained row's classifier."""
    from bench.baselines import clips_per_second, evaluate_model
    from plcli.data.audio import load_audio
    from plcli.data.validate import load_rows

    test = load_rows([paths["test"]], vocab.normalizer, log=lambda *m: None).rows
    val = load_rows([paths["val"]], vocab.normalizer, log=lambda *m: None).rows
    tm = evaluate_model(model, vocab, features, test, str(a.cache))
    vm = evaluate_model(model, vocab, features, val, str(a.cache)) if val else {}
    waves = [load_audio(r.audio, features.sample_rate, features.clip_seconds) for r in test[:256]]
    return {
        "row": row,
        "rate": rate,
        "seed": seed,
        "accuracy": tm["accuracy"],
        "accuracy_within": tm["accuracy_within_candidates"],
        "macro_f1": tm["macro_f1"],
        "val_accuracy": vm.get("accuracy"),
        "val_accuracy_within": vm.get("accuracy_within_candidates"),
        "test_rows": tm["labelled_rows"],
        "seconds": seconds,
        "clips_per_second": clips_per_second(model, features, waves, threads=2),
    }


def baseline_cell(
    a: BenchConfig,
    bench: Path,
    paths: dict,
    row: str,
    rate: float,
    seed: int,
    init_encoder: Path | None = None,
) -> dict:
    """Rows 1-3: the student trained directly on its label source (cached augmented views);
    ``init_encoder``: a pretrain run's encoder.pt that the student starts from (else from scratch)."""
    from bench.baselines import BaselineConfig, train_baseline
    from plcli.config import FeatureConfig
    from plcli.data.augment import AugmentConfig
    from plcli.data.features import FeatureCache
    from plcli.data.labels import Vocabulary
    from plcli.data.manifest import read_truth
    from plcli.data.validate import load_rows
    from plcli.runs import Timer, set_threads

    set_threads()
    manifest = paths["manifests"][(rate, seed)][0]
    rows = load_rows([manifest], log=lambda *m: None).rows
    vocab = Vocabulary.from_rows(rows)
    features, augment = FeatureConfig(), AugmentConfig()
    t = Timer()
    # the pretrain stage's view cache (same augmentations, view count and seed): computed once
    _, views = FeatureCache(a.cache, features).views(
        [r.audio for r in rows], augment.waveform_params(), a.views, seed, workers=os.cpu_count() or 1
    )
    feat_s = t.seconds
    cfg = BaselineConfig(
        seed=seed,
        epochs=a.baseline_epochs,
        min_steps=a.baseline_min_steps,
        accelerator=a.accelerator,
        init_encoder=str(init_encoder) if init_encoder else None,
    )
    model, info = train_baseline(
        row,
        rows,
        vocab,
        views,
        features.n_mels,
        cfg,
        truth=read_truth(paths["truth"]),
        spec_augment=augment.spec.to_dict(),
        mel_range=[features.f_min, features.f_max],
    )
    log(f"{row} r={rate:g} s={seed}: {info}")
    cell = finish_cell(
        a, paths, row, rate, seed, model, vocab, features, {"views": feat_s, "train": info["fit_seconds"]}
    )
    return {**cell, "student": info["student"], "student_init": info["student_init"]}


def asr_cell(a: GridConfig, bench: Path, paths: dict) -> dict:
    """Row 5: pocketsphinx transcripts (cached), scorer chosen on the validation speakers, test accuracy."""
    from bench.asr import SCORERS, asr_predict, transcribe_files
    from plcli.data.labels import Vocabulary
    from plcli.data.validate import load_rows
    from plcli.metrics import accuracy

    manifest = paths["manifests"][(max(a.rates), a.seeds[0])][0]
    vocab = Vocabulary.from_rows(load_rows([manifest], log=lambda *m: None).rows)
    splits = {}
    for split in ("val", "test"):
        rows = load_rows([paths[split]], log=lambda *m: None).rows
        if split == "val":
            rows = rows[: a.asr_val_rows]

        def transcribe(rows=rows, split=split):
            log(f"pocketsphinx: transcribing {len(rows)} {split} clips with {a.asr_workers} processes ...")
            texts, timing = transcribe_files([r.audio for r in rows], workers=a.asr_workers)
            return {"ids": [r.id for r in rows], "transcripts": texts, **timing}

        path = bench / "cells" / f"asr-transcripts-{split}.json"
        tr = cached_cell(path, transcribe)
        if tr["ids"] != [r.id for r in rows]:
            path.unlink()
            tr = cached_cell(path, transcribe)
        y = np.array([vocab.index(r.label) if vocab.index(r.label) is not None else -1 for r in rows])
        has = np.array([bool(r.candidates) for r in rows])
        splits[split] = (rows, tr, y, has)

    def scores(split, scorer):
        rows, tr, y, has = splits[split]
        p = asr_predict(rows, vocab, transcripts=tr["transcripts"], scorer=scorer, seed=0)
        return accuracy(p["pred_all"], y), accuracy(p["pred_within"][has], y[has])

    val_scores = {s: scores("val", s) for s in SCORERS}
    scorer = max(SCORERS, key=lambda s: val_scores[s][1])  # first listed wins ties (the default, 'ratio')
    acc, within = scores("test", scorer)
    tr = splits["test"][1]
    return {
        "row": "asr",
        "rate": None,
        "seed": None,
        "accuracy": acc,
        "accuracy_within": within,
        "val_accuracy": val_scores[scorer][0],
        "val_accuracy_within": val_scores[scorer][1],
        "scorer": scorer,
        "val_scores": val_scores,
        "test_rows": len(splits["test"][0]),
        "empty_transcripts": sum(not t for t in tr["transcripts"]),
        "seconds": {"transcribe": tr["decode_seconds"] / tr["workers"]},
        "clips_per_second": tr["clips_per_second"],
    }


def heard_labels(paths: dict, rate: float, seed: int, normalizer) -> set[str]:
    """Normalised true messages of the training manifest's recordings (its labels and their truth):
    a test message outside this set is "never heard"."""
    from plcli.data.manifest import read_truth
    from plcli.data.validate import load_rows

    truth = read_truth(paths["truth"])
    rows = load_rows([paths["manifests"][(rate, seed)][0]], log=lambda *m: None).rows
    labels = [r.label for r in rows if r.label] + [truth[r.id] for r in rows if r.id in truth]
    return {normalizer(t) for t in labels}


def grammar_cell(a: GridConfig, bench: Path, paths: dict) -> dict:
    """Row 5b: pocketsphinx with a grammar of each recording's own candidates (choices cached per
    split); within-candidate accuracy on test and validation, and on the never-heard test messages.

    All-class accuracy is not defined (the decoder can only answer one of the candidates): None.
    A recording the decoder returns nothing for gets a seeded random candidate (``score_choices``).
    """
    from plcli.data.labels import LabelNormalizer
    from plcli.data.validate import load_rows
    from plcli.grammar import choose_with_grammar, score_choices

    key = LabelNormalizer()
    heard = heard_labels(paths, max(a.rates), a.seeds[0], key)
    out = {}
    for split in ("val", "test"):
        rows = load_rows([paths[split]], log=lambda *m: None).rows
        if split == "val":
            rows = rows[: a.asr_val_rows]

        def decode(rows=rows, split=split):
            log(f"pocketsphinx grammar: {len(rows)} {split} clips with {a.asr_workers} processes ...")
            chosen, timing = choose_with_grammar(
                [r.audio for r in rows], [r.candidates for r in rows], workers=a.asr_workers
            )
            return {"ids": [r.id for r in rows], "chosen": chosen, **timing}

        path = bench / "cells" / f"asr-grammar-choices-{split}.json"
        ch = cached_cell(path, decode)
        if ch["ids"] != [r.id for r in rows]:
            path.unlink()
            ch = cached_cell(path, decode)
        scores = score_choices(
            [r.candidates for r in rows], [r.label for r in rows], ch["chosen"], heard, seed=0, normalizer=key
        )
        out[split] = (rows, ch, scores)
    _, ch, test = out["test"]
    val = out["val"][2]
    return {
        "row": "asr-grammar",
        "rate": None,
        "seed": None,
        "accuracy": None,
        "accuracy_within": test["accuracy_within"],
        "accuracy_within_unseen": test["accuracy_within_unseen"],
        "accuracy_within_seen": test["accuracy_within_seen"],
        "unseen_rows": test["unseen_rows"],
        "val_accuracy": None,
        "val_accuracy_within": val["accuracy_within"],
        "test_rows": test["rows"],
        "random_fallbacks": test["random_fallbacks"],
        "oov_rate": ch["oov_rate"],
        "oov_words": ch["oov_words"],
        "oov_dropped": ch["oov_dropped"],
        "seconds": {"decode": ch["decode_seconds"] / ch["workers"]},
        "clips_per_second": ch["clips_per_second"],
    }


# ---------------------------------------------------------------------------------------------
# The grid and the report
# ---------------------------------------------------------------------------------------------


def write_report(a: GridConfig, bench: Path, cells: list[dict], counts: dict, started: str) -> Path:
    rows = [r for r in ROWS if r in a.rows]
    chart = accuracy_chart(cells, bench / "accuracy.png", rows)
    single = [r for r in a.single_seed_rows if r in a.rows]
    text = "\n".join(
        [
            *report_header(cells, started),
            f"Data: {json.dumps(counts)}. Label rates {', '.join(f'{r * 100:g}%' for r in a.rates)}; seeds "
            f"{', '.join(map(str, a.seeds))}"
            + (f" (rows {', '.join(single)}: seed {a.seeds[0]} only)" if single else "")
            + ". The oracle and the recognisers do not depend on the label rate (same cells in every "
            "table); the recognisers do not depend on the seed. Accuracy is on the test manifest "
            "(speakers unseen in training), "
            "mean ± sample standard deviation over seeds.",
            "",
            results_markdown(cells, rows),
            f"![accuracy per row]({chart.name})",
            "",
        ]
    )
    atomic_write_text(bench / "results.md", text)
    atomic_write_json(bench / "results.json", cells)
    if a.docs:
        doc = Path(a.docs)
        png = Path(a.png) if a.png else doc.with_name("benchmark-accuracy.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chart, png)
        link = os.path.relpath(png, doc.parent)
        write_generated(
            doc, "The benchmark grid: results", text.replace(f"]({chart.name})", f"]({link})"), MAKE_TARGET
        )
        log(f"results written to {doc} and {png}")
    return bench / "results.md"


def parse(argv=None) -> GridConfig:
    """The grid's options (``scripts/benchmark.py --help``) as a ``GridConfig``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", default=BENCH_DIR, help="cells, runs, data and the report go here")
    ap.add_argument("--data", default=None, help="an existing plcli demo-data folder (default: generate one)")
    ap.add_argument("--cache", default=None, help="feature cache (default: BENCH/cache)")
    ap.add_argument("--phrases", type=int, default=40)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--data-seed", type=int, default=0, help="demo-data seed and speaker-split seed")
    ap.add_argument(
        "--val-speakers", type=float, default=0.1, help="share of training speakers held out for validation"
    )
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05], help="exact-label rates")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--rows",
        nargs="+",
        default=list(DEFAULT_ROWS),
        choices=ROWS,
        help=f"default: every row but the ablation {', '.join(r for r in ROWS if r not in DEFAULT_ROWS)}",
    )
    ap.add_argument(
        "--single-seed-rows",
        nargs="*",
        default=[],
        choices=ROWS,
        help="rows run with the first seed only (when the whole grid does not fit the machine)",
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
    ap.add_argument("--baseline-epochs", type=int, default=None, help="default: the distill stage's epochs")
    ap.add_argument("--baseline-min-steps", type=int, default=300)
    ap.add_argument("--asr-workers", type=int, default=2)
    ap.add_argument(
        "--asr-val-rows",
        type=int,
        default=300,
        help="validation clips of the recogniser rows (row 5 chooses its match scorer on them)",
    )
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument(
        "--docs",
        default=None,
        help="also write the report as this generated markdown page, whole "
        "(make bench: docs/results/grid.md)",
    )
    ap.add_argument(
        "--png", default=None, help="the page's chart (default with --docs: benchmark-accuracy.png beside it)"
    )
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    a = ap.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            if ap.get_default(k) == getattr(a, k):
                setattr(a, k, v)
        if a.bench_dir == BENCH_DIR:
            a.bench_dir = f"{BENCH_DIR}/quick"
    return config_from(
        GridConfig,
        a,
        edge_only=["quick"],
        # the baselines get the distilled student's training budget
        baseline_epochs=a.distill_epochs if a.baseline_epochs is None else a.baseline_epochs,
        cache=Path(a.cache or Path(a.bench_dir) / "cache").resolve(),
    )


def main(argv=None) -> int:
    a = parse(argv)
    code_version()
    bench = Path(a.bench_dir).resolve()
    started = utc_now()
    os.environ.setdefault("PLCLI_CACHE", str(a.cache))
    check_settings(a, bench)
    paths = prepare(a, bench)
    cells: list[dict] = []
    t0 = time.perf_counter()
    # most important rows first, so an interrupted run already has plcli against the oracle
    order = [
        r for r in ("plcli", "oracle", "plcli-no-vote", "exact", "indicator-mse", "simclrv2") if r in a.rows
    ]
    for row in order:
        for seed in a.seeds:
            for rate in a.rates:
                if row in a.single_seed_rows and seed != a.seeds[0]:
                    continue
                # the oracle ignores the exact labels: one cell per seed, shown at every rate
                key = f"{row}-s{seed}" if row == "oracle" else f"{row}-r{rate:g}-s{seed}"
                fn = pipeline_cell if row in ("plcli", "plcli-no-vote", "simclrv2") else baseline_cell
                t = time.perf_counter()
                c = cached_cell(
                    bench / "cells" / f"{key}.json",
                    stamped(
                        lambda fn=fn, row=row, rate=rate, seed=seed: fn(a, bench, paths, row, rate, seed)
                    ),
                )
                cells.append({**c, "rate": rate})
                log(
                    f"cell {key}: accuracy {c['accuracy']:.3f}, within {c['accuracy_within']:.3f} "
                    f"({time.perf_counter() - t:.0f} s; {time.perf_counter() - t0:.0f} s so far)"
                )
    if "asr" in a.rows:
        c = cached_cell(bench / "cells" / "asr.json", stamped(lambda: asr_cell(a, bench, paths)))
        cells.extend({**c, "rate": rate, "seed": a.seeds[0]} for rate in a.rates)
        log(f"asr ({c['scorer']}): accuracy {c['accuracy']:.3f}, within {c['accuracy_within']:.3f}")
    if "asr-grammar" in a.rows:
        c = cached_cell(bench / "cells" / "asr-grammar.json", stamped(lambda: grammar_cell(a, bench, paths)))
        cells.extend({**c, "rate": rate, "seed": a.seeds[0]} for rate in a.rates)
        unseen = c.get("accuracy_within_unseen")
        log(
            f"asr-grammar: within {c['accuracy_within']:.3f}, never heard "
            f"{'-' if unseen is None else f'{unseen:.3f}'} ({c.get('unseen_rows', 0)} rows)"
        )
    report = write_report(a, bench, cells, paths["counts"], started)
    print(report.read_text(encoding="utf-8"))
    return 0
