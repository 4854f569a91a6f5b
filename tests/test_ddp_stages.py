"""Each training stage under a Lightning DDP Trainer (``--set trainer.strategy=ddp --devices 2
--accelerator cpu``, gloo) on tiny data, against one process on the global batch.

Pretrain gathers its negatives from every rank, so its loss is the global batch's (and clearly not
the per-device batch's); finetune and distill metrics agree within the noise of a few dozen clips.
The runs go through the real CLI in subprocesses: Lightning's DDP launcher re-runs the command
once per extra rank, which must find the run directory already open and write nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_dataset, write_truth

pytestmark = pytest.mark.slow

TRAINER = {"accelerator": "cpu", "progress": False, "num_workers": 0}
GLOBAL_BATCH = 16
DDP = ["--set", "trainer.strategy=ddp", "--devices", "2", "--batch-size", str(GLOBAL_BATCH // 2)]
ONE = ["--devices", "1", "--batch-size", str(GLOBAL_BATCH)]


def _plcli(root: Path, *args: str) -> dict:
    env = {**os.environ, "PLCLI_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "plcli", *args], capture_output=True, text=True, env=env,
                         timeout=600, cwd=root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    manifest, truth = write_dataset(root / "data", n=48)
    truth_file = write_truth(root / "truth.jsonl", truth)
    conf = {}
    for stage, extra in (("pretrain", {"features": {"clip_seconds": 0.7}, "views": 2, "min_steps": 0,
                                       "trainer": {"epochs": 2}}),
                         ("finetune", {"copies": 2, "min_steps": 0, "trainer": {"epochs": 10}}),
                         ("distill", {"rounds": 1, "trainer": {"epochs": 4}})):
        extra["trainer"].update(TRAINER)
        conf[stage] = root / f"{stage}.yaml"
        conf[stage].write_text(yaml.safe_dump(extra))
    m, r = {}, root / "runs"
    common = [str(manifest)]
    for name, flags in (("one", ONE), ("ddp", DDP)):
        m[f"pre-{name}"] = _plcli(root, "pretrain", *common, "--out", str(r / f"pre-{name}"),
                                  "--config", str(conf["pretrain"]), *flags)
    m["pre-per-device"] = _plcli(root, "pretrain", *common, "--out", str(r / "pre-per-device"),
                                 "--config", str(conf["pretrain"]), "--batch-size", str(GLOBAL_BATCH // 2))
    for name, flags in (("one", ONE), ("ddp", DDP)):
        m[f"ft-{name}"] = _plcli(root, "finetune", *common, "--pretrained", str(r / "pre-one"), "--out",
                                 str(r / f"ft-{name}"), "--truth", str(truth_file), "--config",
                                 str(conf["finetune"]), *flags)
    for name, flags in (("one", ONE), ("ddp", DDP)):
        m[f"st-{name}"] = _plcli(root, "distill", *common, "--teacher", str(r / "ft-one"), "--out",
                                 str(r / f"st-{name}"), "--truth", str(truth_file), "--config",
                                 str(conf["distill"]), *flags)
    return {"root": r, "metrics": m}


def test_pretrain_ddp_loss_is_the_global_batch_loss(runs):
    m = runs["metrics"]
    one, ddp, per_device = (m[k]["train_loss"] for k in ("pre-one", "pre-ddp", "pre-per-device"))
    # NT-Xent grows with the number of negatives: without gathering, DDP would sit at the per-device value
    assert per_device < one - 0.3
    assert abs(ddp - one) < 0.1 * one, (ddp, one, per_device)
    assert m["pre-ddp"]["global_step"] == m["pre-one"]["global_step"]  # same global batches per epoch
    assert m["pre-ddp"]["probe_knn_acc"] > m["pre-ddp"]["probe_chance"]


def test_finetune_ddp_metrics_match_one_process(runs):
    one, ddp = runs["metrics"]["ft-one"], runs["metrics"]["ft-ddp"]
    assert ddp["global_step"] == one["global_step"]
    for k in ("covering", "disambiguation"):
        assert abs(ddp[k] - one[k]) <= 0.2, (k, ddp[k], one[k])
    assert ddp["disambiguation"] > 1 / ddp["classes"]


def test_distill_ddp_metrics_match_one_process(runs):
    one, ddp = runs["metrics"]["st-one"], runs["metrics"]["st-ddp"]
    assert ddp["global_step"] == one["global_step"]
    assert ddp["training_rows"] == one["training_rows"] and ddp["held_out_exact"] == one["held_out_exact"]
    for k in ("covering_rate", "disambiguation_acc", "val_acc"):
        assert abs(ddp[k] - one[k]) <= 0.25, (k, ddp[k], one[k])


def test_ddp_runs_are_complete_and_written_once(runs):
    for stage, files in (("pre", ["encoder.pt"]), ("ft", ["model.pt"]), ("st", ["model.pt", "targets.npy"])):
        out = runs["root"] / f"{stage}-ddp"
        for f in ("config.yaml", "vocab.json", "metrics.json", "checkpoints/last.ckpt", *files):
            assert (out / f).is_file(), (stage, f)
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        assert cfg["trainer"]["strategy"] == "ddp" and cfg["trainer"]["devices"] == "2"
        assert len(list((out / "logs").glob("version_*"))) == 1  # rank 0 logs, the other rank does not
