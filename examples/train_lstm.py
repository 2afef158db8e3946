"""Train an LSTM on long sequences with exact block BPTT: the README's main job.

The task: each sequence is a sum of sines with a random phase plus noise; the network reads it
step by step and predicts the next value. Sequences are long (2000 steps by default), so plain
BPTT would keep 2000 steps of activations; `vlrnn_planner.backward` keeps one block of them plus
the boundary states, and gives the same gradients.

    python examples/train_lstm.py                 # built-in default: 30 steps of training
    python examples/train_lstm.py --budget 64MB   # plan the block length to a memory budget
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import vlrnn_planner as vp


class Predictor(nn.Module):
    """An LSTM whose readout is applied inside the loss, block by block."""

    def __init__(self, hidden_size: int = 32, num_layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden_size, num_layers)
        self.readout = nn.Linear(hidden_size, 1)


def make_batch(batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(seq_len + 1, dtype=torch.float32).unsqueeze(1)
    phase = torch.rand(1, batch_size, generator=generator) * 2 * math.pi
    wave = torch.sin(0.05 * t + phase) + 0.5 * torch.sin(0.013 * t + 2 * phase)
    wave = wave + 0.05 * torch.randn(wave.shape, generator=generator)
    return wave[:-1].unsqueeze(-1), wave[1:].unsqueeze(-1)  # (T, B, 1) inputs and next-step targets


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--block-length", type=int, default=100)
    parser.add_argument("--budget", default=None, help='plan to a memory budget instead, e.g. "64MB"')
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Predictor()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    n_values = args.seq_len * args.batch_size

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # The block's share of the mean squared error over the whole batch.
        return nn.functional.mse_loss(model.readout(outputs), targets, reduction="sum") / n_values

    if args.budget is not None:
        x, y = make_batch(args.batch_size, args.seq_len, gen)
        plan = vp.auto_plan(model.lstm, budget=args.budget, loss_fn=loss_fn, example_input=x[:8], example_target=y[:8])
    else:
        plan = vp.fixed_plan(block_length=args.block_length)
    print(plan)
    print(plan.schedule(seq_len=args.seq_len, batch_size=args.batch_size))

    # The equivalence contract, shown once: the same gradients as plain BPTT.
    x, y = make_batch(args.batch_size, args.seq_len, gen)
    out, _ = model.lstm(x)
    loss_fn(out, y).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    result = vp.backward(plan, model.lstm, x, targets=y, loss_fn=loss_fn)
    worst = max(((p.grad - r).abs().max() / r.abs().max()).item() for p, r in zip(model.parameters(), reference))
    print(f"gradients vs plain BPTT: largest relative difference {worst:.1e} (float32)")

    start = time.perf_counter()
    first = result.loss
    for step in range(1, args.steps + 1):
        x, y = make_batch(args.batch_size, args.seq_len, gen)
        optimizer.zero_grad(set_to_none=True)
        result = vp.backward(plan, model.lstm, x, targets=y, loss_fn=loss_fn)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == 1:
            print(f"step {step:4d}  loss {result.loss:.5f}  ({time.perf_counter() - start:.1f} s)")
    print(f"loss went from {first:.5f} to {result.loss:.5f} over {args.steps} steps of {args.seq_len} time steps")
    return result.loss


if __name__ == "__main__":
    main()
