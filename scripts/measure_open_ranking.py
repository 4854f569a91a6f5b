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
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass
class Scored:
    """A model's view of a manifest's labelled rows with candidates, split into dev and test halves
    by speaker: what both measurements need."""

    model_dir: str
    rows: list
    probs: np.ndarray  # (N, C)
    scores: dict  # plcli.ranking.model_scores
    classes: np.ndarray  # (N, K)
    pos: np.ndarray  # (N,) the truth's candidate position
    vocab: object
    extra: dict | None  # what the model stores

    @property
    def setting(self) -> dict:
        from plcli.ranking import ranking_of

        return ranking_of(self.extra)

    @cached_property
    def dev(self) -> np.ndarray:
        speakers = sorted({r.speaker for r in self.rows})
        return np.array([speakers.index(r.speaker) % 2 == 0 for r in self.rows])

    @cached_property
    def is_open(self) -> np.ndarray:
        from plcli.ranking import open_rows

        return open_rows(self.classes)

    @cached_property
    def new(self) -> np.ndarray:
        """Rows whose truth is a never-heard text."""
        from plcli.ranking import new_message_mask

        return new_message_mask(self.classes, self.pos)

    def acc(self, scores: np.ndarray, rows: np.ndarray) -> float:
        """Within-candidate accuracy of (N, K) ``scores`` on the ``rows`` mask."""
        return float((scores.argmax(1) == self.pos)[rows].mean()) if rows.any() else float("nan")


def scored(model_dir: str, manifest: str) -> Scored:
    from plcli.data.validate import load_rows
    from plcli.inference import infer_ranked, load_predictor
    from plcli.ranking import candidate_classes, truth_positions

    model, vocab, features, _ = load_predictor(model_dir)
    rows = [r for r in load_rows([manifest], vocab.normalizer, log=lambda *_: None).rows
            if r.label and r.candidates]
    cands = [r.candidates for r in rows]
    probs, scores, _ = infer_ranked(model, features, [r.audio for r in rows], cands, log=lambda *_: None)
    pos = truth_positions(cands, [r.label for r in rows], vocab.normalizer)
    return Scored(model_dir, rows, probs, scores, candidate_classes(cands, vocab), pos, vocab,
                  getattr(model, "extra", None))


def measure_ranking(d: Scored) -> dict:
    """The open rows' (ctc_weight, prior_weight) with the best accuracy on the dev half's rows saying
    a never-heard message (ties: the smaller weights), against the alternatives on the test half."""
    from plcli.ranking import (
        LAMBDAS,
        PRIOR_WEIGHTS,
        closed_set_scores,
        ctc_scores,
        familiarity,
        ranked_scores,
    )

    setting, dev, new = d.setting, d.dev, d.new
    cls = closed_set_scores(d.probs, d.classes)
    ctc = ctc_scores(d.scores["nll"], d.scores["lengths"], d.scores["valid"], bool(setting["length_norm"]))
    fam = familiarity(d.classes, d.vocab.counts)

    def ranked(lam: float, beta: float) -> np.ndarray:
        return ranked_scores(cls, ctc, {**setting, "open": {"ctc_weight": lam, "prior_weight": beta}}, fam,
                             d.is_open)

    grid = []
    for beta in PRIOR_WEIGHTS:
        for lam in LAMBDAS:
            s = ranked(lam, beta)
            grid.append(
                {
                    "ctc_weight": lam,
                    "prior_weight": beta,
                    "dev_new": d.acc(s, dev & new),
                    "test_new": d.acc(s, ~dev & new),
                    "test_open": d.acc(s, ~dev & d.is_open & (d.pos >= 0)),
                }
            )
    best = max(grid, key=lambda g: (g["dev_new"], -g["prior_weight"], -g["ctc_weight"]))
    k = np.isfinite(cls).sum(1)
    return {
        "rows": len(d.rows),
        "new_message_rows": {"dev": int((dev & new).sum()), "test": int((~dev & new).sum())},
        "chosen": {k_: best[k_] for k_ in ("ctc_weight", "prior_weight")},
        "test_new": {
            "chosen": best["test_new"],
            "stored weights everywhere": d.acc(
                ranked(setting["ctc_weight"], setting["prior_weight"]), ~dev & new
            ),
            "ctc head alone": d.acc(ctc, ~dev & new),
            "closed-set head alone": d.acc(cls, ~dev & new),
            "chance": float(np.mean(1.0 / k[~dev & new])) if (~dev & new).any() else float("nan"),
        },
        "grid": grid,
    }


# above 0: at 0 a row the recogniser says nothing about (no vote) would lose the student too
WEIGHTS = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01)


def measure_cascade(d: Scored) -> dict:
    """The student's weight on open rows with the best within-candidate accuracy on the dev
    speakers' open rows (ties: the larger weight), and every weight's accuracy on both halves."""
    from plcli.cascade import combine, recogniser_logp, recogniser_scores, setting_for
    from plcli.config import cache_dir
    from plcli.ranking import rank

    ranked = rank(d.probs, d.scores, d.classes, d.setting, d.vocab.counts)
    cascade = setting_for("auto", None, d.model_dir, d.extra, cache_dir(None))
    dev, new, is_open = d.dev, d.new, d.is_open
    rec_scores = recogniser_scores(
        d.rows, np.flatnonzero(is_open), d.classes.shape, cascade, cache_dir(None), lambda *_: None
    )
    rec = recogniser_logp(rec_scores, cascade["calibration"], d.classes, cascade["accuracy"])
    grid = []
    for w in WEIGHTS:
        p = combine(ranked["probs"], rec, is_open, w)
        grid.append(
            {
                "weight": w,
                "dev_open": d.acc(p, dev & is_open),
                "test_open": d.acc(p, ~dev & is_open),
                "test_new": d.acc(p, ~dev & new),
                "test_all": d.acc(p, ~dev & (d.pos >= 0)),
            }
        )
    best = max(grid, key=lambda g: (g["dev_open"], g["weight"]))
    return {
        "recogniser": cascade["kind"],
        "rows": len(d.rows),
        "open_rows": {"dev": int((dev & is_open).sum()), "test": int((~dev & is_open).sum())},
        "chosen": best["weight"],
        "test": best,
        "test_recogniser_alone": {"open": d.acc(rec, ~dev & is_open), "new": d.acc(rec, ~dev & new)},
        "grid": grid,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--json")
    ap.add_argument("--cascade", action="store_true", help="measure the cascade's student weight instead")
    a = ap.parse_args()
    d = scored(a.model, a.manifest)
    out = measure_cascade(d) if a.cascade else measure_ranking(d)
    print(json.dumps({k: v for k, v in out.items() if k != "grid"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
