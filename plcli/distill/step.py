"""One distillation step (a round, a CTC phase start or a CTC refit): its inputs, training and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from plcli.config import cache_dir
from plcli.data.datasets import FeatureRows, ViewRows, open_cache, view_workers
from plcli.data.labels import NO_TRUTH
from plcli.distill.config import STAGE, DistillConfig
from plcli.distill.inputs import Rows, Teacher, inherit, load_rows, open_teacher
from plcli.distill.module import build_module
from plcli.distill.plan import Refit, Step
from plcli.distill.targets import CANDIDATE, DROPPED, KINDS, save_targets, target_table
from plcli.errors import UserError
from plcli.inference import RowView, predict_logits, softmax
from plcli.language import AUTO, resolve_language, row_texts
from plcli.losses import candidate_log_prior
from plcli.metrics import abstain_threshold, classification_metrics, covering_rate, restricted_predictions
from plcli.models.classifier import Classifier, save_model
from plcli.models.encoders import count_parameters
from plcli.ranking import tune_ranking
from plcli.runs import (
    Timer,
    check_run_dir,
    jsonable,
    logged_history,
    resolve_resume,
    set_threads,
    start_run,
    write_metrics,
)
from plcli.screening import carry, read_scores
from plcli.training import build_trainer, fit


def _loaders(cfg: DistillConfig, d: Rows, clean, views, kind: np.ndarray, train_pos: np.ndarray, log):
    """(train, validation) loaders: cached views of the kept pool rows; clean held-out rows (or None)."""
    train_ds = ViewRows(
        views,
        index=train_pos,
        y=torch.from_numpy(d.y[d.pool][train_pos]),
        kind=torch.from_numpy(kind[train_pos]),
        mask=torch.from_numpy(d.mask[d.pool][train_pos]),
    )
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
    if not len(d.val_idx):
        log("no held-out exact rows: no validation metrics")
        return train_loader, None
    val_ds = FeatureRows(
        clean, index=d.val_idx, y=torch.from_numpy(d.y[d.val_idx]), mask=torch.from_numpy(d.mask[d.val_idx])
    )
    return train_loader, DataLoader(val_ds, batch_size=1024, shuffle=False, collate_fn=FeatureRows.collate_fn)


@dataclass
class _Inputs:
    """A step's checked inputs: the teacher, the rows, their features and the target table."""

    teacher: Teacher
    d: Rows
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


def _prepare(cfg: DistillConfig, step: Step, log) -> _Inputs:
    """Read and check everything, and compute (or reuse) the teacher's targets; writes no run."""
    check_run_dir(cfg.out, STAGE, cfg.trainer.resume, cfg.overwrite)
    teacher = open_teacher(cfg.teacher)
    fraction, split_seed, view_seed = inherit(cfg, teacher, log)
    d = load_rows(cfg, teacher.vocab, fraction, split_seed, log)
    if teacher.run is not None and cfg.untyped_targets:  # its screening (plcli.screening)
        d.untyped = read_scores(teacher.file.parent, [r.id for r in d.rows])
    check_run_dir(cfg.out, STAGE, cfg.trainer.resume, cfg.overwrite, teacher.vocab)
    if cfg.data.language == AUTO:  # run() settles it once for its rounds; a round on its own here
        cfg.data.language = resolve_language(AUTO, row_texts(d.rows), log)

    clean, views, cache, feature_seconds = _features(cfg, teacher, d, view_seed, log)
    t_teach = Timer()
    # (C,) log share of candidate slots over every row: the teacher's targets and the student's loss
    log_prior = candidate_log_prior(torch.from_numpy(d.mask)) if cfg.prior_correction else None
    # the CTC phase draws texts from targets ** T: with log pi / T they are p / pi restricted, the
    # correction whose favourite is most often right (the rounds' T-fold one trains better students)
    target_prior = log_prior / cfg.temperature if step.ctc_only and log_prior is not None else log_prior
    refit = isinstance(step, Refit)
    if refit and not teacher.model.has_ctc:
        raise UserError(f"{cfg.teacher}: a CTC refit needs a teacher with a CTC head")
    bonus, asr = _asr_bonus(cfg, step, teacher, d, log)
    targets, kind, key, reused = target_table(
        cfg, teacher, d, clean, views, view_seed, target_prior, ranked=refit, bonus=bonus
    )
    log(
        ("reused" if reused else "computed")
        + " the teacher's targets: "
        + ", ".join(f"{(kind == k).sum()} {name}" for k, name in enumerate(KINDS))
    )
    if (kind != DROPPED).sum() < 2:
        raise UserError(
            f"only {(kind != DROPPED).sum()} training row(s) after filtering; distillation needs at least 2"
        )
    seconds = {
        "feature_seconds": feature_seconds,
        "teacher_seconds": t_teach.seconds,
        "cache": {"computed": cache.computed, "reused": cache.reused},
    }
    return _Inputs(
        teacher,
        d,
        {"fraction": fraction, "seed": split_seed},
        clean,
        views,
        log_prior,
        targets,
        kind,
        key,
        reused,
        seconds,
        asr,
    )


def _features(cfg: DistillConfig, teacher: Teacher, d: Rows, view_seed: int, log):
    """(N, F, T) clean features of every row, (P, V, F, T) augmented views of the pool, the feature
    cache they came from, and the seconds they took (both computed once, then read from the cache)."""
    cache = open_cache(cfg.data, teacher.features)
    t_feat = Timer()
    keys, clean = cache.features([r.audio for r in d.rows])
    log(f"distilling on {len(d.pool)} recordings; caching {cfg.views} augmented views per clip ...")
    _, views = cache.views(
        [d.rows[i].audio for i in d.pool],
        cfg.augment.waveform_params(),
        cfg.views,
        view_seed,
        workers=view_workers(len(d.pool) * cfg.views, cfg.trainer.num_workers),
        keys=[keys[i] for i in d.pool],
    )
    return clean, views, cache, t_feat.seconds


def _asr_bonus(
    cfg: DistillConfig, step: Step, teacher: Teacher, d: Rows, log
) -> tuple[np.ndarray | None, dict | None]:
    """(P, C) the recogniser's vote over the pool in the units of the logits it joins, and its summary.

    Bayes' rule adds the vote's log-likelihood ``delta`` to the log-probabilities. The rounds' targets
    are softmax(z / T), so ``T * delta`` is added to z; the CTC phase sharpens its draws back to T = 1,
    so ``delta``; the refit's ranking scores are its calibrated log-probabilities times the ranking's
    fitted temperature t, so ``t * delta`` (and its targets stay as sharp as the ranking's own).
    """
    from plcli.asr_prior import prior_for

    if cfg.asr_prior == "none" or not step.vote:  # inherit has made "auto" the teacher's setting
        return None, None
    bonus, info = prior_for(
        d.rows,
        teacher.vocab,
        cfg.asr_prior,
        cache_dir(cfg.data.cache_dir),
        cfg.asr_accuracy,
        cfg.asr_workers,
        log,
        model=cfg.asr_model,
        language=cfg.data.language,
        window=cfg.asr_window,
    )
    if isinstance(step, Refit):
        from plcli.ranking import ranking_of

        scale = float(ranking_of(getattr(teacher.model, "extra", None)).get("temperature") or 1.0)
    else:
        scale = 1.0 if step.ctc_only else cfg.temperature
    return (scale * bonus[d.pool]).astype(np.float32), {**info, "scale": scale}


def run_step(
    cfg: DistillConfig, step: Step, log=print, callbacks: list | None = None, on_start=None, settled=None
) -> dict | None:
    """``step``: one distillation of ``cfg.teacher`` into a student in ``cfg.out`` (a CTC step keeps
    the teacher's classifier and trains only a CTC head on the teacher's targets).

    Everything is read and checked, and the teacher's targets computed, before ``RUN_DIR`` is
    written (``on_start`` runs just before that: it opens the parent RUN_DIR of a run of several steps).
    ``settled(targets, kind)`` may say why the step is not worth training: then nothing is written
    and the result is None.
    """
    timer = Timer()
    set_threads()
    r = _prepare(cfg, step, log)
    why = settled(r.targets, r.kind) if settled is not None else None
    if why:
        log(f"{step.what}: not trained, {why}")
        return None
    if on_start is not None:
        on_start()
    out = start_run(cfg.out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite, r.teacher.vocab, log)
    if not r.reused:
        save_targets(out, r.key, r.targets, r.kind)
    L.seed_everything(cfg.trainer.seed, workers=True)
    train_pos = np.flatnonzero(r.kind != DROPPED)  # positions in the pool
    module = build_module(cfg, step, r.teacher, torch.from_numpy(r.targets[train_pos]), r.log_prior)
    initial_targets = module.targets.clone().numpy()
    train_loader, val_loader = _loaders(cfg, r.d, r.clean, r.views, r.kind, train_pos, log)
    monitor = "val/acc" if val_loader is not None else None
    trainer = build_trainer(cfg.trainer, out, monitor=monitor, mode="max", extra_callbacks=callbacks)
    t_fit = Timer()
    fit(trainer, module, train_loader, val_loader, resolve_resume(out, cfg.trainer.resume), out)
    fit_seconds = t_fit.seconds

    student = module.model.cpu().eval().requires_grad_(True)  # the CTC phase froze the classifier
    result = _summary(cfg, r, student, trainer, train_pos)
    result.update(
        _student_metrics(out, r, student, train_pos, initial_targets, module.targets.detach().cpu().numpy())
    )
    result.update(
        {
            "threads": torch.get_num_threads(),
            "feature_seconds": r.seconds["feature_seconds"],
            "teacher_seconds": r.seconds["teacher_seconds"],
            "fit_seconds": fit_seconds,
            "total_seconds": timer.seconds,
            "cache": r.seconds["cache"],
        }
    )
    ranking = tune_ranking(student, r.teacher.vocab, r.teacher.features, [r.d.rows[i] for i in r.d.val_idx],
                           RowView(r.clean, r.d.val_idx), cfg.ranking_manifest, cfg.data, log)
    if student.has_ctc:
        result["ranking"] = ranking
    cascade = _cascade(cfg, r, student, ranking, log)
    if cascade:
        result["cascade"] = cascade
    if not trainer.is_global_zero:
        return jsonable(result)
    _save_student(cfg, out, r, student, ranking, cascade, result.get("abstain"))
    return write_metrics(out, result)


def _save_student(cfg: DistillConfig, out: Path, r: _Inputs, student: Classifier, ranking: dict,
                  cascade: dict | None, abstain: dict | None) -> None:
    """``out/model.pt``: the student, with its teacher, settings, ranking and cascade (without grids)."""
    carry(r.teacher.file.parent, out)  # the teacher's screening, for students of this one
    save_model(
        out / "model.pt",
        student,
        r.teacher.vocab,
        r.teacher.features,
        STAGE,
        extra={
            "teacher": str(cfg.teacher),
            "temperature": cfg.temperature,
            "refine": cfg.refine,
            "ranking": {k: v for k, v in ranking.items() if k != "grid"},
            **({"cascade": {k: v for k, v in cascade.items() if k != "grid"}} if cascade else {}),
            **({"abstain": abstain} if abstain else {}),
        },
    )


def _cascade(cfg: DistillConfig, r: _Inputs, student: Classifier, ranking: dict, log) -> dict | None:
    """The cascade's threshold on the held-out exact rows, where the student was trained with Whisper
    (whose scores of those rows are then in the cache); None otherwise."""
    if cfg.asr_prior != "whisper" or not len(r.d.val_idx):
        return None
    from plcli.cascade import tune

    return tune(
        student,
        r.teacher.vocab,
        [r.d.rows[i] for i in r.d.val_idx],
        RowView(r.clean, r.d.val_idx),
        ranking,
        cache_dir(cfg.data.cache_dir),
        cfg.asr_model,
        cfg.data.language,
        cfg.asr_window,
        log,
    )


def _summary(cfg: DistillConfig, r: _Inputs, student: Classifier, trainer, train_pos: np.ndarray) -> dict:
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
        "training_rows": {
            name: int((kind[train_pos] == k).sum()) for k, name in enumerate(KINDS) if k != DROPPED
        },
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


def _student_metrics(
    out: Path, r: _Inputs, student: Classifier, train_pos: np.ndarray, initial: np.ndarray, final: np.ndarray
) -> dict:
    """``_held_out_metrics``, ``_candidate_metrics`` and the student's speed over every row."""
    t_inf = Timer()
    s_logits = predict_logits(student, r.clean)  # (N, C) every row
    inference_seconds = t_inf.seconds
    s_probs = softmax(s_logits)
    return {
        **_held_out_metrics(out, r.teacher.model, r.clean, s_probs, r.d),
        **_candidate_metrics(s_probs, r.d, r.kind, train_pos, initial, final),
        "student_clips_per_second": len(r.d.rows) / max(inference_seconds, 1e-9),
    }


def _held_out_metrics(out: Path, teacher: Classifier, clean, s_probs: np.ndarray, d: Rows) -> dict:
    """Student and teacher accuracy on the held-out exact rows (clean features)."""
    if not len(d.val_idx):
        return {}
    t_probs = softmax(predict_logits(teacher, RowView(clean, d.val_idx)))
    vm = classification_metrics(s_probs[d.val_idx], d.y[d.val_idx], d.mask[d.val_idx])
    tm = classification_metrics(t_probs, d.y[d.val_idx], d.mask[d.val_idx])
    held = d.val_idx[d.mask[d.val_idx].any(1)]  # the held-out rows with candidates hold their truth
    return {
        "abstain": abstain_threshold(s_probs[held], d.mask[held]),
        "val_acc": vm["accuracy"],
        "val_acc_within": vm["accuracy_within_candidates"],
        "val_macro_f1": vm["macro_f1"],
        "val_ece": vm["ece"],
        "teacher_val_acc": tm["accuracy"],
        "teacher_val_acc_within": tm["accuracy_within_candidates"],
        "val_acc_history": logged_history(out, "val/acc"),
    }


def _candidate_metrics(
    s_probs: np.ndarray,
    d: Rows,
    kind: np.ndarray,
    train_pos: np.ndarray,
    initial: np.ndarray,
    final: np.ndarray,
) -> dict:
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
        out.update(
            {
                "disambiguation_rows": int(known.sum()),
                "disambiguation_acc": float(np.mean(s_pred == truth_c[known])),
                "targets_disambiguation_acc_initial": float(np.mean(initial[at].argmax(1) == truth_c[known])),
                "targets_disambiguation_acc_final": float(np.mean(final[at].argmax(1) == truth_c[known])),
            }
        )
    return out
