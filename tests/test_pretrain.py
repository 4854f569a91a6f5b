"""plcli pretrain through the CLI on a tiny generated dataset, resume, and the DDP loss equivalence."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from plcli.cli import app
from plcli.runs import logged_history

TINY = {
    "features": {"clip_seconds": 1.0},
    "trainer": {"batch_size": 16, "accelerator": "cpu", "devices": "1", "progress": False, "num_workers": 0},
    "views": 2,
    "min_steps": 0,  # the tests count epochs; min_steps has its own test
}


def tiny_config(tmp_path, **over) -> str:
    cfg = json.loads(json.dumps(TINY))
    for k, v in over.items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _pretrain(tmp_path, manifest, out, *extra):
    res = CliRunner().invoke(app, ["pretrain", str(manifest), "--out", str(out), "--config",
                                   tiny_config(tmp_path), *extra])
    assert res.exit_code == 0, res.output
    return res


def test_pretrain_cli_writes_run_dir(tmp_path, tiny_data):
    manifest, _ = tiny_data
    out = tmp_path / "pre"
    _pretrain(tmp_path, manifest, out, "--epochs", "2")
    for f in ("config.yaml", "checkpoints/last.ckpt", "metrics.json", "logs/version_0/metrics.csv",
              "encoder.pt",
              "vocab.json"):
        assert (out / f).exists(), f
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        cfg["stage"] == "pretrain"
        and cfg["trainer"]["epochs"] == 2
        and cfg["features"]["clip_seconds"] == 1.0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["global_step"] == 4 and m["exact_rows"] > 0
    assert 0.0 <= m["probe_knn_acc"] <= 1.0 and len(m["probe_knn_acc_history"]) == 2
    payload = torch.load(out / "encoder.pt", weights_only=True)
    assert payload["encoder"] == "tcresnet" and "state_dict" in payload
    # checkpoints hold primitives only: they load with weights_only
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["encoder"] == "tcresnet"


def test_graph_zero_gives_every_parameter_a_zero_gradient():
    """What a step that skips the CTC loss returns: DDP needs a gradient (not None) for each parameter."""
    from plcli.training import graph_zero

    head = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    zero = graph_zero(head)
    zero.backward()
    assert zero.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())


def test_min_steps_adds_epochs_on_small_data(tmp_path, tiny_data):
    from plcli.pretrain import PretrainConfig
    from plcli.training import epochs_for_steps

    cfg = PretrainConfig()

    def train_epochs(cfg, steps_per_epoch):
        return epochs_for_steps(cfg.trainer.epochs, cfg.min_steps, steps_per_epoch)

    assert cfg.trainer.epochs == 30 and cfg.min_steps == 1000 and cfg.input_norm == "cmn"
    assert train_epochs(cfg, 17) == 59  # 1117 clips at batch 64: 30 epochs would be 510 steps
    assert train_epochs(cfg, 40) == 30  # 30 x 40 steps already exceed 1000
    cfg.min_steps = 0
    assert train_epochs(cfg, 1) == 30
    # through the CLI: 2 steps an epoch (32 clips, batch 16), at least 6 steps -> 3 epochs, not 1
    manifest, _ = tiny_data
    out = tmp_path / "pre"
    _pretrain(tmp_path, manifest, out, "--epochs", "1", "--set", "min_steps=6")
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 3 and m["global_step"] == 6
    assert yaml.safe_load((out / "config.yaml").read_text())["min_steps"] == 6


def test_a_run_from_before_the_transcript_ctc_resumes_without_it(tmp_path, tiny_data):
    """Its checkpoint has no transcript head, so the new default must not try to restore one."""
    manifest, _ = tiny_data
    out = tmp_path / "pre"
    _pretrain(tmp_path, manifest, out, "--epochs", "1", "--set", "transcript_ctc=0")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["transcript_ctc"]  # the run's config as the code before the setting wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    res = CliRunner().invoke(app, ["pretrain", str(manifest), "--out", str(out), "--config",
                                   tiny_config(tmp_path), "--epochs", "2", "--resume", "auto"])
    assert res.exit_code == 0, res.output
    assert "before transcript_ctc: it continues with transcript_ctc=0.0" in res.output
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_pretrain_refuses_existing_run_and_resumes(tmp_path, tiny_data):
    manifest, _ = tiny_data
    out = tmp_path / "pre"
    _pretrain(tmp_path, manifest, out, "--epochs", "1")
    first = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 2
    again = CliRunner().invoke(app, ["pretrain", str(manifest), "--out", str(out), "--config",
                                     tiny_config(tmp_path)])
    assert again.exit_code == 2 and "--resume auto" in again.output
    _pretrain(tmp_path, manifest, out, "--epochs", "2", "--resume", "auto")
    second = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 4 and second["epoch"] == 1
    # optimizer state carried over: Adam's step count continues from the first run
    steps = [s["step"] for s in second["optimizer_states"][0]["state"].values()]
    assert all(float(s) == 4 for s in steps)
    assert len(logged_history(out, "probe/knn_acc")) == 2  # both runs' epochs kept


def test_pretrain_reports_every_problem(tmp_path, tiny_data):
    manifest, _ = tiny_data
    lines = manifest.read_text().splitlines()
    lines[3] = "{broken"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(app, ["pretrain", str(bad), "--out", str(tmp_path / "x"), "--config",
                                   tiny_config(tmp_path)])
    assert res.exit_code == 2 and "bad.jsonl:4" in res.output


@pytest.mark.slow
def test_ddp_two_processes_matches_single(tmp_path):
    """2-process gloo DDP: the gathered NT-Xent equals the single-process loss on the global batch."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
        from plcli.losses import NTXentLoss

        def worker(rank, world, path, port):
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            dist.init_process_group("gloo", rank=rank, world_size=world)
            torch.manual_seed(0)
            z0, z1 = torch.randn(8, 5), torch.randn(8, 5)
            b = 8 // world
            l0 = z0[rank*b:(rank+1)*b].clone().requires_grad_()
            l1 = z1[rank*b:(rank+1)*b].clone().requires_grad_()
            all0 = torch.cat(_gather(l0))
            all1 = torch.cat(_gather(l1))
            loss = NTXentLoss(0.2)(l0, l1, all0, all1, rank=rank)
            t = loss.detach().clone(); dist.all_reduce(t); t /= world
            loss.backward()
            g = [torch.zeros_like(l0.grad) for _ in range(world)]
            dist.all_gather(g, l0.grad)
            if rank == 0:
                r0, r1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
                ref = NTXentLoss(0.2)(r0, r1)
                ref.backward()
                # DDP averages gradients over ranks; the global loss is the mean of the rank losses
                gerr = (torch.cat(g) / world - r0.grad).abs().max().item()
                open(path, "w").write(f"{t.item()} {ref.item()} {gerr}")
            dist.destroy_process_group()

        def _gather(x):
            import torch.distributed.nn.functional as F
            return F.all_gather(x)

        if __name__ == "__main__":
            mp.spawn(worker, args=(2, sys.argv[1], int(sys.argv[2])), nprocs=2)
    """))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "res.txt"
    subprocess.run([sys.executable, str(script), str(out), str(port)], check=True, timeout=300)
    ddp, ref, gerr = map(float, out.read_text().split())
    assert ddp == pytest.approx(ref, rel=1e-5)
    assert gerr < 1e-6
