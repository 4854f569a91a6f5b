"""What every training stage shares on the Lightning side: the Trainer, resume, the optimiser.

Run directories, metrics files and timing are in ``plcli.runs`` (no Lightning), so inference can
use them too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from plcli.config import TrainerConfig
from plcli.errors import UserError
from plcli.runs import CKPT_DIR


def build_trainer(tc: TrainerConfig, out: Path, monitor: str | None = None, mode: str = "max",
                  extra_callbacks: list | None = None, **kwargs) -> L.Trainer:
    """A Lightning Trainer with the project's checkpointing, logging and progress conventions."""
    ckpt_dir = out / CKPT_DIR
    callbacks: list = [
        # last.ckpt after every epoch (Lightning's save_last only follows the monitored checkpoint)
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        CheckpointOnInterrupt(ckpt_dir),
    ]
    if monitor:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    bar = tc.progress and sys.stderr.isatty()  # a log file gets one line per epoch instead
    if bar:
        callbacks.append(
            RichProgressBar(leave=True) if importlib.util.find_spec("rich") else TQDMProgressBar()
        )
    elif tc.progress:
        callbacks.append(EpochLines())
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
        sync_batchnorm=_sync_batchnorm(tc),
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
        enable_progress_bar=bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )


class NoAdvertising(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines from every stage's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(NoAdvertising())


class EpochLines(Callback):
    """One line per epoch for a log file (no TTY): the epoch, its logged metrics and its seconds."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        keep = {
            k: v for k, v in trainer.callback_metrics.items() if not k.endswith("_step") and v.numel() == 1
        }
        metrics = "  ".join(f"{k.removesuffix('_epoch')} {float(v):.4g}" for k, v in sorted(keep.items()))
        seconds = time.perf_counter() - getattr(self, "t0", time.perf_counter())
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {metrics}  ({seconds:.1f} s)",
            flush=True,
        )


def _sync_batchnorm(tc: TrainerConfig) -> bool:
    """``tc.sync_batchnorm`` where torch can do it: its SyncBatchNorm runs on GPU devices only, so
    CPU processes (gloo) keep per-process BatchNorm statistics. Single-process strategies ignore it."""
    if not tc.sync_batchnorm or tc.accelerator == "cpu":
        return False
    if tc.accelerator == "auto":
        return torch.cuda.is_available()
    return tc.accelerator in ("gpu", "cuda", "xpu", "hpu")


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
                f"interrupted; checkpoint saved to {out / CKPT_DIR / 'last.ckpt'}; continue with --resume "
                f"auto"
            ) from None
        raise


def epochs_for_steps(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """``epochs``, or more where that many epochs would stay under ``min_steps`` optimiser steps.

    A small data set gives few steps per epoch; both pretraining and the head on the frozen encoder
    kept improving well past the steps that a fixed epoch count gives it (docs/benchmark.md),
    while a large data set reaches them in fewer epochs.
    """
    return max(epochs, math.ceil(min_steps / max(1, steps_per_epoch)))


def with_min_steps(tc: TrainerConfig, min_steps: int, steps_per_epoch: int, log=print) -> TrainerConfig:
    """``tc`` with as many epochs as ``epochs_for_steps`` gives, saying so where it adds epochs."""
    epochs = epochs_for_steps(tc.epochs, min_steps, steps_per_epoch)
    if epochs > tc.epochs:
        log(f"training {epochs} epochs ({steps_per_epoch} steps each) to reach min_steps={min_steps}")
    return dataclasses.replace(tc, epochs=epochs)


def graph_zero(module: torch.nn.Module) -> torch.Tensor:
    """A zero loss that every parameter of ``module`` takes part in: a step that skips the module's
    loss returns it, so DDP still finds a gradient for each of them (it fails on unused parameters)."""
    return sum(p.sum() for p in module.parameters()) * 0.0


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float = 0.05):
    """Linear warm-up then cosine decay to 0, stepped every optimizer step."""
    total = max(1, int(total_steps))
    warm = max(1, int(total * warmup_frac))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def no_decay(param: torch.nn.Parameter) -> bool:
    """Biases and norm scales/shifts (every 1-D parameter) are not weight-decayed."""
    return param.ndim <= 1


def adamw_cosine(
    groups: Iterable[tuple[Iterable[torch.nn.Parameter], float]], weight_decay: float, total_steps: int
) -> dict:
    """What ``configure_optimizers`` returns for every stage: AdamW with cosine warm-up, per step.

    ``groups`` pairs parameters with their learning rate; each pair becomes two AdamW groups,
    decayed weights and undecayed biases and norm parameters.
    """
    param_groups = []
    for params, lr in groups:
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if not no_decay(p)]
        rest = [p for p in params if no_decay(p)]
        param_groups += [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": rest, "lr": lr, "weight_decay": 0.0},
        ]
    opt = torch.optim.AdamW([g for g in param_groups if g["params"]])
    sched = cosine_with_warmup(opt, total_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
