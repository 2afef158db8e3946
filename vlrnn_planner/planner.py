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

NOTE [ Per-block costs of a shrinking batch ]
---------------------------------------------
A packed batch sorted by decreasing length runs ``batch_sizes[t]`` sequences at step ``t``, so a
block's activations and time follow its sample-steps (the sum of ``batch_sizes`` over its steps),
while every boundary state holds the full batch (finished sequences pass through). Blocks of
equal steps are then uneven: the first is the widest, the last may be nearly empty. When the
batch shrinks, `solve` prices chains of unequal blocks block by block (as rotor does for
heterogeneous chains):

- the cuts tried are blocks of about equal sample-steps (`cut_by_sample_steps` with a cap
  ``ceil(S / n)`` for ``n`` blocks, ``S`` the total sample-steps) and, so that the result is never
  worse than uniform blocks under the same model, blocks of equal steps;
- for each cut, the ``blocks`` strategy if it fits, else ``binomial`` with as many checkpoints
  ``c`` as fit when every block runs with ``c + 2`` states held (``c`` stored, the working state,
  the gradient) beside the largest block;
- the peak is that of the reference simulator's memory model (`vlrnn_planner.simulate`, NOTE
  [ Memory model ]) with every state at full-batch size (its fixed companions included): while
  block ``b`` runs with grad it holds the stored states, its input state if not stored, the
  gradient at its output and its activations. For ``blocks`` that is ``(b + 2)`` states beside
  block ``b``, in closed form; ``binomial`` is walked (``O(actions)``). Advances never exceed the
  ForwardBackward that follows them, so the peak is the largest of these;
- the time is the sum over advanced blocks of their no-grad seconds and over all blocks of their
  seconds with grad, each block paying ``block_overhead_seconds``: what the simulator sums with
  the same per-block callbacks;
- for ``binomial`` on a cut of at most 200 blocks, the schedule of least recomputation time over
  the blocks' unequal advance seconds (`strategies.chain_splits`, NOTE [ Binomial over unequal
  blocks ] in `vlrnn_planner.strategies`) replaces the equal-cost one where it is faster, with
  the same ``c`` (so the same peak check; its peak is walked all the same). Its time is the DP's.
  The DP costs ``O(n^3 c)`` at worst, so it runs after the search, on the binomial cuts whose
  ``blocks`` time (a lower bound for any schedule on them) beats the best time so far, lowest
  bound first, where `strategies.chain_dp_work` is at most 3e6 terms, and for at most 4e6 terms
  in one solve. Cuts of about equal sample-steps have nearly equal advance costs, so there the
  gain is small; it is larger on cuts of equal steps.

Block counts are tried exhaustively up to 64, then about 5% apart, so the search costs about
``20 T`` operations at most.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from . import strategies
from .backends import find_backend
from .budget import Budget, format_bytes, parse_budget
from .actions import Advance, ForwardBackward
from .cost import Estimate, Workload, block_bytes, estimate, peak_memory
from .errors import InfeasibleBudgetError, InvalidInputError
from .plan import Plan, Schedule
from .profile import CellProfile
from .simulate import MemoryModel, walk

__all__ = [
    "auto_plan",
    "plan_for_profile",
    "solve",
    "minimum_peak",
    "candidate_block_lengths",
    "cut_by_sample_steps",
]


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
    inputs_on_host: bool = False,
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
    inputs_on_host : bool, default False
        The inputs and targets will stay in host memory while the cell is on an accelerator; the
        executor copies them block by block, so only two blocks of them count against the budget.
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
    return plan_for_profile(profile, parsed, inputs_on_host=inputs_on_host)


def plan_for_profile(
    profile: CellProfile, budget: int | float | str | Budget, *, inputs_on_host: bool = False
) -> Plan:
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
    if inputs_on_host and profile.device.startswith("cpu"):
        raise InvalidInputError(
            "vlrnn_planner: inputs_on_host=True needs a cell on an accelerator; on the CPU the "
            "host's memory is the device's, so leave it False"
        )
    parsed = parse_budget(budget)
    budget_bytes = parsed.resolve(available_bytes=profile.available_bytes)
    return Plan(budget_bytes=budget_bytes, profile=profile, budget_spec=str(parsed), inputs_on_host=inputs_on_host)


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
    for k in candidate_block_lengths(seq_len):
        n = math.ceil(seq_len / k)
        if n == 1:
            continue
        needed = strategies.max_stored_states("blocks", n)
        if state <= 0:
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
        inputs_on_host=plan.inputs_on_host,
    )
    budget = plan.budget_bytes
    baseline = estimate(profile, workload, strategy="store_all", block_length=seq_len)
    if baseline.peak_bytes <= budget:
        return _schedule(plan, workload, "store_all", seq_len, None, baseline, baseline.seconds)
    if workload.batch_sizes is not None and len(set(workload.batch_sizes)) > 1:
        # The plan as if every block were the widest is one candidate (never worse than it).
        try:
            widest = solve(plan, seq_len=seq_len, batch_size=batch_size)
        except InfeasibleBudgetError:
            widest = None
        shrinking = _solve_shrinking(plan, workload, baseline.seconds, widest)
        if shrinking is None:
            raise _infeasible(plan, workload, budget)
        return shrinking
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
    best = estimate(profile, workload, strategy="store_all", block_length=workload.seq_len)
    for k in candidate_block_lengths(workload.seq_len):
        n = math.ceil(workload.seq_len / k)
        if n == 1:
            continue
        if n > 2:
            e = estimate(profile, workload, strategy="binomial", block_length=k, checkpoints=1)
        else:
            e = estimate(profile, workload, strategy="blocks", block_length=k)
        if e.peak_bytes < best.peak_bytes:
            best = e
    return best


def _largest_fitting_batch(profile: CellProfile, workload: Workload, budget: int) -> int:
    """The largest batch below ``workload``'s whose minimum peak fits ``budget`` (0 if none)."""
    lo, hi = 0, workload.batch_size - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if minimum_peak(profile, replace(workload, batch_size=mid)).peak_bytes <= budget:
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
        fits = _largest_fitting_batch(profile, workload, budget)
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
        if workload.inputs_on_host or profile.device.startswith("cpu"):
            advice.append("shorten the sequences")
        else:
            advice.append("keep the inputs and targets on the host (auto_plan(..., inputs_on_host=True)), or shorten the sequences")
    return InfeasibleBudgetError(
        f"vlrnn_planner: no schedule fits the budget of {format_bytes(budget)} for T={workload.seq_len} "
        f"steps at batch {workload.batch_size}; the smallest predicted peak is "
        f"{format_bytes(least.peak_bytes)}, with {least.stored_states} stored "
        f"state{'s' if least.stored_states != 1 else ''} ({parts}); "
        + "; or ".join(advice),
        budget_bytes=budget,
        minimum_bytes=least.peak_bytes,
    )


# ---------------------------------------------------------------------------------------------
# A shrinking batch: unequal blocks priced block by block
# ---------------------------------------------------------------------------------------------


class _Chain:
    """Per-block costs of one cut of a shrinking batch (NOTE [ Per-block costs of a shrinking batch ]).

    Attributes: ``bounds`` (block starts, then T), ``state`` (bytes of one state, full batch, with
    its fixed companions), ``base`` (bytes held throughout), ``blocks`` (bytes of each block in
    flight), ``advance`` and ``fb`` (seconds of each block without grad, and with grad and
    backward, the block overhead included).
    """

    __slots__ = ("bounds", "state", "base_parts", "base", "blocks", "advance", "fb", "_advance_prefix")

    def __init__(self, profile: CellProfile, workload: Workload, bounds: Sequence[int], prefix: Sequence[int]) -> None:
        p = profile
        self.bounds = tuple(bounds)
        self.state = p.state_bytes_per_sample * workload.batch_size + p.state_bytes_fixed
        widest = max(prefix[b] - prefix[a] for a, b in zip(self.bounds, self.bounds[1:]))
        samples = workload.resident_input_sample_steps(widest)
        self.base_parts = (
            ("parameters", int(p.parameter_bytes)),
            ("gradients", int(p.gradient_bytes)),
            ("inputs", math.ceil(p.input_bytes_per_step * samples)),
            ("targets", math.ceil(p.target_bytes_per_step * samples)),
        )
        self.base = sum(size for _, size in self.base_parts) + int(p.allocator_overhead_bytes)
        self.blocks = []
        self.advance = []
        self.fb = []
        for a, b in zip(self.bounds, self.bounds[1:]):
            steps, sample_steps = b - a, prefix[b] - prefix[a]
            block = block_bytes(p, sample_steps)
            self.blocks.append(block)
            self.advance.append(
                steps * p.advance_seconds_per_step
                + sample_steps * p.advance_seconds_per_step_per_sample
                + p.block_overhead_seconds
            )
            self.fb.append(
                steps * p.fb_seconds_per_step + sample_steps * p.fb_seconds_per_step_per_sample + p.block_overhead_seconds
            )
        self._advance_prefix = [0.0]
        for s in self.advance:
            self._advance_prefix.append(self._advance_prefix[-1] + s)

    @property
    def n(self) -> int:
        return len(self.bounds) - 1

    def blocks_cost(self) -> tuple[float, float, int]:
        """Peak bytes, seconds and the block at the peak of the ``blocks`` strategy, in closed
        form: while block ``b`` runs with grad, ``b + 2`` states are held (NOTE)."""
        n = self.n
        peak, at = max(((b + 2) * self.state + self.blocks[b], b) for b in range(n))
        seconds = self._advance_prefix[n - 1] + sum(self.fb)
        return self.base + peak, seconds, at

    def walk_cost(self, actions) -> tuple[float, float, int]:
        """Peak bytes, seconds and the block at the peak of any schedule over this chain, by
        walking its actions unchecked (``O(actions)``; the reference simulator's memory model)."""
        memory = MemoryModel(state_bytes=self.state, block_bytes=self.blocks.__getitem__)
        peak, at, seconds = 0.0, 0, 0.0
        for step in walk(actions, self.n, memory=memory, check=False):
            action = step.action
            if type(action) is Advance:
                seconds += self._advance_prefix[action.stop] - self._advance_prefix[action.start]
            elif type(action) is ForwardBackward:
                if step.peak_bytes > peak:
                    peak, at = step.peak_bytes, action.block
                seconds += self.fb[action.block]
        return self.base + peak, seconds, at


def _prefix(sizes: Sequence[int]) -> list[int]:
    prefix = [0]
    for b in sizes:
        prefix.append(prefix[-1] + b)
    return prefix


def cut_by_sample_steps(batch_sizes: Sequence[int], cap: int) -> tuple[int, ...]:
    """Block boundaries for a shrinking batch: each block as long as it can be while holding at
    most ``cap`` sample-steps (steps times sequences running); a step over ``cap`` is a block.

    Examples
    --------
    >>> cut_by_sample_steps([4, 4, 2, 2, 1, 1, 1, 1], 4)
    (0, 1, 2, 4, 8)
    """
    bounds = [0]
    total = 0
    for t, b in enumerate(batch_sizes):
        if total and total + b > cap:
            bounds.append(t)
            total = 0
        total += b
    bounds.append(len(batch_sizes))
    return tuple(bounds)


def _block_counts(limit: int) -> list[int]:
    """Block counts to try: every count up to 64, then about 5% apart, up to ``limit``."""
    counts, n = [], 1
    while n <= limit:
        counts.append(n)
        n = n + 1 if n < 64 else max(n + 1, int(n * 1.05))
    return counts


def _chains(profile: CellProfile, workload: Workload) -> Iterator[_Chain]:
    """Cuts worth pricing: blocks of equal sample-steps, and blocks of equal steps."""
    sizes = workload.batch_sizes
    seq_len = workload.seq_len
    prefix = _prefix(sizes)
    total = prefix[-1]
    seen: set[tuple[int, ...]] = set()
    lengths = candidate_block_lengths(seq_len) if seq_len <= 20_000 else sorted(
        {-(-seq_len // n) for n in _block_counts(seq_len)}, reverse=True
    )
    cuts: list[tuple[int, ...]] = []
    for n in _block_counts(seq_len):
        cuts.append(cut_by_sample_steps(sizes, -(-total // n)))
    for k in lengths:
        cuts.append(tuple(range(0, seq_len, k)) + (seq_len,))
    for bounds in cuts:
        if len(bounds) > 2 and bounds not in seen:
            seen.add(bounds)
            yield _Chain(profile, workload, bounds, prefix)


_DP_MAX_BLOCKS = 200
_DP_MAX_WORK = 3_000_000  # split terms of one chain's DP (about 0.4 s in CPython)
_DP_TOTAL_WORK = 4_000_000  # over one solve


def _solve_shrinking(plan: Plan, workload: Workload, baseline: float, widest: Schedule | None) -> Schedule | None:
    """The fastest fitting schedule over unequal blocks, or None (NOTE [ Per-block costs of a
    shrinking batch ]). ``widest``, the schedule planned as if every block were the widest, is
    priced block by block too, so the result is never slower than it."""
    profile, budget = plan.profile, plan.budget_bytes
    best: tuple[float, float, str, int | None, _Chain, int, tuple[int, ...]] | None = None
    if widest is not None and widest.strategy != "store_all":
        k, n = widest.block_length, widest.num_blocks
        chain = _Chain(profile, workload, tuple(range(0, workload.seq_len, k)) + (workload.seq_len,), _prefix(workload.batch_sizes))
        peak, seconds, at = chain.walk_cost(strategies.generate(widest))
        if peak <= budget:
            best = (seconds, peak, widest.strategy, widest.checkpoints if widest.strategy == "binomial" else None, chain, at, ())
    uneven: list[tuple[float, _Chain, int]] = []  # binomial cuts the DP may speed up
    for chain in _chains(profile, workload):
        n = chain.n
        if best is not None and (2 * n - 1) * profile.block_overhead_seconds > best[0]:
            continue  # the overheads alone are slower than the best so far
        peak, seconds, at = chain.blocks_cost()
        shape: tuple[str, int | None] = ("blocks", None)
        if peak > budget:
            if n < 3 or chain.state <= 0:
                continue
            if best is not None and seconds >= best[0]:
                continue  # binomial advances every block that blocks does, and more
            lower = seconds
            # Every FB holds at most c + 2 states: c stored, the working state, the delta.
            room = budget - chain.base - max(chain.blocks)
            c = min(int(room // chain.state) - 2, n - 2)
            if c < 1:
                continue
            peak, seconds, at = chain.walk_cost(strategies.binomial(n, c))
            shape = ("binomial", c)
            if peak > budget:
                continue
            if n <= _DP_MAX_BLOCKS and c < n - 1 and strategies.chain_dp_work(n, c) <= _DP_MAX_WORK:
                # blocks' time, the least any schedule on this cut can take, ranks it for the DP
                uneven.append((lower, chain, c))
        if best is None or seconds < best[0]:
            best = (seconds, peak, shape[0], shape[1], chain, at, ())
    # The DP over unequal advance costs, on the binomial cuts that could still win, most
    # promising first, within a bound on its work.
    work_left = _DP_TOTAL_WORK
    for lower, chain, c in sorted(uneven, key=lambda entry: entry[0]):
        if best is None or lower >= best[0]:
            break
        work = strategies.chain_dp_work(chain.n, c)
        if work > work_left:
            continue
        work_left -= work
        extra, splits = strategies.chain_splits(chain.advance, c)
        seconds = extra + sum(chain.fb)
        if seconds < best[0] * (1 - 1e-12):  # a real gain, not rounding
            peak, _, at = chain.walk_cost(strategies.binomial_splits(chain.n, c, splits))
            if peak <= budget:
                best = (seconds, peak, "binomial", c, chain, at, splits)
    if best is None:
        return None
    seconds, peak, strategy, checkpoints, chain, at, splits = best
    bounds = chain.bounds
    p = profile
    working = math.ceil(2 * chain.state)
    block = chain.blocks[at]
    parts = chain.base_parts + (
        ("stored states", math.ceil(peak) - chain.base - working - block),
        ("working state and its gradient", working),
        ("block in flight", block),
    )
    if p.allocator_overhead_bytes:
        parts += (("allocator overhead", int(p.allocator_overhead_bytes)),)
    lengths = {b - a for a, b in zip(bounds, bounds[1:-1])}
    uniform = len(lengths) <= 1 and bounds[-1] - bounds[-2] <= bounds[1]
    return Schedule(
        strategy=strategy,
        seq_len=workload.seq_len,
        block_length=max(b - a for a, b in zip(bounds, bounds[1:])),
        checkpoints=checkpoints,
        batch_size=workload.batch_size,
        predicted_peak_bytes=math.ceil(peak),
        predicted_seconds=seconds,
        baseline_seconds=baseline,
        memory_parts=parts,
        device=p.device,
        budget_bytes=budget,
        boundaries=() if uniform else bounds,
        splits=splits,
    )
