"""How long planning takes: profiling a cell, and resolving a schedule for a million steps.

    python benchmarks/bench_planner.py

Targets on a CPU: profiling an LSTM of 2 x 256 (input 64) takes under 2 s, and
``auto_plan(nn.LSTM(4, 256, 2), budget="250MB").schedule(seq_len=10**6, batch_size=8)`` is
feasible and returns in well under 2 s.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import vlrnn_planner as vp


def main() -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    vp.auto_plan(nn.LSTM(64, 256, 2), budget="1GB")
    print(f"profiling LSTM(64, 256, num_layers=2) on {torch.get_num_threads()} threads: "
          f"{time.perf_counter() - t0:.2f} s (target < 2 s)")

    plan = vp.auto_plan(nn.LSTM(4, 256, 2), budget="250MB")
    t0 = time.perf_counter()
    sched = plan.schedule(seq_len=10**6, batch_size=8)
    seconds = time.perf_counter() - t0
    print(f"schedule(seq_len=10**6, batch_size=8) at 250MB: {seconds * 1e3:.1f} ms (target < 2 s)")
    print(sched)


if __name__ == "__main__":
    main()
