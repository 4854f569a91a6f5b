import math
import random

import lightning
import numpy as np
import pytest
import torch

from plcli.config import load_config
from plcli.data.augment import (
    AugmentConfig,
    Mixup,
    RandomResizeCrop,
    SpecAugment,
    SpecAugmentConfig,
    SpectrogramAugment,
    VocalTractWarp,
    WaveformAugment,
)
from plcli.errors import UserError

SR = 16000
N = 8000  # 0.5 s keeps the tests fast


def _tone(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _heavy() -> AugmentConfig:
    """Every transform on, so each call draws from every RNG the chain uses."""
    return AugmentConfig(
        p_shift=1.0,
        p_filter=1.0,
        p_clipping=1.0,
        p_noise=1.0,
        p_gain_transition=1.0,
        p_gain=1.0,
        p_polarity=0.5,
    )


def _run(cfg: AugmentConfig, seed: int, x: np.ndarray, n: int = 3) -> list[np.ndarray]:
    aug = WaveformAugment(cfg, SR, N)
    lightning.seed_everything(seed, workers=True, verbose=False)
    return [aug(x) for _ in range(n)]


# -- waveform chain ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 3000, N, 12000])
def test_output_length_and_dtype(length):
    aug = WaveformAugment(_heavy(), SR, N)
    out = aug(_tone(length))
    assert out.shape == (N,)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_float64_input_gives_float32():
    out = WaveformAugment(AugmentConfig(), SR, N)(_tone(N).astype(np.float64))
    assert out.dtype == np.float32


def test_seeded_runs_are_reproducible_and_seed_dependent():
    x = _tone(12000)
    a = _run(_heavy(), 7, x)
    b = _run(_heavy(), 7, x)
    c = _run(_heavy(), 8, x)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))
    assert not np.array_equal(a[0], a[1])  # successive calls differ


def test_input_not_modified():
    x = _tone(N)
    before = x.copy()
    WaveformAugment(_heavy(), SR, N)(x)
    np.testing.assert_array_equal(x, before)


def test_random_crop_and_pad_positions():
    nothing = AugmentConfig(p_shift=0, p_filter=0, p_clipping=0, p_noise=0, p_gain_transition=0, p_gain=0)
    aug = WaveformAugment(nothing, SR, N)
    np.random.seed(0)
    # padding: the short clip is copied intact at a random offset, zeros elsewhere
    short = np.arange(1, 1001, dtype=np.float32)
    offsets = set()
    for _ in range(20):
        out = aug(short)
        (nz,) = np.nonzero(out)
        offsets.add(int(nz[0]))
        np.testing.assert_array_equal(out[nz[0] : nz[0] + 1000], short)
        assert len(nz) == 1000
    assert len(offsets) > 10
    # cropping: a contiguous window of the long clip, at random starts
    long = np.arange(1, 3 * N + 1, dtype=np.float32)
    starts = set()
    for _ in range(20):
        out = aug(long)
        np.testing.assert_array_equal(np.diff(out), np.ones(N - 1, dtype=np.float32))
        starts.add(float(out[0]))
    assert len(starts) > 10
    # centred when random_crop is off
    centred = WaveformAugment(
        AugmentConfig(
            random_crop=False, p_shift=0, p_filter=0, p_clipping=0, p_noise=0, p_gain_transition=0, p_gain=0
        ),
        SR,
        N,
    )
    assert centred(long)[0] == N + 1
    assert np.nonzero(centred(short))[0][0] == (N - 1000) // 2


def test_noise_changes_the_clip_at_the_requested_snr():
    cfg = AugmentConfig(
        random_crop=False,
        p_shift=0,
        p_filter=0,
        p_clipping=0,
        p_gain_transition=0,
        p_gain=0,
        p_noise=1.0,
        color_noise_fraction=0.0,
        min_snr_db=10.0,
        max_snr_db=10.0,
    )
    x = _tone(N)
    random.seed(0)
    np.random.seed(0)
    out = WaveformAugment(cfg, SR, N)(x)
    snr = 10 * math.log10(np.mean(x**2) / np.mean((out - x) ** 2))
    assert abs(snr - 10.0) < 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(p_noise=1.5),
        dict(p_gain=-0.1),
        dict(min_snr_db=30.0, max_snr_db=5.0),
        dict(min_gain_db=6.0, max_gain_db=-6.0),
        dict(min_stretch_rate=1.2, max_stretch_rate=0.9),
        dict(min_lowpass_hz=5000.0, max_lowpass_hz=3000.0),
        dict(max_lowpass_hz=8000.0),  # at Nyquist for 16 kHz
        dict(max_bandpass_center_hz=5000.0),  # band edge above Nyquist
        dict(max_shift_seconds=-1.0),
        dict(min_snr_db=float("nan")),
    ],
)
def test_invalid_parameters_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        WaveformAugment(AugmentConfig(**kwargs), SR, N)


def test_invalid_lengths_and_inputs():
    with pytest.raises(ValueError):
        WaveformAugment(AugmentConfig(), SR, 0)
    with pytest.raises(ValueError):
        WaveformAugment(AugmentConfig(), 0, N)
    aug = WaveformAugment(AugmentConfig(), SR, N)
    with pytest.raises(ValueError):
        aug(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError):
        aug(np.zeros(100, dtype=np.int16))


def test_config_validation_gives_user_error(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text("min_snr_db: 30\nmax_snr_db: 5\n")
    with pytest.raises(UserError, match="min_snr_db"):
        load_config(AugmentConfig, path, {})
    with pytest.raises(UserError, match="rrc_min_scale"):
        load_config(AugmentConfig, None, {"spec.rrc_min_scale": 2.0, "spec.rrc_max_scale": 1.0})
    cfg = load_config(AugmentConfig, None, {"p_noise": 0.2, "spec.time_masks": 1})
    assert cfg.p_noise == 0.2 and cfg.spec.time_masks == 1
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert "spec" not in cfg.waveform_params() and cfg.waveform_params()["p_noise"] == 0.2


def test_optional_slow_transforms_run():
    cfg = AugmentConfig(p_time_stretch=1.0, p_pitch_shift=1.0)
    out = WaveformAugment(cfg, SR, N)(_tone(N))
    assert out.shape == (N,) and out.dtype == np.float32


# -- spectrogram side --------------------------------------------------------------------------


def _spec(b: int = 6, f: int = 20, t: int = 50) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(b, f, t) - 5.0


def test_specaugment_masks_exact_counts():
    x = _spec()
    fill = 123.0
    m = SpecAugment(
        freq_masks=1,
        freq_width=4,
        time_masks=1,
        time_width=7,
        p=1.0,
        fill=fill,
        min_freq_width=4,
        min_time_width=7,
    ).train()
    out = m(x)
    f, t = x.shape[1:]
    per_item = (out == fill).flatten(1).sum(1)
    assert (per_item == 4 * t + 7 * f - 4 * 7).all()
    # the masked cells are whole bins and whole frames
    masked = out == fill
    bins = masked.all(dim=2).sum(1)
    frames = masked.all(dim=1).sum(1)
    assert (bins == 4).all() and (frames == 7).all()
    torch.testing.assert_close(out[~masked], x[~masked])
    # positions differ between items
    assert len({tuple(masked[i].all(dim=1).nonzero().flatten().tolist()) for i in range(len(x))}) > 1


def test_specaugment_default_fill_is_item_mean_and_widths_bounded():
    x = _spec(b=32)
    m = SpecAugment(freq_masks=2, freq_width=3, time_masks=2, time_width=5, p=1.0).train()
    out = m(x)
    changed = out != x
    frames = changed.all(dim=1).sum(1)
    assert frames.max() <= 10 and frames.sum() > 0
    means = x.mean(dim=(1, 2))
    for i in range(len(x)):
        if changed[i].any():
            torch.testing.assert_close(out[i][changed[i]], means[i].expand(int(changed[i].sum())))


@pytest.mark.parametrize(
    "module",
    [
        SpecAugment(freq_masks=1, freq_width=4, time_masks=0, p=0.5, min_freq_width=4),
        Mixup(ratio=0.4, p=0.5),
        RandomResizeCrop(p=0.5),
        VocalTractWarp(max_warp=0.2, p=0.5),
    ],
)
def test_probability_applies_to_a_share_of_items(module):
    x = _spec(b=200)
    out = module.train()(x)
    touched = (out != x).flatten(1).any(1)
    assert 0.3 < touched.float().mean() < 0.7
    torch.testing.assert_close(out[~touched], x[~touched], atol=0, rtol=0)


def test_mixup_matches_formula_and_keeps_shape():
    x = _spec(b=8)
    torch.manual_seed(1)
    out = Mixup(ratio=0.4, p=1.0).train()(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    # each output is log((1-l) e^x_i + l e^x_j) for one j != i and a single l in (0, 0.4)
    for i in range(len(x)):
        found = False
        for j in range(len(x)):
            if j == i:
                continue
            # solve for l on one cell, check on all cells
            a, b, o = x[i].exp(), x[j].exp(), out[i].exp()
            lam = ((o - a) / (b - a)).median()
            if 0 < lam < 0.4 and torch.allclose(((1 - lam) * a + lam * b).log(), out[i], atol=1e-4):
                found = True
        assert found, f"item {i} is not a mixture with another item"


def test_mixup_db_scale():
    # in dB the same mixture must hold with 10*log10 instead of ln
    x = _spec(b=4) * 3
    torch.manual_seed(2)
    out_db = Mixup(ratio=0.4, p=1.0, log_scale=10 / math.log(10)).train()(x)
    torch.manual_seed(2)
    out_ln = Mixup(ratio=0.4, p=1.0).train()(x / (10 / math.log(10)))
    torch.testing.assert_close(out_db, out_ln * (10 / math.log(10)), atol=1e-4, rtol=1e-4)


def test_random_resize_crop_shape_and_effect():
    x = _spec()
    out = RandomResizeCrop(p=1.0).train()(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.allclose(out, x)
    ident = RandomResizeCrop(min_scale=1.0, max_scale=1.0, virtual_freq=1.0, virtual_time=1.0, p=1.0).train()(
        x
    )
    torch.testing.assert_close(ident, x, atol=1e-4, rtol=1e-4)


def test_random_resize_crop_zoom_out_fills_with_mean():
    # a crop twice as wide as the input, centred: the outer quarters are canvas (the item's mean)
    x = _spec(b=3, t=40)
    m = RandomResizeCrop(min_scale=2.0, max_scale=2.0, virtual_freq=1.0, virtual_time=2.0, p=1.0).train()
    out = m(x)
    means = x.mean(dim=(1, 2))
    torch.testing.assert_close(out[:, :, :9], means.view(3, 1, 1).expand(3, 20, 9), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :, -9:], means.view(3, 1, 1).expand(3, 20, 9), atol=1e-5, rtol=0)


def _vtlp_reference(x: torch.Tensor, alpha: float, f_min: float, f_max: float) -> torch.Tensor:
    """One item, band by band: the output band at centre frequency f reads the input at f / alpha,
    interpolated linearly on the mel scale between the two neighbouring bands (HTK scale, as torchaudio)."""
    import torchaudio.functional as AF

    n = x.shape[0]
    edges = AF.melscale_fbanks(257, f_min, f_max, n, 16000).argmax(0)  # peak bin of each filter
    m = torch.linspace(2595 * math.log10(1 + f_min / 700), 2595 * math.log10(1 + f_max / 700), n + 2)
    centres = (700 * (10 ** (m / 2595) - 1))[1:-1].double().numpy()
    # sanity: these are the filters' centres (each filter peaks within one FFT bin of its centre)
    assert np.abs(edges.numpy() * 8000 / 256 - centres).max() < 8000 / 256 + 1e-6
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    out = torch.empty_like(x)
    for band in range(n):
        src = centres[band] / alpha
        for t in range(x.shape[1]):
            out[band, t] = float(np.interp(mel(src), mel(centres), x[:, t].double().numpy()))
    return out


@pytest.mark.parametrize("alpha", [0.85, 1.0, 1.12])
def test_vocal_tract_warp_matches_a_band_by_band_reference(alpha):
    x = _spec(b=2, f=24, t=5)
    out = _warp_with(VocalTractWarp(f_min=40.0, f_max=7600.0, max_warp=0.2, p=1.0).train(), x, alpha)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(2):
        torch.testing.assert_close(out[i], _vtlp_reference(x[i], alpha, 40.0, 7600.0), atol=1e-4, rtol=1e-4)


def test_vocal_tract_warp_moves_a_formant_the_right_way():
    # one bright band: alpha > 1 (a shorter vocal tract) moves it up, alpha < 1 moves it down
    x = torch.zeros(1, 64, 3)
    x[0, 30] = 5.0
    m = VocalTractWarp(max_warp=0.3, p=1.0).train()
    low, high = (_centre_of_mass(_warp_with(m, x, a)) for a in (0.8, 1.25))
    assert low < 29 and high > 31
    assert torch.equal(m.eval()(x), x)


class _Pinned:
    """Stands in for the tensor that ``torch.empty`` returns, so that ``uniform_`` gives ``value``."""

    def __init__(self, t, value):
        self.t, self.value = t, value

    def uniform_(self, *_):
        return self.t.fill_(self.value)


def _warp_with(m: VocalTractWarp, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """``m(x)`` with every item's scale pinned to ``alpha`` (the module draws it with
    torch.empty().uniform_)."""
    real_empty = torch.empty
    torch.empty = lambda *a, **k: _Pinned(real_empty(*a, **k), alpha)
    try:
        return m(x)
    finally:
        torch.empty = real_empty


def _centre_of_mass(x: torch.Tensor) -> float:
    w = x[0, :, 0].clamp(min=0)
    return float((w * torch.arange(len(w))).sum() / w.sum())


def test_eval_mode_is_identity_and_train_is_not():
    x = _spec()
    cfg = SpecAugmentConfig(p_vtlp=1.0, p_mixup=1.0, p_rrc=1.0, p_specaugment=1.0)
    for m in (SpectrogramAugment(cfg), Mixup(p=1.0), RandomResizeCrop(p=1.0), SpecAugment(p=1.0),
              VocalTractWarp(p=1.0)):
        m.eval()
        assert m(x) is x
        m.train()
        assert not torch.equal(m(x), x)


def test_spectrogram_augment_keeps_shape_dtype_and_skips_disabled_steps():
    x = _spec().half()
    m = SpectrogramAugment(SpecAugmentConfig()).train()
    out = m(x)
    assert out.shape == x.shape and out.dtype == torch.float16 and torch.isfinite(out).all()
    off = SpectrogramAugment(SpecAugmentConfig(p_mixup=0.0, p_rrc=0.0, p_specaugment=0.0)).train()
    assert len(off.steps) == 0 and torch.equal(off(x), x)


def test_spectrogram_augment_is_seeded_by_torch():
    x = _spec()
    m = SpectrogramAugment(SpecAugmentConfig(p_mixup=1.0, p_rrc=1.0, p_specaugment=1.0)).train()
    torch.manual_seed(3)
    a = m(x)
    torch.manual_seed(3)
    b = m(x)
    torch.manual_seed(4)
    c = m(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Mixup(ratio=1.0),
        lambda: Mixup(p=2.0),
        lambda: Mixup(log_scale=0.0),
        lambda: RandomResizeCrop(min_scale=1.5, max_scale=1.0),
        lambda: RandomResizeCrop(virtual_time=0.5),
        lambda: SpecAugment(freq_masks=-1),
        lambda: SpecAugment(freq_width=2, min_freq_width=3),
        lambda: SpectrogramAugment(SpecAugmentConfig(rrc_min_scale=2.0, rrc_max_scale=1.0)),
        lambda: VocalTractWarp(max_warp=1.0),
        lambda: VocalTractWarp(f_min=8000.0, f_max=4000.0),
        lambda: VocalTractWarp(p=-0.1),
    ],
)
def test_spec_invalid_parameters(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_spectrogram_augment_on_cuda():
    x = _spec().cuda()
    out = SpectrogramAugment(SpecAugmentConfig(p_mixup=1.0, p_rrc=1.0, p_specaugment=1.0)).train()(x)
    assert out.device == x.device and out.shape == x.shape
