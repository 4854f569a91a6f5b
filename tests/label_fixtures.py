"""A tiny manifest for ``plcli label``'s tests and a labelling server running in a thread."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

CANDS = ["On my way", "ok", "Call me later", "See you tomorrow!"]


def sine(path: Path, freq: float = 440.0, seconds: float = 0.3, sr: int = 16000) -> Path:
    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def write_manifest(root: Path, n: int = 6) -> Path:
    """``n`` rows r0.. with candidates and audio, plus: ``exact`` (a manifest label), ``gone`` (audio
    missing), ``bare`` (no candidates); speakers alternate."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sine(root / "audio" / f"r{i}.wav", 300 + 50 * i)
        rows.append({"id": f"r{i}", "audio": f"audio/r{i}.wav", "candidates": CANDS[i % 2:] + CANDS[: i % 2],
                     "speaker": f"s{i % 2}", "timestamp": f"2024-05-01T12:0{i}:00"})
    sine(root / "audio" / "exact.wav")
    rows.append({"id": "exact", "audio": "audio/exact.wav", "candidates": CANDS, "label": "ok"})
    rows.append({"id": "gone", "audio": "audio/gone.wav", "candidates": CANDS})
    rows.append({"id": "bare", "audio": "audio/r0.wav", "candidates": []})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextlib.contextmanager
def serving(manifest: Path, labels: Path, **cfg):
    """(url, session, logged lines) of a labelling server on a free port, stopped and its labels
    file closed after."""
    from plcli.config import load_config
    from plcli.label import LabelPageConfig
    from plcli.label.server import make_server
    from plcli.label.session import build_session
    from plcli.label.store import LabelStore

    config = load_config(LabelPageConfig, None, {"manifests": [str(manifest)], "labels": str(labels), **cfg})
    logged: list[str] = []
    with LabelStore(labels, warn=logged.append) as store:
        session = build_session(config, store, logged.append)
        server = make_server(session, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", session, logged
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
