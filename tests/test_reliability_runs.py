"""Long runs on shared machines: kills, Ctrl-C, full disks, unwritable or foreign run directories,
concurrent use of one feature cache, and run-to-run reproducibility.

The kill/Ctrl-C tests run the real CLI (``python -m plcli``) in a subprocess and are marked slow.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import plcli.io as pio
from plcli.cli import app
from plcli.config import Config, FeatureConfig, opt
from plcli.data import features as feat_mod
from plcli.data.features import FeatureCache
from plcli.runs import logged_history

STEPS_CFG = {
    "features": {"clip_seconds": 1.0},
    "views": 2,
    "min_steps": 0,
    "trainer": {"batch_size": 4, "accelerator": "cpu", "devices": "1", "progress": False, "num_workers": 0},
}


def write_config(path: Path, cfg: dict = STEPS_CFG) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------------
# Atomic writes under a full disk
# ---------------------------------------------------------------------------------------------


class _FullDisk:
    """A file object that accepts ``budget`` bytes, writes part of the next chunk, then fails with ENOSPC."""

    def __init__(self, f, budget: int):
        self._f, self._left = f, budget

    def write(self, data):
        if len(data) > self._left:
            self._f.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """After ``budget`` bytes, every file opened by the atomic writers raises ENOSPC."""

    def install(budget: int = 10):
        real = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(real(*a, **k), budget))

    return install


WRITERS = {
    "text": lambda p: pio.atomic_write_text(p, "new text " * 100),
    "json": lambda p: pio.atomic_write_json(p, {"new": list(range(100))}),
    "jsonl": lambda p: pio.atomic_write_jsonl(p, [{"i": i} for i in range(100)]),
    "torch": lambda p: pio.atomic_torch_save({"w": torch.zeros(1000)}, p),
    "npy": lambda p: feat_mod._atomic_save_npy(p, np.zeros((64, 51), np.float16)),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("existing", [True, False])
def test_disk_full_leaves_target_untouched(tmp_path, full_disk, kind, existing):
    target = tmp_path / "run" / f"file.{kind}"
    target.parent.mkdir()
    if existing:
        target.write_bytes(b"old complete content")
    full_disk(budget=10)
    with pytest.raises(OSError) as e:
        WRITERS[kind](target)
    assert e.value.errno == errno.ENOSPC
    if existing:
        assert target.read_bytes() == b"old complete content"
    else:
        assert not target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == (
        [target.name] if existing else []
    )  # no temp left


def test_atomic_writes_complete_and_keep_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        for kind, write in WRITERS.items():
            p = tmp_path / f"f.{kind}"
            write(p)
            assert p.stat().st_mode & 0o777 == 0o644, kind  # readable by the other users of the machine
        assert json.loads((tmp_path / "f.json").read_text()) == {"new": list(range(100))}
        assert torch.load(tmp_path / "f.torch", weights_only=True)["w"].shape == (1000,)
        assert np.load(tmp_path / "f.npy").shape == (64, 51)
    finally:
        os.umask(old)


def test_cli_disk_full_is_one_clean_line(tmp_path, full_disk, tiny_data):
    manifest, _ = tiny_data
    out = tmp_path / "summary.json"
    full_disk(budget=10)
    res = CliRunner().invoke(app, ["validate", str(manifest), "--json", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert errors == ["error: No space left on device"]
    assert not out.exists() and list(tmp_path.glob(".summary.json.*")) == []


@pytest.mark.parametrize(
    "exc,code,line",
    [
        (ZeroDivisionError("division by zero"), 1, "internal error: ZeroDivisionError: division by zero"),
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/x.wav"),
            2,
            "error: Permission denied /data/x.wav",
        ),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_error_boundary_exit_codes(tmp_path, tiny_data, monkeypatch, exc, code, line):
    """Bugs exit 1, environment faults 2, Ctrl-C 130; one line each and no traceback."""
    import plcli.data.validate as validate_mod

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(validate_mod, "validate_manifests", boom)
    monkeypatch.delenv("PLCLI_DEBUG", raising=False)
    res = CliRunner().invoke(app, ["validate", str(tiny_data[0])])
    assert res.exit_code == code
    assert res.stderr.splitlines()[0] == line and "Traceback" not in res.output
    if code == 1:
        monkeypatch.setenv("PLCLI_DEBUG", "1")  # the traceback, for bug reports
        res = CliRunner().invoke(app, ["validate", str(tiny_data[0])])
        assert isinstance(res.exception, ZeroDivisionError)


# ---------------------------------------------------------------------------------------------
# Unwritable, blocked and foreign run directories (all refused before any training)
# ---------------------------------------------------------------------------------------------


def _pretrain(tmp_path, manifest, out, *extra):
    cfg = write_config(tmp_path / "tiny.yaml")
    return CliRunner().invoke(
        app, ["pretrain", str(manifest), "--out", str(out), "--config", str(cfg), *extra]
    )


def test_out_blocked_by_a_file(tmp_path, tiny_data):
    manifest, _ = tiny_data
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    for out, msg in [
        (blocker, "exists and is not a folder"),
        (blocker / "run1", "cannot write to the run directory"),
    ]:
        res = _pretrain(tmp_path, manifest, out)
        assert res.exit_code == 2 and msg in res.stderr and "Traceback" not in res.output, res.output
    assert blocker.read_text() == "a file where a folder should be"


def test_out_not_writable(tmp_path, tiny_data, monkeypatch):
    """We run as root in CI, so chmod cannot take write permission away: refuse the write instead."""
    manifest, _ = tiny_data
    real_write_text = Path.write_text

    def no_permission(self, *a, **k):
        if self.name == ".write-test":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", no_permission)
    out = tmp_path / "ro"
    res = _pretrain(tmp_path, manifest, out)
    assert res.exit_code == 2, res.output
    assert f"cannot write to the run directory {out}: Permission denied" in res.stderr
    assert not (out / "config.yaml").exists()


@pytest.mark.parametrize(
    "config_text,message",
    [
        ("stage: pretrain\nplcli_format: 999\n", "incompatible plcli version"),
        ("stage: pretrain\n", "incompatible plcli version"),  # written before format versions existed
        ("stage: finetune\nplcli_format: 1\n", "holds a finetune run, not a pretrain run"),
        ("stage: [pretrain\n", "not valid YAML"),
        ("- just\n- a list\n", "not a plcli config"),
    ],
)
def test_foreign_run_dir_is_refused_and_untouched(tmp_path, tiny_data, config_text, message):
    manifest, _ = tiny_data
    out = tmp_path / "old-run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text(config_text)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"not ours")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    res = _pretrain(tmp_path, manifest, out, "--resume", "auto")
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output
    assert (out / "config.yaml").read_text() == config_text
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing half-written


@pytest.mark.parametrize("key", ["data.cache_dir", "data.rejects"])
def test_path_flags_of_the_stages(tmp_path, key):
    res = _pretrain(tmp_path, tmp_path / "missing.jsonl", tmp_path / "run", "--set",
                    f"{key}={tmp_path / 'x'}")
    assert res.exit_code == 2 and "missing.jsonl:0: manifest not found" in res.stderr, res.output


def test_rejected_input_leaves_no_run_behind(tmp_path, tiny_data):
    manifest, _ = tiny_data
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text().replace('"audio": "audio/', '"audio": "nowhere/', 1))
    out = tmp_path / "run"
    res = _pretrain(tmp_path, bad, out)
    assert res.exit_code == 2 and "bad.jsonl:1: audio file not found" in res.stderr
    assert not (out / "config.yaml").exists()


def test_existing_run_needs_resume_or_overwrite(tmp_path, tiny_data):
    manifest, _ = tiny_data
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("stage: pretrain\nplcli_format: 1\n")
    res = _pretrain(tmp_path, manifest, out)
    assert res.exit_code == 2 and "--resume auto" in res.stderr and "--overwrite" in res.stderr


# ---------------------------------------------------------------------------------------------
# Two processes filling one feature cache at the same time
# ---------------------------------------------------------------------------------------------


FILL_CACHE = """
import json, os, sys, time
import torch
from plcli.config import Config, FeatureConfig, opt
from plcli.data.features import FeatureCache

root, paths, go, views = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
torch.set_num_threads(1)
cache = FeatureCache(root, FeatureConfig(clip_seconds=1.0))
while not os.path.exists(go):  # start together
    time.sleep(0.005)
if views:
    cache.views(paths, {}, n_views=2, seed=0)
keys, packed = cache.features(paths)
assert packed.shape[0] == len(paths)
"""


def test_two_processes_share_one_cache(tmp_path, tiny_data):
    manifest, _ = tiny_data
    paths = sorted(str(p) for p in (manifest.parent / "audio").glob("*.wav"))[:16]
    root, go = tmp_path / "shared-cache", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FILL_CACHE, str(root), json.dumps(paths), str(go), str(int(i == 0))]
        )
        for i in range(2)
    ]
    time.sleep(0.5)
    go.touch()
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    assert list(root.rglob("*.tmp")) == []  # no temporary file left behind
    # every entry loads and equals a fresh computation; the pack reads back
    cache = FeatureCache(root, FeatureConfig(clip_seconds=1.0))
    keys, packed = cache.features(paths)
    assert cache.computed == 0 and cache.reused == len(paths)
    fresh = FeatureCache(tmp_path / "fresh", FeatureConfig(clip_seconds=1.0))
    _, expected = fresh.features(paths)
    np.testing.assert_array_equal(np.asarray(packed), np.asarray(expected))


# ---------------------------------------------------------------------------------------------
# Kill -9 and Ctrl-C of the real CLI
# ---------------------------------------------------------------------------------------------


EPOCHS = 4  # 12 steps each: three epochs of margin after the first checkpoint


def _start_pretrain(tmp_path, manifest, out, *extra) -> subprocess.Popen:
    cfg = write_config(tmp_path / "steps.yaml")
    log_path = tmp_path / f"{out.name}-{len(list(tmp_path.glob(f'{out.name}-*.log')))}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plcli",
            "pretrain",
            str(manifest),
            "--out",
            str(out),
            "--config",
            str(cfg),
            "--epochs",
            str(EPOCHS),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        # a shell's background jobs inherit SIGINT ignored, and then Python never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.log_path = log_path
    return proc


def _signal_mid_epoch(
    proc: subprocess.Popen, out: Path, sig: int, delay: float = 0.3, timeout: float = 400
) -> None:
    """Send ``sig`` ``delay`` seconds after the first epoch's checkpoint appears (early in the second
    epoch)."""
    ckpt = out / "checkpoints" / "last.ckpt"
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if ckpt.exists():
            time.sleep(delay)
            assert proc.poll() is None, "the run ended before it could be interrupted"
            proc.send_signal(sig)
            return
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def _log(proc) -> str:
    return proc.log_path.read_text()


@pytest.fixture
def steps_data(tmp_path):
    """48 clips, batch 4: 12 optimizer steps per epoch."""
    from tests.conftest import write_dataset

    return write_dataset(tmp_path / "data", n=48)[0]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto(tmp_path, steps_data):
    out = tmp_path / "killed"
    proc = _start_pretrain(tmp_path, steps_data, out)
    _signal_mid_epoch(proc, out, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "metrics.json").exists()  # it really died before the end
    # what the kill left is complete and loadable, and marks an epoch boundary
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] in (12, 24, 36)  # an epoch boundary, before the end
    assert list(out.rglob("*.tmp")) == []

    again = _start_pretrain(tmp_path, steps_data, out, "--resume", "auto")
    assert again.wait(timeout=400) == 0, _log(again)
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == EPOCHS
    assert (out / "logs" / "version_1").is_dir()  # the second start resumed, it did not start over
    assert len(logged_history(out, "probe/knn_acc")) == EPOCHS

    # an uninterrupted run of the same configuration takes the same number of steps
    ref = tmp_path / "reference"
    res = CliRunner().invoke(
        app,
        [
            "pretrain",
            str(steps_data),
            "--out",
            str(ref),
            "--config",
            str(tmp_path / "steps.yaml"),
            "--epochs",
            str(EPOCHS),
        ],
    )
    assert res.exit_code == 0, res.output
    assert m["global_step"] == json.loads((ref / "metrics.json").read_text())["global_step"] == 12 * EPOCHS


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, steps_data):
    out = tmp_path / "interrupted"
    proc = _start_pretrain(tmp_path, steps_data, out)
    _signal_mid_epoch(proc, out, signal.SIGINT)
    rc = proc.wait(timeout=120)
    log = _log(proc)
    assert rc == 130, log
    assert f"interrupted; checkpoint saved to {out / 'checkpoints' / 'last.ckpt'}" in log.replace("\n", "")
    assert "Traceback" not in log
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert 12 <= ckpt["global_step"] < 12 * EPOCHS
    assert not (out / "metrics.json").exists()

    again = _start_pretrain(tmp_path, steps_data, out, "--resume", "auto")
    assert again.wait(timeout=400) == 0, _log(again)
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == EPOCHS
    print("after ctrl-c + resume:", ckpt["global_step"], m["global_step"])
    assert m["global_step"] == 12 * EPOCHS


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch(tmp_path, steps_data):
    """--resume auto and finetune --pretrained read last.ckpt: it must hold the final weights."""
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "pretrain",
            str(steps_data),
            "--out",
            str(out),
            "--config",
            str(write_config(tmp_path / "s.yaml")),
            "--epochs",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    history = m["probe_knn_acc_history"]
    if history[-1] > max(history[:-1]):
        pytest.skip("the probe improved in the last epoch, so Lightning refreshed last.ckpt anyway")
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == m["global_step"]


# ---------------------------------------------------------------------------------------------
# Reproducibility and resuming with another vocabulary
# ---------------------------------------------------------------------------------------------

TIMING_KEYS = {
    "feature_seconds",
    "fit_seconds",
    "total_seconds",
    "train_views_per_second",
    "embed_seconds",
    "predict_seconds",
    "seconds",
}


def _strip_timings(m):
    if isinstance(m, dict):
        return {
            k: _strip_timings(v) for k, v in m.items() if k not in TIMING_KEYS and not k.endswith("_seconds")
        }
    return m


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, steps_data, monkeypatch):
    """Two pretrain + finetune pipelines with the same data and seed (each with its own fresh cache)."""
    results = []
    for i in range(2):
        d = tmp_path / f"try{i}"
        d.mkdir()
        cfg = write_config(d / "pre.yaml")
        ft = write_config(d / "ft.yaml", {"trainer": STEPS_CFG["trainer"], "copies": 2, "min_steps": 0})
        monkeypatch.setenv("PLCLI_CACHE", str(d / "cache"))
        cache = []
        res = CliRunner().invoke(
            app,
            [
                "pretrain",
                str(steps_data),
                "--out",
                str(d / "pre"),
                "--config",
                str(cfg),
                "--epochs",
                "2",
                "--seed",
                "7",
                *cache,
            ],
        )
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(
            app,
            [
                "finetune",
                str(steps_data),
                "--pretrained",
                str(d / "pre"),
                "--out",
                str(d / "ft"),
                "--config",
                str(ft),
                "--epochs",
                "2",
                "--seed",
                "7",
                *cache,
            ],
        )
        assert res.exit_code == 0, res.output
        results.append(
            [_strip_timings(json.loads((d / s / "metrics.json").read_text())) for s in ("pre", "ft")]
        )
    assert results[0] == results[1]
    assert results[0][0]["train_loss"] is not None and results[0][1]["epochs"] == 2


@pytest.mark.slow
def test_resume_with_another_vocabulary_is_refused(tmp_path, steps_data):
    from tests.conftest import write_dataset

    other, _ = write_dataset(tmp_path / "other", n=48, n_classes=5)
    ft = write_config(tmp_path / "ft.yaml", {"trainer": STEPS_CFG["trainer"], "copies": 0, "min_steps": 0})
    out = tmp_path / "ft"
    args = ["--pretrained", "none", "--out", str(out), "--config", str(ft)]
    res = CliRunner().invoke(app, ["finetune", str(steps_data), *args, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = CliRunner().invoke(app, ["finetune", str(other), *args, "--epochs", "2", "--resume", "auto"])
    assert res.exit_code == 2 and "vocabulary" in res.stderr, res.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@dataclass
class _Inner(Config):
    head: float = opt(3.0, "new, changes the checkpoint", before=0.0)
    lr: float = opt(0.1, "no before value")


@dataclass
class _Outer(Config):
    weight: float = opt(2.0, "new", before=0.0)
    same: int = opt(1, "new, but its before value is the default", before=1)
    inner: _Inner = opt(factory=_Inner)


def test_a_resumed_run_keeps_the_settings_its_config_predates():
    """``opt(before=...)``: a field missing from a resumed run's config takes its ``before`` value on
    rank 0, and a DDP worker takes the value rank 0 wrote; fields without ``before`` are untouched."""
    cfg = _Outer()
    assert cfg.keep_resumed({"inner": {"lr": 0.5}}) == {"weight": 0.0, "inner.head": 0.0}
    assert (cfg.weight, cfg.same, cfg.inner.head, cfg.inner.lr) == (0.0, 1, 0.0, 0.1)
    cfg = _Outer()
    assert cfg.keep_resumed({}) == {"weight": 0.0,
                                    "inner.head": 0.0}  # a whole section missing predates its fields
    cfg = _Outer(weight=5.0)
    assert cfg.keep_resumed({"weight": 1.0, "inner": {"head": 3.0}}) == {} and cfg.weight == 5.0
    cfg = _Outer()
    assert cfg.keep_resumed({"weight": 0.0, "inner": {"head": "0.5"}}, worker=True) == {}
    assert (cfg.weight, cfg.inner.head, cfg.inner.lr) == (0.0, 0.5, 0.1)


def test_start_run_keeps_old_settings_only_when_a_checkpoint_is_resumed(tmp_path):
    """``--resume auto`` in a folder without ``last.ckpt`` starts afresh, with today's defaults."""
    from plcli.pretrain import PretrainConfig
    from plcli.runs import FORMAT_VERSION, start_run

    out = tmp_path / "pre"
    out.mkdir()
    old = {"stage": "pretrain", "plcli_format": FORMAT_VERSION, **PretrainConfig().to_dict()}
    del old["transcript_ctc"]
    (out / "config.yaml").write_text(yaml.safe_dump(old))
    said = []
    cfg = PretrainConfig()
    start_run(out, cfg, "pretrain", "auto", log=said.append)
    assert cfg.transcript_ctc == 3.0 and not said
    (out / "config.yaml").write_text(yaml.safe_dump(old))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    start_run(out, cfg, "pretrain", "auto", log=said.append)
    assert cfg.transcript_ctc == 0.0 and said == ["resuming a run from before transcript_ctc: it continues "
                                                  "with transcript_ctc=0.0, as it started"]
    assert yaml.safe_load((out / "config.yaml").read_text())["transcript_ctc"] == 0.0
