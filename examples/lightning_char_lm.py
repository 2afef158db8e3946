"""Train the character-level model of ``char_lm.py`` with Lightning, exact BPTT in ``training_step``.

Lightning 2 removed truncated BPTT from its trainer; what it documents instead is manual
optimization: ``training_step`` cuts the sequence into chunks, backpropagates each chunk with the
state carried over but detached, and steps the optimizer. Here ``training_step`` hands the whole
sequence to `vlrnn_planner.backward` instead: it runs the chunks (blocks) for you and backpropagates
across them, so the gradient is plain BPTT's, at truncated BPTT's memory.

    python3 examples/lightning_char_lm.py                 # needs lightning (the [test] or [examples] extra)
    python3 examples/lightning_char_lm.py --max-steps 200
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

import vlrnn_planner as vp
from char_lm import (
    CharLM,
    batchify,
    bits,
    mean_cross_entropy,
    load_data,
    updates_per_epoch,
    validation_bits,
    window,
)


class Windows(Dataset):
    """The consecutive windows of a batchified stream, in order: item ``i`` is the ``i``-th
    update's ``(inputs, targets)``, each ``(rows, seq_len)``. Load it with ``batch_size=None`` and
    no shuffling, so that each update goes on where the previous one stopped."""

    def __init__(self, data: torch.Tensor, seq_len: int) -> None:
        self.data = data
        self.seq_len = seq_len

    def __len__(self) -> int:
        return updates_per_epoch(self.data, self.seq_len)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return window(self.data, i, self.seq_len)


class LitCharLM(L.LightningModule):
    """`char_lm.CharLM` trained with exact BPTT under manual optimization.

    The LSTM's state is carried from one training batch to the next (detached: the gradient of an
    update covers its own window, exactly) and starts from zero at each epoch, as truncated BPTT's
    hidden states do in a Lightning 1 training loop.

    Parameters
    ----------
    embed, hidden, layers : int
        `char_lm.CharLM`'s sizes.
    lr : float
        Adam's learning rate.
    budget : str
        Memory budget of an update; the plan is made by `vlrnn_planner.auto_plan` on the first
        batch, on the device the model is on then.
    block_length : int, optional
        Blocks of this many steps instead of a plan to ``budget`` (no profiling).
    clip : float
        Largest gradient norm (clipped before each step).
    """

    def __init__(self, embed: int = 32, hidden: int = 128, layers: int = 2, lr: float = 1e-2,
                 budget: str = "100MB", block_length: int | None = None, clip: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = CharLM(embed, hidden, layers)
        self.plan = None if block_length is None else vp.fixed_plan(block_length)
        self.carried: Any = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the model's parameters."""
        return torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr)

    def on_train_epoch_start(self) -> None:
        """Each pass over the stream starts from a zero state."""
        self.carried = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """One update: exact BPTT over the batch's window from the carried state, clip, step."""
        x, y = batch
        loss_fn = mean_cross_entropy(y.numel())
        if self.plan is None:
            self.plan = vp.auto_plan(self.model, budget=self.hparams.budget, example_input=x[:, :64],
                                     example_target=y[:, :64], loss_fn=loss_fn)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        # Where truncated BPTT would loop over chunks calling manual_backward, one call does the
        # whole sequence, exactly: .grad ends as loss.backward() over the whole window leaves it.
        result = vp.backward(self.plan, self.model, x, targets=y, loss_fn=loss_fn, state=self.carried)
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.clip, gradient_clip_algorithm="norm")
        optimizer.step()
        self.carried = result.state
        self.log("train_bpc", bits(result.loss), prog_bar=True)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """Bits per character on the validation rows."""
        self.log("valid_bpc", validation_bits(self.model, batch), prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the carried state with the checkpoint."""
        checkpoint["carried_state"] = self.carried

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the carried state up again."""
        self.carried = checkpoint.get("carried_state")


def main(argv: list[str] | None = None) -> None:
    """Fit on the standard library's source; validate on its held-out files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=1000, help="characters per sequence and update")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per update")
    parser.add_argument("--budget", default="100MB", help="memory budget that auto_plan plans the updates to")
    parser.add_argument("--max-steps", type=int, default=100, help="updates to train")
    parser.add_argument("--valid-every", type=int, default=20, help="validate every this many updates")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    train_stream, valid = load_data(40_000)
    train = Windows(batchify(train_stream, args.batch_size), args.seq_len)
    trainer = L.Trainer(max_steps=args.max_steps, val_check_interval=args.valid_every, logger=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(LitCharLM(budget=args.budget), DataLoader(train, batch_size=None),
                DataLoader([valid], batch_size=None))  # one batch: the validation rows


if __name__ == "__main__":
    main()
