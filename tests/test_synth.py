"""Speech engines, speakers and degradations behind plcli demo-data."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from plcli.demo import degrade as dg
from plcli.demo.synth import (
    ENGINE_CLASSES,
    ESPEAK_VARIANTS,
    EspeakEngine,
    Speaker,
    Synthesizer,
    engine_voices,
    fast_len,
    make_speakers,
    resample,
    resolve_engines,
)


@pytest.fixture(scope="module")
def espeak():
    engine = EspeakEngine()
    yield engine
    engine.close()


def test_espeak_is_deterministic_whatever_came_before(espeak):
    a = Speaker("a", "espeak", "f2", "en-gb-scotland", pitch_range=60, word_gap=1)
    b = Speaker("b", "espeak", "klatt4", "en-us")
    reed = Speaker("r", "espeak", "Reed", "en-gb-x-gbcwmd")  # SpeechPlayer backend: noise from libc rand()
    libc = ctypes.CDLL(None)
    for spk in (a, reed):
        first, sr = espeak.synthesize("See you tomorrow!", spk, 170, 40, 123)
        espeak.synthesize("Where did you park?", b, 200, 70, 5)
        libc.rand()
        again, _ = espeak.synthesize("See you tomorrow!", spk, 170, 40, 123)
        assert sr == 22050 and first.dtype == np.float32 and first.size > 0.4 * sr
        np.testing.assert_array_equal(first, again)
    slower, _ = espeak.synthesize("See you tomorrow!", a, 120, 40, 123)
    first, _ = espeak.synthesize("See you tomorrow!", a, 170, 40, 123)
    assert slower.size > 1.2 * first.size
    other_voice, _ = espeak.synthesize("See you tomorrow!", b, 170, 40, 123)
    assert other_voice.size != first.size or not np.array_equal(other_voice, first)


def test_espeak_accents_and_variants_exist(espeak):
    for accent in ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029"):
        x, _ = espeak.synthesize("ok", Speaker("s", "espeak", "m3", accent), 175, 50, 1)
        assert np.abs(x).max() > 0.05
    for variant in ESPEAK_VARIANTS[::9]:
        x, _ = espeak.synthesize("ok", Speaker("s", "espeak", variant, "en-us"), 175, 50, 1)
        assert np.abs(x).max() > 0.05, variant
    with pytest.raises(ValueError, match="no voice variant"):
        espeak.synthesize("ok", Speaker("s", "espeak", "no-such-variant", "en-us"), 175, 50, 1)


def test_synthesizer_jitters_and_resamples():
    synth = Synthesizer(16000)
    spk = Speaker("s", "espeak", "m3", "en-us", rate=170)
    a = synth.speak("Can you pick me up?", spk, np.random.default_rng(0))
    b = synth.speak("Can you pick me up?", spk, np.random.default_rng(0))
    c = synth.speak("Can you pick me up?", spk, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.abs(a).max() == pytest.approx(1.0)
    assert 0.5 < a.size / 16000 < 3.0
    assert a.size != c.size or not np.allclose(a, c)
    small = synth.speak(
        "Can you pick me up?",
        Speaker("s", "espeak", "m3", "en-us", rate=170, vtl=1.1),
        np.random.default_rng(0),
    )
    assert small.size < 0.95 * a.size  # a shorter vocal tract: faster and higher
    synth.close()


@pytest.mark.parametrize("name", [n for n in ENGINE_CLASSES if n != "espeak"])
def test_installed_debian_engines(name):
    cls = ENGINE_CLASSES[name]
    if not cls.available():
        pytest.skip(f"{name} is not installed (scripts/install_voices.sh)")
    engine = cls()
    voice = engine.voices()[0]
    spk = Speaker("s", name, voice)
    x, sr = engine.synthesize("See you tomorrow", spk, 175, 50, 1)
    y, _ = engine.synthesize("See you tomorrow", spk, 175, 50, 1)
    engine.close()
    assert sr >= 8000 and 0.4 < x.size / sr < 4 and np.abs(x).max() > 0.01
    np.testing.assert_array_equal(x, y)


def test_engine_selection():
    assert "espeak" in resolve_engines("auto")
    assert resolve_engines(" espeak , espeak") == ["espeak"]
    with pytest.raises(ValueError, match="unknown"):
        resolve_engines("espeak,sam")
    assert engine_voices(["espeak"]) == [("espeak", v) for v in ESPEAK_VARIANTS]


def test_engines_of_other_languages(monkeypatch, tmp_path):
    import shutil

    from plcli.demo import synth

    assert resolve_engines("auto", "ru")[0] == "espeak" and resolve_engines("espeak", "de") == ["espeak"]
    # the English-only engines never speak another language, installed or not
    assert engine_voices(["flite", "festival", "pico"], "de") == []
    assert not any(synth.speaks(n, "es") for n in ("flite", "festival", "pico"))
    # MBROLA: the databases of the language that are installed
    (tmp_path / "de2").mkdir()
    (tmp_path / "de2" / "de2").write_text("")
    (tmp_path / "us1").write_text("")
    monkeypatch.setattr(synth.MbrolaEngine, "roots", (str(tmp_path),))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert engine_voices(["espeak", "mbrola"], "de")[-1:] == [("mbrola", "mb-de2")]
    assert engine_voices(["mbrola"], "en") == [("mbrola", "mb-us1")]
    assert synth.speaks("mbrola", "de") and not synth.speaks("mbrola", "ru")
    with pytest.raises(ValueError, match="no voice for the language 'ru'"):
        resolve_engines("espeak,mbrola", "ru")


@pytest.mark.parametrize("accent", ["de", "es", "es-419", "ru"])
def test_espeak_speaks_the_accents_of_other_languages(espeak, accent):
    from plcli.demo.synth import LANGUAGE_ACCENTS

    assert any(accent in a for a in LANGUAGE_ACCENTS.values())
    x, _ = espeak.synthesize("12", Speaker("s", "espeak", "m3", accent), 175, 50, 1)
    assert np.abs(x).max() > 0.05
    train, _ = make_speakers(engine_voices(["espeak"]), 6, 0, seed=0, accents=(accent,))
    assert {s.accent for s in train} == {accent}


def test_speakers_keep_test_voices_apart():
    voices = engine_voices(["espeak"]) + [("flite", v) for v in ("kal16", "awb", "rms", "slt")]
    train, test = make_speakers(voices, 30, 10, seed=3, holdout=0.25)
    assert len(train) == 30 and len(test) == 10
    assert len({s.id for s in train + test}) == 40
    assert {(s.engine, s.voice) for s in train}.isdisjoint({(s.engine, s.voice) for s in test})
    assert len({s.voice for s in train}) == 30  # cycles through voices before reusing one
    assert all(s.accent for s in train if s.engine == "espeak") and all(
        not s.accent for s in train if s.engine == "flite"
    )
    assert make_speakers(voices, 30, 10, seed=3) == (train, test)
    assert make_speakers(voices, 30, 10, seed=4) != (train, test)
    with pytest.raises(ValueError, match="two voices"):
        make_speakers([("espeak", "m1")], 3, 2, seed=0)
    shared_train, shared_test = make_speakers([("espeak", "m1")], 3, 2, seed=0, holdout=0.0)
    assert {s.voice for s in shared_train + shared_test} == {"m1"}
    assert len({s.id for s in shared_train + shared_test}) == 5


def test_resample_and_fft_sizes():
    assert [fast_len(n) for n in (1, 7, 11, 97, 1001)] == [1, 8, 12, 100, 1024]
    sr = 22050
    t = np.arange(sr) / sr
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), sr, 16000)
    assert y.size == 16000 and int(np.abs(np.fft.rfft(y)).argmax()) == 440
    alias = resample(np.sin(2 * np.pi * 7000 * t), sr, 8000)  # above the new Nyquist: removed
    assert np.abs(alias[400:-400]).max() < 1e-3


# ---------------------------------------------------------------------------------------------
# degradations
# ---------------------------------------------------------------------------------------------


def band_power(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / sr)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_coloured_noise_and_snr():
    rng = np.random.default_rng(0)
    white, pink, brown = (dg.coloured_noise(16001, e, rng) for e in (0.0, 1.0, 2.0))
    for n in (white, pink, brown):
        assert n.dtype == np.float32 and dg.rms(n) == pytest.approx(1.0, rel=1e-4)
    tilt = [band_power(n, 16000, 100, 400) / band_power(n, 16000, 3200, 6400) for n in (white, pink, brown)]
    assert tilt[0] < 0.3 < tilt[1] < tilt[2]  # per-band power ~ bandwidth / f**exponent
    speech = np.sin(np.linspace(0, 300, 16001)).astype(np.float32)
    mixed = dg.mix_at_snr(speech, white, 12.0)
    snr = 10 * np.log10(np.mean(speech**2) / np.mean((mixed - speech) ** 2))
    assert snr == pytest.approx(12.0, abs=0.01)
    with pytest.raises(ValueError, match="shape"):
        dg.mix_at_snr(speech, white[:10], 0.0)


def test_codecs_and_channels():
    rng = np.random.default_rng(0)
    x = 0.5 * dg.coloured_noise(16000, 1.0, rng) / 4
    fine, coarse = dg.mulaw(x, 8), dg.mulaw(x, 4)
    assert dg.rms(fine - x) < dg.rms(coarse - x) < dg.rms(x)
    band = dg.bandpass(dg.coloured_noise(16000, 0.0, rng), 16000)
    assert band_power(band, 16000, 300, 3400) > 0.85 * band_power(band, 16000, 0, 8000)
    for kind in dg.CHANNELS:
        y = dg.channel(x, 16000, kind, rng)
        assert y.shape == x.shape and y.dtype == np.float32
        if kind != "none":
            assert band_power(y, 16000, 4200, 8000) < 1e-3 * band_power(y, 16000, 0, 4000)  # 8 kHz on the way
    sparse = dg.spectral_codec(x, keep=0.2, step_db=3.0)
    assert sparse.shape == x.shape and 0 < dg.rms(sparse - x) < dg.rms(x)
    assert dg.rms(dg.spectral_codec(x, keep=1.0, step_db=1e-6) - x) < 1e-4  # lossless at full rate
    rir = dg.synthetic_rir(16000, 0.5, 3.0, rng)
    assert rir[0] == 1.0 and np.abs(rir[-800:]).max() < 0.01 * np.abs(rir[1:800]).max()
    assert dg.reverberate(x, rir, 800).size == x.size + 800


def test_degrader_levels():
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    calls = []

    def babble(n, r):
        calls.append(n)
        return dg.coloured_noise(n, 0.5, r)

    for level in dg.LEVELS:
        deg = dg.Degrader(f"{level}=1")
        for i in range(12):
            y, info = deg(speech, np.random.default_rng(i), babble=babble)
            assert info["level"] == level and y.dtype == np.float32
            assert np.all(np.abs(y) <= 1.0) and y.size > speech.size
            pcm = np.round(y * 32768).astype(np.int16)
            assert (pcm == 0).mean() < 0.2 and np.abs(pcm[:50]).max() > 0  # a floor, even in the padding
            if level == "clean":
                assert set(info) == {"level", "floor_db"}
            if level == "hard":
                assert "noise" in info
    assert calls  # babble drawn from the callback when picked
    y1, i1 = dg.Degrader()(speech, np.random.default_rng(7))
    y2, i2 = dg.Degrader()(speech, np.random.default_rng(7))
    np.testing.assert_array_equal(y1, y2)
    assert i1 == i2 and dg.describe(i1).startswith(i1["level"] + ":")
    _ = rng


def test_mix_and_constructor_checks():
    assert dg.parse_mix("clean=1, hard=3") == {"clean": 0.25, "hard": 0.75}
    for bad in ("loud=1", "clean", "clean=-1", "clean=0", "clean=x"):
        with pytest.raises(ValueError):
            dg.parse_mix(bad)
    with pytest.raises(ValueError, match="noise floor"):
        dg.Degrader(floor_db=(-40.0, -20.0))
    with pytest.raises(ValueError, match="peak_db"):
        dg.Degrader(peak_db=(-3.0, 2.0))
    with pytest.raises(ValueError, match="snr_db"):
        dg.LevelSpec(1.0, (20.0, 10.0), {"white": 1.0}, 0.0, (0.2, 0.3), {"none": 1.0}, 0.0, (0.0, 0.0))
    with pytest.raises(ValueError, match="channels"):
        dg.LevelSpec(1.0, (0.0, 10.0), {"white": 1.0}, 0.0, (0.2, 0.3), {"fax": 1.0}, 0.0, (0.0, 0.0))
    with pytest.raises(ValueError, match="bits"):
        dg.mulaw(np.zeros(4, np.float32), 1)


def test_espeak_accent_unknown(espeak):
    with pytest.raises(ValueError, match="no voice"):
        espeak.synthesize("ok", Speaker("s", "espeak", "m3", "xx-nowhere"), 175, 50, 1)
