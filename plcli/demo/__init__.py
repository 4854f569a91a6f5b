"""The demo-data generator (``plcli demo-data``) with what only it needs.

- ``generator``: the simulated group chat, the dataset layout and the parallel rendering;
- ``synth``: speech synthesizers as a pool of synthetic speakers;
- ``degrade``: random recording conditions (codecs, noise, reverberation, clipping, ...).

Nothing else in plcli imports this package; ``scripts/demo_pipeline.py`` (``make demo``) runs the
whole pipeline on its output.
"""

from plcli.demo.generator import (
    PHRASES,
    DemoConfig,
    generate_demo,
    simulate_chat,
    typed_variant,
    zipf_popularity,
)

__all__ = ["PHRASES", "DemoConfig", "generate_demo", "simulate_chat", "typed_variant", "zipf_popularity"]
