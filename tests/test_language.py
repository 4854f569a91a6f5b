"""The chat's language: detection from its texts, espeak-ng voices, the data.language setting."""

from __future__ import annotations

import pytest

from plcli.config import DataConfig
from plcli.errors import UserError
from plcli.language import detect_language, espeak_voice, resolve_language, row_texts, voice_of


@pytest.mark.parametrize("texts, code", [
    (["Привет, как дела?", "Я дома."], "ru"),
    (["Привіт, як справи?", "Я вдома, їжа є."], "uk"),
    (["Γεια σου!", "Τι κάνεις;"], "el"),
    (["مرحبا", "كيف حالك؟"], "ar"),
    (["नमस्ते", "कैसे हो?"], "hi"),
    (["안녕하세요", "내일 봐요"], "ko"),
    (["今日は雨ですね", "ありがとう"], "ja"),
    (["你好", "明天见"], "zh"),
    (["שלום", "מה שלומך?"], "he"),
    (["See you tomorrow!", "I'm at home."], "en"),
    (["Bis morgen!", "Ich bin zu Hause."], "de"),
    (["¡Hasta mañana!", "Estoy en casa."], "es"),
    (["Merci, à demain !", "Je suis à la maison."], "fr"),
    (["Ciao, a domani!", "Sono a casa."], "it"),
    (["Obrigado, até amanhã!", "Eu estou em casa."], "pt"),
    (["Tot morgen!", "Ik ben thuis."], "nl"),
    ([], "en"), (["ok", "12:30", None], "en"),  # nothing tells: English
])
def test_detect_language(texts, code):
    assert detect_language(texts) == code


def test_detect_language_of_the_demo_phrases():
    from plcli.demo.phrases import LANGUAGE_PHRASES

    for lang, phrases in LANGUAGE_PHRASES.items():
        assert detect_language(phrases) == lang


def test_espeak_voices():
    assert espeak_voice("en") == "en-us" and espeak_voice("zh") == "cmn" and espeak_voice("RU") == "ru"
    for code in ("de", "es", "el", "ar", "hi", "ko", "ja", "he", "uk"):
        assert espeak_voice(code) == code
    with pytest.raises(ValueError, match="ISO 639-1"):
        espeak_voice("rus")
    with pytest.raises(ValueError, match="no voice"):
        espeak_voice("xx")


def test_resolve_language_and_the_setting():
    logged = []
    assert resolve_language("auto", ["Я дома."], logged.append) == "ru" and "ru (detected" in logged[0]
    assert resolve_language("De", ["Я дома."]) == "de"  # a set language wins
    with pytest.raises(ValueError):
        resolve_language("xx", [])
    cfg = DataConfig(language="RU")
    cfg.validate()
    assert cfg.language == "ru"
    DataConfig().validate()  # auto
    assert voice_of("auto", ["Я дома."]) == "ru" and voice_of("en", ["Я дома."]) == "en-us"
    with pytest.raises(UserError, match="data.language"):
        DataConfig(language="klingon").validate()


def test_row_texts():
    from types import SimpleNamespace as Row

    rows = [Row(label="a", candidates=["a", "b"]), Row(label=None, candidates=[]),
            Row(label=None, candidates=["c"])]
    assert list(row_texts(rows)) == ["a", "a", "b", "c"]
