"""scripts/simulate_labelling.py end to end on tiny generated audio (slow: seven tiny trainings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_simulated_labelling_answers_with_the_truth_and_writes_every_cell(tmp_path):
    from tests.conftest import write_dataset

    demo = tmp_path / "demo"
    manifest, truth = write_dataset(demo, n=40)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    manifest.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in rows)
    )
    write_dataset(demo, n=12, seed=1, unlabelled=0, name="test.jsonl")
    (demo / "truth.jsonl").write_text(
        "".join(json.dumps({"id": k, "label": v}) + "\n" for k, v in truth.items())
    )
    tiny = [
        "pretrain.features.clip_seconds=1.0",
        "pretrain.views=2",
        "pretrain.min_steps=0",
        "finetune.min_steps=0",
        "finetune.copies=2",
        "distill.rounds=1",
        "distill.ctc_rows=8",
    ]
    for stage in ("pretrain", "finetune", "distill"):
        tiny += [
            f"{stage}.trainer.epochs=1",
            f"{stage}.trainer.batch_size=16",
            f"{stage}.trainer.progress=false",
        ]
    args = [
        sys.executable,
        str(ROOT / "scripts" / "simulate_labelling.py"),
        "--demo",
        str(demo),
        "--runs",
        str(tmp_path / "runs"),
        "--budgets",
        "0,2,4",
        *(f"--set={s}" for s in tiny),
    ]
    res = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={"PLCLI_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    cells = json.loads((tmp_path / "runs" / "cells.json").read_text())
    assert [(c["strategy"], c["budget"]) for c in cells] == [
        ("none", 0),
        ("label", 2),
        ("label", 4),
        ("random", 2),
        ("random", 4),
    ]
    for c in cells:
        assert 0.0 <= c["accuracy"] <= 1.0
    labels = [json.loads(x) for x in (tmp_path / "runs" / "label-4-s0.labels.jsonl").read_text().splitlines()]
    assert len(labels) == 4 and all(truth[r["id"]] == r["label"] for r in labels)
    first = [
        json.loads(x)["id"] for x in (tmp_path / "runs" / "label-2-s0.labels.jsonl").read_text().splitlines()
    ]
    assert first == [r["id"] for r in labels[:2]]  # budgets are nested
    cfg = yaml.safe_load((tmp_path / "runs" / "label-4-s0" / "finetune" / "config.yaml").read_text())
    assert cfg["trainer"]["epochs"] == 1
