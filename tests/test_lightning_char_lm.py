"""examples/lightning_char_lm.py: a few steps of Lightning's manual optimization with exact BPTT
in training_step, and one step's gradients against plain BPTT in float64."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import assert_grads_close, grads_of
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import char_lm  # noqa: E402
from lightning_char_lm import LitCharLM, Windows  # noqa: E402


class Recorder(L.Callback):
    """Before each optimizer step: the parameters, their (clipped) gradients and the state the
    step's batch started from."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = list(pl_module.model.parameters())
        self.steps.append({
            "params": [p.detach().clone() for p in params],
            "grads": grads_of(params),
            "state": char_lm.detach(pl_module.carried),
        })


# Lightning's own use of torch's pytree API; and no validation data in this test.
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_training_step_gradients_are_plain_bptt():
    seq_len, block_length = 40, 7
    train_files, _ = char_lm.source_files()
    data = char_lm.batchify(char_lm.read_stream(train_files[:2])[:600], 3)
    recorder = Recorder()
    trainer = L.Trainer(max_steps=3, precision="64-true", accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder])
    trainer.fit(LitCharLM(embed=5, hidden=6, layers=2, block_length=block_length),
                DataLoader(Windows(data, seq_len), batch_size=None))
    assert len(recorder.steps) == 3
    step = recorder.steps[2]  # its batch starts from the state the first two carried over
    assert step["state"] is not None and step["state"][0].dtype == torch.float64

    model = char_lm.CharLM(5, 6, 2).double()
    with torch.no_grad():
        for p, value in zip(model.parameters(), step["params"]):
            p.copy_(value)
    x, y = char_lm.window(data, 2, seq_len)
    char_lm.plain_bptt(model, x, y, step["state"])
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    assert_grads_close(list(model.parameters()), step["grads"])
