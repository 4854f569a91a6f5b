"""Data augmentation: a waveform chain (numpy, audiomentations) and batched log-mel transforms (torch).

Waveform side: ``WaveformAugment(cfg, sample_rate, num_samples)`` maps a float32 mono clip of any
length to a float32 clip of exactly ``num_samples``: a random crop (or a zero-pad at a random
position) first, then an audiomentations chain. All randomness goes through Python's ``random``
and numpy's global RNG (audiomentations uses both), so ``lightning.seed_everything(seed,
workers=True)`` or seeding both before a call makes the output reproducible.

Cost of each transform per 3-s 16-kHz clip on this machine (2 cores, audiomentations 0.43,
applied with p=1; ``python scripts/bench_models.py --only-augment`` re-measures the chain):

=========================  ========  ====================================================
transform                  ms/clip   default here and why
=========================  ========  ====================================================
random crop / pad            <0.01   always: fixes the length, varies the phrase position
Shift                        0.015   p=0.3, +-0.2 s, no rollover: small extra misalignment
TimeStretch (signalsmith)     7.8    p=0: 10x the rest of the chain; enable for small data
PitchShift (signalsmith)      8.4    p=0: as TimeStretch; speakers already vary in pitch
BandPassFilter                0.96   p=0.25 with LowPass (one of): phone / cheap-mic bands
LowPassFilter                 0.74   (see BandPassFilter), cut-off 2-7.5 kHz
HighPassFilter                0.76   not used: the band-pass already removes the low end
ClippingDistortion            0.45   p=0.1, up to 20 % of samples: loud voice messages clip
AddGaussianSNR                0.83   p=0.6 (one of, with AddColorNoise): SNR 3-30 dB
AddColorNoise                 1.47   (see AddGaussianSNR), -6..+6 dB/octave noise tilt
GainTransition                0.15   p=0.1: speaker moving relative to the microphone
Gain                          0.007  p=0.5, -12..+12 dB (mostly removed by the encoder's
                                     input normalisation; it matters against the log floor)
PolarityInversion             0.005  p=0: invisible to a magnitude log-mel front end
SevenBandParametricEQ         2.8    not used: 3x the filters' cost for a similar effect
AirAbsorption                 3.0    not used: far-field effect, voice messages are close-talk
Aliasing                      0.57   not used: codecs band-limit (LowPass) rather than alias
Mp3Compression                 n/a   not used: needs fast-mp3-augment/lameenc, not installed
RoomSimulator                  n/a   not used: needs pyroomacoustics, not installed
=========================  ========  ====================================================

With the defaults the chain costs about 1.1 ms of CPU per clip on average (0.7 ms of it noise).

Spectrogram side (torch, batched, any device, identity in ``eval()`` mode), applied to (B, F, T)
natural-log mel spectrograms:

- ``Mixup``: BYOL-A's mixup (Niizumi et al. 2021): each item is mixed with another item of the
  batch in the linear power domain, ``log((1 - l) exp(x) + l exp(x_other))``, ``l ~ U(0, ratio)``.
- ``RandomResizeCrop``: BYOL-A's random resized crop: a crop of random size and position in a
  virtual canvas around the spectrogram, resized back (bilinear) to (F, T).
- ``SpecAugment``: time and frequency masking (Park et al. 2019) with per-item random positions.
- ``SpectrogramAugment``: the three in that order, built from ``SpecAugmentConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plcli.config import Config, FeatureConfig, opt
from plcli.errors import UserError


@dataclass
class SpecAugmentConfig(Config):
    """Batched augmentations of log-mel spectrograms (applied on the training device)."""

    p_vtlp: float = opt(
        0.0, "share of items given a vocal tract length perturbation (frequency axis scaled in Hz)", min=0.0,
        max=1.0
    )
    vtlp_max_warp: float = opt(0.1, "largest relative frequency scaling of VTLP (0.1 = +-10 %)", min=0.0,
                               max=0.5)
    p_mixup: float = opt(
        0.5, "share of items mixed with another item of the batch (BYOL-A mixup)", min=0.0, max=1.0
    )
    mixup_ratio: float = opt(
        0.4,
        "upper bound of the mixing weight of the other item (kept < 0.5 so the item dominates)",
        min=0.0,
        max=0.5,
    )
    p_rrc: float = opt(0.5, "share of items given a random resized crop (BYOL-A)", min=0.0, max=1.0)
    rrc_min_scale: float = opt(
        0.6, "smallest crop size, relative to the input, in both time and frequency", min=0.05
    )
    rrc_max_scale: float = opt(
        1.5, "largest crop size, relative to the input (>1 zooms out, clipped to the canvas)", min=0.05
    )
    rrc_virtual_freq: float = opt(
        1.0, "virtual canvas height relative to the input (1 = no room above/below)", min=1.0
    )
    rrc_virtual_time: float = opt(
        1.5, "virtual canvas width relative to the input (room for crops off the sides)", min=1.0
    )
    p_specaugment: float = opt(0.8, "share of items given time and frequency masks", min=0.0, max=1.0)
    freq_masks: int = opt(2, "frequency masks per item", min=0)
    freq_mask_width: int = opt(8, "largest frequency mask width in mel bins (width ~ U{0..max})", min=0)
    time_masks: int = opt(2, "time masks per item", min=0)
    time_mask_width: int = opt(
        12, "largest time mask width in frames (12 frames = 0.24 s at a 20-ms hop)", min=0
    )

    def check(self) -> None:
        try:
            _check_spec_config(self)
        except ValueError as e:
            raise UserError(f"augment.spec: {e}") from None


@dataclass
class AugmentConfig(Config):
    """Waveform augmentations (audiomentations) and, under ``spec``, the log-mel augmentations.

    Defaults and their cost per clip are explained in ``plcli/data/augment.py``.
    """

    random_crop: bool = opt(True, "random crop window / padding position; false = centred, as at evaluation")
    p_shift: float = opt(
        0.3, "probability of a time shift (zeros fill the gap, no rollover)", min=0.0, max=1.0
    )
    max_shift_seconds: float = opt(0.2, "largest shift in seconds, either direction", min=0.0)
    p_time_stretch: float = opt(
        0.0, "probability of a time stretch (about 8 ms per 3-s clip)", min=0.0, max=1.0
    )
    min_stretch_rate: float = opt(0.85, "slowest time-stretch rate (<1 slows down)", min=0.1, max=10.0)
    max_stretch_rate: float = opt(1.15, "fastest time-stretch rate", min=0.1, max=10.0)
    p_pitch_shift: float = opt(
        0.0, "probability of a pitch shift (about 8 ms per 3-s clip)", min=0.0, max=1.0
    )
    max_semitones: float = opt(2.0, "largest pitch shift in semitones, up or down", min=0.0, max=24.0)
    p_filter: float = opt(
        0.25,
        "probability of a band-pass or low-pass filter (one of the two, equally likely)",
        min=0.0,
        max=1.0,
    )
    min_lowpass_hz: float = opt(2000.0, "lowest low-pass cut-off in Hz", min=20.0)
    max_lowpass_hz: float = opt(7500.0, "highest low-pass cut-off in Hz (< sample_rate / 2)", min=20.0)
    min_bandpass_center_hz: float = opt(1000.0, "lowest band-pass centre frequency in Hz", min=20.0)
    max_bandpass_center_hz: float = opt(2000.0, "highest band-pass centre frequency in Hz", min=20.0)
    min_bandwidth_fraction: float = opt(
        1.0, "smallest band-pass bandwidth relative to its centre", min=0.01, max=1.99
    )
    max_bandwidth_fraction: float = opt(
        1.9, "largest band-pass bandwidth relative to its centre", min=0.01, max=1.99
    )
    p_clipping: float = opt(0.1, "probability of clipping distortion", min=0.0, max=1.0)
    max_clipping_percentile: int = opt(20, "largest share of samples clipped, in percent", min=0, max=100)
    p_noise: float = opt(
        0.6, "probability of added noise (white or coloured) at a random SNR", min=0.0, max=1.0
    )
    color_noise_fraction: float = opt(
        0.5, "share of the noise that is coloured rather than white", min=0.0, max=1.0
    )
    min_snr_db: float = opt(3.0, "lowest signal-to-noise ratio in dB", min=-20.0)
    max_snr_db: float = opt(30.0, "highest signal-to-noise ratio in dB", min=-20.0)
    p_gain_transition: float = opt(
        0.1, "probability of a gradual gain change within the clip", min=0.0, max=1.0
    )
    p_gain: float = opt(0.5, "probability of a constant gain", min=0.0, max=1.0)
    min_gain_db: float = opt(-12.0, "lowest gain in dB (also for the gain transition)", min=-60.0)
    max_gain_db: float = opt(12.0, "highest gain in dB (also for the gain transition)", max=40.0)
    p_polarity: float = opt(
        0.0, "probability of inverting the polarity (no effect on log-mel features)", min=0.0, max=1.0
    )
    spec: SpecAugmentConfig = opt(
        factory=SpecAugmentConfig, help="log-mel augmentations (mixup, resized crop, masking)"
    )

    def check(self) -> None:
        try:
            _check_waveform_config(self, sample_rate=None)
        except ValueError as e:
            raise UserError(f"augment: {e}") from None

    def waveform_params(self) -> dict:
        """The fields that change ``WaveformAugment``'s output (a cache key for augmented views)."""
        d = self.to_dict()
        d.pop("spec")
        return d


# ---------------------------------------------------------------------------------------------
# Parameter checks (ValueError; the configs' ``check`` turns them into UserError)
# ---------------------------------------------------------------------------------------------


def _check_bounds(cfg: Config) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, Config):
            continue
        if isinstance(v, bool):
            continue
        if not isinstance(v, (int, float)):
            raise ValueError(f"{f.name} must be a number, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"{f.name}={v} is not finite")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and v < lo:
            raise ValueError(f"{f.name}={v} must be >= {lo}")
        if hi is not None and v > hi:
            raise ValueError(f"{f.name}={v} must be <= {hi}")


def _check_order(cfg: Config, *pairs: tuple[str, str]) -> None:
    for lo, hi in pairs:
        if getattr(cfg, lo) > getattr(cfg, hi):
            raise ValueError(f"{lo}={getattr(cfg, lo)} must not exceed {hi}={getattr(cfg, hi)}")


def _check_waveform_config(cfg: AugmentConfig, sample_rate: int | None) -> None:
    _check_bounds(cfg)
    _check_order(
        cfg,
        ("min_stretch_rate", "max_stretch_rate"),
        ("min_lowpass_hz", "max_lowpass_hz"),
        ("min_bandpass_center_hz", "max_bandpass_center_hz"),
        ("min_bandwidth_fraction", "max_bandwidth_fraction"),
        ("min_snr_db", "max_snr_db"),
        ("min_gain_db", "max_gain_db"),
    )
    if sample_rate is not None:
        nyquist = sample_rate / 2
        if cfg.p_filter > 0 and cfg.max_lowpass_hz >= nyquist:
            raise ValueError(f"max_lowpass_hz={cfg.max_lowpass_hz} must be below sample_rate/2={nyquist}")
        top = cfg.max_bandpass_center_hz * (1 + cfg.max_bandwidth_fraction / 2)
        if cfg.p_filter > 0 and top >= nyquist:
            raise ValueError(
                f"band-pass upper edge {top:.0f} Hz (max_bandpass_center_hz * (1 + max_bandwidth_fraction "
                f"/ 2)) must be below sample_rate/2={nyquist}"
            )


def _check_spec_config(cfg: SpecAugmentConfig) -> None:
    _check_bounds(cfg)
    _check_order(cfg, ("rrc_min_scale", "rrc_max_scale"))


# ---------------------------------------------------------------------------------------------
# Waveform chain
# ---------------------------------------------------------------------------------------------


def _waveform_chain(cfg: AugmentConfig, clip_seconds: float) -> list:
    """The audiomentations transforms of ``cfg`` in the order they are applied: timing, then the
    recording chain (speaker -> channel -> noise -> level). The parts are concatenated in that order so
    that the chain reads against docs/augmentations.md; a transform that would never apply is left out."""
    chain = _timing_and_speaker_steps(cfg) + _channel_steps(cfg) + _noise_and_level_steps(cfg, clip_seconds)
    return [make() for on, make in chain if on]


def _timing_and_speaker_steps(cfg: AugmentConfig) -> list:
    """(applies, factory) pairs of the chain's start: shift, time stretch, pitch shift."""
    import audiomentations as A

    s = cfg.max_shift_seconds
    return [
        (
            cfg.p_shift > 0 and s > 0,
            lambda: A.Shift(min_shift=-s, max_shift=s, shift_unit="seconds", rollover=False, p=cfg.p_shift),
        ),
        (
            cfg.p_time_stretch > 0,
            lambda: A.TimeStretch(
                min_rate=cfg.min_stretch_rate,
                max_rate=cfg.max_stretch_rate,
                leave_length_unchanged=True,
                p=cfg.p_time_stretch,
            ),
        ),
        (
            cfg.p_pitch_shift > 0 and cfg.max_semitones > 0,
            lambda: A.PitchShift(
                min_semitones=-cfg.max_semitones, max_semitones=cfg.max_semitones, p=cfg.p_pitch_shift
            ),
        ),
    ]


def _channel_steps(cfg: AugmentConfig) -> list:
    """(applies, factory) pairs of the channel: a band-pass or low-pass filter, then clipping."""
    import audiomentations as A

    return [
        (
            cfg.p_filter > 0,
            lambda: A.OneOf(
                [
                    A.BandPassFilter(
                        min_center_freq=cfg.min_bandpass_center_hz,
                        max_center_freq=cfg.max_bandpass_center_hz,
                        min_bandwidth_fraction=cfg.min_bandwidth_fraction,
                        max_bandwidth_fraction=cfg.max_bandwidth_fraction,
                        p=1.0,
                    ),
                    A.LowPassFilter(
                        min_cutoff_freq=cfg.min_lowpass_hz, max_cutoff_freq=cfg.max_lowpass_hz, p=1.0
                    ),
                ],
                p=cfg.p_filter,
            ),
        ),
        (
            cfg.p_clipping > 0 and cfg.max_clipping_percentile > 0,
            lambda: A.ClippingDistortion(
                min_percentile_threshold=0,
                max_percentile_threshold=cfg.max_clipping_percentile,
                p=cfg.p_clipping,
            ),
        ),
    ]


def _noise_and_level_steps(cfg: AugmentConfig, clip_seconds: float) -> list:
    """(applies, factory) pairs of the chain's end: noise, gain transition, gain, polarity."""
    import audiomentations as A

    c = cfg.color_noise_fraction
    return [
        (
            cfg.p_noise > 0,
            lambda: A.OneOf(
                [
                    A.AddGaussianSNR(min_snr_db=cfg.min_snr_db, max_snr_db=cfg.max_snr_db, p=1.0),
                    A.AddColorNoise(min_snr_db=cfg.min_snr_db, max_snr_db=cfg.max_snr_db, p=1.0),
                ],
                weights=[1.0 - c, c],
                p=cfg.p_noise,
            ),
        ),
        (
            cfg.p_gain_transition > 0,
            lambda: A.GainTransition(
                min_gain_db=cfg.min_gain_db,
                max_gain_db=cfg.max_gain_db,
                min_duration=min(0.2, clip_seconds),
                max_duration=clip_seconds,
                duration_unit="seconds",
                p=cfg.p_gain_transition,
            ),
        ),
        (
            cfg.p_gain > 0,
            lambda: A.Gain(min_gain_db=cfg.min_gain_db, max_gain_db=cfg.max_gain_db, p=cfg.p_gain),
        ),
        (cfg.p_polarity > 0, lambda: A.PolarityInversion(p=cfg.p_polarity)),
    ]


class WaveformAugment:
    """Random crop/pad to ``num_samples``, then the audiomentations chain described by ``cfg``.

    Args:
        cfg: the augmentation parameters; checked here (``ValueError``).
        sample_rate: sample rate of the clips in Hz.
        num_samples: output length in samples.
    """

    def __init__(self, cfg: AugmentConfig, sample_rate: int, num_samples: int):
        import audiomentations as A

        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        _check_waveform_config(cfg, sample_rate)
        self.cfg, self.sample_rate, self.num_samples = cfg, sample_rate, num_samples
        t = _waveform_chain(cfg, num_samples / sample_rate)
        self.transforms = A.Compose(t, p=1.0, shuffle=False) if t else None

    def crop_or_pad(self, samples: np.ndarray) -> np.ndarray:
        """A ``num_samples`` window of a longer clip, or a shorter clip zero-padded to that length.

        The crop start and the padding offset are uniform when ``random_crop`` is on, else centred.
        """
        n, length = self.num_samples, samples.shape[0]
        if length >= n:
            start = np.random.randint(0, length - n + 1) if self.cfg.random_crop else (length - n) // 2
            return samples[start : start + n].copy()
        offset = np.random.randint(0, n - length + 1) if self.cfg.random_crop else (n - length) // 2
        out = np.zeros(n, dtype=np.float32)
        out[offset : offset + length] = samples
        return out

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """(samples,) float mono -> (num_samples,) float32 augmented clip."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"expected a mono 1-D waveform, got shape {samples.shape}")
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"expected a float waveform, got dtype {samples.dtype}")
        x = self.crop_or_pad(samples.astype(np.float32, copy=False))
        if self.transforms is not None:
            x = self.transforms(samples=x, sample_rate=self.sample_rate)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"WaveformAugment(sample_rate={self.sample_rate}, num_samples={self.num_samples}, "
            f"transforms={self.transforms!r})"
        )


# ---------------------------------------------------------------------------------------------
# Batched log-mel augmentations
# ---------------------------------------------------------------------------------------------


def _check_prob(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")


def _item_mask(batch: int, p: float, device: torch.device) -> torch.Tensor:
    """(B,) bool: which items an augmentation applies to."""
    return torch.rand(batch, device=device) < p


def _selected(batch: int, p: float, device: torch.device) -> torch.Tensor | None:
    """Indices of the items an augmentation applies to; None means all (p = 1)."""
    if p >= 1:
        return None
    return _item_mask(batch, p, device).nonzero().squeeze(1)


def _scatter(x: torch.Tensor, sel: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``x`` with the rows ``sel`` replaced by ``out`` (all rows when ``sel`` is None)."""
    if sel is None:
        return out.to(x.dtype)
    res = x.clone()
    res[sel] = out.to(x.dtype)
    return res


class VocalTractWarp(nn.Module):
    """Vocal tract length perturbation (VTLP; Jaitly & Hinton 2013) applied to a log-mel: each
    item's frequency axis is scaled by ``alpha ~ U(1 - max_warp, 1 + max_warp)`` in Hz, as a
    shorter or longer vocal tract scales the formants, and read back at the mel-band centres by
    linear interpolation (on the mel scale) between the two nearest bands.

    Unlike the channel augmentations this changes the apparent speaker, so views of one clip
    no longer share the voice's exact spectral envelope. Assumes torchaudio's HTK mel scale over
    ``[f_min, f_max]`` (``plcli.data.features.LogMel``). Output band ``m`` takes the input at
    ``hz(m) / alpha``; above ``f_max`` the top band is repeated.

    Args:
        f_min, f_max: the mel filterbank's range in Hz.
        max_warp: largest relative change of the frequency scale (0.1 = +-10 %).
        p: share of items that are warped.
    """

    def __init__(self, f_min: float = 20.0, f_max: float = 7600.0, max_warp: float = 0.1, p: float = 1.0):
        super().__init__()
        if not 0 <= f_min < f_max:
            raise ValueError(f"need 0 <= f_min < f_max, got {f_min}, {f_max}")
        if not 0 <= max_warp < 1:
            raise ValueError(f"max_warp must be in [0, 1), got {max_warp}")
        _check_prob(p)
        self.f_min, self.f_max, self.max_warp, self.p = f_min, f_max, max_warp, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, F, T)."""
        if not self.training or self.p == 0 or self.max_warp == 0:
            return x
        n_mels = x.shape[1]
        if n_mels < 2:
            raise ValueError(f"need at least 2 mel bands, got {n_mels}")
        sel = _selected(x.shape[0], self.p, x.device)
        xs = x if sel is None else x[sel]
        b = xs.shape[0]
        if b == 0:
            return x
        m_lo, m_hi = _hz_to_mel(self.f_min), _hz_to_mel(self.f_max)
        step = (m_hi - m_lo) / (n_mels + 1)  # band m's centre is m_lo + (m + 1) * step
        centre_hz = _mel_to_hz(
            m_lo + step * torch.arange(1, n_mels + 1, device=x.device, dtype=torch.float32)
        )
        alpha = torch.empty(b, 1, device=x.device).uniform_(1 - self.max_warp, 1 + self.max_warp)
        src_hz = centre_hz[None, :] / alpha  # (b, F): where each output band reads from
        pos = ((_hz_to_mel(src_hz) - m_lo) / step - 1).clamp(0, n_mels - 1)  # fractional band index
        lo = pos.floor().long().clamp(max=n_mels - 2)
        w = (pos - lo).unsqueeze(-1)  # (b, F, 1)
        xf = xs.float()
        t = xf.shape[-1]
        below = torch.gather(xf, 1, lo.unsqueeze(-1).expand(-1, -1, t))  # (b, F, T)
        above = torch.gather(xf, 1, (lo + 1).unsqueeze(-1).expand(-1, -1, t))
        return _scatter(x, sel, torch.lerp(below, above, w))


def _hz_to_mel(hz):
    """HTK mel scale (torchaudio's default)."""
    if isinstance(hz, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class Mixup(nn.Module):
    """BYOL-A mixup (Niizumi et al. 2021, "BYOL for Audio"): mix each item with another item of
    the batch in the linear power domain.

    ``out = log((1 - l) * exp(x) + l * exp(x_other))`` with ``l ~ U(0, ratio)`` per item; the
    partner is a random other item (a random cyclic derangement, never the item itself).

    Args:
        ratio: upper bound of the partner's weight, in [0, 1).
        p: share of items that are mixed (the others pass unchanged).
        log_scale: the input is ``log_scale * ln(power)``: 1 for natural log,
            ``10 / ln(10)`` for dB.
    """

    def __init__(self, ratio: float = 0.4, p: float = 1.0, log_scale: float = 1.0):
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        _check_prob(p)
        if not log_scale > 0:
            raise ValueError(f"log_scale must be positive, got {log_scale}")
        self.ratio, self.p, self.log_scale = ratio, p, log_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, F, T)."""
        b = x.shape[0]
        if not self.training or self.p == 0 or self.ratio == 0 or b < 2:
            return x
        perm = torch.randperm(b, device=x.device)
        partner = torch.empty_like(perm)
        partner[perm] = perm.roll(-1)  # each item's partner is the next one in a random cycle
        sel = _selected(b, self.p, x.device)  # only the mixed items are computed
        n = b if sel is None else sel.numel()
        if n == 0:
            return x
        src = partner if sel is None else partner[sel]
        lam = (torch.rand(n, device=x.device) * self.ratio).view(n, *([1] * (x.ndim - 1)))  # (n, 1, 1)
        y = x.float() if self.log_scale == 1 else x.float() / self.log_scale
        mine = y if sel is None else y[sel]
        out = torch.logaddexp(mine + torch.log1p(-lam), y[src].add_(torch.log(lam)))  # (n, F, T)
        if self.log_scale != 1:
            out = out.mul_(self.log_scale)
        return _scatter(x, sel, out)


def _pixel_centres(n: int, device: torch.device) -> torch.Tensor:
    """Centres of n pixels in grid_sample's [-1, 1] coordinates (align_corners=False)."""
    return (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1


class RandomResizeCrop(nn.Module):
    """BYOL-A random resized crop on (B, F, T): crop, then resize back to (F, T) bilinearly.

    The input sits in the middle of a virtual canvas ``virtual_freq`` x ``virtual_time`` times
    its size, filled with each item's mean. A crop of ``U(min_scale, max_scale)`` times the input
    size (per axis, clipped to the canvas) is taken at a uniform position inside the canvas.

    Args:
        min_scale, max_scale: crop size range relative to the input.
        virtual_freq, virtual_time: canvas size relative to the input (>= 1).
        p: share of items that are cropped.
    """

    def __init__(
        self,
        min_scale: float = 0.6,
        max_scale: float = 1.5,
        virtual_freq: float = 1.0,
        virtual_time: float = 1.5,
        p: float = 1.0,
    ):
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if virtual_freq < 1 or virtual_time < 1:
            raise ValueError("virtual_freq and virtual_time must be >= 1")
        _check_prob(p)
        self.min_scale, self.max_scale = min_scale, max_scale
        self.virtual_freq, self.virtual_time, self.p = virtual_freq, virtual_time, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, F, T)."""
        if not self.training or self.p == 0:
            return x
        sel = _selected(x.shape[0], self.p, x.device)  # only the cropped items are computed
        xs = x if sel is None else x[sel]
        b, f, t = xs.shape
        if b == 0:
            return x
        dev = x.device
        xf = xs.float()
        mean = xf.mean(dim=(1, 2), keepdim=True)  # (b, 1, 1): the canvas fill

        def axis(virtual: float) -> tuple[torch.Tensor, torch.Tensor]:
            # in grid_sample's [-1, 1] coordinates the input spans [-1, 1], the canvas [-v, v]
            scale = torch.empty(b, device=dev).uniform_(self.min_scale, self.max_scale).clamp(max=virtual)
            centre = (torch.rand(b, device=dev) * 2 - 1) * (virtual - scale)
            return scale, centre

        sf, cf = axis(self.virtual_freq)
        st, ct = axis(self.virtual_time)
        # axis-aligned crop: build the sampling grid directly (affine_grid's batched matmul is slow on CPU)
        gy = sf[:, None] * _pixel_centres(f, dev) + cf[:, None]  # (b, F)
        gx = st[:, None] * _pixel_centres(t, dev) + ct[:, None]  # (b, T)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (b, F, T, 2)
        out = F.grid_sample(
            (xf - mean).unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return _scatter(x, sel, out.squeeze(1).add_(mean))


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019, "SpecAugment") with per-item masks.

    Each item gets ``freq_masks`` bands of width ``U{min_freq_width..freq_width}`` mel bins and
    ``time_masks`` spans of width ``U{min_time_width..time_width}`` frames at uniform positions;
    masks may overlap. Masked cells are set to ``fill``, or to the item's mean when ``fill`` is
    None (zero is not "silence" for a log-mel, the mean is a neutral value).

    Args:
        freq_masks, time_masks: number of masks per item.
        freq_width, time_width: largest mask width.
        p: share of items that are masked.
        fill: the value of masked cells; None = the item's mean.
        min_freq_width, min_time_width: smallest mask width.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 8,
        time_masks: int = 2,
        time_width: int = 12,
        p: float = 1.0,
        fill: float | None = None,
        min_freq_width: int = 0,
        min_time_width: int = 0,
    ):
        super().__init__()
        for k, v in (
            ("freq_masks", freq_masks),
            ("time_masks", time_masks),
            ("min_freq_width", min_freq_width),
            ("min_time_width", min_time_width),
        ):
            if v < 0:
                raise ValueError(f"{k} must be >= 0, got {v}")
        if freq_width < min_freq_width or time_width < min_time_width:
            raise ValueError("mask widths must be >= their minimum widths")
        _check_prob(p)
        self.freq_masks, self.freq_width, self.min_freq_width = freq_masks, freq_width, min_freq_width
        self.time_masks, self.time_width, self.min_time_width = time_masks, time_width, min_time_width
        self.p, self.fill = p, fill

    @staticmethod
    def _masks(b: int, length: int, n: int, wmin: int, wmax: int, device: torch.device) -> torch.Tensor:
        """(B, length) bool: union of ``n`` random spans per item."""
        if n == 0 or wmax == 0:
            return torch.zeros(b, length, dtype=torch.bool, device=device)
        width = torch.randint(wmin, wmax + 1, (b, n, 1), device=device).clamp(max=length)
        start = (torch.rand(b, n, 1, device=device) * (length - width + 1)).floor().long()
        pos = torch.arange(length, device=device)  # (length,)
        return ((pos >= start) & (pos < start + width)).any(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, F, T)."""
        if not self.training or self.p == 0:
            return x
        b, f, t = x.shape
        fm = self._masks(b, f, self.freq_masks, self.min_freq_width, self.freq_width, x.device)  # (B, F)
        tm = self._masks(b, t, self.time_masks, self.min_time_width, self.time_width, x.device)  # (B, T)
        mask = (fm[:, :, None] | tm[:, None, :]) & _item_mask(b, self.p, x.device)[:, None, None]  # (B, F, T)
        fill = (
            x.mean(dim=(1, 2), keepdim=True)
            if self.fill is None
            else torch.tensor(self.fill, dtype=x.dtype, device=x.device)
        )
        return torch.where(mask, fill, x)


class SpectrogramAugment(nn.Module):
    """VTLP, mixup, random resized crop and SpecAugment in that order, as configured; ``eval()`` = identity.

    Args:
        cfg: the parameters (each step with probability 0 is left out).
        log_scale: see ``Mixup`` (1 for the natural-log features of ``plcli.data.features.LogMel``).
        mel_range: ``[f_min, f_max]`` of the mel filterbank in Hz, for VTLP (default: FeatureConfig's).
    """

    def __init__(self, cfg: SpecAugmentConfig, log_scale: float = 1.0, mel_range: list[float] | None = None):
        super().__init__()
        _check_spec_config(cfg)
        steps: list[nn.Module] = []
        if cfg.p_vtlp > 0 and cfg.vtlp_max_warp > 0:
            f_min, f_max = mel_range or (FeatureConfig.f_min, FeatureConfig.f_max)
            steps.append(VocalTractWarp(f_min, f_max, cfg.vtlp_max_warp, cfg.p_vtlp))
        if cfg.p_mixup > 0 and cfg.mixup_ratio > 0:
            steps.append(Mixup(cfg.mixup_ratio, cfg.p_mixup, log_scale))
        if cfg.p_rrc > 0:
            steps.append(
                RandomResizeCrop(
                    cfg.rrc_min_scale,
                    cfg.rrc_max_scale,
                    cfg.rrc_virtual_freq,
                    cfg.rrc_virtual_time,
                    cfg.p_rrc,
                )
            )
        if cfg.p_specaugment > 0 and (cfg.freq_masks or cfg.time_masks):
            steps.append(
                SpecAugment(
                    cfg.freq_masks,
                    cfg.freq_mask_width,
                    cfg.time_masks,
                    cfg.time_mask_width,
                    cfg.p_specaugment,
                )
            )
        self.steps = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, F, T)."""
        if x.ndim != 3:
            raise ValueError(f"expected a (batch, n_mels, frames) tensor, got shape {tuple(x.shape)}")
        return self.steps(x) if self.training else x
