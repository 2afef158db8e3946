"""`auto_plan`: profile a cell through its backend, then plan schedules to a memory budget.

`solve` is the search: a pure function of a plan (its profile and budget) and an input shape,
with no framework imported. It prices schedule shapes with the cost model (`vlrnn_planner.cost`)
and keeps the fastest one whose predicted peak fits the budget.

NOTE [ Candidate block lengths ]
--------------------------------
For ``n`` blocks the shortest block length is ``K = ceil(T / n)``. Any longer ``K`` with the same
``n`` stores as many states, holds a larger block in flight and advances more steps, so it is
never better. The candidates are therefore the distinct values of ``ceil(T / n)`` for
``n = 1 .. T``: at most ``2 * sqrt(T)`` of them (2000 for a million steps), each priced in
closed form.

NOTE [ Joint search of K and checkpoints ]
------------------------------------------
For each candidate ``K``, what is left of the budget after everything but the stored states
bounds how many states can be stored. If all ``n - 1`` boundary states fit, the ``blocks``
strategy is taken; otherwise ``binomial`` with as many checkpoints as fit (more checkpoints never
cost more evaluations), so K and the checkpoint count are searched jointly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from . import strategies
from .backends import find_backend
from .budget import Budget, format_bytes, parse_budget
from .cost import Estimate, Workload, estimate, peak_memory
from .errors import InfeasibleBudgetError, InvalidInputError
from .plan import Plan, Schedule
from .profile import CellProfile

__all__ = ["auto_plan", "plan_for_profile", "solve", "minimum_peak", "candidate_block_lengths"]


def auto_plan(
    cell: Any,
    budget: int | float | str | Budget,
    *,
    example_input: Any = None,
    state: Any = None,
    loss_fn: Any = None,
    example_target: Any = None,
    device: Any = None,
    time_dim: int | None = None,
    backend: Any = None,
) -> Plan:
    """Profile ``cell`` on its device and return a `Plan` that keeps to ``budget``.

    The plan is a policy: ``plan.schedule(seq_len=..., batch_size=...)`` (or
    `vlrnn_planner.backward`) picks the fastest schedule whose predicted peak memory fits.

    Parameters
    ----------
    cell : module
        A cell the backend accepts (for torch: ``nn.RNN``/``LSTM``/``GRU``, their ``*Cell``
        forms, or a module ``forward(x_block, state) -> (outputs, state)``).
    budget : int, float, str or Budget
        Bytes (``"8GB"``, ``"8GiB"``, an int) or a share of what this process can use on the
        device (``"80%"``, ``0.8``); see `vlrnn_planner.budget`.
    example_input : optional
        A block of inputs (time axis included); needed for custom modules.
    state : optional
        An initial state of the example's batch; None for the cell's default.
    loss_fn : callable, optional
        ``loss_fn(outputs_block, targets_block) -> scalar``, profiled with the cell.
    example_target : optional
        Targets matching ``example_input``, for ``loss_fn``.
    device : optional
        Where to profile; the cell's device by default.
    time_dim : int, optional
        The time axis of the inputs, where it is not the cell's convention.
    backend : optional
        Overrides backend discovery.

    Returns
    -------
    Plan
        With ``profile``, ``budget_bytes`` and ``budget_spec`` set.

    Raises
    ------
    InvalidInputError
        For a budget that does not parse, or a share where the device reports no memory.
    """
    parsed = parse_budget(budget)
    if backend is None:
        backend = find_backend(cell)
    profile_fn = getattr(backend, "profile", None)
    if profile_fn is None:
        raise InvalidInputError(
            f"vlrnn_planner: the {getattr(backend, 'name', type(backend).__name__)} backend cannot "
            "profile cells; plan without profiling with vlrnn_planner.fixed_plan(block_length=K)"
        )
    profile = profile_fn(
        cell,
        example_input=example_input,
        state=state,
        loss_fn=loss_fn,
        example_target=example_target,
        device=device,
        time_dim=time_dim,
    )
    return plan_for_profile(profile, parsed)


def plan_for_profile(profile: CellProfile, budget: int | float | str | Budget) -> Plan:
    """A budget `Plan` from a profile measured earlier (no backend needed).

    Examples
    --------
    >>> p = CellProfile(state_bytes_per_sample=4096.0, activation_bytes_per_step=20_000.0,
    ...                 fb_seconds_per_step=1e-4, advance_seconds_per_step=4e-5,
    ...                 block_overhead_seconds=1e-4)
    >>> sched = plan_for_profile(p, "50MB").schedule(seq_len=10_000, batch_size=8)
    >>> sched.strategy, sched.predicted_peak_bytes <= 50_000_000
    ('blocks', True)
    """
    if not isinstance(profile, CellProfile):
        raise InvalidInputError(
            f"vlrnn_planner: expected a CellProfile, got {type(profile).__name__}; "
            "the backend's profile() must return vlrnn_planner.CellProfile"
        )
    parsed = parse_budget(budget)
    budget_bytes = parsed.resolve(available_bytes=profile.available_bytes)
    return Plan(budget_bytes=budget_bytes, profile=profile, budget_spec=str(parsed))


def candidate_block_lengths(seq_len: int) -> list[int]:
    """The block lengths worth pricing, longest first (NOTE [ Candidate block lengths ]).

    Examples
    --------
    >>> candidate_block_lengths(10)
    [10, 5, 4, 3, 2, 1]
    >>> len(candidate_block_lengths(10**6)) < 2001
    True
    """
    lengths = []
    n = 1
    while True:
        k = -(-seq_len // n)
        lengths.append(k)
        if k == 1:
            return lengths
        n = -(-seq_len // (k - 1))


def _shapes(profile: CellProfile, workload: Workload, budget_bytes: int) -> Iterator[tuple[str, int, int | None]]:
    """(strategy, K, checkpoints) worth pricing (NOTE [ Joint search of K and checkpoints ])."""
    seq_len = workload.seq_len
    yield "store_all", seq_len, None
    state = profile.state_bytes_per_sample * workload.batch_size + profile.state_bytes_fixed
    binomial = "binomial" in strategies.STRATEGIES
    for k in candidate_block_lengths(seq_len):
        n = math.ceil(seq_len / k)
        if n == 1:
            continue
        needed = strategies.max_stored_states("blocks", n)
        if not binomial or state <= 0:
            yield "blocks", k, None
            continue
        # What the budget leaves for stored states at this K (one stored state priced here).
        base, _ = peak_memory(profile, workload, block_length=k, stored_states=0)
        fit = math.floor((budget_bytes - base) / state)
        if fit >= needed:
            yield "blocks", k, None
        elif fit >= 1:
            yield "binomial", k, fit


def _schedule(plan: Plan, workload: Workload, strategy: str, k: int, checkpoints: int | None, e: Estimate, baseline: float) -> Schedule:
    return Schedule(
        strategy=strategy,
        seq_len=workload.seq_len,
        block_length=k,
        checkpoints=checkpoints,
        batch_size=workload.batch_size,
        predicted_peak_bytes=e.peak_bytes,
        predicted_seconds=e.seconds,
        baseline_seconds=baseline,
        memory_parts=e.memory_parts,
        device=plan.profile.device if plan.profile is not None else None,
        budget_bytes=plan.budget_bytes,
    )


def solve(
    plan: Plan,
    *,
    seq_len: int,
    batch_size: int | None,
    batch_sizes: Sequence[int] | None = None,
) -> Schedule:
    """The fastest schedule of ``plan`` whose predicted peak fits its budget, for one input shape.

    Plain BPTT (``"store_all"``) when it fits; otherwise blocks of the block length with the lowest
    predicted time, with binomial checkpointing of the boundary states where not all of them fit.

    Parameters
    ----------
    plan : Plan
        With ``profile`` and ``budget_bytes`` set (see `auto_plan`).
    seq_len : int
        Steps ``T``.
    batch_size : int or None
        Sequences in the batch (``batch_sizes[0]`` when None and ``batch_sizes`` is given).
    batch_sizes : sequence of int, optional
        Sequences running at each step, for a batch that shrinks.

    Returns
    -------
    Schedule

    Raises
    ------
    InfeasibleBudgetError
        If no schedule fits; ``minimum_bytes`` is the smallest predicted peak of any schedule.
    InvalidInputError
        Without a batch size, or for a plan without profile or budget.

    Examples
    --------
    >>> p = CellProfile(state_bytes_per_sample=4096.0, activation_bytes_per_step=20_000.0,
    ...                 fb_seconds_per_step=1e-4, advance_seconds_per_step=4e-5,
    ...                 block_overhead_seconds=1e-4)
    >>> plan = plan_for_profile(p, "10MB")
    >>> solve(plan, seq_len=400, batch_size=1).strategy
    'store_all'
    >>> s = solve(plan, seq_len=10_000, batch_size=4)
    >>> s.strategy, s.block_length, s.predicted_peak_bytes <= 10**7
    ('blocks', 100, True)
    """
    profile = plan.profile
    if profile is None or plan.budget_bytes is None:
        raise InvalidInputError(
            "vlrnn_planner: solve needs a plan with a profile and a budget; build it with "
            "vlrnn_planner.auto_plan(cell, budget=...)"
        )
    if batch_size is None:
        if batch_sizes is None:
            raise InvalidInputError(
                "vlrnn_planner: planning to a memory budget needs the batch size; call "
                "plan.schedule(seq_len=..., batch_size=...)"
            )
        batch_size = int(max(batch_sizes))
    workload = Workload(
        seq_len=seq_len,
        batch_size=batch_size,
        batch_sizes=None if batch_sizes is None else tuple(batch_sizes),
    )
    budget = plan.budget_bytes
    baseline = estimate(profile, workload, strategy="store_all", block_length=seq_len)
    if baseline.peak_bytes <= budget:
        return _schedule(plan, workload, "store_all", seq_len, None, baseline, baseline.seconds)
    best: tuple[float, str, int, int | None, Estimate] | None = None
    for strategy, k, checkpoints in _shapes(profile, workload, budget):
        e = estimate(profile, workload, strategy=strategy, block_length=k, checkpoints=checkpoints)
        if e.peak_bytes <= budget and (best is None or e.seconds < best[0]):
            best = (e.seconds, strategy, k, checkpoints, e)
    if best is None:
        raise _infeasible(plan, workload, budget)
    _, strategy, k, checkpoints, e = best
    return _schedule(plan, workload, strategy, k, checkpoints, e, baseline.seconds)


def minimum_peak(profile: CellProfile, workload: Workload) -> Estimate:
    """The schedule shape with the smallest predicted peak: the fewest stored states the
    strategies allow, with the block length that makes the rest smallest."""
    binomial = "binomial" in strategies.STRATEGIES
    best = estimate(profile, workload, strategy="store_all", block_length=workload.seq_len)
    for k in candidate_block_lengths(workload.seq_len):
        n = math.ceil(workload.seq_len / k)
        if n == 1:
            continue
        if binomial and n > 2:
            e = estimate(profile, workload, strategy="binomial", block_length=k, checkpoints=1)
        else:
            e = estimate(profile, workload, strategy="blocks", block_length=k)
        if e.peak_bytes < best.peak_bytes:
            best = e
    return best


def _largest_fitting_batch(profile: CellProfile, seq_len: int, budget: int, upper: int) -> int:
    """The largest batch below ``upper`` whose minimum peak fits ``budget`` (0 if none)."""
    lo, hi = 0, upper - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if minimum_peak(profile, Workload(seq_len=seq_len, batch_size=mid)).peak_bytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _infeasible(plan: Plan, workload: Workload, budget: int) -> InfeasibleBudgetError:
    profile = plan.profile
    least = minimum_peak(profile, workload)
    parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in least.memory_parts if size)
    advice = [f"raise the budget to at least {format_bytes(least.peak_bytes)}"]
    if workload.batch_sizes is None and workload.batch_size > 1:
        fits = _largest_fitting_batch(profile, workload.seq_len, budget, workload.batch_size)
        if fits >= 1:
            advice.append(f"lower the batch size from {workload.batch_size} to {fits} or less")
        else:
            advice.append("lower the batch size (not even a batch of 1 fits)")
    if profile.dtype in ("float64", "float32"):
        advice.append(
            f"use a lower precision than {profile.dtype} (parameters, inputs, states and "
            "activations all shrink with it)"
        )
    inputs = dict(least.memory_parts).get("inputs", 0) + dict(least.memory_parts).get("targets", 0)
    if inputs > least.peak_bytes / 2:
        advice.append("keep the inputs and targets on the host, or shorten the sequences")
    return InfeasibleBudgetError(
        f"vlrnn_planner: no schedule fits the budget of {format_bytes(budget)} for T={workload.seq_len} "
        f"steps at batch {workload.batch_size}; the smallest predicted peak is "
        f"{format_bytes(least.peak_bytes)}, with {least.stored_states} stored "
        f"state{'s' if least.stored_states != 1 else ''} ({parts}); "
        + "; or ".join(advice),
        budget_bytes=budget,
        minimum_bytes=least.peak_bytes,
    )

