"""Run directories, without Lightning: open one safely, read an upstream run, write metrics.

Every stage keeps one promise: input that is rejected leaves no run behind. A stage therefore
checks everything it can (manifests, upstream runs, vocabularies) before ``start_run``, the
first call that writes into ``RUN_DIR``.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import plcli
from plcli.config import Config, read_run_config
from plcli.errors import UserError
from plcli.io import atomic_write_json, atomic_write_text

CKPT_DIR = "checkpoints"
FORMAT_VERSION = 1


def is_worker_rank() -> bool:
    """True in the extra processes of a multi-process run (Lightning's DDP launcher re-runs the
    command with ``LOCAL_RANK`` >= 1): the run directory is rank 0's and already open."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def prepare_run_dir(out: str | Path, stage: str, resume: str | None, overwrite: bool = False) -> Path:
    """Check that ``out`` may hold this stage's run and create the folder; writes no config yet."""
    out = Path(out)
    if is_worker_rank():
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if (out / "config.yaml").exists():
        _check_existing(out, stage, resume, overwrite)
        if resume is None:
            shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run directory {out}: {e.strerror or e}") from None
    return out


def check_run_dir(out: str | Path, stage: str, resume: str | None, overwrite: bool = False,
                  vocab=None) -> None:
    """Every refusal of ``start_run``, without writing anything (for checks before the inputs are read)."""
    out = Path(out)
    if is_worker_rank():
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if (out / "config.yaml").exists():
        _check_existing(out, stage, resume, overwrite)
        if vocab is not None and resume is not None:
            _check_vocab(out, vocab)


def _check_existing(out: Path, stage: str, resume: str | None, overwrite: bool) -> None:
    old = read_run_config(out)
    if resume is None:
        if not overwrite:
            raise UserError(
                f"{out} already holds a {old.get('stage', 'plcli')} run; use --resume auto to continue it, "
                "--overwrite to replace it, or another --out"
            )
    elif old.get("stage") != stage:
        raise UserError(f"cannot resume: {out} holds a {old.get('stage')} run, not a {stage} run")
    elif old.get("plcli_format") != FORMAT_VERSION:
        raise UserError(f"cannot resume: {out} was written by an incompatible plcli version")


def _check_vocab(out: Path, vocab) -> None:
    if not (out / "vocab.json").exists():
        return
    from plcli.data.labels import Vocabulary

    old = Vocabulary.load(out / "vocab.json")
    if old.keys != vocab.keys:
        added, gone = sorted(set(vocab.keys) - set(old.keys)), sorted(set(old.keys) - set(vocab.keys))
        raise UserError(
            f"cannot resume {out}: the label vocabulary differs from the run's "
            f"({len(added)} new label(s) {added[:3]}, {len(gone)} missing {gone[:3]}); "
            "use the same manifests, or start a new run"
        )


def start_run(out: str | Path, cfg: Config, stage: str, resume: str | None, overwrite: bool = False,
              vocab=None, log=print) -> Path:
    """Open the run directory once the inputs are known to be good: checks, then config and vocabulary.

    Nothing is written when resuming is refused (another stage, another plcli format, or another
    label vocabulary than the run was started with). Worker ranks of a DDP run write nothing. A
    resumed run keeps the settings it started with where its config predates them
    (``Config.keep_resumed``): ``cfg`` is changed in place, and ``log`` says which.
    """
    check_run_dir(out, stage, resume, overwrite, vocab)
    if (Path(out) / "config.yaml").exists() and resolve_resume(Path(out), resume) is not None:
        kept = cfg.keep_resumed(read_run_config(out), worker=is_worker_rank())
        if kept:
            log("resuming a run from before " + ", ".join(kept) + ": it continues with "
                + ", ".join(f"{k}={v!r}" for k, v in kept.items()) + ", as it started")
    out = prepare_run_dir(out, stage, resume, overwrite)
    if is_worker_rank():
        return out
    save_config(out, cfg, stage)
    if vocab is not None:
        vocab.save(out / "vocab.json")
    return out


def save_config(out: Path, cfg: Config, stage: str) -> None:
    """``config.yaml``: the resolved configuration plus the stage name and format version."""
    import yaml

    data = {"stage": stage, "plcli_version": plcli.__version__, "plcli_format": FORMAT_VERSION,
            **cfg.to_dict()}
    atomic_write_text(Path(out) / "config.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def resolve_resume(out: Path, resume: str | None) -> str | None:
    """``auto``: RUN_DIR/checkpoints/last.ckpt when it exists (else start fresh); or an explicit path."""
    if resume is None:
        return None
    if resume == "auto":
        last = Path(out) / CKPT_DIR / "last.ckpt"
        return str(last) if last.exists() else None
    p = Path(resume)
    if p.is_dir():
        p = p / CKPT_DIR / "last.ckpt"
    if not p.is_file():
        raise UserError(f"--resume: checkpoint not found: {p}")
    return str(p)


# ---------------------------------------------------------------------------------------------
# Reading an upstream run
# ---------------------------------------------------------------------------------------------


@dataclass
class UpstreamRun:
    """An earlier run that a stage builds on: its folder, stage and resolved ``config.yaml``."""

    path: Path
    stage: str | None
    config: dict

    def get(self, dotted: str, default=None):
        """``run.get("trainer.seed", 0)``: a value of the run's config by dotted name."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def as_config(self, cls: type[Config]) -> Config:
        """The run's resolved config as the stage's dataclass (keys of other plcli versions are ignored)."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in self.config.items() if k in names}, where=f"{self.path}: ")

    def section(self, cls: type[Config], name: str) -> Config:
        """A config section (``features``, ``augment``, ...) of the run as its dataclass."""
        if name not in self.config:
            raise UserError(f"{self.path}: config.yaml has no {name} section")
        return cls.from_dict(self.config[name], where=f"{self.path}: {name}.")

    def metrics(self) -> dict:
        """The run's ``metrics.json`` ({} when it has none)."""
        import json

        p = self.path / "metrics.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def read_upstream(run_dir: str | Path, flag: str, stages: tuple[str, ...] | None = None) -> UpstreamRun:
    """The run in ``run_dir`` (given as ``flag``), checked to be one of ``stages``."""
    p = Path(run_dir)
    cfg = read_run_config(p)
    stage = cfg.get("stage")
    if stages is not None and stage not in stages:
        raise UserError(f"{flag} {run_dir} is a {stage} run, not a {' or '.join(stages)} run")
    return UpstreamRun(p, stage, cfg)


# ---------------------------------------------------------------------------------------------
# Metrics and timing
# ---------------------------------------------------------------------------------------------


def logged_history(out: Path, key: str) -> list[float]:
    """Per-epoch values of ``key`` across every (re)start's ``logs/version_*/metrics.csv``, by epoch."""
    by_epoch: dict[int, float] = {}
    versions = sorted((out / "logs").glob("version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.split("_")[1]))
    for p in versions:
        with p.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get(key) and row.get("epoch"):
                    by_epoch[int(row["epoch"])] = float(row[key])
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_metrics(out: Path, metrics: dict) -> dict:
    """Write ``metrics.json`` atomically; returns the JSON-ready dict (tensors become numbers)."""
    data = jsonable(metrics)
    atomic_write_json(out / "metrics.json", data)
    return data


def jsonable(x):
    """``x`` with tensors, numpy scalars and non-finite floats made JSON-ready (nan -> None)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "numel") and hasattr(x, "tolist"):  # a torch tensor
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


class Timer:
    """Seconds since construction (``perf_counter``)."""

    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def set_threads() -> None:
    """Use every core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
