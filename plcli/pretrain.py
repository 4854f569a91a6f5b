"""Stage 1: SimCLR(v2) contrastive pretraining of the audio encoder on all the audio.

Data path (CPU first): each clip's ``views`` augmented copies (audiomentations on the waveform,
then log-mel) are computed once into the feature cache; every step draws two different cached
views per clip and applies cheap batched spectrogram augmentations (masking, mixup, resize-crop)
on the fly. The data side of a step is then one memory-mapped read, so end-to-end throughput
is close to the model's own. ``--online-augment`` instead augments waveforms in DataLoader
workers every step (for machines with many cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from plcli.config import Config, DataConfig, FeatureConfig, TrainerConfig, opt
from plcli.data.augment import AugmentConfig, SpecAugmentConfig, SpectrogramAugment
from plcli.data.datasets import (
    FeatureRows,
    ViewPairs,
    label_vector,
    load_training_rows,
    open_cache,
    view_workers,
)
from plcli.data.labels import LabelNormalizer, Vocabulary
from plcli.errors import UserError
from plcli.losses import NTXentLoss
from plcli.models.encoders import ENCODERS, build_encoder
from plcli.models.heads import ProjectionHead
from plcli.runs import Timer, jsonable, logged_history, resolve_resume, set_threads, start_run, write_metrics
from plcli.training import adamw_cosine, build_trainer, fit

STAGE = "pretrain"


@dataclass
class PretrainConfig(Config):
    """``plcli pretrain`` options."""

    out: str = opt("", "run directory")
    data: DataConfig = opt(factory=DataConfig, help="inputs")
    features: FeatureConfig = opt(factory=FeatureConfig, help="log-mel front end (inherited by later stages)")
    trainer: TrainerConfig = opt(factory=lambda: TrainerConfig(epochs=30, batch_size=256, lr=2e-3), help="training")
    augment: AugmentConfig = opt(factory=AugmentConfig, help="waveform and spectrogram augmentations")
    encoder: str = opt("tcresnet", "encoder architecture", choices=sorted(ENCODERS))
    proj_hidden_dim: int = opt(256, "projection head hidden width", min=8)
    proj_dim: int = opt(128, "projection output size (the NT-Xent space)", min=8)
    proj_layers: int = opt(3, "projection head depth (SimCLRv2 uses 3)", min=1)
    temperature: float = opt(0.2, "NT-Xent temperature", min=1e-3)
    views: int = opt(8, "augmented views per clip pre-computed into the feature cache", min=2)
    online_augment: bool = opt(False, "augment waveforms every step in DataLoader workers instead of caching views")
    probe_k: int = opt(5, "k of the kNN probe on exact rows", min=1)
    overwrite: bool = opt(False, "replace an existing run in out")

    def check(self) -> None:
        if not self.data.manifests:
            raise UserError("no training manifest given")


class PretrainModule(L.LightningModule):
    """Encoder + SimCLRv2 projection head trained with NT-Xent; a kNN probe on exact rows as validation."""

    def __init__(self, encoder: str = "tcresnet", n_mels: int = 64, proj_hidden_dim: int = 256, proj_dim: int = 128,
                 proj_layers: int = 3, temperature: float = 0.2, lr: float = 2e-3, weight_decay: float = 1e-4,
                 spec_augment: dict | None = None, feature_config: dict | None = None, probe_k: int = 5,
                 num_classes: int = 0):
        super().__init__()
        self.save_hyperparameters()  # primitives only: checkpoints load with weights_only
        self.encoder = build_encoder(encoder, n_mels)
        self.projector = ProjectionHead(self.encoder.embed_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.spec_aug = SpectrogramAugment(SpecAugmentConfig.from_dict(spec_augment or {}))
        self.criterion = NTXentLoss(temperature)
        self._probe: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel -> (B, embed_dim) representation."""
        return self.encoder(x)

    def training_step(self, batch, batch_idx):
        x0, x1 = batch
        z0 = self.projector(self.encoder(self.spec_aug(x0)))
        z1 = self.projector(self.encoder(self.spec_aug(x1)))
        if self.trainer.world_size > 1:
            # negatives from every rank, with gradients, so the loss equals the global-batch loss
            all0 = self.all_gather(z0, sync_grads=True).flatten(0, 1)
            all1 = self.all_gather(z1, sync_grads=True).flatten(0, 1)
            loss = self.criterion(z0, z1, all0, all1, rank=self.global_rank)
        else:
            loss = self.criterion(z0, z1)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        emb = F.normalize(self.encoder(batch["x"]), dim=1)
        self._probe.append((emb.float(), batch["y"]))

    def on_validation_epoch_end(self):
        if not self._probe:
            return
        emb = torch.cat([e for e, _ in self._probe])
        y = torch.cat([t for _, t in self._probe])
        self._probe.clear()
        if self.trainer.world_size > 1:
            emb = self.all_gather(emb).flatten(0, 1)
            y = self.all_gather(y).flatten(0, 1)
        acc = knn_accuracy(emb, y, self.hparams.probe_k)
        self.log("probe/knn_acc", acc, prog_bar=True, sync_dist=False, rank_zero_only=True)

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_cosine([(self.parameters(), hp.lr)], hp.weight_decay, self.trainer.estimated_stepping_batches)


def knn_accuracy(emb: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Leave-one-out kNN accuracy (cosine similarity, similarity-weighted vote) of unit-norm embeddings."""
    n = emb.shape[0]
    if n < 2:
        return float("nan")
    sim = emb @ emb.T
    sim.fill_diagonal_(-float("inf"))
    k = min(k, n - 1)
    top, idx = sim.topk(k, dim=1)
    num_classes = int(y.max()) + 1
    votes = torch.zeros(n, num_classes, device=emb.device)
    votes.scatter_add_(1, y[idx], (top + 1).clamp_min(0))  # shift cosine to [0, 2] so weights are >= 0
    return (votes.argmax(1) == y).float().mean().item()


def encoder_payload(module: PretrainModule) -> dict:
    """A plain, Lightning-free description of the trained encoder."""
    hp = dict(module.hparams)
    return {
        "format": 1,
        "encoder": hp["encoder"],
        "n_mels": hp["n_mels"],
        "embed_dim": module.encoder.embed_dim,
        "features": hp["feature_config"],
        "state_dict": {k: v.detach().cpu() for k, v in module.encoder.state_dict().items()},
    }


def run(cfg: PretrainConfig, log=print) -> dict:
    """Pretrain an encoder as ``cfg`` says; returns the final metrics (also in RUN_DIR/metrics.json)."""
    from plcli.io import atomic_torch_save

    timer = Timer()
    set_threads()
    rows = load_training_rows(cfg.data, Path(cfg.out), log=log).rows
    vocab = Vocabulary.from_rows(rows, LabelNormalizer(cfg.data.labels))
    out = start_run(cfg.out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite, vocab)
    L.seed_everything(cfg.trainer.seed, workers=True)
    cache = open_cache(cfg.data, cfg.features)
    t_feat = Timer()
    train_loader, val_loader = _loaders(cfg, rows, vocab, cache, log)
    feature_seconds = t_feat.seconds
    module = _module(cfg, len(vocab))
    monitor = "probe/knn_acc" if val_loader is not None else None
    trainer = build_trainer(cfg.trainer, out, monitor=monitor, mode="max")
    t_fit = Timer()
    fit(trainer, module, train_loader, val_loader, resolve_resume(out, cfg.trainer.resume), out)
    fit_seconds = t_fit.seconds
    if trainer.is_global_zero:
        atomic_torch_save(encoder_payload(module), out / "encoder.pt")
    logged = dict(trainer.callback_metrics)
    n_train = len(train_loader.dataset)
    metrics = {
        "stage": STAGE,
        "rows": len(rows),
        "exact_rows": int((label_vector(rows, vocab) >= 0).sum()),
        "classes": len(vocab),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_loss": logged.get("train/loss_epoch"),
        "probe_knn_acc": logged.get("probe/knn_acc"),
        "probe_knn_acc_history": logged_history(out, "probe/knn_acc"),
        "probe_chance": (1.0 / len(vocab)) if len(vocab) else None,
        "feature_seconds": feature_seconds,
        "fit_seconds": fit_seconds,
        "total_seconds": timer.seconds,
        "train_views_per_second": 2 * n_train * max(0, trainer.current_epoch) / max(fit_seconds, 1e-9),
        "cache": {"computed": cache.computed, "reused": cache.reused},
    }
    return write_metrics(out, metrics) if trainer.is_global_zero else jsonable(metrics)


def _loaders(cfg: PretrainConfig, rows, vocab, cache, log) -> tuple[DataLoader, DataLoader | None]:
    """Pairs of views to train on; the exact rows' clean features for the kNN probe (None without)."""
    paths = [r.audio for r in rows]
    keys = cache.keys(paths)
    log(f"pretraining on {len(rows)} recordings; caching {cfg.views} augmented views per clip ...")
    if cfg.online_augment:
        from plcli.data.datasets import OnlineViewPairs

        train_ds = OnlineViewPairs([str(p) for p in paths], cfg.augment, cfg.features)
        collate = None
    else:
        _, views = cache.views(paths, cfg.augment.waveform_params(), cfg.views, cfg.trainer.seed,
                               workers=view_workers(len(paths) * cfg.views, cfg.trainer.num_workers), keys=keys)
        train_ds = ViewPairs(views)
        collate = ViewPairs.collate_fn
    y = label_vector(rows, vocab)
    exact = np.flatnonzero(y >= 0)
    val_loader = None
    # clean features of every clip: the probe uses the exact ones, later stages reuse them all
    _, clean = cache.features(paths, keys=keys)
    if len(exact) >= 2:
        val_ds = FeatureRows(clean, index=exact, y=y[exact])
        val_loader = DataLoader(val_ds, batch_size=512, shuffle=False, collate_fn=FeatureRows.collate_fn)
    else:
        log("no exact labels: the kNN probe is off")
    bs = min(cfg.trainer.batch_size, len(train_ds))
    train_loader = DataLoader(
        train_ds, batch_size=bs, shuffle=True, drop_last=len(train_ds) >= 2 * bs, collate_fn=collate,
        num_workers=cfg.trainer.num_workers, persistent_workers=cfg.trainer.num_workers > 0,
    )
    return train_loader, val_loader


def _module(cfg: PretrainConfig, num_classes: int) -> PretrainModule:
    return PretrainModule(
        encoder=cfg.encoder, n_mels=cfg.features.n_mels, proj_hidden_dim=cfg.proj_hidden_dim, proj_dim=cfg.proj_dim,
        proj_layers=cfg.proj_layers, temperature=cfg.temperature, lr=cfg.trainer.lr,
        weight_decay=cfg.trainer.weight_decay, spec_augment=cfg.augment.spec.to_dict(),
        feature_config=cfg.features.to_dict(), probe_k=cfg.probe_k, num_classes=num_classes,
    )


def load_pretrained(run_dir: str | Path) -> PretrainModule:
    """The pretrain run's module, loaded through Lightning (weights_only) from its last checkpoint."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise UserError(f"{run_dir}: no checkpoints/last.ckpt; is it a finished plcli pretrain run?")
    try:
        return PretrainModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{ckpt}: cannot load the pretrained encoder ({e})") from None
