"""Planning packed batches per call: the quick search against the full one, side by side.

    python benchmarks/bench_packed_planning.py [--sets 30] [--profile plan-or-profile.json]

A training loop on packed batches brings new lengths at every step, so every call plans anew.
For 32 sequences of lengths uniform in 500..3000 (batch sizes as a sorted PackedSequence has
them), at budgets where blocks are needed, this prints per budget:

- the first ``plan.schedule(...)`` call of a fresh plan for each new set of lengths (what
  `vlrnn_planner.backward` pays), median and max over the sets, with the default quick search;
- the same with ``search="full"``, and the ratio of the predicted seconds, quick over full
  (the full search starts from the quick result, so the ratio is at least 1);
- for comparison, a plan per bucket of lengths (500 steps wide) made once for the bucket's worst
  case, the full batch over its longest sequence, each batch then cut by sample-steps with that
  plan's cap and priced per block: how many sets it finds no plan for, and its ratio.

Target (issue 9): at most 10 ms per call, every prediction within the budget, quick within 10%
of the full search. The profile is an LSTM of 2 x 128 (input 64): bytes as measured on a CPU,
seconds like a GPU's; ``--profile`` takes a saved profile or plan file instead. Planning is plain
Python on one core: run it on a quiet machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import vlrnn_planner as vp
from vlrnn_planner import CellProfile, InfeasibleBudgetError, strategies
from vlrnn_planner.cost import Chain, Workload, sample_step_prefix
from vlrnn_planner.planner import cut_by_sample_steps, plan_for_profile
from vlrnn_planner.solver import solve

LSTM_2X128 = CellProfile(
    cell="LSTM(64, 128, num_layers=2), bytes as on a CPU, seconds like a GPU's",
    parameter_bytes=926_000,
    gradient_bytes=926_000,
    state_bytes_per_sample=2048.0,
    input_bytes_per_step=256.0,
    activation_bytes_per_step=16_600.0,
    activation_bytes_fixed=200_000.0,
    transient_bytes_per_step=6_100.0,
    transient_bytes_fixed=100_000.0,
    advance_seconds_per_step=4e-5,
    advance_seconds_per_step_per_sample=2e-7,
    fb_seconds_per_step=1.2e-4,
    fb_seconds_per_step_per_sample=6e-7,
    block_overhead_seconds=1e-4,
)

BATCH = 32
BUCKET = 500


def packed(lengths: list[int]) -> tuple[int, ...]:
    """Sequences running at each step, as a PackedSequence sorted by decreasing length has them."""
    return tuple(sum(1 for n in lengths if n > t) for t in range(max(lengths)))


def read_profile(path: str) -> CellProfile:
    """A profile from a plan file (``plan.to_json()``) or from ``CellProfile.to_dict`` as JSON."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return vp.load_document(text).plan.profile
    except vp.InvalidInputError:
        return CellProfile.from_dict(json.loads(text))


def bucket_seconds(profile: CellProfile, budget: int, sizes: tuple[int, ...], plans: dict) -> float | None:
    """Predicted seconds of the per-bucket design for one batch; None where its bucket has no plan."""
    longest = -(-len(sizes) // BUCKET) * BUCKET
    if longest not in plans:
        try:
            plans[longest] = solve(profile, budget, Workload(longest, BATCH))
        except InfeasibleBudgetError:
            plans[longest] = None
    plan = plans[longest]
    if plan is None:
        return None
    workload = Workload(len(sizes), BATCH, sizes)
    chain = Chain.from_profile(
        profile, workload, cut_by_sample_steps(sizes, plan.block_length * BATCH), sample_step_prefix(sizes)
    )
    if plan.strategy == "binomial" and plan.checkpoints < chain.n - 1:
        peak, seconds, _ = chain.walk_cost(strategies.binomial(chain.n, plan.checkpoints))
    else:
        peak, seconds, _ = chain.blocks_cost()
    assert peak <= budget  # fewer, no wider blocks than the bucket's plan
    return seconds


def first_call_ms(profile: CellProfile, budget: int, sizes: tuple[int, ...], search: str) -> tuple[float, vp.Schedule]:
    """Milliseconds of the first ``schedule`` call of a fresh plan, and its schedule."""
    plan = plan_for_profile(profile, budget, search=search)
    start = time.perf_counter()
    schedule = plan.schedule(len(sizes), BATCH, batch_sizes=sizes)
    return (time.perf_counter() - start) * 1e3, schedule


def spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} / {max(values):.{digits}f}"


def main(args: argparse.Namespace) -> None:
    profile = read_profile(args.profile) if args.profile else LSTM_2X128
    print(f"profile: {profile.cell}; {args.sets} length sets of {BATCH} sequences, {args.low}..{args.high} steps")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"{'budget':>7} | {'quick ms med / max':>18} | {'full ms med / max':>18} | "
        f"{'quick/full min / med / max':>26} | {'bucket: no plan, ratio med / max':>32}"
    )
    for mb in args.budgets:
        budget = int(mb * 10**6)
        rng = random.Random(args.seed)
        quick_ms, full_ms, ratios, bucket, no_bucket = [], [], [], [], 0
        plans: dict = {}
        for _ in range(args.sets):
            sizes = packed([rng.randint(args.low, args.high) for _ in range(BATCH)])
            try:
                ms, quick = first_call_ms(profile, budget, sizes, "quick")
            except InfeasibleBudgetError:
                continue
            quick_ms.append(ms)
            assert quick.predicted_peak_bytes <= budget
            ms, full = first_call_ms(profile, budget, sizes, "full")
            full_ms.append(ms)
            ratios.append(quick.predicted_seconds / full.predicted_seconds)
            seconds = bucket_seconds(profile, budget, sizes, plans)
            if seconds is None:
                no_bucket += 1
            else:
                bucket.append(seconds / full.predicted_seconds)
        if not ratios:
            print(f"{mb:>5g}MB | nothing fits")
            continue
        ratio = f"{min(ratios):.3f} / {statistics.median(ratios):.3f} / {max(ratios):.3f}"
        print(
            f"{mb:>5g}MB | {spread(quick_ms, 2):>18} | {spread(full_ms, 1):>18} | {ratio:>26} | "
            f"{f'{no_bucket}/{len(ratios)}, ' + spread(bucket, 3):>32}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=30, help="length sets per budget")
    parser.add_argument("--budgets", type=float, nargs="+", default=[25, 30, 40, 60, 100, 200, 500], help="MB")
    parser.add_argument("--low", type=int, default=500)
    parser.add_argument("--high", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, help="a plan file or a CellProfile as JSON")
    main(parser.parse_args())
