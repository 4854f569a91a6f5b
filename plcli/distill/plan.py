"""Which steps a distillation takes: its rounds, the CTC phase's starts and the CTC refits.

``plan(cfg)`` is pure: it reads the (resolved) config and lists the steps, each with the folder it
writes, its epochs, its CTC tokens and whether its targets take the recogniser's vote. What only
training can tell (how many CTC starts are worth it, which one is kept) is left to the executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from plcli.distill.config import DistillConfig

START_SEED_STEP = 1000  # seed offset between CTC phase starts (the rounds' seeds stay as they are)


@dataclass(frozen=True, kw_only=True)
class Step:
    """One distillation into ``RUN_DIR/<folder>`` (``""``: ``RUN_DIR`` itself, a run of one round)."""

    folder: str
    epochs: int
    tokens: str | None  # the CTC head's tokens ("char" or "phoneme"); None: see the step type
    vote: bool  # whether the targets add the recogniser's vote (plcli.asr_prior)
    what: str = field(default="", compare=False)  # for the log

    # only the CTC head trains, on a frozen copy of the teacher's classifier
    ctc_only: ClassVar[bool] = False

    @property
    def from_teacher(self) -> bool:
        """Whether the student starts as a copy of the teacher's classifier."""
        return self.ctc_only


@dataclass(frozen=True, kw_only=True)
class Round(Step):
    """Self-training round ``number``: round k distils round k-1's student (round 1: the teacher).
    ``tokens`` None: the round trains no CTC head."""

    number: int
    warm: bool  # starts from the previous round's student

    @property
    def from_teacher(self) -> bool:
        return self.warm


@dataclass(frozen=True, kw_only=True)
class CTCStart(Step):
    """Start ``number`` of the CTC phase: a CTC head on the last round's student, from ``seed``."""

    number: int
    seed: int
    ctc_only: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class Refit(Step):
    """CTC refit ``number``: continues the previous CTC head on its own model's combined ranking.
    ``tokens`` None in the plan: the kept CTC start's, known once the starts have run."""

    number: int
    ctc_only: ClassVar[bool] = True


def plan(cfg: DistillConfig) -> list[Step]:
    """The steps of ``plcli distill`` with ``cfg`` (its ``auto`` settings resolved): the rounds, then,
    with a CTC phase, every start it may train and the refits."""
    phase = ctc_phase(cfg)
    if cfg.rounds == 1 and not phase:
        return [_round(cfg, 1, phase, folder="")]
    steps: list[Step] = [_round(cfg, k, phase) for k in range(1, cfg.rounds + 1)]
    if not phase:
        return steps
    starts = start_plan(cfg)
    epochs = cfg.ctc_epochs or cfg.trainer.epochs
    for j, (tokens, seed) in enumerate(starts, 1):
        what = "CTC phase" + (f", start {j}/{len(starts)} ({tokens})" if len(starts) > 1 else "")
        steps.append(CTCStart(folder=start_dir(j), epochs=epochs, tokens=tokens, vote=cfg.asr_ctc, number=j,
                              seed=seed, what=what))
    refit_epochs = cfg.ctc_refit_epochs or max(1, epochs // 3)
    steps += [Refit(folder=f"ctc{j + 1}", epochs=refit_epochs, tokens=None, vote=cfg.asr_ctc, number=j,
                    what=f"CTC refit {j}/{cfg.ctc_refits}") for j in range(1, cfg.ctc_refits + 1)]
    return steps


def _round(cfg: DistillConfig, k: int, phase: bool, folder: str | None = None) -> Round:
    warm = cfg.warm_start and k > 1
    # only the student that is kept needs the CTC head: the last round's, without a CTC phase
    head = cfg.ctc.enabled and not phase and (k == cfg.rounds or cfg.ctc_all_rounds)
    return Round(folder=f"round{k}" if folder is None else folder,
                 epochs=warm_epochs(cfg) if warm else cfg.trainer.epochs,
                 tokens=cfg.ctc.tokens if head else None, vote=takes_vote(cfg, k), number=k, warm=warm,
                 what=f"round {k}/{cfg.rounds}")


def ctc_phase(cfg: DistillConfig) -> bool:
    """Whether the CTC head is trained in a phase of its own after the rounds (``RUN_DIR/ctc``)."""
    return cfg.ctc.enabled and cfg.ctc_epochs != 0


def warm_epochs(cfg: DistillConfig) -> int:
    """Epochs of a warm-started round."""
    return cfg.warm_epochs or max(1, cfg.trainer.epochs // 5)


def takes_vote(cfg: DistillConfig, step: int) -> bool:
    """Whether the ``step``-th step (1-based: the rounds, then the CTC phase's starts and refits) adds
    the recogniser's vote to its targets: a round when ``asr_rounds`` (None: every round) covers it, a
    CTC step when ``asr_ctc``."""
    if step > cfg.rounds:
        return cfg.asr_ctc
    return cfg.asr_rounds is None or step <= cfg.asr_rounds


def start_plan(cfg: DistillConfig) -> list[tuple[str, int]]:
    """(tokens, trainer seed) of every CTC phase start: ``ctc_starts`` with ``ctc.tokens`` (seed +
    1000 each), then, with ``ctc_other_tokens``, one with the other tokens (the run's seed)."""
    plan = [(cfg.ctc.tokens, cfg.trainer.seed + START_SEED_STEP * j) for j in range(cfg.ctc_starts)]
    if cfg.ctc_other_tokens:
        plan.append(("phoneme" if cfg.ctc.tokens == "char" else "char", cfg.trainer.seed))
    return plan


def start_dir(j: int) -> str:
    """Folder of the CTC phase's ``j``-th start (1-based) in ``RUN_DIR``."""
    return "ctc" if j == 1 else f"ctc-start{j}"
