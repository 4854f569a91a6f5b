"""plcli demo-data: determinism and the structural promises, on a tiny generated set (espeak-ng from pip)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from plcli.data.chat import from_chat
from plcli.data.labels import LabelNormalizer
from plcli.demo import PHRASES, DemoConfig, generate_demo, simulate_chat, typed_variant, zipf_popularity
from plcli.errors import UserError

TINY = dict(phrases=40, train=60, test=16, train_speakers=4, test_speakers=2, engines="espeak", workers=1)
norm = LabelNormalizer()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def longest_zero_run(x: np.ndarray) -> int:
    z = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
    edges = np.diff(z)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if starts.size else 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict, DemoConfig]:
    cfg = DemoConfig(**TINY)
    out = tmp_path_factory.mktemp("demo") / "out"
    calls = []
    summary = generate_demo(out, cfg, progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (cfg.train + cfg.test, cfg.train + cfg.test)
    return out, summary, cfg


def test_same_seed_same_bytes_whatever_the_workers(demo, tmp_path):
    out, _, cfg = demo
    again = tmp_path / "again"
    generate_demo(again, DemoConfig(**{**TINY, "workers": 2}))
    a, b = digest(out), digest(again)
    assert len([k for k in a if k.endswith(".wav")]) == cfg.train + cfg.test
    assert a == b


def test_other_seed_other_data(demo, tmp_path):
    out, _, _ = demo
    other = tmp_path / "other"
    generate_demo(other, DemoConfig(**{**TINY, "seed": 1}))
    a, b = digest(out), digest(other)
    assert a.keys() == b.keys()
    for name in ("train.jsonl", "test.jsonl", "truth.jsonl", "chat/messages.csv"):
        assert a[name] != b[name]
    wavs = [k for k in a if k.endswith(".wav")]
    assert sum(a[k] != b[k] for k in wavs) == len(wavs)


def test_training_rows(demo):
    out, summary, cfg = demo
    rows = read_jsonl(out / "train.jsonl")
    truth = {r["id"]: r["label"] for r in read_jsonl(out / "truth.jsonl")}
    assert len(rows) == cfg.train and len({r["id"] for r in rows}) == cfg.train
    assert set(truth) == {r["id"] for r in rows}  # truth covers every training row, nothing else

    exact = [r for r in rows if "label" in r]
    assert len(exact) == round(cfg.exact_fraction * cfg.train) == summary["train_exact"]
    unlabelled = [r for r in rows if not r["candidates"]]
    assert len(unlabelled) == round(cfg.unlabelled_fraction * cfg.train) == summary["train_unlabelled"]
    assert all("label" not in r for r in unlabelled)

    phrases = {norm(p) for p in PHRASES[: cfg.phrases]}
    positions = set()
    for r in rows:
        assert norm(truth[r["id"]]) in phrases
        if not r["candidates"]:
            continue
        keys = [norm(c) for c in r["candidates"]]
        assert len(keys) == cfg.candidates and len(set(keys)) == cfg.candidates
        assert truth[r["id"]] in r["candidates"]  # the true label, exactly as one candidate is written
        positions.add(r["candidates"].index(truth[r["id"]]))
        if "label" in r:
            assert r["label"] == truth[r["id"]]
    assert len(positions) >= 3  # the true text is not always in the same place


def test_test_rows_and_speakers(demo):
    out, _, cfg = demo
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    assert len(test) == cfg.test
    for r in test:
        assert len({norm(c) for c in r["candidates"]}) == len(r["candidates"]) == cfg.candidates
        assert r["label"] in r["candidates"]
    assert {r["speaker"] for r in train}.isdisjoint({r["speaker"] for r in test})
    meta = json.loads((out / "meta.json").read_text())
    voice = {(s["engine"], s["voice"]) for s in meta["speakers"]["train"]}
    assert voice.isdisjoint((s["engine"], s["voice"]) for s in meta["speakers"]["test"])
    assert {r["speaker"] for r in test} <= {s["id"] for s in meta["speakers"]["test"]}


def test_audio_is_pcm_with_a_noise_floor(demo):
    out, _, cfg = demo
    for r in read_jsonl(out / "train.jsonl") + read_jsonl(out / "test.jsonl"):
        info = sf.info(out / r["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (cfg.sample_rate, 1, "PCM_16")
        x, _ = sf.read(out / r["audio"], dtype="int16")
        assert 0.3 < x.size / cfg.sample_rate < 6.0
        assert longest_zero_run(x) < 16, r["id"]  # never digital silence
        assert np.abs(x).max() > 1000  # speech, not just the floor


def test_chat_export_gives_back_the_candidates(demo):
    out, _, _ = demo
    chat = out / "chat"
    rows, _ = from_chat(chat / "voices.csv", chat / "messages.csv", chat / "labels.csv",
                        out_path=out / "from_chat.jsonl", key=LabelNormalizer())  # fmt: skip
    train = read_jsonl(out / "train.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in train]
    assert [r["candidates"] for r in rows] == [r["candidates"] for r in train]
    assert [r.get("label") for r in rows] == [r.get("label") for r in train]
    assert [r["audio"] for r in rows] == [r["audio"] for r in train]


def test_phrases_and_typed_variants_keep_their_labels():
    keys = [norm(p) for p in PHRASES]
    assert len(PHRASES) >= 40 and len(set(keys)) == len(PHRASES)
    assert all(2 <= len(p.split()) <= 6 for p in PHRASES)
    rng = np.random.default_rng(0)
    variants = {typed_variant(p, rng) for p in PHRASES for _ in range(10)}
    assert len(variants) > 3 * len(PHRASES)
    assert {norm(v) for v in variants} == set(keys)


@pytest.mark.parametrize("language", ["de", "es", "ru"])
def test_phrases_of_other_languages(language):
    from plcli.demo.phrases import LANGUAGE_PHRASES

    phrases = LANGUAGE_PHRASES[language]
    keys = [norm(p) for p in phrases]
    assert len(phrases) == 60 and len(set(keys)) == 60
    assert set(phrases).isdisjoint(PHRASES) and all(2 <= len(p.split()) <= 6 for p in phrases)
    assert sum(any(c.isdigit() for c in p) for p in phrases) >= 3  # numbers and times to read out
    rng = np.random.default_rng(0)
    variants = {typed_variant(p, rng) for p in phrases for _ in range(10)}
    assert len(variants) > 3 * len(phrases) and {norm(v) for v in variants} == set(keys)


def test_a_russian_demo_is_spoken_by_russian_voices(tmp_path):
    from plcli.demo.phrases import LANGUAGE_PHRASES

    out = tmp_path / "ru"
    summary = generate_demo(out,
                            DemoConfig(**{**TINY, "language": "ru", "train": 20, "test": 6, "phrases": 12}))
    meta = json.loads((out / "meta.json").read_text())
    assert summary["language"] == meta["language"] == meta["config"]["language"] == "ru"
    speakers = meta["speakers"]["train"] + meta["speakers"]["test"]
    assert {(s["engine"], s["accent"]) for s in speakers} == {("espeak", "ru")}
    truth = [r["label"] for r in read_jsonl(out / "truth.jsonl")]
    assert {norm(t) for t in truth} <= {norm(p) for p in LANGUAGE_PHRASES["ru"][:12]}
    for r in read_jsonl(out / "train.jsonl")[:4]:
        x, _ = sf.read(out / r["audio"], dtype="int16")
        assert 0.3 < x.size / 16000 < 6.0 and np.abs(x).max() > 1000
    with pytest.raises(UserError, match="English"):
        DemoConfig(language="ru", vocabulary="long-tail").validate()


def test_popularity_is_zipf_like():
    p = zipf_popularity(50, 1.0, np.random.default_rng(0))
    assert p.sum() == pytest.approx(1.0)
    s = np.sort(p)[::-1]
    assert s[0] / s[1] == pytest.approx(2.0) and s[0] / s[49] == pytest.approx(50.0)
    assert np.allclose(zipf_popularity(10, 0.0, np.random.default_rng(0)), 0.1)


def test_chat_candidates_hold_the_true_text():
    cfg = DemoConfig(candidates=5, phrases=12)
    phrases = list(PHRASES[:12])
    pop = zipf_popularity(12, 1.0, np.random.default_rng(1))
    msgs, voices = simulate_chat(300, 10, ["a", "b", "c"], phrases, pop, cfg, np.random.default_rng(2))
    assert len(voices) == 300 and sum(not v.candidates for v in voices) == 10
    times = [t for t, _, _ in msgs]
    assert times == sorted(times) and len(set(times)) == len(times)
    for v in voices:
        after = [x for t, x, _ in msgs if t > v.time]
        if not v.candidates:
            assert after == []  # sent after the last text
            continue
        assert v.time not in set(times)
        assert norm(v.label) == norm(phrases[v.phrase])
        assert v.candidates[v.position] == v.label and len(v.candidates) == 5


def test_missing_truth_rows_have_candidates_that_miss_their_message(tmp_path):
    cfg = DemoConfig(candidates=5, phrases=12, missing_truth=0.2)
    phrases = list(PHRASES[:12])
    pop = zipf_popularity(12, 1.0, np.random.default_rng(1))
    msgs, voices = simulate_chat(300, 10, ["a", "b", "c"], phrases, pop, cfg, np.random.default_rng(2))
    missing = [v for v in voices if v.candidates and not v.holds_truth]
    assert len(voices) == 300 and len(missing) == round(0.2 * 290)
    for v in missing:
        after = [x for t, x, _ in msgs if t > v.time]
        assert [norm(c) for c in v.candidates] == list(dict.fromkeys(map(norm, after)))[:5]  # next 5
        assert norm(v.label) == norm(phrases[v.phrase]) and norm(v.label) not in {
            norm(c) for c in v.candidates
        }
    # through generate_demo: exact labels only on typed rows; test rows miss it too; counts in meta.json
    summary = generate_demo(tmp_path / "d", DemoConfig(**{**TINY, "missing_truth": 0.25}))
    truth = {r["id"]: r["label"] for r in read_jsonl(tmp_path / "d" / "truth.jsonl")}
    train = read_jsonl(tmp_path / "d" / "train.jsonl")
    lacks = [
        r for r in train if r["candidates"] and norm(truth[r["id"]]) not in {norm(c) for c in r["candidates"]}
    ]
    assert len(lacks) == summary["train_missing_truth"] > 0
    assert all("label" not in r for r in lacks)
    test = read_jsonl(tmp_path / "d" / "test.jsonl")
    assert (
        sum(norm(r["label"]) not in {norm(c) for c in r["candidates"]} for r in test)
        == summary["test_missing_truth"]
        > 0
    )


def test_bad_options_and_foreign_folders(tmp_path):
    with pytest.raises(UserError, match="candidates"):
        DemoConfig(phrases=10, candidates=10).validate()
    with pytest.raises(UserError, match="degradation"):
        DemoConfig(degradation="clean=1,loud=2").validate()
    with pytest.raises(UserError, match="engine"):
        generate_demo(tmp_path / "x", DemoConfig(**{**TINY, "engines": "nosuchtts"}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_demo(foreign, DemoConfig(**TINY))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_rerun_replaces_an_earlier_demo(tmp_path):
    out = tmp_path / "d"
    small = {**TINY, "train": 12, "test": 4, "phrases": 12}
    generate_demo(out, DemoConfig(**small))
    generate_demo(out, DemoConfig(**{**small, "train": 8}))
    assert len(list((out / "audio").glob("*.wav"))) == 8 + 4
    assert len(read_jsonl(out / "train.jsonl")) == 8


def test_long_tail_vocabulary_shares_words_and_has_never_heard_test_messages(tmp_path):
    from plcli.demo.longtail import all_messages, long_tail_messages

    msgs = long_tail_messages(500, seed=0)
    assert len({norm(m) for m in msgs}) == 500
    assert long_tail_messages(500, seed=0) == msgs and long_tail_messages(500, seed=1) != msgs
    words = [set(norm(m).split()) for m in msgs]
    # messages share words, as chat messages do: most share one with another message
    shared = sum(any(w & v for j, v in enumerate(words) if j != i) for i, w in enumerate(words))
    assert shared >= 0.9 * len(msgs)
    with pytest.raises(UserError, match="has 653 messages"):
        DemoConfig(vocabulary="long-tail", phrases=len(all_messages()) + 1).validate()
    with pytest.raises(UserError, match="has 60 messages"):
        DemoConfig(phrases=61).validate()
    cfg = DemoConfig(**{**TINY, "vocabulary": "long-tail", "phrases": 500, "train": 40, "test": 12})
    generate_demo(tmp_path / "lt", cfg)
    truth = {r["id"]: norm(r["label"]) for r in read_jsonl(tmp_path / "lt" / "truth.jsonl")}
    train = read_jsonl(tmp_path / "lt" / "train.jsonl")
    test = read_jsonl(tmp_path / "lt" / "test.jsonl")
    heard = {truth[r["id"]] for r in train}
    said = {norm(r["label"]) for r in test}
    assert {norm(m) for m in msgs} >= heard | said
    # with 500 Zipf-popular messages and 40 training recordings, test messages go unheard in training
    assert said - heard
