"""The generated tiny Whisper model behaves like a converted checkpoint in faster-whisper/CTranslate2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tokenizers

ctranslate2 = pytest.importorskip("ctranslate2", minversion="4.7")
faster_whisper = pytest.importorskip("faster_whisper")

from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer  # noqa: E402
from whisper_tiny import LANGUAGES, build_tiny_whisper  # noqa: E402

TEXT = " Привет, как дела?"


def _load(folder, compute_type="float32"):
    return faster_whisper.WhisperModel(str(folder), device="cpu", compute_type=compute_type, cpu_threads=2)


def _encode(model, frames: int):
    features = np.random.default_rng(1).normal(size=(1, 80, frames)).astype(np.float32)
    return model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=True)


def _align(model, tokenizer, texts: list[str]):
    encoded = np.array(_encode(model, 300))
    repeated = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(encoded, len(texts), 0)))
    ids = [tokenizer.encode(text) for text in texts]
    results = model.model.align(repeated, tokenizer.sot_sequence + [tokenizer.no_timestamps], ids,
                                [150] * len(texts))
    return ids, results


@pytest.fixture(scope="module")
def model(tiny_whisper):
    return _load(tiny_whisper)


@pytest.fixture(scope="module")
def tokenizer(model):
    return Tokenizer(model.hf_tokenizer, True, task="transcribe", language="ru")


def test_folder_is_small_and_self_consistent(tiny_whisper):
    assert sorted(p.name for p in tiny_whisper.iterdir()) == [
        "config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    assert sum(p.stat().st_size for p in tiny_whisper.iterdir()) < 4_000_000
    vocabulary = json.loads((tiny_whisper / "vocabulary.json").read_text(encoding="utf-8"))
    hf = tokenizers.Tokenizer.from_file(str(tiny_whisper / "tokenizer.json"))
    assert [hf.id_to_token(i) for i in range(hf.get_vocab_size())] == vocabulary
    assert set(LANGUAGES) == set(_LANGUAGE_CODES) - {"yue"}


@pytest.mark.parametrize("compute_type", ["float32", "int8"])
def test_loads_as_multilingual_whisper(tiny_whisper, compute_type):
    loaded = _load(tiny_whisper, compute_type)
    assert loaded.model.is_multilingual and loaded.model.n_mels == 80
    assert loaded.model.num_languages == len(LANGUAGES)
    assert loaded.hf_tokenizer.token_to_id("<|endoftext|>") is not None
    assert _encode(loaded, 300).shape == [1, 150, 64]


def test_tokenizer_encodes_any_script(tokenizer):
    ids = tokenizer.encode(TEXT)
    assert tokenizer.sot_sequence == [tokenizer.sot, tokenizer.language, tokenizer.transcribe]
    assert tokenizer.language == tokenizer.tokenizer.token_to_id("<|ru|>")
    assert ids and max(ids) < tokenizer.eot
    for text in (TEXT, " 你好，世界", " Straße", " ok"):
        assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("frames", [3000, 300])
def test_encode_full_and_short_windows(model, frames):
    assert _encode(model, frames).shape == [1, frames // 2, 64]


def test_align_gives_one_probability_per_token(model, tokenizer):
    ids, results = _align(model, tokenizer, [TEXT, " да"])
    for token_ids, result in zip(ids, results):
        assert len(result.text_token_probs) == len(token_ids)
        assert all(0.0 < p <= 1.0 for p in result.text_token_probs)
        assert result.alignments


def test_detect_language_scores_the_language_tokens(model):
    (scores,) = model.model.detect_language(_encode(model, 3000))
    assert sorted(token for token, _ in scores) == sorted(f"<|{code}|>" for code in LANGUAGES)
    assert sum(p for _, p in scores) == pytest.approx(1.0, abs=1e-4)


def test_same_seed_same_model(tmp_path, tokenizer):
    def probs(seed, name):
        _, results = _align(_load(build_tiny_whisper(tmp_path / name, seed)), tokenizer, [TEXT])
        return results[0].text_token_probs

    first, again, other = probs(0, "a"), probs(0, "b"), probs(1, "c")
    assert first == again and first != other


def test_transcribe_runs_end_to_end(model):
    noise = np.random.default_rng(2).normal(0, 0.1, 16000).astype(np.float32)
    segments, info = model.transcribe(noise, language="ru", beam_size=1, temperature=0.0,
                                      word_timestamps=True)
    assert info.language == "ru"
    assert all(isinstance(s.text, str) for s in segments)
