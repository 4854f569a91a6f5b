"""Benchmark row 5b: spoken forms and number words, the JSGF grammar of a candidate set, guessed
pronunciations, scoring, and real grammar decodes of a few generated clips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from plcli.grammar import (
    ARPABET,
    espeak_to_arpabet,
    grammar_alternatives,
    jsgf_grammar,
    number_words,
    ordinal_words,
    score_choices,
    spoken_text,
    time_words,
)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (115, "one hundred fifteen"),
        (1000, "one thousand"),
        (2024, "two thousand twenty four"),
        (1_000_001, "one million one"),
        (3_400_000_000, "three billion four hundred million"),
    ],
)
def test_number_words(n, words):
    assert number_words(n) == words


def test_number_words_rejects_what_it_cannot_say():
    for bad in (-1, 10**12, 2.5, "3", True):
        with pytest.raises(ValueError):
            number_words(bad)


def test_ordinals_and_times():
    assert [ordinal_words(n) for n in (1, 2, 3, 5, 8, 9, 12, 20, 22, 40, 100)] == [
        "first", "second", "third", "fifth", "eighth", "ninth", "twelfth", "twentieth", "twenty second",
        "fortieth", "one hundredth",
    ]  # fmt: skip
    assert time_words(5, 30) == "five thirty"
    assert time_words(8, 0) == "eight o'clock"
    assert time_words(7, 5) == "seven oh five"
    assert time_words(12, 45) == "twelve forty five"
    with pytest.raises(ValueError):
        time_words(7, 60)


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Meet me at 5:30, OK?", "meet me at five thirty ok"),
        ("Dinner at 8:00?", "dinner at eight o'clock"),
        ("Let's meet at 7:30.", "let's meet at seven thirty"),
        ("8 pm", "eight pm"),
        ("8pm!!", "eight pm"),
        ("I'll be there in 15 minutes.", "i'll be there in fifteen minutes"),
        ("Don't forget the 2nd!", "don't forget the second"),
        ("Don\u2019t", "don't"),
        ("'Cause it's 2.5%", "cause it's two point five percent"),
        ("1,000 thanks", "one thousand thanks"),
        ("Call 0800", "call zero eight zero zero"),
        ("Café & crème", "cafe and creme"),
        ("  See   you\ttomorrow!  ", "see you tomorrow"),
        ("?!", ""),
        ("", ""),
    ],
)
def test_spoken_text(text, spoken):
    assert spoken_text(text) == spoken


def test_grammar_of_a_candidate_set():
    cands = ["See you tomorrow!", "see you tomorrow", "?!", "", "Meet at 5:30", "public grammar"]
    alts, owner = grammar_alternatives(cands)
    assert alts == ["see you tomorrow", "meet at five thirty", "public grammar"]
    assert owner == [0, 4, 5]  # duplicates share the first candidate's alternative; empty texts have none
    g = jsgf_grammar(alts)
    assert g == (
        "#JSGF V1.0;\ngrammar candidates;\n"
        "public <s> = see you tomorrow | meet at five thirty | public grammar;\n"
    )
    assert grammar_alternatives(["", "..."]) == ([], [])
    for bad in ([], ["ok | no"], ["ok;"], ["Ok"], ["two  spaces"], ["'"], [""]):
        with pytest.raises(ValueError):
            jsgf_grammar(bad)
    with pytest.raises(ValueError):
        jsgf_grammar(["ok"], name="two words")
    with pytest.raises(ValueError):
        grammar_alternatives(["ok", None])


def test_espeak_to_arpabet_table():
    assert espeak_to_arpabet("h_@_l_'oU") == ("HH AH L OW", 0)
    assert espeak_to_arpabet("s_'e@_r_@") == ("S EH R AH", 0)  # the r is written once
    assert espeak_to_arpabet("z_'A@") == ("Z AA R", 0)
    assert espeak_to_arpabet("z_'i@_r_oU") == ("Z IY R OW", 0)
    assert espeak_to_arpabet("b_I#_w_'I_l_d_3_r-_I_N") == ("B IH W IH L D ER IH NG", 0)
    assert espeak_to_arpabet("p_,i:_;_'E_m") == ("P IY EH M", 0)
    assert espeak_to_arpabet("Q_a") == ("AE", 1)  # an unknown symbol is dropped and counted
    assert espeak_to_arpabet("") == ("", 0)


def test_guessed_pronunciations_use_the_models_phones():
    pytest.importorskip("espeakng_loader")
    from plcli.grammar import guess_pronunciation

    for word in ("zorblat", "omar", "siobhan", "anna's", "xiaoming"):
        phones = guess_pronunciation(word)
        assert phones and set(phones.split()) <= ARPABET, (word, phones)
    assert guess_pronunciation("zorblat").startswith("Z ")
    # the chat's language reads the word: German's "ei" is English's "eye"
    assert guess_pronunciation("mein", "de").split()[1] == "AY" != guess_pronunciation("mein").split()[1]


def test_score_choices_fallback_and_unseen_split():
    cands = [["ok", "no"], ["Yes!", "no"], ["a", "b", "c"], [], ["x", "y"]]
    labels = ["ok", "yes", "c", "ok", None]
    r = score_choices(cands, labels, [0, 0, 1, -1, -1], heard={"ok", "yes"})
    assert r["rows"] == 3 and r["random_fallbacks"] == 0  # no candidates or no label: not scored
    assert r["accuracy_within"] == pytest.approx(2 / 3)
    assert r["accuracy_within_seen"] == 1.0 and r["accuracy_within_unseen"] == 0.0 and r["unseen_rows"] == 1
    assert "accuracy_within_unseen" not in score_choices(cands, labels, [0, 0, 1, -1, -1])
    assert score_choices(cands[:2], labels[:2], [0, 0], heard={"ok", "yes"})["accuracy_within_unseen"] is None
    # -1 becomes a seeded random candidate: about a third right over many three-way rows
    many = score_choices([["a", "b", "c"]] * 300, ["a"] * 300, [-1] * 300, seed=3)
    assert many["random_fallbacks"] == 300 and 0.25 < many["accuracy_within"] < 0.42
    assert many == score_choices([["a", "b", "c"]] * 300, ["a"] * 300, [-1] * 300, seed=3)
    with pytest.raises(ValueError):
        score_choices(cands, labels, [0])
    with pytest.raises(ValueError):
        score_choices([["a"]], ["a"], [1])


def test_choose_with_grammar_argument_checks():
    from plcli.grammar import choose_with_grammar

    with pytest.raises(ValueError):
        choose_with_grammar(["a.wav"], [])
    with pytest.raises(ValueError):
        choose_with_grammar(["a.wav"], [["ok"]], workers=0)


def test_choose_with_grammar_nothing_to_say():
    pytest.importorskip("pocketsphinx")  # the decoder is built before the candidates are read
    from plcli.grammar import choose_with_grammar

    chosen, timing = choose_with_grammar(["never-read.wav"], [["?!", ""]], workers=1)
    assert chosen == [-1] and timing["no_result"] == 1 and timing["words"] == 0
    assert timing["decoded"] == 0 and timing["clips_per_second"] is None  # nothing decoded: no speed


# ---------------------------------------------------------------------------------------------
# Real decodes (pocketsphinx, espeak-ng speech)
# ---------------------------------------------------------------------------------------------

SAID = ["See you tomorrow!", "Call Zorblat at 5:30.", "Good night, sleep well."]
OTHERS = ["On my way.", "I'm at home.", "Thanks so much!", "Where are you?", "Happy birthday!"]


@pytest.fixture(scope="module")
def spoken_clips(tmp_path_factory):
    pytest.importorskip("pocketsphinx")
    from plcli.demo.synth import Speaker, Synthesizer

    root = tmp_path_factory.mktemp("grammar")
    synth = Synthesizer(16000)
    spk = Speaker("s", "espeak", "m3", "en-us", rate=160)
    paths = []
    for i, text in enumerate(SAID):
        wave = synth.speak(text, spk, np.random.default_rng(i))
        wave = np.concatenate([np.zeros(3200, np.float32), 0.8 * wave, np.zeros(3200, np.float32)])
        paths.append(root / f"clip{i}.wav")
        sf.write(paths[-1], wave, 16000, subtype="PCM_16")
    return paths


def test_choose_with_grammar_decodes_generated_speech(spoken_clips):
    from plcli.grammar import choose_with_grammar

    candidates = [[*OTHERS[:i], said, *OTHERS[i:]] for i, said in enumerate(SAID)]
    chosen, timing = choose_with_grammar(spoken_clips, candidates, workers=1)
    assert len(chosen) == 3 and all(-1 <= j < len(c) for j, c in zip(chosen, candidates, strict=True))
    assert sum(j == i for i, j in enumerate(chosen)) >= 2, chosen  # clean speech: mostly right
    assert timing["workers"] == 1 and timing["decode_seconds"] > 0 and timing["clips_per_second"] > 0
    # "zorblat" is not in the CMU dictionary: counted, and decoded with a guessed pronunciation
    assert timing["oov_types"] == ["zorblat"] and timing["oov_words"] == 1 and timing["oov_dropped"] == 0
    assert timing["words"] == sum(len(spoken_text(c).split()) for cs in candidates for c in cs)
    assert math.isclose(timing["oov_rate"], 1 / timing["words"])
    assert timing["grammar_errors"] == 0 and timing["no_result"] == sum(j < 0 for j in chosen)
    json.dumps(timing)  # the grid caches it as JSON


def test_oov_word_without_a_pronunciation_is_dropped(spoken_clips, monkeypatch):
    from plcli import grammar
    from plcli.data.audio import load_audio

    monkeypatch.setattr(grammar, "guess_pronunciation", lambda word, voice="en-us": None)
    dec = grammar.GrammarDecoder()
    wave = load_audio(spoken_clips[0], 16000)
    j, stats = dec.choose(wave, ["Zorblat", "Zorblat quux", *SAID[:1], "On my way"])
    assert stats["oov"] == 3 and stats["dropped"] == 3 and stats["empty_alternatives"] == 2
    assert sorted(set(stats["oov_words"])) == ["quux", "zorblat"]
    assert j in (-1, 2, 3)  # only the pronounceable candidates can be decoded
    j, stats = dec.choose(wave, ["zorblat"])
    assert j == -1 and stats["empty_alternatives"] == 1
    with pytest.raises(ValueError):
        dec.choose(np.zeros((2, 100), np.float32), ["ok"])


def test_choose_with_grammar_in_worker_processes(spoken_clips):
    """Two spawned workers give the same choices as one decoder in this process."""
    from plcli.grammar import choose_with_grammar

    paths = list(spoken_clips) * 2
    candidates = [[*OTHERS, s] for s in SAID] * 2
    one, _ = choose_with_grammar(paths, candidates, workers=1)
    two, timing = choose_with_grammar(paths, candidates, workers=2)
    assert one == two and timing["workers"] == 2
