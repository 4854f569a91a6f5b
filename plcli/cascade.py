"""A cascade at prediction time: the small model first, the recogniser only where it is unsure.

The student ranks a recording's candidates in well under a millisecond; Whisper takes a second or
more. So ``predict`` and ``evaluate`` hand a row to the recogniser only when the student's top
candidate probability is below a threshold ``P``, or when a candidate is a text the student never
heard (its vocabulary lacks it, so only a text scorer can name it). There the two views multiply:
the student's candidate probabilities times the recogniser's calibrated distribution
(``plcli.asr_prior.distribution``), renormalised: Bayes' rule with the recogniser's scores as the
likelihood, as in training.

``choose`` picks ``P`` on labelled validation rows: the smallest threshold whose within-candidate
accuracy is the best of the grid (the fewest recogniser calls for that accuracy). The distill stage
does it on its held-out exact rows when it was trained with Whisper, and stores the choice with the
model (``extra["cascade"]``, with the recogniser's calibration there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from plcli.asr_prior import distribution, fit_calibration
from plcli.config import Config, opt
from plcli.ranking import PAD, open_rows, softmax_rows
from plcli.recognisers import Scores

# thresholds tried; 0 never asks the recogniser (but for unknown candidates), above 1 always does
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)
# the student's weight in the product on rows with a never-heard text, chosen on the dev speakers of a
# 30-known / 10-never-heard set (scripts/measure_open_ranking.py --cascade; results/never-heard/):
# the student is sure of the texts it heard even where the message is new, so at weight 1 it
# outvotes Whisper (open rows 0.79 on dev, 0.85 on test); at 0.02 it breaks Whisper's near-ties
# (0.92 dev, 0.94 test, Whisper alone 0.89)
OPEN_WEIGHT = 0.02
# pocketsphinx's vote where its run measured none (its grammar row: 0.77 on the English demo set)
VOTE_ACCURACY = 0.7
DEFAULT = {"threshold": 0.9, "calibration": {"alpha": 0.0, "temperature": 1.0}, "chosen_on": "default"}
FALLBACKS = ("auto", "none", "whisper", "pocketsphinx")


@dataclass
class FallbackOptions(Config):
    """The cascade's options, shared by ``predict`` and ``evaluate`` (their configs inherit them)."""

    fallback: str = opt(
        "auto",
        "recogniser that re-ranks rows the model is unsure of (auto: whisper, else pocketsphinx for en)",
        why="for never-heard texts; in evaluate, whisper scores every row, for each threshold's accuracy",
        choices=FALLBACKS,
    )
    fallback_below: float | None = opt(
        None,
        "send rows whose top candidate probability is below this to the recogniser",
        why="default: the threshold chosen at training",
        min=0.0,
        max=1.01,
    )
    asr_model: str | None = opt(None, "Whisper model (default: the run's)")
    asr_window: float | None = opt(None, "seconds Whisper's encoder sees per clip (default: the run's)",
                                   min=3.0, max=30.0)


def needs_recogniser(probs: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) bool: rows whose top candidate probability (``probs``: (N, K) over the candidates) is
    below ``threshold``, or that hold a candidate outside the vocabulary (``classes`` (N, K) from
    ``plcli.ranking.candidate_classes``)."""
    return (probs.max(1) < threshold) | open_rows(classes)


def recogniser_logp(scores: Scores, calibration: dict, classes: np.ndarray | None = None,
                    accuracy: float = VOTE_ACCURACY) -> np.ndarray:
    """(N, K) the recogniser's calibrated log-probabilities; 0 on rows it did not score. A voting
    recogniser (no ``logp``): ``accuracy`` at its vote among the row's candidates (``classes``)."""
    if scores.logp is None:
        return distribution(scores, (classes != PAD).sum(1), classes.shape[1], accuracy=accuracy)
    k = np.isfinite(scores.logp).sum(1)
    return distribution(scores, k, scores.logp.shape[1], calibration=calibration)


def combine(probs: np.ndarray, rec_logp: np.ndarray, rows: np.ndarray, weight=1.0) -> np.ndarray:
    """(N, K) candidate probabilities: ``rows`` re-ranked by ``probs ** weight * exp(rec_logp)``
    (``weight``: a number, or (N,) one per row), the rest as they are."""
    w = np.asarray(weight, dtype=np.float64).reshape(-1, 1) if np.ndim(weight) else weight
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(probs > 0, w * np.log(probs), -np.inf) + rec_logp[:, : probs.shape[1]]
    return np.where(rows[:, None], softmax_rows(z), probs)


def choose(probs: np.ndarray, scores: Scores, classes: np.ndarray, truth_pos: np.ndarray,
           thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """The recogniser's calibration and the threshold with the best within-candidate accuracy on
    rows with a ``truth_pos`` (ties: the smaller threshold), with every threshold's accuracy and
    share of rows sent to the recogniser (``grid``)."""
    rows = truth_pos >= 0
    if not rows.any():
        return {**DEFAULT, "chosen_on": "default (no validation row with its truth among the candidates)"}
    cal = fit_calibration(scores, truth_pos)
    rec = recogniser_logp(scores, cal)
    grid = []
    for t in thresholds:
        sent = needs_recogniser(probs, classes, t)
        acc = float((combine(probs, rec, sent).argmax(1) == truth_pos)[rows].mean())
        grid.append({"threshold": t, "accuracy": acc, "share": float(sent[rows].mean())})
    best = max(grid, key=lambda g: (g["accuracy"], -g["threshold"]))
    return {"threshold": best["threshold"], "accuracy": best["accuracy"], "rows": int(rows.sum()),
            "calibration": {k: cal[k] for k in ("alpha", "temperature")}, "grid": grid}


def cascade_of(extra: dict | None) -> dict:
    """The cascade settings stored with a model, or the defaults."""
    return {**DEFAULT, **((extra or {}).get("cascade") or {})}


def resolve_fallback(kind: str, model: str, cache, language: str = "en") -> str:
    """``kind`` made concrete: "auto" is "whisper" where faster-whisper runs and ``model`` is a
    local folder or Whisper base from the extra's wheels, else "pocketsphinx" for English where it
    is installed (its model is US English), else "none"."""
    from plcli.errors import UserError

    if kind not in FALLBACKS:
        raise UserError(f"unknown fallback {kind!r}: one of {', '.join(FALLBACKS)}")
    if kind != "auto":
        return kind
    from pathlib import Path

    from plcli.grammar import unavailable as ps_unavailable
    from plcli.recognisers.whisper import BASE_WHEELS, base_dir, unavailable, wheel_data

    local = Path(model).is_dir() or (model in ("base", "whisper-base") and (
        (base_dir(cache) / "model.bin").is_file() or all(map(wheel_data, BASE_WHEELS))))
    if not unavailable() and local:
        return "whisper"
    return "pocketsphinx" if language == "en" and ps_unavailable() is None else "none"


def student_weight(classes: np.ndarray) -> np.ndarray:
    """(N,) the student's weight in the product: ``OPEN_WEIGHT`` on rows with a text outside its
    vocabulary (it never heard that text, yet its probabilities are sure), 1 elsewhere."""
    return np.where(open_rows(classes), OPEN_WEIGHT, 1.0)


def apply(ranked: dict, rows: Sequence, classes: np.ndarray, setting: dict, cache, log=print,
          every_row: bool = False) -> tuple[dict, dict]:
    """Re-rank, in ``ranked`` (``plcli.ranking.rank``'s output), the rows the recogniser is asked
    about (``needs_recogniser`` at ``setting["threshold"]``; ``every_row``: score all rows, for
    ``evaluate``'s curve, but re-rank the same ones). Returns it with the recogniser's scores."""

    has = np.array([bool(r.candidates) for r in rows])
    sent = needs_recogniser(ranked["probs"], classes, setting["threshold"]) & has
    ask = np.flatnonzero(has if every_row else sent)
    scores = recogniser_scores(rows, ask, classes.shape, setting, cache, log)
    rec = recogniser_logp(scores, setting["calibration"], classes, setting.get("accuracy", VOTE_ACCURACY))
    probs = combine(ranked["probs"], rec, sent, student_weight(classes))
    with np.errstate(divide="ignore"):
        combined = np.where(sent[:, None], np.log(probs), ranked["combined"])
    decided = [("recogniser" if s else d) for d, s in zip(ranked["decided_by"], sent, strict=True)]
    out = {**ranked, "probs": probs, "combined": combined, "top": combined.argmax(1), "decided_by": decided}
    return out, {"scores": scores, "sent": sent}


def recogniser_scores(rows: Sequence, ask: np.ndarray, shape: tuple[int, int], setting: dict, cache,
                      log) -> Scores:
    """The fallback recogniser's scores of ``rows[ask]`` laid out over all rows (N, K)."""
    from plcli.recognisers import recognise

    n, k = shape
    kind = setting.get("kind", "whisper")
    sub = [rows[i] for i in ask]
    if kind == "pocketsphinx":
        votes = np.full(n, -1, dtype=np.int64)
        if len(ask):
            s = recognise(sub, kind, cache, language=setting["language"], log=log)
            votes[ask] = s.votes
        return Scores(kind, votes)
    logp, tokens = np.full((n, k), -np.inf), np.zeros((n, k), dtype=np.int64)
    if len(ask):
        s = recognise(
            sub, kind, cache, setting["model"], setting["language"], log=log, window=setting["window"]
        )
        logp[ask, : s.logp.shape[1]], tokens[ask, : s.logp.shape[1]] = s.logp, s.tokens
    return Scores(kind, np.where(np.isfinite(logp).any(1), logp.argmax(1), -1), logp, tokens)


def curve_metrics(
    probs: np.ndarray, scores: Scores, classes: np.ndarray, truth_pos: np.ndarray, setting: dict
) -> dict:
    """With every row scored by the recogniser: its own within-candidate accuracy and, for each
    threshold, the cascade's accuracy and the share of rows it sends to the recogniser, on rows with
    a ``truth_pos``; the recogniser's clips/s where it scored rows now."""
    rows = truth_pos >= 0
    if not rows.any():
        return {}
    rec = recogniser_logp(scores, setting["calibration"], classes, setting.get("accuracy", VOTE_ACCURACY))
    hit = lambda p: float((p.argmax(1) == truth_pos)[rows].mean())  # noqa: E731
    grid, w = [], student_weight(classes)
    for t in sorted({*THRESHOLDS, setting["threshold"]}):
        sent = needs_recogniser(probs, classes, t)
        grid.append(
            {"threshold": t, "accuracy": hit(combine(probs, rec, sent, w)), "share": float(sent[rows].mean())}
        )
    out = {"accuracy_recogniser": hit(rec), "accuracy_model": hit(probs), "grid": grid}
    if scores.scored:
        out["recogniser_clips_per_second"] = scores.scored / max(scores.seconds, 1e-9)
    return out


def setting_for(
    fallback: str,
    below: float | None,
    model_path,
    extra: dict | None,
    cache,
    asr_model: str | None = None,
    window: float | None = None,
    language: str | None = None,
) -> dict | None:
    """What ``apply`` needs for a model (``model_path``: its run folder or model.pt; ``extra``: what
    it stores), or None where the cascade is off. Unset options take the run's settings: its
    recogniser model, window and language, and the threshold chosen at training (``auto``: 0, so
    only rows with a text the model never heard go to the recogniser)."""
    from pathlib import Path

    run = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    conf = {}
    if (run / "config.yaml").is_file():
        from plcli.config import read_run_config

        conf = read_run_config(run)
    asr_model = asr_model or conf.get("asr_model") or "base"
    lang = language or (conf.get("data") or {}).get("language") or "en"
    kind = resolve_fallback(fallback, asr_model, cache, lang)
    if kind == "none":
        return None
    stored = cascade_of(extra)
    # asked for by name, the threshold chosen at training; auto, and pocketsphinx (weaker than the
    # student on the texts it heard), only the rows with a text it never heard
    threshold = below if below is not None else (stored["threshold"] if fallback == "whisper" else 0.0)
    return {
        **stored,
        "kind": kind,
        "threshold": float(threshold),
        "model": asr_model,
        "language": lang,
        "window": float(window or conf.get("asr_window") or 30.0),
        "accuracy": _vote_accuracy(run),
    }


def _vote_accuracy(run) -> float:
    """pocketsphinx's vote accuracy on the run's exact rows (its ``metrics.json``), else ``VOTE_ACCURACY``."""
    import json

    m = run / "metrics.json"
    prior = (json.loads(m.read_text()).get("asr_prior") or {}) if m.is_file() else {}
    a = prior.get("accuracy") if prior.get("kind") == "pocketsphinx" else None
    return float(a) if a is not None else VOTE_ACCURACY


def tune(
    model,
    vocab,
    rows: Sequence,
    feats,
    ranking: dict,
    cache,
    asr_model: str,
    language: str,
    window: float,
    log=print,
) -> dict:
    """``choose`` for ``model`` on labelled rows with candidates (``rows`` and their features
    ``feats``), the recogniser's scores read through its cache."""
    from plcli.arrays import RowView, softmax
    from plcli.ranking import candidate_classes, model_scores, rank, truth_positions
    from plcli.recognisers import recognise

    keep = [i for i, r in enumerate(rows) if r.candidates and r.label is not None]
    if not keep:
        return {**DEFAULT, "chosen_on": "default (no validation rows)"}
    rows = [rows[i] for i in keep]
    cands = [r.candidates for r in rows]
    scores = model_scores(model, RowView(feats, np.asarray(keep)), cands)
    classes = candidate_classes(cands, vocab)
    ranked = rank(softmax(scores["logits"]), scores, classes, ranking, vocab.counts)
    rec = recognise(rows, "whisper", cache, asr_model, language, log=log, window=window)
    pos = truth_positions(cands, [r.label for r in rows], vocab.normalizer)
    out = choose(ranked["probs"], rec, classes, pos)
    out["chosen_on"] = f"{len(rows)} held-out exact rows"
    log(
        f"cascade: threshold {out['threshold']:g} ({out.get('accuracy', float('nan')):.3f} within candidates "
        f"on {out['chosen_on']})"
    )
    return out
