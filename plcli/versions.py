"""Installed distribution versions, read from their metadata without importing them.

Low-level on purpose (it imports nothing from plcli): ``plcli.doctor`` reports the versions and
``plcli.recognisers`` keys its caches on the decoder's version.
"""

from __future__ import annotations

import importlib.metadata as md


def dist_version(name: str) -> str | None:
    """Installed version of distribution ``name`` (no import), or None."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
