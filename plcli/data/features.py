"""Log-mel features and the on-disk feature cache.

Each audio file's features are computed once and stored under a key made of a hash of the file's
*content* and a hash of the feature parameters, so renaming or copying a file reuses its entry and
changing ``n_mels`` does not. Entries are written atomically (temporary file + rename), so two runs
sharing a cache at the same time never see a half-written entry.

Training reads a *pack*: one memory-mapped ``.npy`` array (N, n_mels, frames) assembled from the
entries of a given list of files (also cached), so a batch is one fancy-index read and the
dataset is never loaded into RAM as a whole.

Pre-trained augmented views (``views``) are stored the same way, keyed additionally by the
augmentation parameters, the seed and the number of views.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plcli.config import FeatureConfig
from plcli.data.audio import load_audio
from plcli.io import default_file_mode

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

FEATURE_VERSION = 1
LOG_EPS = 1e-6


class LogMel(nn.Module):
    """(B, samples) float waveform -> (B, n_mels, frames) natural-log mel power spectrogram."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, win_length: int = 400,
                 hop_length: int = 320, n_mels: int = 64, f_min: float = 20.0, f_max: float = 7600.0):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
            f_min=f_min, f_max=f_max, n_mels=n_mels, power=2.0, center=True,
        )

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> LogMel:
        return cls(cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels, cfg.f_min,
                   cfg.f_max)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave) + LOG_EPS)


def _hash(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=8).hexdigest()


def content_hash(path: str | Path) -> str:
    """Hash of a file's bytes (the cache key's first half)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


TMP_SUFFIX = ".npy.tmp"
TMP_GRACE_SECONDS = 30.0  # a temporary file younger than this is never removed (see clean_stale_tmp)


def _new_tmp(path: Path) -> tuple[int, str]:
    """Create ``path``'s temporary sibling, readable by every user, locked by this process.

    The writer holds an exclusive ``flock`` until the file is renamed into place; the kernel drops
    it when the process dies, which is how ``clean_stale_tmp`` tells a killed writer's leftovers
    from a file that a live process is still writing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.fchmod(fd, default_file_mode())  # a shared cache must stay readable by every user
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, tmp


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    fd, tmp = _new_tmp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.replace(tmp, path)  # while the lock is held
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def clean_stale_tmp(root: str | Path, grace: float = TMP_GRACE_SECONDS) -> int:
    """Remove the temporary entries that killed writers left under ``root``; returns how many.

    A file counts as stale when no process holds its lock and it is older than ``grace`` seconds
    (the grace covers the instant between ``mkstemp`` and ``flock`` in ``_new_tmp``). Without
    ``fcntl`` (Windows) only age decides, with a day's grace.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    if fcntl is None:
        grace = max(grace, 86400.0)
    removed = 0
    now = time.time()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            p = os.path.join(dirpath, name)
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue  # renamed or removed meanwhile
            try:
                if now - os.fstat(fd).st_mtime < grace:
                    continue
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # a live writer holds it
                os.unlink(p)
                removed += 1
            except OSError:
                continue
            finally:
                os.close(fd)
    return removed


def _load_npy(path: Path) -> np.ndarray | None:
    """A cache entry, or None when it is missing or unreadable (then it is recomputed)."""
    try:
        return np.load(path, mmap_mode="r")
    except (FileNotFoundError, ValueError, OSError, EOFError):
        return None


_CLEANED: set[str] = set()


class FeatureCache:
    """Content-addressed cache of log-mel features under ``root``.

    Opening one removes the temporary entries that killed runs left behind (``clean_stale_tmp``).
    """

    def __init__(self, root: str | Path, cfg: FeatureConfig):
        self.root = Path(root)
        self.cfg = cfg
        self.fhash = _hash({"v": FEATURE_VERSION, **cfg.to_dict()})
        self.computed = 0
        self.reused = 0
        self._logmel: LogMel | None = None
        self.stale_removed = 0
        where = str(self.root.resolve())
        if where not in _CLEANED:  # once per process and cache folder
            _CLEANED.add(where)
            self.stale_removed = clean_stale_tmp(self.root)

    @property
    def logmel(self) -> LogMel:
        if self._logmel is None:
            self._logmel = LogMel.from_config(self.cfg).eval()
        return self._logmel

    def keys(self, paths: Sequence[str | Path], threads: int = 4) -> list[str]:
        """Content hashes of ``paths`` (threaded: hashing is I/O bound)."""
        with ThreadPoolExecutor(max(1, threads)) as ex:
            return list(ex.map(content_hash, paths))

    def item_path(self, key: str) -> Path:
        return self.root / "items" / self.fhash / key[:2] / f"{key}.npy"

    def compute(self, waves: list[np.ndarray]) -> np.ndarray:
        """(N, samples) fixed-length waveforms -> (N, n_mels, frames) float16 log-mels."""
        with torch.no_grad():
            x = torch.from_numpy(np.stack(waves).astype(np.float32, copy=False))
            return self.logmel(x).numpy().astype(np.float16)

    def ensure(self, paths: Sequence[str | Path], keys: Sequence[str], batch: int = 128,
               progress: Callable[[int, int], None] | None = None) -> None:
        """Compute and store the entries that are not cached yet."""
        missing = [(p, k) for p, k in zip(paths, keys) if _load_npy(self.item_path(k)) is None]
        missing = list({k: (p, k) for p, k in missing}.values())  # same content listed twice: once
        self.reused += len(keys) - len(missing)
        for start in range(0, len(missing), batch):
            chunk = missing[start:start + batch]
            waves = [load_audio(p, self.cfg.sample_rate, self.cfg.clip_seconds) for p, _ in chunk]
            feats = self.compute(waves)
            for (_, k), f in zip(chunk, feats):
                _atomic_save_npy(self.item_path(k), f)
            self.computed += len(chunk)
            if progress:
                progress(min(start + batch, len(missing)), len(missing))

    def pack(self, keys: Sequence[str], kind: str = "items", tag: str = "") -> np.ndarray:
        """Memory-mapped (N, ...) array of the entries for ``keys`` in order (built once, cached)."""
        name = _hash([kind, tag, list(keys)])
        path = self.root / "packs" / self.fhash / f"{kind}-{name}.npy"
        arr = _load_npy(path)
        if arr is not None and arr.shape[0] == len(keys):
            return arr
        first = self._entry(kind, tag, keys[0])
        fd, tmp = _new_tmp(path)  # fd stays open (holding the lock) while the memmap writes
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype,
                                            shape=(len(keys), *first.shape))
            for i, k in enumerate(keys):
                out[i] = self._entry(kind, tag, k)
            out.flush()
            del out
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return np.load(path, mmap_mode="r")

    def _entry(self, kind: str, tag: str, key: str) -> np.ndarray:
        path = self.item_path(key) if kind == "items" else self.view_path(tag, key)
        arr = _load_npy(path)
        if arr is None:
            raise FileNotFoundError(f"cache entry missing: {path} (run ensure first)")
        return arr

    def features(self, paths: Sequence[str | Path], progress=None,
                 keys: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Keys and the packed (N, n_mels, frames) features of ``paths``, computing what is missing.

        ``keys``: the content hashes of ``paths`` from an earlier call, so they are not hashed again.
        """
        keys = self.keys(paths) if keys is None else list(keys)
        self.ensure(paths, keys, progress=progress)
        return keys, self.pack(keys)

    # -- augmented views ---------------------------------------------------------------------
    def view_path(self, tag: str, key: str) -> Path:
        return self.root / "views" / f"{self.fhash}-{tag}" / key[:2] / f"{key}.npy"

    def views(self, paths: Sequence[str | Path], aug_params: dict, n_views: int, seed: int, workers: int = 1,
              progress: Callable[[int, int], None] | None = None,
              keys: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Packed (N, n_views, n_mels, frames) features of ``n_views`` augmented copies of each clip.

        ``aug_params`` are the ``AugmentConfig`` fields; each clip's copies are seeded from
        (seed, content hash), so they do not depend on order or on the number of workers.
        ``keys`` as for ``features``.
        """
        tag = _hash({"aug": aug_params, "views": n_views, "seed": seed})
        keys = self.keys(paths) if keys is None else list(keys)
        todo = {}
        for p, k in zip(paths, keys):
            if k not in todo and _load_npy(self.view_path(tag, k)) is None:
                todo[k] = str(p)
        self.reused += len(keys) - len(todo)
        jobs = [(p, k, str(self.view_path(tag, k)), aug_params, self.cfg.to_dict(), n_views, seed)
                for k, p in todo.items()]
        if jobs:
            if workers > 1 and len(jobs) > 8:
                import multiprocessing as mp

                ctx = mp.get_context("spawn")
                with ctx.Pool(workers, initializer=_worker_init) as pool:
                    for i, _ in enumerate(pool.imap_unordered(_make_views, jobs, chunksize=16), start=1):
                        if progress and (i % 64 == 0 or i == len(jobs)):
                            progress(i, len(jobs))
            else:
                for i, job in enumerate(jobs, start=1):
                    _make_views(job)
                    if progress and (i % 64 == 0 or i == len(jobs)):
                        progress(i, len(jobs))
            self.computed += len(jobs)
        return keys, self.pack(keys, kind="views", tag=tag)


def _worker_init() -> None:
    torch.set_num_threads(1)


_WORKER_STATE: dict = {}


def _make_views(job) -> None:
    path, key, out, aug_params, feat_params, n_views, seed = job
    from plcli.data.augment import AugmentConfig, WaveformAugment

    fcfg = FeatureConfig.from_dict(feat_params)
    state_key = _hash([aug_params, feat_params])
    if _WORKER_STATE.get("key") != state_key:
        _WORKER_STATE.update(
            key=state_key,
            aug=WaveformAugment(AugmentConfig.from_dict(aug_params), fcfg.sample_rate, fcfg.num_samples),
            logmel=LogMel.from_config(fcfg).eval(),
        )
    aug, logmel = _WORKER_STATE["aug"], _WORKER_STATE["logmel"]
    # longer clips keep some room for the random crop; shorter ones are padded by the augmenter
    wave = load_audio(path, fcfg.sample_rate, fcfg.clip_seconds * 1.25, pad=False)
    item_seed = int(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=4).hexdigest(), 16)
    views = []
    for v in range(n_views):
        random.seed(item_seed + v)
        np.random.seed((item_seed + v) % 2**32)
        views.append(aug(wave))
    with torch.no_grad():
        feats = logmel(torch.from_numpy(np.stack(views))).numpy().astype(np.float16)
    _atomic_save_npy(Path(out), feats)
