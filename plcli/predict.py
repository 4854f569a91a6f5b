"""``plcli predict``: top-k labels for every recording of a manifest, restricted to its candidates.

Inference goes through the feature cache with the model's own ``FeatureConfig``, so new audio is
featurised exactly as the training audio was, and a second run over the same files costs only the
model. Batches are read straight from the memory-mapped feature pack.

Output: one JSON object per manifest row, in manifest order::

    {"id": "m-001",
     "restricted": true,                       # the row had known candidates
     "top_k": [{"label": "On my way", "prob": 0.91}, ...],   # renormalised over the candidates
     "top1": {"label": "On my way", "prob": 0.62},           # unrestricted, over the whole vocabulary
     "candidates": [{"text": "on my way!", "rank": 1, "prob": 0.91}, {"text": "new words", "rank": null, "prob": 0.0}]}

``label`` is the vocabulary's display text (the most frequent original spelling); ``rank`` is the
candidate's 1-based rank among *all* classes of the unrestricted prediction (``null`` for a
candidate outside the model's vocabulary, which can never be predicted), ``prob`` its
candidate-renormalised probability. Rows without candidates (or with only unknown ones) get the
unrestricted top-k and ``"restricted": false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plcli.config import Config, FeatureConfig, cache_dir, opt
from plcli.data.labels import Vocabulary
from plcli.errors import UserError
from plcli.models.classifier import Classifier, load_model

MODEL_STAGES = ("finetune", "distill")


def load_predictor(run_dir: str | Path) -> tuple[Classifier, Vocabulary, FeatureConfig, str]:
    """(classifier in eval mode, vocabulary, feature parameters, stage) of a run with a ``model.pt``."""
    p = Path(run_dir)
    if not p.exists():
        raise UserError(f"{run_dir}: no such run directory")
    if p.is_dir() and not (p / "model.pt").exists():
        what = "holds no plcli run"
        if (p / "config.yaml").exists():
            from plcli.config import read_run_config

            what = f"is a {read_run_config(p).get('stage', 'plcli')} run"
        raise UserError(
            f"{run_dir} {what} and has no classifier (model.pt); "
            f"give a {' or '.join(MODEL_STAGES)} run directory"
        )
    model, vocab, features = load_model(p)
    payload_stage = torch.load(
        p / "model.pt" if p.is_dir() else p, map_location="cpu", weights_only=True
    ).get("stage")
    return model, vocab, features, str(payload_stage or "unknown")


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, feats: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(N, F, T) features (float16 memmap or array) -> (N, C) float32 logits, batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, feats.shape[0], batch_size):
        x = torch.from_numpy(np.asarray(feats[s : s + batch_size], dtype=np.float32)).to(device)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64 for stable sums."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def infer(
    model: Classifier,
    features: FeatureConfig,
    audio: list,
    cache: str | None = None,
    batch_size: int = 1024,
    log=print,
) -> tuple[np.ndarray, dict]:
    """(N, C) probabilities for the audio files (through the feature cache) and timing figures."""
    from plcli.data.features import FeatureCache
    from plcli.training import Timer, set_threads

    set_threads()
    fc = FeatureCache(cache_dir(cache), features)
    t = Timer()
    _, feats = fc.features(audio)
    feature_seconds = t.seconds
    t = Timer()
    probs = softmax(predict_logits(model, feats, batch_size))
    model_seconds = t.seconds
    if fc.computed:
        log(f"computed features of {fc.computed} new clip(s), reused {fc.reused}")
    return probs, {
        "feature_seconds": feature_seconds,
        "model_seconds": model_seconds,
        "clips_per_second": len(audio) / max(model_seconds, 1e-9),
        "threads": torch.get_num_threads(),
    }


def prediction_records(
    ids: list[str],
    probs: np.ndarray,
    candidates: list[list[str]],
    vocab: Vocabulary,
    top_k: int = 5,
    digits: int = 6,
) -> list[dict]:
    """One output record per row (see the module docstring) from (N, C) probabilities."""
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
        if candidates[i]:
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


@dataclass
class PredictConfig(Config):
    """``plcli predict`` options."""

    manifests: list[str] = opt(
        factory=list, help="manifests to predict (JSONL or CSV; labels and candidates optional)"
    )
    model: str = opt("", "run directory with a classifier (finetune or distill)")
    out: str = opt("", "predictions file to write (JSONL)")
    top_k: int = opt(5, "labels per recording", min=1)
    batch_size: int = opt(1024, "inference batch size", min=1)
    cache_dir: str | None = opt(None, "feature cache folder (default: $PLCLI_CACHE or ~/.cache/plcli)")
    skip_invalid: bool = opt(False, "drop invalid manifest rows (written to --rejects) instead of stopping")
    rejects: str | None = opt(None, "where --skip-invalid writes rejected rows (default: OUT.rejects.jsonl)")

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

    from plcli.data.validate import load_rows
    from plcli.io import atomic_open

    out = Path(cfg.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as predictions.jsonl")
    model, vocab, features, stage = load_predictor(cfg.model)
    rejects = cfg.rejects or str(out.with_name(out.name + ".rejects.jsonl"))
    rows = load_rows(cfg.manifests, vocab.normalizer, cfg.skip_invalid, rejects, log=log).rows
    probs, timing = infer(model, features, [r.audio for r in rows], cfg.cache_dir, cfg.batch_size, log=log)
    records = prediction_records([r.id for r in rows], probs, [r.candidates for r in rows], vocab, cfg.top_k)
    with atomic_open(out, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {
        "rows": len(rows),
        "restricted": sum(r["restricted"] for r in records),
        "stage": stage,
        "out": str(out),
        **timing,
    }
