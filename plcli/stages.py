"""The training stages, by name: where each one's config class and ``run`` live.

The CLI and the benchmark find a stage here, so a new stage is one module with a config
dataclass and ``run(cfg, log)``, one entry below and one command in ``plcli/cli.py``. Modules are
imported on first use, so ``plcli --help`` stays fast and inference never loads a stage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from plcli.config import Config, load_config


@dataclass(frozen=True)
class Stage:
    """A training stage: ``plcli.<module>`` holds ``<config>`` and ``run(cfg, log=...) -> metrics``."""

    name: str
    module: str
    config: str
    summary: str

    def config_class(self) -> type[Config]:
        return getattr(importlib.import_module(self.module), self.config)

    def run(self, cfg: Config, log=print, **kwargs) -> dict:
        """The stage's ``run``: writes ``cfg.out`` and returns the final metrics."""
        return importlib.import_module(self.module).run(cfg, log=log, **kwargs)

    def load_config(self, path=None, overrides: dict[str, Any] | None = None) -> Config:
        """Defaults, then the YAML file at ``path``, then dotted ``overrides``; validated."""
        return load_config(self.config_class(), path, overrides or {})


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("pretrain", "plcli.pretrain", "PretrainConfig",
              "SimCLR contrastive pretraining of the encoder"),
        Stage("finetune", "plcli.finetune", "FinetuneConfig", "MLP head on the frozen encoder (the teacher)"),
        Stage("distill", "plcli.distill", "DistillConfig", "student on candidate-restricted teacher targets"),
    )
}


def get(name: str) -> Stage:
    """The stage called ``name`` (``KeyError`` lists the known ones)."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(STAGES)}") from None
