"""Which steps a distillation takes: its rounds, the CTC phase's starts and the CTC refits."""

from __future__ import annotations

from plcli.distill.config import DistillConfig


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


START_SEED_STEP = 1000  # seed offset between CTC phase starts (the rounds' seeds stay as they are)


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
