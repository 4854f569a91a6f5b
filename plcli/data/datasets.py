"""Datasets over the packed feature cache, plus the data preparation every stage shares."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from plcli.config import DataConfig, FeatureConfig, cache_dir
from plcli.data.features import FeatureCache
from plcli.data.labels import UNKNOWN, LabelNormalizer, Vocabulary, class_indices
from plcli.data.manifest import Row
from plcli.data.validate import ValidationReport, load_rows


def load_training_rows(dc: DataConfig, run_dir: Path, log=print) -> ValidationReport:
    """Validate the stage's manifests exactly as ``plcli validate`` does (rejects into RUN_DIR)."""
    rejects = dc.rejects or (run_dir / "rejects.jsonl")
    return load_rows(dc.manifests, LabelNormalizer(dc.labels), dc.skip_invalid, rejects, log=log)


def open_cache(dc: DataConfig, fc: FeatureConfig) -> FeatureCache:
    return FeatureCache(cache_dir(dc.cache_dir), fc)


def view_workers(n_views: int, num_workers: int) -> int:
    """Processes for computing augmented views into the cache: starting one costs seconds (torch,
    audiomentations imports), about the price of 4000 views in-process, so small jobs stay in this
    process; large ones use ``num_workers``, or every core when it is 0."""
    import os

    if n_views < 4000:
        return 1
    return num_workers or max(1, os.cpu_count() or 1)


def candidate_matrix(rows: Sequence[Row], vocab: Vocabulary) -> np.ndarray:
    """(N, C) bool: True where a class is in the row's candidate set (all False: no candidates)."""
    m = np.zeros((len(rows), len(vocab)), dtype=bool)
    for i, r in enumerate(rows):
        idx = vocab.indices(r.candidates)
        if idx:
            m[i, idx] = True
    return m


def label_vector(rows: Sequence[Row], vocab: Vocabulary) -> np.ndarray:
    """(N,) int64 class index of each row's exact label, -1 where there is none (or it is unknown)."""
    return class_indices([r.label for r in rows], vocab, missing=UNKNOWN)


def truth_vector(rows: Sequence[Row], truth: dict[str, str], vocab: Vocabulary) -> np.ndarray:
    """(N,) int64 class index of each row's true label from ``truth`` (id -> label):
    -2 where the row has none, -1 where it is outside the vocabulary."""
    return class_indices([truth.get(r.id) for r in rows], vocab)


def collate_identity(batch):
    """The collate function of the batched datasets: ``__getitems__`` already made the batch."""
    return batch


class SpeakerGroupedSampler(Sampler[int]):
    """An order of the rows in which every ``batch_size`` consecutive rows come from about
    ``speakers`` speakers: each speaker's rows are shuffled and cut into chunks of
    ``batch_size // speakers``, and the chunks are shuffled. Use with ``shuffle=False``.

    In a contrastive batch the negatives then mostly share the anchor's voice, so the voice cannot
    tell the positive apart and the encoder must use what is said (within-speaker negatives, as in
    CPC: Rivière et al. 2020, arXiv 2002.02848). Rows without a speaker are chunks of one (random
    mixing). Deterministic in (``seed``, epoch); the epoch counts the calls to ``__iter__``.
    """

    def __init__(self, speakers_of_rows: Sequence[str | None], batch_size: int, speakers: int, seed: int = 0):
        if batch_size < 1 or speakers < 1:
            raise ValueError(f"batch_size and speakers must be >= 1, got {batch_size}, {speakers}")
        self.chunk = max(1, batch_size // speakers)
        self.seed, self.epoch = seed, 0
        groups: dict[str, list[int]] = {}
        self.loose: list[int] = []
        for i, spk in enumerate(speakers_of_rows):
            (groups.setdefault(spk, []) if spk else self.loose).append(i)
        self.groups = list(groups.values())
        self.n = len(speakers_of_rows)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        chunks = [[i] for i in self.loose]
        for rows in self.groups:
            perm = torch.randperm(len(rows), generator=g).tolist()
            chunks += [[rows[j] for j in perm[k:k + self.chunk]] for k in range(0, len(rows), self.chunk)]
        for c in torch.randperm(len(chunks), generator=g).tolist():
            yield from chunks[c]


class BatchedDataset(Dataset):
    """A dataset whose ``__getitems__`` reads a whole batch with one fancy-index from the memmap."""

    collate_fn = staticmethod(collate_identity)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):  # pragma: no cover - abstract
        raise NotImplementedError


class ViewPairs(BatchedDataset):
    """Two different pre-computed augmented views of each clip: views (N, V, F, T) -> (B, F, T) x 2.

    With ``groups`` (N,) int (-1 = none) and ``p_partner`` > 0, a clip's second view comes, with
    probability ``p_partner``, from another clip of its group instead (a pseudo-positive: a clip that
    probably says the same message, in another voice). Clips alone in their group keep their own.
    With ``with_index`` a batch is ``(x0, x1, idx)``: ``idx`` (B,) the clips whose views ``x0`` are.
    """

    def __init__(self, views: np.ndarray, groups: np.ndarray | None = None, p_partner: float = 0.0,
                 with_index: bool = False):
        if views.ndim != 4 or views.shape[1] < 2:
            raise ValueError(f"need (N, V>=2, F, T) views, got {views.shape}")
        if not 0.0 <= p_partner <= 1.0:
            raise ValueError(f"p_partner must be in [0, 1], got {p_partner}")
        self.views = views
        self.p_partner = p_partner
        self.with_index = with_index
        self.members: list[np.ndarray] = []
        self.group = np.full(views.shape[0], -1, dtype=np.int64)
        if groups is not None and p_partner > 0:
            groups = np.asarray(groups)
            if groups.shape != (views.shape[0],):
                raise ValueError(f"need groups of shape ({views.shape[0]},), got {groups.shape}")
            for g in np.unique(groups[groups >= 0]):
                m = np.flatnonzero(groups == g)
                if len(m) >= 2:
                    self.group[m] = len(self.members)
                    self.members.append(m)

    def _partners(self, idx: np.ndarray) -> np.ndarray:
        """(B,) the clip whose view is each row's positive: itself, or a group mate."""
        src = idx.copy()
        draw = torch.rand(len(idx)).numpy() < self.p_partner
        for b in np.flatnonzero(draw & (self.group[idx] >= 0)):
            m = self.members[self.group[idx[b]]]
            j = int(torch.randint(0, len(m) - 1, ()).item())
            src[b] = m[j] if m[j] != idx[b] else m[-1]  # uniform over the others
        return src

    def __len__(self) -> int:
        return self.views.shape[0]

    def __getitems__(self, idx: list[int]):
        idx_t = torch.as_tensor(idx)
        v = self.views.shape[1]
        v0 = torch.randint(0, v, (len(idx),))
        v1 = (v0 + torch.randint(1, v, (len(idx),))) % v  # a different view of the same clip
        order = np.argsort(idx_t.numpy(), kind="stable")  # sorted reads are kinder to the page cache
        rows = idx_t.numpy()[order]
        x0 = np.empty((len(idx), *self.views.shape[2:]), dtype=np.float32)
        x1 = np.empty_like(x0)
        x0[order] = self.views[rows, v0.numpy()[order]]
        if self.members:  # some second views come from group mates: read them in their own sorted order
            src = self._partners(idx_t.numpy())
            order = np.argsort(src, kind="stable")
            rows = src[order]
        x1[order] = self.views[rows, v1.numpy()[order]]
        if self.with_index:
            return torch.from_numpy(x0), torch.from_numpy(x1), idx_t
        return torch.from_numpy(x0), torch.from_numpy(x1)


class FeatureRows(BatchedDataset):
    """Clean features (N, F, T) with optional per-row tensors (labels, masks, targets, indices)."""

    def __init__(self, feats: np.ndarray, index: np.ndarray | None = None,
                 **fields: np.ndarray | torch.Tensor):
        self.feats = feats
        self.index = np.arange(feats.shape[0]) if index is None else np.asarray(index)
        self.fields = {k: torch.as_tensor(v) for k, v in fields.items()}
        for k, v in self.fields.items():
            if len(v) != len(self.index):
                raise ValueError(f"field {k} has {len(v)} rows, expected {len(self.index)}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, idx: list[int]):
        idx = np.asarray(idx)
        rows = self.index[idx]
        order = np.argsort(rows, kind="stable")
        x = np.empty((len(idx), *self.feats.shape[1:]), dtype=np.float32)
        x[order] = self.feats[rows[order]]
        out = {"x": torch.from_numpy(x), "i": torch.as_tensor(idx)}
        t = torch.as_tensor(idx)
        for k, v in self.fields.items():
            out[k] = v[t]
        return out


class ViewRows(FeatureRows):
    """Like ``FeatureRows`` but each item is a random one of V pre-computed augmented views."""

    def __getitems__(self, idx: list[int]):
        idx = np.asarray(idx)
        rows = self.index[idx]
        v = torch.randint(0, self.feats.shape[1], (len(idx),)).numpy()
        order = np.argsort(rows, kind="stable")
        x = np.empty((len(idx), *self.feats.shape[2:]), dtype=np.float32)
        x[order] = self.feats[rows[order], v[order]]
        out = {"x": torch.from_numpy(x), "i": torch.as_tensor(idx)}
        t = torch.as_tensor(idx)
        for k, val in self.fields.items():
            out[k] = val[t]
        return out


def holdout_ids(ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """Deterministic held-out subset: the ``fraction`` of ids with the smallest seeded hash.

    Depends only on the ids, the fraction and the seed (not on row order), so every stage
    holds out the same exact rows.
    """
    import hashlib

    if fraction <= 0 or not ids:
        return set()
    ranked = sorted(ids, key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())
    n = int(round(fraction * len(ranked)))
    n = min(max(n, 1), len(ranked) - 1) if len(ranked) > 1 else 0
    return set(ranked[:n])


class OnlineViewPairs(Dataset):
    """Two freshly augmented views per clip, computed every step (waveform augment + log-mel).

    For machines with many cores (DataLoader workers); on 2 CPU cores the cached views of
    ``ViewPairs`` are faster. Randomness comes from numpy's global RNG, which Lightning seeds per
    worker with ``seed_everything(seed, workers=True)``.
    """

    def __init__(self, paths: Sequence[str], augment_cfg, features: FeatureConfig):
        from plcli.data.augment import WaveformAugment
        from plcli.data.features import LogMel

        self.paths = list(paths)
        self.features = features
        self.augment = WaveformAugment(augment_cfg, features.sample_rate, features.num_samples)
        self.logmel = LogMel.from_config(features).eval()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from plcli.data.audio import load_audio

        fc = self.features
        wave = load_audio(self.paths[i], fc.sample_rate, fc.clip_seconds * 1.25, pad=False)
        with torch.no_grad():
            views = torch.from_numpy(np.stack([self.augment(wave), self.augment(wave)]))
            x = self.logmel(views)  # (2, F, T)
        return x[0], x[1]
