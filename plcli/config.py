"""Configuration dataclasses (litgpt style): every field documented and checked.

A stage's configuration is a tree of dataclasses. It can be read from YAML or JSON (``--config``),
then command-line flags and ``--set KEY=VALUE`` override single fields by dotted name
(``trainer.epochs``). The command-line flags themselves are generated from these fields
(``plcli.cli_options``). The resolved configuration is written as ``config.yaml`` into every run
directory; later stages read it back to reuse, for example, the feature parameters the encoder was
trained with.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plcli.errors import UserError
from plcli.io import atomic_write_text


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, choices=None, min=None, max=None,
        before: Any = dataclasses.MISSING, why: str = ""):
    """A dataclass field with a help text and simple checks (choices, numeric bounds).

    ``help`` is one line (at most 100 characters): the command line shows it next to the flag.
    ``why``: the reasoning behind the setting or its default, where the help has no room for it;
    docs/options.md lists it.
    ``before``: how runs behaved before the field existed. A resumed run whose ``config.yaml`` lacks
    the field continues with this value rather than the default (``Config.keep_resumed``), for
    settings whose default changes what the checkpoint holds.
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max, "before": before, "why": why}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Config:
    """Mixin for config dataclasses: dict/YAML round trip, dotted overrides, checks."""

    def check(self) -> None:
        """Stage-specific cross-field checks; raise ``UserError``. Field-level checks run first."""

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Config) else _plain(v)
        return out

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "") -> Config:
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        kwargs = {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown config key(s) {', '.join(where + k for k in unknown)}"
                            + _did_you_mean(unknown[0], names, where))
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            sub = _config_type(hints[f.name])
            if sub is not None:
                kwargs[f.name] = sub.from_dict(data[f.name], where=f"{where}{f.name}.")
            else:
                kwargs[f.name] = _coerce(data[f.name], hints[f.name], where + f.name)
        return cls(**kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_yaml())

    # -- overrides and checks ----------------------------------------------------------------
    def override(self, values: dict[str, Any]) -> None:
        """Set fields by dotted name; ``None`` values are ignored (flag not given)."""
        for key, value in values.items():
            if value is None:
                continue
            obj, name, tp = self.lookup(key)
            setattr(obj, name, _coerce(value, tp, key))

    def set_text(self, key: str, text: str) -> None:
        """``--set KEY=VALUE``: the field at dotted ``key`` from command-line text, typed by its annotation
        (``null`` or ``none`` for an optional field's None; a list as ``[a, b]`` or one item)."""
        obj, name, tp = self.lookup(key)
        setattr(obj, name, _from_text(text, tp, key))

    def lookup(self, key: str) -> tuple[Config, str, Any]:
        """(the section holding dotted ``key``, the field's name, its annotated type); ``UserError`` naming
        the closest key where there is no such setting."""
        obj: Any = self
        parts = key.split(".")
        for i, p in enumerate(parts):
            hints = typing.get_type_hints(type(obj))
            sub = _config_type(hints[p]) if p in hints else None
            if sub is not None and i == len(parts) - 1:
                raise UserError(f"unknown config key {key}: it is a section, set its fields ({key}.KEY)")
            if p not in hints or (sub is None and i < len(parts) - 1):
                known = [k for k, *_ in self.settings()]
                raise UserError(f"unknown config key {key}" + _did_you_mean(key, known, ""))
            if i < len(parts) - 1:
                obj = getattr(obj, p)
        return obj, parts[-1], hints[parts[-1]]

    def settings(self, where: str = "") -> Iterator[tuple[str, dataclasses.Field, Any, Any]]:
        """Every leaf setting, depth first in declaration order: (dotted key, field, type, value)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                yield from v.settings(f"{where}{f.name}.")
            else:
                yield where + f.name, f, hints[f.name], v

    def keep_resumed(self, saved: dict, worker: bool = False, where: str = "") -> dict[str, Any]:
        """Resuming a run whose resolved config is ``saved``: every field declared with ``before`` that
        ``saved`` lacks takes that value, so the run continues as it started; returns {dotted name: value}.

        A DDP worker rank (``worker``) reads the config its rank 0 has just written, so there it takes
        the saved value of those fields instead, which is what rank 0 resolved.
        """
        kept = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                sub = saved.get(f.name)
                kept.update(v.keep_resumed(sub if isinstance(sub, dict) else {}, worker, f"{where}{f.name}."))
                continue
            before = f.metadata.get("before", dataclasses.MISSING)
            if before is dataclasses.MISSING:
                continue
            if f.name not in saved:
                if not worker and v != before:
                    setattr(self, f.name, before)
                    kept[where + f.name] = before
            elif worker:
                setattr(self, f.name,
                        _coerce(saved[f.name], typing.get_type_hints(type(self))[f.name], where + f.name))
        return kept

    def validate(self, where: str = "") -> None:
        """Check every field (choices, bounds) recursively, then the cross-field ``check``."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v.validate(where=f"{where}{f.name}.")
                continue
            choices, lo, hi = f.metadata.get("choices"), f.metadata.get("min"), f.metadata.get("max")
            name = where + f.name
            if choices is not None and v is not None and v not in choices:
                raise UserError(f"{name}={v!r} is not one of {', '.join(map(str, choices))}"
                                + _did_you_mean(str(v), [str(c) for c in choices], ""))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if isinstance(v, float) and not math.isfinite(v):
                    raise UserError(f"{name}={v} is not a finite number")
                if lo is not None and v < lo:
                    raise UserError(f"{name}={v} must be >= {lo}")
                if hi is not None and v > hi:
                    raise UserError(f"{name}={v} must be <= {hi}")
        self.check()


def _did_you_mean(word: str, known: Iterable[str], where: str) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {where}{close[0]}?" if close else ""


def _from_text(text: str, tp: Any, name: str) -> Any:
    """Command-line text (``--set``) to the annotated type ``tp``."""
    args = typing.get_args(tp)
    if type(None) in args and text.strip().lower() in ("null", "none", "~"):
        return None
    union = typing.get_origin(tp) is typing.Union or str(typing.get_origin(tp)) == "<class 'types.UnionType'>"
    non_none = [a for a in args if a is not type(None)] if union else [tp]
    if any(typing.get_origin(a) in (list, tuple) for a in non_none) and text.lstrip().startswith("["):
        try:
            return _coerce(yaml.safe_load(text), tp, name)
        except yaml.YAMLError:
            raise UserError(f"{name}: not a list: {text!r}") from None
    return _coerce(text, tp, name)


def parse_sets(items: Iterable[str]) -> list[tuple[str, str]]:
    """``--set KEY=VALUE`` items as (key, value text) pairs; ``UserError`` on a malformed one."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: expected KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value))
    return pairs


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _config_type(tp: Any) -> type[Config] | None:
    return tp if isinstance(tp, type) and issubclass(tp, Config) else None


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert YAML/CLI values to the annotated type, or raise a readable ``UserError``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _coerce(value, a, name)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, name) for v in value]
    if tp is Any:
        return value
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def min_steps_opt():
    """``min_steps`` of the training stages that have it (pretrain, finetune): one definition."""
    return opt(1000, "train at least this many optimiser steps (counted on one device); 0 = off",
               why="a small data set then trains more epochs than trainer.epochs", min=0)


def outside_weight_opt():
    """``outside_weight`` of the stages that learn from candidate sets (finetune, distill): one definition."""
    return opt(
        0.0,
        "weight of non-candidate classes in candidate rows' targets and likelihood (ALIM; 0: off)",
        why="for voice notes nobody typed, whose candidates miss the truth (Xu et al. 2023); docs/distill.md",
        min=0.0,
        max=0.9,
    )


def read_config_file(path: str | os.PathLike) -> dict:
    """The options mapping of a YAML or JSON config file; ``UserError`` for a missing or malformed one."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {p}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of options at the top level")
    return data


def build_config(cls: type[Config], data: dict, overrides: dict[str, Any],
                 sets: Iterable[tuple[str, str]] = ()) -> Config:
    """``cls`` from the mapping ``data``, then flag overrides (``None``: not given), then ``--set``
    (key, value text) pairs (the last one of a key wins); validated."""
    cfg = cls.from_dict(data)
    cfg.override(overrides)
    for key, text in sets:
        cfg.set_text(key, text)
    cfg.validate()
    return cfg


def load_config(cls: type[Config], path: str | os.PathLike | None, overrides: dict[str, Any],
                sets: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML or JSON file (if any), then flag overrides (``None``: not given), then
    ``--set KEY=VALUE`` items (the last one of a key wins); validated."""
    return build_config(cls, read_config_file(path) if path is not None else {}, overrides, parse_sets(sets))


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.yaml`` of an earlier run, as a plain dict."""
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise UserError(f"{run_dir} is not a plcli run directory (no config.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: not a plcli config")
    return data


# ---------------------------------------------------------------------------------------------
# Shared sections
# ---------------------------------------------------------------------------------------------


@dataclass
class FeatureConfig(Config):
    """How audio becomes log-mel features. Part of every model: later stages inherit it."""

    sample_rate: int = opt(16000, "model sample rate in Hz; audio is resampled to it", min=4000)
    clip_seconds: float = opt(
        3.0, "fixed clip length: longer audio is centre-cropped, shorter is centre-padded with zeros", min=0.1
    )
    n_fft: int = opt(512, "FFT size", min=16)
    win_length: int = opt(400, "analysis window in samples (25 ms at 16 kHz)", min=16)
    hop_length: int = opt(320, "hop in samples (20 ms at 16 kHz)", min=1)
    n_mels: int = opt(64, "number of mel bands", min=8)
    f_min: float = opt(20.0, "lowest mel frequency in Hz", min=0.0)
    f_max: float = opt(7600.0, "highest mel frequency in Hz (<= sample_rate / 2)", min=100.0)

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        return self.num_samples // self.hop_length + 1

    def check(self) -> None:
        if self.win_length > self.n_fft:
            raise UserError(f"win_length={self.win_length} must be <= n_fft={self.n_fft}")
        if self.f_max > self.sample_rate / 2:
            raise UserError(f"f_max={self.f_max} must be <= sample_rate/2={self.sample_rate / 2}")
        if self.f_min >= self.f_max:
            raise UserError("f_min must be below f_max")


@dataclass
class LabelConfig(Config):
    """How label text is normalised before it enters the vocabulary (see docs/data.md)."""

    lowercase: bool = opt(True, "case-fold labels ('See you' == 'see you')")
    nfkc: bool = opt(True, "Unicode NFKC normalisation (full-width and compatibility forms)")
    collapse_whitespace: bool = opt(True, "trim and collapse runs of whitespace to one space")
    strip_punctuation: bool = opt(True,
                                  "remove punctuation and symbols at the start and end ('ok!!' == 'ok')")


@dataclass
class DataConfig(Config):
    """Inputs: manifests, validation policy and the feature cache."""

    manifests: list[str] = opt(factory=list, help="training manifests (JSONL or CSV)")
    skip_invalid: bool = opt(False,
                             "drop invalid rows (each written to the rejects file) instead of stopping")
    rejects: str | None = opt(None,
                              "where --skip-invalid writes rejected rows (default: RUN_DIR/rejects.jsonl)")
    cache_dir: str | None = opt(None, "feature cache folder (default: $PLCLI_CACHE or ~/.cache/plcli)")
    val_fraction: float = opt(0.2, "share of exact rows held out for validation metrics", min=0.0, max=0.9)
    labels: LabelConfig = opt(factory=LabelConfig, help="label normalisation")
    language: str = opt(
        "auto",
        "the messages' language, ISO 639-1 (en, de, ru, ...); auto: detected from the training texts",
        why="the voice of the phoneme tokens and of pocketsphinx's guessed pronunciations (plcli.language)",
        before="en",
    )

    def check(self) -> None:
        from plcli.language import AUTO, espeak_voice

        self.language = str(self.language).strip().lower()
        if self.language != AUTO:
            try:
                espeak_voice(self.language)
            except ValueError as e:
                raise UserError(f"data.language: {e}") from None


@dataclass
class TrainerConfig(Config):
    """Lightning Trainer options and the optimisation basics."""

    epochs: int = opt(10, "training epochs", min=1)
    batch_size: int = opt(256, "batch size per device", min=1)
    lr: float = opt(1e-3, "peak learning rate (AdamW, cosine schedule with warm-up)", min=0.0)
    weight_decay: float = opt(1e-4, "AdamW weight decay", min=0.0)
    seed: int = opt(0, "random seed (seed_everything with workers=True)")
    accelerator: str = opt("auto", "cpu, gpu, cuda, mps or auto")
    devices: str = opt("auto", "number of devices, a list like '0,1', or auto")
    strategy: str = opt("auto", "auto, ddp, ddp_spawn, ...")
    num_nodes: int = opt(1, "number of nodes", min=1)
    precision: str = opt("32-true", "32-true, 16-mixed, bf16-mixed, ...")
    num_workers: int = opt(0, "DataLoader worker processes (0 = load in the main process)", min=0)
    sync_batchnorm: bool = opt(
        True,
        "with several GPU processes (DDP): BatchNorm statistics over the global batch, not per process",
        why="torch cannot sync them on CPU, where they stay per process",
    )
    resume: str | None = opt(None, "'auto' continues RUN_DIR's last checkpoint; or a checkpoint path")
    log_every_n_steps: int = opt(10, "how often to log training metrics", min=1)
    deterministic: bool = opt(False, "ask torch for deterministic algorithms (slower on GPU)")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class CTCConfig(Config):
    """The CTC head on the encoder's frames (``plcli.models.ctc``): it scores any candidate text by
    its CTC likelihood, so messages never heard in training can still be recognised."""

    weight: float = opt(0.0, "weight of the CTC loss next to the closed-set loss (0: no CTC head)", min=0.0)
    tokens: str = opt(
        "char",
        "what the head emits: char (letters, digits, apostrophe, space) or phoneme (espeak-ng, offline)",
        why="char was chosen on validation speakers (docs/ctc.md)",
        choices=("phoneme", "char"),
    )
    tap: int = opt(
        -1,
        "what the head reads: -1 the log-mel, 0 the encoder after its stem, 1 after its first stage",
        why="-1: through the head's own stride-2 front end (40 ms frames); 0: 20 ms frames; 1: 40 ms",
        min=-1,
        max=3,
    )
    hidden: int = opt(96, "channels of the head's temporal convolutions", min=4)
    layers: int = opt(3, "residual blocks of the head", min=0)
    kernel_size: int = opt(9, "temporal kernel of the head (odd)", min=1)
    dropout: float = opt(0.1, "dropout before the head's output layer", min=0.0, max=0.9)
    tempo: float = opt(
        0.0,
        "speed perturbation of the CTC branch's input: a random rate in 1 +- tempo per step",
        why="the log-mel is resampled along time; distill sets 0.1",
        min=0.0,
        max=0.5,
    )
    vtlp: float = opt(
        0.0,
        "vocal tract length perturbation (VTLP) of the CTC branch's input: largest frequency scaling",
        why="the largest relative frequency scaling, drawn per row; distill sets 0.1",
        min=0.0,
        max=0.5,
    )
    prior_correction: bool = opt(
        True,
        "candidate rows: divide each candidate's CTC likelihood by its message's share of candidate slots",
        why="as the closed-set losses do",
    )

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def check(self) -> None:
        if self.kernel_size % 2 == 0:
            raise UserError(f"ctc.kernel_size={self.kernel_size} must be odd")

    def head_args(self, tokenizer) -> dict:
        """``Classifier(ctc=...)`` settings (primitives) with ``tokenizer``'s inventory."""
        return {"tokenizer": tokenizer.to_dict(), "tap": self.tap, "hidden": self.hidden,
                "layers": self.layers, "kernel_size": self.kernel_size, "dropout": self.dropout}


def cache_dir(cfg_value: str | None) -> Path:
    """Resolve the feature cache folder: option, then $PLCLI_CACHE, then ~/.cache/plcli."""
    if cfg_value:
        return Path(cfg_value).expanduser()
    env = os.environ.get("PLCLI_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "plcli"
