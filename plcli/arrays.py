"""Array helpers with no plcli imports, shared by inference, the ranking and the stages.

- ``softmax``: row-wise softmax of (N, C) logits, in float64;
- ``RowView``: a lazy row (and view) selection of a feature memmap, sliceable like an array.

They sit below ``plcli.inference`` and ``plcli.ranking`` so that neither imports the other for them.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64 for stable sums."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class RowView:
    """A lazy row (and optional view) selection of a memmap, sliceable like an array: ``feats[s:e]``.

    ``feats`` is (N, F, T), or (N, V, F, T) with ``view`` picking one view; ``index`` picks rows.
    """

    def __init__(self, feats: np.ndarray, index: np.ndarray | None, view: int | None = None):
        self.feats, self.index, self.view = feats, index, view
        n = feats.shape[0] if index is None else len(index)
        self.shape = (n, *feats.shape[(2 if view is not None else 1) :])

    def __getitem__(self, s: slice) -> np.ndarray:
        rows = np.arange(self.shape[0])[s] if self.index is None else self.index[s]
        return self.feats[rows] if self.view is None else self.feats[rows, self.view]
