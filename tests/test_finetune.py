"""plcli finetune: end to end through the CLI on generated audio, each loss, resume, baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from plcli.cli import app
from plcli.config import TrainerConfig
from plcli.models.classifier import load_model

# the tests count epochs; min_steps has its own test
TINY_FT = {"trainer": {"batch_size": 16, "accelerator": "cpu", "devices": "1", "progress": False},
           "copies": 2, "min_steps": 0}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One tiny pretrain run shared by the tests of this module."""
    from tests.conftest import write_dataset, write_truth

    root = tmp_path_factory.mktemp("ft")
    import os

    os.environ["PLCLI_CACHE"] = str(root / "cache")
    manifest, truth = write_dataset(root / "data", n=48)
    cfg = root / "pre.yaml"
    cfg.write_text(yaml.safe_dump({"features": {"clip_seconds": 1.0}, "views": 2, "min_steps": 0,
                                   "trainer": {"batch_size": 16, "accelerator": "cpu", "devices": "1",
                                               "progress": False}}))
    res = CliRunner().invoke(app, ["pretrain", str(manifest), "--out", str(root / "pre"), "--config",
                                   str(cfg), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    tf = write_truth(root / "truth.jsonl", truth)
    return root, manifest, tf


def _finetune(root, manifest, out, *extra, pretrained="pre"):
    cfg = root / "ft.yaml"
    cfg.write_text(yaml.safe_dump(TINY_FT))
    pre = pretrained if pretrained == "none" else str(root / pretrained)
    res = CliRunner().invoke(app, ["finetune", str(manifest), "--pretrained", pre, "--out", str(root / out),
                                   "--config", str(cfg), *extra])
    assert res.exit_code == 0, res.output
    return json.loads((root / out / "metrics.json").read_text())


@pytest.mark.parametrize("loss", ["proden", "cc", "ce-only"])
def test_finetune_each_loss(pretrained, loss, monkeypatch):
    root, manifest, truth = pretrained
    monkeypatch.setenv("PLCLI_CACHE", str(root / "cache"))
    m = _finetune(root, manifest, f"ft-{loss}", "--set", f"loss={loss}", "--epochs", "3", "--truth",
                  str(truth))
    assert m["loss"] == loss and m["epochs"] == 3
    for k in ("acc", "acc_within", "covering", "disambiguation"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["cache"]["computed"] == 0  # features and views come from the pretrain run's cache
    model, vocab, feats = load_model(root / f"ft-{loss}")
    assert len(vocab) == 4 and feats.clip_seconds == 1.0
    # the saved encoder weights are the pretrained ones (frozen; BatchNorm statistics are re-estimated)
    enc = torch.load(root / "pre" / "encoder.pt", weights_only=True)["state_dict"]
    for k, p in model.encoder.named_parameters():
        torch.testing.assert_close(p, enc[k])


def test_finetune_learns_tones_with_candidates(pretrained, monkeypatch):
    root, manifest, truth = pretrained
    monkeypatch.setenv("PLCLI_CACHE", str(root / "cache"))
    m = _finetune(root, manifest, "ft-long", "--epochs", "30", "--truth", str(truth), "--set",
                  "trainer.lr=5e-3")
    assert m["disambiguation"] >= 0.8 and m["covering"] >= 0.9  # chance within 3 candidates: 1/3


def test_finetune_resume_and_random_baseline(pretrained, monkeypatch):
    root, manifest, _ = pretrained
    monkeypatch.setenv("PLCLI_CACHE", str(root / "cache"))
    _finetune(root, manifest, "ft-r", "--epochs", "1")
    step1 = torch.load(root / "ft-r" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    m = _finetune(root, manifest, "ft-r", "--epochs", "2", "--resume", "auto")
    assert m["global_step"] == 2 * step1
    base = _finetune(root, manifest, "ft-none", "--epochs", "1", pretrained="none")
    assert base["epochs"] == 1


def test_finetune_takes_the_pretrain_runs_input_norm(pretrained, monkeypatch, tmp_path):
    import shutil

    root, manifest, _ = pretrained
    monkeypatch.setenv("PLCLI_CACHE", str(root / "cache"))
    pre_cfg = yaml.safe_load((root / "pre" / "config.yaml").read_text())
    assert pre_cfg["input_norm"] == "cmn"  # the default of new runs
    _finetune(root, manifest, "ft-norm", "--epochs", "1")
    assert load_model(root / "ft-norm")[0].encoder.norm.mode == "cmn"
    # a pretrain run from before the option (no input_norm in its config) normalised whole clips
    old = root / "pre-old"
    shutil.copytree(root / "pre", old)
    (old / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in pre_cfg.items() if k != "input_norm"}))
    _finetune(root, manifest, "ft-old", "--epochs", "1", pretrained="pre-old")
    assert load_model(root / "ft-old")[0].encoder.norm.mode == "utterance"


def test_finetune_rejects_wrong_pretrained(pretrained, monkeypatch):
    root, manifest, _ = pretrained
    res = CliRunner().invoke(app, ["finetune", str(manifest), "--pretrained", str(root / "nope"), "--out",
                                   str(root / "x")])
    assert res.exit_code == 2 and "not a plcli run directory" in res.output


def test_finetune_min_steps_adds_epochs_on_small_data(pretrained, monkeypatch):
    from plcli.finetune import FinetuneConfig

    cfg = FinetuneConfig()
    # the defaults chosen on validation speakers (docs/benchmark.md)
    assert cfg.trainer.batch_size == 64 and cfg.min_steps == 1000 and cfg.copies == 0
    root, manifest, _ = pretrained
    monkeypatch.setenv("PLCLI_CACHE", str(root / "cache"))
    # 48 rows less the held-out exact rows, batch 16: 3 steps per epoch; 1 epoch would be 3 steps
    m = _finetune(root, manifest, "ft-steps", "--epochs", "1", "--set", "min_steps=7")
    assert m["global_step"] >= 7 and m["epochs"] == -(-7 // (m["global_step"] // m["epochs"]))
    assert yaml.safe_load((root / "ft-steps" / "config.yaml").read_text())["min_steps"] == 7
    m0 = _finetune(root, manifest, "ft-steps0", "--epochs", "1", "--set", "min_steps=0")
    assert m0["epochs"] == 1


def test_finetune_refuses_the_distill_only_ctc_perturbations(tmp_path):
    """ctc.tempo / ctc.vtlp act on distill's CTC branch; finetune says so instead of ignoring them."""
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "audio": "a.wav", "label": "hi"}) + "\n")
    for opt in ("ctc.tempo=0.1", "ctc.vtlp=0.1"):
        r = CliRunner().invoke(app, ["finetune", str(m), "--pretrained", "none", "--out", str(tmp_path / "o"),
                                     "--set", opt])
        assert r.exit_code != 0 and "ctc.tempo and ctc.vtlp" in r.output, r.output


def test_finetune_without_ctc_tokens_trains_without_the_ctc_head(tmp_path):
    """Messages without a letter or digit: ctc.weight asks for a head that has nothing to emit, so
    it is off, and the log says so (before: an internal error in the head)."""
    from plcli.finetune import FinetuneConfig, _prepare
    from tests.conftest import write_dataset

    manifest, _ = write_dataset(tmp_path / "data", n=12, labels=["👍", "❤️", "🙏", "😂"])
    cfg = FinetuneConfig(out=str(tmp_path / "o"), pretrained="none", asr_prior="none")
    cfg.data.manifests = [str(manifest)]
    cfg.ctc.weight = 1.0
    cfg.validate()
    logged = []
    inp = _prepare(cfg, logged.append)
    assert cfg.ctc.weight == 0.0 and "ctc" not in inp.classifier and cfg.data.language == "en"
    assert any(line.startswith("CTC head off: the 4 message texts have no char token") for line in logged)


def test_finetune_outside_weight_keeps_other_messages_in_the_targets(pretrained, monkeypatch):
    """outside_weight lam: PRODEN's targets keep non-candidates at lam times their (prior-corrected)
    probability, and the CC loss counts them alike; 0 restricts both to the candidates."""
    from plcli.finetune import FinetuneModule
    from plcli.losses import CandidateLoss

    classifier = dict(encoder="tcresnet-small", n_mels=8, num_classes=4, from_layer=0)
    logits = torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    plain = FinetuneModule(classifier).disambiguate(logits, mask)
    alim = FinetuneModule(classifier, outside=0.2)
    got = alim.disambiguate(logits, mask)
    assert (plain[~mask] == 0).all() and (got[~mask] > 0).all()
    w = torch.softmax(logits, 1) * torch.where(mask, 1.0, 0.2)
    torch.testing.assert_close(got, w / w.sum(1, keepdim=True))
    assert alim.cc.outside == 0.2 and isinstance(alim.cc, CandidateLoss)
    root, manifest, truth = pretrained
    monkeypatch.setenv("PLCLI_CACHE", str(root / "cache"))
    _finetune(root, manifest, "ft-alim", "--set", "outside_weight=0.1", "--epochs", "1")
    assert yaml.safe_load((root / "ft-alim" / "config.yaml").read_text())["outside_weight"] == 0.1


def test_screen_finds_the_candidate_sets_that_miss_the_truth(tmp_path):
    """_screen on embeddings that separate four classes: the rows whose candidates miss their class
    get a high out-of-fold none_of_these, the others a low one; exact rows and a screen that is off
    score nothing."""
    from types import SimpleNamespace

    from plcli.finetune import FinetuneConfig, _Inputs, _screen
    from plcli.screening import read_scores

    n, c = 120, 4
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(n) % c
    emb = torch.randn(c, 96, generator=g)[truth] * 2 + torch.randn(n, 96, generator=g)  # (N, D)
    mask = torch.zeros(n, c, dtype=torch.bool)
    mask[torch.arange(n), truth] = True
    mask[torch.arange(n), (truth + 1 + torch.arange(n) % 3) % c] = True  # one distractor each
    untyped = torch.arange(0, n, 7)  # nobody typed these (every class): two other classes
    mask[untyped] = False
    mask[untyped, (truth[untyped] + 1) % c] = mask[untyped, (truth[untyped] + 2) % c] = True
    y = torch.full((n,), -1)
    y[1::10] = truth[1::10]  # a few exact rows
    inp = _Inputs([SimpleNamespace(id=f"r{i}") for i in range(n)], list(range(c)), mask, y,
                  torch.full((n,), -1), set(), np.arange(n),
                  dict(encoder="tcresnet-small", n_mels=8, num_classes=c, from_layer=0), None, None)
    cfg = FinetuneConfig(out=str(tmp_path), pretrained="none")
    cfg.trainer = TrainerConfig(epochs=20, batch_size=32, accelerator="cpu", progress=False)
    cfg.min_steps = 0
    got = _screen(cfg, inp, emb, tmp_path, lambda *_: None)  # (N,)
    np.testing.assert_allclose(read_scores(tmp_path, [r.id for r in inp.rows]), got, atol=1e-6)
    missed = np.array([i in set(untyped.tolist()) and y[i] < 0 for i in range(n)])
    assert (got[missed] > 0.5).sum() >= missed.sum() - 1 and (got[~missed] > 0.5).sum() <= 2, got
    assert (got[(y >= 0).numpy()] == 0).all()  # an exact row is never scored
    cfg.screen, cfg.trainer.resume = False, None
    assert (_screen(cfg, inp, emb, tmp_path / "off", lambda *_: None) == 0).all()


def test_finetune_weighs_candidate_rows_by_their_screening(pretrained, monkeypatch):
    """The CLI run scores every candidate row without a label out of fold, in screened.json, and
    counts those more likely untyped than not in metrics.json; with the screen off it writes none.
    A row's candidate loss counts 1 - its score: here, a row scored 1 adds nothing to it."""
    from plcli.finetune import FinetuneModule
    from plcli.screening import SCREEN_FILE

    root, manifest, _ = pretrained
    monkeypatch.setenv("PLCLI_CACHE", str(root / "cache"))
    m = _finetune(root, manifest, "ft-screen", "--epochs", "1")
    scores = json.loads((root / "ft-screen" / SCREEN_FILE).read_text())["scores"]
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert set(scores) == {r["id"] for r in rows if r["candidates"] and "label" not in r}
    assert m["likely_untyped"] == sum(s > 0.5 for s in scores.values())
    off = _finetune(root, manifest, "ft-noscreen", "--epochs", "1", "--set", "screen=false")
    assert off["likely_untyped"] == 0 and not (root / "ft-noscreen" / SCREEN_FILE).exists()
    classifier = dict(encoder="tcresnet-small", n_mels=8, num_classes=3, from_layer=0)
    module = FinetuneModule(classifier, num_train=2)
    module.targets.copy_(torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    batch = {"x": torch.randn(2, 96), "y": torch.tensor([-1, -1]), "i": torch.tensor([0, 1]),
             "mask": torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)}
    module.log_dict = lambda *a, **k: None
    module.eval()  # no dropout: the same logits twice
    loss_w = module.training_step({**batch, "w": torch.tensor([1.0, 0.0])}, 0)
    loss_0 = module.training_step({k: v[:1] for k, v in {**batch, "w": torch.ones(2)}.items()}, 0)
    torch.testing.assert_close(loss_w, loss_0)
