"""Killed runs leave temporary cache entries; the next open removes them, live writers' are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plcli.config import FeatureConfig
from plcli.data import features
from plcli.data.features import FeatureCache, clean_stale_tmp

ROOT = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
from pathlib import Path
from plcli.data.features import _new_tmp
fd, tmp = _new_tmp(Path(sys.argv[1]))
print(tmp, flush=True)
time.sleep(600)
"""

pytestmark = pytest.mark.skipif(features.fcntl is None, reason="lock-based detection needs fcntl")


def _age(path: str | Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=env)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.name.endswith(".npy.tmp") and tmp.exists()
    return proc, tmp


def test_live_writer_kept_killed_writer_removed(tmp_path):
    root = tmp_path / "cache"
    proc, tmp = _start_writer(root / "items" / "ab" / "abcd.npy")
    try:
        _age(tmp)  # old enough: only the lock protects it now
        assert clean_stale_tmp(root) == 0
        assert tmp.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert clean_stale_tmp(root) == 1
    assert not tmp.exists()


def test_young_unlocked_tmp_waits_for_the_grace(tmp_path):
    d = tmp_path / "items" / "cd"
    d.mkdir(parents=True)
    tmp = d / ".cdef.x1y2.npy.tmp"
    tmp.write_bytes(b"partial")
    other = d / "notes.tmp"  # not ours: never touched
    other.write_bytes(b"x")
    _age(other)
    assert clean_stale_tmp(tmp_path) == 0 and tmp.exists()
    assert clean_stale_tmp(tmp_path, grace=0) == 1 and not tmp.exists()
    assert other.exists()


def test_opening_the_cache_cleans_and_keeps_entries(tmp_path, tiny_data):
    manifest, _ = tiny_data
    root = tmp_path / "cache2"
    cache = FeatureCache(root, FeatureConfig())
    paths = sorted((manifest.parent / "audio").glob("*.wav"))[:3]
    keys, packed = cache.features(paths)
    entry = cache.item_path(keys[0])
    stale = entry.with_name(f".{entry.stem}.zz.npy.tmp")
    stale.write_bytes(b"half")
    _age(stale)
    features._CLEANED.clear()  # a new process
    again = FeatureCache(root, FeatureConfig())
    assert again.stale_removed == 1 and not stale.exists()
    keys2, packed2 = again.features(paths)
    assert again.computed == 0 and keys2 == keys
    np.testing.assert_array_equal(np.asarray(packed), np.asarray(packed2))
