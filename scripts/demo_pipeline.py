"""`make demo`: the whole pipeline on generated demo data, as a user would run it from the README.

demo-data -> validate -> pretrain -> finetune -> distill -> evaluate (teacher and student) on the
speaker-disjoint test manifest, then a table of the final accuracies and the wall time per stage.
Each step is skipped when its output already exists, so a second `make demo` only re-evaluates.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def sh(args: list[str], log: list) -> float:
    print("\n$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    t = time.perf_counter()
    subprocess.run(args, check=True)
    dt = time.perf_counter() - t
    log.append((args[1] if args[0].endswith("plcli") else args[0], dt))
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo-dir", default="demo")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--pretrain-epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--distill-epochs", type=int, default=None)
    ap.add_argument("--trainer-args", default="",
                    help='options for the three training stages, e.g. "--accelerator gpu --precision '
                         'bf16-mixed"')
    ap.add_argument("demo_args", nargs="*", help="extra arguments for plcli demo-data (after --)")
    a = ap.parse_args()
    plcli = str(Path(sys.executable).with_name("plcli"))
    demo, runs = Path(a.demo_dir), Path(a.runs)
    times: list = []
    t0 = time.perf_counter()

    hw = shlex.split(a.trainer_args)

    def epochs(n):
        return ["--epochs", str(n)] if n else []

    if not (demo / "train.jsonl").exists():
        sh([plcli, "demo-data", str(demo), *a.demo_args], times)
    sh([plcli, "validate", str(demo / "train.jsonl"), str(demo / "test.jsonl")], times)
    if not (runs / "pretrain" / "encoder.pt").exists():
        sh([plcli, "pretrain", str(demo / "train.jsonl"), "--out", str(runs / "pretrain"), "--truth",
            str(demo / "truth.jsonl"), "--resume", "auto", *epochs(a.pretrain_epochs), *hw], times)
    if not (runs / "finetune" / "model.pt").exists():
        sh([plcli, "finetune", str(demo / "train.jsonl"), "--pretrained", str(runs / "pretrain"), "--out",
            str(runs / "finetune"), "--truth", str(demo / "truth.jsonl"), "--resume", "auto",
            *epochs(a.finetune_epochs), *hw], times)
    if not (runs / "distill" / "model.pt").exists():
        sh([plcli, "distill", str(demo / "train.jsonl"), "--teacher", str(runs / "finetune"), "--out",
            str(runs / "distill"), "--resume", "auto", *epochs(a.distill_epochs), *hw], times)
    results = {}
    for stage in ("finetune", "distill"):
        out = runs / f"eval-{stage}.json"
        sh([plcli, "evaluate", str(demo / "test.jsonl"), "--model", str(runs / stage), "--json", str(out),
            "--report-dir", str(runs / f"report-{stage}")], times)
        results[stage] = json.loads(out.read_text())
    total = time.perf_counter() - t0

    print("\n== demo results: speaker-disjoint test set ==")
    print(f"{'model':<22}{'all-class acc':>15}{'within-candidates':>19}{'macro-F1':>10}")
    for stage, name in (("finetune", "teacher (finetune)"), ("distill", "student (distill)")):
        r = results[stage]
        print(
            f"{name:<22}{r.get('accuracy', float('nan')):>15.3f}"
            f"{r.get('accuracy_within_candidates', float('nan')):>19.3f}"
            f"{r.get('macro_f1', float('nan')):>10.3f}"
        )
    print("\nwall time per step:")
    for name, dt in times:
        print(f"  {name:<12}{dt:8.1f} s")
    print(f"  {'total':<12}{total:8.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
