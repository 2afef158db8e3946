"""Planned peak memory against measured peak memory, each case in a fresh process.

Run ``python benchmarks/bench_memory.py`` (CPU; about a minute). Two parts:

1. An LSTM of 2 x 256 (input 64), batch 32, T = 4000, planned with `auto_plan` at budgets of
   200 MB, 400 MB and 1 GB. Each plan runs in a fresh process that measures its own peak resident
   growth during `vlrnn_planner.backward` (reset with ``/proc/self/clear_refs``, read from
   ``VmHWM``). Measured peak = parameters + inputs (resident before the call) + that growth.
   Targets: measured never over the budget; predicted within 1.3x of measured.
2. T = 20000, batch 8, LSTM 2 x 128: the planned run's peak growth against plain BPTT's (the cell
   over the whole sequence, then ``loss.backward()``), each in a fresh process, at a budget that
   leaves the planned run a twentieth of plain BPTT's growth (or just over the least any schedule
   needs, where the CPU's allocator allowance alone is more). Target: a tenth or less.

Use ``--quick`` for a shorter second part (T = 5000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import vlrnn_planner as vp
from vlrnn_planner.budget import format_bytes
from vlrnn_planner.cost import Workload
from vlrnn_planner.planner import plan_for_profile
from vlrnn_planner.solver import minimum_peak

from resident import peak_growth_since, reset_peak  # beside this file


def loss_fn(outputs: torch.Tensor, targets: object) -> torch.Tensor:
    """The block's share of the loss (no targets: they would only add resident inputs)."""
    return outputs.square().mean()


def _case(hidden: int, inputs: int, seq_len: int, batch: int) -> tuple[torch.nn.LSTM, torch.Tensor]:
    torch.manual_seed(0)
    cell = torch.nn.LSTM(inputs, hidden, 2)
    x = torch.randn(seq_len, batch, inputs)
    return cell, x


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: one planned (or plain) training step, measured."""
    cell, x = _case(args.hidden, args.inputs, args.seq_len, args.batch)
    param_bytes = sum(p.numel() * p.element_size() for p in cell.parameters())
    result: dict[str, object] = {"params": param_bytes, "inputs": x.numel() * x.element_size()}
    # Warm up on a few steps (lazy initialisation of thread pools and allocator arenas, and the
    # library's own first call, some 20 MB of resident memory once per process, are not a
    # training step's memory), then drop the gradients it left.
    out, _ = cell(x[:4])
    loss_fn(out, None).backward()
    del out
    vp.backward(vp.fixed_plan(2), cell, x[:4], loss_fn=loss_fn)
    cell.zero_grad(set_to_none=True)
    if args.plan or args.budget:
        if args.budget:  # warm: profiled in this process, right before the call
            plan = vp.auto_plan(cell, budget=args.budget, loss_fn=loss_fn, batch_size=args.batch)
        else:
            with open(args.plan) as f:
                plan = vp.Plan.from_json(f.read())
        sched = plan.schedule(seq_len=args.seq_len, batch_size=args.batch)
        base = reset_peak()
        t0 = time.perf_counter()
        vp.backward(sched, cell, x, loss_fn=loss_fn)
        seconds = time.perf_counter() - t0
        result.update(strategy=sched.strategy, block_length=sched.block_length,
                      checkpoints=sched.checkpoints, predicted=sched.predicted_peak_bytes,
                      predicted_seconds=sched.predicted_seconds, baseline_seconds=sched.baseline_seconds,
                      allowance=dict(sched.memory_parts).get("allocator overhead", 0))
    else:
        base = reset_peak()
        t0 = time.perf_counter()
        out, _ = cell(x)
        loss_fn(out, None).backward()
        seconds = time.perf_counter() - t0
        del out
    result.update(growth=peak_growth_since(base), seconds=seconds)
    print(json.dumps(result))


def _spawn(plan_path: str | None, hidden: int, inputs: int, seq_len: int, batch: int, budget: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--hidden", str(hidden),
           "--inputs", str(inputs), "--seq-len", str(seq_len), "--batch", str(batch)]
    if plan_path:
        cmd += ["--plan", plan_path]
    if budget:
        cmd += ["--budget", budget]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_plan(plan: vp.Plan, path: str) -> str:
    with open(path, "w") as f:
        f.write(plan.to_json())
    return path


def main(args: argparse.Namespace) -> None:
    from vlrnn_torch.profiler import profile_cell

    workdir = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".bench_memory")
    os.makedirs(workdir, exist_ok=True)

    # Part 1: LSTM 2 x 256, batch 32, T = 4000.
    hidden, inputs, seq_len, batch = 256, 64, 4000, 32
    cell, _ = _case(hidden, inputs, 2, 1)
    t0 = time.perf_counter()
    profile = profile_cell(cell, loss_fn=loss_fn)
    print(f"profiled LSTM(64, 256, num_layers=2) in {time.perf_counter() - t0:.2f} s "
          f"({profile.measured_by})")
    print(f"T={seq_len}, batch {batch}; measured peak = parameters + inputs + peak resident growth\n")
    header = (f"{'budget':>8} {'process':>7} {'strategy':>9} {'K':>5} {'predicted':>10} {'measured':>10} "
              f"{'pred/meas':>9} {'fits':>5} {'time':>7} {'pred time':>9} {'heap':>10}")
    print(header)
    print("-" * len(header))
    ok = True
    for spec in args.budgets:
        plan = plan_for_profile(profile, spec)
        try:
            plan.schedule(seq_len=seq_len, batch_size=batch)
        except vp.InfeasibleBudgetError as e:
            print(f"{spec:>8}: no schedule fits (the least any needs is {format_bytes(e.minimum_bytes)})")
            continue
        path = _write_plan(plan, os.path.join(workdir, f"plan_{spec}.json"))
        for how, r in (("fresh", _spawn(path, hidden, inputs, seq_len, batch)),
                       ("warm", _spawn(None, hidden, inputs, seq_len, batch, budget=spec))):
            measured = r["params"] + r["inputs"] + r["growth"]
            ratio = r["predicted"] / measured
            beyond = measured - (r["predicted"] - r["allowance"])  # what the allocator allowance covers
            fits = measured <= plan.budget_bytes
            ok &= fits and 1 / 1.2 <= ratio <= 1.2
            print(f"{spec:>8} {how:>7} {r['strategy']:>9} {r['block_length']:>5} {format_bytes(r['predicted']):>10} "
                  f"{format_bytes(measured):>10} {ratio:>9.2f} {'yes' if fits else 'NO':>5} "
                  f"{r['seconds']:>6.2f}s {r['predicted_seconds']:>8.2f}s {format_bytes(beyond):>10}")

    if args.part1:
        print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
        return

    # Part 2: T = 20000, batch 8, LSTM 2 x 128: planned growth against plain BPTT's.
    hidden, inputs, batch = 128, 64, 8
    seq_len = 5000 if args.quick else 20000
    cell, _ = _case(hidden, inputs, 2, 1)
    profile = profile_cell(cell, loss_fn=loss_fn)
    plain = _spawn(None, hidden, inputs, seq_len, batch)
    # A budget that leaves the planned run a twentieth of plain BPTT's growth for its own use.
    fixed = plain["params"] + plain["inputs"]
    workload = Workload(seq_len=seq_len, batch_size=batch)
    smallest = minimum_peak(profile, workload).peak_bytes  # at short T, the CPU allocator allowance can exceed it
    plan = plan_for_profile(profile, max(fixed + plain["growth"] // 20, smallest * 21 // 20))
    r = _spawn(_write_plan(plan, os.path.join(workdir, "plan_long.json")), hidden, inputs, seq_len, batch)
    ratio = r["growth"] / plain["growth"]
    ok &= ratio <= 0.1
    print(f"\nT={seq_len}, batch {batch}, LSTM(64, 128, num_layers=2), budget {format_bytes(plan.budget_bytes)}: "
          f"{r['strategy']} K={r['block_length']}")
    print(f"  peak growth: planned {format_bytes(r['growth'])} ({r['seconds']:.1f} s), plain BPTT "
          f"{format_bytes(plain['growth'])} ({plain['seconds']:.1f} s); ratio {ratio:.3f} (target <= 0.1)")
    print(f"  predicted peak {format_bytes(r['predicted'])}, measured "
          f"{format_bytes(r['params'] + r['inputs'] + r['growth'])}")
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, default=4000, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--budgets", nargs="+", default=["100MB", "200MB", "400MB", "1GB"], help="part 1's budgets")
    parser.add_argument("--part1", action="store_true", help="part 1 only")
    parser.add_argument("--quick", action="store_true", help="T = 5000 instead of 20000 in part 2")
    args = parser.parse_args()
    child(args) if args.child else main(args)
