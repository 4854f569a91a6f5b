"""Tokenizers for the CTC head: espeak-ng phonemes from the wheel, and characters."""

from __future__ import annotations

import pytest

from plcli.text import BLANK, CharTokenizer, PhonemeTokenizer, Tokenizer, build_tokenizer, phonemize


def test_phonemize_reads_numbers_as_words():
    assert phonemize("at 5") == phonemize("at five")
    assert phonemize("See you tomorrow!") == phonemize("see you tomorrow")  # case and punctuation: no sound
    assert "_" in phonemize("tomorrow")  # phonemes separated, words by spaces
    assert len(phonemize("call me later").split()) == 3


def test_phoneme_tokenizer_roundtrip_and_unknowns():
    tok = build_tokenizer("phoneme", ["see you tomorrow", "call me later"])
    assert tok.symbols[0] == BLANK and tok.size == len(tok.symbols)
    ids = tok.encode("see you tomorrow")
    assert ids and 0 not in ids
    assert "".join(tok.decode(ids)) == phonemize("see you tomorrow").replace("_", "").replace(
        " ", ""
    ).replace("'", "").replace(",", "")
    tok.unknown = 0
    tok.encode("zebra quiz")  # phonemes the two fitted texts never had
    assert tok.unknown > 0
    again = Tokenizer.from_dict(tok.to_dict())
    assert isinstance(again, PhonemeTokenizer) and again.symbols == tok.symbols
    assert again.encode("call me later") == tok.encode("call me later")


def test_phoneme_word_boundaries():
    tok = build_tokenizer("phoneme", ["call me"], words=True)
    seq = tok.decode(tok.encode("call me"))
    assert seq.count("|") == 1 and seq[0] != "|" and seq[-1] != "|"


def test_char_tokenizer():
    tok = build_tokenizer("char", ["Café at 5:30, ok?"])
    assert "".join(tok.decode(tok.encode("Café at 5:30, ok?"))) == "cafe at 5 30 ok"
    assert "".join(CharTokenizer(tok.symbols[1:], spaces=False).split("a b")) == "ab"
    assert Tokenizer.from_dict(tok.to_dict()).encode("ok") == tok.encode("ok")
    # ids do not depend on the order of the fitted texts
    assert build_tokenizer("char", ["ab", "cd"]).symbols == build_tokenizer("char", ["cd", "ab"]).symbols


def test_bad_kinds():
    with pytest.raises(ValueError, match="tokenizer must be"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer.from_dict({"kind": "bpe"})
    with pytest.raises(ValueError, match="no voice"):
        phonemize("hello", "xx-nope")


@pytest.mark.parametrize("text, chars", [
    ("Привет, как дела?", "привет как дела"),
    ("Γεια σου, Σοφία!", "γεια σου σοφία"),  # NFKC keeps "ί" one letter: only Latin letters lose accents
    ("नमस्ते, दोस्त", "नमस्ते दोस्त"),  # the vowel signs and the virama are kept
    ("你好，明天见！", "你好 明天见"),
    ("こんにちは、ラーメン", "こんにちは ラーメン"),
    ("Die Straße, Größe 5", "die strasse grosse 5"),  # casefold: ß -> ss; Latin accents go
    ("Ｏｋ　１２", "ok 12"),  # NFKC: full-width forms
])
def test_char_tokens_cover_every_script(text, chars):
    tok = build_tokenizer("char", [text])
    assert "".join(tok.decode(tok.encode(text))) == "".join(CharTokenizer().split(text)) != ""
    assert "".join(CharTokenizer().split(text)) == chars
    assert tok.size == len(set(chars)) + 1


def test_char_tokens_of_text_without_letters():
    assert CharTokenizer().split("👍 ?! ❤️") == []
    assert build_tokenizer("char", ["👍", "!!"]).size == 1  # the blank alone: no CTC head can use it


def test_phoneme_tokens_in_another_voice():
    tok = build_tokenizer("phoneme", ["привет", "как дела"], voice="ru")
    assert tok.voice == "ru" and tok.size > 5
    assert Tokenizer.from_dict(tok.to_dict()).voice == "ru"
