"""Stage 3: distil the fine-tuned teacher into a smaller student on candidate-constrained pseudo-labels.

Targets, one row per training recording, computed once from the teacher and cached in the run
directory (``targets.npy`` + ``targets.json``, so ``--resume`` and reruns do not recompute them):

- exact rows: the label, one-hot (the student's loss on them is plain cross-entropy);
- candidate rows: the teacher's probabilities at temperature ``T`` restricted to the row's
  candidate set and renormalised (``plcli.losses.candidate_targets``), optionally averaged over a
  few cached augmented views of the clip;
- rows without candidates: the teacher's full distribution at ``T``, kept only when the teacher's
  top-1 probability (at ``T = 1``, averaged over the same views) reaches ``confidence``.
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
rows, cross-entropy on exact rows (weighted by ``exact_weight``); the batch loss is their
weighted mean.

``cc_weight`` w mixes the candidate set's own evidence into a candidate row's loss:
``(1 - w) * distillation + w * CC``, where CC is the prior-corrected classifier-consistent loss
``-log sum_{j in S} p_j / q_j`` (``plcli.losses.CandidateLoss``; q = each class's share of candidate
slots). The teacher's targets give the student a fast start, and the likelihood term lets it
overrule the teacher where the candidate sets disagree with it, which the teacher (a head on a
frozen encoder) cannot do. The term needs a long schedule: it is why the default is 120 epochs.

``refine`` (PRODEN-style disambiguation, Lv et al. 2020): after ``refine_start`` of the training
steps, every batch moves its candidate rows' targets towards the student's own
candidate-restricted prediction, ``target <- (1 - m) * target + m * candidate_targets(logits)``,
with the logits of a no-grad, eval-mode pass over the batch's cached view without the spectrogram
augmentations (mixup would blend in another row's class). The table is a buffer of the
LightningModule, so it is saved in every checkpoint and ``--resume`` continues from the refined
targets. Off by default: on a synthetic 10-class set with a weak teacher, refinement made the
targets more accurate but the student less accurate on average, with a larger spread over seeds
(``metrics.json`` reports both, ``targets_disambiguation_acc_*`` and ``disambiguation_acc``, given
``--truth``).

CTC head (``ctc.weight``, on by default; ``plcli.models.ctc``): the student also carries a CTC
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

The package: ``config`` (the options), ``inputs`` (the teacher and the rows), ``resolve`` (the ``auto``
settings), ``targets`` (the target table and its cache), ``module`` (the LightningModule), ``plan``
(which steps run), ``step`` (one step: a round, a CTC start or a refit) and ``execute`` (``run``).
"""

from plcli.data.datasets import open_cache
from plcli.distill.config import STAGE, DistillConfig
from plcli.distill.execute import run
from plcli.distill.inputs import Rows, Teacher, load_rows, open_teacher
from plcli.distill.module import DistillModule
from plcli.distill.plan import CTCStart, Refit, Round, Step, plan, warm_epochs
from plcli.distill.resolve import SMALL_STUDENT, capped_batch, resolve_ctc, resolve_student, student_args
from plcli.distill.targets import (
    CANDIDATE,
    DROPPED,
    EXACT,
    FREE,
    KINDS,
    load_targets,
    ranked_logits,
    refine_targets,
    save_targets,
    teacher_targets,
)

__all__ = [
    "CANDIDATE",
    "DROPPED",
    "EXACT",
    "FREE",
    "KINDS",
    "SMALL_STUDENT",
    "STAGE",
    "CTCStart",
    "DistillConfig",
    "DistillModule",
    "Refit",
    "Round",
    "Rows",
    "Step",
    "Teacher",
    "capped_batch",
    "load_rows",
    "load_targets",
    "open_cache",
    "open_teacher",
    "plan",
    "ranked_logits",
    "refine_targets",
    "resolve_ctc",
    "resolve_student",
    "run",
    "save_targets",
    "student_args",
    "teacher_targets",
    "warm_epochs",
]
