"""Inference throughput of the combined ranking: closed-set head + CTC scores of 10 candidate texts.

    python scripts/bench_ranking.py                       # the default student, random weights
    python scripts/bench_ranking.py --model runs/student  # a trained model

Times ``plcli.ranking.model_scores`` (the model part of ``plcli predict``/``evaluate``: encoder,
both heads, one batched CTC forward over every (clip, candidate) pair) on random 3-s log-mels, with
candidate texts drawn from the long-tail demo vocabulary, against the closed-set head alone.
Reports clips/s from the median of ``--repeats`` passes (a shared machine is noisy) and the CPU
seconds per pass. Features are not part of it (they come from the cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from plcli.config import CTCConfig, FeatureConfig
from plcli.demo.longtail import long_tail_messages
from plcli.inference import predict_logits
from plcli.models.classifier import Classifier, load_model
from plcli.ranking import model_scores
from plcli.text import build_tokenizer


def _median(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None,
                    help="a finetune/distill run directory (default: an untrained default student)")
    ap.add_argument("--clips", type=int, default=2048)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", default="phoneme", choices=("phoneme", "char"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    messages = long_tail_messages(500, 0)
    fc = FeatureConfig()
    if a.model:
        model, _, fc = load_model(a.model)
    else:
        tok = build_tokenizer(a.tokens, messages)
        model = Classifier("tcresnet-small", fc.n_mels, 500, head_hidden_dim=128,
                           ctc=CTCConfig(weight=1.0, tokens=a.tokens).head_args(tok)).eval()
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((a.clips, fc.n_mels, fc.num_frames), dtype=np.float32)
    cands = [list(rng.choice(messages, a.candidates, replace=False)) for _ in range(a.clips)]
    model_scores(model, feats[:8], cands[:8])  # tokenizer and espeak-ng warm-up, outside the timing
    ranked_s, ranked_cpu = _median(lambda: model_scores(model, feats, cands, a.batch_size), a.repeats)
    closed_s, closed_cpu = _median(lambda: predict_logits(model, feats, a.batch_size), a.repeats)
    print(json.dumps({
        "model": a.model or f"untrained tcresnet-small + CTC head ({a.tokens})",
        "clips": a.clips, "candidates": a.candidates, "threads": a.threads,
        "ranked_clips_per_second": round(a.clips / ranked_s), "ranked_cpu_seconds": round(ranked_cpu, 2),
        "closed_set_clips_per_second": round(a.clips / closed_s),
        "closed_set_cpu_seconds": round(closed_cpu, 2),
    }))


if __name__ == "__main__":
    main()
