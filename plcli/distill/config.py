"""``plcli distill`` options."""

from __future__ import annotations

from dataclasses import dataclass

from plcli.asr_prior import CHOICES
from plcli.config import (
    Config,
    CTCConfig,
    DataConfig,
    TrainerConfig,
    opt,
    outside_weight_opt,
)
from plcli.data.augment import AugmentConfig
from plcli.errors import UserError
from plcli.models.encoders import ENCODERS

STAGE = "distill"


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
    outside_weight: float = outside_weight_opt()
    untyped_targets: bool = opt(
        False,
        "move the targets of rows the teacher's screen finds untyped towards its unrestricted guess",
        why="off: on 1200 recordings, 20 % untyped, the student lost 0.031 with it; docs/finetune-losses.md",
    )
    rounds: int = opt(
        10, "self-training rounds: round k's teacher is round k-1's student (each in RUN_DIR/round<k>)", min=1
    )
    rounds_settle: float = opt(
        0.0,
        "stop the rounds once fewer than this share of rows change their top candidate (0: all rounds)",
        why="round k+1's targets are round k's student's: when they name the same candidate as round k's on "
        "all but this share of the training rows, another round trains on nearly the same targets; off by "
        "default, as later rounds still lifted accuracy (docs/distill.md)",
        min=0.0,
        max=1.0,
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
    ctc_all_rounds: bool = opt(
        False, "with ctc_epochs 0: train the CTC head in every self-training round, not only in the last")
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
    ctc_refit_epochs: int | None = opt(
        None, "epochs of a CTC refit (default: a third of the CTC phase's, 40 of 120)", min=1
    )
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
    asr_model: str | None = opt(
        None, "Whisper model for --recogniser whisper (default: the teacher's, else 'base')"
    )
    asr_window: float | None = opt(
        None,
        "seconds of audio Whisper's encoder sees per clip (default: the upstream run's, else 30)",
        min=3.0,
        max=30.0,
    )
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
            raise UserError(
                "ctc_all_rounds trains the CTC head jointly in every round: it needs ctc_epochs 0"
            )
        if self.teacher_views > self.views:
            raise UserError(f"teacher_views={self.teacher_views} exceeds the {self.views} cached views")
