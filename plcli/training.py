"""What every training stage shares: run directories, the Lightning Trainer, resume, metrics."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

import plcli
from plcli.config import Config, TrainerConfig, read_run_config
from plcli.errors import UserError
from plcli.io import atomic_write_json

CKPT_DIR = "checkpoints"


def prepare_run_dir(out: str | Path, cfg: Config, stage: str, resume: str | None, overwrite: bool = False) -> Path:
    """Create (or reopen, when resuming) a run directory and write the resolved ``config.yaml``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    existing = out / "config.yaml"
    if existing.exists():
        old = read_run_config(out)
        if resume is None:
            if not overwrite:
                raise UserError(
                    f"{out} already holds a {old.get('stage', 'plcli')} run; use --resume auto to continue it, "
                    "--overwrite to replace it, or another --out"
                )
            shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
        elif old.get("stage") != stage:
            raise UserError(f"cannot resume: {out} holds a {old.get('stage')} run, not a {stage} run")
        elif old.get("plcli_format") != FORMAT_VERSION:
            raise UserError(f"cannot resume: {out} was written by an incompatible plcli version")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run directory {out}: {e.strerror or e}") from None
    return out


FORMAT_VERSION = 1


def start_run(out: str | Path, cfg: Config, stage: str, resume: str | None, overwrite: bool = False,
              vocab=None) -> Path:
    """Open the run directory once the inputs are known to be good: checks, then config and vocabulary.

    Nothing is written when resuming is refused (another stage, another plcli format, or another
    label vocabulary than the run was started with).
    """
    out = prepare_run_dir(out, cfg, stage, resume, overwrite)
    if vocab is not None and resume is not None and (out / "vocab.json").exists():
        from plcli.data.labels import Vocabulary

        old = Vocabulary.load(out / "vocab.json")
        if old.keys != vocab.keys:
            added, gone = sorted(set(vocab.keys) - set(old.keys)), sorted(set(old.keys) - set(vocab.keys))
            raise UserError(
                f"cannot resume {out}: the label vocabulary differs from the run's "
                f"({len(added)} new label(s) {added[:3]}, {len(gone)} missing {gone[:3]}); "
                "use the same manifests, or start a new run"
            )
    save_config(out, cfg, stage)
    if vocab is not None:
        vocab.save(out / "vocab.json")
    return out


def save_config(out: Path, cfg: Config, stage: str) -> None:
    """``config.yaml``: the resolved configuration plus the stage name and format version."""
    import yaml

    from plcli.io import atomic_write_text

    data = {"stage": stage, "plcli_version": plcli.__version__, "plcli_format": FORMAT_VERSION, **cfg.to_dict()}
    atomic_write_text(out / "config.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def resolve_resume(out: Path, resume: str | None) -> str | None:
    """``auto``: RUN_DIR/checkpoints/last.ckpt when it exists (else start fresh); or an explicit path."""
    if resume is None:
        return None
    if resume == "auto":
        last = out / CKPT_DIR / "last.ckpt"
        return str(last) if last.exists() else None
    p = Path(resume)
    if p.is_dir():
        p = p / CKPT_DIR / "last.ckpt"
    if not p.is_file():
        raise UserError(f"--resume: checkpoint not found: {p}")
    return str(p)


def build_trainer(tc: TrainerConfig, out: Path, monitor: str | None = None, mode: str = "max",
                  extra_callbacks: list | None = None, **kwargs) -> L.Trainer:
    """A Lightning Trainer with the project's checkpointing, logging and progress conventions."""
    ckpt_dir = out / CKPT_DIR
    callbacks: list = [
        # last.ckpt after every epoch (Lightning's save_last only follows the monitored checkpoint)
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False),
        CheckpointOnInterrupt(ckpt_dir),
    ]
    if monitor:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                                         auto_insert_metric_name=False, enable_version_counter=False))
    if tc.progress:
        callbacks.append(RichProgressBar(leave=True) if importlib.util.find_spec("rich") else TQDMProgressBar())
    callbacks.extend(extra_callbacks or [])
    # one version folder per (re)start: Lightning's CSV writer would otherwise drop the earlier history
    loggers: list = [CSVLogger(save_dir=str(out), name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out), name="tb"))
    devices: int | str | list[int] = tc.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    elif isinstance(devices, str) and "," in devices:
        devices = [int(d) for d in devices.split(",") if d.strip()]
    return L.Trainer(
        max_epochs=tc.epochs,
        accelerator=tc.accelerator,
        devices=devices,
        strategy=tc.strategy,
        num_nodes=tc.num_nodes,
        precision=tc.precision,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=tc.log_every_n_steps,
        deterministic=tc.deterministic,
        enable_progress_bar=tc.progress,
        enable_model_summary=False,
        default_root_dir=str(out),
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file next to the target, then renamed (same filesystem),
    so a crash or a full disk never leaves a truncated checkpoint that --resume would trust."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        from plcli.io import atomic_torch_save

        atomic_torch_save(checkpoint, path)


class CheckpointOnInterrupt(Callback):
    """Ctrl-C (or a crash) mid-epoch still leaves ``last.ckpt`` for ``--resume auto``.

    Lightning writes checkpoints atomically, so a kill during the save leaves the previous one.
    """

    def __init__(self, dirpath: Path):
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, (KeyboardInterrupt, SystemExit)) and trainer.global_step > 0:
            trainer.save_checkpoint(str(self.dirpath / "last.ckpt"))


class Interrupted(UserError):
    exit_code = 130


def fit(trainer: L.Trainer, module, train_loader, val_loader, ckpt_path: str | None, out: Path) -> None:
    """``trainer.fit`` that turns Lightning's Ctrl-C exit into a clear message and exit code 130."""
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    except SystemExit:
        if trainer.interrupted:
            raise Interrupted(
                f"interrupted; checkpoint saved to {out / CKPT_DIR / 'last.ckpt'}; continue with --resume auto"
            ) from None
        raise


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float = 0.05):
    """Linear warm-up then cosine decay to 0, stepped every optimizer step."""
    total = max(1, int(total_steps))
    warm = max(1, int(total * warmup_frac))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def logged_history(out: Path, key: str) -> list[float]:
    """Per-epoch values of ``key`` across every (re)start's ``logs/version_*/metrics.csv``, by epoch."""
    import csv

    by_epoch: dict[int, float] = {}
    versions = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
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
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def set_threads() -> None:
    """Use every core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
