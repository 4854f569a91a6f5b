"""Audio reading: soundfile in, mono float32 at the model rate out.

Policy (documented in the README):
- every channel is averaged into one (mono mix-down);
- audio is resampled to the model rate with torchaudio (band-limited sinc interpolation);
- a clip longer than ``clip_seconds`` is centre-cropped (only the needed window is read, so a
  10-minute file costs no more than a short one); a shorter clip is centre-padded with zeros
  up to ``clip_seconds``;
- NaN/Inf samples, empty files and unreadable files raise ``DataError`` naming the file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from plcli.errors import DataError


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(sample rate, frames, channels) of an audio file; raises ``DataError`` when unreadable."""
    try:
        info = sf.info(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: audio file not found") from None
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise DataError(f"{path}: audio file is empty (0 bytes)") from None
        raise DataError(f"{path}: unreadable audio ({_short(e)})") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.replace("Error opening ", "").strip()


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int):
    import torchaudio

    return torchaudio.transforms.Resample(orig, new, dtype=__import__("torch").float32)


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono float32 waveform with torchaudio."""
    if orig_rate == new_rate or wave.size == 0:
        return wave.astype(np.float32, copy=False)
    import torch

    with torch.no_grad():
        out = _resampler(orig_rate, new_rate)(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
    return out.numpy()


def load_audio(path: str | Path, sample_rate: int, max_seconds: float | None = None,
               pad: bool = True) -> np.ndarray:
    """Read ``path`` as mono float32 at ``sample_rate``.

    With ``max_seconds``, only the centred window of that length is read from longer files, and
    (with ``pad``) shorter ones are centre-padded to exactly that length.
    """
    sr, frames, _ = audio_info(path)
    if frames <= 0:
        raise DataError(f"{path}: audio is empty (0 samples)")
    start, stop = 0, frames
    if max_seconds is not None:
        # read a little beyond the window so the resampler has context at the edges
        need = int(np.ceil(max_seconds * sr)) + 64
        if frames > need:
            start = (frames - need) // 2
            stop = start + need
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"{path}: unreadable audio ({_short(e)})") from None
    if data.size == 0:
        raise DataError(f"{path}: audio is empty (0 samples)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise DataError(f"{path}: audio contains NaN or Inf samples")
    wave = resample(wave, sr, sample_rate)
    if max_seconds is not None:
        n = int(round(max_seconds * sample_rate))
        wave = fix_length(wave, n) if pad or wave.shape[-1] > n else wave
    return np.ascontiguousarray(wave, dtype=np.float32)


def fix_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Centre-crop or centre-pad (with zeros) a 1-D waveform to ``num_samples``."""
    n = wave.shape[-1]
    if n == num_samples:
        return wave
    if n > num_samples:
        start = (n - num_samples) // 2
        return wave[..., start:start + num_samples]
    left = (num_samples - n) // 2
    pad = [(0, 0)] * (wave.ndim - 1) + [(left, num_samples - n - left)]
    return np.pad(wave, pad)
