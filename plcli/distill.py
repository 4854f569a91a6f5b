"""Stage 3: distil the fine-tuned teacher into a smaller student on candidate-constrained pseudo-labels.

Targets, one row per training recording, computed once from the teacher and cached in the run
directory (``targets.npy`` + ``targets.json``, so ``--resume`` and reruns do not recompute them):

- exact rows: the label, one-hot (the student's loss on them is plain cross-entropy);
- candidate rows: the teacher's probabilities at temperature ``T`` restricted to the row's
  candidate set and renormalised (``plcli.losses.candidate_targets``), optionally averaged over a
  few cached augmented views of the clip;
- rows without candidates: the teacher's full distribution at ``T``, kept only when the teacher's
  top-1 probability (at ``T = 1``, averaged over the same views) reaches ``--confidence``.
  The default 0.5 means the teacher's favourite outweighs every other class together, so the target
  points one way; it sits between Noisy Student's 0.3 for soft pseudo-labels over 1000 classes
  (Xie et al. 2020) and FixMatch's 0.95 for hard ones (Sohn et al. 2020). ``metrics.json`` reports
  how many rows were kept.

Vocabulary: the student predicts exactly the teacher's classes (its ``vocab.json`` is the
teacher's). Candidates unknown to the teacher are dropped from a row's set; a row whose candidates
are all unknown becomes a row without candidates; an exact row whose label is unknown is left out
(its known candidates cannot contain the truth).

Student: an encoder from ``ENCODERS`` (default ``tcresnet-small``) plus an MLP head, trained from
scratch on the cached augmented views (the pretrain stage's waveform augmentations, inherited from
the teacher's run so the cache is reused) with the batched spectrogram augmentations on top. Loss
per row: soft-target cross-entropy at ``T`` scaled by ``T**2`` (Hinton et al. 2015) on pseudo-labelled
rows, cross-entropy on exact rows (weighted by ``--exact-weight``); the batch loss is their
weighted mean.

``--cc-weight w`` mixes the candidate set's own evidence into a candidate row's loss:
``(1 - w) * distillation + w * CC``, where CC is the prior-corrected classifier-consistent loss
``-log sum_{j in S} p_j / q_j`` (``plcli.losses.CandidateLoss``; q = each class's share of candidate
slots). The teacher's targets give the student a fast start, and the likelihood term lets it
overrule the teacher where the candidate sets disagree with it, which the teacher (a head on a
frozen encoder) cannot do. The term needs a long schedule: it is why the default is 120 epochs.

``--refine`` (PRODEN-style disambiguation, Lv et al. 2020): after ``refine_start`` of the training
steps, every batch moves its candidate rows' targets towards the student's own
candidate-restricted prediction, ``target <- (1 - m) * target + m * candidate_targets(logits)``,
with the logits of a no-grad, eval-mode pass over the batch's cached view without the spectrogram
augmentations (mixup would blend in another row's class). The table is a buffer of the
LightningModule, so it is saved in every checkpoint and ``--resume`` continues from the refined
targets. Off by default: on a synthetic 10-class set with a weak teacher, refinement made the
targets more accurate but the student less accurate on average, with a larger spread over seeds
(``metrics.json`` reports both, ``targets_disambiguation_acc_*`` and ``disambiguation_acc``, given
``--truth``).

Held-out metrics: the finetune stage's validation split of the exact rows (same function, the
teacher's fraction and seed), so the student is never validated on rows its teacher trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from plcli.config import Config, DataConfig, LabelConfig, TrainerConfig, opt, read_run_config
from plcli.data.augment import AugmentConfig, SpecAugmentConfig, SpectrogramAugment
from plcli.data.datasets import (
    FeatureRows,
    ViewRows,
    candidate_matrix,
    holdout_ids,
    label_vector,
    load_training_rows,
    open_cache,
)
from plcli.errors import UserError
from plcli.evaluate import classification_metrics, covering_rate, restricted_predictions
from plcli.finetune import candidate_log_prior
from plcli.io import atomic_open, atomic_write_json
from plcli.losses import CandidateLoss, SoftTargetCrossEntropy, candidate_targets
from plcli.models.classifier import Classifier, save_model
from plcli.models.encoders import ENCODERS, count_parameters
from plcli.predict import load_predictor, predict_logits, softmax
from plcli.training import (
    Timer,
    build_trainer,
    cosine_with_warmup,
    fit,
    jsonable,
    logged_history,
    prepare_run_dir,
    resolve_resume,
    save_config,
    set_threads,
    write_metrics,
)

STAGE = "distill"
# row kinds in the target table
EXACT, CANDIDATE, FREE, DROPPED = 0, 1, 2, 3
KINDS = ("exact", "candidate", "no_candidate", "dropped")
TARGETS_VERSION = 1


@dataclass
class DistillConfig(Config):
    """``plcli distill`` options."""

    out: str = opt("", "run directory")
    teacher: str = opt("", "teacher run directory (finetune, or an earlier distill)")
    data: DataConfig = opt(
        factory=DataConfig, help="inputs (label normalisation and the held-out split come from the teacher)"
    )
    trainer: TrainerConfig = opt(
        factory=lambda: TrainerConfig(epochs=120, batch_size=256, lr=3e-3), help="training (per round)"
    )
    student: str = opt("tcresnet-small", "student encoder", choices=sorted(ENCODERS))
    head_hidden_dim: int = opt(128, "student head hidden width", min=1)
    head_layers: int = opt(2, "student head depth (1 = linear)", min=1)
    dropout: float = opt(0.1, "student head dropout", min=0.0, max=0.9)
    temperature: float = opt(
        2.0, "distillation temperature T (teacher targets and student soft loss)", min=0.05, max=100.0
    )
    confidence: float = opt(
        0.5,
        "rows without candidates are kept when the teacher's top-1 probability is at least this",
        min=0.0,
        max=1.0,
    )
    teacher_views: int = opt(
        0, "cached augmented views averaged with the clean clip for the teacher's targets", min=0
    )
    exact_weight: float = opt(
        1.0, "weight of an exact row's cross-entropy against a pseudo-labelled row's loss", min=0.0
    )
    prior_correction: bool = opt(True, "restrict p(j|x) / pi_j instead of p(j|x) to the candidates, pi = each class's share of candidate slots (as in finetune)")
    cc_weight: float = opt(
        0.8,
        "candidate rows' loss: (1 - w) * distillation + w * the candidate set's likelihood (prior-corrected CC loss)",
        min=0.0,
        max=1.0,
    )
    rounds: int = opt(
        3, "self-training rounds: round k's teacher is round k-1's student (each in RUN_DIR/round<k>)", min=1
    )
    refine: bool = opt(False, "progressively refine candidate rows' targets from the student (PRODEN-style)")
    refine_momentum: float = opt(
        0.1, "refinement step m: target <- (1-m) target + m student", min=0.0, max=1.0
    )
    refine_start: float = opt(0.5, "share of the training steps before refinement starts", min=0.0, max=1.0)
    views: int = opt(
        8, "augmented views per clip in the feature cache (inherited from the pretrain run)", min=1
    )
    view_seed: int | None = opt(
        None, "seed of the cached views (default: the pretrain run's seed, else trainer.seed)"
    )
    inherit_augment: bool = opt(
        True, "use the teacher's augmentations, view count and seed (reuses the cached views)"
    )
    augment: AugmentConfig = opt(
        factory=AugmentConfig, help="augmentations (inherited from the teacher by default)"
    )
    truth: str | None = opt(None, "optional JSONL/CSV of id,label: disambiguation accuracy on candidate rows")
    overwrite: bool = opt(False, "replace an existing run in out")

    def check(self) -> None:
        if not self.data.manifests:
            raise UserError("no training manifest given")
        if not self.teacher:
            raise UserError("--teacher is required (a finetune run directory)")
        if self.teacher_views > self.views:
            raise UserError(f"teacher_views={self.teacher_views} exceeds the {self.views} cached views")


# ---------------------------------------------------------------------------------------------
# Teacher targets
# ---------------------------------------------------------------------------------------------


def teacher_targets(
    logits: Tensor, mask: Tensor, y: Tensor, temperature: float, confidence: float,
    log_prior: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The distillation target table from the teacher's logits.

    Args:
        logits: (N, C) teacher logits, or (V, N, C) for V views of each row (averaged).
        mask: (N, C) bool candidate mask; an all-False row has no (known) candidates.
        y: (N,) exact label index, -1 where there is none.
        temperature: T of the teacher's softmax.
        confidence: threshold on the top-1 probability (T = 1) for rows without candidates.
        log_prior: optional (C,) log class share of candidate slots; candidate rows then restrict
            softmax(logits / T) / prior (see ``plcli.finetune.FinetuneModule.disambiguate``).

    Returns:
        targets (N, C) float32 probability rows, kind (N,) int64 (EXACT, CANDIDATE, FREE or DROPPED),
        and the teacher's (N,) top-1 probability at T = 1.
    """
    if logits.ndim == 2:
        logits = logits[None]
    if logits.ndim != 3 or logits.shape[1:] != mask.shape or y.shape != mask.shape[:1]:
        raise ValueError(
            f"shapes do not fit: logits {tuple(logits.shape)}, mask {tuple(mask.shape)}, y {tuple(y.shape)}"
        )
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence must be in [0, 1], got {confidence}")
    v, n, c = logits.shape
    logits = logits.float()
    # (V*N, C) -> (V, N, C) -> (N, C): a mean of distributions that are each 0 outside the candidates
    has = mask.any(dim=1)
    if log_prior is not None:
        # softmax((z - T log pi) / T) = softmax(z / T) / pi, renormalised; rows without candidates keep z
        logits = logits - temperature * log_prior.float() * has[None, :, None]
    soft = (
        candidate_targets(logits.reshape(v * n, c), mask.repeat(v, 1), temperature).reshape(v, n, c).mean(0)
    )
    conf = torch.softmax(logits, dim=-1).mean(0).amax(dim=1)  # (N,)
    exact = y >= 0
    kind = torch.full((n,), DROPPED, dtype=torch.long)
    kind[~has & (conf >= confidence)] = FREE
    kind[has] = CANDIDATE
    kind[exact] = EXACT
    targets = soft.clone()
    targets[exact] = F.one_hot(y[exact], c).float()
    return targets, kind, conf


def refine_targets(targets: Tensor, logits: Tensor, mask: Tensor, momentum: float) -> Tensor:
    """One PRODEN-style step: ``(1 - m) * targets + m * candidate_targets(logits, mask)``, all (B, C).

    Convex combinations of distributions that are 0 outside the candidates stay so: the rows remain
    probability vectors over the candidate set.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return (1 - momentum) * targets + momentum * candidate_targets(logits.detach().float(), mask)


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _targets_key(
    teacher_file: Path, ids: list[str], mask: np.ndarray, y: np.ndarray, cfg: DistillConfig, view_tag: str
) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(
        json.dumps(
            {
                "v": TARGETS_VERSION,
                "teacher": _file_hash(teacher_file),
                "T": cfg.temperature,
                "confidence": cfg.confidence,
                "teacher_views": cfg.teacher_views,
                "prior_correction": cfg.prior_correction,
                "views": view_tag if cfg.teacher_views else None,
                "ids": ids,
            }
        ).encode()
    )
    h.update(np.packbits(mask).tobytes())
    h.update(y.astype(np.int64).tobytes())
    return h.hexdigest()


def cached_targets(out: Path, key: str, compute) -> tuple[np.ndarray, np.ndarray, bool]:
    """``targets.npy`` / ``targets.json`` of the run when their key matches, else ``compute()`` and save."""
    npy, meta = out / "targets.npy", out / "targets.json"
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("key") == key:
            targets = np.load(npy)
            kind = np.asarray(info["kind"], dtype=np.int64)
            if targets.shape[0] == kind.shape[0]:
                return targets, kind, True
    except (OSError, ValueError, KeyError):
        pass
    targets, kind = compute()
    with atomic_open(npy, "wb") as f:
        np.save(f, targets.astype(np.float32))
    atomic_write_json(meta, {"key": key, "kinds": list(KINDS), "kind": kind.tolist()}, indent=None)
    return targets, kind, False


# ---------------------------------------------------------------------------------------------
# The Lightning module
# ---------------------------------------------------------------------------------------------


class DistillModule(L.LightningModule):
    """Student classifier trained on the target table; ``targets`` is a buffer (checkpointed with --refine)."""

    def __init__(
        self,
        student: dict,
        num_train: int,
        temperature: float = 2.0,
        exact_weight: float = 1.0,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        spec_augment: dict | None = None,
        refine: bool = False,
        refine_momentum: float = 0.1,
        refine_start: float = 0.5,
        cc_weight: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        # log share of candidate slots per class (prior correction of the refinement); zeros = off
        self.register_buffer("log_prior", torch.zeros(student["num_classes"]))
        self.model = Classifier(**student)
        self.spec_aug = SpectrogramAugment(SpecAugmentConfig.from_dict(spec_augment or {}))
        self.soft_ce = SoftTargetCrossEntropy(temperature, reduction="none")
        self.cc = CandidateLoss(reduction="none")
        # (num_train, C) target table; persistent only when refinement changes it
        self.register_buffer("targets", torch.zeros(num_train, student["num_classes"]), persistent=refine)
        self._refine_from = 0
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_train_start(self) -> None:
        self._refine_from = int(self.hparams.refine_start * self.trainer.estimated_stepping_batches)

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        logits = self.model(self.spec_aug(batch["x"])).float()  # (B, C)
        i, kind, y, mask = batch["i"], batch["kind"], batch["y"], batch["mask"]
        t = self.targets[i]  # (B, C), a copy
        exact = kind == EXACT
        loss, soft, hard = self.loss(logits, t, kind, y, mask)
        n_exact = exact.sum().clamp_min(1)
        logs = {
            "train/loss": loss,
            "train/hard": (hard * exact).sum() / n_exact,
            "train/soft": (soft * ~exact).sum() / (~exact).sum().clamp_min(1),
        }
        if hp.refine and self.global_step >= self._refine_from:
            logs["train/refine_change"] = self._refine(i, kind, mask, t, self._refine_logits(batch["x"]))
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=logits.shape[0])
        return loss

    def loss(self, logits: Tensor, t: Tensor, kind: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Batch loss from (B, C) logits and targets; also the (B,) soft and hard per-row terms."""
        hp = self.hparams
        exact = kind == EXACT
        soft = self.soft_ce(logits, t)  # (B,), T^2-scaled
        if hp.cc_weight > 0:
            # the candidate set's own likelihood, prior-corrected: lets the student overrule the teacher
            cc = self.cc(logits, mask, self.log_prior)  # (B,)
            soft = torch.where(kind == CANDIDATE, (1 - hp.cc_weight) * soft + hp.cc_weight * cc, soft)
        hard = F.cross_entropy(logits, y.clamp_min(0), reduction="none")  # (B,)
        w = torch.where(exact, torch.full_like(soft, hp.exact_weight), torch.ones_like(soft))
        per_row = torch.where(exact, hard, soft) * w
        return per_row.sum() / w.sum().clamp_min(1e-12), soft, hard

    @torch.no_grad()
    def _refine_logits(self, x: Tensor) -> Tensor:
        """The student's logits on the batch's cached view without the spectrogram augmentations, in eval mode.

        The training forward pass is a poor estimate of the row's label: mixup blends in another
        row, masks hide the phrase, dropout adds noise.
        """
        self.model.eval()
        try:
            return self.model(x).float()
        finally:
            self.model.train()

    @torch.no_grad()
    def _refine(self, i: Tensor, kind: Tensor, mask: Tensor, t: Tensor, logits: Tensor) -> Tensor:
        """Refine the table rows ``i`` of the batch's candidate rows; returns their mean L1 change."""
        new = refine_targets(t, logits - self.log_prior, mask, self.hparams.refine_momentum)  # (B, C)
        cand = kind == CANDIDATE
        change = ((new - t).abs().sum(1) * cand).sum() / cand.sum().clamp_min(1)
        if self.trainer.world_size > 1:
            # every rank applies every rank's updates, so the tables stay identical
            i, new, cand = (self.all_gather(v).flatten(0, 1) for v in (i, new, cand))
        self.targets[i[cand]] = new[cand]
        return change

    def validation_step(self, batch, batch_idx):
        self._val.append((self.model(batch["x"]).float(), batch["y"], batch["mask"]))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        logits, y, mask = (torch.cat(v) for v in zip(*self._val, strict=True))
        self._val.clear()
        if self.trainer.world_size > 1:
            logits, y, mask = (self.all_gather(v).flatten(0, 1) for v in (logits, y, mask))
        pred = logits.argmax(1)
        within = logits.masked_fill(~(mask | ~mask.any(1, keepdim=True)), float("-inf")).argmax(1)
        self.log_dict(
            {"val/acc": (pred == y).float().mean(), "val/acc_within": (within == y).float().mean()},
            prog_bar=True,
            sync_dist=False,
        )

    def configure_optimizers(self):
        opt_ = torch.optim.AdamW(
            self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        sched = cosine_with_warmup(opt_, self.trainer.estimated_stepping_batches)
        return {"optimizer": opt_, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _inherit(cfg: DistillConfig, teacher_cfg: dict, vocab, log, held_out: dict | None = None) -> tuple[float, int, int]:
    """Take label normalisation, the held-out split and (optionally) the augmentations from the teacher.

    ``held_out`` is a distilled teacher's own split (its metrics' ``held_out``), which wins over its
    trainer seed. Returns (held-out fraction, split seed, view seed).
    """
    cfg.data.labels = LabelConfig.from_dict(vocab.normalizer.cfg.to_dict())
    fraction = float(teacher_cfg.get("data", {}).get("val_fraction", cfg.data.val_fraction))
    split_seed = int(teacher_cfg.get("trainer", {}).get("seed", cfg.trainer.seed))
    if held_out:
        # a distilled teacher held out its own teacher's rows: keep holding out those
        fraction = float(held_out.get("fraction", fraction))
        split_seed = int(held_out.get("seed", split_seed))
    if fraction != cfg.data.val_fraction:
        log(f"holding out the teacher's validation rows (val_fraction {fraction}, seed {split_seed})")
    cfg.data.val_fraction = fraction
    view_seed = cfg.view_seed if cfg.view_seed is not None else cfg.trainer.seed
    if cfg.inherit_augment and teacher_cfg.get("stage") == STAGE:
        cfg.augment = AugmentConfig.from_dict(teacher_cfg["augment"])
        cfg.views = int(teacher_cfg.get("views", cfg.views))
        if cfg.view_seed is None:
            view_seed = int(teacher_cfg.get("view_seed", view_seed))
    elif cfg.inherit_augment and "augment" in teacher_cfg:
        cfg.augment = AugmentConfig.from_dict(teacher_cfg["augment"])
        pre_dir = teacher_cfg.get("pretrained")
        pre = None
        if pre_dir and str(pre_dir).lower() != "none" and (Path(pre_dir) / "config.yaml").is_file():
            pre = read_run_config(pre_dir)
        if pre is not None and pre.get("stage") == "pretrain":
            cfg.views = int(pre.get("views", cfg.views))
            if cfg.view_seed is None:
                view_seed = int(pre.get("trainer", {}).get("seed", view_seed))
    cfg.view_seed = view_seed
    cfg.validate()
    return fraction, split_seed, view_seed


def run(cfg: DistillConfig, log=print, callbacks: list | None = None) -> dict:
    """Distil ``cfg.teacher`` into a student as ``cfg`` says; returns the metrics (also in RUN_DIR/metrics.json).

    With ``cfg.rounds > 1`` every round is an ordinary distill run in ``RUN_DIR/round<k>`` whose
    teacher is the previous round's student; the last student is copied to ``RUN_DIR``.
    """
    if cfg.rounds == 1:
        return _run_round(cfg, log, callbacks)
    return _run_rounds(cfg, log, callbacks)


def _run_rounds(cfg: DistillConfig, log, callbacks: list | None) -> dict:
    """Self-training: round k distils round k-1's student (same seed, so the same held-out rows)."""
    import shutil

    out = prepare_run_dir(cfg.out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite)
    save_config(out, cfg, STAGE)
    teacher, summary, m = cfg.teacher, [], {}
    for k in range(1, cfg.rounds + 1):
        sub = DistillConfig.from_dict({**cfg.to_dict(), "rounds": 1, "teacher": str(teacher)})
        sub.out = str(out / f"round{k}")
        done = Path(sub.out) / "metrics.json"
        if cfg.trainer.resume is not None and done.exists() and (Path(sub.out) / "model.pt").exists():
            log(f"round {k}/{cfg.rounds}: already done, reusing {sub.out}")
            m = json.loads(done.read_text(encoding="utf-8"))
        else:
            log(f"round {k}/{cfg.rounds}: teacher {teacher}")
            # a fresh top-level run replaces stale rounds; a resumed one continues them
            sub.overwrite = cfg.trainer.resume is None
            m = _run_round(sub, log, callbacks)
        summary.append(
            {
                key: m.get(key)
                for key in ("val_acc", "val_acc_within", "disambiguation_acc", "fit_seconds", "total_seconds")
            }
        )
        teacher = Path(sub.out)
    for name in ("model.pt", "vocab.json"):
        with open(teacher / name, "rb") as src, atomic_open(out / name, "wb", encoding=None) as dst:
            shutil.copyfileobj(src, dst)
    # the resolved (inherited) settings, so this run can itself be a teacher or be resumed
    last = {k: v for k, v in read_run_config(teacher).items() if k in DistillConfig.__dataclass_fields__}
    save_config(out, DistillConfig.from_dict({**last, "out": str(out), "teacher": cfg.teacher, "rounds": cfg.rounds, "overwrite": cfg.overwrite}), STAGE)
    # the stage's time is its rounds' (also when some of them ran before a resume)
    seconds = sum(r["total_seconds"] or 0.0 for r in summary)
    result = {**m, "teacher": str(cfg.teacher), "rounds": summary, "total_seconds": seconds}
    return write_metrics(out, result)


def _run_round(cfg: DistillConfig, log=print, callbacks: list | None = None) -> dict:
    """One distillation of ``cfg.teacher`` into a fresh student."""
    from plcli.data.manifest import read_truth

    timer = Timer()
    set_threads()
    teacher, vocab, features, teacher_stage = load_predictor(cfg.teacher)
    teacher_dir = Path(cfg.teacher)
    teacher_file = teacher_dir / "model.pt" if teacher_dir.is_dir() else teacher_dir
    teacher_cfg = read_run_config(teacher_dir) if (teacher_dir / "config.yaml").is_file() else {}
    teacher_metrics = teacher_dir / "metrics.json"
    held_out = None
    if teacher_cfg.get("stage") == STAGE and teacher_metrics.is_file():
        held_out = json.loads(teacher_metrics.read_text(encoding="utf-8")).get("held_out")
    fraction, split_seed, view_seed = _inherit(cfg, teacher_cfg, vocab, log, held_out)
    out = prepare_run_dir(cfg.out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite)
    save_config(out, cfg, STAGE)
    L.seed_everything(cfg.trainer.seed, workers=True)

    rows = load_training_rows(cfg.data, out, log=log).rows
    vocab.save(out / "vocab.json")
    mask_all = candidate_matrix(rows, vocab)
    y_all = label_vector(rows, vocab)
    unknown_label = np.array([r.label is not None for r in rows]) & (y_all < 0)
    if unknown_label.any():
        log(
            f"left out {int(unknown_label.sum())} exact row(s) whose label is not in the teacher's vocabulary"
        )
    held = holdout_ids([r.id for r in rows if r.label is not None], fraction, split_seed)
    is_held = np.array([r.id in held for r in rows])
    val_idx = np.flatnonzero(is_held & (y_all >= 0))
    pool = np.flatnonzero(~is_held & ~unknown_label)  # rows that may train the student
    if len(pool) == 0:
        raise UserError("no training rows left after the held-out split")
    truth: dict[str, str] = read_truth(cfg.truth) if cfg.truth else {}
    truth_idx = np.full(len(rows), -2, dtype=np.int64)  # -2 no truth, -1 truth outside the vocabulary
    for i, r in enumerate(rows):
        if r.id in truth:
            j = vocab.index(truth[r.id])
            truth_idx[i] = -1 if j is None else j

    cache = open_cache(cfg.data, features)
    t_feat = Timer()
    _, clean = cache.features([r.audio for r in rows])
    pool_paths = [rows[i].audio for i in pool]
    log(f"distilling on {len(pool)} recordings; caching {cfg.views} augmented views per clip ...")
    _, views = cache.views(
        pool_paths,
        cfg.augment.waveform_params(),
        cfg.views,
        view_seed,
        workers=_view_workers(len(pool_paths) * cfg.views, cfg.trainer.num_workers),
    )
    feature_seconds = t_feat.seconds

    t_teach = Timer()
    pool_mask = torch.from_numpy(mask_all[pool])
    pool_y = torch.from_numpy(y_all[pool])
    view_tag = hashlib.blake2b(
        json.dumps([cfg.augment.waveform_params(), cfg.views, view_seed]).encode(), digest_size=8
    ).hexdigest()
    key = _targets_key(teacher_file, [rows[i].id for i in pool], mask_all[pool], y_all[pool], cfg, view_tag)

    # (C,) log share of candidate slots over every row: the teacher's targets and the student's loss
    log_prior = candidate_log_prior(torch.from_numpy(mask_all)) if cfg.prior_correction else None

    def compute():
        logits = [predict_logits(teacher, _Rows(clean, pool))]
        for v in range(cfg.teacher_views):
            logits.append(predict_logits(teacher, _Rows(views, None, v)))
        tgt, kind, _ = teacher_targets(
            torch.from_numpy(np.stack(logits)), pool_mask, pool_y, cfg.temperature, cfg.confidence, log_prior
        )
        return tgt.numpy(), kind.numpy()

    targets, kind, reused = cached_targets(out, key, compute)
    teacher_seconds = t_teach.seconds
    log(
        ("reused" if reused else "computed")
        + " the teacher's targets: "
        + ", ".join(f"{(kind == k).sum()} {name}" for k, name in enumerate(KINDS))
    )

    train_pos = np.flatnonzero(kind != DROPPED)  # positions in the pool
    if len(train_pos) < 2:
        raise UserError(
            f"only {len(train_pos)} training row(s) after filtering; distillation needs at least 2"
        )
    train_ds = ViewRows(
        views,
        index=train_pos,
        y=pool_y[train_pos],
        kind=torch.from_numpy(kind[train_pos]),
        mask=pool_mask[train_pos],
    )
    student_kwargs = dict(
        encoder=cfg.student,
        n_mels=features.n_mels,
        num_classes=len(vocab),
        from_layer=0,
        head_hidden_dim=cfg.head_hidden_dim,
        head_layers=cfg.head_layers,
        dropout=cfg.dropout,
    )
    module = DistillModule(
        student_kwargs,
        num_train=len(train_pos),
        temperature=cfg.temperature,
        exact_weight=cfg.exact_weight,
        lr=cfg.trainer.lr,
        weight_decay=cfg.trainer.weight_decay,
        spec_augment=cfg.augment.spec.to_dict(),
        refine=cfg.refine,
        refine_momentum=cfg.refine_momentum,
        refine_start=cfg.refine_start,
        cc_weight=cfg.cc_weight,
    )
    module.targets.copy_(torch.from_numpy(targets[train_pos]))
    if log_prior is not None:
        module.log_prior.copy_(log_prior)
    initial_targets = module.targets.clone()

    bs = min(cfg.trainer.batch_size, len(train_ds))
    # a last batch of one row would break BatchNorm in training mode
    drop_last = len(train_ds) >= 2 * bs or len(train_ds) % bs == 1
    train_loader = DataLoader(
        train_ds,
        batch_size=bs,
        shuffle=True,
        drop_last=drop_last,
        collate_fn=FeatureRows.collate_fn,
        num_workers=cfg.trainer.num_workers,
        persistent_workers=cfg.trainer.num_workers > 0,
    )
    val_loader = None
    if len(val_idx):
        val_ds = FeatureRows(
            clean, index=val_idx, y=torch.from_numpy(y_all[val_idx]), mask=torch.from_numpy(mask_all[val_idx])
        )
        val_loader = DataLoader(val_ds, batch_size=1024, shuffle=False, collate_fn=FeatureRows.collate_fn)
    else:
        log("no held-out exact rows: no validation metrics")
    trainer = build_trainer(
        cfg.trainer,
        out,
        monitor="val/acc" if val_loader is not None else None,
        mode="max",
        extra_callbacks=callbacks,
    )
    t_fit = Timer()
    fit(trainer, module, train_loader, val_loader, resolve_resume(out, cfg.trainer.resume), out)
    fit_seconds = t_fit.seconds

    # -- final metrics on clean features ---------------------------------------------------------
    student = module.model.cpu().eval()
    t_inf = Timer()
    s_logits = predict_logits(student, clean)  # (N, C) every row
    inference_seconds = t_inf.seconds
    s_probs = softmax(s_logits)
    t_val_probs = softmax(predict_logits(teacher, _Rows(clean, val_idx))) if len(val_idx) else None
    final_targets = module.targets.detach().cpu().numpy()
    cand_pos = train_pos[kind[train_pos] == CANDIDATE]  # pool positions of the candidate training rows
    cand_rows = pool[cand_pos]
    result: dict = {
        "stage": STAGE,
        "teacher": str(cfg.teacher),
        "teacher_stage": teacher_stage,
        "student": cfg.student,
        "student_parameters": count_parameters(student),
        "teacher_parameters": count_parameters(teacher),
        "rows": len(rows),
        "classes": len(vocab),
        "held_out_exact": int(len(val_idx)),
        "held_out": {"fraction": fraction, "seed": split_seed},
        "training_rows": {
            name: int((kind[train_pos] == k).sum()) for k, name in enumerate(KINDS) if k != DROPPED
        },
        "no_candidate_rows_dropped": int((kind == DROPPED).sum()),
        "unknown_label_rows_dropped": int(unknown_label.sum()),
        "temperature": cfg.temperature,
        "confidence": cfg.confidence,
        "refine": cfg.refine,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "targets_reused": reused,
    }
    if len(val_idx):
        vm = classification_metrics(s_probs[val_idx], y_all[val_idx], mask_all[val_idx])
        tm = classification_metrics(t_val_probs, y_all[val_idx], mask_all[val_idx])
        result.update(
            {
                "val_acc": vm["accuracy"],
                "val_acc_within": vm["accuracy_within_candidates"],
                "val_macro_f1": vm["macro_f1"],
                "val_ece": vm["ece"],
                "teacher_val_acc": tm["accuracy"],
                "teacher_val_acc_within": tm["accuracy_within_candidates"],
                "val_acc_history": logged_history(out, "val/acc"),
            }
        )
    if len(cand_rows):
        result["covering_rate"] = covering_rate(s_probs[cand_rows].argmax(1), mask_all[cand_rows])
        truth_c = truth_idx[cand_rows]
        known = truth_c != -2
        if known.any():
            at = np.searchsorted(train_pos, cand_pos[known])  # positions in the target table
            s_pred = restricted_predictions(s_probs[cand_rows[known]], mask_all[cand_rows[known]])
            result.update(
                {
                    "disambiguation_rows": int(known.sum()),
                    "disambiguation_acc": float(np.mean(s_pred == truth_c[known])),
                    "targets_disambiguation_acc_initial": float(
                        np.mean(initial_targets.numpy()[at].argmax(1) == truth_c[known])
                    ),
                    "targets_disambiguation_acc_final": float(
                        np.mean(final_targets[at].argmax(1) == truth_c[known])
                    ),
                }
            )
    result.update(
        {
            "student_clips_per_second": len(rows) / max(inference_seconds, 1e-9),
            "threads": torch.get_num_threads(),
            "feature_seconds": feature_seconds,
            "teacher_seconds": teacher_seconds,
            "fit_seconds": fit_seconds,
            "total_seconds": timer.seconds,
            "cache": {"computed": cache.computed, "reused": cache.reused},
        }
    )
    if trainer.is_global_zero:
        save_model(
            out / "model.pt",
            student,
            vocab,
            features,
            STAGE,
            extra={"teacher": str(cfg.teacher), "temperature": cfg.temperature, "refine": cfg.refine},
        )
        return write_metrics(out, result)
    return jsonable(result)


def _view_workers(n_views: int, num_workers: int) -> int:
    """Processes for computing augmented views: starting one costs seconds (torch, audiomentations
    imports), about the price of 4000 views in-process, so small jobs stay in this process."""
    import os

    if n_views < 4000:
        return 1
    return num_workers or max(1, os.cpu_count() or 1)


class _Rows:
    """A lazy row (and optional view) selection of a memmap, sliceable like an array: ``feats[s:e]``."""

    def __init__(self, feats: np.ndarray, index: np.ndarray | None, view: int | None = None):
        self.feats, self.index, self.view = feats, index, view
        n = feats.shape[0] if index is None else len(index)
        self.shape = (n, *feats.shape[(2 if view is not None else 1) :])

    def __getitem__(self, s: slice) -> np.ndarray:
        rows = np.arange(self.shape[0])[s] if self.index is None else self.index[s]
        return self.feats[rows] if self.view is None else self.feats[rows, self.view]
