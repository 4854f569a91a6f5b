"""Which recording to ask about next.

With a model: the rows it is least sure of among their candidates, spread across the messages it
predicts (round-robin over one queue per predicted message, each sorted by uncertainty), so a run of
answers does not all confirm the same message. Without one: a seeded random sample, round-robin over
speakers and chats. Everything but ``model_probs`` is pure.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence

import numpy as np

UNCERTAINTY = ("least-confident", "margin")


def uncertainty(probs: Sequence[float], kind: str = "least-confident") -> float:
    """1 - the top candidate's probability, or with ``margin`` 1 - (top - second)."""
    p = sorted((float(x) for x in probs), reverse=True)
    if not p:
        return 1.0
    if kind == "margin":
        return 1.0 - (p[0] - (p[1] if len(p) > 1 else 0.0))
    if kind != "least-confident":
        raise ValueError(f"unknown uncertainty {kind!r}")
    return 1.0 - p[0]


def round_robin(keys: Sequence[Hashable], within: Sequence[int]) -> list[int]:
    """Row indices taking turns over ``keys``' groups: round r holds the r-th row of every group, each
    group ordered as ``within`` lists its rows; a round's rows come in the order of ``within``."""
    rank = {i: n for n, i in enumerate(within)}
    queues: dict[Hashable, list[int]] = {}
    for i in within:
        queues.setdefault(keys[i], []).append(i)
    longest = max((len(q) for q in queues.values()), default=0)
    out = []
    for r in range(longest):
        out.extend(sorted((q[r] for q in queues.values() if r < len(q)), key=rank.__getitem__))
    return out


def spread_order(predicted: Sequence[Hashable], unsure: Sequence[float]) -> list[int]:
    """Most uncertain first, spread across the predicted messages (``predicted[i]``: row i's top
    candidate, normalised); ties keep the input order."""
    by_doubt = sorted(range(len(unsure)), key=lambda i: -unsure[i])
    return round_robin(predicted, by_doubt)


def diverse_order(groups: Sequence[Hashable], seed: int = 0) -> list[int]:
    """A seeded random order taking turns over ``groups`` (speaker, chat), random within each."""
    rng = random.Random(seed)
    shuffled = list(range(len(groups)))
    rng.shuffle(shuffled)
    return round_robin(groups, shuffled)


def group_of(row) -> tuple[str, str]:
    """The chat and speaker a manifest row comes from, for ``diverse_order``."""
    chat = row.group if row.group is not None else row.extra.get("chat", "")
    return str(chat), str(row.speaker or "")


def reason(candidates: Sequence[str], probs: Sequence[float], kind: str = "least-confident") -> str:
    """Why the model asks: its two likeliest candidates and their probabilities."""
    order = sorted(range(len(probs)), key=lambda k: -probs[k])
    best = f"{candidates[order[0]]!r} {probs[order[0]]:.0%}"
    if len(order) == 1:
        return f"the model's only candidate {best}"
    second = f"{candidates[order[1]]!r} {probs[order[1]]:.0%}"
    what = "close call" if kind == "margin" else "unsure"
    return f"model {what}: {best}, then {second} (uncertainty {uncertainty(probs, kind):.2f})"


def model_order(candidates: Sequence[Sequence[str]], probs: Sequence[Sequence[float]], normalizer,
                kind: str = "least-confident") -> tuple[list[int], list[str]]:
    """(asking order, per-row reason) from each row's candidate probabilities."""
    unsure = [uncertainty(p, kind) for p in probs]
    predicted = [normalizer(c[int(np.argmax(p))]) for c, p in zip(candidates, probs, strict=True)]
    reasons = [reason(c, p, kind) for c, p in zip(candidates, probs, strict=True)]
    return spread_order(predicted, unsure), reasons


def model_probs(model_dir: str, audio: list, candidates: list[list[str]], cache: str | None,
                batch_size: int = 256, log: Callable[[str], None] = print) -> tuple[list[np.ndarray], object]:
    """Each row's candidate probabilities from a finetune/distill run (as ``plcli predict`` ranks
    them, without a recogniser) and the model's label normaliser."""
    from plcli.inference import infer_ranked, load_predictor
    from plcli.ranking import candidate_classes, rank, ranking_of

    model, vocab, features, _ = load_predictor(model_dir)
    if not audio:
        return [], vocab.normalizer
    probs, scores, _ = infer_ranked(model, features, audio, candidates, cache, batch_size, log=log)
    classes = candidate_classes(candidates, vocab)
    ranked = rank(probs, scores, classes, ranking_of(getattr(model, "extra", None)), vocab.counts)
    return [ranked["probs"][i, : len(c)] for i, c in enumerate(candidates)], vocab.normalizer
