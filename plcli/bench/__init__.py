"""The accuracy benchmark's pieces: baseline trainers, the speech-recogniser baseline, the report.

``grid`` is the benchmark grid (``scripts/benchmark.py`` / ``make bench`` only call its ``main``);
``docs/benchmark.md`` describes the method. Nothing in here is imported by the ``plcli`` command
itself.
"""
