"""The open rows' default ranking weights (``plcli.ranking.OPEN_DEFAULT``), measured on never-heard messages.

A demo set whose test chat says messages training never holds (``plcli demo-data --phrases 40
--new-messages 0.25``: 30 known, 10 never heard). Its test speakers are split in two by id: the
``dev`` half chooses the open rows' (ctc_weight, prior_weight) by within-candidate accuracy on its
rows whose truth is a never-heard message; the ``test`` half reports it against the model's stored
ranking, the CTC head alone and chance.

    python scripts/measure_open_ranking.py --model RUN/distill --manifest DEMO/test.jsonl [--json OUT]

``--cascade`` measures, the same way, the student's weight in the cascade's product on rows with a
never-heard text (``plcli.cascade.OPEN_WEIGHT``), with the recogniser ``--fallback auto`` picks.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def scored(model_dir: str, manifest: str):
    """The manifest's labelled rows with candidates and everything ``plcli.ranking`` needs for them."""
    from plcli.data.validate import load_rows
    from plcli.inference import infer_ranked, load_predictor
    from plcli.ranking import candidate_classes, ranking_of, truth_positions

    model, vocab, features, _ = load_predictor(model_dir)
    rows = [r for r in load_rows([manifest], vocab.normalizer, log=lambda *_: None).rows
            if r.label and r.candidates]
    cands = [r.candidates for r in rows]
    probs, scores, _ = infer_ranked(model, features, [r.audio for r in rows], cands, log=lambda *_: None)
    classes = candidate_classes(cands, vocab)
    pos = truth_positions(cands, [r.label for r in rows], vocab.normalizer)
    return rows, probs, scores, classes, pos, vocab, ranking_of(getattr(model, "extra", None))


# above 0: at 0 a row the recogniser says nothing about (no vote) would lose the student too
WEIGHTS = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01)


def measure_cascade(model_dir: str, manifest: str) -> dict:
    """The student's weight on open rows with the best within-candidate accuracy on the dev
    speakers' open rows (ties: the larger weight), and every weight's accuracy on both halves."""
    from plcli.cascade import combine, recogniser_logp, setting_for
    from plcli.config import cache_dir
    from plcli.ranking import UNKNOWN, open_rows, rank

    rows, probs, scores, classes, pos, vocab, setting = scored(model_dir, manifest)
    ranked = rank(probs, scores, classes, setting, vocab.counts)
    from plcli.inference import load_predictor

    extra = getattr(load_predictor(model_dir)[0], "extra", None)
    cascade = setting_for("auto", None, model_dir, extra, cache_dir(None))
    from plcli.cascade import recogniser_scores

    is_open = open_rows(classes)
    rec_scores = recogniser_scores(
        rows, np.flatnonzero(is_open), classes.shape, cascade, cache_dir(None), lambda *_: None
    )
    rec = recogniser_logp(rec_scores, cascade["calibration"], classes, cascade.get("accuracy", 0.7))
    speakers = sorted({r.speaker for r in rows})
    dev = np.array([speakers.index(r.speaker) % 2 == 0 for r in rows])
    new = (pos >= 0) & (classes[np.arange(len(rows)), np.clip(pos, 0, None)] == UNKNOWN)
    acc = lambda p, m: float((p.argmax(1) == pos)[m].mean()) if m.any() else float("nan")  # noqa: E731
    grid = []
    for w in WEIGHTS:
        p = combine(ranked["probs"], rec, is_open, w)
        grid.append(
            {
                "weight": w,
                "dev_open": acc(p, dev & is_open),
                "test_open": acc(p, ~dev & is_open),
                "test_new": acc(p, ~dev & new),
                "test_all": acc(p, ~dev & (pos >= 0)),
            }
        )
    best = max(grid, key=lambda g: (g["dev_open"], g["weight"]))
    return {
        "recogniser": cascade["kind"],
        "rows": len(rows),
        "open_rows": {"dev": int((dev & is_open).sum()), "test": int((~dev & is_open).sum())},
        "chosen": best["weight"],
        "test": best,
        "test_recogniser_alone": {"open": acc(rec, ~dev & is_open), "new": acc(rec, ~dev & new)},
        "grid": grid,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--json")
    ap.add_argument("--cascade", action="store_true", help="measure the cascade's student weight instead")
    a = ap.parse_args()
    if a.cascade:
        out = measure_cascade(a.model, a.manifest)
        print(json.dumps({k: v for k, v in out.items() if k != "grid"}, indent=1))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
        return 0
    from plcli.ranking import (
        LAMBDAS,
        PRIOR_WEIGHTS,
        UNKNOWN,
        closed_set_scores,
        ctc_scores,
        familiarity,
        open_rows,
        ranked_scores,
    )

    rows, probs, scores, classes, pos, vocab, setting = scored(a.model, a.manifest)
    cls = closed_set_scores(probs, classes)
    ctc = ctc_scores(scores["nll"], scores["lengths"], scores["valid"], bool(setting["length_norm"]))
    fam = familiarity(classes, vocab.counts)
    is_open = open_rows(classes)
    new = (pos >= 0) & (classes[np.arange(len(rows)), np.clip(pos, 0, None)] == UNKNOWN)
    speakers = sorted({r.speaker for r in rows})
    dev = np.array([speakers.index(r.speaker) % 2 == 0 for r in rows])
    acc = lambda s, m: float((s.argmax(1) == pos)[m].mean()) if m.any() else float("nan")  # noqa: E731

    grid = []
    for beta in PRIOR_WEIGHTS:
        for lam in LAMBDAS:
            s = ranked_scores(
                cls, ctc, {**setting, "open": {"ctc_weight": lam, "prior_weight": beta}}, fam, is_open
            )
            grid.append(
                {
                    "ctc_weight": lam,
                    "prior_weight": beta,
                    "dev_new": acc(s, dev & new),
                    "test_new": acc(s, ~dev & new),
                    "test_open": acc(s, ~dev & is_open & (pos >= 0)),
                }
            )
    best = max(grid, key=lambda g: (g["dev_new"], -g["prior_weight"], -g["ctc_weight"]))
    stored = {
        **setting,
        "open": {"ctc_weight": setting["ctc_weight"], "prior_weight": setting["prior_weight"]},
    }
    k = np.isfinite(cls).sum(1)
    out = {
        "rows": len(rows),
        "new_message_rows": {"dev": int((dev & new).sum()), "test": int((~dev & new).sum())},
        "chosen": {k_: best[k_] for k_ in ("ctc_weight", "prior_weight")},
        "test_new": {
            "chosen": best["test_new"],
            "stored weights everywhere": acc(ranked_scores(cls, ctc, stored, fam, is_open), ~dev & new),
            "ctc head alone": acc(ctc, ~dev & new),
            "closed-set head alone": acc(cls, ~dev & new),
            "chance": float(np.mean(1.0 / k[~dev & new])) if (~dev & new).any() else float("nan"),
        },
        "grid": grid,
    }
    print(json.dumps({k_: v for k_, v in out.items() if k_ != "grid"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
