"""Throughput of the encoders and cost of the augmentations on this machine.

    python scripts/bench_models.py                      # everything, 2 CPU threads
    python scripts/bench_models.py --encoders tcresnet tcresnet-small --steps 20
    python scripts/bench_models.py --only-augment

Encoders: one SimCLR-style training step = encoder + 3-layer projection head forward, NT-Xent on
B/2 positive pairs, backward, AdamW step, on random (B, n_mels, frames) inputs; reported as
views/s from the median step time (the machine is shared, medians resist the noise). Inference is
the eval-mode encoder alone under ``torch.inference_mode``.

Augmentations: milliseconds per 3-s clip for each audiomentations transform at p=1 and for the
default ``WaveformAugment`` chain, and milliseconds per batch for the log-mel augmentations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from plcli.data.augment import (
    AugmentConfig,
    Mixup,
    RandomResizeCrop,
    SpecAugment,
    SpectrogramAugment,
    WaveformAugment,
)
from plcli.losses import NTXentLoss
from plcli.models import ENCODERS, ProjectionHead, build_encoder, count_parameters


def _median_seconds(fn, steps: int, warmup: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds of ``fn()``.

    On a shared machine the wall clock includes waiting for other processes; CPU seconds do not
    (they still include some slowdown from shared caches and memory bandwidth).
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def bench_encoders(names: list[str], batch: int, n_mels: int, frames: int, steps: int, warmup: int) -> None:
    print(
        f"\nencoders: batch {batch}, input ({n_mels}, {frames}), {torch.get_num_threads()} threads, median "
        f"of {steps}"
    )
    print(
        "(per CPU-s: views per second of process CPU time, robust to other load; x threads = ideal views/s)"
    )
    print(
        f"{'encoder':16s} {'params':>10s} {'embed':>6s} {'train views/s':>14s} {'per CPU-s':>10s} "
        f"{'infer clips/s':>14s} {'per CPU-s':>10s}"
    )
    for name in names:
        enc = build_encoder(name, n_mels)
        (t_train, c_train), (t_inf, c_inf) = _bench_encoder(enc, batch, n_mels, frames, steps, warmup)
        print(
            f"{name:16s} {count_parameters(enc):10,d} {enc.embed_dim:6d} {batch / t_train:14.0f} "
            f"{batch / c_train:10.0f} {batch / t_inf:14.0f} {batch / c_inf:10.0f}",
            flush=True,
        )


def _bench_encoder(enc, batch: int, n_mels: int, frames: int, steps: int, warmup: int):
    """(wall, cpu) seconds of one training step and of one inference batch."""
    torch.manual_seed(0)
    head = ProjectionHead(enc.embed_dim, enc.embed_dim, 128, num_layers=3)
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(batch, n_mels, frames)
    nt_xent = NTXentLoss(temperature=0.1)

    def train_step() -> None:
        z = head(enc(x))  # (B, D): the first half's positives are the second half
        loss = nt_xent(z[: batch // 2], z[batch // 2 :])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            enc(x)

    enc.train()
    head.train()
    train = _median_seconds(train_step, steps, warmup)
    enc.eval()
    return train, _median_seconds(infer, steps, warmup)


def bench_waveform(sample_rate: int, seconds: float, clips: int) -> None:
    import audiomentations as A

    n = int(sample_rate * seconds)
    rng = np.random.default_rng(0)
    t = np.arange(n) / sample_rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(n) + 0.01 * rng.standard_normal(n)).astype(np.float32)
    single = {
        "Shift": A.Shift(min_shift=-0.2, max_shift=0.2, shift_unit="seconds", rollover=False, p=1.0),
        "TimeStretch": A.TimeStretch(min_rate=0.85, max_rate=1.15, p=1.0),
        "PitchShift": A.PitchShift(min_semitones=-2, max_semitones=2, p=1.0),
        "BandPassFilter": A.BandPassFilter(
            min_center_freq=1000,
            max_center_freq=2000,
            min_bandwidth_fraction=1.0,
            max_bandwidth_fraction=1.9,
            p=1.0,
        ),
        "LowPassFilter": A.LowPassFilter(min_cutoff_freq=2000, max_cutoff_freq=7500, p=1.0),
        "HighPassFilter": A.HighPassFilter(p=1.0),
        "ClippingDistortion": A.ClippingDistortion(max_percentile_threshold=20, p=1.0),
        "AddGaussianSNR": A.AddGaussianSNR(min_snr_db=3, max_snr_db=30, p=1.0),
        "AddColorNoise": A.AddColorNoise(min_snr_db=3, max_snr_db=30, p=1.0),
        "GainTransition": A.GainTransition(p=1.0),
        "Gain": A.Gain(p=1.0),
        "PolarityInversion": A.PolarityInversion(p=1.0),
        "SevenBandParametricEQ": A.SevenBandParametricEQ(p=1.0),
        "AirAbsorption": A.AirAbsorption(p=1.0),
        "Aliasing": A.Aliasing(p=1.0),
    }
    print(f"\nwaveform transforms, ms per {seconds:g}-s clip at {sample_rate} Hz (p=1, median wall / CPU)")
    for name, tr in single.items():
        k = max(5, clips // 10) if name in ("TimeStretch", "PitchShift") else clips
        wall, cpu = _median_seconds(lambda tr=tr: tr(x, sample_rate), k, 3)
        print(f"  {name:24s} {wall * 1e3:8.3f} {cpu * 1e3:8.3f}")
    aug = WaveformAugment(AugmentConfig(), sample_rate, n)
    longer = np.concatenate([x, x[: n // 4]])
    np.random.seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(clips):
        aug(longer)
    wall, cpu = (time.perf_counter() - t0) / clips, (time.process_time() - c0) / clips
    print(f"  {'default chain (mean)':24s} {wall * 1e3:8.3f} {cpu * 1e3:8.3f}")


def bench_spec(batch: int, n_mels: int, frames: int, steps: int) -> None:
    x = torch.randn(batch, n_mels, frames) - 5
    cfg = AugmentConfig().spec
    mods = {
        "Mixup (p=1)": Mixup(cfg.mixup_ratio, 1.0),
        "RandomResizeCrop (p=1)": RandomResizeCrop(
            cfg.rrc_min_scale, cfg.rrc_max_scale, cfg.rrc_virtual_freq, cfg.rrc_virtual_time, 1.0
        ),
        "SpecAugment (p=1)": SpecAugment(
            cfg.freq_masks, cfg.freq_mask_width, cfg.time_masks, cfg.time_mask_width, 1.0
        ),
        "SpectrogramAugment (default)": SpectrogramAugment(cfg),
    }
    print(f"\nlog-mel augmentations, ms per batch of {batch} ({n_mels}, {frames}) (median wall / CPU)")
    for name, m in mods.items():
        m.train()
        wall, cpu = _median_seconds(lambda m=m: m(x), steps, 2)
        print(f"  {name:30s} {wall * 1e3:8.2f} {cpu * 1e3:8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="*", default=list(ENCODERS), choices=list(ENCODERS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--n-mels", type=int, default=64)
    p.add_argument("--frames", type=int, default=151)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clips", type=int, default=200, help="clips per waveform measurement")
    p.add_argument("--only-augment", action="store_true")
    p.add_argument("--skip-augment", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not a.only_augment:
        bench_encoders(a.encoders, a.batch, a.n_mels, a.frames, a.steps, a.warmup)
    if not a.skip_augment:
        bench_waveform(16000, 3.0, a.clips)
        bench_spec(a.batch, a.n_mels, a.frames, a.steps)


if __name__ == "__main__":
    main()
