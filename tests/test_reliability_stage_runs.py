"""Every stage keeps the run-directory promise: input that is rejected leaves no run behind, and an
existing run that refuses to be resumed is left untouched (pretrain's own test is in
test_reliability_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from plcli.cli import app
from plcli.config import FeatureConfig
from plcli.data.labels import Vocabulary
from plcli.data.validate import load_rows
from plcli.finetune import FinetuneConfig
from plcli.models.classifier import Classifier, save_model
from plcli.pretrain import PretrainConfig
from plcli.runs import save_config
from tests.conftest import write_dataset

TRAINER = {"batch_size": 8, "accelerator": "cpu", "devices": "1", "progress": False, "num_workers": 0,
           "epochs": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, a manifest with a missing audio file, and an untrained finetune teacher run."""
    root = tmp_path_factory.mktemp("promise")
    manifest, _ = write_dataset(root / "data", n=24)
    bad = root / "data" / "bad.jsonl"
    bad.write_text(manifest.read_text().replace('"audio": "audio/', '"audio": "nowhere/', 1))
    vocab = Vocabulary.from_rows(load_rows([manifest]).rows)
    fc = FeatureConfig(clip_seconds=0.7)
    teacher = root / "teacher"
    teacher.mkdir()
    torch.manual_seed(0)
    save_model(teacher / "model.pt", Classifier("tcresnet-small", fc.n_mels, len(vocab)).eval(), vocab, fc,
               "finetune")
    tc = FinetuneConfig(out=str(teacher), pretrained="none", features=fc)
    save_config(teacher, tc, "finetune")
    conf = root / "tiny.yaml"
    conf.write_text(yaml.safe_dump({"views": 2, "rounds": 1, "trainer": TRAINER}))
    ft_conf = root / "ft.yaml"
    ft_conf.write_text(yaml.safe_dump({"copies": 0, "min_steps": 0, "features": {"clip_seconds": 0.7},
                                       "trainer": TRAINER}))
    return {"manifest": manifest, "bad": bad, "teacher": teacher, "conf": conf, "ft_conf": ft_conf,
            "root": root}


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finetune(world, manifest, out, *extra):
    return CliRunner().invoke(app, ["finetune", str(manifest), "--out", str(out), "--config",
                                    str(world["ft_conf"]), *extra])


def _distill(world, manifest, out, *extra, teacher=None):
    return CliRunner().invoke(app, ["distill", str(manifest), "--teacher", str(teacher or world["teacher"]),
                                    "--out", str(out), "--config", str(world["conf"]), *extra])


# -- finetune -----------------------------------------------------------------------------------


def test_finetune_invalid_manifest_leaves_no_run(world, tmp_path):
    out = tmp_path / "ft"
    res = _finetune(world, world["bad"], out, "--pretrained", "none")
    assert res.exit_code == 2 and "bad.jsonl:1: audio file not found" in res.stderr, res.output
    assert not out.exists()


def _pretrain_run_without_checkpoint(tmp_path) -> Path:
    """A pretrain run directory with its config but no checkpoint (and so no classifier)."""
    pre = tmp_path / "pre"
    pre.mkdir()
    save_config(pre, PretrainConfig(out=str(pre)), "pretrain")
    return pre


def test_finetune_pretrain_run_without_checkpoint_leaves_no_run(world, tmp_path):
    out = tmp_path / "ft"
    res = _finetune(world, world["manifest"], out, "--pretrained",
                    str(_pretrain_run_without_checkpoint(tmp_path)))
    assert res.exit_code == 2 and "no checkpoints/last.ckpt" in res.stderr, res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "from_layer=4"], "exceeds the projection head's 3 layers"),
        (["--truth", "missing-truth.jsonl"], "missing-truth.jsonl"),
    ],
)
def test_finetune_rejected_option_leaves_no_run(world, tmp_path, extra, message):
    out = tmp_path / "ft"
    res = _finetune(world, world["manifest"], out, "--pretrained", "none", *extra)
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert not out.exists()


def test_finetune_ce_only_without_exact_rows_leaves_no_run(world, tmp_path):
    rows = [json.loads(line) for line in world["manifest"].read_text().splitlines()]
    for r in rows:
        r.pop("label", None)
    no_exact = world["root"] / "data" / "no-exact.jsonl"
    no_exact.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ft"
    res = _finetune(world, no_exact, out, "--pretrained", "none", "--set", "loss=ce-only")
    assert res.exit_code == 2 and "needs exact labels" in res.stderr, res.output
    assert not out.exists()


# -- distill ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", ["1", "2"])
def test_distill_invalid_manifest_leaves_no_run(world, tmp_path, rounds):
    out = tmp_path / "st"
    res = _distill(world, world["bad"], out, "--rounds", rounds)
    assert res.exit_code == 2 and "bad.jsonl:1: audio file not found" in res.stderr, res.output
    assert not out.exists()


@pytest.mark.parametrize("rounds", ["1", "2"])
def test_distill_missing_teacher_leaves_no_run(world, tmp_path, rounds):
    out = tmp_path / "st"
    res = _distill(world, world["manifest"], out, "--rounds", rounds, teacher=tmp_path / "no-teacher")
    assert res.exit_code == 2 and "no such run directory" in res.stderr, res.output
    assert not out.exists()


def test_distill_teacher_without_classifier_leaves_no_run(world, tmp_path):
    out = tmp_path / "st"
    res = _distill(world, world["manifest"], out, teacher=_pretrain_run_without_checkpoint(tmp_path))
    assert res.exit_code == 2 and "has no classifier" in res.stderr, res.output
    assert not out.exists()


def test_distill_resume_with_another_vocabulary_leaves_the_run_untouched(world, tmp_path):
    out = tmp_path / "st"
    out.mkdir()
    save_config(out, FinetuneConfig(), "distill")
    Vocabulary.build(["some", "other", "labels"]).save(out / "vocab.json")
    before = _tree(out)
    res = _distill(world, world["manifest"], out, "--resume", "auto")
    assert res.exit_code == 2 and "label vocabulary differs" in res.stderr, res.output
    assert _tree(out) == before


def test_distill_existing_run_without_resume_is_untouched(world, tmp_path):
    out = tmp_path / "st"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("stage: distill\nplcli_format: 1\n")
    (out / "checkpoints" / "last.ckpt").write_bytes(b"ours")
    before = _tree(out)
    for rounds in ("1", "2"):
        res = _distill(world, world["manifest"], out, "--rounds", rounds)
        assert res.exit_code == 2 and "--resume auto" in res.stderr, res.output
        assert _tree(out) == before


# -- the shared options ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "distill"])
def test_every_stage_takes_the_shared_options(stage):
    from plcli import stages

    res = CliRunner().invoke(app, [stage, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    flags = set(res.output.replace("│", " ").split())
    for flag in ("--out", "--config", "--overwrite", "--resume", "--set", "--epochs", "--batch-size",
                 "--seed", "--accelerator", "--devices", "--precision", "--skip-invalid", "--help-all"):
        assert flag in flags, (stage, flag)
    # the expert ones are settings: --set KEY=VALUE, listed by --help-all
    res = CliRunner().invoke(app, [stage, "--help-all"], env={"COLUMNS": "200"})
    keys = {line.split("│")[1].strip() for line in res.output.splitlines() if line.count("│") > 2}
    for key in ("trainer.lr", "trainer.strategy", "trainer.num_nodes", "trainer.num_workers",
                "trainer.progress",
                "data.rejects", "data.cache_dir"):
        assert key in keys, (stage, key)
    assert stages.get(stage).config_class().__name__.lower() == f"{stage}config"


def test_set_overrides_any_field_and_rejects_unknown_keys(world, tmp_path, monkeypatch):
    from plcli import stages

    seen = {}
    monkeypatch.setattr(stages.Stage, "run",
                        lambda self, cfg, log=print, **k: seen.setdefault("cfg", cfg) and {})
    args = ["--pretrained", "none", "--set", "trainer.weight_decay=0.05", "--set",
            "trainer.deterministic=true",
            "--set", "loss=cc", "--epochs", "3", "--set", "trainer.epochs=4"]
    res = _finetune(world, world["manifest"], tmp_path / "ft", *args)
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.trainer.weight_decay == 0.05 and cfg.trainer.deterministic is True and cfg.loss == "cc"
    assert cfg.trainer.epochs == 4  # --set wins over the flag
    res = _finetune(world, world["manifest"], tmp_path / "ft", "--pretrained", "none", "--set",
                    "trainer.nope=1")
    assert res.exit_code == 2 and "unknown config key trainer.nope" in res.stderr, res.output
    res = _finetune(world, world["manifest"], tmp_path / "ft", "--pretrained", "none", "--set", "lossproden")
    assert res.exit_code == 2 and "--set: expected KEY=VALUE, got 'lossproden'" in res.stderr, res.output
