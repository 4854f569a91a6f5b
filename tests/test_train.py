"""plcli train: the three stages in one run folder, resumed as a whole, on tiny generated audio."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from plcli.cli import app

TRAINER = {"batch_size": 16, "accelerator": "cpu", "devices": "1", "progress": False, "epochs": 1}
STAGES = {"pretrain": {"features": {"clip_seconds": 1.0}, "views": 2, "min_steps": 0, "trainer": TRAINER},
          "finetune": {"trainer": TRAINER, "copies": 2, "min_steps": 0},
          "distill": {"trainer": TRAINER, "ctc_rows": 8}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    from tests.conftest import write_dataset

    root = tmp_path_factory.mktemp("train")
    os.environ["PLCLI_CACHE"] = str(root / "cache")
    manifest, _ = write_dataset(root / "data", n=40)
    (root / "stages.yaml").write_text(yaml.safe_dump(STAGES))
    args = ["train", str(manifest), "--out", str(root / "run"), "--config", str(root / "stages.yaml"),
            "--set", "distill.rounds=1", "--set", "finetune.trainer.epochs=2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return root, args, res.output


def test_train_runs_the_three_stages_in_one_folder(trained):
    root, _, output = trained
    run = root / "run"
    for stage, done in (("pretrain", "encoder.pt"), ("finetune", "model.pt"), ("distill", "model.pt")):
        assert (run / stage / done).is_file(), stage
    ft = yaml.safe_load((run / "finetune" / "config.yaml").read_text())
    di = yaml.safe_load((run / "distill" / "config.yaml").read_text())
    assert ft["pretrained"] == str(run / "pretrain") and di["teacher"] == str(run / "finetune")
    assert ft["trainer"]["epochs"] == 2 and di["rounds"] == 1 and di["ctc_rows"] == 8  # --set over --config
    summary = json.loads((run / "train.json").read_text())
    assert list(summary["stages"]) == ["pretrain", "finetune", "distill"] and summary["model"] == str(
        run / "distill"
    )
    assert "plcli train" in output and "next: plcli predict" in output


def test_train_resumes_as_a_whole_and_refuses_to_overwrite_by_accident(trained):
    root, args, _ = trained
    run = root / "run"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--resume auto" in res.output
    before = (run / "finetune" / "model.pt").stat().st_mtime_ns
    (run / "distill" / "model.pt").unlink()  # as if killed during distill
    res = CliRunner().invoke(app, [*args, "--resume", "auto"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "train.json").read_text())
    assert summary["stages"]["pretrain"] == {"skipped": True} and summary["stages"]["finetune"] == {
        "skipped": True
    }
    assert "seconds" in summary["stages"]["distill"] and (run / "distill" / "model.pt").is_file()
    assert (run / "finetune" / "model.pt").stat().st_mtime_ns == before


def test_train_bad_set_and_labels_applied_to_the_manifest(tmp_path):
    from plcli.train import TrainConfig, training_manifest
    from tests.conftest import write_dataset

    manifest, _ = write_dataset(tmp_path / "data", n=8, unlabelled=0)
    res = CliRunner().invoke(app, ["train", str(manifest), "--out", str(tmp_path / "r"), "--set", "epochs=3"])
    assert res.exit_code == 2 and "STAGE.KEY=VALUE" in res.output
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        json.dumps({"id": rows[1]["id"], "label": rows[1]["candidates"][-1]})
        + "\n"
        + json.dumps({"id": rows[2]["id"], "none_of_these": True})
        + "\n"
    )
    cfg = TrainConfig(source=str(manifest), out=str(tmp_path / "r"), labels=str(labels))
    got = {
        json.loads(line)["id"]: json.loads(line)
        for line in training_manifest(cfg, print).read_text().splitlines()
    }
    assert got[rows[1]["id"]]["label"] == rows[1]["candidates"][-1]
    assert got[rows[2]["id"]]["candidates"] == [] and got[rows[2]["id"]]["none_of_these"] is True
    assert got[rows[3]["id"]]["candidates"] == rows[3]["candidates"]
    assert training_manifest(TrainConfig(source=str(manifest), out=str(tmp_path / "r")), print) == manifest
