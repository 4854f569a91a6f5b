"""What the benchmark grid (``bench.grid``) and the learning curve (``bench.curve``) share, in one place.

- ``BenchConfig``: the options both take (demo data, training budget, machine), a typed dataclass
  that each command line builds (``config_from``) and every function takes instead of argparse's
  namespace; ``check_settings`` keeps a work folder to one set of them;
- the data: the demo set (``make_demo``), the speaker split, held-out messages, exact labels at a rate;
- the provenance of a cell (``stamped``: when, on which CPU, with which code) and of a report
  (``report_header``);
- ``write_generated``: a report published as a generated page of its own (docs/results/), which the
  hand-written docs link to.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from plcli.data.datasets import holdout_ids
from plcli.io import atomic_write_json, atomic_write_text


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BenchConfig:
    """The options the grid and the learning curve share (their command lines give the defaults and
    the help). ``SETTINGS``: the ones a work folder keeps fixed (``check_settings``)."""

    SETTINGS: ClassVar[tuple[str, ...]] = ()

    rows: list[str]  # the benchmark rows to run
    rates: list[float]  # exact-label rates
    seeds: list[int]
    cache: Path  # the feature cache (absolute)
    data: str | None = None  # an existing plcli demo-data folder (None: generate one)
    phrases: int  # messages in the demo vocabulary
    train: int | None  # training recordings to generate (the curve's None: as many as its largest N needs)
    test: int  # test recordings (unseen speakers)
    data_seed: int  # demo-data seed and speaker-split seed
    val_speakers: float  # share of the training speakers held out for validation
    views: int  # cached augmented views per clip
    pretrain_epochs: int | None  # exactly this many epochs (min_steps off); None: the stage's own
    finetune_epochs: int | None
    distill_epochs: int | None
    baseline_epochs: int | None  # the oracle's and the baselines' (None: the distill stage's)
    baseline_min_steps: int
    asr_workers: int  # pocketsphinx processes
    accelerator: str


def config_from(cls: type, ns: argparse.Namespace, edge_only: Sequence[str] = (), **given):
    """``cls`` (a config dataclass) from parsed options: each field from ``given``, else from ``ns``.
    Every option must be a field, except those named in ``edge_only`` (used by the parser alone,
    such as ``--quick``): an option added to a command line without its field fails here."""
    values = {**vars(ns), **given}
    names = {f.name for f in fields(cls)}
    if stray := sorted(set(values) - names - set(edge_only)):
        raise TypeError(f"{cls.__name__} has no field for the option(s) {', '.join(stray)}")
    return cls(**{k: v for k, v in values.items() if k in names})


def check_settings(a: BenchConfig, bench: Path, keys: Sequence[str] | None = None) -> None:
    """Cells and run directories are reused by name, so a bench folder holds one set of settings
    (the grid itself, rows, rates and seeds, may grow): the options named in ``keys`` (default: the
    config's ``SETTINGS``)."""
    now = {k: getattr(a, k) for k in (a.SETTINGS if keys is None else keys)}
    path = bench / "settings.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in now.items() if old.get(k) != v}
        if diff:
            sys.exit(
                f"{bench} holds a benchmark run with other settings "
                f"({', '.join(f'{k}: {o} -> {n}' for k, (o, n) in diff.items())}); use another output folder"
            )
    else:
        atomic_write_json(path, now)


# ---------------------------------------------------------------------------------------------
# Data: demo set, speaker split, label-rate manifests
# ---------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_demo(a: BenchConfig, data: Path, extra: Sequence[str] = ()) -> Path:
    """``plcli demo-data`` output (generated once; an existing folder given with --data is used as is);
    ``extra`` are more ``plcli demo-data`` options (``--zipf 0``)."""
    if a.data:
        return Path(a.data)
    demo = data / "demo"
    if not (demo / "truth.jsonl").exists():
        plcli = str(Path(sys.executable).with_name("plcli"))
        cmd = [
            plcli,
            "demo-data",
            str(demo),
            "--phrases",
            str(a.phrases),
            "--train",
            str(a.train),
            "--test",
            str(a.test),
            "--seed",
            str(a.data_seed),
            *extra,
        ]
        log("$ " + " ".join(shlex.quote(c) for c in cmd))
        subprocess.run(cmd, check=True)
    return demo


def absolute_audio(rows: list[dict], base: Path) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        p = Path(r["audio"]).expanduser()
        r["audio"] = str(p if p.is_absolute() else (base / p).resolve())
        out.append(r)
    return out


def split_speakers(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(fit rows, validation rows): a seeded ``fraction`` of the training speakers is held out."""
    spk = sorted({str(r.get("speaker", r["id"])) for r in rows})
    held = holdout_ids(spk, fraction, seed)
    return (
        [r for r in rows if str(r.get("speaker", r["id"])) not in held],
        [r for r in rows if str(r.get("speaker", r["id"])) in held],
    )


def hold_out_messages(fit: list[dict], truth: dict[str, str], share: float, seed: int, normalizer
                      ) -> tuple[list[dict], list[dict], list[str]]:
    """(kept rows, held rows, held message keys): a seeded ``share`` of the messages said in ``fit``
    (by ``truth``, keys from ``normalizer``) is held out of training.

    Every row whose truth is a held message leaves the kept rows, and the held texts leave the kept
    rows' candidate sets: a model trained on the kept rows has never met these messages, heard or
    typed, as with a test chat's new messages. The held rows then serve as validation rows on
    which never-heard messages can be measured. Rows without a truth stay."""
    said = sorted({normalizer(truth[r["id"]]) for r in fit if r["id"] in truth})
    k = int(round(share * len(said)))
    if not k:
        return list(fit), [], []
    held = sorted(said[i] for i in np.random.default_rng([seed, 31]).choice(len(said), size=k, replace=False))
    drop = set(held)
    kept, moved = [], []
    for r in fit:
        if r["id"] in truth and normalizer(truth[r["id"]]) in drop:
            moved.append(r)
        elif r.get("candidates"):
            kept.append({**r, "candidates": [t for t in r["candidates"] if normalizer(t) not in drop]})
        else:
            kept.append(r)
    return kept, moved, held


def split_counts(train: list[dict], fit: list[dict], val: list[dict], test: list[dict],
                 train_key: str = "train") -> dict:
    """Rows and speakers per split, and the speakers training and test share (must be none)."""
    spk = {name: {r.get("speaker") for r in rows} for name, rows in
           (("train", train), ("fit", fit), ("val", val), ("test", test))}
    return {
        train_key: len(train), "fit": len(fit), "val": len(val), "test": len(test),
        "fit_speakers": len(spk["fit"]), "val_speakers": len(spk["val"]), "test_speakers": len(spk["test"]),
        "speaker_overlap_train_test": len(spk["train"] & spk["test"]),
    }


def label_rows(rows: list[dict], truth: dict[str, str], rate: float, seed: int, normalizer) -> list[dict]:
    """The rows with an exact label on a seeded ``rate`` share of them (labels from the truth file).

    Only rows whose candidate set contains the truth (or that have none) can carry a label, as
    ``plcli validate`` requires.
    """
    eligible = [
        r["id"]
        for r in rows
        if r["id"] in truth
        and (
            not r.get("candidates") or normalizer(truth[r["id"]]) in {normalizer(c) for c in r["candidates"]}
        )
    ]
    n = max(1, round(rate * len(rows)))
    chosen = holdout_ids(eligible, min(1.0, n / max(1, len(eligible))), 1000 + seed) if eligible else set()
    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if k != "label"}
        if r["id"] in chosen:
            r["label"] = truth[r["id"]]
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# Provenance: when, where and with which code a cell and a report were made
# ---------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and the core count."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu_name()}, GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


@functools.cache
def code_version() -> str:
    """The git commit of the plcli source tree (with ``+dirty`` when plcli/ or the benchmark's own
    code, scripts/bench/, has uncommitted changes), or the package version outside a checkout. Read
    once per process: a long benchmark stamps its cells with the code it started with, not with
    edits made while it runs (the benchmark mains call it first)."""
    import plcli

    src = Path(plcli.__file__).resolve().parent
    here = Path(__file__).resolve().parent
    mine = [str(here)] if here.parent.parent == src.parent else []  # the benchmark beside this plcli
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", ".", *mine],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"plcli {plcli.__version__}"
    return head + ("+dirty" if dirty else "")


def utc_now() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"


STAMPS = ("finished", "cpu", "code")  # what ``stamped`` adds to a cell


def stamped(compute):
    """``compute`` whose cell records when it finished, on which CPU and with which plcli code: a
    benchmark folder can be completed over several sessions, and the report says what it mixes."""
    return lambda: {**compute(), **dict(zip(STAMPS, (utc_now(), cpu_name(), code_version())))}


def provenance(cells: Sequence[dict]) -> str:
    """One sentence: the CPUs and code versions the cells were computed with, and how many each."""
    from collections import Counter

    parts = []
    for key, what in (("cpu", "CPU"), ("code", "code")):
        counts = Counter(c.get(key) or "not recorded" for c in cells)
        parts.append(f"{what}: " + "; ".join(f"{k} ({n} cells)" for k, n in sorted(counts.items())))
    return ". ".join(parts) + "."


def report_header(cells: Sequence[dict], started: str) -> list[str]:
    """A report's first lines: when its cells finished, where it was written, where the cells were
    computed, and the command."""
    stamps = [c.get("finished") or started for c in cells] or [started]
    return [
        f"Cells finished between {min(stamps)} and {max(stamps)} UTC; "
        f"report written {utc_now()} on: {machine()}.",
        "",
        "Cells computed on " + provenance(cells),
        "",
        "Command: `" + " ".join(shlex.quote(x) for x in [Path(sys.executable).name, *sys.argv]) + "`",
        "",
    ]


def generated_note(target: str) -> str:
    """The first line of a generated page: that it is generated, and by which make target."""
    return f"<!-- generated by `{target}`: do not edit by hand (the command that wrote it is below) -->"


def write_generated(doc: str | Path, title: str, text: str, target: str) -> None:
    """``text`` as the whole of the markdown page ``doc`` (folders made), under ``generated_note(target)``
    and the heading ``title``; whatever the page held before is replaced."""
    atomic_write_text(doc, f"{generated_note(target)}\n\n# {title}\n\n{text}")
