"""Speech recognisers that score a recording's candidate texts, with no training of their own.

- ``pocketsphinx``: its bundled US-English model searches a grammar of the candidates
  (``plcli.grammar``) and names one of them: a single vote per recording.
- ``whisper``: a CTranslate2 Whisper model (``plcli.recognisers.whisper``) gives every candidate its
  forced log-likelihood, in any of Whisper's 99 languages.

``recognise`` returns a ``Scores`` for a list of manifest rows, cached in the feature cache folder
(``asr/``) by each recording's file (path, size, modification time) and candidate texts, so the
stages, their reruns and ``predict`` score a recording once. ``plcli.asr_prior`` turns the scores
into a calibrated distribution over each row's candidates.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plcli.errors import UserError

KINDS = ("none", "pocketsphinx", "whisper")
CHOICES = ("auto", *KINDS)  # auto: pocketsphinx where it is installed, else none
CACHE_VERSION = 1
GRAMMAR_CACHE_VERSION = 1  # pocketsphinx votes: their files predate the Whisper scores
BATCH = 8  # clips encoded together by Whisper


@dataclass
class Scores:
    """A recogniser's view of N rows: ``votes`` (N,) the candidate index it prefers (-1: none), and
    for a scoring recogniser ``logp`` (N, K) summed token log-probabilities and ``tokens`` (N, K)
    token counts, ``-inf`` and 0 past a row's last candidate and on rows it did not score."""

    kind: str
    votes: np.ndarray
    logp: np.ndarray | None = None
    tokens: np.ndarray | None = None
    scored: int = 0  # rows scored now (the rest came from the cache)
    seconds: float = 0.0  # the model's time on them


def resolve(kind: str) -> str:
    """``kind`` with "auto" made concrete: "pocketsphinx" when the package is importable, else "none"."""
    if kind not in CHOICES:
        raise UserError(f"unknown recogniser {kind!r}: one of {', '.join(CHOICES)}")
    if kind != "auto":
        return kind
    from plcli.grammar import unavailable

    return "pocketsphinx" if unavailable() is None else "none"


def usable() -> dict[str, str | None]:
    """Each recogniser: None when it can run here, else why not (for ``plcli doctor``)."""
    from plcli.grammar import unavailable as ps
    from plcli.recognisers.whisper import unavailable as wh

    return {"pocketsphinx": ps(), "whisper": wh()}


def row_key(audio: Path, candidates: Sequence[str]) -> str:
    st = os.stat(audio)
    raw = json.dumps([str(audio), st.st_size, st.st_mtime_ns, list(candidates)])
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def recognise(rows: Sequence, kind: str, cache: Path, model: str = "base", language: str = "en",
              workers: int = 2, log: Callable = print, window: float = 30.0) -> Scores:
    """``kind``'s scores of every row with candidates (``kind`` concrete, not "none")."""
    if kind == "pocketsphinx":
        from plcli.language import espeak_voice

        timing: dict = {}
        votes = grammar_votes(rows, cache, workers, log, espeak_voice(language), timing)
        decoded = int((votes >= 0).sum()) + timing.get("no_result", 0) if timing else 0
        return Scores(kind, votes, scored=decoded,
                      seconds=timing.get("decode_seconds", 0.0) / max(timing.get("workers", 1), 1))
    if kind == "whisper":
        return whisper_scores(rows, cache, model, language, log, window)
    raise UserError(f"no scores from recogniser {kind!r}")


def grammar_votes(rows: Sequence, cache: Path, workers: int = 2, log: Callable = print,
                  voice: str = "en-us", timing: dict | None = None) -> np.ndarray:
    """(N,) int64: the index into ``rows[i].candidates`` that pocketsphinx decodes with a grammar of
    them, -1 for rows without candidates or where it decodes nothing. Cached under ``cache/asr``.
    ``voice``: espeak-ng's, for the pronunciations of words pocketsphinx's dictionary lacks.
    ``timing``, where given, gets the decoding's figures (``choose_with_grammar``) when it decodes."""
    from plcli.grammar import DECODER_OPTIONS, spoken_text
    from plcli.versions import dist_version

    todo = [i for i, r in enumerate(rows) if r.candidates]
    keys = {i: row_key(Path(rows[i].audio), rows[i].candidates) for i in todo}
    setting = json.dumps([GRAMMAR_CACHE_VERSION, DECODER_OPTIONS, dist_version("pocketsphinx")]
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
    skipped = (
        f"; {len(todo) - len(heard)} without a pronounceable candidate get none"
        if len(heard) < len(todo)
        else ""
    )
    log(f"asr prior: pocketsphinx decodes {len(heard)} recordings with a grammar of their candidates "
        f"({procs} process{'es' if procs > 1 else ''}{skipped}) ...")
    chosen, figures = choose_with_grammar([str(rows[i].audio) for i in heard],
                                          [rows[i].candidates for i in heard], workers=procs, voice=voice)
    if timing is not None:
        timing.update(figures)
    for i, j in zip(heard, chosen, strict=True):
        votes[i] = j
    cps = figures.get("clips_per_second")
    log("asr prior: " + (f"{cps:.0f} clips/s, " if cps else "") + f"no result for {figures['no_result']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: DDP ranks decode side by side
    tmp.write_text(json.dumps({keys[i]: int(votes[i]) for i in todo}))
    tmp.replace(path)
    return votes


def _as_scores(rows: Sequence, stored: dict, keys: dict[int, str]) -> Scores:
    k = max([1, *(len(r.candidates) for r in rows)])
    logp = np.full((len(rows), k), -np.inf)
    tokens = np.zeros((len(rows), k), dtype=np.int64)
    for i, key in keys.items():
        v = np.asarray(stored[key], dtype=np.float64).reshape(-1, 2)
        logp[i, : len(v)], tokens[i, : len(v)] = v[:, 0], v[:, 1]
    votes = np.where(np.isfinite(logp).any(1), logp.argmax(1), -1)
    return Scores("whisper", votes, logp, tokens)


def whisper_scores(rows: Sequence, cache: Path, model: str, language: str, log: Callable = print,
                   window: float = 30.0) -> Scores:
    """Whisper's forced log-likelihood of every candidate of every row, computing only the rows
    the cache lacks (one JSON file per model, language and window under ``cache/asr``)."""
    from plcli.recognisers.whisper import model_id, resolve_model

    path = resolve_model(model, Path(cache), log)
    store = Path(cache) / "asr" / f"whisper-{model_id(path)}-{language}-{window:g}s-v{CACHE_VERSION}.json"
    stored = json.loads(store.read_text()) if store.is_file() else {}
    keys = {i: row_key(Path(r.audio), r.candidates) for i, r in enumerate(rows) if r.candidates}
    todo = [i for i, key in keys.items() if key not in stored]
    seconds = 0.0
    if todo:
        new, seconds = _score_rows([rows[i] for i in todo], [keys[i] for i in todo], path, language, window,
                                   log)
        stored.update(new)
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")  # one per process: DDP ranks score side by side
        tmp.write_text(json.dumps(stored))
        tmp.replace(store)
    if len(keys) > len(todo):
        log(f"whisper: reused the scores of {len(keys) - len(todo)} recordings ({store})")
    out = _as_scores(rows, stored, keys)
    out.scored, out.seconds = len(todo), seconds
    return out


def _score_rows(rows: Sequence, keys: Sequence[str], path: str, language: str, window: float,
                log: Callable) -> tuple[dict, float]:
    """{row key: [[log-probability, tokens], ...]}: Whisper on ``rows``, clips of one length together,
    and the seconds it took (model only)."""
    import torch

    from plcli.data.audio import load_audio
    from plcli.recognisers.whisper import SAMPLE_RATE, WhisperScorer, bucket_frames

    scorer = WhisperScorer(path, language, threads=torch.get_num_threads(), window=window)
    waves = [load_audio(r.audio, SAMPLE_RATE, max_seconds=30.0, pad=False) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: bucket_frames(len(waves[i]), window))
    log(f"whisper: scoring the candidates of {len(rows)} recordings ({scorer.device}, language {language}) "
        f"...")
    out, t = {}, time.perf_counter()
    for s in range(0, len(order), BATCH):
        idx = order[s : s + BATCH]
        for i, sc in zip(idx, scorer.score_batch([waves[i] for i in idx], [rows[i].candidates for i in idx]),
                         strict=True):
            out[keys[i]] = sc.tolist()
    seconds = time.perf_counter() - t
    log(f"whisper: {len(rows) / max(seconds, 1e-9):.2f} clips/s ({seconds:.0f} s, model only)")
    return out, seconds
