"""``plcli export``: a self-contained model file, waveform in, class probabilities out.

The exported module is ``plcli.models.classifier.WaveClassifier`` (log-mel front end + classifier
+ softmax): input a float32 mono waveform at the model's sample rate, shape ``(batch, samples)`` or
``(samples,)``; output ``(batch, classes)`` probabilities in vocabulary order. Any length works
(the encoder pools over time), but the model was trained on clips centre-cropped or zero-padded to
``clip_seconds``; do the same for identical results.

The label vocabulary travels twice: embedded in the file (TorchScript ``_extra_files`` entry
``plcli.json``, ONNX ``metadata_props`` key ``plcli``) and as ``FILE.vocab.json`` next to it. Both
hold the same JSON: sample rate, clip length, the display labels in class order and the full
vocabulary (keys, counts, normalisation).

What it leaves out: a model with a CTC head (the distill stage's default) ranks candidate texts by
a combined score (``plcli.ranking``); the exported file carries only the closed-set head, so it
names messages of its vocabulary and cannot score a text it never saw. The metadata's
``left_out`` says so, and the command prints it; ``plcli predict`` ranks any candidate text.

TorchScript is traced (``LogMel``'s module-level epsilon and the encoders' shape checks are not
scriptable) and wrapped in a small scripted module that accepts 1-D input; the trace is checked
against the Python model on a batch of a different size and length before it is written.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import plcli
from plcli.config import Config, opt
from plcli.errors import UserError
from plcli.models.classifier import WaveClassifier

FORMATS = ("torchscript", "onnx")
LEFT_OUT_CTC = ("the CTC head and the combined ranking of candidate texts are not exported: the file "
                "gives the closed-set probabilities over the vocabulary only; rank candidate texts, also new "
                "ones, with plcli predict")
EXPORT_FORMAT = 1


class _AnyRank(nn.Module):
    """Scripted shim: (samples,) becomes (1, samples) before the traced module runs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        return self.inner(wave)


@dataclass
class ExportConfig(Config):
    """``plcli export`` options."""

    model: str = opt("", "run directory with a classifier (finetune or distill)")
    out: str = opt("", "file to write (e.g. model.ts or model.onnx)")
    format: str = opt(
        "torchscript",
        "torchscript (needs only torch) or onnx (needs the onnx and onnxscript packages)",
        choices=FORMATS,
    )
    opset: int = opt(18, "ONNX opset version", min=17)

    def check(self) -> None:
        if not self.model:
            raise UserError("--model is required")
        if not self.out:
            raise UserError("--out is required")


def metadata(vocab, features, stage: str) -> dict:
    """The JSON stored with an exported model."""
    return {
        "format": EXPORT_FORMAT,
        "plcli_version": plcli.__version__,
        "stage": stage,
        "sample_rate": features.sample_rate,
        "clip_seconds": features.clip_seconds,
        "input": "float32 mono waveform, (batch, samples) or (samples,), at sample_rate",
        "output": "(batch, classes) probabilities, classes in the order of 'labels'",
        "labels": list(vocab.display),
        "vocab": vocab.to_dict(),
        "features": features.to_dict(),
    }


def vocab_path(out: str | Path) -> Path:
    """Where the vocabulary JSON goes next to the exported file: ``model.ts`` -> ``model.vocab.json``."""
    out = Path(out)
    return out.with_name(out.stem + ".vocab.json")


def to_torchscript(wave_model: WaveClassifier, num_samples: int) -> torch.jit.ScriptModule:
    """Trace ``wave_model`` (eval mode) and wrap it; checked on another batch size and length."""
    wave_model = wave_model.eval()
    gen = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(2, num_samples, generator=gen)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter(
            "ignore"
        )  # torch.jit is deprecated in favour of torch.export, but still the portable format
        traced = torch.jit.trace(wave_model, example, check_trace=False)
        scripted = torch.jit.script(_AnyRank(traced))
        probe = 0.1 * torch.randn(3, max(num_samples // 2, 1024), generator=gen)
        diff = (scripted(probe) - wave_model(probe)).abs().max().item()
    if not diff <= 1e-5:
        raise RuntimeError(f"the traced model differs from the Python model by {diff:.3g}")
    return scripted


def run(cfg: ExportConfig, log=print) -> dict:
    """Write the exported model and ``FILE.vocab.json``; returns what was written."""
    from plcli.inference import load_predictor
    from plcli.io import atomic_open, atomic_write_json

    out = Path(cfg.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as model.ts")
    if cfg.format == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript")):
        raise UserError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'plcli[onnx]' "
            "(or use --format torchscript, which needs only torch)"
        )
    model, vocab, features, stage = load_predictor(cfg.model)
    wave_model = WaveClassifier(model, features).eval()
    meta = metadata(vocab, features, stage)
    if model.has_ctc:
        meta["left_out"] = [LEFT_OUT_CTC]
        log(f"note: {LEFT_OUT_CTC}")
    meta_json = json.dumps(meta, ensure_ascii=False)
    if cfg.format == "torchscript":
        scripted = to_torchscript(wave_model, features.num_samples)
        with atomic_open(out, "wb") as f:
            torch.jit.save(scripted, f, _extra_files={"plcli.json": meta_json})
    else:
        _export_onnx(wave_model, features.num_samples, out, meta_json, cfg.opset)
    atomic_write_json(vocab_path(out), meta)
    log(f"wrote {cfg.format} model to {out} and its vocabulary to {vocab_path(out)}")
    return {
        "out": str(out),
        "vocab": str(vocab_path(out)),
        "format": cfg.format,
        "classes": len(vocab),
        "sample_rate": features.sample_rate,
        "left_out": meta.get("left_out", []),
    }


def _export_onnx(wave_model: WaveClassifier, num_samples: int, out: Path, meta_json: str, opset: int) -> None:
    from plcli.io import atomic_open

    example = 0.1 * torch.randn(2, num_samples, generator=torch.Generator().manual_seed(0))
    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=1024)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wave_model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["wave"],
                output_names=["probs"],
                dynamic_shapes={"wave": {0: batch, 1: samples}},
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - exporter failures are many and version-specific
        raise UserError(
            f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "--format torchscript is the supported fallback"
        ) from None
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "plcli", meta_json
    with atomic_open(out, "wb") as f:
        f.write(proto.SerializeToString())
