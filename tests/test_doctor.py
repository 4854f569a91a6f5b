"""The install check (`make install`), `plcli doctor`, and the lock it compares against."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plcli import doctor
from plcli.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _fake_broken_torchaudio(root: Path, version: str = "2.11.1") -> Path:
    """A torchaudio package that fails to import the way 2.11.1 does beside torch 2.11.0, with a
    dist-info claiming ``version``; placed first on sys.path it shadows the real one."""
    pkg = root / "torchaudio"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        try:
            raise OSError("/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so: "
                          "undefined symbol: torch_exception_get_what_without_backtrace")
        except OSError as e:
            raise OSError("Could not load this library: libtorchaudio.so") from e
    """))
    info = root / f"torchaudio-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchaudio\nVersion: {version}\n")
    return root


def test_lock_pins_a_working_pair_and_the_venv_matches_it():
    lock = doctor.locked_versions()
    assert lock, "requirements.lock is missing or unreadable"
    assert lock["torch"].startswith("2.11.") and lock["torchaudio"].startswith("2.11.")
    assert lock["torchaudio"] != "2.11.1"  # does not load with torch 2.11.0
    # what is installed is what the lock says (make install installs from it)
    for name in doctor.REQUIRED:
        assert doctor.dist_version(name) == lock[doctor._norm(name)], name


def test_install_check_passes_here_and_names_versions():
    checks = doctor.run_checks()
    assert all(c.ok for c in checks), [c.to_dict() for c in checks if not c.ok]
    line = doctor.success_line(checks)
    import torch
    import torchaudio

    assert f"torch {torch.__version__.split('+')[0]}" in line
    assert f"torchaudio {torchaudio.__version__.split('+')[0]}" in line
    assert doctor.failure_line(checks) is None


def test_install_check_fails_with_one_line_for_a_broken_torchaudio(tmp_path):
    fake = _fake_broken_torchaudio(tmp_path / "fake")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    r = subprocess.run([sys.executable, "-m", "plcli.doctor", "--install-check"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    msg = lines[0]
    assert msg.startswith("plcli install check failed: torchaudio 2.11.1 (lock: 2.11.0), torch 2.11.0")
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in msg
    assert "make reinstall" in msg
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_install_stops_on_a_broken_torchaudio(tmp_path):
    """`make install` on a venv whose torchaudio was replaced: the stamp is fresh, so nothing is
    reinstalled, and the check stops make with the one-line message."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # newer than pyproject.toml and the lock
    fake = _fake_broken_torchaudio(tmp_path / "fake")
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={fake}:{ROOT} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    r = subprocess.run(["make", "-C", str(ROOT), "install", f"VENV={venv}", f"PY={py}"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode != 0
    assert "plcli install check failed: torchaudio 2.11.1 (lock: 2.11.0), torch 2.11.0" in r.stderr
    assert "pip install" not in r.stdout  # the venv was not touched
    # and the good venv passes the same target
    good = tmp_path / "good"
    good.mkdir()
    (good / ".installed").touch()
    py.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} \"$@\"\n")
    r = subprocess.run(["make", "-C", str(ROOT), "install", f"VENV={good}", f"PY={py}"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "install check passed: torch 2.11.0, torchaudio 2.11.0" in r.stdout


def test_failure_line_names_missing_package():
    checks = [doctor.Check("torch", "2.11.0", True, "ok", "2.11.0"),
              doctor.Check("soundfile", None, False, "not installed", "0.14.0")]
    line = doctor.failure_line(checks)
    assert line.startswith("plcli install check failed: soundfile missing (lock: 0.14.0): not installed")


def test_doctor_command_reports_everything(tmp_path):
    cache = tmp_path / "cache"
    (cache / "items" / "ab").mkdir(parents=True)
    (cache / "items" / "ab" / "x.npy").write_bytes(b"0" * 2048)
    (cache / "items" / "ab" / ".x.123.npy.tmp").write_bytes(b"0" * 10)
    r = CliRunner().invoke(app, ["doctor", "--json", "--cache-dir", str(cache)])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["ok"] is True
    assert [c["name"] for c in rep["required"]] == list(doctor.REQUIRED)
    assert rep["cache"] == {"path": str(cache), "exists": True, "bytes": 2058, "files": 2, "tmp_files": 1}
    acc = rep["accelerators"]
    import torch

    assert acc["torch_threads"] == torch.get_num_threads()
    assert acc["lightning_auto"].startswith("gpu" if torch.cuda.is_available() else "cpu")
    assert rep["engines"]["espeak"] > 0
    assert set(rep["extras"]) == set(doctor.EXTRAS)
    # the table form prints the same facts
    r = CliRunner().invoke(app, ["doctor", "--cache-dir", str(cache)])
    assert r.exit_code == 0
    for word in ("torchaudio", "lightning", "torch threads", "feature cache", "speech engine espeak",
                 "pocketsphinx"):
        assert word in r.output


def test_doctor_exits_nonzero_when_a_required_piece_is_broken(monkeypatch, tmp_path):
    def broken():
        raise OSError("libsndfile.so: cannot open shared object file")

    monkeypatch.setitem(doctor.SMOKE, "soundfile", broken)
    r = CliRunner().invoke(app, ["doctor", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert "FAILED" in r.output and "soundfile" in r.output
