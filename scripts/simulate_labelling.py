"""Simulated labelling: does asking ``plcli label``'s choice of recordings beat asking random ones?

On a demo set with no exact labels (``plcli demo-data DIR --exact-fraction 0``), the true label
answers every request. A first ``plcli train`` with no labels gives the model that ``plcli label``
asks with; then, for each strategy (``label``: its order, least sure first and spread across
messages; ``random``: its order without a model) and each budget (labels answered, nested: the first
12 of the 24, ...), finetune and distill are rerun on the shared pretrained encoder with those labels
and evaluated on the speaker-disjoint test rows. One JSON cell per (strategy, budget, seed).

    python scripts/simulate_labelling.py --demo DIR --runs RUNS --budgets 0,12,24,48,96 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Simulation:
    demo: Path
    runs: Path
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    strategies: tuple[str, ...]
    sets: tuple[str, ...]  # STAGE.KEY=VALUE for every training run (tests: tiny schedules)


def order(sim: Simulation, strategy: str, seed: int, base: Path) -> list[str]:
    """Row ids in the order ``plcli label`` would ask them, with the base model or at random."""
    from plcli.data.labels import LabelNormalizer
    from plcli.label import select
    from plcli.label.session import read_rows

    rows = [r for r in read_rows([str(sim.demo / "train.jsonl")], log=lambda *_: None) if r.candidates]
    if strategy == "random":
        return [rows[i].id for i in select.diverse_order([select.group_of(r) for r in rows], seed)]
    probs, norm = select.model_probs(
        str(base / "distill"),
        [r.audio for r in rows],
        [r.candidates for r in rows],
        None,
        log=lambda *_: None,
    )
    ids, _ = select.model_order([r.candidates for r in rows], probs, norm or LabelNormalizer())
    return [rows[i].id for i in ids]


def train(sim: Simulation, out: Path, labels: Path | None, pretrained: Path | None, seed: int = 0) -> dict:
    """``plcli train`` (or its last two stages on ``pretrained``), then evaluate on the test rows."""
    from plcli.evaluate import EvaluateConfig
    from plcli.evaluate import run as evaluate
    from plcli.train import TrainConfig, run

    sets = [f"finetune.trainer.seed={seed}", f"distill.trainer.seed={seed}", *sim.sets]  # later ones win
    if pretrained is not None:  # the encoder does not see labels: share it
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "pretrain").exists():
            (out / "pretrain").symlink_to(pretrained.resolve(), target_is_directory=True)
    cfg = TrainConfig(
        source=str(sim.demo / "train.jsonl"),
        out=str(out),
        labels=str(labels) if labels else None,
        resume="auto",
    )
    cfg.validate()
    run(cfg, sets, log=lambda *_: None)
    ev = EvaluateConfig(manifests=[str(sim.demo / "test.jsonl")], model=str(out / "distill"), fallback="none")
    ev.validate()
    m = evaluate(ev, log=lambda *_: None, console=None)
    return {k: m.get(k) for k in ("accuracy", "accuracy_within_candidates")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, type=Path)
    ap.add_argument("--runs", required=True, type=Path)
    ap.add_argument("--budgets", default="0,12,24,48,96")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--strategies", default="label,random")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    sim = Simulation(
        a.demo,
        a.runs,
        tuple(int(b) for b in a.budgets.split(",")),
        tuple(int(s) for s in a.seeds.split(",")),
        tuple(a.strategies.split(",")),
        tuple(a.sets),
    )
    truth = {
        json.loads(x)["id"]: json.loads(x)["label"]
        for x in (sim.demo / "truth.jsonl").read_text().splitlines()
    }
    base = sim.runs / "base"
    cells = [{"strategy": "none", "budget": 0, **train(sim, base, None, None)}]
    for seed in sim.seeds:
        for strategy in sim.strategies:
            asked = order(sim, strategy, seed, base)
            for b in (b for b in sim.budgets if b):
                name = sim.runs / f"{strategy}-{b}-s{seed}"
                labels = name.with_suffix(".labels.jsonl")
                labels.parent.mkdir(parents=True, exist_ok=True)
                labels.write_text("".join(json.dumps({"id": i, "label": truth[i]}) + "\n" for i in asked[:b]))
                cell = {
                    "strategy": strategy,
                    "budget": b,
                    "seed": seed,
                    **train(sim, name, labels, base / "pretrain", seed),
                }
                cells.append(cell)
                print(json.dumps(cell), flush=True)
    (sim.runs / "cells.json").write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
