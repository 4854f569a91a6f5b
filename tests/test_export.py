"""export: the TorchScript (and, when installed, ONNX) model matches the Python model on real audio."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from plcli.config import FeatureConfig
from plcli.data.audio import load_audio
from plcli.data.labels import Vocabulary
from plcli.data.validate import load_rows
from plcli.errors import UserError
from plcli.export import ExportConfig, run, vocab_path
from plcli.models.classifier import Classifier, WaveClassifier, save_model

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))


@pytest.fixture
def model_dir(tmp_path, tiny_data):
    manifest, _ = tiny_data
    rows = load_rows([manifest]).rows
    vocab = Vocabulary.from_rows(rows)
    fc = FeatureConfig(clip_seconds=0.8)
    torch.manual_seed(0)
    model = Classifier("tcresnet-small", fc.n_mels, len(vocab), head_layers=1).eval()
    waves = torch.from_numpy(
        np.stack([load_audio(r.audio, fc.sample_rate, fc.clip_seconds) for r in rows[:6]])
    )
    # make the untrained model's output depend on its input, so that a mismatch would show: BatchNorm
    # statistics from these clips, then logits that vary across clips with a std of about 3
    feats = WaveClassifier(model, fc).frontend(waves)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
    with torch.no_grad():
        model.train()(feats)
        model.eval()
        logits = model(feats)
        model.head.net[-1].weight.mul_(3.0 / (logits - logits.mean(0)).std().item())
    save_model(tmp_path / "run" / "model.pt", model, vocab, fc, "finetune")
    return tmp_path / "run", model, vocab, fc, waves


def test_torchscript_roundtrip(model_dir, tmp_path):
    run_dir, model, vocab, fc, waves = model_dir
    out = tmp_path / "exp" / "model.ts"
    info = run(ExportConfig(model=str(run_dir), out=str(out)), log=lambda *_: None)
    assert info["format"] == "torchscript" and out.exists()
    extra = {"plcli.json": ""}
    ts = torch.jit.load(str(out), _extra_files=extra)
    with torch.no_grad():
        ref = WaveClassifier(model, fc).eval()(waves)
        got = ts(waves)
        one = ts(waves[2])  # 1-D input: one clip
        short = ts(waves[:3, : fc.sample_rate // 2])  # another batch size and length
        ref_short = WaveClassifier(model, fc).eval()(waves[:3, : fc.sample_rate // 2])
    assert ref.shape == (6, len(vocab)) and (ref.argmax(1) != ref[0].argmax()).any()  # input-dependent
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(one, ref[2:3], atol=1e-4, rtol=0)
    torch.testing.assert_close(short, ref_short, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(6))
    meta = json.loads(extra["plcli.json"])
    assert meta["labels"] == vocab.display and meta["sample_rate"] == fc.sample_rate
    assert meta["clip_seconds"] == fc.clip_seconds and meta["stage"] == "finetune"
    assert json.loads(vocab_path(out).read_text()) == meta and vocab_path(out).name == "model.vocab.json"
    assert [x["key"] for x in meta["vocab"]["labels"]] == vocab.keys


def test_export_errors(model_dir, tmp_path):
    run_dir, *_ = model_dir
    with pytest.raises(UserError, match="no classifier"):
        run(ExportConfig(model=str(tmp_path), out=str(tmp_path / "m.ts")), log=lambda *_: None)
    with pytest.raises(UserError, match="is a folder"):
        run(ExportConfig(model=str(run_dir), out=str(tmp_path)), log=lambda *_: None)


@pytest.mark.skipif(HAS_ONNX, reason="onnx is installed")
def test_onnx_without_the_package_says_how_to_get_it(model_dir, tmp_path):
    run_dir, *_ = model_dir
    with pytest.raises(UserError, match=r"pip install 'plcli\[onnx\]'"):
        run(
            ExportConfig(model=str(run_dir), out=str(tmp_path / "m.onnx"), format="onnx"), log=lambda *_: None
        )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.skipif(not HAS_ONNX, reason="needs the onnx and onnxscript packages")
def test_onnx_roundtrip(model_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    run_dir, model, vocab, fc, waves = model_dir
    out = tmp_path / "m.onnx"
    run(ExportConfig(model=str(run_dir), out=str(out), format="onnx"), log=lambda *_: None)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["plcli"])["labels"] == vocab.display
    sess = ort.InferenceSession(str(out))
    got = sess.run(None, {"wave": waves.numpy()})[0]
    with torch.no_grad():
        ref = WaveClassifier(model, fc).eval()(waves).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_export_cli(model_dir, tmp_path):
    from typer.testing import CliRunner

    from plcli.cli import app

    run_dir, model, vocab, fc, waves = model_dir
    out = tmp_path / "cli.pt"
    res = CliRunner().invoke(
        app, ["export", "--model", str(run_dir), "--out", str(out), "--format", "torchscript"]
    )
    assert res.exit_code == 0, res.output
    with torch.no_grad():
        torch.testing.assert_close(
            torch.jit.load(str(out))(waves), WaveClassifier(model, fc).eval()(waves), atol=1e-4, rtol=0
        )
