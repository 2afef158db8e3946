"""Planner regret: the measured time of the schedule auto_plan picks, over the best of fixed block
lengths that fit the same budget, timed side by side in one run.

    python benchmarks/bench_regret.py                 # LSTM 2 x 256 (input 64), batch 16, T=2000, 300MB
    python benchmarks/bench_regret.py --repeats 7

Target on a CPU: regret <= 1.05. The runs alternate (chosen, K=10, K=25, ...), so that a
disturbance hits them alike; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import vlrnn_planner as vp
from vlrnn_planner.cost import Workload, estimate


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets, reduction="sum")


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=2000)
    parser.add_argument("--budget", default="300MB")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cell = nn.LSTM(64, args.hidden_size, 2)
    x = torch.randn(args.seq_len, args.batch_size, 64)
    y = torch.randn(args.seq_len, args.batch_size, args.hidden_size)
    t0 = time.perf_counter()
    plan = vp.auto_plan(cell, budget=args.budget, example_input=x[:64], example_target=y[:64], loss_fn=loss_fn,
                        batch_size=args.batch_size)
    profiled = time.perf_counter() - t0
    chosen = plan.schedule(args.seq_len, args.batch_size)
    workload = Workload(seq_len=args.seq_len, batch_size=args.batch_size)
    candidates = {"planned": chosen}
    predicted = {"planned": chosen.predicted_seconds}
    for k in (10, 25, 50, 100, 200):
        e = estimate(plan.profile, workload, strategy="blocks", block_length=k)
        if e.peak_bytes <= plan.budget_bytes:
            candidates[f"K={k}"] = vp.fixed_plan(k).schedule(args.seq_len, args.batch_size)
            predicted[f"K={k}"] = e.seconds
    for schedule in candidates.values():  # warm-up, and the first call's checks
        vp.backward(schedule, cell, x, targets=y, loss_fn=loss_fn)
    times = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, schedule in candidates.items():
            cell.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            vp.backward(schedule, cell, x, targets=y, loss_fn=loss_fn)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"LSTM 2 x {args.hidden_size} (input 64), batch {args.batch_size}, T={args.seq_len}, budget "
          f"{args.budget}; profiled in {profiled:.1f} s{'' if plan.profile.timing_reliable else ' (UNRELIABLE timings)'}; "
          f"{args.repeats} alternating runs, {torch.get_num_threads()} threads")
    print(f"  planned: {chosen.strategy}, K={chosen.block_length}")
    for name in candidates:
        print(f"  {name:<8} measured {med[name] * 1e3:8.1f} ms   predicted {predicted[name] * 1e3:8.1f} ms")
    best = min(v for name, v in med.items() if name != "planned")
    regret = med["planned"] / best
    print(f"  regret = planned / best fixed K = {regret:.3f}   (target <= 1.05)")
    return regret


if __name__ == "__main__":
    main()
