"""Candidate sets that miss the truth: find them before they teach a wrong message.

A voice note that nobody typed gets the next chat messages as candidates all the same, and none of
them is its message. The partial-label loss then pushes it onto a wrong candidate. Finetune scores
every candidate row with a head that never trained on it (K folds): its ``none_of_these``, the
probability mass outside the candidates. Rows whose score passes ``screen`` leave the candidate
loss and train as unlabelled rows, in finetune and in the distill runs that use the teacher.

This is the clean-sample selection of PiCO+ (Wang et al. 2023) and DivideMix (Li et al. 2020),
scored out of fold because a head that fits a row cannot say that its set misses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SCREEN_FILE = "screened.json"
FOLDS = 5


def fold_of(n: int, seed: int, folds: int = FOLDS) -> np.ndarray:
    """(n,) a balanced random fold index in [0, folds) for each of n rows."""
    return np.random.default_rng(seed).permutation(n) % folds


def write_screened(run_dir: Path, ids: list[str], scores: np.ndarray, threshold: float) -> None:
    """Write the screened row ids and every scored row's out-of-fold score (``scores`` (len(ids),))."""
    scores = np.asarray(scores, dtype=np.float64)
    out = {
        "threshold": threshold,
        "screened": [i for i, s in zip(ids, scores) if s > threshold],
        "scores": {i: round(float(s), 6) for i, s in zip(ids, scores)},
    }
    (run_dir / SCREEN_FILE).write_text(json.dumps(out, indent=1))


def carry(teacher_dir: Path, run_dir: Path) -> None:
    """Copy a teacher run's screening into a run trained from it, so its students find it too."""
    src = Path(teacher_dir) / SCREEN_FILE
    if src.is_file() and Path(run_dir).resolve() != Path(teacher_dir).resolve():
        (Path(run_dir) / SCREEN_FILE).write_bytes(src.read_bytes())


def unscreened_mask(run_dir: Path, ids: list[str], mask: np.ndarray, log) -> np.ndarray:
    """``mask`` (N, C) with the rows that ``run_dir`` screened out cleared: they train as unlabelled."""
    screened = read_screened(run_dir)
    hit = np.array([i in screened for i in ids], dtype=bool) if screened else np.zeros(len(ids), bool)
    if hit.any():
        log(f"{int(hit.sum())} row(s) whose candidates the teacher screened out train as unlabelled rows")
    return np.where(hit[:, None], False, mask)


def read_screened(run_dir: Path) -> set[str] | None:
    """The ids a run screened out; None where the run wrote no screening (it predates it, or it is off)."""
    path = Path(run_dir) / SCREEN_FILE
    if not path.is_file():
        return None
    return set(json.loads(path.read_text())["screened"])
