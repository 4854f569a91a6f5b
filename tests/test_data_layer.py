"""Label normalisation, audio reading (mono, resampling, crop/pad) and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from plcli.config import FeatureConfig, LabelConfig
from plcli.data.audio import fix_length, load_audio
from plcli.data.features import FeatureCache
from plcli.data.labels import LabelNormalizer, Vocabulary
from plcli.errors import DataError


@pytest.mark.parametrize(
    "text,key",
    [
        ("See you tomorrow!", "see you tomorrow"),
        ("  see   you\ttomorrow ", "see you tomorrow"),
        ("ＯＫ", "ok"),  # full-width letters fold under NFKC
        ("«ok»...", "ok"),
        ("??", "??"),  # punctuation-only labels keep their text
        ("don't!", "don't"),  # inner punctuation stays
    ],
)
def test_normalizer(text, key):
    assert LabelNormalizer()(text) == key


def test_normalizer_is_configurable():
    n = LabelNormalizer(LabelConfig(lowercase=False, strip_punctuation=False))
    assert n("Hi!") == "Hi!"


def test_vocabulary_display_and_roundtrip(tmp_path):
    v = Vocabulary.build(["See you!", "see you", "See you!", "ok", "OK"])
    assert len(v) == 2 and v.keys == ["ok", "see you"]
    assert v.display[v.index("SEE YOU")] == "See you!"  # most frequent spelling
    assert v.indices(["ok", "Ok.", "unknown", "see you"]) == [0, 1]
    v.save(tmp_path / "vocab.json")
    w = Vocabulary.load(tmp_path / "vocab.json")
    assert w.keys == v.keys and w.display == v.display and w.index("ok!") == 0


def test_load_audio_stereo_resample_crop_pad(tmp_path):
    sr = 44100
    t = np.arange(sr * 2) / sr
    left = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, -left * 0 + 0.5 * left], axis=1), sr, subtype="PCM_24")
    w = load_audio(tmp_path / "st.wav", 16000)
    assert w.dtype == np.float32 and w.ndim == 1 and abs(len(w) - 32000) <= 1
    assert np.abs(w).max() == pytest.approx(0.75, abs=0.02)  # mean of the two channels
    crop = load_audio(tmp_path / "st.wav", 16000, max_seconds=0.5)
    assert crop.shape == (8000,)
    pad = load_audio(tmp_path / "st.wav", 16000, max_seconds=3.0)
    assert pad.shape == (48000,) and pad[:5000].max() == 0 and pad[-5000:].max() == 0


def test_fix_length():
    x = np.arange(10, dtype=np.float32)
    assert fix_length(x, 4).tolist() == [3, 4, 5, 6]
    assert fix_length(x, 14).tolist() == [0, 0] + list(range(10)) + [0, 0]


def test_load_audio_rejects_nan(tmp_path):
    sf.write(tmp_path / "n.wav", np.array([0, np.inf, 0], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="NaN or Inf"):
        load_audio(tmp_path / "n.wav", 16000)


def test_feature_cache_reuse_and_content_keys(tmp_path, tiny_data):
    manifest, _ = tiny_data
    paths = sorted((manifest.parent / "audio").glob("*.wav"))[:10]
    fc = FeatureConfig(clip_seconds=1.0)
    cache = FeatureCache(tmp_path / "c", fc)
    keys, feats = cache.features(paths)
    assert feats.shape == (10, 64, fc.num_frames) and isinstance(feats, np.memmap)
    assert cache.computed == 10 and cache.reused == 0
    again = FeatureCache(tmp_path / "c", fc)
    keys2, feats2 = again.features(paths)
    assert again.computed == 0 and again.reused == 10 and keys2 == keys
    np.testing.assert_array_equal(np.asarray(feats), np.asarray(feats2))
    # a copy under another name is the same content: still nothing to compute
    copy = tmp_path / "renamed.wav"
    copy.write_bytes(paths[0].read_bytes())
    third = FeatureCache(tmp_path / "c", fc)
    third.features([copy])
    assert third.computed == 0
    # other feature parameters: another key space
    other = FeatureCache(tmp_path / "c", FeatureConfig(clip_seconds=1.0, n_mels=40))
    _, f40 = other.features(paths[:2])
    assert other.computed == 2 and f40.shape[1] == 40


def test_feature_cache_recovers_from_corrupt_entry(tmp_path, tiny_data):
    manifest, _ = tiny_data
    paths = sorted((manifest.parent / "audio").glob("*.wav"))[:3]
    cache = FeatureCache(tmp_path / "c", FeatureConfig(clip_seconds=1.0))
    keys, _ = cache.features(paths)
    cache.item_path(keys[0]).write_bytes(b"truncated")
    again = FeatureCache(tmp_path / "c", FeatureConfig(clip_seconds=1.0))
    again.ensure(paths, keys)
    assert again.computed == 1


def test_speaker_grouped_sampler_orders_every_row_in_speaker_chunks():
    from plcli.data.datasets import SpeakerGroupedSampler

    speakers = [f"s{i % 5}" for i in range(100)] + [None] * 7  # 5 speakers of 20 rows, 7 rows without one
    s = SpeakerGroupedSampler(speakers, batch_size=16, speakers=2, seed=3)
    first, second = list(s), list(s)
    assert sorted(first) == sorted(second) == list(range(107)) and len(s) == 107
    assert first != second  # each epoch draws a new order
    assert list(SpeakerGroupedSampler(speakers, 16, 2, seed=3)) == first  # deterministic in (seed, epoch)
    # chunks of batch_size // speakers = 8 rows of one speaker: the order changes speaker seldom
    named = [speakers[i] for i in first if speakers[i] is not None]
    runs = 1 + sum(a != b for a, b in zip(named, named[1:]))
    assert runs <= 5 * 3 + 7  # 5 speakers x ceil(20 / 8) chunks, plus a break for each loose row
    batches = [first[k:k + 16] for k in range(0, 96, 16)]
    assert max(len({speakers[i] for i in b if speakers[i]}) for b in batches) <= 4
    # a random permutation of the same rows mixes about every speaker into every batch
    rand = torch.randperm(107, generator=torch.Generator().manual_seed(0)).tolist()
    assert min(len({speakers[i] for i in rand[k:k + 16] if speakers[i]}) for k in range(0, 96, 16)) >= 4
    with pytest.raises(ValueError):
        SpeakerGroupedSampler(speakers, batch_size=16, speakers=0)


def test_view_pairs_with_index_names_the_clip_of_the_first_view():
    from plcli.data.datasets import ViewPairs

    n, v = 10, 3
    views = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, v, 2, 4)).copy()
    idx = [7, 2, 2, 9, 0]
    x0, x1, i = ViewPairs(views, with_index=True).__getitems__(idx)
    assert i.tolist() == idx and x0[:, 0, 0].long().tolist() == idx and torch.equal(x0, x1)
    groups = np.array([0, 0, 1, 1, -1, -1, -1, 2, 2, -1])
    x0, x1, i = ViewPairs(views, groups, p_partner=1.0, with_index=True).__getitems__(idx)
    assert i.tolist() == idx and x0[:, 0, 0].long().tolist() == idx  # the index is x0's clip, not a partner's
    assert len(ViewPairs(views).__getitems__(idx)) == 2


def test_view_pairs_pseudo_positives_come_from_the_group():
    from plcli.data.datasets import ViewPairs

    n, v = 12, 3
    # every view of clip i is filled with i, so a returned view says which clip it came from
    views = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, v, 2, 4)).copy()
    groups = np.array([0, 0, 0, 1, 1, -1, 2, 3, 3, 3, 3, -1])  # group 2 has one clip: it keeps its own
    idx = list(range(n)) * 50
    torch.manual_seed(0)
    x0, x1 = ViewPairs(views).__getitems__(idx)  # default: both views of the same clip
    assert torch.equal(x0, x1)
    torch.manual_seed(0)
    x0, x1 = ViewPairs(views, groups, p_partner=1.0).__getitems__(idx)
    a, b = x0[:, 0, 0].long().numpy(), x1[:, 0, 0].long().numpy()
    assert (a == np.array(idx)).all()
    alone = np.isin(a, [5, 6, 11])
    assert (b[alone] == a[alone]).all()
    assert (b[~alone] != a[~alone]).all() and (groups[b[~alone]] == groups[a[~alone]]).all()
    assert set(b[a == 7]) == {8, 9, 10}  # every other member is drawn
    torch.manual_seed(0)
    x0, x1 = ViewPairs(views, groups, p_partner=0.5).__getitems__(idx)
    moved = (x0 != x1).any(-1).any(-1).numpy()
    assert 0.3 < moved[~alone].mean() < 0.7 and not moved[alone].any()
    with pytest.raises(ValueError):
        ViewPairs(views, groups, p_partner=1.5)
    with pytest.raises(ValueError):
        ViewPairs(views, groups[:5], p_partner=0.5)
