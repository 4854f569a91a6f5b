"""`make bench`: the accuracy benchmark grid, ``scripts/bench/grid.py`` (docs/benchmark.md has the method).

python scripts/benchmark.py                        # the full grid (hours on 2 CPU cores)
python scripts/benchmark.py --quick                # a small smoke run (minutes)
python scripts/benchmark.py --single-seed-rows exact indicator-mse simclrv2   # the reduced grid
python scripts/benchmark.py ... --docs docs/results/grid.md --png docs/benchmark-accuracy.png  # publish
python scripts/benchmark.py --help                 # every option
"""

import sys

from bench.grid import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
