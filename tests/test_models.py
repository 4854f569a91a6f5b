import pytest
import torch

from plcli.models import ENCODERS, MLPHead, ProjectionHead, build_encoder, count_parameters
from plcli.models.encoders import TCResNet


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("frames", [1, 37, 151])
def test_encoder_shapes_any_length(name, frames):
    enc = build_encoder(name, n_mels=40)
    x = torch.randn(3, 40, frames)
    out = enc(x)
    assert out.shape == (3, enc.embed_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    enc.eval()
    with torch.no_grad():
        assert enc(x[:1]).shape == (1, enc.embed_dim)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_backward_reaches_first_layer(name):
    enc = build_encoder(name, n_mels=16)
    enc(torch.randn(4, 16, 50)).sum().backward()
    first = next(p for p in enc.parameters() if p.ndim > 1)
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_param_counts_ordered():
    counts = {name: count_parameters(build_encoder(name, n_mels=64)) for name in ENCODERS}
    assert counts["tcresnet-small"] * 2 <= counts["tcresnet"] < counts["tcresnet-wide"]
    assert 70_000 <= counts["tcresnet"] <= 160_000
    assert counts["tcresnet-wide"] >= 5 * counts["tcresnet"]


@pytest.mark.parametrize("name", list(ENCODERS))
def test_utterance_norm_removes_gain(name):
    # a gain change adds a constant to a log-mel; the default input norm must cancel it
    enc = build_encoder(name, n_mels=32).eval()
    x = torch.randn(2, 32, 60)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc(x + 3.0), atol=1e-4, rtol=1e-4)


def test_cmn_removes_each_bins_offset_and_utterance_norm_does_not():
    # a fixed spectral tilt (voice or microphone) adds a per-bin constant to every frame of a log-mel
    x = torch.randn(2, 32, 60)
    tilt = torch.linspace(-2.0, 2.0, 32).view(1, 32, 1)
    cmn = TCResNet(n_mels=32, input_norm="cmn").eval()
    utt = TCResNet(n_mels=32, input_norm="utterance").eval()
    with torch.no_grad():
        torch.testing.assert_close(cmn(x), cmn(x + tilt), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cmn(x), cmn(3.0 * x - 1.0), atol=1e-4, rtol=1e-4)  # gain and range too
        assert not torch.allclose(utt(x), utt(x + tilt), atol=1e-3)
        # the normalised input itself: every bin has zero mean over time, unit variance over the clip
        z = cmn.norm.__class__(32, "cmn").eval()
        z.bn = torch.nn.Identity()
        out = z(x + tilt)
        torch.testing.assert_close(out.mean(dim=2), torch.zeros(2, 32), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.square().mean(dim=(1, 2)), torch.ones(2), atol=1e-4, rtol=0)


def test_classifier_keeps_its_input_norm_and_old_models_load_as_utterance():
    from plcli.models.classifier import Classifier

    c = Classifier("tcresnet-small", 32, 5, input_norm="cmn")
    assert c.kwargs["input_norm"] == "cmn" and c.encoder.norm.mode == "cmn"
    old = {k: v for k, v in c.kwargs.items() if k != "input_norm"}  # a model.pt from before the option
    assert Classifier(**old).encoder.norm.mode == "utterance"


def test_no_input_norm_is_gain_sensitive():
    enc = TCResNet(n_mels=32, input_norm="none").eval()
    x = torch.randn(2, 32, 60)
    with torch.no_grad():
        assert not torch.allclose(enc(x), enc(x + 3.0), atol=1e-3)


@pytest.mark.parametrize("pool", ["asp", "meanmax", "mean"])
def test_pool_options(pool):
    enc = TCResNet(n_mels=20, pool=pool, embed_dim=24)
    assert enc(torch.randn(2, 20, 33)).shape == (2, 24)


def test_kwargs_override_preset_and_bad_arguments():
    enc = build_encoder("tcresnet", n_mels=64, embed_dim=40)
    assert enc.embed_dim == 40
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("nope", n_mels=64)
    with pytest.raises(ValueError):
        build_encoder("tcresnet", n_mels=64, pool="median")
    with pytest.raises(ValueError):
        build_encoder("tcresnet", n_mels=64, kernel_size=4)
    with pytest.raises(ValueError):
        build_encoder("resnet2d", n_mels=64, input_norm="layer")
    with pytest.raises(ValueError):
        build_encoder("tcresnet", n_mels=64)(torch.randn(2, 64))


def test_projection_head_layers():
    head = ProjectionHead(32, 48, 16, num_layers=3)
    x = torch.randn(5, 32)
    assert [head.layer_dim(i) for i in range(4)] == [32, 48, 48, 16]
    hiddens = head.hiddens(x)
    assert len(hiddens) == 4
    for i in range(4):
        out = head(x, upto=i)
        assert out.shape == (5, head.layer_dim(i))
        torch.testing.assert_close(out, hiddens[i])
    torch.testing.assert_close(head(x), hiddens[-1])
    torch.testing.assert_close(head(x, upto=0), x)
    assert (hiddens[1] >= 0).all()  # hidden layers end in ReLU
    assert (hiddens[3] < 0).any()  # the last layer has no ReLU
    with pytest.raises(ValueError):
        head(x, upto=4)
    with pytest.raises(ValueError):
        head.layer_dim(-1)


def test_projection_head_last_bn_has_no_shift():
    head = ProjectionHead(8, 8, 4, num_layers=2)
    out = head(torch.randn(64, 8) * 5 + 2)
    # training-mode BN without a learned shift: zero mean per output dimension
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert not any("bias" in n for n, _ in head.layers[-1].named_parameters())


def test_projection_head_single_layer():
    head = ProjectionHead(8, 99, 4, num_layers=1)
    assert [head.layer_dim(i) for i in range(2)] == [8, 4]
    assert head(torch.randn(3, 8)).shape == (3, 4)


def test_mlp_head():
    head = MLPHead(32, 7, hidden_dim=20, num_layers=3, dropout=0.5)
    assert head(torch.randn(4, 32)).shape == (4, 7)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 20), (20, 20), (20, 7)]
    head.eval()
    x = torch.randn(4, 32)
    torch.testing.assert_close(head(x), head(x))  # dropout off in eval
    probe = MLPHead(32, 7, num_layers=1)
    assert [m.out_features for m in probe.modules() if isinstance(m, torch.nn.Linear)] == [7]
    with pytest.raises(ValueError):
        MLPHead(32, 7, dropout=1.0)
    with pytest.raises(ValueError):
        MLPHead(32, 0)


def test_encoder_and_heads_train_on_a_tiny_task():
    # two classes that differ in which mel band carries energy: a few steps must separate them
    x = torch.randn(64, 16, 40) * 0.1
    y = torch.arange(64) % 2
    x[y == 0, :8] += 2.0
    x[y == 1, 8:] += 2.0
    enc = build_encoder("tcresnet-small", n_mels=16, width=8, embed_dim=16)
    head = MLPHead(enc.embed_dim, 2, hidden_dim=16)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], 1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    with torch.no_grad():  # train-mode BN: running statistics need more steps than this
        assert (head(enc(x)).argmax(1) == y).float().mean() > 0.95
