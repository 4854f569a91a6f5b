"""What a stage prints while it trains: one line per epoch in a log file, no third-party advertising."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from plcli.config import TrainerConfig
from plcli.training import EpochLines, build_trainer


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_step(self, batch, _):
        loss = self.lin(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_log_file_gets_one_line_per_epoch_and_no_tip(tmp_path, capsys, caplog):
    tc = TrainerConfig(epochs=3, accelerator="cpu", devices="1", progress=True)
    trainer = build_trainer(tc, tmp_path)  # pytest's stderr is no TTY: no bar, epoch lines
    assert any(isinstance(c, EpochLines) for c in trainer.callbacks) and not trainer.progress_bar_callback
    loader = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4)
    with caplog.at_level(logging.INFO):
        trainer.fit(Tiny(), loader)
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"] and all(
        "train/loss" in ln for ln in lines
    )
    assert "Tip" not in out.out + out.err and not any("Tip" in r.getMessage() for r in caplog.records)
    quiet = build_trainer(
        TrainerConfig(epochs=1, accelerator="cpu", devices="1", progress=False), tmp_path / "q"
    )
    assert not any(isinstance(c, EpochLines) for c in quiet.callbacks)
