"""plcli: learn to recognise short voice messages from candidate sets."""

__version__ = "0.1.0"
