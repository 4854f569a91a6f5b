"""Feasibility of a phoneme or character CTC scorer on demo data, with some phrases never heard.

Trains a small temporal CNN with CTC on the true transcripts of the training recordings whose
phrase is not held out (an oracle: every training label known), then ranks each test recording's
candidates by CTC likelihood and reports within-candidate accuracy for seen and never-heard
phrases (held out, or absent from the
training recordings, as rare messages of a long-tail vocabulary are), with and without length
normalisation. Prints one JSON line.

    python scripts/ctc_feasibility.py --data demo --kind phoneme --epochs 30
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plcli.config import FeatureConfig, cache_dir
from plcli.data.features import FeatureCache
from plcli.data.labels import LabelNormalizer
from plcli.losses import candidate_ctc_nll
from plcli.models.encoders import InputNorm, ResidualBlock
from plcli.text import build_tokenizer


class CTCNet(nn.Module):
    """log-mel (B, F, T) -> (T / stride, B, V) log-probabilities."""

    def __init__(self, n_mels: int, vocab: int, width: int, stride: int):
        super().__init__()
        self.norm = InputNorm(n_mels)
        self.stem = nn.Sequential(nn.Conv1d(n_mels, width, 5, stride=stride, padding=2, bias=False),
                                  nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width, width, 9, 1) for _ in range(3)])
        self.out = nn.Linear(width, vocab)

    def forward(self, x):
        h = self.blocks(self.stem(self.norm(x))).transpose(1, 2)  # (B, T', C)
        return self.out(h).log_softmax(-1).transpose(0, 1)


def spec_augment(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    _, f, t = x.shape
    for row in x:
        f0, t0 = random.randrange(f - 8), random.randrange(t - 10)
        row[f0 : f0 + random.randrange(8)] = row.mean()
        row[:, t0 : t0 + random.randrange(10)] = row.mean()
    return x


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo", help="plcli demo-data folder (train/test/truth.jsonl)")
    ap.add_argument("--cache", default=None, help="feature cache (default: $PLCLI_CACHE or ~/.cache/plcli)")
    ap.add_argument("--kind", default="phoneme", choices=("phoneme", "char"))
    ap.add_argument("--holdout", type=int, default=10, help="phrases kept out of training")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--stride", type=int, default=2, help="2: 40 ms frames")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)
    root = Path(a.data)
    train, test = read(root / "train.jsonl"), read(root / "test.jsonl")
    truth = {r["id"]: r["label"] for r in read(root / "truth.jsonl")}
    for r in test:
        r.setdefault("label", truth.get(r["id"]))
    counts = Counter(truth[r["id"]] for r in train)
    held = set(random.Random(a.seed).sample(sorted(counts), a.holdout)) if a.holdout else set()
    tr = [r for r in train if truth[r["id"]] not in held]
    texts = sorted({t for r in train + test for t in (r.get("candidates") or [])} | set(truth.values()))
    tok = build_tokenizer(a.kind, texts)
    cache = FeatureCache(cache_dir(a.cache), FeatureConfig())

    def feats(rows):
        _, x = cache.features([root / r["audio"] for r in rows])
        return torch.from_numpy(np.asarray(x, dtype=np.float32))

    x_tr, x_te = feats(tr), feats(test)
    y_tr = [tok.encode(truth[r["id"]]) for r in tr]
    model = CTCNet(x_tr.shape[1], tok.size, a.width, a.stride)
    print(f"{tok.size} tokens, {len(held)} phrases held out, {len(tr)} training rows, "
          f"{sum(p.numel() for p in model.parameters())} parameters", file=sys.stderr)
    bs = 64
    steps = a.epochs * math.ceil(len(tr) / bs)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    t0 = time.time()
    for ep in range(a.epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(tr)).split(bs):
            lp = model(spec_augment(x_tr[idx]))
            ys = [y_tr[j] for j in idx.tolist()]
            loss = F.ctc_loss(lp, torch.tensor([t for y in ys for t in y]),
                              torch.full((len(idx),), lp.shape[0], dtype=torch.long),
                              torch.tensor([len(y) for y in ys]), zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {ep} loss {total / math.ceil(len(tr) / bs):.3f} {time.time() - t0:.0f}s",
              file=sys.stderr)
    train_s = time.time() - t0
    model.eval()
    key = LabelNormalizer()
    heard = {key(truth[r["id"]]) for r in tr}  # never heard: held out, or absent from training
    hits = {(g, n): [0, 0] for g in ("seen", "unseen") for n in (False, True)}
    t1 = time.time()
    with torch.no_grad():
        for start in range(0, len(test), 256):
            rows = test[start : start + 256]
            lp = model(x_te[start : start + 256])
            cands = [r["candidates"][:10] for r in rows]
            enc = [[tok.encode(c) or [1] for c in cs] for cs in cands]
            K, L = max(map(len, enc)), max(len(e) for es in enc for e in es)
            tg = torch.ones(len(rows), K, L, dtype=torch.long)
            tl = torch.zeros(len(rows), K, dtype=torch.long)
            mk = torch.zeros(len(rows), K, dtype=torch.bool)
            for b, es in enumerate(enc):
                for k, e in enumerate(es):
                    tg[b, k, : len(e)] = torch.tensor(e)
                    tl[b, k], mk[b, k] = len(e), True
            nll = candidate_ctc_nll(lp, torch.full((len(rows),), lp.shape[0]), tg, tl, mk)
            for b, r in enumerate(rows):
                group = "seen" if key(r["label"]) in heard else "unseen"
                for norm in (False, True):
                    score = nll[b] / tl[b].clamp_min(1) if norm else nll[b]
                    j = int(score.argmin())
                    hits[group, norm][0] += key(cands[b][j]) == key(r["label"])
                    hits[group, norm][1] += 1
    acc = {f"{g}{'_lennorm' if n else ''}": h[0] / max(1, h[1]) for (g, n), h in hits.items()}
    print(json.dumps({"kind": a.kind, "epochs": a.epochs, "width": a.width, "seed": a.seed, **acc,
                      "n": {g: hits[g, False][1] for g in ("seen", "unseen")},
                      "train_seconds": round(train_s), "score_seconds": round(time.time() - t1, 1)}))


if __name__ == "__main__":
    main()
