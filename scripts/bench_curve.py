"""`make bench-curve`: the learning-curve benchmark, ``scripts/bench/curve.py`` (docs/benchmark.md).

    python scripts/bench_curve.py                      # the full curve (many hours on 2 CPU cores)
    python scripts/bench_curve.py --report docs/results/curve.md --png docs/benchmark-curve.png  # publish
    python scripts/bench_curve.py --out /tmp/c --sizes 100 200 --extra --seeds 0 --dists zipf --test 100 \
        --pretrain-epochs 1 --finetune-epochs 2 --distill-epochs 1 --views 2   # a smoke run (minutes)
    python scripts/bench_curve.py --help               # every option
"""

import sys

from bench.curve import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
