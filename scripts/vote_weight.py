"""How often a distill run's target tables name the truth, with the recogniser's vote at several weights.

    python scripts/vote_weight.py RUN teacher round1 round5 [--scales 0 1 2]

RUN is a distill run made with ``--truth``; run it from the folder the run was made in (its
config's paths are as given then). Each teacher (``teacher``: the run's finetune teacher;
``roundK``: that round's student) gives one line: the share of the candidate training rows whose
target names the truth, for each scale of the vote's ``delta`` (0: none; 1: ``delta``; T:
``T * delta``, the rounds' own). ``scripts/bench/vote.py`` does the work; docs/asr-prior.md has the
tables it gave.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.vote import target_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a distill run folder")
    ap.add_argument("teachers", nargs="+", help="teacher, roundK, or a run path")
    ap.add_argument("--scales", type=float, nargs="+", default=None, help="weights of delta (default 0 1 T)")
    a = ap.parse_args()
    res = target_accuracy(a.run, a.teachers, a.scales, log=print)
    for name, by_scale in res["targets"].items():
        print(f"{name}: " + " | ".join(f"{s:g}: {v:.3f}" for s, v in by_scale.items()))
    print(json.dumps({k: v for k, v in res.items() if k != "targets"}))


if __name__ == "__main__":
    main()
