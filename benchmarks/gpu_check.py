"""The GPU check: everything this library does on a CUDA device, in one run, as one table.

    python benchmarks/gpu_check.py            # on a CUDA machine, under 5 minutes
    python benchmarks/gpu_check.py --smoke    # tiny sizes on any device (the tests run it on CPU)

Rows:
- the CUDA-marked tests (``pytest -m cuda``);
- budgets held at three sizes: the planned peak against ``torch.cuda.max_memory_allocated``
  (and the allocator's reserved peak and NVML's footprint of this process, for reference);
- speed against cuDNN plain BPTT and truncated BPTT with the same block length
  (LSTM 4 x 1024, batch 64, T=10,000);
- exactness with cuDNN dropout (``nn.LSTM(dropout=0.5)``) against the same blocks run with grad;
- inputs kept on the host, with and without copying the next block ahead;
- recomputation overlapped with backward, on and off.

Without CUDA (and without ``--smoke``) it says so and exits 0. With CUDA it exits 1 if a check
fails.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import vlrnn_planner as vp

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    check: str
    measured: str
    target: str
    ok: bool | None  # None: for information


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets, reduction="sum")


def cuda_tests(smoke: bool) -> Row:
    if smoke:
        return Row("CUDA-marked tests", "skipped (--smoke)", "all pass", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return Row("CUDA-marked tests", summary, "all pass", done.returncode == 0)


def budgets(device: torch.device, smoke: bool) -> list[Row]:
    rows = []
    hidden, seq_len, batch = (16, 400, 4) if smoke else (512, 20_000, 32)
    torch.manual_seed(0)
    cell = nn.LSTM(64, hidden, 2).to(device)
    x = torch.randn(seq_len, batch, 64, device=device)
    y = torch.randn(seq_len, batch, hidden, device=device)
    profile = vp.auto_plan(cell, budget="50%", example_input=x[:64], example_target=y[:64], loss_fn=loss_fn).profile
    for budget in (("400MB", "1GB", "4GB") if not smoke else ("100MB", "200MB", "400MB")):
        try:
            plan = vp.planner.plan_for_profile(profile, budget)
            sched = plan.schedule(seq_len, batch)
        except vp.InfeasibleBudgetError as e:
            rows.append(Row(f"budget {budget}", f"infeasible (minimum {vp.format_bytes(e.minimum_bytes)})", "-", None))
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        vp.backward(plan, cell, x, targets=y, loss_fn=loss_fn)
        _sync(device)
        if device.type != "cuda":
            rows.append(Row(f"budget {budget}", f"{sched.strategy} K={sched.block_length}, predicted "
                            f"{vp.format_bytes(sched.predicted_peak_bytes)} (no CUDA to measure)", "-", None))
            continue
        peak = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
        from vlrnn_torch.devices import gpu_memory

        nvml = gpu_memory(device)[3]
        footprint = getattr(nvml, "process_bytes", None)
        held = peak <= plan.budget_bytes
        rows.append(Row(
            f"budget {budget}",
            f"{sched.strategy} K={sched.block_length}: peak allocated {vp.format_bytes(peak)}, predicted/measured "
            f"{sched.predicted_peak_bytes / peak:.2f}; reserved {vp.format_bytes(reserved)}, NVML process "
            f"{'n/a' if footprint is None else vp.format_bytes(footprint)}",
            "peak <= budget", held,
        ))
    return rows


def speed(device: torch.device, smoke: bool) -> list[Row]:
    layers, hidden, batch, seq_len, k = (2, 32, 4, 200, 20) if smoke else (4, 1024, 64, 10_000, 200)
    torch.manual_seed(0)
    cell = nn.LSTM(64, hidden, layers).to(device)
    x = torch.randn(seq_len, batch, 64, device=device)
    y = torch.randn(seq_len, batch, hidden, device=device)
    plan = vp.fixed_plan(k)

    def plain():
        out, _ = cell(x)
        loss_fn(out, y).backward()

    def truncated():
        state = None
        for start in range(0, seq_len, k):
            out, state = cell(x[start : start + k], state)
            loss_fn(out, y[start : start + k]).backward()
            state = tuple(s.detach() for s in state)

    def ours(overlap=False):
        vp.backward(plan, cell, x, targets=y, loss_fn=loss_fn, overlap=overlap)

    repeats = 1 if smoke else 3
    t_ours = _median_seconds(ours, device, repeats)
    t_trunc = _median_seconds(truncated, device, repeats)
    try:
        t_plain = _median_seconds(plain, device, repeats)
        plain_text = f"{t_plain * 1e3:.0f} ms"
    except torch.OutOfMemoryError:
        t_plain, plain_text = None, "does not fit"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    t_over = _median_seconds(lambda: ours(True), device, repeats)
    shape = f"LSTM {layers}x{hidden}, batch {batch}, T={seq_len}, K={k}"
    judged = device.type == "cuda" and not smoke  # speed means something on the GPU at full size only
    rows = [
        Row(f"speed: ours / plain BPTT ({shape})",
            f"{t_ours * 1e3:.0f} ms vs {plain_text}" + ("" if t_plain is None else f" = {t_ours / t_plain:.2f}"),
            "<= 1.10", None if t_plain is None or not judged else t_ours / t_plain <= 1.10),
        Row("speed: ours / truncated BPTT (same K)", f"{t_ours * 1e3:.0f} ms vs {t_trunc * 1e3:.0f} ms = {t_ours / t_trunc:.2f}",
            "<= 1.30", t_ours / t_trunc <= 1.30 if judged else None),
        Row("overlap on / off", f"{t_over * 1e3:.0f} ms vs {t_ours * 1e3:.0f} ms = {t_over / t_ours:.2f}", "for information", None),
    ]
    # The same gradients with overlap on and off.
    grads = []
    for overlap in (False, True):
        cell.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        ours(overlap)
        grads.append(torch.cat([p.grad.flatten() for p in cell.parameters()]))
    diff = float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())
    rows.append(Row("overlap: same gradients", f"relative difference {diff:.1e}", "<= 1e-5", diff <= 1e-5))
    return rows


def dropout_exactness(device: torch.device, smoke: bool) -> Row:
    dtype = torch.float64
    seq_len, k = (60, 7) if smoke else (600, 50)
    torch.manual_seed(0)
    cell = nn.LSTM(16, 32, 3, dropout=0.5).to(device=device, dtype=dtype)
    x = torch.randn(seq_len, 8, 16, device=device, dtype=dtype)
    y = torch.randn(seq_len, 8, 32, device=device, dtype=dtype)
    torch.manual_seed(5)
    state, loss = None, 0.0
    for start in range(0, seq_len, k):  # each block entered with its RNG state set again
        if device.type == "cuda":
            torch.cuda.set_rng_state(torch.cuda.get_rng_state(device), device)
        out, state = cell(x[start : start + k], state)
        loss = loss + loss_fn(out, y[start : start + k])
    loss.backward()
    expected = torch.cat([p.grad.flatten() for p in cell.parameters()])
    cell.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    vp.backward(vp.fixed_plan(k), cell, x, targets=y, loss_fn=loss_fn)
    got = torch.cat([p.grad.flatten() for p in cell.parameters()])
    diff = float((got - expected).abs().max() / expected.abs().max())
    return Row("cuDNN dropout: exact", f"relative difference {diff:.1e} (float64)", "<= 1e-9", diff <= 1e-9)


def host_inputs(device: torch.device, smoke: bool) -> list[Row]:
    from vlrnn_torch.sequences import _Prefetcher

    hidden, seq_len, batch, k = (16, 200, 4, 20) if smoke else (512, 20_000, 32, 500)
    torch.manual_seed(0)
    cell = nn.LSTM(64, hidden, 2).to(device)
    x = torch.randn(seq_len, batch, 64)
    y = torch.randn(seq_len, batch, hidden)
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    plan = vp.fixed_plan(k)
    times, grads = {}, {}
    for ahead in (True, False):
        _Prefetcher.enabled = ahead
        try:
            times[ahead] = _median_seconds(lambda: vp.backward(plan, cell, x, targets=y, loss_fn=loss_fn), device,
                                           1 if smoke else 3)
            cell.zero_grad(set_to_none=True)
            vp.backward(plan, cell, x, targets=y, loss_fn=loss_fn)
            grads[ahead] = torch.cat([p.grad.flatten() for p in cell.parameters()])
        finally:
            _Prefetcher.enabled = True
    diff = float((grads[True] - grads[False]).abs().max() / grads[False].abs().max())
    return [
        Row(f"inputs on the host: copied ahead / when read (K={k})",
            f"{times[True] * 1e3:.0f} ms vs {times[False] * 1e3:.0f} ms = {times[True] / times[False]:.2f}", "<= 1.00",
            None if device.type != "cuda" else times[True] <= times[False] * 1.02),
        Row("inputs on the host: same gradients", f"relative difference {diff:.1e}", "0", diff == 0.0),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    parser.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; nothing to check (exit 0)")
        return 0
    if device.type != "cuda" and not args.smoke:
        print("gpu_check: no CUDA device on this machine; nothing to check (exit 0). "
              "Run with --smoke to try the checks at tiny sizes on the CPU.")
        return 0
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = [cuda_tests(args.smoke), *budgets(device, args.smoke), *speed(device, args.smoke),
            dropout_exactness(device, args.smoke), *host_inputs(device, args.smoke)]
    print(f"gpu_check on {name}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s")
    width = max(len(r.check) for r in rows)
    print(f"| {'check':<{width}} | measured | target | ok |")
    print(f"|{'-' * (width + 2)}|---|---|---|")
    for r in rows:
        verdict = "-" if r.ok is None else ("yes" if r.ok else "NO")
        print(f"| {r.check:<{width}} | {r.measured} | {r.target} | {verdict} |")
    failed = [r for r in rows if r.ok is False]
    return 1 if failed and device.type == "cuda" else 0


if __name__ == "__main__":
    sys.exit(main())
