"""Recording-condition degradations for the demo data (numpy float32 in, float32 out).

Voice messages are recorded in kitchens, cars and streets, on phones, and sent through lossy
codecs. ``Degrader`` draws one condition per recording from a mix of levels (clean, medium, hard)
and applies, in signal order: leading/trailing silence, room reverb, additive noise at a random
SNR (white, pink, brown, or babble of other speakers), clipping, a channel (telephone band-pass,
G.711 mu-law, or a low-bitrate codec), a random gain, and always a low noise floor: real
recordings are never digitally silent, and exact zeros would let a model tell generated padding
from speech pauses.

Every random choice comes from the ``numpy.random.Generator`` passed in, so a recording is a pure
function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from plcli.demo.synth import fast_len, resample

LEVELS = ("clean", "medium", "hard")
NOISE_KINDS = ("white", "pink", "brown", "babble")
CHANNELS = ("none", "telephone", "mulaw", "lowbitrate")
NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    if n <= 0:
        return np.zeros(0, np.float32)
    white = rng.standard_normal(n)
    if exponent:
        m = fast_len(n)  # FFTs of prime lengths are slow: shape a slightly longer noise
        spec = np.fft.rfft(np.concatenate([white, rng.standard_normal(m - n)]))
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0  # keep DC finite; it is removed below
        spec /= f ** (exponent / 2)
        spec[0] = 0.0
        white = np.fft.irfft(spec, m)[:n]
    return (white / max(rms(white), 1e-12)).astype(np.float32)


def mix_at_snr(
    speech: np.ndarray, noise: np.ndarray, snr_db: float, speech_power: float | None = None
) -> np.ndarray:
    """``speech + noise`` with the noise scaled to ``snr_db`` below the speech power.

    ``speech_power`` defaults to the mean power of ``speech``; pass the power of the speech alone
    when ``speech`` carries padding, so silence does not lower the reference.
    """
    if noise.shape != speech.shape:
        raise ValueError(f"noise shape {noise.shape} != speech shape {speech.shape}")
    ps = float(np.mean(np.square(speech, dtype=np.float64))) if speech_power is None else speech_power
    pn = float(np.mean(np.square(noise, dtype=np.float64)))
    if pn <= 0 or ps <= 0:
        return speech.astype(np.float32)
    scale = np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    return (speech + scale * noise).astype(np.float32)


def synthetic_rir(sample_rate: int, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: direct path, then exponentially decaying noise (60 dB in ``rt60`` s).

    ``drr_db`` is the direct-to-reverberant energy ratio; the tail starts after a 2-8 ms pre-delay.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be > 0, got {rt60}")
    n = int(min(rt60, 1.5) * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)  # ln(1000) = 6.908: -60 dB at rt60
    tail[: int(rng.uniform(0.002, 0.008) * sample_rate)] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / max(float(np.sum(tail**2)), 1e-12))
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray, max_tail: int) -> np.ndarray:
    """Convolve with ``rir``; the output keeps at most ``max_tail`` samples of reverb after ``x``."""
    n = x.size + rir.size - 1
    m = fast_len(n)
    y = np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(rir, m), m)[: min(n, x.size + max_tail)]
    return y.astype(np.float32)


def bandpass(
    x: np.ndarray, sample_rate: int, low: float = 300.0, high: float = 3400.0, order: int = 4
) -> np.ndarray:
    """Band-pass with the magnitude response of an ``order``-pole Butterworth high-pass at ``low``
    times a low-pass at ``high`` (default: the 300-3400 Hz telephone band), zero phase, via FFT.
    """
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    m = fast_len(x.size + 64)
    f = np.fft.rfftfreq(m, 1.0 / sample_rate)
    f[0] = 1e-3  # the DC bin: fully stopped by the high-pass
    gain = 1.0 / np.sqrt((1.0 + (f / high) ** (2 * order)) * (1.0 + (low / f) ** (2 * order)))
    return np.fft.irfft(np.fft.rfft(x, m) * gain, m)[: x.size].astype(np.float32)


def mulaw(x: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """mu-law companding and quantisation to ``bits`` bits, then expansion (a codec round trip)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    y = np.clip(x, -1.0, 1.0)
    comp = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)
    levels = 2 ** (bits - 1)
    comp = np.round(comp * levels) / levels
    return (np.sign(comp) * np.expm1(np.abs(comp) * np.log1p(mu)) / mu).astype(np.float32)


def spectral_codec(x: np.ndarray, keep: float, step_db: float, frame: int = 256) -> np.ndarray:
    """A crude transform codec: per frame keep only the strongest ``keep`` share of frequency bins
    and quantise their magnitudes to ``step_db`` steps. Gives the smeared, "underwater" artefacts of
    low-bitrate speech codecs. sqrt-Hann analysis and synthesis at 50 % overlap.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    hop = frame // 2
    n = x.size
    pad = np.concatenate([np.zeros(hop, np.float32), x, np.zeros(frame + hop, np.float32)])
    n_frames = (pad.size - frame) // hop + 1
    win = np.sqrt(np.hanning(frame + 1)[:frame]).astype(np.float32)
    idx = np.arange(frame)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(pad[idx] * win, axis=1)  # (frames, bins)
    mag = np.abs(spec)
    thresh = np.quantile(mag, 1 - keep, axis=1, keepdims=True)
    mag_db = 20 * np.log10(np.maximum(mag, 1e-9))
    mag_q = 10 ** (np.round(mag_db / step_db) * step_db / 20)
    spec = np.where(mag >= thresh, mag_q * np.exp(1j * np.angle(spec)), 0.0)
    frames = np.fft.irfft(spec, frame, axis=1) * win
    out = np.zeros(pad.size, np.float64)
    np.add.at(out, idx, frames)
    return out[hop : hop + n].astype(np.float32)


def channel(x: np.ndarray, sample_rate: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Send ``x`` through a transmission channel, back at ``sample_rate``.

    ``telephone``: 300-3400 Hz band at 8 kHz; ``mulaw``: the same plus G.711 8-bit mu-law;
    ``lowbitrate``: 8 kHz band, a sparse transform codec and 6-bit mu-law; ``none``: unchanged.
    """
    if kind == "none":
        return x
    if kind not in CHANNELS:
        raise ValueError(f"unknown channel {kind!r}")
    y = resample(x, sample_rate, 8000)
    y = bandpass(y, 8000, 300.0, 3400.0)
    if kind == "mulaw":
        y = mulaw(y, 8)
    elif kind == "lowbitrate":
        y = spectral_codec(y, keep=float(rng.uniform(0.12, 0.3)), step_db=float(rng.uniform(2.0, 5.0)))
        y = mulaw(y, 6)
    return resample(y, 8000, sample_rate)[: x.size]


@dataclass
class LevelSpec:
    """Probabilities and ranges that define one degradation level."""

    noise_p: float
    snr_db: tuple[float, float]
    noise_kinds: dict[str, float]
    reverb_p: float
    rt60: tuple[float, float]
    channels: dict[str, float]
    clip_p: float
    drive_db: tuple[float, float]

    def __post_init__(self):
        for name in ("noise_p", "reverb_p", "clip_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        for name in ("snr_db", "rt60", "drive_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: low {lo} > high {hi}")
        if self.rt60[0] <= 0:
            raise ValueError("rt60 must be positive")
        for name, table, known in (
            ("noise_kinds", self.noise_kinds, NOISE_KINDS),
            ("channels", self.channels, CHANNELS),
        ):
            bad = set(table) - set(known)
            if bad or not table or min(table.values()) < 0 or sum(table.values()) <= 0:
                raise ValueError(f"{name} must map some of {known} to non-negative weights, got {table}")


PRESETS: dict[str, LevelSpec] = {
    # phone held close in a quiet room: only level, padding and the noise floor vary
    "clean": LevelSpec(0.0, (30.0, 40.0), {"pink": 1.0}, 0.0, (0.2, 0.3), {"none": 1.0}, 0.0, (0.0, 0.0)),
    "medium": LevelSpec(
        0.9, (10.0, 25.0), {"white": 0.2, "pink": 0.3, "brown": 0.15, "babble": 0.35},
        0.5, (0.15, 0.6), {"none": 0.5, "telephone": 0.25, "mulaw": 0.25}, 0.0, (0.0, 0.0),
    ),
    "hard": LevelSpec(
        1.0, (0.0, 12.0), {"white": 0.15, "pink": 0.25, "brown": 0.15, "babble": 0.45},
        0.6, (0.3, 1.0), {"none": 0.2, "telephone": 0.2, "mulaw": 0.2, "lowbitrate": 0.4}, 0.4, (6.0, 15.0),
    ),
}  # fmt: skip


def parse_mix(spec: str) -> dict[str, float]:
    """``"clean=0.2,medium=0.5,hard=0.3"`` -> level weights summing to 1 (a level may be left out)."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in LEVELS:
            raise ValueError(
                f"bad degradation mix {spec!r}: expected LEVEL=WEIGHT with LEVEL in {', '.join(LEVELS)}"
            )
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"bad weight {value!r} for {name} in degradation mix {spec!r}") from None
        if not w >= 0 or w == float("inf"):
            raise ValueError(f"weight for {name} must be >= 0, got {value!r}")
        out[name] = w
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"degradation mix {spec!r} has no positive weight")
    return {k: v / total for k, v in out.items()}


def _pick(table: dict[str, float], rng: np.random.Generator) -> str:
    names = list(table)
    p = np.array([table[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


class Degrader:
    """Draw a recording condition from a mix of levels and apply it.

    Args:
        mix: level weights (``parse_mix``) or its string form.
        sample_rate: sample rate of the audio passed in.
        pad_s: range of the leading and of the trailing silence, in seconds.
        peak_db: range of the output peak level in dBFS (random gain).
        floor_db: range of the noise-floor RMS in dBFS; at -72 dBFS its standard deviation is
            about 8 LSB of 16-bit audio, so exact zeros stay rare and isolated.
        max_tail_s: reverb kept after the end of the padded recording.
    """

    def __init__(
        self,
        mix: dict[str, float] | str = "clean=0.2,medium=0.5,hard=0.3",
        sample_rate: int = 16000,
        pad_s: tuple[float, float] = (0.05, 0.5),
        peak_db: tuple[float, float] = (-14.0, -1.0),
        floor_db: tuple[float, float] = (-72.0, -60.0),
        max_tail_s: float = 0.3,
        presets: dict[str, LevelSpec] | None = None,
    ):
        self.mix = parse_mix(mix) if isinstance(mix, str) else dict(mix)
        self.presets = dict(PRESETS if presets is None else presets)
        unknown = set(self.mix) - set(self.presets)
        if unknown:
            raise ValueError(f"no preset for level(s) {sorted(unknown)}")
        if sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000, got {sample_rate}")
        for name, (lo, hi) in (("pad_s", pad_s), ("peak_db", peak_db), ("floor_db", floor_db)):
            if lo > hi:
                raise ValueError(f"{name}: low {lo} > high {hi}")
        if pad_s[0] < 0:
            raise ValueError("pad_s must be >= 0")
        if peak_db[1] > 0:
            raise ValueError("peak_db must be <= 0 dBFS")
        if floor_db[1] > -30:
            raise ValueError("floor_db above -30 dBFS is not a noise floor")
        self.sample_rate = int(sample_rate)
        self.pad_s, self.peak_db, self.floor_db = pad_s, peak_db, floor_db
        self.max_tail = int(max_tail_s * sample_rate)

    def __call__(
        self,
        speech: np.ndarray,
        rng: np.random.Generator,
        babble: Callable[[int, np.random.Generator], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Degrade ``speech`` (float32, peak ~1); returns the recording and what was applied.

        ``babble(n, rng)`` returns ``n`` samples of other people talking; without it babble noise
        falls back to pink noise.
        """
        sr = self.sample_rate
        level = _pick(self.mix, rng)
        spec = self.presets[level]
        info: dict = {"level": level}
        speech = np.asarray(speech, dtype=np.float32)
        speech_power = float(np.mean(np.square(speech, dtype=np.float64))) if speech.size else 0.0

        lead, trail = (int(rng.uniform(*self.pad_s) * sr) for _ in range(2))
        x = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])

        if rng.random() < spec.reverb_p:
            rt60 = float(rng.uniform(*spec.rt60))
            rir = synthetic_rir(sr, rt60, float(rng.uniform(0.0, 10.0)), rng)
            x = reverberate(x, rir, self.max_tail)
            info["rt60"] = round(rt60, 2)

        if rng.random() < spec.noise_p:
            kind = _pick(spec.noise_kinds, rng)
            snr = float(rng.uniform(*spec.snr_db))
            if kind == "babble" and babble is not None:
                noise = np.asarray(babble(x.size, rng), dtype=np.float32)[: x.size]
                noise = np.pad(noise, (0, x.size - noise.size))
            else:
                kind = "pink" if kind == "babble" else kind
                noise = coloured_noise(x.size, NOISE_EXPONENT[kind], rng)
            x = mix_at_snr(x, noise, snr, speech_power)
            info["noise"], info["snr_db"] = kind, round(snr, 1)

        if rng.random() < spec.clip_p:
            drive = float(rng.uniform(*spec.drive_db))
            x = np.clip(x / max(float(np.abs(x).max()), 1e-9) * 10 ** (drive / 20), -1.0, 1.0)
            info["clip_db"] = round(drive, 1)

        kind = _pick(spec.channels, rng)
        if kind != "none":
            x = channel(x, sr, kind, rng)
            info["channel"] = kind

        peak = float(rng.uniform(*self.peak_db))
        x = x * (10 ** (peak / 20) / max(float(np.abs(x).max()), 1e-9))
        floor = float(rng.uniform(*self.floor_db))
        x = x + coloured_noise(x.size, float(rng.uniform(0.0, 1.0)), rng) * 10 ** (floor / 20)
        info["floor_db"] = round(floor, 1)
        return np.clip(x, -1.0, 32767 / 32768).astype(np.float32), info


def describe(info: dict) -> str:
    """One line for a manifest: 'hard: babble 4.2 dB, reverb 0.61 s, lowbitrate, clip +9.0 dB'."""
    parts = []
    if "noise" in info:
        parts.append(f"{info['noise']} {info['snr_db']} dB")
    if "rt60" in info:
        parts.append(f"reverb {info['rt60']} s")
    if "clip_db" in info:
        parts.append(f"clip +{info['clip_db']} dB")
    if "channel" in info:
        parts.append(info["channel"])
    return f"{info['level']}: {', '.join(parts) if parts else 'quiet room'}"
