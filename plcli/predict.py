"""``plcli predict``: top-k labels for every recording of a manifest, restricted to its candidates.

Inference goes through the feature cache with the model's own ``FeatureConfig``, so new audio is
featurised exactly as the training audio was, and a second run over the same files costs only the
model. Batches are read straight from the memory-mapped feature pack.

Output: one JSON object per manifest row, in manifest order::

    {"id": "m-001",
     "restricted": true,                       # the row had known candidates
     "top_k": [{"label": "On my way", "prob": 0.91}, ...],   # renormalised over the candidates
     "top1": {"label": "On my way", "prob": 0.62},           # unrestricted, over the whole vocabulary
     "candidates": [{"text": "on my way!", "rank": 1, "prob": 0.91},
                    {"text": "new words", "rank": null, "prob": 0.0}]}

``label`` is the vocabulary's display text (the most frequent original spelling); ``rank`` is the
candidate's 1-based rank among *all* classes of the unrestricted prediction (``null`` for a
candidate outside the model's vocabulary, which can never be predicted), ``prob`` its
candidate-renormalised probability. Rows without candidates (or with only unknown ones) get the
unrestricted top-k and ``"restricted": false``.

A model with a CTC head (the distill stage's default) ranks every candidate, known to its
vocabulary or not, by the combined score of ``plcli.ranking``; then ``prob`` is the candidates'
softmax of that score, each candidate also carries ``known`` (in the vocabulary) and ``ctc`` (its
per-token CTC log-likelihood), a ``top_k`` entry of an unknown candidate has ``"known": false``, and
the record says which scorer decided::

    {"id": "m-002", "restricted": true, "decided_by": "ctc",      # or classifier, both, combined
     "top_k": [{"label": "Meet me at Quay 7", "prob": 0.83, "known": false}, ...], ...}

With a recogniser (``--fallback``, ``plcli.cascade``), rows it re-ranked say ``"decided_by":
"recogniser"``, and their probabilities are the student's times the recogniser's, renormalised.

A row with known candidates also carries ``none_of_these``: the model's probability mass outside
them, its belief that nobody typed the note (``plcli.metrics.none_of_these``); with ``--abstain``,
``"abstained": true`` where it passes the threshold (the run's, or ``--abstain-above``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plcli.cascade import FallbackOptions
from plcli.config import opt
from plcli.data.labels import Vocabulary
from plcli.errors import UserError
from plcli.inference import infer, load_predictor


def prediction_records(
    ids: list[str],
    probs: np.ndarray,
    candidates: list[list[str]],
    vocab: Vocabulary,
    top_k: int = 5,
    digits: int = 6,
    ranked: dict | None = None,
) -> list[dict]:
    """One output record per row (see the module docstring) from (N, C) probabilities;
    ``ranked``: ``plcli.ranking.rank``'s output for a model with a CTC head."""
    n, c = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")  # (N, C) classes by falling probability
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(1, c + 1)  # rank[i, j]: 1-based rank of class j
    out = []
    for i in range(n):
        p = probs[i]
        idx = [vocab.index(t) for t in candidates[i]]
        known = sorted({j for j in idx if j is not None})
        top1 = int(order[i, 0])
        rec: dict = {"id": ids[i], "restricted": bool(known)}
        cp: dict[int, float] = {}
        if known:
            mass = p[known].sum()
            cp = {j: (p[j] / mass if mass > 0 else 1.0 / len(known)) for j in known}
            best = sorted(known, key=lambda j: rank[i, j])[:top_k]
            rec["top_k"] = [{"label": vocab.display[j], "prob": round(float(cp[j]), digits)} for j in best]
        else:
            rec["top_k"] = [
                {"label": vocab.display[j], "prob": round(float(p[j]), digits)} for j in order[i, :top_k]
            ]
        rec["top1"] = {"label": vocab.display[top1], "prob": round(float(p[top1]), digits)}
        if ranked is not None and candidates[i]:
            _ranked_record(rec, i, candidates[i], idx, rank, ranked, vocab, top_k, digits)
        elif candidates[i]:
            rec["candidates"] = [
                {
                    "text": t,
                    "rank": None if j is None else int(rank[i, j]),
                    "prob": 0.0 if j is None else round(float(cp[j]), digits),
                }
                for t, j in zip(candidates[i], idx, strict=True)
            ]
        out.append(rec)
    return out


def _ranked_record(rec: dict, i: int, cands: list[str], idx: list, rank: np.ndarray, ranked: dict, vocab,
                   top_k: int, digits: int) -> None:
    """Fill ``rec``'s candidate fields from the combined ranking of row ``i``."""
    cp = ranked["probs"][i]
    ctc = ranked["ctc"][i] if ranked["ctc"] is not None else None
    order = sorted(range(len(cands)), key=lambda k: -ranked["combined"][i, k])[:top_k]
    rec["restricted"] = True
    rec["decided_by"] = ranked["decided_by"][i]
    rec["top_k"] = [{"label": vocab.display[idx[k]] if idx[k] is not None else cands[k],
                     "prob": round(float(cp[k]), digits), "known": idx[k] is not None} for k in order]
    rec["candidates"] = [
        {"text": t, "rank": None if j is None else int(rank[i, j]), "prob": round(float(cp[k]), digits),
         "known": j is not None, **({"ctc": round(float(ctc[k]), 4)} if ctc is not None else {})}
        for k, (t, j) in enumerate(zip(cands, idx, strict=True))
    ]


@dataclass
class PredictConfig(FallbackOptions):
    """``plcli predict`` options."""

    manifests: list[str] = opt(
        factory=list, help="manifests to predict (JSONL or CSV; labels and candidates optional)"
    )
    model: str = opt("", "run directory with a classifier (finetune or distill)")
    out: str = opt("", "predictions file to write (JSONL)")
    top_k: int = opt(5, "labels per recording", min=1)
    batch_size: int = opt(
        256, "inference batch size (256 ranked fastest on 2 CPU cores, scripts/bench_ranking.py)", min=1
    )
    cache_dir: str | None = opt(None, "feature cache folder (default: $PLCLI_CACHE or ~/.cache/plcli)")
    skip_invalid: bool = opt(False, "drop invalid manifest rows (written to --rejects) instead of stopping")
    rejects: str | None = opt(None, "where --skip-invalid writes rejected rows (default: OUT.rejects.jsonl)")
    abstain: bool = opt(False, "answer none where none_of_these passes the threshold (default: the run's)")
    abstain_above: float | None = opt(None, "none_of_these threshold for --abstain", min=0.0, max=1.0)

    def check(self) -> None:
        if not self.manifests:
            raise UserError("no manifest given")
        if not self.model:
            raise UserError("--model is required")
        if not self.out:
            raise UserError("--out is required")


def run(cfg: PredictConfig, log=print) -> dict:
    """Write ``cfg.out`` (JSONL, atomically); returns a summary with the throughput figures."""
    import json

    from plcli.data.exports import is_manifest, manifest_from_export
    from plcli.data.validate import load_rows
    from plcli.io import atomic_open

    out = Path(cfg.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as predictions.jsonl")
    model, vocab, features, stage = load_predictor(cfg.model)
    rejects = cfg.rejects or str(out.with_name(out.name + ".rejects.jsonl"))
    manifests = [
        m if is_manifest(m) else str(manifest_from_export(m, out, vocab.normalizer, log))
        for m in cfg.manifests
    ]
    rows = load_rows(manifests, vocab.normalizer, cfg.skip_invalid, rejects, log=log).rows
    cands = [r.candidates for r in rows]
    probs, ranked, cascade, timing = _infer(cfg, model, features, vocab, rows, log)
    records = prediction_records([r.id for r in rows], probs, cands, vocab, cfg.top_k, ranked=ranked)
    abstained = _none_of_these(records, rows, probs, vocab, cfg, getattr(model, "extra", None))
    with atomic_open(out, "w") as f:
        if out.suffix.lower() == ".csv":
            write_csv(f, records, rows)
        else:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    decided = dict(Counter(r["decided_by"] for r in records if "decided_by" in r))
    return {
        "rows": len(rows),
        "restricted": sum(r["restricted"] for r in records),
        **({"decided_by": decided} if decided else {}),
        **({"abstained": abstained} if cfg.abstain else {}),
        **cascade,
        "stage": stage,
        "out": str(out),
        **timing,
    }


def _infer(
    cfg: PredictConfig, model, features, vocab, rows, log
) -> tuple[np.ndarray, dict | None, dict, dict]:
    """(N, C) probabilities; the combined ranking of every row's candidates, where the model has a CTC
    head or a recogniser falls back (else None); the recogniser's summary ({} without one); the timings."""
    from plcli.cascade import setting_for
    from plcli.config import cache_dir

    cands = [r.candidates for r in rows]
    ranked, cascade = None, {}
    setting = setting_for(
        cfg.fallback,
        cfg.fallback_below,
        cfg.model,
        getattr(model, "extra", None),
        cache_dir(cfg.cache_dir),
        cfg.asr_model,
        cfg.asr_window,
    )
    if model.has_ctc or setting:
        from plcli.inference import infer_ranked
        from plcli.ranking import candidate_classes, rank, ranking_of

        probs, scores, timing = infer_ranked(
            model, features, [r.audio for r in rows], cands, cfg.cache_dir, cfg.batch_size, log=log
        )
        classes = candidate_classes(cands, vocab)
        ranked = rank(probs, scores, classes, ranking_of(getattr(model, "extra", None)), vocab.counts)
        if setting:
            ranked, cascade = _cascade(ranked, rows, classes, setting, cache_dir(cfg.cache_dir), log)
    else:
        probs, timing = infer(
            model, features, [r.audio for r in rows], cfg.cache_dir, cfg.batch_size, log=log
        )
    return probs, ranked, cascade, timing


CSV_COLUMNS = (
    "file",
    "time",
    "message",
    "probability",
    "runner_up",
    "runner_up_probability",
    "none_of_these",
    "speaker",
    "id",
)


def write_csv(f, records: list[dict], rows) -> None:
    """The predictions as a table a person reads: per voice note its file and time, the chosen
    message and its probability, the runner-up, and ``none_of_these``."""
    import csv

    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    for rec, row in zip(records, rows, strict=True):
        top = rec["top_k"] + [{"label": "", "prob": ""}] * 2
        w.writerow(
            [
                Path(row.audio).name,
                row.extra.get("timestamp", ""),
                top[0]["label"],
                top[0]["prob"],
                top[1]["label"],
                top[1]["prob"],
                rec.get("none_of_these", ""),
                row.speaker or "",
                rec["id"],
            ]
        )


ABSTAIN_ABOVE = 0.5  # a model that stores no threshold (distill does): none_of_these more likely than not


def _none_of_these(
    records: list[dict], rows, probs: np.ndarray, vocab, cfg: PredictConfig, extra: dict | None
) -> int:
    """Each record with candidates gets ``none_of_these`` (``plcli.metrics``); with ``--abstain``,
    ``abstained``: true where it passes the threshold. Returns how many abstained."""
    from plcli.data.datasets import candidate_matrix
    from plcli.metrics import none_of_these

    score = none_of_these(probs, candidate_matrix(rows, vocab))
    stored = ((extra or {}).get("abstain") or {}).get("threshold")
    above = next(t for t in (cfg.abstain_above, stored, ABSTAIN_ABOVE) if t is not None)
    n = 0
    for rec, row, v in zip(records, rows, score, strict=True):
        if not row.candidates or not np.isfinite(v):
            continue
        rec["none_of_these"] = round(float(v), 6)
        if cfg.abstain:
            rec["abstained"] = bool(v > above)
            n += rec["abstained"]
    return n


def _cascade(ranked: dict, rows, classes, setting: dict, cache, log) -> tuple[dict, dict]:
    """``ranked`` with the recogniser's re-ranking of the rows it is asked about, and a summary."""
    import time

    from plcli.cascade import apply

    t = time.perf_counter()
    ranked, info = apply(ranked, rows, classes, setting, cache, log)
    n = int(info["sent"].sum())
    log(
        f"cascade: the recogniser re-ranked {n} of {len(rows)} rows (top probability below "
        f"{setting['threshold']:g}, or a text the model never heard)"
    )
    return ranked, {
        "recogniser_rows": n,
        "recogniser_threshold": setting["threshold"],
        "recogniser_seconds": time.perf_counter() - t,
    }
