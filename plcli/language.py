"""The chat's language: detected from its texts, or set (``data.language``), and its espeak-ng voice.

The language decides the voice of the phoneme tokens (``plcli.text.PhonemeTokenizer``) and of the
pronunciations guessed for words pocketsphinx does not know (``plcli.grammar``). Detection needs no
model: a script other than Latin names its language (Cyrillic Russian, or Ukrainian where its own
letters occur; Han Chinese, or Japanese where kana occur), and Latin-script texts vote with their
commonest words among a few languages. Codes are ISO 639-1.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

AUTO = "auto"
DEFAULT = "en"
# the first word of a letter's Unicode name -> the language its script most likely writes
SCRIPTS = {
    "CYRILLIC": "ru", "GREEK": "el", "ARABIC": "ar", "DEVANAGARI": "hi", "HANGUL": "ko", "HIRAGANA": "ja",
    "KATAKANA": "ja", "KATAKANA-HIRAGANA": "ja", "CJK": "zh", "HEBREW": "he", "BENGALI": "bn", "TAMIL": "ta",
    "TELUGU": "te", "GEORGIAN": "ka", "ARMENIAN": "hy", "THAI": "th",
}  # fmt: skip
UKRAINIAN = set("іїєґ")  # Cyrillic letters Russian does not use
KANA_SHARE = 0.1  # Han text with at least this share of kana among its Han and kana letters is Japanese
# the commonest words of chat texts in each Latin-script language (a word may vote for several)
STOPWORDS = {
    "en": "the you to and is it my me i i'm your are what at for on be can we this that have of not don't "
          "with so just will good thanks please see",
    "de": "ich du der die das und ist nicht ein eine mit zu bin bis wir es mich dich auf hast auch morgen "
          "gut ja nein bitte danke heute wo wann uns",
    "es": "el la los las que de y en un una es no por con me te estoy está qué hoy muy mañana gracias hola "
          "sí para nos",
    "fr": "le la les de et est je tu un une pas ne en que à pour c'est merci oui non ce avec nous vous "
          "demain bonjour suis",
    "it": "il lo la che di e è un una non sono per con mi ti ci ho hai grazie domani sì oggi bene ciao dove "
          "come",
    "pt": "o a os as que de e é um uma não em eu você com por para obrigado obrigada amanhã sim hoje tudo "
          "bem estou",
    "nl": "de het een en is ik je niet van dat op met te zijn we ben wat waar morgen bedankt ja nee goed "
          "vandaag jij",
}  # fmt: skip
_WORDS = {lang: set(words.split()) for lang, words in STOPWORDS.items()}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
# espeak-ng's voice for a language, where it is not the code itself
VOICES = {"en": "en-us", "zh": "cmn"}
MAX_TEXTS = 5000  # distinct texts read for detection (evenly spaced in sorted order)


def _script(c: str) -> str:
    if c.isascii():
        return "LATIN"
    return unicodedata.name(c, "UNKNOWN").split()[0]


def _sample(texts: Iterable[str | None]) -> list[str]:
    distinct = sorted({t for t in texts if t})
    return distinct[:: max(1, len(distinct) // MAX_TEXTS)]


def detect_language(texts: Iterable[str | None]) -> str:
    """The ISO 639-1 code of the language ``texts`` are most likely written in (``DEFAULT`` when
    nothing tells): the script of most of their letters, then, for Latin, a stopword vote."""
    texts = _sample(texts)
    scripts = Counter(_script(c) for t in texts for c in t if c.isalpha())
    top = max(scripts, key=lambda s: (scripts[s], s == "LATIN"), default="LATIN")
    lang = SCRIPTS.get(top)
    if lang in ("zh", "ja"):
        kana = sum(n for s, n in scripts.items() if SCRIPTS.get(s) == "ja")
        return "ja" if kana >= KANA_SHARE * (kana + scripts["CJK"]) else "zh"
    if lang == "ru" and any(c in UKRAINIAN for t in texts for c in t.casefold()):
        return "uk"
    if lang is not None:
        return lang
    return _latin_vote(texts) if top == "LATIN" else DEFAULT


def _latin_vote(texts: list[str]) -> str:
    votes = Counter()
    for t in texts:
        for w in _WORD.findall(unicodedata.normalize("NFKC", t).casefold().replace("\u2019", "'")):
            votes.update(lang for lang, words in _WORDS.items() if w in words)
    return max(_WORDS, key=lambda lang: votes[lang]) if votes else DEFAULT


def espeak_voice(language: str) -> str:
    """espeak-ng's voice for ISO 639-1 ``language`` ("en" -> "en-us"); ValueError for a code that is
    not one or that espeak-ng has no voice for."""
    code = str(language).strip().lower()
    if not re.fullmatch(r"[a-z]{2}", code):
        raise ValueError(f"not an ISO 639-1 language code (two letters, e.g. en, de, ru): {language!r}")
    voice = VOICES.get(code, code)
    from plcli.text import phonemize

    try:
        phonemize("", voice)  # loads the voice: espeak-ng says whether it has it
    except ValueError:
        raise ValueError(f"espeak-ng has no voice for the language {code!r}") from None
    return voice


def resolve_language(setting: str, texts: Iterable[str | None], log: Callable | None = None) -> str:
    """``setting`` (a language code, checked, or "auto": detected from ``texts``) as an ISO 639-1 code."""
    code = str(setting).strip().lower()
    if code == AUTO:
        texts = list(texts)
        code = detect_language(texts)
        how = f"detected from {len(set(texts))} message texts; --language sets it"
    else:
        how = "as set"
    espeak_voice(code)
    if log is not None:
        log(f"language: {code} ({how})")
    return code


def voice_of(setting: str, texts: Iterable[str | None] = ()) -> str:
    """espeak-ng's voice of the language ``setting`` ("auto": detected from ``texts``, silently)."""
    return espeak_voice(resolve_language(setting, texts))


def row_texts(rows) -> Iterator[str]:
    """Every label and candidate text of ``rows`` (manifest rows)."""
    for r in rows:
        if r.label:
            yield r.label
        yield from r.candidates or ()
