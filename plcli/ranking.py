"""One ranking of a recording's candidate texts from two scorers: the closed-set head and the CTC head.

The closed-set posterior ``p(j|x)`` names only messages of the model's vocabulary; the CTC head
(``plcli.models.ctc``) scores any text by its likelihood ``p_CTC(c|x)``. Per candidate ``k``::

    score_k = log p_cls(k) + lambda * s_ctc(k)

- ``log p_cls(k)``: the posterior of a known candidate; candidates the vocabulary lacks share what
  is left, ``(1 - sum of the known candidates' p) / (number of unknown ones)``: the closed-set
  head's mass outside the known candidates is its evidence for "one of the others".
- ``s_ctc(k)``: ``log p_CTC(c_k|x)``, divided by the text's token count with ``length_norm`` (a
  long text otherwise loses to a short one for being long). A candidate that no CTC path can
  emit (no tokens, or more than the clip's frames) gets its row's worst score minus 10.
- ``lambda``: 0 is the closed-set head alone; 1000 is in effect the CTC head alone (the posterior
  breaks ties).
- ``beta`` (``prior_weight``), a prior correction of the CTC score: ``s_ctc(k) - beta * log(1 +
  n_k)``, ``n_k`` the text's count in the training rows (the vocabulary's; 0 for a text outside it).
  A CTC head trained on a chat's frequent messages prefers them; a recording that says a new
  message often loses to a heard neighbour ("in two minutes" for "in twenty minutes").

``lambda``, ``length_norm`` and ``beta`` are chosen on validation rows (``choose_ranking``; the distill stage
does it on ``--ranking-manifest`` or its held-out exact rows) and stored with the model
(``model.pt``'s ``extra["ranking"]``). ``decided_by`` says per row which scorer the ranking followed.

A row that holds a text outside the vocabulary (an *open* row) is ranked with weights of its own,
``extra["ranking"]["open"]``: the closed-set head cannot name such a text, so weights chosen on rows
of known texts say nothing about it (chosen there, the CTC weight is often 0 and a new message can
never win). The open weights are chosen only on validation rows whose truth is a new message (at
least ``MIN_NEW_ROWS``); without them they are ``OPEN_DEFAULT``, measured on never-heard messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from plcli.arrays import RowView, softmax

# 1000: the CTC score decides, the posterior (log p >= -28 in float32) only breaks ties; finite, so
# JSON keeps it
LAMBDAS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 1000.0)
UNKNOWN, PAD = -1, -2
INFEASIBLE_MARGIN = 10.0
DEFAULT = {
    "ctc_weight": 1.0,
    "length_norm": True,
    "prior_weight": 0.0,
    "temperature": 1.0,
    "chosen_on": "default",
}
# prior corrections tried (per CTC score unit per log count); 0 first, so ties keep none
PRIOR_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2)
# open rows' weights without validation rows saying a new message: measured on never-heard messages
# (30 known, 10 never heard; scripts/measure_open_ranking.py): a CTC head trained on 30 texts prefers
# them (alone it ranks the new truth first on 0 of 46 rows; weight 1: 0.04, with prior 0.2: 0.22),
# while weight 0 leaves the new texts the closed-set head's leftover mass (0.50; chance 0.10)
OPEN_DEFAULT = {"ctc_weight": 0.0, "prior_weight": 0.0, "chosen_on": "default (never-heard messages)"}
MIN_NEW_ROWS = 5
# temperatures tried when the ranking's softmax is calibrated (log-spaced, 1e-2 to 1e4)
TEMPERATURES = tuple(float(t) for t in np.logspace(-2, 4, 61))


def candidate_classes(candidates: Sequence[Sequence[str]], vocab) -> np.ndarray:
    """(N, K) vocabulary index of every candidate: ``UNKNOWN`` (-1) outside the vocabulary, ``PAD`` (-2)
    past the row's last candidate."""
    k = max([1, *map(len, candidates)])
    out = np.full((len(candidates), k), PAD, dtype=np.int64)
    for i, cands in enumerate(candidates):
        for j, t in enumerate(cands):
            c = vocab.index(t)
            out[i, j] = UNKNOWN if c is None else c
    return out


def truth_positions(
    candidates: Sequence[Sequence[str]], truths: Sequence[str | None], normalizer
) -> np.ndarray:
    """(N,) position of each row's true text among its candidates (by normalised key); -1 where it is
    not a candidate or there is no truth."""
    out = np.full(len(candidates), -1, dtype=np.int64)
    for i, (cands, t) in enumerate(zip(candidates, truths, strict=True)):
        if t is None:
            continue
        key = normalizer(t)
        for j, c in enumerate(cands):
            if normalizer(c) == key:
                out[i] = j
                break
    return out


def closed_set_scores(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(N, K) ``log p_cls`` of every candidate from (N, C) posteriors (see the module docstring);
    ``-inf`` on padding."""
    n, k = classes.shape
    known = classes >= 0
    p = np.where(known, probs[np.arange(n)[:, None], np.clip(classes, 0, None)], 0.0)  # (N, K)
    n_unknown = (classes == UNKNOWN).sum(1, keepdims=True)
    rest = np.clip(1.0 - p.sum(1, keepdims=True), 1e-6, None) / np.maximum(n_unknown, 1)
    out = np.where(known, p, np.broadcast_to(rest, (n, k)))
    with np.errstate(divide="ignore"):
        out = np.log(np.clip(out, 1e-12, None))
    return np.where(classes == PAD, -np.inf, out)


def ctc_scores(nll: np.ndarray, lengths: np.ndarray, valid: np.ndarray, length_norm: bool) -> np.ndarray:
    """(N, K) CTC log-likelihoods (per token with ``length_norm``); infeasible candidates get their
    row's worst feasible score minus ``INFEASIBLE_MARGIN``, padding ``-inf``."""
    s = -nll / np.maximum(lengths, 1) if length_norm else -nll
    finite = np.isfinite(s) & valid
    worst = np.where(finite, s, np.inf).min(1, keepdims=True)
    worst = np.where(np.isfinite(worst), worst, 0.0)
    s = np.where(finite, s, worst - INFEASIBLE_MARGIN)
    return np.where(valid, s, -np.inf)


def combine(cls: np.ndarray, ctc: np.ndarray | None, ctc_weight: float) -> np.ndarray:
    """(N, K) combined scores; ``ctc_weight`` = inf ranks by CTC with the posterior as tie-break."""
    if ctc is None or ctc_weight == 0:
        return cls
    if math.isinf(ctc_weight):
        return np.where(np.isfinite(ctc), ctc + 1e-6 * np.nan_to_num(cls, neginf=0.0), -np.inf)
    return cls + ctc_weight * ctc


def familiarity(classes: np.ndarray, counts) -> np.ndarray:
    """(N, K) ``log(1 + n)`` of each candidate's training count ``n`` (``counts``: the vocabulary's
    (C,) counts; ``classes`` from ``candidate_classes``); 0 for unknown texts and padding."""
    c = np.log1p(np.asarray(counts, dtype=np.float64))
    if not len(c):
        return np.zeros(classes.shape)
    return np.where(classes >= 0, c[np.clip(classes, 0, None)], 0.0)


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) scores with ``-inf`` padding."""
    m = np.max(scores, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(scores - m)
    return e / np.clip(e.sum(1, keepdims=True), 1e-300, None)


def decided_by(cls: np.ndarray, ctc: np.ndarray | None, combined: np.ndarray) -> list[str]:
    """Per row: ``both`` (the two scorers agree with the ranking), ``ctc`` or ``classifier`` (the
    ranking followed that one against the other) or ``combined`` (it followed neither alone)."""
    top = combined.argmax(1)
    if ctc is None:
        return ["classifier"] * len(top)
    a, b = cls.argmax(1), ctc.argmax(1)
    out = []
    for t, x, y in zip(top, a, b, strict=True):
        out.append("both" if t == x == y else "classifier" if t == x else "ctc" if t == y else "combined")
    return out


def fit_temperature(combined: np.ndarray, truth_pos: np.ndarray) -> float:
    """The temperature ``t`` whose ``softmax(combined / t)`` over each row's candidates gives the
    truth the smallest mean negative log-likelihood (temperature scaling, Guo et al. 2017, "On
    Calibration of Modern Neural Networks"), from ``TEMPERATURES``; 1.0 without rows.

    The combined score's scale is arbitrary (a CTC weight of 1000 makes the softmax one-hot), so
    this is what makes the candidate probabilities of ``predict`` say how sure the ranking is (the
    CTC refit's targets keep the raw scores: ``plcli.distill.ranked_logits``). ``combined`` (N, K)
    with ``-inf`` padding, ``truth_pos`` (N,)."""
    rows = truth_pos >= 0
    if not rows.any():
        return 1.0
    c = combined[rows]
    c = c - np.max(c, axis=1, keepdims=True)  # (N, K), 0 at each row's best, -inf padding
    truth = c[np.arange(len(c)), truth_pos[rows]]
    best, best_nll = 1.0, np.inf
    for t in TEMPERATURES:
        nll = float(np.mean(np.log(np.exp(c / t).sum(1)) - truth / t))
        if nll < best_nll - 1e-12:
            best, best_nll = t, nll
    return best


def new_message_mask(classes: np.ndarray, truth_pos: np.ndarray) -> np.ndarray:
    """(N,) bool: rows whose truth is among their candidates but outside the vocabulary (``classes``
    from ``candidate_classes``, ``truth_pos`` from ``truth_positions``): the validation rows that show
    how the ranking fares on messages the model never heard."""
    at = classes[np.arange(len(truth_pos)), np.clip(truth_pos, 0, None)]
    return (truth_pos >= 0) & (at == UNKNOWN)


def new_message_rows(classes: np.ndarray, truth_pos: np.ndarray) -> int:
    """How many rows ``new_message_mask`` marks."""
    return int(new_message_mask(classes, truth_pos).sum())


def open_weights(stored: dict | None) -> dict:
    """The open rows' weights: those chosen on validation rows where ``stored`` (a ranking's
    ``"open"``) has them, else ``OPEN_DEFAULT``'s."""
    return {**OPEN_DEFAULT, **(stored or {})}


def prior_corrected(ctc: np.ndarray, beta: float, fam: np.ndarray | None) -> np.ndarray:
    """(N, K) CTC scores less ``beta`` times the candidates' ``familiarity`` (the ranking's prior
    correction); ``ctc`` itself without a weight or without counts."""
    return ctc if not beta or fam is None else ctc - beta * fam


def open_rows(classes: np.ndarray) -> np.ndarray:
    """(N,) bool: rows with a candidate outside the vocabulary (``classes`` from ``candidate_classes``)."""
    return (classes == UNKNOWN).any(1)


def ranked_scores(
    cls: np.ndarray, ctc: np.ndarray | None, setting: dict, fam: np.ndarray | None, is_open: np.ndarray | None
) -> np.ndarray:
    """(N, K) combined scores under ``setting`` (``ranking_of``'s keys): open rows (``is_open``)
    with ``setting["open"]``'s weights, the rest with the setting's own."""
    own = combine(
        cls,
        None if ctc is None else prior_corrected(ctc, setting.get("prior_weight", 0.0), fam),
        float(setting["ctc_weight"]),
    )
    o = setting.get("open")
    if ctc is None or o is None or is_open is None or not is_open.any():
        return own
    opened = combine(cls, prior_corrected(ctc, o["prior_weight"], fam), float(o["ctc_weight"]))
    return np.where(is_open[:, None], opened, own)


def _best_weights(cls, ctc_by_norm, truth_pos, rows, lambdas, fam, prior_weights) -> tuple[dict, list]:
    """The (prior_weight, ctc_weight, length_norm) with the best within-candidate accuracy on
    ``rows``; ties go to the smaller prior weight, then the smaller CTC weight."""
    grid, best = [], None
    for beta in prior_weights if fam is not None else (0.0,):
        for norm, ctc in ctc_by_norm.items():
            s = prior_corrected(ctc, beta, fam)
            for lam in lambdas:
                acc = float((combine(cls[rows], s[rows], lam).argmax(1) == truth_pos[rows]).mean())
                grid.append({"ctc_weight": lam, "length_norm": norm, "prior_weight": beta, "accuracy": acc})
                if best is None or acc > best["accuracy"] + 1e-12:
                    best = grid[-1]
    return best, grid


def choose_ranking(
    cls: np.ndarray,
    ctc_by_norm: dict[bool, np.ndarray],
    truth_pos: np.ndarray,
    lambdas: Sequence[float] = LAMBDAS,
    fam: np.ndarray | None = None,
    prior_weights: Sequence[float] = PRIOR_WEIGHTS,
    classes: np.ndarray | None = None,
) -> dict:
    """The ranking's weights (``_best_weights``) on rows with a truth among their candidates that
    hold no text outside the vocabulary (``classes``; all rows without it); the open rows' weights
    on rows whose truth is such a text, where there are ``MIN_NEW_ROWS``, else ``OPEN_DEFAULT``;
    then the softmax temperature of the resulting scores on all rows (``fit_temperature``).
    Returns a dict of primitives with the accuracy of every setting tried (``grid``)."""
    rows = truth_pos >= 0
    is_open = open_rows(classes) if classes is not None else np.zeros(len(truth_pos), dtype=bool)
    closed = rows & ~is_open if (rows & ~is_open).any() else rows
    if not rows.any():
        return {**DEFAULT, "rows": 0, "open": {"chosen_on": OPEN_DEFAULT["chosen_on"], "rows": 0}}
    best, grid = _best_weights(cls, ctc_by_norm, truth_pos, closed, lambdas, fam, prior_weights)
    new = new_message_mask(classes, truth_pos) if classes is not None else np.zeros(len(rows), dtype=bool)
    # the default's weights are not stored, so a model follows the default as it is measured
    opened = {"chosen_on": OPEN_DEFAULT["chosen_on"], "rows": int(new.sum())}
    if new.sum() >= MIN_NEW_ROWS:
        norm = best["length_norm"]
        o, _ = _best_weights(cls, {norm: ctc_by_norm[norm]}, truth_pos, new, lambdas, fam, prior_weights)
        opened = {
            "ctc_weight": o["ctc_weight"],
            "prior_weight": o["prior_weight"],
            "accuracy": o["accuracy"],
            "rows": int(new.sum()),
            "chosen_on": "validation rows saying a new message",
        }
    out = {
        "ctc_weight": best["ctc_weight"],
        "length_norm": best["length_norm"],
        "prior_weight": best["prior_weight"],
        "accuracy": best["accuracy"],
        "open": opened,
    }
    weights = {**out, "open": open_weights(opened)}
    combined = ranked_scores(cls, ctc_by_norm[best["length_norm"]], weights, fam, is_open)
    return {**out, "temperature": fit_temperature(combined, truth_pos), "rows": int(rows.sum()), "grid": grid}


# ---------------------------------------------------------------------------------------------
# Scoring with a model
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def model_scores(model, feats, candidates: Sequence[Sequence[str]], batch_size: int = 256) -> dict:
    """Closed-set logits and the CTC log-likelihood of every candidate text, batch by batch.

    ``feats``: (N, F, T) features (array or memmap). Returns ``logits`` (N, C) float32 and, for a
    model with a CTC head, ``nll`` (N, K) (+inf where a candidate is missing or infeasible),
    ``lengths`` (N, K) token counts and ``valid`` (N, K) (the candidate exists).
    """
    from plcli.losses import candidate_ctc_nll

    model.eval()
    device = next(model.parameters()).device
    n = feats.shape[0]
    has_ctc = getattr(model, "has_ctc", False)
    k = max([1, *map(len, candidates)])
    logits = []
    nll = np.full((n, k), np.inf)
    lengths = np.zeros((n, k), dtype=np.int64)
    valid = np.zeros((n, k), dtype=bool)
    cache: dict[str, list[int]] = {}
    for s in range(0, n, batch_size):
        x = torch.from_numpy(np.asarray(feats[s : s + batch_size], dtype=np.float32)).to(device)
        if not has_ctc:
            logits.append(model(x).float().cpu().numpy())
            continue
        z, lp = model.forward_both(x)
        logits.append(z.float().cpu().numpy())
        rows = candidates[s : s + batch_size]
        texts = list(dict.fromkeys(t for r in rows for t in r))  # the batch's distinct texts
        # the texts as one (U, L) token table; (b, k) indices into it, -1 = no candidate
        table, table_len = _token_table(model.tokenizer, texts, cache)
        pos = {t: i for i, t in enumerate(texts)}
        b = len(rows)
        at = torch.tensor([[pos[t] for t in r] + [-1] * (k - len(r)) for r in rows], dtype=torch.long).view(
            b, k
        )
        mk = at >= 0
        tg, tl = table[at], table_len[at]  # -1 reads the extra last row: no tokens, length 0
        out = candidate_ctc_nll(
            lp.float(),
            torch.full((b,), lp.shape[0], dtype=torch.long),
            tg.to(device),
            tl.to(device),
            (mk & (tl > 0)).to(device),
        )
        nll[s : s + b] = out.double().cpu().numpy()
        lengths[s : s + b] = tl.numpy()
        valid[s : s + b] = mk.numpy()
    out = {"logits": np.concatenate(logits) if logits else np.zeros((0, 0), np.float32)}
    if has_ctc:
        out.update(nll=nll, lengths=lengths, valid=valid)
    return out


def _token_table(
    tokenizer, texts: list[str], cache: dict[str, list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U + 1, L) token ids of ``texts`` (padded with ones) and their (U + 1,) lengths; the extra last
    row has no tokens. ``cache`` holds every text's tokens, across batches."""
    from plcli.models.ctc import text_targets

    new = [t for t in texts if t not in cache]
    if new:
        tok, ln = text_targets(tokenizer, new)
        for t, ids, m in zip(new, tok.tolist(), ln.tolist(), strict=True):
            cache[t] = ids[:m]
    L = max([1, *(len(cache[t]) for t in texts)])
    table = torch.ones(len(texts) + 1, L, dtype=torch.long)
    table_len = torch.zeros(len(texts) + 1, dtype=torch.long)
    for i, t in enumerate(texts):
        if cache[t]:
            table[i, : len(cache[t])] = torch.tensor(cache[t])
        table_len[i] = len(cache[t])
    return table, table_len


# what a model without one stores
NO_CTC_HEAD = {"ctc_weight": 0.0, "length_norm": True, "chosen_on": "no CTC head", "rows": 0}


def ranking_of(extra: dict | None) -> dict:
    """The ranking settings stored with a model (``extra["ranking"]``), or the defaults."""
    r = (extra or {}).get("ranking") or {}
    keys = ("ctc_weight", "length_norm", "prior_weight", "temperature", "chosen_on")
    return {**DEFAULT, **{k: r[k] for k in keys if k in r}, "open": open_weights(r.get("open"))}


def rank(probs: np.ndarray, scores: dict, classes: np.ndarray, ranking: dict, counts=None) -> dict:
    """Everything ``predict``/``evaluate`` need for rows with candidates: per-scorer (N, K) scores,
    the combined scores and their candidate-renormalised probabilities (softmax at the ranking's
    calibrated temperature), the top candidate and ``decided_by``. ``counts``: the vocabulary's
    training counts, for the ranking's prior correction (``prior_weight``; none without them).
    ``ctc`` is the CTC head's own score, before the prior correction."""
    cls = closed_set_scores(probs, classes)
    ctc = None
    if "nll" in scores:
        ctc = ctc_scores(scores["nll"], scores["lengths"], scores["valid"], bool(ranking["length_norm"]))
    fam = familiarity(classes, counts) if counts is not None else None
    combined = ranked_scores(cls, ctc, ranking, fam, open_rows(classes))
    return {
        "classifier": cls,
        "ctc": ctc,
        "combined": combined,
        "probs": softmax_rows(combined / float(ranking.get("temperature", 1.0))),
        "top": combined.argmax(1),
        "decided_by": decided_by(cls, ctc, combined),
    }


def tune(
    model, vocab, feats, candidates: Sequence[Sequence[str]], truths: Sequence[str | None], chosen_on: str
) -> dict:
    """``choose_ranking`` for ``model`` on labelled rows (features, candidate texts, true texts)."""
    if not getattr(model, "has_ctc", False):
        return dict(NO_CTC_HEAD)
    scores = model_scores(model, feats, candidates)
    probs = softmax(scores["logits"])
    classes = candidate_classes(candidates, vocab)
    cls = closed_set_scores(probs, classes)
    by_norm = {
        norm: ctc_scores(scores["nll"], scores["lengths"], scores["valid"], norm) for norm in (True, False)
    }
    pos = truth_positions(candidates, truths, vocab.normalizer)
    out = choose_ranking(cls, by_norm, pos, fam=familiarity(classes, vocab.counts), classes=classes)
    out["new_message_rows"] = new_message_rows(classes, pos)
    out["chosen_on"] = (
        chosen_on if out.get("rows") else "default (no validation row with its truth among the candidates)"
    )
    return out


def tune_ranking(model, vocab, features, held_rows, held_feats, manifest: str | None, data, log) -> dict:
    """``tune`` as a stage runs it: on ``manifest``'s labelled rows with candidates (read through the
    feature cache of ``data``), else on the stage's held-out exact rows ``held_rows`` (manifest
    ``Row`` objects) with their features ``held_feats`` (array-like, aligned)."""
    if not getattr(model, "has_ctc", False):
        return dict(NO_CTC_HEAD)
    if manifest:
        from plcli.data.datasets import open_cache
        from plcli.data.validate import load_rows

        rows = [r for r in load_rows([manifest], vocab.normalizer, log=log).rows if r.label and r.candidates]
        feats = open_cache(data, features).features([r.audio for r in rows])[1] if rows else None
        where = f"{manifest} ({len(rows)} labelled rows with candidates)"
    else:
        keep = np.array([i for i, r in enumerate(held_rows) if r.candidates], dtype=np.int64)
        rows = [held_rows[i] for i in keep]
        feats = RowView(held_feats, keep)
        where = f"the held-out exact rows ({len(rows)} with candidates)"
    if not rows:
        return {**DEFAULT, "chosen_on": "default (no validation rows)", "rows": 0}
    out = tune(model, vocab, feats, [r.candidates for r in rows], [r.label for r in rows], where)
    opened = open_weights(out.get("open"))
    log(
        f"combined ranking: CTC weight {out['ctc_weight']}, length norm {out['length_norm']}, "
        f"prior correction {out.get('prior_weight', 0.0)}, temperature {out.get('temperature', 1.0):.3g}, "
        f"within-candidate accuracy {out.get('accuracy', float('nan')):.3f} on {where}, "
        f"{out.get('new_message_rows', 0)} of them saying a message outside the vocabulary; rows with a "
        f"text outside it: CTC weight {opened['ctc_weight']}, prior correction "
        f"{opened['prior_weight']} ({opened['chosen_on']})"
    )
    return out
