"""The teacher's target table over the training rows, and its cache in the run directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from plcli.data.features import content_hash
from plcli.distill.config import DistillConfig
from plcli.distill.inputs import Rows, Teacher
from plcli.inference import RowView, predict_logits, softmax
from plcli.io import atomic_open, atomic_write_json
from plcli.losses import candidate_targets

# row kinds in the target table
EXACT, CANDIDATE, FREE, DROPPED = 0, 1, 2, 3
KINDS = ("exact", "candidate", "no_candidate", "dropped")
TARGETS_VERSION = 1


def teacher_targets(
    logits: Tensor, mask: Tensor, y: Tensor, temperature: float, confidence: float,
    log_prior: Tensor | None = None,
    outside: float = 0.0,
    untyped: Tensor | None = None,
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
        outside: weight of the non-candidates in candidate rows' targets (``candidate_targets``).
        untyped: optional (N,) belief in [0, 1] that a row's candidates miss its truth
            (``plcli.screening``): a candidate row's target is then (1 - u) x its candidate target
            + u x softmax(logits / T) over all classes, the target of a row without candidates.

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
    raw = logits
    if log_prior is not None:
        # softmax((z - T log pi) / T) = softmax(z / T) / pi, renormalised; rows without candidates keep z.
        # Its favourite is that of z - T log pi, a stronger correction than finetune's z - log pi: on the
        # demo data (2026-12-02) (p / pi)^(1/T) made the targets' favourite right more often (0.41 vs 0.35
        # of the round-1 candidate rows) but the round-1 student worse (0.55 vs 0.61 disambiguated).
        logits = logits - temperature * log_prior.float() * has[None, :, None]
    soft = (
        candidate_targets(logits.reshape(v * n, c), mask.repeat(v, 1), temperature, outside)
        .reshape(v, n, c)
        .mean(0)
    )
    if untyped is not None:
        soft = _lean_free(soft, raw, has, untyped, temperature)
    conf = torch.softmax(logits, dim=-1).mean(0).amax(dim=1)  # (N,)
    exact = y >= 0
    kind = torch.full((n,), DROPPED, dtype=torch.long)
    kind[~has & (conf >= confidence)] = FREE
    kind[has] = CANDIDATE
    kind[exact] = EXACT
    targets = soft.clone()
    targets[exact] = F.one_hot(y[exact], c).float()
    return targets, kind, conf


def _lean_free(soft: Tensor, raw: Tensor, has: Tensor, untyped: Tensor, temperature: float) -> Tensor:
    """(N, C) candidate rows' targets ``soft`` moved by ``untyped`` (N,) towards softmax(raw / T)
    over all classes ((V, N, C) logits ``raw``, views averaged): the target of a row without candidates."""
    if untyped.shape != has.shape or not bool(((untyped >= 0) & (untyped <= 1)).all()):
        raise ValueError(f"untyped must be ({has.shape[0]},) beliefs in [0, 1]")
    u = (untyped.float() * has)[:, None]  # (N, 1)
    return (1 - u) * soft + u * torch.softmax(raw / temperature, dim=-1).mean(0)


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
    ranked: bool = False, bonus: np.ndarray | None = None, untyped: np.ndarray | None = None,
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
                # absent at 0, so the keys of runs without it are unchanged
                **({"outside": cfg.outside_weight} if cfg.outside_weight else {}),
            }
        ).encode()
    )
    h.update(np.packbits(mask).tobytes())
    h.update(y.astype(np.int64).tobytes())
    if bonus is not None:  # the recogniser's vote (absent: the keys of runs without it are unchanged)
        h.update(np.ascontiguousarray(bonus, dtype=np.float32).tobytes())
    if untyped is not None:  # the teacher's screening (plcli.screening), likewise
        h.update(np.ascontiguousarray(untyped, dtype=np.float64).tobytes())
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
    atomic_write_json(out / "targets.json", {"key": key, "kinds": list(KINDS), "kind": kind.tolist()},
                      indent=None)


def top_candidates(targets: np.ndarray, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,) each pool row's top class in a target table (P, C), and (P,) whether the row trains."""
    return targets.argmax(1), kind != DROPPED


def cached_top_candidates(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """``top_candidates`` of a step's cached target table (``save_targets``)."""
    info = json.loads((out / "targets.json").read_text(encoding="utf-8"))
    return top_candidates(np.load(out / "targets.npy"), np.asarray(info["kind"], dtype=np.int64))


def changed_share(now: tuple[np.ndarray, np.ndarray], before: tuple[np.ndarray, np.ndarray]) -> float:
    """Share of the rows that train in both ``top_candidates`` whose top class changed (0: none in both)."""
    (top, kept), (top0, kept0) = now, before
    both = kept & kept0
    return float(np.mean(top[both] != top0[both])) if both.any() else 0.0


def target_table(
    cfg: DistillConfig,
    teacher: Teacher,
    d: Rows,
    clean,
    views,
    view_seed: int,
    log_prior: Tensor | None,
    ranked: bool = False,
    bonus: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """The teacher's target table over the pool (reused from RUN_DIR when its key matches), its
    kinds, the cache key and whether it was reused. Writes nothing.

    ``ranked`` (a CTC refit): candidate rows' targets are the softmax of the teacher's combined
    ranking scores (``plcli.ranking``, its stored setting) over their candidates, clean clips only.
    ``bonus``: (P, C) logit bonus of the recogniser's vote over the pool (``plcli.asr_prior``), already
    in the units of the logits it is added to. ``d.untyped``: the teacher's screening, if any.
    """
    untyped = None if d.untyped is None else d.untyped[d.pool]
    view_tag = hashlib.blake2b(
        json.dumps(
            [cfg.augment.waveform_params(), cfg.views, view_seed, "ranked" if ranked else ""]
        ).encode(),
        digest_size=8,
    ).hexdigest()
    key = _targets_key(
        teacher.file,
        [d.rows[i].id for i in d.pool],
        d.mask[d.pool],
        d.y[d.pool],
        cfg,
        view_tag,
        ranked,
        bonus,
        untyped,
    )
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
    tgt, kind, _ = teacher_targets(
        torch.from_numpy(np.stack(logits)),
        torch.from_numpy(d.mask[d.pool]),
        torch.from_numpy(d.y[d.pool]),
        cfg.temperature,
        cfg.confidence,
        log_prior,
        cfg.outside_weight,
        None if untyped is None else torch.from_numpy(untyped),
    )
    return tgt.numpy(), kind.numpy(), key, False


def ranked_logits(teacher: Teacher, rows: list, feats) -> np.ndarray:
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
    combined = rank(softmax(logits), scores, classes, ranking_of(getattr(teacher.model, "extra", None)))[
        "combined"
    ]
    # each row's best candidate at 0, so that the floor of -1e4 for the other classes lies below every
    # candidate that carries any weight, whatever the scale of the scores
    top = np.max(np.where(classes >= 0, combined, -np.inf), axis=1, keepdims=True)
    combined = combined - np.where(np.isfinite(top), top, 0.0)
    out = np.full_like(logits, -1e4)
    for i, k in zip(*np.nonzero(classes >= 0), strict=True):
        out[i, classes[i, k]] = max(out[i, classes[i, k]], combined[i, k])
    has = (classes >= 0).any(1)
    return np.where(has[:, None], out, logits)
