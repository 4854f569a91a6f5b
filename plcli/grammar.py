"""pocketsphinx restricted to a grammar of each recording's own candidates.

Two users: the recogniser's vote on the training rows (``plcli.asr_prior``, on by default in
finetune and distill) and the benchmark's zero-training row 5b (``scripts/bench/grid.py``,
``scripts/bench/curve.py``, ``scripts/bench_grammar.py``). The benchmark's row 5 (``scripts/bench/asr.py``)
transcribes with pocketsphinx's general 3-gram language model and
fuzzy-matches the transcript afterwards. Here the decoder itself can only output one of the
recording's candidates: each recording gets a JSGF grammar ``public <s> = cand1 | ... | cand10;``
over the candidates' spoken forms, so the search compares the ten texts against the audio directly.
It needs no training and no examples of a message, so it handles never-heard messages as well as
frequent ones.

Spoken form (``spoken_text``). The bundled CMU dictionary is lower-case words with apostrophes
("don't", "i'm"), so a candidate is NFKC-normalised, case-folded, its accents removed, times
("5:30" -> "five thirty", "8:00" -> "eight o'clock", "7:05" -> "seven oh five"), ordinals ("2nd"),
decimals, ``%``, ``&`` and integers written out in words (``number_words``), every other
character but letters and inner apostrophes turned into a space.

Out-of-vocabulary words. pocketsphinx refuses a whole grammar that contains one word its
dictionary lacks ("Failed to parse JSGF"), so each word is looked up first. A missing word gets a
guessed pronunciation, espeak-ng's phonemes for it (``plcli.text.phonemize``, the letter-to-sound
rules plcli already ships) mapped to the model's ARPAbet phones (``espeak_to_arpabet``), added with
``Decoder.add_word``. A word with no usable guess is dropped from its alternative, and an
alternative left empty is dropped from the grammar. ``choose_with_grammar`` counts both.

Decoder settings (``DECODER_OPTIONS``): the bundled model with wider beams than the defaults and
no lattice best-path pass. With the defaults a fifth of the grammar searches reached no final state
(no result) and the lattice pass returned word prefixes that are not candidates; these settings
were chosen on 80 training recordings of a 40-phrase demo set. pocketsphinx's feature extraction
carries estimates from one utterance into the next, so a recording's result depended on the one
decoded before it (and so on the number of workers); it is re-initialised before every recording
(0.1 ms), which makes each decode the same as a fresh decoder's.

A recording for which the decoder returns nothing (or all of whose candidates are empty) gets the
index ``-1``; the benchmark replaces it with a seeded random candidate (``score_choices``), so
such a row counts as a fair guess rather than as "always the first candidate"; the vote leaves the
row without a vote.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from plcli.errors import UserError

SAMPLE_RATE = 16000
DECODER_OPTIONS = {"bestpath": False, "beam": 1e-70, "pbeam": 1e-70, "wbeam": 1e-50}
GRAMMAR = "grammar"  # the decoder's search name for the current recording's grammar

# ---------------------------------------------------------------------------------------------
# Spoken form of a text
# ---------------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}  # fmt: skip


def number_words(n: int) -> str:
    """``n`` (0 <= n < 10**12) in English words: 42 -> "forty two", 1905 -> "one thousand nine hundred
    five"."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 0 <= n < 10**12:
        raise ValueError(f"number_words takes an integer from 0 to 10**12 - 1, got {n!r}")
    n = int(n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for size, name in _SCALES:
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """``n`` as an English ordinal: 1 -> "first", 22 -> "twenty second", 40 -> "fortieth"."""
    words = number_words(n).split()
    last = words[-1]
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*words[:-1], last])


def time_words(hours: int, minutes: int) -> str:
    """A clock time as it is said: (5, 30) -> "five thirty", (8, 0) -> "eight o'clock", (7, 5) ->
    "seven oh five"."""
    if not (0 <= hours <= 24 and 0 <= minutes <= 59):
        raise ValueError(f"not a clock time: {hours}:{minutes:02d}")
    if minutes == 0:
        return f"{number_words(hours)} o'clock"
    return f"{number_words(hours)} {'oh ' if minutes < 10 else ''}{number_words(minutes)}"


_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_ORD = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DIGITS = re.compile(r"\d+")
_NOT_WORD = re.compile(r"[^a-z']+")


def _integer(m: re.Match) -> str:
    s = m.group(0)
    if len(s) > 12 or (len(s) > 1 and s[0] == "0"):  # a code or phone number: digit by digit
        return " " + " ".join(_ONES[int(c)] for c in s) + " "
    return f" {number_words(int(s))} "


def spoken_text(text: str) -> str:
    """``text`` as words the CMU dictionary spells: lower case, numbers and times in words, no
    punctuation but inner apostrophes. ``"Meet me at 5:30, OK?"`` -> ``"meet me at five thirty ok"``."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("&", " and ").replace("%", " percent ").replace("@", " at ")
    text = _TIME.sub(lambda m: f" {time_words(int(m[1]), int(m[2]))} " if int(m[1]) <= 24 and int(m[2]) < 60
                     else f" {m[1]} {m[2]} ", text)  # fmt: skip
    text = _ORD.sub(lambda m: f" {ordinal_words(int(m[1]))} " if len(m[1]) <= 12 else f" {m[1]} ", text)
    text = _THOUSANDS.sub("", text)
    text = _DECIMAL.sub(lambda m: f" {m[1]} point {' '.join(m[2])} ", text)
    text = re.sub(r"(\d)([a-z])", r"\1 \2", text)  # "8pm" -> "8 pm"
    text = _DIGITS.sub(_integer, text)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = (w.strip("'") for w in _NOT_WORD.sub(" ", text).split())
    return " ".join(w for w in words if w)


# ---------------------------------------------------------------------------------------------
# The grammar of a candidate set
# ---------------------------------------------------------------------------------------------


def grammar_alternatives(candidates: Sequence[str]) -> tuple[list[str], list[int]]:
    """(alternatives, owner): the distinct non-empty spoken forms of ``candidates`` in order, and
    for each alternative the index of the first candidate with that spoken form.

    Candidates whose spoken forms coincide share one alternative (the first of them is chosen when
    it is decoded); a candidate with no words (``"?!"``, ``""``) has none.
    """
    alternatives: list[str] = []
    owner: list[int] = []
    seen: set[str] = set()
    for i, text in enumerate(candidates):
        if not isinstance(text, str):
            raise ValueError(f"candidate {i} is not a string: {text!r}")
        s = spoken_text(text)
        if s and s not in seen:
            seen.add(s)
            alternatives.append(s)
            owner.append(i)
    return alternatives, owner


def jsgf_grammar(alternatives: Sequence[str], name: str = "candidates") -> str:
    """The JSGF grammar whose one public rule is any of ``alternatives`` (spoken forms).

    A word may hold lower-case letters and apostrophes only (``spoken_text``'s output), so nothing
    needs escaping; anything else raises ValueError, as does an empty list. pocketsphinx reads
    JSGF keywords ("public", "grammar") inside a rule as ordinary words.
    """
    if not alternatives:
        raise ValueError("a grammar needs at least one alternative")
    for alt in alternatives:
        if not alt or not all(re.fullmatch(r"[a-z']+", w) and w.strip("'") for w in alt.split(" ")):
            raise ValueError(f"not a spoken form (lower-case words separated by single spaces): {alt!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a JSGF grammar name: {name!r}")
    return f"#JSGF V1.0;\ngrammar {name};\npublic <s> = {' | '.join(alternatives)};\n"


# ---------------------------------------------------------------------------------------------
# Pronunciations for out-of-vocabulary words
# ---------------------------------------------------------------------------------------------

ARPABET = frozenset(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z "
    "ZH".split()
)
# espeak-ng's ASCII phoneme names (en-us) -> the acoustic model's phones. The r-coloured vowels
# carry their R, which is left out when espeak writes the r as a phoneme of its own next.
_ESPEAK = {
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "f": "F", "v": "V", "T": "TH",
    "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "m": "M", "n": "N", "N": "NG",
    "l": "L", "r": "R", "j": "Y", "w": "W", "tS": "CH", "dZ": "JH", "t#": "T", "t2": "T", "?": "T",
    "x": "K", "C": "HH", "n-": "AH N", "m-": "AH M", "l-": "AH L", "r-": "R",
    "a": "AE", "aa": "AE", "a#": "AH", "A:": "AA", "A": "AA", "0": "AA", "@": "AH", "@2": "AH",
    "@5": "AH", "@-": "AH", "@L": "AH L", "V": "AH", "E": "EH", "e": "EH", "3": "ER", "3:": "ER",
    "I": "IH", "I#": "IH", "I2": "IH", "i": "IY", "i:": "IY", "i@": "IY AH", "O": "AO", "O:": "AO",
    "O2": "AO", "U": "UH", "u": "UW", "u:": "UW", "oU": "OW", "o": "OW", "OI": "OY", "eI": "EY",
    "aI": "AY", "aU": "AW", "aI3": "AY ER", "aI@": "AY ER", "aU@": "AW ER", "A@": "AA R",
    "e@": "EH R", "i@3": "IH R", "o@": "AO R", "O@": "AO R", "0@": "AO R", "U@": "UH R",
}  # fmt: skip
_MARKS = re.compile(r"[',%=]")


def espeak_to_arpabet(phonemes: str) -> tuple[str, int]:
    """One word's espeak-ng ASCII phonemes (``_``-separated, stress marks allowed) as ARPAbet
    phones, and how many espeak symbols had no mapping (dropped). ``"h_@_l_'oU"`` -> ``"HH AH L OW"``."""
    symbols = [s for s in (_MARKS.sub("", p) for p in re.split(r"[_\s]+", phonemes)) if s and s != ";"]
    out: list[str] = []
    unknown = 0
    for i, sym in enumerate(symbols):
        phones = _ESPEAK.get(sym) or _ESPEAK.get(sym.rstrip("0123456789#-"))
        if phones is None:
            unknown += 1
            continue
        phones = phones.split()
        nxt = symbols[i + 1] if i + 1 < len(symbols) else ""
        if len(phones) > 1 and phones[-1] == "R" and nxt in ("r", "r-"):
            phones = phones[:-1]
        elif sym == "i@" and nxt in ("r", "r-"):
            phones = ["IY"]
        if phones == ["R"] and out and out[-1] in ("R", "ER"):
            continue
        out.extend(phones)
    return " ".join(out), unknown


def guess_pronunciation(word: str, voice: str = "en-us") -> str | None:
    """ARPAbet phones for ``word`` from the letter-to-sound rules of espeak-ng's ``voice`` (the
    chat's language, ``plcli.language.espeak_voice``), or None when espeak-ng is unavailable or
    gives nothing usable."""
    from plcli.text import phonemize

    try:
        phones, _ = espeak_to_arpabet(phonemize(word.replace("'", ""), voice))
    except Exception:
        return None
    return phones or None


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


class GrammarDecoder:
    """pocketsphinx (bundled US-English model) that decodes a waveform against a candidate set."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, voice: str = "en-us", **options):
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise UserError(
                "the grammar speech recogniser (the benchmark's row, --asr-prior pocketsphinx) needs "
                "pocketsphinx: pip install 'plcli[asr]'"
            ) from None
        self.sample_rate = sample_rate
        self.voice = voice  # espeak-ng's, for the pronunciations of words the dictionary lacks
        self.decoder = Decoder(samprate=sample_rate, loglevel="FATAL", **{**DECODER_OPTIONS, **options})
        self._added: dict[str, str | None] = {}  # OOV word -> guessed phones (None: no guess)

    def pronounceable(self, word: str) -> tuple[bool, bool]:
        """(in the bundled dictionary, usable now): an OOV word is added with a guessed pronunciation."""
        if word not in self._added and self.decoder.lookup_word(word) is not None:
            return True, True
        if word not in self._added:
            phones = guess_pronunciation(word, self.voice)
            if phones is not None:
                try:
                    self.decoder.add_word(word, phones, True)
                except RuntimeError:
                    phones = None
            self._added[word] = phones
        return False, self._added[word] is not None

    def choose(self, wave: np.ndarray, candidates: Sequence[str]) -> tuple[int, dict]:
        """Index of the candidate the grammar search decodes in ``wave`` (float32 mono in [-1, 1]),
        ``-1`` when it decodes nothing, and the recording's counts (``words``, ``oov``, ``dropped``
        words, ``oov_words``, ``empty_alternatives`` left without a word, ``grammar_errors``)."""
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected a mono (samples,) waveform, got shape {wave.shape}")
        alternatives, owner = grammar_alternatives(candidates)
        stats = _stats()
        kept, kept_owner = [], []
        for alt, i in zip(alternatives, owner, strict=True):
            words = []
            for w in alt.split():
                known, usable = self.pronounceable(w)
                stats["words"] += 1
                if not known:
                    stats["oov"] += 1
                    stats["oov_words"].append(w)
                if usable:
                    words.append(w)
                else:
                    stats["dropped"] += 1
            if words:
                kept.append(" ".join(words))
                kept_owner.append(i)
            else:
                stats["empty_alternatives"] += 1
        index_of: dict[str, int] = {}
        for alt, i in zip(kept, kept_owner, strict=True):
            index_of.setdefault(alt, i)  # two alternatives equal once OOV words are dropped
        if not index_of:
            return -1, stats
        d = self.decoder
        try:
            d.add_jsgf_string(GRAMMAR, jsgf_grammar(list(index_of)))
        except ValueError:  # pocketsphinx rejected the grammar (logged at its FATAL level only)
            stats["grammar_errors"] = 1
            return -1, stats
        d.activate_search(GRAMMAR)
        pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2")
        d.reinit_feat()  # forget the previous recording's noise and cepstral-mean estimates
        d.start_utt()
        d.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        text = " ".join(re.sub(r"\(\d+\)$", "", w) for w in (hyp.hypstr.split() if hyp is not None else []))
        return index_of.get(text, -1), stats


def unavailable() -> str | None:
    """None when the grammar search can run (pocketsphinx is importable), else why not."""
    import importlib.util

    try:
        found = importlib.util.find_spec("pocketsphinx") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else "pocketsphinx is not installed (pip install 'plcli[asr]')"


def map_decoders(fn: Callable, init: Callable[[], None], jobs: Sequence, workers: int,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list, int]:
    """``fn`` over ``jobs`` in order, with ``init`` run once per decoder process: in this process for
    one worker or fewer than 4 jobs, else in a "spawn" pool of ``workers``. Returns the results and
    the number of decoders that ran. Shared by the grammar search and the benchmark's free transcription."""
    out: list = []
    if workers <= 1 or len(jobs) < 4:
        init()
        for i, job in enumerate(jobs, 1):
            out.append(fn(job))
            if progress:
                progress(i, len(jobs))
        return out, 1
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers, initializer=init) as pool:
        for i, r in enumerate(pool.imap(fn, jobs, chunksize=8), 1):
            out.append(r)
            if progress:
                progress(i, len(jobs))
    return out, workers


def _stats() -> dict:
    return {"words": 0, "oov": 0, "dropped": 0, "oov_words": [], "empty_alternatives": 0, "grammar_errors": 0}


_worker: GrammarDecoder | None = None


def _init_worker(voice: str = "en-us") -> None:
    global _worker
    _worker = GrammarDecoder(voice=voice)


def _choose_file(job: tuple[str, list[str]]) -> tuple[int, dict, float]:
    from plcli.data.audio import load_audio

    path, candidates = job
    if not any(spoken_text(c) for c in candidates):
        return -1, _stats(), 0.0
    wave = load_audio(path, SAMPLE_RATE)
    t = time.perf_counter()
    index, stats = _worker.choose(wave, candidates)
    return index, stats, time.perf_counter() - t


def choose_with_grammar(
    paths: Sequence[str],
    candidates: Sequence[Sequence[str]],
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    voice: str = "en-us",
) -> tuple[list[int], dict]:
    """For each audio file (read and resampled to 16 kHz), the index of the candidate that
    pocketsphinx decodes with a grammar of that file's ``candidates``, ``-1`` when it decodes
    nothing (the caller then picks a seeded random candidate). One decoder per worker process;
    ``voice``: espeak-ng's, for guessing the pronunciation of words its dictionary lacks.

    Returns the indices in order and figures like ``asr.transcribe_files``: ``decode_seconds``
    (grammar set-up and search, summed over workers, audio reading excluded), ``workers``,
    ``clips_per_second`` (``decoded / (decode_seconds / workers)`` over the ``decoded`` recordings,
    those with a candidate to say; None when there are none), and the grammar's words:
    ``words`` (word tokens over every recording's alternatives), ``oov_words`` (tokens missing from
    the bundled dictionary), ``oov_rate``, ``oov_dropped`` (OOV tokens without a usable guessed
    pronunciation, left out), ``oov_types`` (the distinct OOV words, sorted, at most 50),
    ``empty_alternatives`` (alternatives left without a word), ``grammar_errors`` (grammars
    pocketsphinx rejected; index -1) and ``no_result`` (indices -1).
    """
    paths = [str(p) for p in paths]
    if len(candidates) != len(paths):
        raise ValueError(f"{len(candidates)} candidate sets for {len(paths)} recordings")
    jobs = [(p, list(cs)) for p, cs in zip(paths, candidates, strict=True)]
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")

    out, workers = map_decoders(_choose_file, partial(_init_worker, voice), jobs, workers, progress)
    decode = sum(s for _, _, s in out)
    decoded = sum(any(spoken_text(c) for c in cs) for cs in candidates)
    words = sum(st["words"] for _, st, _ in out)
    oov = sum(st["oov"] for _, st, _ in out)
    chosen = [i for i, _, _ in out]
    return chosen, {
        "decode_seconds": decode,
        "workers": workers,
        "decoded": decoded,
        "clips_per_second": decoded / max(decode / workers, 1e-9) if decoded else None,
        "words": words,
        "oov_words": oov,
        "oov_rate": oov / words if words else 0.0,
        "oov_dropped": sum(st["dropped"] for _, st, _ in out),
        "oov_types": sorted({w for _, st, _ in out for w in st["oov_words"]})[:50],
        "empty_alternatives": sum(st["empty_alternatives"] for _, st, _ in out),
        "grammar_errors": sum(st["grammar_errors"] for _, st, _ in out),
        "no_result": sum(i < 0 for i in chosen),
    }


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def score_choices(
    candidates: Sequence[Sequence[str]],
    labels: Sequence[str | None],
    chosen: Sequence[int],
    heard: set[str] | None = None,
    seed: int = 0,
    normalizer: Callable[[str], str] | None = None,
) -> dict:
    """Within-candidate accuracy of ``chosen`` (from ``choose_with_grammar``) over the rows that have
    candidates and a label.

    An index ``-1`` becomes a candidate drawn with ``numpy.random.default_rng(seed)`` (counted in
    ``random_fallbacks``). Labels and candidates are compared by ``normalizer`` (default: the label
    normaliser). With ``heard``, the normalised labels of the training recordings, the rows whose
    label is not in it are "never heard": ``accuracy_within_unseen`` (None without such rows) and
    ``accuracy_within_seen`` are reported with ``unseen_rows``.
    """
    from plcli.data.labels import LabelNormalizer

    if not len(candidates) == len(labels) == len(chosen):
        raise ValueError(f"{len(candidates)} candidate sets, {len(labels)} labels, {len(chosen)} choices")
    key = normalizer or LabelNormalizer()
    rng = np.random.default_rng(seed)
    hits = {"all": [0, 0], "seen": [0, 0], "unseen": [0, 0]}
    fallbacks = 0
    for cands, label, j in zip(candidates, labels, chosen, strict=True):
        if not cands or label is None:
            continue
        if not -1 <= j < len(cands):
            raise ValueError(f"choice {j} outside a candidate set of {len(cands)}")
        if j < 0:
            j = int(rng.integers(len(cands)))
            fallbacks += 1
        ok = int(key(cands[j]) == key(label))
        groups = ["all"] if heard is None else ["all", "seen" if key(label) in heard else "unseen"]
        for g in groups:
            hits[g][0] += ok
            hits[g][1] += 1

    def acc(g: str) -> float | None:
        return hits[g][0] / hits[g][1] if hits[g][1] else None

    out = {"accuracy_within": acc("all"), "rows": hits["all"][1], "random_fallbacks": fallbacks}
    if heard is not None:
        out.update(
            accuracy_within_seen=acc("seen"), accuracy_within_unseen=acc("unseen"),
            unseen_rows=hits["unseen"][1]
        )
    return out
