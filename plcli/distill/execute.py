"""The distill stage: its steps one after the other, each in a folder of the run, and the run's own files."""

from __future__ import annotations

import json
from pathlib import Path

from plcli.distill.config import STAGE, DistillConfig
from plcli.distill.inputs import open_teacher
from plcli.distill.plan import ctc_phase, start_dir, start_plan, takes_vote, warm_epochs
from plcli.distill.resolve import resolve_ctc, resolve_student
from plcli.distill.step import run_step
from plcli.io import atomic_open
from plcli.runs import (
    check_run_dir,
    read_run_config,
    read_upstream,
    save_config,
    start_run,
    write_metrics,
)


def run(cfg: DistillConfig, log=print, callbacks: list | None = None) -> dict:
    """Distil ``cfg.teacher`` into a student as ``cfg`` says; returns the metrics (also in RUN_DIR/metrics.json).

    With ``cfg.rounds > 1`` every round is an ordinary distill run in ``RUN_DIR/round<k>`` whose
    teacher is the previous round's student; the last student is copied to ``RUN_DIR``.
    """
    resolve_student(cfg, log)
    resolve_ctc(cfg, log)
    if cfg.rounds == 1 and not ctc_phase(cfg):
        return run_step(cfg, log, callbacks)
    return _run_rounds(cfg, log, callbacks)


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

    phase = ctc_phase(cfg)
    teacher, summary, m = cfg.teacher, [], {}
    # (folder, description, kind): the rounds, then the CTC phase's starts and its refits
    steps = [(f"round{k}", f"round {k}/{cfg.rounds}", "round") for k in range(1, cfg.rounds + 1)]
    plan = start_plan(cfg) if phase else []  # (tokens, seed) of each CTC phase start
    if phase:
        steps += [(start_dir(j), "CTC phase" + (f", start {j}/{len(plan)} ({tokens})" if len(plan) > 1 else ""),
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
        sub.asr_rounds = None if takes_vote(cfg, k) else 0
        done = Path(sub.out) / "metrics.json"
        if cfg.trainer.resume is not None and _reusable(Path(sub.out), teacher, kind, sub.ctc.tokens):
            log(f"{what}: already done, reusing {sub.out}")
            m = json.loads(done.read_text(encoding="utf-8"))
        else:
            log(f"{what}: teacher {teacher}")
            # a fresh top-level run replaces stale rounds; a resumed one continues them
            sub.overwrite = cfg.trainer.resume is None
            m = run_step(sub, log, callbacks, on_start=open_parent, ctc_only=ctc_only, warm=warm, refit=refit)
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
    n = len(start_plan(cfg))
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
