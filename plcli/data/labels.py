"""Label normalisation and the label vocabulary saved with every model.

Chat text is messy ("See you tomorrow!", "see you  tomorrow"): labels and candidates are mapped to
a normalised key (NFKC, case-folded, whitespace collapsed, punctuation stripped at both ends; each
step configurable in ``LabelConfig``). The vocabulary keeps, for every key, the most frequent
original spelling, so predictions are shown as the user wrote them.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from plcli.config import LabelConfig
from plcli.errors import UserError
from plcli.io import atomic_write_json

VOCAB_VERSION = 1
NO_TRUTH, UNKNOWN = -2, -1  # class-index markers: no label at all; a label outside the vocabulary


def _is_edge_junk(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PSZ" or ch.isspace()


class LabelNormalizer:
    """Map label text to its vocabulary key according to a ``LabelConfig``."""

    def __init__(self, cfg: LabelConfig | None = None):
        self.cfg = cfg or LabelConfig()

    def __call__(self, text: str) -> str:
        cfg = self.cfg
        if cfg.nfkc:
            text = unicodedata.normalize("NFKC", text)
        if cfg.lowercase:
            text = text.casefold()
        if cfg.collapse_whitespace:
            text = " ".join(text.split())
        if cfg.strip_punctuation:
            start, end = 0, len(text)
            while start < end and _is_edge_junk(text[start]):
                start += 1
            while end > start and _is_edge_junk(text[end - 1]):
                end -= 1
            stripped = text[start:end]
            # a label made only of punctuation ("??", ":)") keeps its text rather than vanishing
            text = stripped if stripped else text.strip()
        return text


class Vocabulary:
    """Ordered set of normalised labels with their display text.

    Index order is sorted by key, so the same labels always give the same class indices.
    """

    def __init__(self, keys: list[str], display: list[str], counts: list[int] | None = None,
                 normalizer: LabelNormalizer | None = None):
        if len(keys) != len(display):
            raise ValueError("keys and display must have the same length")
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate keys in vocabulary")
        self.keys = list(keys)
        self.display = list(display)
        self.counts = list(counts) if counts is not None else [0] * len(keys)
        self.normalizer = normalizer or LabelNormalizer()
        self._index = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, text: str) -> bool:
        return self.normalizer(text) in self._index

    def index(self, text: str) -> int | None:
        """Class index of ``text`` (normalised first), or None when it is not in the vocabulary."""
        return self._index.get(self.normalizer(text))

    def indices(self, texts: Iterable[str]) -> list[int]:
        """Indices of the known texts, unknown ones skipped, duplicates removed, order kept."""
        seen: dict[int, None] = {}
        for t in texts:
            i = self.index(t)
            if i is not None:
                seen[i] = None
        return list(seen)

    @classmethod
    def build(cls, texts: Iterable[str], normalizer: LabelNormalizer | None = None) -> Vocabulary:
        """Vocabulary of every text (labels and candidates) seen in the training rows."""
        normalizer = normalizer or LabelNormalizer()
        spellings: dict[str, Counter] = {}
        for t in texts:
            key = normalizer(t)
            if not key:
                continue
            spellings.setdefault(key, Counter())[t.strip()] += 1
        keys = sorted(spellings)
        # most frequent original spelling; ties broken alphabetically for determinism
        display = [min(spellings[k].items(), key=lambda kv: (-kv[1], kv[0]))[0] for k in keys]
        counts = [sum(spellings[k].values()) for k in keys]
        return cls(keys, display, counts, normalizer)

    @classmethod
    def from_rows(cls, rows, normalizer: LabelNormalizer | None = None) -> Vocabulary:
        texts: list[str] = []
        for r in rows:
            texts.extend(r.candidates)
            if r.label is not None:
                texts.append(r.label)
        return cls.build(texts, normalizer)

    def to_dict(self) -> dict:
        return {
            "version": VOCAB_VERSION,
            "normalization": self.normalizer.cfg.to_dict(),
            "labels": [{"key": k, "text": d, "count": c}
                       for k, d, c in zip(self.keys, self.display, self.counts)],
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"label vocabulary not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: corrupt label vocabulary ({e})") from None
        if not isinstance(data, dict) or data.get("version") != VOCAB_VERSION:
            raise UserError(f"{path}: label vocabulary from an incompatible plcli version")
        norm = LabelNormalizer(LabelConfig.from_dict(data.get("normalization", {})))
        labels = data["labels"]
        return cls([x["key"] for x in labels], [x["text"] for x in labels],
                   [x.get("count", 0) for x in labels], norm)


def class_indices(labels: Iterable[str | None], vocab: Vocabulary, missing: int = NO_TRUTH):
    """(N,) int64 class index of each label: ``UNKNOWN`` (-1) for a label outside ``vocab``,
    ``missing`` (default ``NO_TRUTH``, -2) where the label is None."""
    import numpy as np

    out = [missing if t is None else (UNKNOWN if (j := vocab.index(t)) is None else j) for t in labels]
    return np.asarray(out, dtype=np.int64).reshape(-1)
