"""A speech recogniser's vote as a prior over each training row's candidates.

pocketsphinx (its bundled US-English model, no training) decodes every training recording with a
grammar of that recording's own candidates (``plcli.grammar``, also the benchmark's
zero-training row) and names one of them. That vote is a noisy label: right with some probability
``a``. Treated as one annotator with symmetric noise (the single-annotator case of Dawid and Skene
1979), the likelihood of the vote given the truth is ``a`` for the named candidate and
``(1 - a) / (K - 1)`` for each of the other ``K - 1``, so Bayes' rule multiplies the model's
candidate probabilities by ``a (K - 1) / (1 - a)`` at the named candidate and renormalises. In
log space that is a bonus ``delta = log(a (K - 1) / (1 - a))`` on the named candidate's logit,
which ``bonus_matrix`` builds and the stages add wherever a model's candidate-restricted
distribution becomes a target: finetune's PRODEN targets, the distill rounds' teacher targets,
the CTC phase's texts and the refit's ranking. Nothing changes at prediction time.

``a`` is estimated on the exact rows that have candidates (the recogniser does not train, so
every such row is a fair test of it), smoothed as ``(hits + 1) / (n + 2)``; with no such rows it
is 0.5 unless given. A vote no better than chance (``a <= 1 / K``) adds nothing.

Decoding costs about 30 ms a recording per core (docs/benchmark.md, row 5b); the votes are cached
in the feature cache folder (``asr/``), keyed by each recording's file (path, size, modification
time) and candidate texts, so the stages and their reruns decode a manifest once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from plcli.errors import UserError

PRIORS = ("none", "pocketsphinx")
CHOICES = ("auto", *PRIORS)  # auto: pocketsphinx where it is installed, else none
CACHE_VERSION = 1


def resolve(kind: str) -> str:
    """``kind`` with "auto" made concrete: "pocketsphinx" when the package is importable, else "none"."""
    if kind not in CHOICES:
        raise UserError(f"unknown asr prior {kind!r}: one of {', '.join(CHOICES)}")
    if kind != "auto":
        return kind
    from plcli.grammar import unavailable

    return "pocketsphinx" if unavailable() is None else "none"


def _row_key(audio: Path, candidates: Sequence[str]) -> str:
    st = os.stat(audio)
    raw = json.dumps([str(audio), st.st_size, st.st_mtime_ns, list(candidates)])
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def grammar_votes(rows: Sequence, cache: Path, workers: int = 2, log: Callable = print,
                  voice: str = "en-us") -> np.ndarray:
    """(N,) int64: the index into ``rows[i].candidates`` that pocketsphinx decodes with a grammar of
    them, -1 for rows without candidates or where it decodes nothing. Cached under ``cache/asr``.
    ``voice``: espeak-ng's, for the pronunciations of words pocketsphinx's dictionary lacks."""
    from plcli.doctor import dist_version
    from plcli.grammar import DECODER_OPTIONS, spoken_text

    todo = [i for i, r in enumerate(rows) if r.candidates]
    keys = {i: _row_key(Path(rows[i].audio), rows[i].candidates) for i in todo}
    setting = json.dumps([CACHE_VERSION, DECODER_OPTIONS, dist_version("pocketsphinx")]
                         + ([voice] if voice != "en-us" else []), default=str)
    name = hashlib.blake2b(json.dumps([setting, sorted(keys.values())]).encode(), digest_size=12).hexdigest()
    path = Path(cache) / "asr" / f"grammar-{name}.json"
    votes = np.full(len(rows), -1, dtype=np.int64)
    if path.is_file():
        stored = json.loads(path.read_text())
        for i in todo:
            votes[i] = stored[keys[i]]
        log(f"asr prior: reused pocketsphinx's votes on {len(todo)} recordings ({path})")
        return votes
    from plcli.grammar import choose_with_grammar

    said = {c: bool(spoken_text(c)) for i in todo for c in rows[i].candidates}
    heard = [i for i in todo if any(said[c] for c in rows[i].candidates)]
    if todo and not heard:
        log(f"asr prior: no candidate text of the {len(todo)} recordings is pronounceable for pocketsphinx "
            "(its model is US English): skipped, no votes")
        return votes
    procs = workers if len(heard) >= 100 else 1  # a few clips decode faster here than a fresh pool starts
    skipped = f"; {len(todo) - len(heard)} without a pronounceable candidate get none" if len(heard) < len(todo) else ""
    log(f"asr prior: pocketsphinx decodes {len(heard)} recordings with a grammar of their candidates "
        f"({procs} process{'es' if procs > 1 else ''}{skipped}) ...")
    chosen, timing = choose_with_grammar([str(rows[i].audio) for i in heard], [rows[i].candidates for i in heard],
                                         workers=procs, voice=voice)
    for i, j in zip(heard, chosen, strict=True):
        votes[i] = j
    cps = timing.get("clips_per_second")
    log("asr prior: " + (f"{cps:.0f} clips/s, " if cps else "") + f"no result for {timing['no_result']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: DDP ranks decode side by side
    tmp.write_text(json.dumps({keys[i]: int(votes[i]) for i in todo}))
    tmp.replace(path)
    return votes


def vote_accuracy(rows: Sequence, votes: np.ndarray, normalizer: Callable[[str], str]) -> tuple[int, int]:
    """(hits, n) over the exact rows with candidates that include their label: how often the vote
    names the label (a row without a vote counts as a miss)."""
    hits = n = 0
    for r, j in zip(rows, votes, strict=True):
        if r.label is None or not r.candidates:
            continue
        keys = [normalizer(c) for c in r.candidates]
        if normalizer(r.label) not in keys:
            continue
        n += 1
        hits += int(j >= 0 and keys[j] == normalizer(r.label))
    return hits, n


def smoothed_accuracy(hits: int, n: int) -> float:
    """``(hits + 1) / (n + 2)``: Laplace's rule; 0.5 with no evidence."""
    if not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n, got {hits} and {n}")
    return (hits + 1) / (n + 2)


def vote_bonus(accuracy: float, k: int) -> float:
    """``log(a (K - 1) / (1 - a))`` for a vote among ``k`` candidates, 0 when it is no better than
    chance (``a <= 1 / k``) or there is nothing to choose (``k < 2``)."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    if k < 2 or accuracy <= 1.0 / k:
        return 0.0
    a = min(accuracy, 0.999)
    return math.log(a * (k - 1) / (1 - a))


def bonus_matrix(rows: Sequence, votes: np.ndarray, vocab, accuracy: float) -> np.ndarray:
    """(N, C) float32 log-likelihood bonus of each row's voted class (0 elsewhere): add it to a
    model's logits before restricting them to the candidates (``plcli.losses.candidate_targets``).

    ``K`` is the row's number of distinct candidate texts (by ``vocab``'s normaliser, known or not);
    a vote for a text outside ``vocab`` adds nothing to the known classes (every one of them is
    equally unlikely under it, which renormalisation cancels).
    """
    if len(votes) != len(rows):
        raise ValueError(f"{len(votes)} votes for {len(rows)} rows")
    out = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    key = vocab.normalizer
    for i, (r, j) in enumerate(zip(rows, votes, strict=True)):
        if j < 0 or not r.candidates:
            continue
        if j >= len(r.candidates):
            raise ValueError(f"row {r.id}: vote {j} outside its {len(r.candidates)} candidates")
        cls = vocab.indices([r.candidates[j]])
        if cls:
            out[i, cls[0]] = vote_bonus(accuracy, len({key(c) for c in r.candidates}))
    return out


def prior_for(rows: Sequence, vocab, kind: str, cache: Path, accuracy: float | None = None, workers: int = 2,
              log: Callable = print, voice: str = "en-us") -> tuple[np.ndarray | None, dict]:
    """The (N, C) bonus of ``kind`` ("none": None) and what it rests on (``vote_accuracy``, the
    ``accuracy`` used, ``rows_voted``), for ``metrics.json``."""
    if kind not in PRIORS:
        raise UserError(f"unknown asr prior {kind!r}: one of {', '.join(PRIORS)}")
    if kind == "none":
        return None, {"kind": "none"}
    votes = grammar_votes(rows, cache, workers, log, voice)
    hits, n = vote_accuracy(rows, votes, vocab.normalizer)
    a = smoothed_accuracy(hits, n) if accuracy is None else float(accuracy)
    log(f"asr prior: the vote names the label of {hits} of {n} exact rows with candidates; "
        f"accuracy {a:.2f} ({'estimated' if accuracy is None else 'given'}), bonus "
        f"{vote_bonus(a, 10):.2f} nats at 10 candidates")
    info = {"kind": kind, "exact_rows": n, "exact_hits": hits, "accuracy": a,
            "accuracy_source": "estimated" if accuracy is None else "given",
            "rows_voted": int((votes >= 0).sum())}
    return bonus_matrix(rows, votes, vocab, a), info
