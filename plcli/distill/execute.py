"""The distill stage: its steps one after the other, each in a folder of the run, and the run's own files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from plcli.distill.config import STAGE, DistillConfig
from plcli.distill.inputs import open_teacher
from plcli.distill.plan import CTCStart, Refit, Round, Step, plan, start_plan
from plcli.distill.resolve import resolve_ctc, resolve_student
from plcli.distill.step import run_step
from plcli.distill.targets import cached_top_candidates, changed_share, top_candidates
from plcli.io import atomic_open
from plcli.runs import (
    check_run_dir,
    read_run_config,
    read_upstream,
    save_config,
    start_run,
    write_metrics,
)
from plcli.screening import carry


def run(cfg: DistillConfig, log=print, callbacks: list | None = None) -> dict:
    """Distil ``cfg.teacher`` into a student as ``cfg`` says; returns the metrics (also in
    RUN_DIR/metrics.json).

    The steps are ``plan(cfg)``'s. With more than one, every step is an ordinary distill run in its
    folder of ``RUN_DIR`` (``round<k>``, ``ctc``, ...) whose teacher is an earlier step's student; the
    last student is copied to ``RUN_DIR``.
    """
    resolve_student(cfg, log)
    resolve_ctc(cfg, log)
    steps = plan(cfg)
    if len(steps) == 1:  # one round, in RUN_DIR itself
        return run_step(cfg, steps[0], log, callbacks)
    return _run_plan(cfg, steps, log, callbacks)


# what the run's metrics keep of each round and of each CTC step
_ROUND_KEYS = ("val_acc", "val_acc_within", "disambiguation_acc", "fit_seconds", "total_seconds")
_CTC_KEYS = ("fit_seconds", "total_seconds", "epochs", "ranking", "targets_disambiguation_acc_initial")


@dataclass
class _Progress:
    """The steps run so far: the next step's teacher, and what the run's metrics gather."""

    cfg: DistillConfig
    log: Callable
    callbacks: list | None
    opened: Path | None  # RUN_DIR/config.yaml once the run directory is open
    teacher: str | Path
    wanted: int  # CTC starts to train (the first start may show that more are not worth it)
    m: dict = field(default_factory=dict)  # the last step's metrics (the kept start's after the starts)
    rounds: list[dict] = field(default_factory=list)
    ctc_steps: list[dict] = field(default_factory=list)  # the kept start, then the refits
    starts: list[dict] = field(default_factory=list)
    kept: dict | None = None
    last_round: Path | None = None
    top: tuple | None = None  # the last round's top_candidates
    changes: list[dict] = field(default_factory=list)  # each round's changed share of top candidates
    settled_at: int | None = None  # the round that was not trained because the targets had settled

    def open_parent(self) -> None:
        """Open ``RUN_DIR`` once, when the first step to run has passed its checks."""
        if self.opened is None:
            c = self.cfg
            self.opened = start_run(Path(c.out), c, STAGE, c.trainer.resume, c.overwrite, log=self.log)


def _run_plan(cfg: DistillConfig, steps: list[Step], log, callbacks: list | None) -> dict:
    """Self-training: round k distils round k-1's student (same seed, so the same held-out rows); every
    CTC start distils the last round, the first refit the kept start, each later refit the one before.

    ``RUN_DIR`` is opened by the first step that runs, once its inputs passed every check.
    """
    out = Path(cfg.out)
    # a resumed run must keep the teacher's label vocabulary (checked before any step runs)
    check_run_dir(out, STAGE, cfg.trainer.resume, cfg.overwrite, open_teacher(cfg.teacher).vocab)
    resumed = cfg.trainer.resume is not None and (out / "config.yaml").exists()
    p = _Progress(
        cfg,
        log,
        callbacks,
        out / "config.yaml" if resumed else None,
        cfg.teacher,
        wanted=sum(isinstance(s, CTCStart) for s in steps),
    )
    for step in steps:
        if isinstance(step, Round) and p.settled_at is not None:
            continue
        if isinstance(step, CTCStart):
            if len(p.starts) >= p.wanted:
                continue
            p.teacher = p.last_round
        elif isinstance(step, Refit):
            step = replace(step, tokens=p.kept["tokens"])  # the refit continues the kept start's head
        folder, m = _execute(p, step)
        if m is None:  # the targets had settled: the rounds end with the previous one
            p.settled_at = step.number
            continue
        p.teacher, p.m = folder, m
        if isinstance(step, Round):
            _round_done(p, step, folder)
        if isinstance(step, CTCStart) and not _start_done(p, step):
            continue
        keys = _CTC_KEYS if step.ctc_only else _ROUND_KEYS
        (p.ctc_steps if step.ctc_only else p.rounds).append({k: p.m.get(k) for k in keys})
    p.open_parent()
    extra = {"ctc_phase": p.ctc_steps[0], "ctc_refits": p.ctc_steps[1:]} if p.ctc_steps else {}
    extra.update(round_changes=p.changes, rounds_trained=len(p.rounds), rounds_settled_at=p.settled_at)
    if len(p.starts) > 1:
        extra["ctc_starts"] = [{k: v for k, v in s.items() if k != "_m"} for s in p.starts]
        extra["ctc_phase"].update({k: p.kept[k] for k in ("dir", "tokens")})
    return _finish_rounds(cfg, out, p.teacher, p.rounds, {**p.m, **extra})


def _execute(p: _Progress, step: Step) -> tuple[Path, dict | None]:
    """Run ``step`` with ``p.teacher`` (resumed: reuse it if it finished); its folder and metrics."""
    cfg, sub = p.cfg, _step_config(p.cfg, step, p.teacher)
    folder = Path(sub.out)
    if cfg.trainer.resume is not None and _reusable(folder, p.teacher, step):
        p.log(f"{step.what}: already done, reusing {sub.out}")
        return folder, json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    p.log(f"{step.what}: teacher {p.teacher}")
    # a fresh top-level run replaces stale steps; a resumed one continues them
    sub.overwrite = cfg.trainer.resume is None
    settled = _settle_check(p, step)
    return folder, run_step(sub, step, p.log, p.callbacks, on_start=p.open_parent, settled=settled)


def _round_done(p: _Progress, step: Round, folder: Path) -> None:
    """Note a finished round: the next CTC start's teacher, and how far its targets moved."""
    top = cached_top_candidates(folder)
    if p.top is not None:
        p.changes.append({"round": step.number, "changed": changed_share(top, p.top)})
    p.last_round, p.top = folder, top


def _settle_check(p: _Progress, step: Step):
    """For a round after the first, with ``rounds_settle``: the check that leaves it untrained when its
    targets name the previous round's top candidate on all but ``rounds_settle`` of the rows."""
    if not isinstance(step, Round) or p.top is None or not p.cfg.rounds_settle:
        return None
    limit = p.cfg.rounds_settle

    def check(targets, kind) -> str | None:
        changed = changed_share(top_candidates(targets, kind), p.top)
        if changed >= limit:
            return None
        p.changes.append({"round": step.number, "changed": changed})
        return (f"the targets settled ({changed:.1%} of the training rows changed their top candidate, "
                f"below rounds_settle {limit:g}): round {step.number - 1} is the last")

    return check


def _step_config(cfg: DistillConfig, step: Step, teacher) -> DistillConfig:
    """``step`` as an ordinary one-round distill run of ``teacher`` into ``RUN_DIR/<folder>``."""
    sub = DistillConfig.from_dict(
        {
            **cfg.to_dict(),
            "rounds": 1,
            "teacher": str(teacher),
            "ctc_refits": 0,
            "ctc_starts": 1,
            "ctc_other_tokens": False,
        }
    )
    sub.out = str(Path(cfg.out) / step.folder)
    sub.trainer.epochs = step.epochs
    if isinstance(step, CTCStart):
        sub.trainer.seed = step.seed
    if step.tokens is None:
        sub.ctc.weight = 0.0  # only the student that is kept needs the CTC head
    else:
        sub.ctc.tokens = step.tokens
    # a step without the vote: its teacher learnt from targets that already held it
    sub.asr_rounds = None if step.vote else 0
    return sub


def _start_done(p: _Progress, step: CTCStart) -> bool:
    """Note a finished CTC start; after the last one wanted, keep the best (the next teacher, and the
    phase's metrics) and return True."""
    m = p.m
    p.starts.append(
        {
            "dir": step.folder,
            "tokens": step.tokens,
            "seed": step.seed,
            "validation_accuracy": _ranking_accuracy(m),
            "total_seconds": m.get("total_seconds"),
            "_m": m,
        }
    )
    if len(p.starts) == 1:
        p.wanted = _wanted_starts(p.cfg, m, p.log)
    if len(p.starts) < p.wanted:
        return False
    p.kept = p.starts[_best_start(p.starts)]
    if len(p.starts) > 1:
        p.log(
            "CTC phase: kept "
            + p.kept["dir"]
            + " (validation ranking "
            + ", ".join(f"{s['dir']} {_fmt(s['validation_accuracy'])}" for s in p.starts)
            + ")"
        )
    p.teacher, p.m = Path(p.cfg.out) / p.kept["dir"], p.kept["_m"]
    return True


def _reusable(folder: Path, teacher, step: Step) -> bool:
    """Whether a resumed run may reuse ``step``, finished in ``folder``: a CTC step only with the same
    tokens, and a refit only when it continued the same CTC start as ``teacher`` (the kept start
    can change when the starts do)."""
    if not ((folder / "metrics.json").exists() and (folder / "model.pt").exists()):
        return False
    if isinstance(step, Round):
        return True
    done = read_run_config(folder)
    if (done.get("ctc") or {}).get("tokens") != step.tokens:
        return False
    return not isinstance(step, Refit) or Path(str(done.get("teacher"))).name == Path(teacher).name


def _wanted_starts(cfg: DistillConfig, first: dict, log) -> int:
    """How many CTC phase starts to train, given the first start's metrics ``first``: extra ones only
    where the validation rows can choose between them and the closed-set head alone leaves room
    (at most ``ctc_starts_below`` of them right; above that, as on a closed vocabulary, the CTC head
    adds little to the ranking and another start is not worth a CTC phase)."""
    n = len(start_plan(cfg))
    if n == 1:
        return 1
    ranking = first.get("ranking") or {}
    alone = [g["accuracy"] for g in ranking.get("grid", []) if g["ctc_weight"] == 0]
    if not ranking.get("rows") or not alone:
        log("CTC phase: one start (no validation rows to choose between starts)")
        return 1
    if alone[0] > cfg.ctc_starts_below:
        log(
            f"CTC phase: one start (the closed-set head alone ranks {alone[0]:.3f} of the validation "
            "rows right, "
            f"above ctc_starts_below {cfg.ctc_starts_below})"
        )
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
    save_config(
        out,
        DistillConfig.from_dict(
            {
                **last,
                "out": str(out),
                "teacher": cfg.teacher,
                "rounds": cfg.rounds,
                "overwrite": cfg.overwrite,
                "trainer": cfg.to_dict()["trainer"],
                "ctc": cfg.to_dict()["ctc"],
                "ctc_refits": cfg.ctc_refits,
                "ctc_starts": cfg.ctc_starts,
                "ctc_other_tokens": cfg.ctc_other_tokens,
                "asr_rounds": cfg.asr_rounds,
                "asr_ctc": cfg.asr_ctc,
            }
        ),
        STAGE,
    )
    # the stage's time is its rounds' (also when some of them ran before a resume)
    phase = m.get("ctc_starts") or (
        [m["ctc_phase"]] if m.get("ctc_phase") else []
    )  # every start took its time
    seconds = sum(r["total_seconds"] or 0.0 for r in summary + phase + (m.get("ctc_refits") or []))
    carry(Path(cfg.teacher), out)
    return write_metrics(out, {**m, "teacher": str(cfg.teacher), "rounds": summary, "total_seconds": seconds})
