"""Pretraining throughput: end-to-end (data + augmentation + features + model) vs model-only.

Both measurements run in this process on this machine, with the same PretrainModule and the same
Lightning Trainer settings; only the data source differs:

- end-to-end: the real `plcli pretrain` data path — pairs of cached augmented views read from the
  memory-mapped feature cache, batched spectrogram augmentation on the fly;
- model-only: random tensors of the same shape already in memory;
- online (for reference): waveform augmentation + log-mel computed every step in DataLoader workers.

The one-off cost of caching the augmented views is reported separately (it is paid once per
dataset, augmentation setting and seed). Prints a table and writes JSON.

    python scripts/bench_pretrain.py [--manifest demo/train.jsonl] [--clips 1024] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plcli.config import FeatureConfig  # noqa: E402
from plcli.data.augment import AugmentConfig  # noqa: E402
from plcli.data.datasets import OnlineViewPairs, ViewPairs  # noqa: E402
from plcli.data.features import FeatureCache  # noqa: E402
from plcli.pretrain import PretrainModule  # noqa: E402


class Throughput(L.Callback):
    """Clips/s over the steps after ``warmup``."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.n = warmup, None, 0

    def on_train_batch_start(self, trainer, module, batch, idx):
        if trainer.global_step == self.warmup and self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, idx):
        if module.device.type == "cuda":  # kernels run asynchronously: time what has finished
            torch.cuda.synchronize(module.device)
        if self.t0 is not None:
            self.n += batch[0].shape[0]

    @property
    def rate(self) -> float:
        return self.n / (time.perf_counter() - self.t0)


class RandomPairs(Dataset):
    def __init__(self, n: int, shape: tuple[int, int]):
        g = torch.Generator().manual_seed(0)
        self.x0 = torch.randn(n, *shape, generator=g)
        self.x1 = torch.randn(n, *shape, generator=g)

    def __len__(self):
        return len(self.x0)

    def __getitems__(self, idx):
        return self.x0[idx], self.x1[idx]


def measure(module, loader, steps: int, warmup: int, accelerator: str = "cpu",
            precision: str = "32-true") -> float:
    cb = Throughput(warmup)
    trainer = L.Trainer(max_steps=steps + warmup, accelerator=accelerator, devices=1, precision=precision,
                        logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb], num_sanity_val_steps=0)
    trainer.fit(module, loader)
    return cb.rate


def tone_dataset(root: Path, n: int, seconds: float) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        t = np.arange(int(16000 * seconds)) / 16000
        w = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) + rng.normal(0, 0.01, t.shape)
        p = root / f"c{i:05d}.wav"
        sf.write(p, w.astype(np.float32), 16000)
        paths.append(p)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default=None, help="use these recordings (default: generated 2.5-s clips)")
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--encoder", default="tcresnet")
    ap.add_argument("--online-workers", type=int, default=os.cpu_count() or 1, help="0 skips the online row")
    ap.add_argument("--accelerator", default="cpu", help="cpu or gpu (one device)")
    ap.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed")
    ap.add_argument("--json", default="bench/pretrain_throughput.json")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    fc, aug = FeatureConfig(), AugmentConfig()
    tmp = Path(tempfile.mkdtemp(prefix="plcli-bench-"))
    if a.manifest:
        from plcli.data.validate import load_rows
        from plcli.errors import DataError

        try:  # the stages' own validation: a missing or broken manifest stops with its problems listed
            rows = load_rows([a.manifest], log=lambda *m: None).rows
        except DataError as e:
            sys.exit(f"bench_pretrain: {e}")
        paths = [r.audio for r in rows][: a.clips]
    else:
        paths = tone_dataset(tmp / "audio", a.clips, 2.5)
    cache = FeatureCache(tmp / "cache", fc)
    t = time.perf_counter()
    _, views = cache.views(paths, aug.waveform_params(), a.views, 0, workers=os.cpu_count() or 1)
    cache_s = time.perf_counter() - t

    def module():
        L.seed_everything(0)
        return PretrainModule(encoder=a.encoder, n_mels=fc.n_mels, spec_augment=aug.spec.to_dict(),
                              feature_config=fc.to_dict())

    e2e_loader = DataLoader(ViewPairs(views), batch_size=a.batch_size, shuffle=True, drop_last=True,
                            collate_fn=ViewPairs.collate_fn)
    hw = dict(accelerator=a.accelerator, precision=a.precision)
    e2e = measure(module(), e2e_loader, a.steps, a.warmup, **hw)
    rnd = RandomPairs(a.batch_size * 4, (fc.n_mels, fc.num_frames))
    model_only = measure(module(), DataLoader(rnd, batch_size=a.batch_size, shuffle=True, drop_last=True,
                                              collate_fn=ViewPairs.collate_fn), a.steps, a.warmup, **hw)
    online = None
    if a.online_workers > 0:
        ds = OnlineViewPairs([str(p) for p in paths], aug, fc)
        loader = DataLoader(ds, batch_size=a.batch_size, shuffle=True, drop_last=True,
                            num_workers=a.online_workers, persistent_workers=True)
        online = measure(module(), loader, max(3, a.steps // 4), 1, **hw)
    rss_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name()}" if a.accelerator == "gpu" else ""),
        "accelerator": a.accelerator, "precision": a.precision,
        "encoder": a.encoder, "batch_size": a.batch_size, "clips": len(paths), "views": a.views,
        "end_to_end_clips_per_s": e2e, "model_only_clips_per_s": model_only,
        "ratio": e2e / model_only, "online_augment_clips_per_s": online, "online_workers": a.online_workers,
        "view_cache_seconds": cache_s, "view_cache_ms_per_clip": 1000 * cache_s / len(paths),
        "peak_rss_mb": rss_mb,
    }
    print(f"\npretraining throughput ({res['machine']}, encoder {a.encoder}, batch {a.batch_size})")
    print(f"  end-to-end (cached views)  {e2e:8.1f} clips/s  ({2 * e2e:.0f} views/s)")
    print(f"  model-only (random tensors){model_only:8.1f} clips/s")
    print(f"  ratio                      {res['ratio']:8.3f}   (target >= 0.9)")
    if online is not None:
        print(f"  online augmentation        {online:8.1f} clips/s  ({a.online_workers} workers)")
    print(f"  view caching (one-off)     {res['view_cache_ms_per_clip']:8.2f} ms/clip for {a.views} views")
    print(f"  peak RSS                   {rss_mb:8.0f} MB")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
