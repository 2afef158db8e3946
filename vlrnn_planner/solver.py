"""The solver: the fastest schedule whose predicted peak fits a memory budget.

`solve` is a pure function of plain inputs (a cell profile, a budget in bytes, a `Workload`),
with no framework imported and no `Plan` in sight: it prices schedule shapes with the cost model
(`vlrnn_planner.cost`) and returns the `Schedule` of the fastest one whose predicted peak fits.
`vlrnn_planner.plan.Plan` calls it for each input shape and caches the result.

NOTE [ Candidate block lengths ]
--------------------------------
For ``n`` blocks the shortest block length is ``K = ceil(T / n)``. Any longer ``K`` with the same
``n`` stores as many states, holds a larger block in flight and advances more steps, so it is
never better. The candidates are therefore the distinct values of ``ceil(T / n)`` for
``n = 1 .. T``: at most ``2 * sqrt(T)`` of them (2000 for a million steps), each priced in
closed form.

NOTE [ Block multiples ]
------------------------
A cell that works in segments of ``M`` steps (``block_multiple``) needs every block to start at a
multiple of ``M``; only the last block may end at ``T`` rather than at a multiple. The search then
runs over segments: ``U = ceil(T / M)`` of them, the last possibly short, and blocks of ``j``
segments, ``K = j M`` steps, with ``ceil(T / K) = ceil(U / j)``, so the candidates of NOTE
[ Candidate block lengths ] for ``U`` segments, times ``M``, are the candidates in steps. Cuts of a
shrinking batch group its steps into segments first. ``M = 1`` is the search over steps.

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
batch shrinks, `solve` prices chains of unequal blocks block by block (`vlrnn_planner.cost.Chain`,
as rotor does for heterogeneous chains). The full search (``search="full"``) goes as follows;
the quick one (NOTE [ Planning a packed batch per call ]) prices its few cuts the same way.

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

Block counts are tried exhaustively up to 64, then about 5% apart: some 250 cuts for 3,000 steps,
0.1 to 1.3 s in CPython with the DP.

NOTE [ Planning a packed batch per call ]
-----------------------------------------
A training loop on packed batches brings new lengths at every step, and `Plan` plans each new
set anew. The quick search (``search="quick"``, the default) makes a few cuts from the budget
instead of searching many, and prices them as the full search does. With ``R(h)`` the bytes the
budget leaves for a block run beside ``h`` boundary states, and ``cap(h)`` the most sample-steps
whose block fits in ``R(h)`` (`vlrnn_planner.cost.largest_block`):

- ``blocks``: block ``b`` runs beside ``b + 2`` states, so it may hold ``cap(b + 2)``. The
  fewest blocks that keep to these caps, the last as long as it may be (NOTE [ Greedy cuts
  against caps ] in `vlrnn_planner.cuts`), give the fastest ``blocks`` schedule of any cut
  under a time model without per-length factors (``step_time_scale``): its time is every
  block's seconds with grad, plus the advance of every block but the last, plus ``2 n - 1``
  overheads, and no cut that fits has fewer blocks or a longer last block. The full search's
  cuts have equal caps or equal steps, so this one is often faster than all of them;
- ``binomial`` with ``c`` checkpoints holds at most ``c + 2`` states beside any block, so blocks
  of ``cap(c + 2)`` fit; the fewest such blocks are cut greedily. Every ``c`` is screened in
  closed form (``ceil(S / cap)`` blocks of equal cost, `strategies.forward_evaluations`), the
  best three are cut and ranked again on their real block counts, and the best is walked; the
  DP over unequal blocks runs on it where it costs at most 20,000 terms;
- the schedule planned as if every block were the widest, priced block by block, as in the
  full search: the result is never slower than it.

Why the budget holds: the caps only choose the cuts. Every candidate is then priced on the
actual batch by the simulator's memory model, exactly as in the full search (``blocks`` in
closed form, ``binomial`` walked), and kept only if that peak is within the budget; the
prediction returned is that peak. ``fixed`` in ``R(h)`` is what is held throughout with the
widest block the budget allows (with the inputs on the host it grows with the widest block), at
least what any cut that fits holds, so a cut made to the caps fits unless rounding says
otherwise. Where the quick search finds nothing that fits, the full search runs: the quick one
never turns down a budget that the full one meets. ``search="full"`` starts from the quick
search's result, so it is never slower than it.

Cost: prefix sums in ``O(T)``, ``O(n log T)`` per cut (bisection on the prefix sums), the
checkpoint counts in closed form, and one walk of ``O(n)`` actions: a few milliseconds for 32
sequences of 500 to 3,000 steps (`benchmarks/bench_packed_planning.py`). A plan per bucket of
lengths, made for the bucket's worst case (the full batch over its longest sequence), would be
cheaper still, but it counts the inputs of that full batch: at tight budgets it finds nothing
where the packed batch fits, and elsewhere its blocks are too short (up to half as slow again,
predicted, in the benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from heapq import nsmallest
from operator import sub
from typing import Literal

from . import strategies
from .budget import format_bytes
from .cost import (
    Chain,
    Estimate,
    Workload,
    block_bytes,
    boundary_state_bytes,
    estimate,
    held_bytes,
    overlapped,
    largest_block,
    peak_memory,
    sample_step_prefix,
)
from .cuts import cut_by_sample_steps, cut_to_caps, segment_prefix, to_steps
from .errors import InfeasibleBudgetError, InvalidInputError
from .profile import CellProfile
from .records import positive_int
from .schedule import Schedule

__all__ = [
    "SEARCHES",
    "solve",
    "minimum_peak",
    "candidate_block_lengths",
    "cut_by_sample_steps",
]

Search = Literal["quick", "full"]
#: How `solve` searches the cuts of a batch that shrinks (NOTE [ Planning a packed batch per call ]).
SEARCHES = ("quick", "full")


def candidate_block_lengths(seq_len: int, block_multiple: int = 1) -> list[int]:
    """The block lengths worth pricing, longest first (NOTE [ Candidate block lengths ]).

    Parameters
    ----------
    seq_len : int
        Steps ``T``.
    block_multiple : int, default 1
        Every length a multiple of this (NOTE [ Block multiples ]); the first, one block over
        the whole sequence, is ``T``.

    Returns
    -------
    list of int
        From ``T`` down to ``block_multiple``.

    Examples
    --------
    >>> candidate_block_lengths(10)
    [10, 5, 4, 3, 2, 1]
    >>> candidate_block_lengths(20, block_multiple=3)
    [20, 12, 9, 6, 3]
    >>> len(candidate_block_lengths(10**6)) < 2001
    True
    """
    units = -(-seq_len // block_multiple)
    lengths = []
    n = 1
    while True:
        j = -(-units // n)
        lengths.append(min(j * block_multiple, seq_len))
        if j == 1:
            return lengths
        n = -(-units // (j - 1))


def _shapes(
    profile: CellProfile, workload: Workload, budget_bytes: int, block_multiple: int
) -> Iterator[tuple[str, int, int | None]]:
    """(strategy, K, checkpoints) worth pricing (NOTE [ Joint search of K and checkpoints ])."""
    seq_len = workload.seq_len
    yield "store_all", seq_len, None
    state = profile.state_bytes_per_sample * workload.batch_size + profile.state_bytes_fixed
    for k in candidate_block_lengths(seq_len, block_multiple):
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


@dataclass(frozen=True)
class _Problem:
    """What one solve is asked: the inputs of `solve`, checked."""

    profile: CellProfile
    budget_bytes: int
    workload: Workload
    block_multiple: int

    def schedule(
        self,
        strategy: str,
        block_length: int,
        priced: Estimate,
        baseline_seconds: float,
        *,
        checkpoints: int | None = None,
        overlap: bool = False,
    ) -> Schedule:
        """The schedule of a shape of equal blocks, with its prediction."""
        return Schedule(
            strategy=strategy,
            seq_len=self.workload.seq_len,
            block_length=block_length,
            checkpoints=checkpoints,
            batch_size=self.workload.batch_size,
            overlap=overlap,
            prediction=priced.prediction(
                baseline_seconds=baseline_seconds, device=self.profile.device, budget_bytes=self.budget_bytes
            ),
        )


def solve(
    profile: CellProfile,
    budget_bytes: int,
    workload: Workload,
    *,
    block_multiple: int = 1,
    search: Search = "quick",
) -> Schedule:
    """The fastest schedule whose predicted peak fits ``budget_bytes``, for one input shape.

    Plain BPTT (``"store_all"``) when it fits; otherwise blocks of the block length with the lowest
    predicted time, with binomial checkpointing of the boundary states where not all of them fit;
    for a batch that shrinks, blocks of unequal steps (NOTE [ Per-block costs of a shrinking
    batch ]).

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes and seconds.
    budget_bytes : int
        The memory budget in bytes, at least 1.
    workload : Workload
        Steps, batch, how the batch shrinks, where the inputs are and whether they take
        gradients.
    block_multiple : int, default 1
        Every block starts at a multiple of this many steps (NOTE [ Block multiples ]).
    search : {"quick", "full"}, default "quick"
        For a batch that shrinks: ``"quick"`` prices a few cuts made to the budget, in about
        ``O(T)`` (NOTE [ Planning a packed batch per call ]); ``"full"`` also searches the cuts
        of NOTE [ Per-block costs of a shrinking batch ] and binomial splits over unequal
        blocks, up to a second for thousands of steps, and is never slower than ``"quick"``.
        Batches that do not shrink are searched in closed form either way.

    Returns
    -------
    Schedule
        With its `vlrnn_planner.schedule.Prediction`.

    Raises
    ------
    InfeasibleBudgetError
        If no schedule fits; ``minimum_bytes`` is the smallest predicted peak of any schedule.
    InvalidInputError
        For a profile that is not a `CellProfile`, a budget or block multiple that is not a
        positive int, or an unknown ``search``.

    Examples
    --------
    >>> p = CellProfile(state_bytes_per_sample=4096.0, activation_bytes_per_step=20_000.0,
    ...                 fb_seconds_per_step=1e-4, advance_seconds_per_step=4e-5,
    ...                 block_overhead_seconds=1e-4)
    >>> solve(p, 10**7, Workload(seq_len=400, batch_size=1)).strategy
    'store_all'
    >>> s = solve(p, 10**7, Workload(seq_len=10_000, batch_size=4))
    >>> s.strategy, s.block_length, s.predicted_peak_bytes <= 10**7
    ('blocks', 100, True)
    >>> solve(p, 10**7, Workload(seq_len=10_000, batch_size=4), block_multiple=8).block_length
    104
    """
    if not isinstance(profile, CellProfile):
        raise InvalidInputError(
            f"vlrnn_planner: solve needs a CellProfile, got {type(profile).__name__}; profile the "
            "cell with vlrnn_planner.auto_plan(cell, budget=...)"
        )
    problem = _Problem(
        profile,
        positive_int("budget_bytes", budget_bytes, hint="pass the budget in bytes"),
        workload,
        positive_int("block_multiple", block_multiple, hint="pass the steps of the cell's segments"),
    )
    if search not in SEARCHES:
        raise InvalidInputError(f"vlrnn_planner: unknown search {search!r}; choose one of {', '.join(SEARCHES)}")
    baseline = estimate(profile, workload, strategy="store_all", block_length=workload.seq_len)
    if baseline.peak_bytes <= budget_bytes:
        return problem.schedule("store_all", workload.seq_len, baseline, baseline.seconds)
    if workload.batch_sizes is not None and len(set(workload.batch_sizes)) > 1:
        return _solve_shrinking(problem, baseline.seconds, search)
    best = _fastest_equal_blocks(problem)
    if best is None:
        raise _infeasible(problem)
    strategy, k, checkpoints, e, overlap = best
    return problem.schedule(strategy, k, e, baseline.seconds, checkpoints=checkpoints, overlap=overlap)


def _fastest_equal_blocks(problem: _Problem) -> tuple[str, int, int | None, Estimate, bool] | None:
    """The fastest fitting shape of equal blocks: strategy, K, checkpoints, its estimate and
    whether it overlaps recomputation with backward (NOTE [ Overlap in the cost model ]); None if
    none fits."""
    profile, workload, budget = problem.profile, problem.workload, problem.budget_bytes
    best: tuple[str, int, int | None, Estimate, bool] | None = None
    for strategy, k, checkpoints in _shapes(profile, workload, budget, problem.block_multiple):
        e = estimate(profile, workload, strategy=strategy, block_length=k, checkpoints=checkpoints)
        faster = overlapped(profile, workload, e, strategy=strategy, block_length=k)
        for priced, overlap in ((e, False), (faster, True)):
            if priced is not None and priced.peak_bytes <= budget and (best is None or priced.seconds < best[3].seconds):
                best = (strategy, k, checkpoints, priced, overlap)
    return best


def minimum_peak(profile: CellProfile, workload: Workload, *, block_multiple: int = 1) -> Estimate:
    """The schedule shape with the smallest predicted peak.

    The fewest stored states the strategies allow, with the block length that makes the rest
    smallest.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes and seconds.
    workload : Workload
        The step's data.
    block_multiple : int, default 1
        Block lengths are multiples of this (NOTE [ Block multiples ]).

    Returns
    -------
    Estimate
        Of the shape with the smallest peak.
    """
    best = estimate(profile, workload, strategy="store_all", block_length=workload.seq_len)
    for k in candidate_block_lengths(workload.seq_len, block_multiple):
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


def _largest_fitting_batch(problem: _Problem) -> int:
    """The largest batch below the workload's whose minimum peak fits the budget (0 if none)."""
    lo, hi = 0, problem.workload.batch_size - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        smaller = replace(problem.workload, batch_size=mid)
        if minimum_peak(problem.profile, smaller, block_multiple=problem.block_multiple).peak_bytes <= problem.budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _infeasible(problem: _Problem) -> InfeasibleBudgetError:
    profile, workload, budget = problem.profile, problem.workload, problem.budget_bytes
    least = minimum_peak(profile, workload, block_multiple=problem.block_multiple)
    parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in least.memory_parts if size)
    advice = [f"raise the budget to at least {format_bytes(least.peak_bytes)}"]
    if workload.batch_sizes is None and workload.batch_size > 1:
        fits = _largest_fitting_batch(problem)
        if fits >= 1:
            advice.append(f"lower the batch size from {workload.batch_size} to {fits} or less")
        else:
            advice.append("lower the batch size (not even a batch of 1 fits)")
    if profile.dtype in ("float64", "float32"):
        advice.append(
            f"use a lower precision than {profile.dtype} (parameters, inputs, states and "
            "activations all shrink with it)"
        )
    sizes = dict(least.memory_parts)
    inputs = sizes.get("inputs", 0) + sizes.get("targets", 0) + sizes.get("input gradients", 0)
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


def _block_counts(limit: int) -> list[int]:
    """Block counts to try: every count up to 64, then about 5% apart, up to ``limit``."""
    counts, n = [], 1
    while n <= limit:
        counts.append(n)
        n = n + 1 if n < 64 else max(n + 1, int(n * 1.05))
    return counts


def _chains(problem: _Problem, prefix: Sequence[int]) -> Iterator[Chain]:
    """Cuts worth pricing: blocks of equal sample-steps, and blocks of equal steps."""
    profile, workload, multiple = problem.profile, problem.workload, problem.block_multiple
    sizes = workload.batch_sizes
    seq_len = workload.seq_len
    units = -(-seq_len // multiple)
    total = prefix[-1]
    seen: set[tuple[int, ...]] = set()
    if seq_len <= 20_000:
        lengths = candidate_block_lengths(seq_len, multiple)
    else:
        lengths = sorted({-(-units // n) * multiple for n in _block_counts(units)}, reverse=True)
    cuts: list[tuple[int, ...]] = []
    for n in _block_counts(units):
        cuts.append(cut_by_sample_steps(sizes, -(-total // n), block_multiple=multiple))
    for k in lengths:
        cuts.append(tuple(range(0, seq_len, k)) + (seq_len,))
    for bounds in cuts:
        if len(bounds) > 2 and bounds not in seen:
            seen.add(bounds)
            yield Chain.from_profile(profile, workload, bounds, prefix)


_DP_MAX_BLOCKS = 200
_DP_MAX_WORK = 3_000_000  # split terms of one chain's DP (about 0.4 s in CPython)
_DP_TOTAL_WORK = 4_000_000  # over one solve


@dataclass
class _Best:
    """The fastest fitting schedule over a chain so far."""

    seconds: float
    peak: float
    strategy: str
    checkpoints: int | None
    chain: Chain
    at: int
    splits: tuple[int, ...] = ()


def _solve_shrinking(problem: _Problem, baseline: float, search: Search) -> Schedule:
    """The fastest fitting schedule over unequal blocks: the quick search (NOTE [ Planning a
    packed batch per call ]), then for ``search="full"``, or where it found nothing, the full
    one (NOTE [ Per-block costs of a shrinking batch ]) with its result to beat."""
    prefix = sample_step_prefix(problem.workload.batch_sizes)
    room = _Room.of(problem, prefix)
    best = _quick_search(room)
    if search == "full" or (best is None and room.widest >= room.widest_segment):
        best = _full_search(problem, prefix, best)
    if best is None:
        raise _infeasible(problem)
    return _chain_schedule(problem, best, baseline)


def _full_search(problem: _Problem, prefix: Sequence[int], best: _Best | None) -> _Best | None:
    """The fastest fitting schedule over the cuts of `_chains`, if faster than ``best``."""
    profile, budget = problem.profile, problem.budget_bytes
    uneven: list[tuple[float, Chain, int]] = []  # binomial cuts the DP may speed up
    for chain in _chains(problem, prefix):
        n = chain.n
        if best is not None and (n - 1) * profile.advance_overhead + n * profile.block_overhead_seconds > best.seconds:
            continue  # the overheads alone are slower than the best so far
        peak, seconds, at = chain.blocks_cost()
        shape: tuple[str, int | None] = ("blocks", None)
        if peak > budget:
            if n < 3 or chain.state_bytes <= 0:
                continue
            if best is not None and seconds >= best.seconds:
                continue  # binomial advances every block that blocks does, and more
            lower = seconds
            # Every FB holds at most c + 2 states: c stored, the working state, the delta.
            room = budget - chain.fixed_bytes - max(chain.block_bytes)
            c = min(int(room // chain.state_bytes) - 2, n - 2)
            if c < 1:
                continue
            peak, seconds, at = chain.walk_cost(strategies.binomial(n, c))
            shape = ("binomial", c)
            if peak > budget:
                continue
            if n <= _DP_MAX_BLOCKS and c < n - 1 and strategies.chain_dp_work(n, c) <= _DP_MAX_WORK:
                # blocks' time, the least any schedule on this cut can take, ranks it for the DP
                uneven.append((lower, chain, c))
        if best is None or seconds < best.seconds:
            best = _Best(seconds, peak, shape[0], shape[1], chain, at)
    if best is not None:
        best = _faster_splits(problem, best, uneven, _DP_TOTAL_WORK)
    return best


def _faster_splits(problem: _Problem, best: _Best, uneven: list[tuple[float, Chain, int]], work_left: int) -> _Best:
    """The DP over unequal advance costs, on the binomial cuts that could still win, most
    promising first, within ``work_left`` terms."""
    for lower, chain, c in sorted(uneven, key=lambda entry: entry[0]):
        if lower >= best.seconds:
            break
        work = strategies.chain_dp_work(chain.n, c)
        if work > work_left:
            continue
        work_left -= work
        extra, splits = strategies.chain_splits(chain.advance_seconds, c)
        seconds = extra + sum(chain.fb_seconds)
        if seconds < best.seconds * (1 - 1e-12):  # a real gain, not rounding
            peak, _, at = chain.walk_cost(strategies.binomial_splits(chain.n, c, splits))
            if peak <= problem.budget_bytes:
                best = _Best(seconds, peak, "binomial", c, chain, at, splits)
    return best


# ---------------------------------------------------------------------------------------------
# A shrinking batch, planned per call: cuts made to the budget
# ---------------------------------------------------------------------------------------------

_QUICK_CANDIDATES = 3  # binomial checkpoint counts cut and ranked again, of the best screened
_QUICK_DP_WORK = 20_000  # split terms of the DP in a quick search (a few ms)


@dataclass(frozen=True)
class _Room:
    """What the budget leaves for the blocks of a shrinking batch (NOTE [ Planning a packed
    batch per call ]): every block at most ``widest`` sample-steps, ``fixed`` the bytes held
    throughout with such a block, ``state`` one boundary state. Every schedule holds at least
    two states beside each block, so with ``widest`` below ``widest_segment`` nothing fits."""

    problem: _Problem
    prefix: Sequence[int]
    segments: list[int]
    state: float
    fixed: int
    widest: int
    widest_segment: int

    @classmethod
    def of(cls, problem: _Problem, prefix: Sequence[int]) -> _Room:
        """The room of ``problem``; ``widest`` is -1 where not even a block of one segment fits."""
        profile, workload, budget = problem.profile, problem.workload, problem.budget_bytes
        state = boundary_state_bytes(profile, workload)
        total = prefix[-1]
        if workload.inputs_on_host:  # the held bytes grow with the widest block: bisect it
            low, high = -1, total
            while low < high:
                mid = (low + high + 1) // 2
                held = held_bytes(profile, workload, widest_sample_steps=mid)
                if held + 2 * state + block_bytes(profile, mid) <= budget:
                    low = mid
                else:
                    high = mid - 1
            widest = low
            fixed = held_bytes(profile, workload, widest_sample_steps=max(widest, 0))
        else:
            fixed = held_bytes(profile, workload, widest_sample_steps=total)
            widest = min(total, largest_block(profile, budget - fixed - 2 * state))
        segments = segment_prefix(prefix, problem.block_multiple)
        widest_segment = max(map(sub, segments[1:], segments[:-1]))
        return cls(problem, prefix, segments, state, fixed, widest, widest_segment)

    def cap(self, states: int) -> int:
        """The most sample-steps of a block run beside ``states`` boundary states."""
        room = self.problem.budget_bytes - self.fixed - states * self.state
        return min(self.widest, largest_block(self.problem.profile, room))

    def steps(self, bounds: Sequence[int]) -> tuple[int, ...]:
        """Segment boundaries in steps."""
        return to_steps(bounds, self.problem.workload.seq_len, self.problem.block_multiple)

    def chain(self, bounds: Sequence[int]) -> Chain:
        """The per-block costs of the cut at segment boundaries ``bounds``."""
        return Chain.from_profile(self.problem.profile, self.problem.workload, self.steps(bounds), self.prefix)


def _quick_search(room: _Room) -> _Best | None:
    """The fastest of a few cuts made to the budget, priced exactly (NOTE [ Planning a packed
    batch per call ])."""
    if room.widest < room.widest_segment:
        return None
    best = _capped_blocks(room)
    best = _capped_binomial(room, best)
    return _widest(room.problem, room.prefix, best)


def _capped_blocks(room: _Room) -> _Best | None:
    """``blocks`` over the fewest blocks that fit, the last one as long as it may be."""
    def caps(b: int) -> int:
        return room.cap(b + 2)  # b stored before block b, its input state, the delta at its output

    front = cut_to_caps(room.segments, caps)
    if front is None or len(room.segments) < 3:
        return None  # nothing fits, or one segment: plain BPTT, which did not fit
    # One block within the caps is plain BPTT, which did not fit (it holds more than the caps
    # count): then two blocks, the last as long as it may be.
    bounds = cut_to_caps(room.segments, caps, num_blocks=max(len(front) - 1, 2))
    if bounds is None:
        if len(front) < 3:
            return None
        bounds = front
    chain = room.chain(bounds)
    peak, seconds, at = chain.blocks_cost()
    if peak > room.problem.budget_bytes:
        return None
    return _Best(seconds, peak, "blocks", None, chain, at)


def _capped_binomial(room: _Room, best: _Best | None) -> _Best | None:
    """``binomial`` with ``c`` checkpoints over blocks of at most what ``c + 2`` states leave,
    the ``c`` screened in closed form; faster than ``best`` or ``best``."""
    problem, segments = room.problem, room.segments
    profile, workload = problem.profile, problem.workload
    if room.state <= 0:
        return best
    widest_segment = room.widest_segment
    most = int((problem.budget_bytes - room.fixed - block_bytes(profile, widest_segment)) // room.state) - 2
    total, seq_len, overhead = room.prefix[-1], workload.seq_len, profile.block_overhead_seconds

    def advance(steps: int) -> float:  # seconds of the first ``steps`` steps without grad
        return profile.advance_seconds_per_step * steps + profile.advance_seconds_per_step_per_sample * room.prefix[steps]

    fb = profile.fb_seconds_per_step * seq_len + profile.fb_seconds_per_step_per_sample * total
    screened = []
    for c in _block_counts(most):
        cap = room.cap(c + 2)
        n = -(-total // cap) if cap >= widest_segment else 0
        if n <= c + 1:
            break  # the cap is below a segment, or every boundary fits: blocks, done above
        e = strategies.forward_evaluations("binomial", n, checkpoints=c)
        screened.append((fb + (e - n) * advance(seq_len) / n + e * overhead, c, cap))
    ranked = []
    for _, c, cap in nsmallest(_QUICK_CANDIDATES, screened):
        bounds = cut_to_caps(segments, lambda _b, cap=cap: cap)
        n = len(bounds) - 1 if bounds is not None else 0
        c = min(c, n - 2)
        if c >= 1:
            e = strategies.forward_evaluations("binomial", n, checkpoints=c)
            head = room.steps(bounds[-2:-1])[0]
            ranked.append((fb + n * overhead + (e - n) * (advance(head) / (n - 1) + overhead), c, bounds))
    if not ranked:
        return best
    _, c, bounds = min(ranked)
    chain = room.chain(bounds)
    lower = chain.blocks_cost()[1]
    if best is not None and lower >= best.seconds:
        return best  # blocks' time, the least any schedule on this cut can take
    peak, seconds, at = chain.walk_cost(strategies.binomial(chain.n, c))
    if peak > problem.budget_bytes or (best is not None and seconds >= best.seconds):
        return best
    found = _Best(seconds, peak, "binomial", c, chain, at)
    if chain.n > _DP_MAX_BLOCKS:
        return found  # the DP's work alone would take longer to count than this search
    return _faster_splits(problem, found, [(lower, chain, c)], _QUICK_DP_WORK)


def _widest(problem: _Problem, prefix: Sequence[int], best: _Best | None) -> _Best | None:
    """The schedule planned as if every block were the widest, priced block by block, if it fits
    and is faster than ``best``; ``best`` otherwise."""
    uniform = _fastest_equal_blocks(replace(problem, workload=replace(problem.workload, batch_sizes=None)))
    if uniform is None:
        return best
    strategy, k, checkpoints, _, _ = uniform
    if strategy == "store_all":
        return best  # it fits the widest batch, so plain BPTT fitted this one: not asked here
    seq_len = problem.workload.seq_len
    chain = Chain.from_profile(problem.profile, problem.workload, tuple(range(0, seq_len, k)) + (seq_len,), prefix)
    peak, seconds, at = chain.blocks_cost()
    if best is not None and seconds >= best.seconds:
        return best  # blocks' time, the least any schedule on this cut can take
    if strategy == "binomial":
        peak, seconds, at = chain.walk_cost(strategies.binomial(chain.n, checkpoints))
    if peak > problem.budget_bytes or (best is not None and seconds >= best.seconds):
        return best
    return _Best(seconds, peak, strategy, checkpoints, chain, at)


def _chain_schedule(problem: _Problem, best: _Best, baseline: float) -> Schedule:
    bounds = best.chain.bounds
    lengths = {b - a for a, b in zip(bounds, bounds[1:-1])}
    uniform = len(lengths) <= 1 and bounds[-1] - bounds[-2] <= bounds[1]
    prediction = best.chain.prediction(
        problem.profile,
        problem.workload,
        peak_bytes=best.peak,
        seconds=best.seconds,
        at=best.at,
        baseline_seconds=baseline,
        budget_bytes=problem.budget_bytes,
    )
    return Schedule(
        strategy=best.strategy,
        seq_len=problem.workload.seq_len,
        block_length=max(b - a for a, b in zip(bounds, bounds[1:])),
        checkpoints=best.checkpoints,
        batch_size=problem.workload.batch_size,
        boundaries=() if uniform else bounds,
        splits=best.splits,
        prediction=prediction,
    )
