"""Time vlrnn_planner.backward against plain BPTT and torch.utils.checkpoint, side by side.

All three compute the same gradients of the same loss. The runs alternate in one process
(plain, checkpoint, ours, plain, ...), and the medians are compared.

    python benchmarks/bench_speed.py                      # 2-layer LSTM 256, batch 16, T=1000, K=50
    python benchmarks/bench_speed.py --seq-len 4000 --repeats 5

Also timed, to show what bounds the ratios: truncated BPTT with the same block length (not
exact: the state is detached at every boundary), the forward pass without grad alone (the one
extra pass block BPTT pays), truncated BPTT on one thread (what each side of an overlap gets on a
2-core CPU), and block BPTT with recomputation overlapped with backward.

Targets on a CPU: ours / plain BPTT <= 1.10 (0.90 with overlap), ours / torch.utils.checkpoint
<= 1.00, ours / truncated BPTT <= 1.10 with overlap.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import vlrnn_planner as vp


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets, reduction="sum")


def plain_bptt(cell, x, y, k):
    out, _ = cell(x)
    loss_fn(out, y).backward()


def torch_checkpoint(cell, x, y, k):
    def block(x_b, y_b, h, c):
        out, (h, c) = cell(x_b, (h, c))
        return loss_fn(out, y_b), h, c

    batch = x.size(1)
    h = torch.zeros(cell.num_layers, batch, cell.hidden_size)
    c = torch.zeros_like(h)
    total = 0
    for start in range(0, x.size(0), k):
        loss, h, c = checkpoint(block, x[start : start + k], y[start : start + k], h, c, use_reentrant=False)
        total = total + loss
    total.backward()


def truncated_bptt(cell, x, y, k):
    """Truncated BPTT with the same block length: the state carried, detached (not exact)."""
    state = None
    for start in range(0, x.size(0), k):
        out, state = cell(x[start : start + k], state)
        loss_fn(out, y[start : start + k]).backward()
        state = tuple(s.detach() for s in state)


def no_grad_forward(cell, x, k):
    """The extra pass of block BPTT alone: the cell over every block but the last, without grad."""
    with torch.no_grad():
        state = None
        for start in range(0, x.size(0) - k, k):
            _, state = cell(x[start : start + k], state)


def one_thread(fn):
    """``fn`` with torch's intra-op threads set to one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn()
    finally:
        torch.set_num_threads(threads)


def ours(cell, x, y, k, plan, overlap=False):
    vp.backward(plan, cell, x, targets=y, loss_fn=loss_fn, overlap=overlap)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1000)
    parser.add_argument("--block-length", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cell = nn.LSTM(args.input_size, args.hidden_size, args.num_layers)
    x = torch.randn(args.seq_len, args.batch_size, args.input_size)
    y = torch.randn(args.seq_len, args.batch_size, args.hidden_size)
    k = args.block_length
    plan = vp.fixed_plan(block_length=k)
    runs = {
        "plain BPTT": lambda: plain_bptt(cell, x, y, k),
        "torch.utils.checkpoint": lambda: torch_checkpoint(cell, x, y, k),
        "vlrnn_planner": lambda: ours(cell, x, y, k, plan),
    }
    # The three give the same gradients: check once, so the timing compares like with like.
    grads = {}
    runs["truncated BPTT"] = lambda: truncated_bptt(cell, x, y, k)
    runs["vlrnn_planner, overlap"] = lambda: ours(cell, x, y, k, plan, overlap=True)
    runs["forward without grad"] = lambda: no_grad_forward(cell, x, k)
    runs["truncated, 1 thread"] = lambda: one_thread(lambda: truncated_bptt(cell, x, y, k))
    for name, fn in runs.items():
        if name in ("truncated BPTT", "forward without grad", "truncated, 1 thread"):
            continue
        cell.zero_grad(set_to_none=True)
        fn()
        grads[name] = torch.cat([p.grad.flatten() for p in cell.parameters()])
    for name, g in grads.items():
        err = (g - grads["plain BPTT"]).abs().max().item() / grads["plain BPTT"].abs().max().item()
        assert err < 1e-4, f"{name} differs from plain BPTT by {err:.2e} (relative)"

    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            cell.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"LSTM {args.num_layers} x {args.hidden_size} (input {args.input_size}), batch {args.batch_size}, "
        f"T={args.seq_len}, K={k}, {args.repeats} alternating runs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, m in med.items():
        print(f"  {name:<24} median {m * 1e3:8.1f} ms   (min {min(times[name]) * 1e3:8.1f} ms)")
    print(f"  ours / plain BPTT             = {med['vlrnn_planner'] / med['plain BPTT']:.3f}   (target <= 1.10)")
    print(
        f"  ours / torch.utils.checkpoint = {med['vlrnn_planner'] / med['torch.utils.checkpoint']:.3f}"
        "   (target <= 1.00)"
    )
    print(f"  ours / truncated BPTT (K={k})   = {med['vlrnn_planner'] / med['truncated BPTT']:.3f}")
    print(f"  forward without grad / truncated BPTT = {med['forward without grad'] / med['truncated BPTT']:.3f}"
          "   (what block BPTT adds, before its own overheads)")
    print(f"  truncated BPTT, {torch.get_num_threads()} threads over 1 thread = "
          f"{med['truncated BPTT'] / med['truncated, 1 thread']:.3f}   (overlap can only pay where this is well above 0.5)")
    over = med["vlrnn_planner, overlap"]
    print(f"  with overlap: / plain BPTT = {over / med['plain BPTT']:.3f}, / truncated BPTT = "
          f"{over / med['truncated BPTT']:.3f}   (targets <= 0.90 and <= 1.10)")


if __name__ == "__main__":
    main()
