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

Student: an encoder from ``ENCODERS`` plus an MLP head. By default (``--student auto``) it is a
``tcresnet-small`` trained from scratch, or, below ``small_data`` training recordings, the teacher's
pretrained encoder fine-tuned with a new head (``resolve_student``). It trains on the cached
augmented views (the pretrain stage's waveform augmentations, inherited from the teacher's run so
the cache is reused) with the batched spectrogram augmentations on top. Loss
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

CTC head (``--ctc-weight``, on by default; ``plcli.models.ctc``): the student also carries a CTC
head, by default with its own front end on the log-mel (``ctc.tap = -1``), so ``predict`` can
score candidate texts it never heard. Each step, ``ctc_rows`` random rows of the batch draw one
message from their target row sharpened back to T = 1 (the teacher's candidate-restricted
distribution; the label itself on exact rows) and add ``ctc.weight`` x that text's CTC loss on the
cached view without the spectrogram augmentations: an unbiased estimate of the teacher-weighted
CTC loss ``sum_k w_k * -log p_CTC(c_k|x)`` at a tenth of the cost of scoring every candidate.
With several rounds only the last student, the one that is kept, trains the head
(``ctc_all_rounds``), by default in a CTC phase of its own after the rounds (``ctc_epochs``),
from ``ctc_starts`` random starts and one with the other tokens (``ctc_other_tokens``), of which
the one ranking the validation rows best is kept (the extra starts only where the classifier alone
leaves room, ``ctc_starts_below``).
A CTC refit (``ctc_refits``) then continues that head on the phase model's own combined ranking
of each training row's candidates, which uses the CTC scores and so picks the right text more
often than the classifier's targets on rare messages.
After training, the weight of the CTC score against the closed-set posterior in the combined
ranking (``plcli.ranking``) is chosen on validation rows (``--ranking-manifest``, else the
held-out exact rows) and stored in ``model.pt``.

Held-out metrics: the finetune stage's validation split of the exact rows (same function, the
teacher's fraction and seed), so the student is never validated on rows its teacher trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from plcli.asr_prior import CHOICES
from plcli.asr_prior import resolve as resolve_prior
from plcli.config import (
    Config,
    CTCConfig,
    DataConfig,
    FeatureConfig,
    LabelConfig,
    TrainerConfig,
    cache_dir,
    opt,
)
from plcli.data.augment import AugmentConfig, SpecAugmentConfig, SpectrogramAugment, VocalTractWarp
from plcli.data.datasets import (
    FeatureRows,
    ViewRows,
    candidate_matrix,
    holdout_ids,
    label_vector,
    load_training_rows,
    open_cache,
    truth_vector,
    view_workers,
)
from plcli.data.features import content_hash
from plcli.data.labels import NO_TRUTH, Vocabulary
from plcli.errors import UserError
from plcli.inference import RowView, load_predictor, predict_logits, softmax
from plcli.io import atomic_open, atomic_write_json
from plcli.language import AUTO, espeak_voice, resolve_language, row_texts, voice_of
from plcli.losses import CandidateLoss, SoftTargetCrossEntropy, candidate_log_prior, candidate_targets
from plcli.metrics import classification_metrics, covering_rate, restricted_predictions
from plcli.models.classifier import Classifier, save_model
from plcli.models.encoders import DEFAULT_INPUT_NORM, ENCODERS, count_parameters
from plcli.ranking import tune_ranking
from plcli.runs import (
    Timer,
    UpstreamRun,
    check_run_dir,
    jsonable,
    logged_history,
    read_run_config,
    read_upstream,
    resolve_resume,
    save_config,
    set_threads,
    start_run,
    write_metrics,
)
from plcli.training import adamw_cosine, build_trainer, fit, graph_zero

STAGE = "distill"
# the default student of a data set large enough to train one from scratch
SMALL_STUDENT = "tcresnet-small"
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
    student: str = opt(
        "auto",
        "student encoder; auto: the teacher's pretrained encoder on small data, else tcresnet-small",
        why="auto takes the teacher's encoder, started from its weights, when the teacher's encoder was "
        "pretrained and the training manifests hold fewer than small_data recordings (or student_init "
        "is teacher); else tcresnet-small from scratch",
        choices=("auto", *sorted(ENCODERS)),
    )
    student_init: str = opt(
        "auto",
        "where a fresh student's encoder starts: scratch, teacher (a copy of its encoder), or auto",
        why="a fresh student: round 1, and every round with warm_start off; teacher needs student to be the "
        "teacher's encoder; auto: teacher when student auto chose the teacher's encoder, else scratch",
        choices=("auto", "scratch", "teacher"),
    )
    small_data: int = opt(
        1600,
        "student auto: below this many training recordings, the teacher's pretrained encoder",
        why="fine-tuned, rather than a small network from scratch",
        min=0,
    )
    small_data_batch: int = opt(
        64,
        "student auto below small_data recordings: at most this batch size per device (0: as given)",
        why="more optimiser steps on few recordings; 0 keeps trainer.batch_size",
        min=0,
    )
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
    prior_correction: bool = opt(
        True,
        "restrict p(j|x) / pi_j, not p(j|x), to the candidates; pi_j: class j's share of candidate slots",
        why="as in finetune",
    )
    cc_weight: float = opt(
        0.8,
        "candidate rows' loss: (1 - w) * distillation + w * the candidate set's likelihood",
        why="the likelihood is the prior-corrected CC loss",
        min=0.0,
        max=1.0,
    )
    rounds: int = opt(
        10, "self-training rounds: round k's teacher is round k-1's student (each in RUN_DIR/round<k>)", min=1
    )
    warm_start: bool = opt(
        True,
        "rounds after the first start from the previous round's student, not a fresh network",
        why="and train warm_epochs",
    )
    warm_epochs: int | None = opt(
        None,
        "epochs of a warm-started round (default: a fifth of trainer.epochs)",
        why="24 of 120; the first round trains trainer.epochs",
        min=1,
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
    ctc: CTCConfig = opt(
        factory=lambda: CTCConfig(weight=1.0, tempo=0.1, vtlp=0.1),
        help="the student's CTC head, which scores any candidate text (docs/ctc.md)",
        why="tempo and VTLP of its input are on by default here",
    )
    ctc_rows: int = opt(
        64,
        "rows per batch that get the CTC loss, a random subset",
        why="the CTC branch is the slow part of a CPU step",
        min=1,
    )
    ctc_epochs: int | None = opt(
        None,
        "epochs of the CTC phase after the last round (default: trainer.epochs; 0: within the last round)",
        why="the CTC head alone trains on the last student's candidate-restricted targets, the classifier "
        "frozen (RUN_DIR/ctc); 0 trains it jointly within the last round",
        min=0,
    )
    ctc_all_rounds: bool = opt(False, "with ctc_epochs 0: train the CTC head in every self-training round, not only in the last")
    ctc_starts: int = opt(
        2,
        "CTC phases from different random starts; the one ranking the validation rows best is kept",
        why="RUN_DIR/ctc, ctc-start2, ...; trainer.seed + 1000 per start; validation rows: "
        "ranking_manifest, else the held-out exact rows; the kept one is refitted; each extra start "
        "costs one more CTC phase (see ctc_starts_below)",
        min=1,
    )
    ctc_other_tokens: bool = opt(
        True,
        "one more CTC start with the other tokens (phonemes for char, and the reverse), chosen alike",
        why="so the tokens too are chosen on the validation rows",
    )
    ctc_starts_below: float = opt(
        0.85,
        "extra CTC starts only when the closed-set head ranks at most this share of validation rows right",
        why="1: always",
        min=0.0,
        max=1.0,
    )
    ctc_refits: int = opt(
        1,
        "CTC refits after the CTC phase, each on the previous model's combined ranking",
        why="RUN_DIR/ctc2, ...: each continues the previous CTC head on that model's combined ranking of "
        "every training row's candidates (both heads) instead of the classifier's targets; none without "
        "a CTC phase (ctc_epochs 0 or no CTC head)",
        min=0,
    )
    ctc_refit_epochs: int | None = opt(None, "epochs of a CTC refit (default: a third of the CTC phase's, 40 of 120)", min=1)
    ranking_manifest: str | None = opt(
        None,
        "labelled rows on which the combined ranking is chosen (default: the held-out exact rows)",
        why="e.g. speakers held out from training; some saying messages training never holds, to weigh new "
        "messages",
    )
    asr_prior: str = opt(
        "auto",
        "recogniser whose vote on each row's candidates is a prior on the targets (auto: the teacher's)",
        why="which targets: asr_rounds, asr_ctc; docs/asr-prior.md",
        choices=CHOICES,
    )
    asr_model: str | None = opt(None, "Whisper model for --recogniser whisper (default: the teacher's, else 'base')")
    asr_window: float | None = opt(None, "seconds of audio Whisper's encoder sees per clip (default: the upstream run's, else 30)", min=3.0, max=30.0)
    asr_accuracy: float | None = opt(
        None,
        "how often pocketsphinx's vote is right (default: the teacher's, else estimated on exact rows)",
        why="estimated on the exact rows with candidates",
        min=0.0,
        max=1.0,
    )
    asr_rounds: int | None = opt(
        1,
        "the first N rounds' targets take the recogniser's vote (None or N >= rounds: every round)",
        why="default 1: once, as every later round's teacher has learnt from it; 0: none, the teacher's own "
        "training took it",
        min=0,
    )
    asr_ctc: bool = opt(
        True,
        "the CTC phase's starts and refits add the recogniser's vote, whatever asr_rounds says",
        why="the CTC head learns texts the closed-set rounds cannot name well",
    )
    asr_workers: int = opt(2, "recogniser processes for the asr prior", min=1)
    truth: str | None = opt(None, "optional JSONL/CSV of id,label: disambiguation accuracy on candidate rows")
    overwrite: bool = opt(False, "replace an existing run in out")

    def check(self) -> None:
        if not self.data.manifests:
            raise UserError("no training manifest given")
        if not self.teacher:
            raise UserError("--teacher is required (a finetune run directory)")
        if self.ctc_all_rounds and self.ctc_epochs != 0:
            raise UserError("ctc_all_rounds trains the CTC head jointly in every round: it needs ctc_epochs 0")
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
        # softmax((z - T log pi) / T) = softmax(z / T) / pi, renormalised; rows without candidates keep z.
        # Its favourite is that of z - T log pi, a stronger correction than finetune's z - log pi: on the
        # demo data (2026-12-02) (p / pi)^(1/T) made the targets' favourite right more often (0.41 vs 0.35
        # of the round-1 candidate rows) but the round-1 student worse (0.55 vs 0.61 disambiguated).
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


def _targets_key(
    teacher_file: Path, ids: list[str], mask: np.ndarray, y: np.ndarray, cfg: DistillConfig, view_tag: str,
    ranked: bool = False, bonus: np.ndarray | None = None,
) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(
        json.dumps(
            {
                "v": TARGETS_VERSION,
                "teacher": content_hash(teacher_file),
                "T": cfg.temperature,
                "confidence": cfg.confidence,
                "teacher_views": cfg.teacher_views,
                "prior_correction": cfg.prior_correction,
                "views": view_tag if cfg.teacher_views or ranked else None,
                "ids": ids,
            }
        ).encode()
    )
    h.update(np.packbits(mask).tobytes())
    h.update(y.astype(np.int64).tobytes())
    if bonus is not None:  # the recogniser's vote (absent: the keys of runs without it are unchanged)
        h.update(np.ascontiguousarray(bonus, dtype=np.float32).tobytes())
    return h.hexdigest()


def load_targets(out: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``targets.npy`` / ``targets.json`` of the run when their key matches, else None."""
    try:
        info = json.loads((out / "targets.json").read_text(encoding="utf-8"))
        if info.get("key") == key:
            targets = np.load(out / "targets.npy")
            kind = np.asarray(info["kind"], dtype=np.int64)
            if targets.shape[0] == kind.shape[0]:
                return targets, kind
    except (OSError, ValueError, KeyError):
        pass
    return None


def save_targets(out: Path, key: str, targets: np.ndarray, kind: np.ndarray) -> None:
    """Write the target table for ``load_targets`` (atomically)."""
    with atomic_open(out / "targets.npy", "wb") as f:
        np.save(f, targets.astype(np.float32))
    atomic_write_json(out / "targets.json", {"key": key, "kinds": list(KINDS), "kind": kind.tolist()}, indent=None)


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
        ctc_weight: float = 0.0,
        ctc_rows: int = 64,
        ctc_only: bool = False,
        mel_range: list[float] | None = None,
        ctc_tempo: float = 0.0,
        ctc_vtlp: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        # log share of candidate slots per class (prior correction of the refinement); zeros = off
        self.register_buffer("log_prior", torch.zeros(student["num_classes"]))
        # (C, L) token ids and (C,) lengths of every class's text, for the CTC head (set by the stage)
        self.register_buffer("class_tokens", torch.ones(student["num_classes"], 1, dtype=torch.long), persistent=False)
        self.register_buffer("class_lengths", torch.zeros(student["num_classes"], dtype=torch.long), persistent=False)
        self.model = Classifier(**student)
        self.spec_aug = SpectrogramAugment(SpecAugmentConfig.from_dict(spec_augment or {}), mel_range=mel_range)
        self.ctc_warp = VocalTractWarp(*(mel_range or (FeatureConfig.f_min, FeatureConfig.f_max)), max_warp=ctc_vtlp)
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
        use_ctc = hp.ctc_weight > 0 and self.model.has_ctc
        if hp.ctc_only:
            # the classifier is frozen, BatchNorm statistics included (Lightning sets every submodule's
            # mode itself after validation, so this is done per step)
            for name, child in self.model.named_children():
                if name != "ctc_head":
                    child.eval()
            ctc = self.ctc_loss(batch["x"], self.targets[batch["i"]])
            self.log_dict({"train/ctc": ctc, "train/loss": ctc}, on_step=False, on_epoch=True,
                          batch_size=batch["x"].shape[0])
            return ctc
        logits = self.model(self.spec_aug(batch["x"])).float()  # (B, C)
        i, kind, y, mask = batch["i"], batch["kind"], batch["y"], batch["mask"]
        t = self.targets[i]  # (B, C), a copy
        exact = kind == EXACT
        loss, soft, hard = self.loss(logits, t, kind, y, mask)
        n_exact = exact.sum().clamp_min(1)
        logs = {
            "train/hard": (hard * exact).sum() / n_exact,
            "train/soft": (soft * ~exact).sum() / (~exact).sum().clamp_min(1),
        }
        if use_ctc:
            ctc = self.ctc_loss(batch["x"], t)
            logs["train/ctc"] = ctc
            loss = loss + hp.ctc_weight * ctc
        logs["train/loss"] = loss
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

    def ctc_loss(self, x: Tensor, t: Tensor) -> Tensor:
        """Mean CTC loss of ``ctc_rows`` random rows of the batch's cached views ``x`` (B, F, T), each
        on one text drawn from its target row.

        The CTC branch reads the view without the spectrogram augmentations: a random resized crop
        cuts words out of the clip and mixup blends in another recording's words, which breaks the
        alignment with the transcript (the closed-set head only needs the message's identity).

        ``t`` (B, C) are the rows' targets at temperature T; ``t ** T`` renormalised is the teacher's
        candidate-restricted distribution at T = 1 (one-hot on exact rows), so the draw is an unbiased
        one-sample estimate of the teacher-weighted CTC loss.
        """
        hp = self.hparams
        B = t.shape[0]
        sel = torch.randperm(B, device=t.device)[: hp.ctc_rows]
        w = t[sel].clamp_min(0).pow(hp.temperature)
        ok = w.sum(1) > 0
        sel, w = sel[ok], w[ok]
        zero = graph_zero(self.model.ctc_head)
        if not len(sel):
            return zero
        c = torch.multinomial(w / w.sum(1, keepdim=True), 1).squeeze(1)  # (B',) drawn classes
        keep = self.class_lengths[c] > 0  # a text without tokens has no CTC path
        if not bool(keep.any()):
            return zero
        sel, c = sel[keep], c[keep]
        from plcli.models.ctc import encoder_frames

        xs = self.ctc_augment(x[sel])
        frames = encoder_frames(self.model.encoder, xs, self.model.tap)  # (B', C', T')
        log_probs = self.model.ctc_head(frames).float()  # (T', B', V)
        T = log_probs.shape[0]
        return F.ctc_loss(log_probs, self.class_tokens[c], torch.full((len(sel),), T, dtype=torch.long),
                          self.class_lengths[c], reduction="mean", zero_infinity=True)

    def ctc_augment(self, x: Tensor) -> Tensor:
        """(B, F, T) -> (B, F, T'): the CTC branch's speaker and tempo perturbations (training only).

        Unlike masks or crops they keep every word of the transcript in the clip. One tempo rate per
        step keeps the batch one length: T' = T / rate.
        """
        if not self.training:
            return x
        x = self.ctc_warp(x)
        tempo = self.hparams.ctc_tempo
        if tempo > 0:
            rate = 1.0 + (2.0 * float(torch.rand(())) - 1.0) * tempo
            x = F.interpolate(x, size=max(1, round(x.shape[-1] / rate)), mode="linear", align_corners=False)
        return x

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
        pred, within = logits.argmax(1), restricted_predictions(logits, mask)
        self.log_dict(
            {"val/acc": (pred == y).float().mean(), "val/acc_within": (within == y).float().mean()},
            prog_bar=True,
            sync_dist=False,
        )

    def configure_optimizers(self):
        hp = self.hparams
        params = self.model.ctc_head.parameters() if hp.ctc_only else self.model.parameters()
        return adamw_cosine([(params, hp.lr)], hp.weight_decay, self.trainer.estimated_stepping_batches)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


@dataclass
class _Teacher:
    """The teacher's classifier and what the student inherits from its run."""

    model: Classifier
    vocab: Vocabulary
    features: FeatureConfig
    stage: str
    file: Path  # the model.pt whose content keys the target cache
    run: UpstreamRun | None  # its run directory (None for a bare model.pt)


def open_teacher(path: str) -> _Teacher:
    model, vocab, features, stage = load_predictor(path)
    p = Path(path)
    run = read_upstream(p, "--teacher") if (p / "config.yaml").is_file() else None
    return _Teacher(model, vocab, features, stage, p / "model.pt" if p.is_dir() else p, run)


def _inherit(cfg: DistillConfig, teacher: _Teacher, log) -> tuple[float, int, int]:
    """Take label normalisation, the held-out split and (optionally) the augmentations from the teacher.

    A distilled teacher's own split (its metrics' ``held_out``) wins over its trainer seed.
    Returns (held-out fraction, split seed, view seed).
    """
    run = teacher.run or UpstreamRun(teacher.file, None, {})
    cfg.data.labels = LabelConfig.from_dict(teacher.vocab.normalizer.cfg.to_dict())
    fraction = float(run.get("data.val_fraction", cfg.data.val_fraction))
    split_seed = int(run.get("trainer.seed", cfg.trainer.seed))
    held_out = run.metrics().get("held_out") if run.stage == STAGE else None
    if held_out:
        # a distilled teacher held out its own teacher's rows: keep holding out those
        fraction = float(held_out.get("fraction", fraction))
        split_seed = int(held_out.get("seed", split_seed))
    if fraction != cfg.data.val_fraction:
        log(f"holding out the teacher's validation rows (val_fraction {fraction}, seed {split_seed})")
    cfg.data.val_fraction = fraction
    view_seed = cfg.view_seed if cfg.view_seed is not None else cfg.trainer.seed
    if cfg.inherit_augment and "augment" in run.config:
        cfg.augment = run.section(AugmentConfig, "augment")
        views_from = run if run.stage == STAGE else _pretrain_run(run)
        if views_from is not None:
            cfg.views = int(views_from.get("views", cfg.views))
            if cfg.view_seed is None:
                view_seed = int(views_from.get("view_seed" if run.stage == STAGE else "trainer.seed", view_seed))
    cfg.view_seed = view_seed
    if cfg.asr_prior == "auto":  # the teacher's setting; a teacher from before the option had none
        cfg.asr_prior = resolve_prior(str(run.get("asr_prior", "none") or "none"))
        if cfg.asr_accuracy is None and run.get("asr_accuracy") is not None:
            cfg.asr_accuracy = float(run.get("asr_accuracy"))
    cfg.asr_model = cfg.asr_model or str(run.get("asr_model", "base") or "base")
    cfg.asr_window = cfg.asr_window or float(run.get("asr_window", 30.0) or 30.0)
    cfg.validate()
    return fraction, split_seed, view_seed


def _pretrained_dir(run: UpstreamRun | None) -> str | None:
    """The pretrain run a finetune teacher's encoder came from, as its config names it (None for
    ``--pretrained none``, or for a teacher that is not a finetune run)."""
    pre_dir = run.get("pretrained") if run is not None and run.stage == "finetune" else None
    return None if not pre_dir or str(pre_dir).lower() == "none" else str(pre_dir)


def _pretrain_run(finetune_run: UpstreamRun) -> UpstreamRun | None:
    """The pretrain run a finetune teacher was built on, when it is still there."""
    pre_dir = _pretrained_dir(finetune_run)
    if pre_dir is None or not (Path(pre_dir) / "config.yaml").is_file():
        return None
    pre = read_upstream(pre_dir, "--pretrained")
    return pre if pre.stage == "pretrain" else None


def student_args(cfg, n_mels: int, num_classes: int, ctc: dict | None = None,
                 input_norm: str = DEFAULT_INPUT_NORM) -> dict:
    """``Classifier`` arguments of the student (``cfg``: a ``DistillConfig`` or the benchmark's
    ``BaselineConfig``, anything with ``student``, ``head_hidden_dim``, ``head_layers``, ``dropout``);
    ``ctc``: the CTC head's settings (``CTCConfig.head_args``), or None for none; ``input_norm``: the
    encoder's (distill passes its teacher's)."""
    args = dict(encoder=cfg.student, n_mels=n_mels, num_classes=num_classes, from_layer=0,
                head_hidden_dim=cfg.head_hidden_dim, head_layers=cfg.head_layers, dropout=cfg.dropout,
                input_norm=input_norm)
    if ctc is not None:
        args["ctc"] = ctc
    return args


def run(cfg: DistillConfig, log=print, callbacks: list | None = None) -> dict:
    """Distil ``cfg.teacher`` into a student as ``cfg`` says; returns the metrics (also in RUN_DIR/metrics.json).

    With ``cfg.rounds > 1`` every round is an ordinary distill run in ``RUN_DIR/round<k>`` whose
    teacher is the previous round's student; the last student is copied to ``RUN_DIR``.
    """
    resolve_student(cfg, log)
    resolve_ctc(cfg, log)
    if cfg.rounds == 1 and not _ctc_phase(cfg):
        return _run_round(cfg, log, callbacks)
    return _run_rounds(cfg, log, callbacks)


def capped_batch(batch_size: int, small_data_batch: int) -> int:
    """The batch size of the small-data student: at most ``small_data_batch`` (0: no cap)."""
    return min(batch_size, small_data_batch) if small_data_batch > 0 else batch_size


def resolve_student(cfg: DistillConfig, log=print) -> None:
    """Settle ``student`` and ``student_init`` when they are ``auto`` (in place, so the run's
    config.yaml records the choice).

    A small training set is where a from-scratch student lacks data and distillation is cheap: there
    the student is the teacher's pretrained encoder, fine-tuned with a new head (SimCLRv2's own
    student). On the learning curve's validation speakers this lifted uniform-message students by
    0.06-0.09 at 600 and 1200 recordings and left Zipf ones level (docs/benchmark.md). That student
    also trains with batches of at most ``small_data_batch`` (64 rather than 256): four times the
    optimiser steps, +0.03 (uniform) and +0.06 (Zipf) at 600 recordings over 3 seeds. A teacher
    without pretraining (``finetune --pretrained none``) has nothing to pass on: its student starts
    from scratch, and below ``small_data`` it takes the same smaller batch (+0.01 to +0.11 on 5 of 5
    validation cells).
    """
    from plcli.data.manifest import read_manifest

    if cfg.student == "auto":
        teacher = open_teacher(cfg.teacher)
        pretrained = _pretrained_dir(teacher.run) is not None
        n = sum(len(read_manifest(p)[0]) for p in cfg.data.manifests)
        encoder = teacher.model.kwargs.get("encoder")
        # an explicit --student-init teacher asks for the teacher's encoder at any size
        wanted = cfg.student_init == "teacher" or (pretrained and n < cfg.small_data)
        if wanted and encoder in ENCODERS:
            cfg.student = encoder
            cfg.student_init = "teacher" if cfg.student_init == "auto" else cfg.student_init
            log(f"student: the teacher's encoder ({encoder}), {cfg.student_init} start "
                f"({n} training recordings; small_data {cfg.small_data})")
        else:
            cfg.student = SMALL_STUDENT
            why = "the teacher's encoder was not pretrained" if not pretrained else f"{n} training recordings"
            log(f"student: {SMALL_STUDENT} ({why})")
        # few recordings: smaller batches, so that an epoch is more than a couple of steps
        batch = capped_batch(cfg.trainer.batch_size, cfg.small_data_batch)
        if (wanted or n < cfg.small_data) and batch != cfg.trainer.batch_size:
            cfg.trainer.batch_size = batch
            log(f"batch size {batch} per device (small_data_batch; 0 keeps --batch-size)")
    if cfg.student_init == "auto":
        cfg.student_init = "scratch"


def resolve_ctc(cfg: DistillConfig, log=print) -> None:
    """Settle ``data.language`` ("auto": the teacher's, else detected from the training texts) and
    switch off the CTC tokens the teacher's messages have none of (in place, so config.yaml records it)."""
    from plcli.data.manifest import read_manifest
    from plcli.text import build_tokenizer

    teacher = open_teacher(cfg.teacher)
    inherited = teacher.run.get("data.language") if teacher.run is not None else None
    if cfg.data.language == AUTO and inherited not in (None, AUTO):
        cfg.data.language = resolve_language(inherited, ())
        log(f"language: {cfg.data.language} (the teacher's)")
    else:  # the texts are read only when they are needed
        texts = (t for p in cfg.data.manifests for t in row_texts(read_manifest(p)[0]))
        cfg.data.language = resolve_language(cfg.data.language, chain(texts, teacher.vocab.display), log)
    if not cfg.ctc.enabled:
        return
    texts, voice = teacher.vocab.display, espeak_voice(cfg.data.language)
    tokens, other = cfg.ctc.tokens, "phoneme" if cfg.ctc.tokens == "char" else "char"
    n = {k: build_tokenizer(k, texts, voice=voice).size - 1 for k in (tokens, other)}
    if not n[tokens]:
        hint = f"; --ctc-tokens {other} finds {n[other]}" if n[other] else ""
        log(f"CTC head off: the teacher's {len(texts)} message texts have no {tokens} token "
            f"(language {cfg.data.language}{hint}); training without it")
        cfg.ctc.weight = 0.0
    elif cfg.ctc_other_tokens and _ctc_phase(cfg) and not n[other]:
        log(f"no CTC start with {other} tokens: the teacher's message texts have none")
        cfg.ctc_other_tokens = False


def _ctc_phase(cfg: DistillConfig) -> bool:
    """Whether the CTC head is trained in a phase of its own after the rounds (``RUN_DIR/ctc``)."""
    return cfg.ctc.enabled and cfg.ctc_epochs != 0


def warm_epochs(cfg: DistillConfig) -> int:
    """Epochs of a warm-started round."""
    return cfg.warm_epochs or max(1, cfg.trainer.epochs // 5)


def _run_rounds(cfg: DistillConfig, log, callbacks: list | None) -> dict:
    """Self-training: round k distils round k-1's student (same seed, so the same held-out rows).

    ``RUN_DIR`` is opened by the first round that runs, once its inputs passed every check.
    """
    out = Path(cfg.out)
    # a resumed run must keep the teacher's label vocabulary (checked before any round runs)
    check_run_dir(out, STAGE, cfg.trainer.resume, cfg.overwrite, open_teacher(cfg.teacher).vocab)
    opened = [out / "config.yaml" if cfg.trainer.resume is not None and (out / "config.yaml").exists() else None]

    def open_parent() -> None:
        if opened[0] is None:
            opened[0] = start_run(out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite, log=log)

    phase = _ctc_phase(cfg)
    teacher, summary, m = cfg.teacher, [], {}
    # (folder, description, kind): the rounds, then the CTC phase's starts and its refits
    steps = [(f"round{k}", f"round {k}/{cfg.rounds}", "round") for k in range(1, cfg.rounds + 1)]
    plan = _start_plan(cfg) if phase else []  # (tokens, seed) of each CTC phase start
    if phase:
        steps += [(_start_dir(j), "CTC phase" + (f", start {j}/{len(plan)} ({tokens})" if len(plan) > 1 else ""),
                   "start") for j, (tokens, _) in enumerate(plan, 1)]
        steps += [(f"ctc{j}", f"CTC refit {j - 1}/{cfg.ctc_refits}", "refit") for j in range(2, cfg.ctc_refits + 2)]
    ctc_steps: list[dict] = []
    starts: list[dict] = []
    wanted, kept = len(plan), None
    for k, (name, what, kind) in enumerate(steps, 1):
        if kind == "start":
            if len(starts) >= wanted:
                continue
            teacher = out / f"round{cfg.rounds}"  # every start distils the last round
        sub = DistillConfig.from_dict({**cfg.to_dict(), "rounds": 1, "teacher": str(teacher), "ctc_refits": 0,
                                       "ctc_starts": 1, "ctc_other_tokens": False})
        sub.out = str(out / name)
        ctc_only, refit = kind != "round", kind == "refit"
        warm = cfg.warm_start and 1 < k <= cfg.rounds
        if warm:
            sub.trainer.epochs = warm_epochs(cfg)
        if ctc_only:
            sub.trainer.epochs = cfg.ctc_epochs or cfg.trainer.epochs
            if refit:
                sub.trainer.epochs = cfg.ctc_refit_epochs or max(1, sub.trainer.epochs // 3)
                sub.ctc.tokens = kept["tokens"]  # the refit continues the kept start's head
            else:
                sub.ctc.tokens, sub.trainer.seed = plan[len(starts)]
        elif phase or (k < cfg.rounds and not cfg.ctc_all_rounds):
            sub.ctc.weight = 0.0  # only the student that is kept needs the CTC head
        # a step without the vote: its teacher learnt from targets that already held it
        sub.asr_rounds = None if _takes_vote(cfg, k) else 0
        done = Path(sub.out) / "metrics.json"
        if cfg.trainer.resume is not None and _reusable(Path(sub.out), teacher, kind, sub.ctc.tokens):
            log(f"{what}: already done, reusing {sub.out}")
            m = json.loads(done.read_text(encoding="utf-8"))
        else:
            log(f"{what}: teacher {teacher}")
            # a fresh top-level run replaces stale rounds; a resumed one continues them
            sub.overwrite = cfg.trainer.resume is None
            m = _run_round(sub, log, callbacks, on_start=open_parent, ctc_only=ctc_only, warm=warm, refit=refit)
        teacher = Path(sub.out)
        if kind == "start":
            starts.append({"dir": name, "tokens": sub.ctc.tokens, "seed": sub.trainer.seed,
                           "validation_accuracy": _ranking_accuracy(m),
                           "total_seconds": m.get("total_seconds"), "_m": m})
            if len(starts) == 1:
                wanted = _wanted_starts(cfg, m, log)
            if len(starts) < wanted:
                continue
            kept = starts[_best_start(starts)]
            if len(starts) > 1:
                log("CTC phase: kept " + kept["dir"] + " (validation ranking "
                    + ", ".join(f"{s['dir']} {_fmt(s['validation_accuracy'])}" for s in starts) + ")")
            teacher, m = out / kept["dir"], kept["_m"]
        if ctc_only:
            ctc_steps.append({key: m.get(key) for key in
                              ("fit_seconds", "total_seconds", "epochs", "ranking", "targets_disambiguation_acc_initial")})
        else:
            summary.append({key: m.get(key) for key in
                            ("val_acc", "val_acc_within", "disambiguation_acc", "fit_seconds", "total_seconds")})
    open_parent()
    extra = {"ctc_phase": ctc_steps[0], "ctc_refits": ctc_steps[1:]} if phase else {}
    if len(starts) > 1:
        extra["ctc_starts"] = [{k: v for k, v in s.items() if k != "_m"} for s in starts]
        extra["ctc_phase"].update({k: kept[k] for k in ("dir", "tokens")})
    return _finish_rounds(cfg, out, teacher, summary, {**m, **extra})


def _takes_vote(cfg: DistillConfig, step: int) -> bool:
    """Whether the ``step``-th step (1-based: the rounds, then the CTC phase's starts and refits) adds
    the recogniser's vote to its targets: a round when ``asr_rounds`` (None: every round) covers it, a
    CTC step when ``asr_ctc``."""
    if step > cfg.rounds:
        return cfg.asr_ctc
    return cfg.asr_rounds is None or step <= cfg.asr_rounds


START_SEED_STEP = 1000  # seed offset between CTC phase starts (the rounds' seeds stay as they are)


def _start_plan(cfg: DistillConfig) -> list[tuple[str, int]]:
    """(tokens, trainer seed) of every CTC phase start: ``ctc_starts`` with ``ctc.tokens`` (seed +
    1000 each), then, with ``ctc_other_tokens``, one with the other tokens (the run's seed)."""
    plan = [(cfg.ctc.tokens, cfg.trainer.seed + START_SEED_STEP * j) for j in range(cfg.ctc_starts)]
    if cfg.ctc_other_tokens:
        plan.append(("phoneme" if cfg.ctc.tokens == "char" else "char", cfg.trainer.seed))
    return plan


def _start_dir(j: int) -> str:
    """Folder of the CTC phase's ``j``-th start (1-based) in ``RUN_DIR``."""
    return "ctc" if j == 1 else f"ctc-start{j}"


def _reusable(step: Path, teacher, kind: str, tokens: str) -> bool:
    """Whether a resumed run may reuse the finished step in ``step``: a CTC step only with the same
    tokens, and a refit only when it continued the same CTC start as ``teacher`` (the kept start
    can change when the starts do)."""
    if not ((step / "metrics.json").exists() and (step / "model.pt").exists()):
        return False
    if kind == "round":
        return True
    done = read_run_config(step)
    if (done.get("ctc") or {}).get("tokens") != tokens:
        return False
    return kind != "refit" or Path(str(done.get("teacher"))).name == Path(teacher).name


def _wanted_starts(cfg: DistillConfig, first: dict, log) -> int:
    """How many CTC phase starts to train, given the first start's metrics ``first``: extra ones only
    where the validation rows can choose between them and the closed-set head alone leaves room
    (at most ``ctc_starts_below`` of them right; above that, as on a closed vocabulary, the CTC head
    adds little to the ranking and another start is not worth a CTC phase)."""
    n = len(_start_plan(cfg))
    if n == 1:
        return 1
    ranking = first.get("ranking") or {}
    alone = [g["accuracy"] for g in ranking.get("grid", []) if g["ctc_weight"] == 0]
    if not ranking.get("rows") or not alone:
        log("CTC phase: one start (no validation rows to choose between starts)")
        return 1
    if alone[0] > cfg.ctc_starts_below:
        log(f"CTC phase: one start (the closed-set head alone ranks {alone[0]:.3f} of the validation rows right, "
            f"above ctc_starts_below {cfg.ctc_starts_below})")
        return 1
    return n


def _ranking_accuracy(m: dict) -> float | None:
    """The combined ranking's within-candidate accuracy on the validation rows, None without rows."""
    r = m.get("ranking") or {}
    return r.get("accuracy") if r.get("rows") else None


def _best_start(starts: list[dict]) -> int:
    """Index of the start with the best validation ranking (the first on ties, or without rows)."""
    acc = [s["validation_accuracy"] for s in starts]
    if any(a is None for a in acc):
        return 0
    return max(range(len(acc)), key=lambda i: (acc[i], -i))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _finish_rounds(cfg: DistillConfig, out: Path, last_round: Path, summary: list[dict], m: dict) -> dict:
    """Copy the last student to ``RUN_DIR``, with the resolved config and the rounds' summary."""
    import shutil

    for name in ("model.pt", "vocab.json"):
        with open(last_round / name, "rb") as src, atomic_open(out / name, "wb", encoding=None) as dst:
            shutil.copyfileobj(src, dst)
    # the resolved (inherited) settings, so this run can itself be a teacher or be resumed
    last = read_upstream(last_round, "--teacher").config
    last = {k: v for k, v in last.items() if k in DistillConfig.__dataclass_fields__}
    # the run's own epochs and CTC settings, not those of its last (warm or CTC-only) step
    save_config(out, DistillConfig.from_dict({**last, "out": str(out), "teacher": cfg.teacher, "rounds": cfg.rounds,
                                              "overwrite": cfg.overwrite, "trainer": cfg.to_dict()["trainer"],
                                              "ctc": cfg.to_dict()["ctc"], "ctc_refits": cfg.ctc_refits,
                                              "ctc_starts": cfg.ctc_starts, "ctc_other_tokens": cfg.ctc_other_tokens,
                                              "asr_rounds": cfg.asr_rounds, "asr_ctc": cfg.asr_ctc}),
                STAGE)
    # the stage's time is its rounds' (also when some of them ran before a resume)
    phase = m.get("ctc_starts") or ([m["ctc_phase"]] if m.get("ctc_phase") else [])  # every start took its time
    seconds = sum(r["total_seconds"] or 0.0 for r in summary + phase + (m.get("ctc_refits") or []))
    return write_metrics(out, {**m, "teacher": str(cfg.teacher), "rounds": summary, "total_seconds": seconds})


@dataclass
class _Rows:
    """The manifest rows in the teacher's vocabulary, and who trains and who validates."""

    rows: list
    mask: np.ndarray  # (N, C) bool candidates known to the teacher
    y: np.ndarray  # (N,) exact label, -1 none or unknown
    unknown_label: np.ndarray  # (N,) bool: an exact label the teacher does not know (left out)
    pool: np.ndarray  # rows that may train the student
    val_idx: np.ndarray  # held-out exact rows
    truth: np.ndarray  # (N,) --truth label: -2 none, -1 outside the vocabulary


def load_rows(cfg: DistillConfig, vocab: Vocabulary, fraction: float, split_seed: int, log) -> _Rows:
    from plcli.data.manifest import read_truth

    rows = load_training_rows(cfg.data, Path(cfg.out), log=log).rows
    mask, y = candidate_matrix(rows, vocab), label_vector(rows, vocab)
    unknown_label = np.array([r.label is not None for r in rows]) & (y < 0)
    if unknown_label.any():
        log(f"left out {int(unknown_label.sum())} exact row(s) whose label is not in the teacher's vocabulary")
    held = holdout_ids([r.id for r in rows if r.label is not None], fraction, split_seed)
    is_held = np.array([r.id in held for r in rows])
    pool = np.flatnonzero(~is_held & ~unknown_label)
    if len(pool) == 0:
        raise UserError("no training rows left after the held-out split")
    truth = truth_vector(rows, read_truth(cfg.truth), vocab) if cfg.truth else np.full(len(rows), NO_TRUTH)
    return _Rows(rows, mask, y, unknown_label, pool, np.flatnonzero(is_held & (y >= 0)), truth)


def _targets(cfg: DistillConfig, teacher: _Teacher, d: _Rows, clean, views, view_seed: int,
             log_prior: Tensor | None, ranked: bool = False,
             bonus: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """The teacher's target table over the pool (reused from RUN_DIR when its key matches), its
    kinds, the cache key and whether it was reused. Writes nothing.

    ``ranked`` (a CTC refit): candidate rows' targets are the softmax of the teacher's combined
    ranking scores (``plcli.ranking``, its stored setting) over their candidates, clean clips only.
    ``bonus``: (P, C) logit bonus of the recogniser's vote over the pool (``plcli.asr_prior``), already
    in the units of the logits it is added to.
    """
    view_tag = hashlib.blake2b(
        json.dumps([cfg.augment.waveform_params(), cfg.views, view_seed, "ranked" if ranked else ""]).encode(),
        digest_size=8,
    ).hexdigest()
    key = _targets_key(teacher.file, [d.rows[i].id for i in d.pool], d.mask[d.pool], d.y[d.pool], cfg, view_tag,
                       ranked, bonus)
    cached = load_targets(Path(cfg.out), key)
    if cached is not None:
        return *cached, key, True
    if ranked:
        logits = [ranked_logits(teacher, [d.rows[i] for i in d.pool], RowView(clean, d.pool))]
        log_prior = None  # the ranking's setting was chosen on validation rows as it is
    else:
        logits = [predict_logits(teacher.model, RowView(clean, d.pool))]
        logits += [predict_logits(teacher.model, RowView(views, None, v)) for v in range(cfg.teacher_views)]
    if bonus is not None:
        logits = [z + bonus for z in logits]
    tgt, kind, _ = teacher_targets(torch.from_numpy(np.stack(logits)), torch.from_numpy(d.mask[d.pool]),
                                   torch.from_numpy(d.y[d.pool]), cfg.temperature, cfg.confidence, log_prior)
    return tgt.numpy(), kind.numpy(), key, False


def ranked_logits(teacher: _Teacher, rows: list, feats) -> np.ndarray:
    """(N, C) logits whose candidate-restricted softmax is the teacher's combined ranking of each
    row's candidates (``plcli.ranking.rank`` with the setting stored in its ``model.pt``).

    Rows without a known candidate keep the closed-set logits; a class that is several of a row's
    candidate texts takes the best of their scores. ``feats``: (N, F, T), aligned with ``rows``.
    """
    from plcli.ranking import candidate_classes, model_scores, rank, ranking_of

    cands = [r.candidates or [] for r in rows]
    scores = model_scores(teacher.model, feats, cands)
    logits = scores["logits"].astype(np.float32)
    classes = candidate_classes(cands, teacher.vocab)  # (N, K)
    # the raw combined scores, not their calibrated softmax (``ranking["temperature"]``): with a CTC
    # weight of 1000 the targets are the ranking's top candidate, and the refit learned more from that
    # than from the calibrated distribution (docs/ctc.md); and
    # without the prior correction, which is for messages new at test time: a training row's message
    # is one the training rows hold
    combined = rank(softmax(logits), scores, classes, ranking_of(getattr(teacher.model, "extra", None)))["combined"]
    # each row's best candidate at 0, so that the floor of -1e4 for the other classes lies below every
    # candidate that carries any weight, whatever the scale of the scores
    top = np.max(np.where(classes >= 0, combined, -np.inf), axis=1, keepdims=True)
    combined = combined - np.where(np.isfinite(top), top, 0.0)
    out = np.full_like(logits, -1e4)
    for i, k in zip(*np.nonzero(classes >= 0), strict=True):
        out[i, classes[i, k]] = max(out[i, classes[i, k]], combined[i, k])
    has = (classes >= 0).any(1)
    return np.where(has[:, None], out, logits)


def _module(cfg: DistillConfig, teacher: _Teacher, targets: Tensor, log_prior: Tensor | None,
            ctc_only: bool = False, warm: bool = False, refit: bool = False) -> DistillModule:
    from plcli.models.ctc import text_targets
    from plcli.text import build_tokenizer

    ctc, tok = None, None
    if cfg.ctc.enabled:
        tok = build_tokenizer(cfg.ctc.tokens, teacher.vocab.display,
                              voice=voice_of(cfg.data.language, teacher.vocab.display))
        ctc = cfg.ctc.head_args(tok)
    module = DistillModule(
        student_args(cfg, teacher.features.n_mels, len(teacher.vocab), ctc,
                     input_norm=teacher.model.kwargs["input_norm"]), num_train=len(targets),
        temperature=cfg.temperature, exact_weight=cfg.exact_weight, lr=cfg.trainer.lr,
        weight_decay=cfg.trainer.weight_decay, spec_augment=cfg.augment.spec.to_dict(), refine=cfg.refine,
        refine_momentum=cfg.refine_momentum, refine_start=cfg.refine_start, cc_weight=cfg.cc_weight,
        ctc_weight=cfg.ctc.weight, ctc_rows=cfg.ctc_rows, ctc_only=ctc_only,
        mel_range=[teacher.features.f_min, teacher.features.f_max], ctc_tempo=cfg.ctc.tempo, ctc_vtlp=cfg.ctc.vtlp,
    )
    if ctc_only or warm:
        # start from the teacher's classifier; a CTC refit also continues the teacher's CTC head
        state = {k: v for k, v in teacher.model.state_dict().items() if refit or not k.startswith("ctc_head.")}
        missing, unexpected = module.model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("ctc_head.") for k in missing) or (refit and missing):
            raise UserError(f"{cfg.teacher}: its classifier does not fit the student's settings "
                            f"({len(unexpected)} unexpected, {len(missing)} missing weights)")
    elif cfg.student_init == "teacher":
        # a fresh student whose encoder starts as the teacher's (SimCLRv2's pretrained network); the head is new
        state = teacher.model.encoder.state_dict()
        try:
            module.model.encoder.load_state_dict(state)
        except RuntimeError:
            raise UserError(f"--student-init teacher: the teacher's encoder does not fit --student {cfg.student} "
                            "(use the teacher's encoder architecture)") from None
    if ctc_only:
        # the CTC phase: the teacher's classifier, frozen; only the new CTC head trains
        for name, param in module.model.named_parameters():
            param.requires_grad_(name.startswith("ctc_head."))
    if tok is not None:
        tokens, lengths = text_targets(tok, teacher.vocab.display)
        module.class_tokens, module.class_lengths = tokens, lengths
    module.targets.copy_(targets)
    if log_prior is not None:
        module.log_prior.copy_(log_prior)
    return module


def _loaders(cfg: DistillConfig, d: _Rows, clean, views, kind: np.ndarray, train_pos: np.ndarray, log):
    """(train, validation) loaders: cached views of the kept pool rows; clean held-out rows (or None)."""
    train_ds = ViewRows(views, index=train_pos, y=torch.from_numpy(d.y[d.pool][train_pos]),
                        kind=torch.from_numpy(kind[train_pos]), mask=torch.from_numpy(d.mask[d.pool][train_pos]))
    bs = min(cfg.trainer.batch_size, len(train_ds))
    # a last batch of one row would break BatchNorm in training mode
    drop_last = len(train_ds) >= 2 * bs or len(train_ds) % bs == 1
    train_loader = DataLoader(train_ds, batch_size=bs, shuffle=True, drop_last=drop_last,
                              collate_fn=FeatureRows.collate_fn, num_workers=cfg.trainer.num_workers,
                              persistent_workers=cfg.trainer.num_workers > 0)
    if not len(d.val_idx):
        log("no held-out exact rows: no validation metrics")
        return train_loader, None
    val_ds = FeatureRows(clean, index=d.val_idx, y=torch.from_numpy(d.y[d.val_idx]),
                         mask=torch.from_numpy(d.mask[d.val_idx]))
    return train_loader, DataLoader(val_ds, batch_size=1024, shuffle=False, collate_fn=FeatureRows.collate_fn)


@dataclass
class _Round:
    """A round's checked inputs: the teacher, the rows, their features and the target table."""

    teacher: _Teacher
    d: _Rows
    held_out: dict  # the held-out split: fraction and seed
    clean: np.ndarray  # (N, F, T) clean features of every row
    views: np.ndarray  # (P, V, F, T) augmented views of the pool
    log_prior: Tensor | None
    targets: np.ndarray  # (P, C) the teacher's targets over the pool
    kind: np.ndarray  # (P,) EXACT, CANDIDATE, FREE or DROPPED
    key: str
    reused: bool
    seconds: dict
    asr: dict | None = None  # the recogniser's vote (plcli.asr_prior), when used


def _prepare_round(cfg: DistillConfig, log, ctc_only: bool = False, refit: bool = False) -> _Round:
    """Read and check everything, and compute (or reuse) the teacher's targets; writes no run."""
    check_run_dir(cfg.out, STAGE, cfg.trainer.resume, cfg.overwrite)
    teacher = open_teacher(cfg.teacher)
    fraction, split_seed, view_seed = _inherit(cfg, teacher, log)
    d = load_rows(cfg, teacher.vocab, fraction, split_seed, log)
    check_run_dir(cfg.out, STAGE, cfg.trainer.resume, cfg.overwrite, teacher.vocab)
    if cfg.data.language == AUTO:  # run() settles it once for its rounds; a round on its own here
        cfg.data.language = resolve_language(AUTO, row_texts(d.rows), log)

    cache = open_cache(cfg.data, teacher.features)
    t_feat = Timer()
    keys, clean = cache.features([r.audio for r in d.rows])
    log(f"distilling on {len(d.pool)} recordings; caching {cfg.views} augmented views per clip ...")
    _, views = cache.views([d.rows[i].audio for i in d.pool], cfg.augment.waveform_params(), cfg.views, view_seed,
                           workers=view_workers(len(d.pool) * cfg.views, cfg.trainer.num_workers),
                           keys=[keys[i] for i in d.pool])
    feature_seconds = t_feat.seconds
    t_teach = Timer()
    # (C,) log share of candidate slots over every row: the teacher's targets and the student's loss
    log_prior = candidate_log_prior(torch.from_numpy(d.mask)) if cfg.prior_correction else None
    # the CTC phase draws texts from targets ** T: with log pi / T they are p / pi restricted, the
    # correction whose favourite is most often right (the rounds' T-fold one trains better students)
    target_prior = log_prior / cfg.temperature if ctc_only and log_prior is not None else log_prior
    if refit and not teacher.model.has_ctc:
        raise UserError(f"{cfg.teacher}: a CTC refit needs a teacher with a CTC head")
    bonus, asr = _asr_bonus(cfg, teacher, d, ctc_only, refit, log)
    targets, kind, key, reused = _targets(cfg, teacher, d, clean, views, view_seed, target_prior, ranked=refit,
                                          bonus=bonus)
    log(("reused" if reused else "computed") + " the teacher's targets: "
        + ", ".join(f"{(kind == k).sum()} {name}" for k, name in enumerate(KINDS)))
    if (kind != DROPPED).sum() < 2:
        raise UserError(f"only {(kind != DROPPED).sum()} training row(s) after filtering; distillation needs at least 2")
    seconds = {"feature_seconds": feature_seconds, "teacher_seconds": t_teach.seconds,
               "cache": {"computed": cache.computed, "reused": cache.reused}}
    return _Round(teacher, d, {"fraction": fraction, "seed": split_seed}, clean, views, log_prior, targets, kind,
                  key, reused, seconds, asr)


def _asr_bonus(cfg: DistillConfig, teacher: _Teacher, d: _Rows, ctc_only: bool, refit: bool,
               log) -> tuple[np.ndarray | None, dict | None]:
    """(P, C) the recogniser's vote over the pool in the units of the logits it joins, and its summary.

    Bayes' rule adds the vote's log-likelihood ``delta`` to the log-probabilities. The rounds' targets
    are softmax(z / T), so ``T * delta`` is added to z; the CTC phase sharpens its draws back to T = 1,
    so ``delta``; the refit's ranking scores are its calibrated log-probabilities times the ranking's
    fitted temperature t, so ``t * delta`` (and its targets stay as sharp as the ranking's own).
    """
    from plcli.asr_prior import prior_for

    if cfg.asr_prior == "none" or cfg.asr_rounds == 0:  # _inherit has made "auto" the teacher's setting
        return None, None
    bonus, info = prior_for(d.rows, teacher.vocab, cfg.asr_prior, cache_dir(cfg.data.cache_dir),
                            cfg.asr_accuracy, cfg.asr_workers, log, model=cfg.asr_model, language=cfg.data.language,
                            window=cfg.asr_window)
    if refit:
        from plcli.ranking import ranking_of

        scale = float(ranking_of(getattr(teacher.model, "extra", None)).get("temperature") or 1.0)
    else:
        scale = 1.0 if ctc_only else cfg.temperature
    return (scale * bonus[d.pool]).astype(np.float32), {**info, "scale": scale}


def _run_round(cfg: DistillConfig, log=print, callbacks: list | None = None, on_start=None,
               ctc_only: bool = False, warm: bool = False, refit: bool = False) -> dict:
    """One distillation of ``cfg.teacher`` into a fresh student (``ctc_only``: the CTC phase, which
    keeps the teacher's classifier and trains only a CTC head on the teacher's targets).

    Everything is read and checked, and the teacher's targets computed, before ``RUN_DIR`` is
    written (``on_start`` runs just before that, for the rounds' parent folder).
    """
    timer = Timer()
    set_threads()
    r = _prepare_round(cfg, log, ctc_only, refit)
    if on_start is not None:
        on_start()
    out = start_run(cfg.out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite, r.teacher.vocab, log)
    if not r.reused:
        save_targets(out, r.key, r.targets, r.kind)
    L.seed_everything(cfg.trainer.seed, workers=True)
    train_pos = np.flatnonzero(r.kind != DROPPED)  # positions in the pool
    module = _module(cfg, r.teacher, torch.from_numpy(r.targets[train_pos]), r.log_prior, ctc_only, warm, refit)
    initial_targets = module.targets.clone().numpy()
    train_loader, val_loader = _loaders(cfg, r.d, r.clean, r.views, r.kind, train_pos, log)
    monitor = "val/acc" if val_loader is not None else None
    trainer = build_trainer(cfg.trainer, out, monitor=monitor, mode="max", extra_callbacks=callbacks)
    t_fit = Timer()
    fit(trainer, module, train_loader, val_loader, resolve_resume(out, cfg.trainer.resume), out)
    fit_seconds = t_fit.seconds

    student = module.model.cpu().eval().requires_grad_(True)  # the CTC phase froze the classifier
    result = _summary(cfg, r, student, trainer, train_pos)
    t_inf = Timer()
    s_logits = predict_logits(student, r.clean)  # (N, C) every row
    inference_seconds = t_inf.seconds
    s_probs = softmax(s_logits)
    result.update(_held_out_metrics(out, r.teacher.model, r.clean, s_probs, r.d))
    result.update(_candidate_metrics(s_probs, r.d, r.kind, train_pos, initial_targets,
                                     module.targets.detach().cpu().numpy()))
    result.update({"student_clips_per_second": len(r.d.rows) / max(inference_seconds, 1e-9),
                   "threads": torch.get_num_threads(), "feature_seconds": r.seconds["feature_seconds"],
                   "teacher_seconds": r.seconds["teacher_seconds"], "fit_seconds": fit_seconds,
                   "total_seconds": timer.seconds, "cache": r.seconds["cache"]})
    ranking = tune_ranking(student, r.teacher.vocab, r.teacher.features, [r.d.rows[i] for i in r.d.val_idx],
                           RowView(r.clean, r.d.val_idx), cfg.ranking_manifest, cfg.data, log)
    if student.has_ctc:
        result["ranking"] = ranking
    cascade = _cascade(cfg, r, student, ranking, log)
    if cascade:
        result["cascade"] = cascade
    if not trainer.is_global_zero:
        return jsonable(result)
    save_model(out / "model.pt", student, r.teacher.vocab, r.teacher.features, STAGE,
               extra={"teacher": str(cfg.teacher), "temperature": cfg.temperature, "refine": cfg.refine,
                      "ranking": {k: v for k, v in ranking.items() if k != "grid"},
                      **({"cascade": {k: v for k, v in cascade.items() if k != "grid"}} if cascade else {})})
    return write_metrics(out, result)


def _cascade(cfg: DistillConfig, r: _Round, student: Classifier, ranking: dict, log) -> dict | None:
    """The cascade's threshold on the held-out exact rows, where the student was trained with Whisper
    (whose scores of those rows are then in the cache); None otherwise."""
    if cfg.asr_prior != "whisper" or not len(r.d.val_idx):
        return None
    from plcli.cascade import tune

    return tune(student, r.teacher.vocab, [r.d.rows[i] for i in r.d.val_idx], RowView(r.clean, r.d.val_idx), ranking,
                cache_dir(cfg.data.cache_dir), cfg.asr_model, cfg.data.language, cfg.asr_window, log)


def _summary(cfg: DistillConfig, r: _Round, student: Classifier, trainer, train_pos: np.ndarray) -> dict:
    """The round's description: models, rows by kind, settings, steps."""
    kind = r.kind
    return {
        "stage": STAGE,
        "teacher": str(cfg.teacher),
        "teacher_stage": r.teacher.stage,
        "student": cfg.student,
        "student_parameters": count_parameters(student),
        "teacher_parameters": count_parameters(r.teacher.model),
        "rows": len(r.d.rows),
        "classes": len(r.teacher.vocab),
        "held_out_exact": int(len(r.d.val_idx)),
        "held_out": r.held_out,
        "training_rows": {name: int((kind[train_pos] == k).sum()) for k, name in enumerate(KINDS) if k != DROPPED},
        "no_candidate_rows_dropped": int((kind == DROPPED).sum()),
        "unknown_label_rows_dropped": int(r.d.unknown_label.sum()),
        "temperature": cfg.temperature,
        "confidence": cfg.confidence,
        "refine": cfg.refine,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "targets_reused": r.reused,
        **({"asr_prior": r.asr} if r.asr else {}),
    }


def _held_out_metrics(out: Path, teacher: Classifier, clean, s_probs: np.ndarray, d: _Rows) -> dict:
    """Student and teacher accuracy on the held-out exact rows (clean features)."""
    if not len(d.val_idx):
        return {}
    t_probs = softmax(predict_logits(teacher, RowView(clean, d.val_idx)))
    vm = classification_metrics(s_probs[d.val_idx], d.y[d.val_idx], d.mask[d.val_idx])
    tm = classification_metrics(t_probs, d.y[d.val_idx], d.mask[d.val_idx])
    return {
        "val_acc": vm["accuracy"],
        "val_acc_within": vm["accuracy_within_candidates"],
        "val_macro_f1": vm["macro_f1"],
        "val_ece": vm["ece"],
        "teacher_val_acc": tm["accuracy"],
        "teacher_val_acc_within": tm["accuracy_within_candidates"],
        "val_acc_history": logged_history(out, "val/acc"),
    }


def _candidate_metrics(s_probs: np.ndarray, d: _Rows, kind: np.ndarray, train_pos: np.ndarray,
                       initial: np.ndarray, final: np.ndarray) -> dict:
    """Covering rate on the candidate training rows; with --truth, the student's and the target
    table's (before and after refinement) disambiguation accuracy."""
    cand_pos = train_pos[kind[train_pos] == CANDIDATE]  # pool positions of the candidate training rows
    cand_rows = d.pool[cand_pos]
    if not len(cand_rows):
        return {}
    out = {"covering_rate": covering_rate(s_probs[cand_rows].argmax(1), d.mask[cand_rows])}
    truth_c = d.truth[cand_rows]
    known = truth_c != NO_TRUTH
    if known.any():
        at = np.searchsorted(train_pos, cand_pos[known])  # positions in the target table
        s_pred = restricted_predictions(s_probs[cand_rows[known]], d.mask[cand_rows[known]])
        out.update({
            "disambiguation_rows": int(known.sum()),
            "disambiguation_acc": float(np.mean(s_pred == truth_c[known])),
            "targets_disambiguation_acc_initial": float(np.mean(initial[at].argmax(1) == truth_c[known])),
            "targets_disambiguation_acc_final": float(np.mean(final[at].argmax(1) == truth_c[known])),
        })
    return out
