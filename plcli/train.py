"""``plcli train``: pretrain -> finetune -> distill in one run folder, from a manifest or a chat export.

::

    RUN/data/train.jsonl   the manifest trained on (a chat export's, or the given one with --labels applied)
    RUN/pretrain           plcli pretrain's run
    RUN/finetune           plcli finetune's run (the teacher), on RUN/pretrain
    RUN/distill            plcli distill's run (the student), on RUN/finetune: the model to predict with

Each stage is the stage command's own ``run`` with its own config: ``--set pretrain.KEY=VALUE`` (and
``finetune.``, ``distill.``) or a ``--config`` YAML file with a mapping per stage. ``--resume auto``
skips the stages that finished and continues the first unfinished one at its last checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from plcli.config import Config, build_config, opt, parse_sets, read_config_file
from plcli.errors import UserError

STAGES = ("pretrain", "finetune", "distill")
DONE = {"pretrain": "encoder.pt", "finetune": "model.pt", "distill": "model.pt"}  # written last by each stage
UPSTREAM = {"finetune": ("pretrained", "pretrain"), "distill": ("teacher", "finetune")}


@dataclass
class TrainConfig(Config):
    """``plcli train`` options (the stages' own options go through ``--set STAGE.KEY=VALUE``)."""

    source: str = opt("", "manifest (JSONL or CSV) or WhatsApp/Telegram chat export to train on")
    out: str = opt("", "run folder: RUN/pretrain, RUN/finetune, RUN/distill")
    labels: str | None = opt(None, "labels file written by plcli label: its answers become exact labels")
    resume: str | None = opt(
        None, "'auto': skip finished stages, continue the unfinished one", choices=(None, "auto")
    )
    overwrite: bool = opt(False, "replace an existing run folder")

    def check(self) -> None:
        if not self.source:
            raise UserError("no SOURCE given: a manifest or a chat export")
        if not self.out:
            raise UserError("--out is required")


def check_inputs(cfg: TrainConfig) -> None:
    if not Path(cfg.source).exists():
        raise UserError(f"{cfg.source}: no such manifest or chat export")
    if cfg.labels and not Path(cfg.labels).is_file():
        raise UserError(f"labels file {cfg.labels} not found")


def split_sets(items: list[str]) -> dict[str, list[tuple[str, str]]]:
    """``--set`` items ``STAGE.KEY=VALUE`` as each stage's (KEY, VALUE text) pairs; other keys are errors."""
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in STAGES}
    for key, text in parse_sets(items):
        stage, _, rest = key.partition(".")
        if stage not in out or not rest:
            raise UserError(f"--set {key}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(STAGES)}")
        out[stage].append((rest, text))
    return out


def read_sections(path: str | None) -> dict[str, dict]:
    """``--config``: a YAML or JSON file with a mapping of options per stage."""
    sections = read_config_file(path) if path else {}
    for name, section in sections.items():
        if name not in STAGES or not isinstance(section, dict | None):  # an empty section reads as None
            raise UserError(f"{path}: expected a mapping of options under each of {', '.join(STAGES)}, "
                            f"got {name!r}")
    return sections


def training_manifest(cfg: TrainConfig, log) -> Path:
    """The manifest the stages read: ``cfg.source`` itself, or ``RUN/data/train.jsonl`` for a chat
    export or where ``cfg.labels`` adds answers (a "none of these" row keeps its audio, not its
    candidates)."""
    from plcli.data.exports import is_manifest

    if is_manifest(cfg.source) and not cfg.labels:
        return Path(cfg.source)
    data = Path(cfg.out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = data / "train.jsonl"
    rows = _source_rows(cfg.source, path, log)
    if cfg.labels:
        from plcli.label.store import apply_labels, read_labels

        answers = read_labels(cfg.labels, warn=log)
        rows = [
            ({**r, "candidates": []} if r.get("none_of_these") else r) for r in apply_labels(rows, answers)
        ]
        log(
            f"{cfg.labels}: {sum(v is not None for v in answers.values())} exact labels, "
            f"{sum(v is None for v in answers.values())} 'none of these'"
        )
    from plcli.data.chat import write_manifest

    write_manifest(rows, path)
    return path


def _source_rows(source: str, path: Path, log) -> list[dict]:
    """Manifest rows (dicts, audio relative to ``path``'s folder) of a manifest or a chat export."""
    from plcli.data.exports import export_rows, is_manifest
    from plcli.data.labels import LabelNormalizer

    if is_manifest(source):
        from plcli.data.validate import load_rows

        return [r.to_dict(relative_to=path.parent) for r in load_rows([source], log=log).rows]
    return export_rows(source, path, path.parent / "media", LabelNormalizer(), log)


def stage_config(name: str, section: dict, overrides: dict, sets: list[tuple[str, str]]) -> Config:
    """The stage's config: its defaults, the ``--config`` file's section, the run's own settings, then
    the ``--set`` pairs; validated."""
    from plcli import stages

    return build_config(stages.get(name).config_class(), section, overrides, sets)


def run(cfg: TrainConfig, sets: list[str] = (), config_file: str | None = None, log=print) -> dict:
    """Run the stages that are not finished yet (``sets``: ``--set STAGE.KEY=VALUE`` items;
    ``config_file``: ``--config``); returns each stage's metrics and seconds."""
    from plcli import stages

    check_inputs(cfg)
    run_dir, by_stage, sections = Path(cfg.out), split_sets(list(sets)), read_sections(config_file)
    if run_dir.exists() and any(run_dir.iterdir()) and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{run_dir} already holds a run: --resume auto continues it, --overwrite replaces it")
    manifest = training_manifest(cfg, log)
    summary: dict = {"out": str(run_dir), "manifest": str(manifest), "stages": {}}
    for name in STAGES:
        out = run_dir / name
        if cfg.resume and (out / DONE[name]).is_file():
            log(f"{name}: finished earlier ({out}), skipped")
            summary["stages"][name] = {"skipped": True}
            continue
        overrides = {
            "out": str(out),
            "data.manifests": [str(manifest)],
            "overwrite": cfg.overwrite,
            "trainer.resume": "auto" if cfg.resume and out.exists() else None,
        }
        if name in UPSTREAM:
            field, up = UPSTREAM[name]
            overrides[field] = str(run_dir / up)
        stage_cfg = stage_config(name, sections.get(name) or {}, overrides, by_stage[name])
        log(f"== {name} -> {out}")
        t = time.perf_counter()
        metrics = stages.get(name).run(stage_cfg, log=log)
        summary["stages"][name] = {"seconds": round(time.perf_counter() - t, 1), "metrics": metrics}
    summary["model"] = str(run_dir / "distill")
    from plcli.io import atomic_write_json
    from plcli.runs import jsonable

    atomic_write_json(run_dir / "train.json", jsonable(summary))
    return summary
