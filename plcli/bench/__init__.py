"""The accuracy benchmark's pieces: baseline trainers, the speech-recogniser baseline, the report.

``scripts/benchmark.py`` runs the grid; ``docs/benchmark.md`` describes the method. Nothing in
here is imported by the ``plcli`` command itself.
"""
