"""Candidate sets that miss the truth: weigh them down before they teach a wrong message.

A voice note that nobody typed gets the next chat messages as candidates all the same, and none of
them is its message; the partial-label loss would push it onto a wrong one. Finetune scores every
candidate row with a head that never trained on it (K folds): its ``none_of_these`` s, the
probability mass outside the candidates. In finetune the row's candidate loss then counts 1 - s.
Distill with ``untyped_targets`` (off: it cost the student accuracy) makes its target (1 - s) x the
candidate-restricted target + s x the teacher's unrestricted distribution.

The clean-sample detection of PiCO+ (Wang et al. 2023), made soft: a hard cut at s > 0.5 helped
on 600 recordings and hurt on 1200 (docs/finetune-losses.md). Scored out of fold, because a head
that has fitted a row cannot say that its set misses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from plcli.io import atomic_open, atomic_write_json

SCREEN_FILE = "screened.json"
FOLDS = 5
LIKELY = 0.5  # a score above this: more likely untyped than not (what the logs count)


def fold_of(n: int, seed: int, folds: int = FOLDS) -> np.ndarray:
    """(n,) a balanced random fold index in [0, folds) for each of n rows."""
    return np.random.default_rng(seed).permutation(n) % folds


def write_scores(run_dir: Path, ids: list[str], scores: np.ndarray) -> None:
    """Write each scored row's out-of-fold ``none_of_these`` (``scores`` (len(ids),)), atomically:
    a resumed run reads them back."""
    rounded = {i: round(float(s), 6) for i, s in zip(ids, np.asarray(scores, dtype=np.float64))}
    atomic_write_json(Path(run_dir) / SCREEN_FILE, {"scores": rounded}, indent=1)


def read_scores(run_dir: Path, ids: list[str]) -> np.ndarray | None:
    """(len(ids),) the scores a run wrote (0 for a row it did not score); None without a screening."""
    path = Path(run_dir) / SCREEN_FILE
    if not path.is_file():
        return None
    scores = json.loads(path.read_text())["scores"]
    return np.array([scores.get(i, 0.0) for i in ids], dtype=np.float64)


def carry(teacher_dir: Path, run_dir: Path) -> None:
    """Copy a teacher run's screening into a run trained from it, so its students find it too."""
    src = Path(teacher_dir) / SCREEN_FILE
    if src.is_file() and Path(run_dir).resolve() != Path(teacher_dir).resolve():
        with atomic_open(Path(run_dir) / SCREEN_FILE, "wb") as f:
            f.write(src.read_bytes())
