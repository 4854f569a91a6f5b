"""Messy real-world audio: every kind of file is either handled or reported on one line with FILE:LINE.

Handled (documented in plcli/data/audio.py): any sample rate is resampled to 16 kHz, any number of
channels is averaged to mono, any PCM/float WAV, FLAC and OGG/Vorbis is read, clips are centre-cropped
or centre-padded to ``clip_seconds``; silence and a cut-off WAV are accepted with a warning.
Reported (exit 2): empty, unreadable, non-audio, NaN/Inf, truncated compressed streams, folders.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from plcli.cli import app
from plcli.config import FeatureConfig
from plcli.data.audio import load_audio
from plcli.data.features import FeatureCache
from plcli.data.validate import validate_manifests
from plcli.errors import DataError

SR = 16000
FREQ = 440.0


def tone(sr: int, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spec.argmax()])


def _write_handled(d, name):
    """Write one 'handled' case; returns (file name, expected duration in s, expected mono amplitude)."""
    if name.startswith("sr"):
        sr = int(name[2:])
        sf.write(d / f"{name}.wav", tone(sr, 1.0), sr, subtype="PCM_16")
        return f"{name}.wav", 1.0, 0.3
    if name == "stereo":
        # left = tone, right = silence: the mono mix-down is the average, half the amplitude
        sf.write(d / "stereo.wav", np.stack([tone(SR, 1.0), np.zeros(SR, np.float32)], 1), SR)
        return "stereo.wav", 1.0, 0.15
    if name == "6ch":
        gains = np.arange(1, 7) / 6  # mean gain 3.5 / 6
        sf.write(d / "6ch.wav", tone(SR, 1.0)[:, None] * gains[None, :], SR, subtype="PCM_24")
        return "6ch.wav", 1.0, 0.3 * 3.5 / 6
    if name in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"):
        sf.write(d / f"{name}.wav", tone(SR, 1.0), SR, subtype=name)
        return f"{name}.wav", 1.0, 0.3
    if name == "flac":
        sf.write(d / "a.flac", tone(44100, 1.0), 44100, format="FLAC", subtype="PCM_24")
        return "a.flac", 1.0, 0.3
    if name == "ogg":
        sf.write(d / "a.ogg", tone(48000, 1.0), 48000, format="OGG", subtype="VORBIS")
        return "a.ogg", 1.0, 0.3
    if name == "wav_named_ogg":  # content decides, not the extension
        sf.write(d / "really-wav.ogg", tone(SR, 1.0, amp=0.25), SR, format="WAV")
        return "really-wav.ogg", 1.0, 0.25
    if name == "short":
        sf.write(d / "short.wav", tone(SR, 0.05), SR)
        return "short.wav", 0.05, 0.3
    if name == "long":
        sf.write(d / "long.wav", tone(SR, 4.0), SR)
        return "long.wav", 4.0, 0.3
    raise AssertionError(name)


HANDLED = [
    "sr8000",
    "sr44100",
    "sr48000",
    "stereo",
    "6ch",
    "PCM_U8",
    "PCM_16",
    "PCM_24",
    "PCM_32",
    "FLOAT",
    "DOUBLE",
    "flac",
    "ogg",
    "wav_named_ogg",
    "short",
    "long",
]


def _manifest(d, audio, name="m.jsonl", pad_lines=1):
    """A manifest whose ``pad_lines``-th line references ``audio`` (earlier lines: a good clip)."""
    sf.write(d / "good.wav", tone(SR, 0.5), SR)
    lines = [
        json.dumps({"id": f"g{i}", "audio": "good.wav", "candidates": ["x", "y"]})
        for i in range(pad_lines - 1)
    ]
    lines.append(json.dumps({"id": "target", "audio": audio, "candidates": ["x", "y"]}))
    m = d / name
    m.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return m


def _validate(m):
    return CliRunner().invoke(app, ["validate", str(m)])


@pytest.mark.parametrize("case", HANDLED)
def test_handled_audio(tmp_path, case):
    f, seconds, amp = _write_handled(tmp_path, case)
    m = _manifest(tmp_path, f)
    res = _validate(m)
    assert res.exit_code == 0, res.output
    # the full signal, resampled and mixed down
    wave = load_audio(tmp_path / f, SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - seconds * SR) <= 2
    assert np.isfinite(wave).all()
    assert np.abs(wave).max() == pytest.approx(amp, abs=0.03)
    if seconds >= 0.5:
        assert peak_hz(wave) == pytest.approx(FREQ, abs=5)
    # fixed-length model input: centre-crop or centre-pad to clip_seconds
    fixed = load_audio(tmp_path / f, SR, max_seconds=1.0)
    assert fixed.shape == (SR,) and fixed.dtype == np.float32
    if seconds < 1.0:
        n = int(seconds * SR)
        left = (SR - n) // 2
        assert not fixed[: left - 1].any() and not fixed[left + n + 1 :].any()
        assert np.abs(fixed[left : left + n]).max() > 0.2


def test_handled_audio_through_feature_cache(tmp_path):
    """Every handled format goes through the training feature path to finite log-mels of one shape."""
    paths = [tmp_path / _write_handled(tmp_path, c)[0] for c in HANDLED]
    cfg = FeatureConfig(clip_seconds=1.0)
    cache = FeatureCache(tmp_path / "cache", cfg)
    keys, feats = cache.features(paths)
    assert feats.shape == (len(paths), cfg.n_mels, cfg.num_frames)
    assert np.isfinite(feats.astype(np.float32)).all()
    assert len(set(keys)) == len(paths) and cache.computed == len(paths)


def _truncated_wav(d):
    sf.write(d / "full.wav", tone(SR, 1.0), SR, subtype="PCM_16")
    data = (d / "full.wav").read_bytes()
    (d / "cut.wav").write_bytes(data[: 44 + SR])  # header + half of the 2-byte samples
    return "cut.wav"


def test_truncated_wav_is_read_up_to_its_end_with_a_warning(tmp_path):
    f = _truncated_wav(tmp_path)
    res = _validate(_manifest(tmp_path, f, pad_lines=3))
    assert res.exit_code == 0, res.output
    assert "truncated" in res.output and "m.jsonl:3" in res.output
    report = validate_manifests([tmp_path / "m.jsonl"])
    assert report.ok and report.durations["target"] == pytest.approx(0.5, abs=0.01)
    assert len(load_audio(tmp_path / f, SR)) == pytest.approx(SR // 2, abs=2)
    # a complete file gives no such warning
    report = validate_manifests([_manifest(tmp_path, "full.wav", name="ok.jsonl")])
    assert report.ok and not report.warnings


def test_silence_is_a_warning_not_an_error(tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(SR, np.float32), SR, subtype="PCM_16")
    res = _validate(_manifest(tmp_path, "quiet.wav", pad_lines=2))
    assert res.exit_code == 0, res.output
    assert "silent" in res.output and "m.jsonl:2" in res.output
    assert not load_audio(tmp_path / "quiet.wav", SR, 1.0).any()


def _write_bad(d, name):
    """Write one case that must be reported; returns (audio field, expected reason)."""
    if name == "zero_bytes":
        (d / "zero.wav").write_bytes(b"")
        return "zero.wav", "empty (0 bytes)"
    if name == "zero_frames":
        sf.write(d / "nothing.wav", np.zeros(0, np.float32), SR)
        return "nothing.wav", "empty (0 samples)"
    if name == "text_as_wav":
        (d / "notes.wav").write_text("these are meeting notes, not audio\n" * 20)
        return "notes.wav", "unreadable audio"
    if name == "jpeg_as_mp3":
        (d / "photo.mp3").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8)
        return "photo.mp3", "unreadable audio"
    if name == "header_only":
        sf.write(d / "full.wav", tone(SR, 1.0), SR)
        (d / "hdr.wav").write_bytes((d / "full.wav").read_bytes()[:30])
        return "hdr.wav", "unreadable audio"
    if name == "truncated_flac":
        sf.write(d / "full.flac", np.random.default_rng(0).uniform(-0.5, 0.5, 3 * SR), SR, format="FLAC")
        data = (d / "full.flac").read_bytes()
        (d / "cut.flac").write_bytes(data[: len(data) // 2])
        return "cut.flac", "truncated"
    if name == "truncated_ogg":
        sf.write(d / "full.ogg", tone(48000, 2.0), 48000, format="OGG", subtype="VORBIS")
        data = (d / "full.ogg").read_bytes()
        (d / "cut.ogg").write_bytes(data[: len(data) // 2])
        return "cut.ogg", "truncated"
    if name in ("nan", "inf"):
        x = tone(SR, 1.0)
        x[SR // 2] = np.nan if name == "nan" else -np.inf
        sf.write(d / f"{name}.wav", x, SR, subtype="FLOAT")
        return f"{name}.wav", "NaN or Inf"
    if name == "missing":
        return "nowhere/gone.wav", "not found"
    if name == "folder":
        (d / "clips.wav").mkdir()
        return "clips.wav", "is a folder"
    raise AssertionError(name)


BAD = [
    "zero_bytes",
    "zero_frames",
    "text_as_wav",
    "jpeg_as_mp3",
    "header_only",
    "truncated_flac",
    "truncated_ogg",
    "nan",
    "inf",
    "missing",
    "folder",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_audio_is_one_line_with_file_and_line(tmp_path, case):
    f, reason = _write_bad(tmp_path, case)
    m = _manifest(tmp_path, f, pad_lines=3)
    res = CliRunner().invoke(app, ["validate", str(m)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    hits = [line for line in res.stderr.splitlines() if f"{m}:3" in line]
    assert len(hits) == 1, res.stderr
    assert reason in hits[0] and f.split("/")[-1] in hits[0]
    # the library call names the file too (for code that loads audio directly)
    if case not in ("truncated_flac", "truncated_ogg"):
        with pytest.raises(DataError, match=f.split("/")[-1].replace(".", r"\.")):
            load_audio(tmp_path / f, SR, 1.0)


def test_skip_invalid_counts_add_up_with_bad_audio(tmp_path):
    """Every bad file in one manifest: each rejected once with its reason; accepted + rejected == input."""
    lines = []
    for case in BAD:
        sub = tmp_path / case
        sub.mkdir()
        f, _ = _write_bad(sub, case)
        lines.append(json.dumps({"id": case, "audio": f"{case}/{f}", "candidates": ["x"]}))
    good = [_write_handled(tmp_path, c)[0] for c in ("PCM_16", "ogg", "stereo")]
    lines += [json.dumps({"id": g, "audio": g, "candidates": ["x"]}) for g in good]
    m = tmp_path / "all.jsonl"
    m.write_text("\n".join(lines) + "\n")
    rej = tmp_path / "rejects.jsonl"
    res = CliRunner().invoke(
        app, ["validate", str(m), "--skip-invalid", "--rejects", str(rej), "--json", str(tmp_path / "s.json")]
    )
    assert res.exit_code == 0, res.output
    rejected = [json.loads(x) for x in rej.read_text().splitlines()]
    assert [r["line"] for r in rejected] == list(range(1, len(BAD) + 1))
    assert [r["row"]["id"] for r in rejected] == BAD and all(r["reasons"] for r in rejected)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["input_rows"] == len(lines) and s["accepted"] == len(good) and s["rejected"] == len(BAD)
    assert s["accepted"] + s["rejected"] == s["input_rows"]


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """A 10-minute 48 kHz stereo WAV (about 115 MB), written block by block."""
    p = tmp_path_factory.mktemp("long") / "meeting.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(p, "w", 48000, 2, subtype="PCM_16") as f:
        block = rng.normal(0, 0.1, (48000 * 10, 2)).astype(np.float32)
        for _ in range(60):
            f.write(block)
    return p


def test_ten_minute_file_reads_only_the_centred_window(ten_minutes, monkeypatch):
    reads = []
    real_read = sf.read

    def counting_read(*args, **kwargs):
        data, sr = real_read(*args, **kwargs)
        reads.append(len(data))
        return data, sr

    monkeypatch.setattr(sf, "read", counting_read)
    t0 = time.perf_counter()
    wave = load_audio(ten_minutes, SR, max_seconds=3.0)
    elapsed = time.perf_counter() - t0
    assert wave.shape == (3 * SR,) and wave.dtype == np.float32 and np.abs(wave).max() > 0
    assert sum(reads) <= 3 * 48000 + 64  # frames decoded: the window, not 28.8 M
    assert elapsed < 2.0
    cache = FeatureCache(ten_minutes.parent / "cache", FeatureConfig(clip_seconds=3.0))
    t0 = time.perf_counter()
    _, feats = cache.features([ten_minutes])
    assert feats.shape[0] == 1 and np.isfinite(feats.astype(np.float32)).all()
    assert time.perf_counter() - t0 < 5.0  # mostly hashing the 115 MB file


def test_ten_minute_file_validates_with_its_duration(ten_minutes):
    report = validate_manifests([_manifest(ten_minutes.parent, ten_minutes.name)])
    assert report.ok, report.problems
    assert report.durations["target"] == pytest.approx(600.0)
