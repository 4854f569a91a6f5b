"""The student's LightningModule, and the student a step starts from."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from plcli.config import (
    FeatureConfig,
)
from plcli.data.augment import SpecAugmentConfig, SpectrogramAugment, VocalTractWarp
from plcli.distill.config import DistillConfig
from plcli.distill.inputs import Teacher
from plcli.distill.plan import Refit, Step
from plcli.distill.resolve import student_args
from plcli.distill.targets import CANDIDATE, EXACT, refine_targets
from plcli.errors import UserError
from plcli.language import voice_of
from plcli.losses import CandidateLoss, SoftTargetCrossEntropy
from plcli.metrics import restricted_predictions
from plcli.models.classifier import Classifier
from plcli.training import adamw_cosine, graph_zero


class DistillModule(L.LightningModule):
    """Student classifier trained on the target table; ``targets`` is a buffer (checkpointed with
    refine)."""

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
        outside: float = 0.0,
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
        self.register_buffer(
            "class_tokens", torch.ones(student["num_classes"], 1, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "class_lengths", torch.zeros(student["num_classes"], dtype=torch.long), persistent=False
        )
        self.model = Classifier(**student)
        self.spec_aug = SpectrogramAugment(
            SpecAugmentConfig.from_dict(spec_augment or {}), mel_range=mel_range
        )
        self.ctc_warp = VocalTractWarp(
            *(mel_range or (FeatureConfig.f_min, FeatureConfig.f_max)), max_warp=ctc_vtlp
        )
        self.soft_ce = SoftTargetCrossEntropy(temperature, reduction="none")
        self.cc = CandidateLoss(reduction="none", outside=outside)
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
            self.log_dict(
                {"train/ctc": ctc, "train/loss": ctc},
                on_step=False,
                on_epoch=True,
                batch_size=batch["x"].shape[0],
            )
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

    def loss(
        self, logits: Tensor, t: Tensor, kind: Tensor, y: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
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
        return F.ctc_loss(
            log_probs,
            self.class_tokens[c],
            torch.full((len(sel),), T, dtype=torch.long),
            self.class_lengths[c],
            reduction="mean",
            zero_infinity=True,
        )

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
        """The student's logits on the batch's cached view without the spectrogram augmentations, in
        eval mode.

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


def build_module(
    cfg: DistillConfig, step: Step, teacher: Teacher, targets: Tensor, log_prior: Tensor | None
) -> DistillModule:
    """The LightningModule of ``step``: the student, its (P', C) ``targets`` and the (C,) ``log_prior``."""
    from plcli.models.ctc import text_targets
    from plcli.text import build_tokenizer

    ctc, tok = None, None
    if cfg.ctc.enabled:
        tok = build_tokenizer(
            cfg.ctc.tokens, teacher.vocab.display, voice=voice_of(cfg.data.language, teacher.vocab.display)
        )
        ctc = cfg.ctc.head_args(tok)
    module = DistillModule(
        student_args(
            cfg,
            teacher.features.n_mels,
            len(teacher.vocab),
            ctc,
            input_norm=teacher.model.kwargs["input_norm"],
        ),
        num_train=len(targets),
        temperature=cfg.temperature,
        exact_weight=cfg.exact_weight,
        lr=cfg.trainer.lr,
        weight_decay=cfg.trainer.weight_decay,
        spec_augment=cfg.augment.spec.to_dict(),
        refine=cfg.refine,
        refine_momentum=cfg.refine_momentum,
        refine_start=cfg.refine_start,
        cc_weight=cfg.cc_weight,
        outside=cfg.outside_weight,
        ctc_weight=cfg.ctc.weight,
        ctc_rows=cfg.ctc_rows,
        ctc_only=step.ctc_only,
        mel_range=[teacher.features.f_min, teacher.features.f_max],
        ctc_tempo=cfg.ctc.tempo,
        ctc_vtlp=cfg.ctc.vtlp,
    )
    _start_student(cfg, step, teacher, module.model)
    if tok is not None:
        tokens, lengths = text_targets(tok, teacher.vocab.display)
        module.class_tokens, module.class_lengths = tokens, lengths
    module.targets.copy_(targets)
    if log_prior is not None:
        module.log_prior.copy_(log_prior)
    return module


def _start_student(cfg: DistillConfig, step: Step, teacher: Teacher, student: Classifier) -> None:
    """Load the weights ``step``'s student starts from (none: a fresh network) and freeze what it keeps."""
    if step.from_teacher:
        # the teacher's classifier; a CTC refit also continues the teacher's CTC head
        refit = isinstance(step, Refit)
        state = {
            k: v for k, v in teacher.model.state_dict().items() if refit or not k.startswith("ctc_head.")
        }
        missing, unexpected = student.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("ctc_head.") for k in missing) or (refit and missing):
            raise UserError(
                f"{cfg.teacher}: its classifier does not fit the student's settings "
                f"({len(unexpected)} unexpected, {len(missing)} missing weights)"
            )
    elif cfg.student_init == "teacher":
        # a fresh student whose encoder starts as the teacher's (SimCLRv2's pretrained network); the
        # head is new
        try:
            student.encoder.load_state_dict(teacher.model.encoder.state_dict())
        except RuntimeError:
            raise UserError(
                f"student_init teacher: the teacher's encoder does not fit --student {cfg.student} "
                "(use the teacher's encoder architecture)"
            ) from None
    if step.ctc_only:
        # the CTC phase: the teacher's classifier, frozen; only the new CTC head trains
        for name, param in student.named_parameters():
            param.requires_grad_(name.startswith("ctc_head."))
