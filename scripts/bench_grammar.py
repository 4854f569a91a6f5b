"""Benchmark row 5b alone on a ``plcli demo-data`` folder: pocketsphinx with a grammar of each test
recording's candidates (``plcli.grammar``), no training.

    plcli demo-data /tmp/gram-demo --train 200 --test 200 --phrases 40
    python scripts/bench_grammar.py /tmp/gram-demo [--workers 1] [--limit 200]

Prints one JSON object: within-candidate accuracy on the test rows (a recording the decoder returns
nothing for gets a seeded random candidate), the same on the test messages no training recording
has (``accuracy_within_unseen``; training messages from train.jsonl's labels and truth.jsonl), the
grammar's out-of-vocabulary rate and the decoding throughput.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from plcli.data.labels import LabelNormalizer
from plcli.data.manifest import read_truth
from plcli.data.validate import load_rows
from plcli.grammar import choose_with_grammar, score_choices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a plcli demo-data folder (train.jsonl, test.jsonl, truth.jsonl)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="first N test rows only")
    a = ap.parse_args()
    data = Path(a.data)
    key = LabelNormalizer()
    train = load_rows([data / "train.jsonl"], log=lambda *m: None).rows
    truth = read_truth(data / "truth.jsonl")
    heard = {key(r.label) for r in train if r.label} | {key(truth[r.id]) for r in train if r.id in truth}
    test = load_rows([data / "test.jsonl"], log=lambda *m: None).rows[: a.limit]
    t = time.perf_counter()
    chosen, timing = choose_with_grammar([r.audio for r in test], [r.candidates for r in test],
                                         workers=a.workers)
    wall = time.perf_counter() - t
    scores = score_choices([r.candidates for r in test], [r.label for r in test], chosen, heard,
                           normalizer=key)
    print(json.dumps({"data": str(data), **scores, **timing, "wall_seconds": wall}, indent=1))


if __name__ == "__main__":
    main()
