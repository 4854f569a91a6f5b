"""Text to token sequences for the CTC head: characters, or phonemes from espeak-ng.

A message's written form and its sound disagree most where a closed-set classifier never has to
care: digits and times ("at 5:30" is said "at five thirty"), abbreviations, spelling. espeak-ng,
which plcli already has through the ``espeakng-loader`` wheel, turns text into its phonemes
offline with its own number and abbreviation rules, so a CTC head over phonemes scores a candidate
text by how it sounds, in the chat's language (``voice``, ``plcli.language.espeak_voice``). The
character tokenizer is the simpler alternative: the letters of any script, digits, apostrophe and
space.

Both map index 0 to the CTC blank, build their inventory from the texts they are fitted on, and
serialise to a dict of primitives (``to_dict``/``from_dict``) for checkpoints. A symbol outside the
inventory is dropped from the sequence and counted in ``unknown``, so a never-seen candidate text
still gets a score.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

BLANK = "<blank>"
KINDS = ("phoneme", "char")
_STRESS = re.compile(r"[',%=]")  # espeak-ng stress and syllable marks: not sounds of their own


class Tokenizer:
    """Text -> token ids, with index 0 the CTC blank."""

    kind = ""

    def __init__(self, symbols: Iterable[str] = ()):
        self._set_symbols(symbols)
        self.unknown = 0  # symbols dropped by encode because the inventory lacks them

    def _set_symbols(self, symbols: Iterable[str]) -> None:
        self.symbols = [BLANK, *[s for s in dict.fromkeys(symbols) if s != BLANK]]
        self._index = {s: i for i, s in enumerate(self.symbols)}

    def split(self, text: str) -> list[str]:
        """The text's symbols (before mapping to ids)."""
        raise NotImplementedError

    def fit(self, texts: Iterable[str]) -> Tokenizer:
        """Build the inventory from ``texts`` (sorted, so the ids do not depend on their order)."""
        self._set_symbols(sorted({s for t in texts for s in self.split(t)}))
        return self

    def encode(self, text: str) -> list[int]:
        ids = []
        for s in self.split(text):
            i = self._index.get(s)
            if i is None:
                self.unknown += 1
            else:
                ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.symbols[i] for i in ids]

    @property
    def size(self) -> int:
        """Number of output units a CTC head needs (blank included)."""
        return len(self.symbols)

    def _kwargs(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "symbols": self.symbols[1:], **self._kwargs()}

    @staticmethod
    def from_dict(d: dict) -> Tokenizer:
        kind = d.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r} (known: {', '.join(KINDS)})")
        cls = PhonemeTokenizer if kind == "phoneme" else CharTokenizer
        return cls(d.get("symbols", ()), **{k: v for k, v in d.items() if k not in ("kind", "symbols")})


def build_tokenizer(kind: str, texts: Iterable[str] = (), voice: str = "en-us", **kwargs) -> Tokenizer:
    """A ``kind`` ("phoneme" or "char") tokenizer fitted on ``texts``; phonemes in espeak-ng's ``voice``.
    Its ``size`` is 1 (the blank alone) when the texts have no such token."""
    if kind not in KINDS:
        raise ValueError(f"tokenizer must be one of {', '.join(KINDS)}, got {kind!r}")
    tok = PhonemeTokenizer(voice=voice, **kwargs) if kind == "phoneme" else CharTokenizer(**kwargs)
    return tok.fit(texts)


class CharTokenizer(Tokenizer):
    """The letters of any script, digits and apostrophes; runs of anything else become one space.

    The text is NFKC-normalised and case-folded ("Straße" -> "strasse"). Latin letters lose their
    accents ("café" -> "cafe", as English chats type them either way); a combining mark that follows
    a letter of another script is kept as a symbol of its own (Devanagari's vowel signs are the
    vowels). ``spaces=False`` drops the word boundaries (a pause is not always there to hear).
    """

    kind = "char"

    def __init__(self, symbols: Iterable[str] = (), spaces: bool = True):
        self.spaces = bool(spaces)
        super().__init__(symbols)

    def _kwargs(self) -> dict:
        return {"spaces": self.spaces}

    def split(self, text: str) -> list[str]:
        out: list[str] = []
        marks = False  # whether a combining mark here belongs to a kept letter of a non-Latin script
        for c in unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold()):
            cat = unicodedata.category(c)
            if cat[0] == "L" and _latin(c):
                out.extend(d for d in unicodedata.normalize("NFKD", c) if not unicodedata.combining(d))
                marks = False
            elif cat[0] == "L" or (cat[0] == "M" and marks):
                out.append(c)
                marks = True
            elif cat[0] == "M" or cat == "Cf":  # a Latin accent; zero-width joiners, soft hyphens
                continue
            elif cat == "Nd" or c in "'\u2019":
                out.append("'" if c == "\u2019" else c)
                marks = False
            else:
                if out and out[-1] != " ":
                    out.append(" ")
                marks = False
        while out and out[-1] == " ":
            out.pop()
        return [c for c in out if self.spaces or c != " "]


@lru_cache(maxsize=4096)
def _latin(c: str) -> bool:
    return c < "\u0250" or unicodedata.name(c, "").startswith("LATIN")


class PhonemeTokenizer(Tokenizer):
    """espeak-ng's phonemes of the text (its ASCII names, stress marks removed), in ``voice``.

    ``words=True`` adds a word-boundary symbol ``|`` between words.
    """

    kind = "phoneme"

    def __init__(self, symbols: Iterable[str] = (), voice: str = "en-us", words: bool = False):
        self.voice = str(voice)
        self.words = bool(words)
        super().__init__(symbols)

    def _kwargs(self) -> dict:
        return {"voice": self.voice, "words": self.words}

    def split(self, text: str) -> list[str]:
        out: list[str] = []
        for word in phonemize(text, self.voice).split():
            ph = [p for p in (_STRESS.sub("", q) for q in word.split("_")) if p]
            if ph:
                if out and self.words:
                    out.append("|")
                out.extend(ph)
        return out


_LOCK = threading.Lock()
_LIB: dict = {}


def _espeak(voice: str):
    """libespeak-ng from the wheel, loaded once per process and set to ``voice``."""
    lib = _LIB.get("lib")
    if lib is None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        data = os.fsencode(espeakng_loader.get_data_path())
        # AUDIO_OUTPUT_SYNCHRONOUS, no buffer, espeakINITIALIZE_DONT_EXIT (report, do not exit())
        if lib.espeak_Initialize(2, 0, data, 0x8000) <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data at {data!r})")
        _LIB.update(lib=lib, voice=None)
    if _LIB["voice"] != voice:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        _LIB["voice"] = voice
    return lib


@lru_cache(maxsize=65536)
def phonemize(text: str, voice: str = "en-us") -> str:
    """espeak-ng's ASCII phonemes of ``text``: words separated by spaces, phonemes by ``_``."""
    mode = ord("_") << 8  # bits 8-23: the separator between phoneme names
    clauses = []
    with _LOCK:  # the library keeps global state
        lib = _espeak(voice)
        buf = ctypes.c_char_p(text.encode("utf-8"))
        while buf.value:
            r = lib.espeak_TextToPhonemes(ctypes.byref(buf), 0, mode)  # one clause, advances buf
            if r:
                clauses.append(r.decode("utf-8", "replace"))
    return " ".join(c.strip() for c in clauses if c.strip())
