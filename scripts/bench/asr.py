"""Benchmark row 5: an off-the-shelf speech recogniser, no training.

pocketsphinx (PyPI package ``pocketsphinx``, CMU Sphinx 5) ships a US-English acoustic model, a
pronunciation dictionary and a general 3-gram language model inside the wheel; ``Decoder()``
with no model arguments loads them, so nothing is downloaded. Each recording is transcribed once,
then the transcript is fuzzy-matched (rapidfuzz) against the recording's candidate set
(within-candidate accuracy) and against the whole label vocabulary (all-class accuracy).

Matching. Both sides are normalised first (NFKC, case-folded, apostrophes removed so "don't" ==
"dont", every other non-alphanumeric character turned into a space, whitespace collapsed). The
default scorer is ``ratio``, the normalised Indel similarity of the two character strings:
recogniser errors are mostly near-homophone substitutions and word-boundary slips ("to morrow"),
which cost a few characters under ``ratio`` but a whole token under the token-based scorers;
``WRatio`` and ``partial_ratio`` reward a short candidate that happens to occur inside a long
transcript ("ok" in "look at this" scores 90 and 100), which favours short messages whatever was
said. The benchmark picks the scorer on its validation speakers (``SCORERS``), never on the test
set. Ties (an empty transcript ties every candidate at 0) go to the secondary ``ratio`` score, then
to a seeded random choice, so an empty transcript is a fair guess rather than "always the first
candidate".
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from plcli.errors import UserError
from plcli.grammar import map_decoders

SAMPLE_RATE = 16000
DEFAULT_SCORER = "ratio"


def _scorers() -> dict[str, Callable[[str, str], float]]:
    fuzz = _rapidfuzz()
    return {
        "ratio": fuzz.ratio,
        "token_sort_ratio": fuzz.token_sort_ratio,
        "token_set_ratio": fuzz.token_set_ratio,
        "WRatio": fuzz.WRatio,
        "partial_ratio": fuzz.partial_ratio,
    }


SCORERS = ("ratio", "token_sort_ratio", "token_set_ratio", "WRatio", "partial_ratio")


def _rapidfuzz():
    try:
        from rapidfuzz import fuzz
    except ImportError:
        raise UserError(
            "the speech-recogniser baseline needs rapidfuzz: pip install 'plcli[bench]'"
        ) from None
    return fuzz


_NON_WORD = re.compile(r"[^\w]+|_")


def normalise(text: str) -> str:
    """Text as the matcher compares it: NFKC, case-folded, no apostrophes, other symbols -> spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("'", "").replace("\u2019", "")
    return " ".join(_NON_WORD.sub(" ", text).split())


def match_candidates(
    transcript: str,
    candidates: Sequence[str],
    scorer: str = DEFAULT_SCORER,
    rng: np.random.Generator | None = None,
) -> tuple[int, list[float]]:
    """Index of the candidate that best matches ``transcript`` and every candidate's score (0-100).

    Ties on ``scorer`` are broken by the ``ratio`` score, then at random with ``rng`` (or by the
    first position when ``rng`` is None).
    """
    if not candidates:
        raise ValueError("match_candidates needs at least one candidate")
    fns = _scorers()
    if scorer not in fns:
        raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    t = normalise(transcript)
    cands = [normalise(c) for c in candidates]
    scores = [float(fns[scorer](t, c)) for c in cands]
    best = np.flatnonzero(np.isclose(scores, max(scores)))
    if len(best) > 1 and scorer != "ratio":
        second = np.array([fns["ratio"](t, cands[i]) for i in best])
        best = best[np.isclose(second, second.max())]
    if len(best) > 1 and rng is not None:
        return int(rng.choice(best)), scores
    return int(best[0]), scores


# ---------------------------------------------------------------------------------------------
# Transcription
# ---------------------------------------------------------------------------------------------


class Transcriber:
    """pocketsphinx with its bundled US-English model: 16 kHz mono float32 waveform -> lower-case text."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise UserError(
                "the speech-recogniser baseline needs pocketsphinx: pip install 'plcli[bench]'"
            ) from None
        self.sample_rate = sample_rate
        self.decoder = Decoder(samprate=sample_rate, loglevel="FATAL")

    def __call__(self, wave: np.ndarray) -> str:
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected a mono (samples,) waveform, got shape {wave.shape}")
        pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2")  # the decoder takes 16-bit PCM
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


_worker: Transcriber | None = None


def _init_worker() -> None:
    global _worker
    _worker = Transcriber()


def _transcribe_file(path: str) -> tuple[str, float]:
    from plcli.data.audio import load_audio

    wave = load_audio(path, SAMPLE_RATE)
    t = time.perf_counter()
    text = _worker(wave)
    return text, time.perf_counter() - t


def transcribe_files(
    paths: Sequence[str], workers: int = 2, progress: Callable[[int, int], None] | None = None
) -> tuple[list[str], dict]:
    """Transcripts of the audio files (read and resampled to 16 kHz) with ``workers`` processes.

    Returns the transcripts in order and timing figures: ``decode_seconds`` (summed over workers,
    audio reading excluded) and ``clips_per_second``, the steady-state throughput of ``workers``
    parallel decoders, ``N / (decode_seconds / workers)``.
    """
    paths = [str(p) for p in paths]
    out, workers = map_decoders(_transcribe_file, _init_worker, paths, workers, progress)
    decode = sum(s for _, s in out)
    return [t for t, _ in out], {
        "decode_seconds": decode,
        "workers": workers,
        "clips_per_second": len(paths) / max(decode / workers, 1e-9),
    }


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def asr_predict(
    rows: Sequence,
    vocab,
    transcripts: Sequence[str] | None = None,
    scorer: str = DEFAULT_SCORER,
    seed: int = 0,
    workers: int = 2,
) -> dict:
    """Recogniser predictions as vocabulary indices.

    Args:
        rows: manifest rows (``.audio``, ``.candidates``), e.g. from ``plcli.data.validate.load_rows``.
        vocab: ``plcli.data.labels.Vocabulary``; the all-class prediction matches against its display texts.
        transcripts: one per row, when already transcribed (otherwise pocketsphinx runs here).

    Returns ``pred_all`` (N,) best vocabulary entry, ``pred_within`` (N,) best candidate (``-1`` for a
    row without candidates or whose best candidate is not in the vocabulary), ``transcripts`` and,
    when it transcribed, the timing figures of ``transcribe_files``.
    """
    timing: dict = {}
    if transcripts is None:
        transcripts, timing = transcribe_files([r.audio for r in rows], workers=workers)
    if len(transcripts) != len(rows):
        raise ValueError(f"{len(transcripts)} transcripts for {len(rows)} rows")
    rng = np.random.default_rng(seed)
    pred_all = np.empty(len(rows), dtype=np.int64)
    pred_within = np.full(len(rows), -1, dtype=np.int64)
    for i, (r, t) in enumerate(zip(rows, transcripts, strict=True)):
        pred_all[i], _ = match_candidates(t, vocab.display, scorer, rng)
        if r.candidates:
            j, _ = match_candidates(t, r.candidates, scorer, rng)
            k = vocab.index(r.candidates[j])
            pred_within[i] = -1 if k is None else k
    return {"pred_all": pred_all, "pred_within": pred_within, "transcripts": list(transcripts), **timing}
