"""``plcli label``: exact labels for the recordings that matter (docs/labelling.md)."""
