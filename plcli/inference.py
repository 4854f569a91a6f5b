"""Inference without Lightning: load a trained classifier, featurise audio, compute logits.

Shared by ``plcli predict``, ``evaluate``, ``export``, the distill stage (its teacher) and the
benchmark. Importing it pulls in torch, never lightning or the training code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# softmax and RowView live in plcli.arrays, below this module and plcli.ranking (which both use
# them); RowView stays importable from here for the callers that take it with predict_logits
from plcli.arrays import RowView as RowView
from plcli.arrays import softmax
from plcli.config import FeatureConfig, cache_dir
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


def _timed_through_cache(features: FeatureConfig, audio: list, cache: str | None, run_model, log):
    """Features of ``audio`` through the feature cache, then ``run_model(feats)``; its result and the
    timing figures (feature and model seconds, model clips/s, threads)."""
    from plcli.data.features import FeatureCache
    from plcli.runs import Timer, set_threads

    set_threads()
    fc = FeatureCache(cache_dir(cache), features)
    t = Timer()
    _, feats = fc.features(audio)
    feature_seconds = t.seconds
    t = Timer()
    out = run_model(feats)
    model_seconds = t.seconds
    if fc.computed:
        log(f"computed features of {fc.computed} new clip(s), reused {fc.reused}")
    return out, {
        "feature_seconds": feature_seconds,
        "model_seconds": model_seconds,
        "clips_per_second": len(audio) / max(model_seconds, 1e-9),
        "threads": torch.get_num_threads(),
    }


def infer(
    model: Classifier,
    features: FeatureConfig,
    audio: list,
    cache: str | None = None,
    batch_size: int = 1024,
    log=print,
) -> tuple[np.ndarray, dict]:
    """(N, C) probabilities for the audio files (through the feature cache) and timing figures."""
    logits, timing = _timed_through_cache(features, audio, cache,
                                          lambda f: predict_logits(model, f, batch_size), log)
    return softmax(logits), timing


def infer_ranked(
    model: Classifier,
    features: FeatureConfig,
    audio: list,
    candidates: list[list[str]],
    cache: str | None = None,
    batch_size: int = 256,
    log=print,
) -> tuple[np.ndarray, dict, dict]:
    """Like ``infer``, plus the CTC scores of every candidate text for a model with a CTC head
    (``plcli.ranking.model_scores``): (N, C) probabilities, the scores and timing figures."""
    from plcli.ranking import model_scores

    scores, timing = _timed_through_cache(features, audio, cache,
                                          lambda f: model_scores(model, f, candidates, batch_size), log)
    timing["candidates_scored"] = int(scores["valid"].sum()) if "valid" in scores else 0
    return softmax(scores["logits"]), scores, timing

