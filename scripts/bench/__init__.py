"""The accuracy benchmarks, outside the installed package: the grid, the learning curve, their
baseline trainers, the speech-recogniser baseline and the report.

``grid`` is the benchmark grid (``scripts/benchmark.py`` / ``make bench``) and ``curve`` the
learning curve (``scripts/bench_curve.py`` / ``make bench-curve``); docs/benchmark.md describes
the method. This package imports as ``bench`` with scripts/ on the path: a script in scripts/ has
it there when it runs, and the tests get it from pyproject.toml (``pythonpath``). It imports plcli;
plcli never imports it (tests/test_layering.py).
"""
