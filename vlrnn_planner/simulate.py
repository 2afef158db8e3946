"""The reference simulator: the one walk of a schedule's actions.

`walk` interprets the same actions as a backend's executor, without running anything: it tracks
which boundary states are stored and where the working state is, raises `ScheduleError` at the
first action that breaks an invariant, and yields, per action, a `Step`: the state it reads and
the action that produced it, the states it stores, the stored states held after it, the blocks
and time steps it evaluates, and the bytes at its peak and after it. Everything that reads a
schedule action by action is built on it: `simulate` (the totals), `memory_trace`,
`schedule_statistics` where no closed form applies, the networkx graph and DOT export
(`vlrnn_planner.export`), the command line, and the planner's per-block costs
(`vlrnn_planner.cost.Chain`), which switch the checks off for speed. It is the ground truth that
the strategies' closed forms (`vlrnn_planner.strategies.forward_evaluations`) and the cost model
are tested against.

Invariants, for ``n`` blocks (boundaries ``0 .. n``):

- the initial state (boundary 0) is stored before the first action;
- ``Advance(start, stop, save)``: ``0 <= start < stop <= n``; the state at ``start`` is stored
  or is the working state; every saved boundary lies in ``(start, stop]``, is not stored already
  and appears once; afterwards the working state is at ``stop``;
- ``ForwardBackward(b)``: ``0 <= b < n``; blocks are backpropagated in the order
  ``n-1, n-2, ..., 0``, each once; the state at ``b`` is stored or is the working state;
  afterwards there is no working state;
- ``Free(b)``: ``b`` is stored;
- at the end every block has been backpropagated and no state is left stored.

NOTE [ Memory model ]
    At any moment the memory is ``base_bytes`` + the stored states + the working state (unless
    it is also stored: one tensor) + the gradient ("delta") held for the next block to
    backpropagate. During ``ForwardBackward(b)`` add ``block_bytes(b)``, the activations of block
    ``b`` with grad, and count the delta arriving at its output, ``state_bytes(b + 1)`` (the
    final-state gradient for the last block); afterwards the delta held is
    ``state_bytes(b)`` (none after block 0: that gradient is handed to the caller). That
    gradient appears at the end of the traversal, while the block's input state is still held,
    so the action's peak is the larger of the two moments. Within an
    ``Advance`` the working state moves block by block and the saved states accumulate; the
    model follows it block by block, so states of different sizes (packed batches that shrink)
    are counted where they occur. With one size for every state the memory only grows along an
    advance (each block trades the working state for a stored one or moves it on), so its peak
    is the memory after it, in closed form. A no-grad block's own transient memory is not
    modelled.

NOTE [ Two actions per block ]
    Every strategy's schedule has exactly ``2 n`` actions for ``n`` blocks. Each
    ``ForwardBackward(b)`` reads either the working state, left by the run of advances just
    before it (every run of advances ends in such a read: the working state is not kept
    otherwise), or the stored state at ``b``, which is then freed (each stored state, the initial
    one included, is read so once and freed once). So the ``n`` ForwardBackwards are as many as
    the advance runs plus the stored states, the Frees are as many as the stored states, and
    after merging consecutive advances (`vlrnn_planner.strategies`) the actions number
    ``n + n``. `schedule_statistics` relies on it; the tests check it against walks.

NOTE [ Peak of uniform states ]
    With every state of ``s`` bytes and every block of ``a`` bytes in flight, the peak of the
    memory model is ``base + a + s * (m + 2)`` for a strategy's schedule over ``n >= 2`` blocks
    holding at most ``m`` stored states, and ``base + a + 2 s`` for one block. The stored count
    only grows in advances, and the action after the run of advances that reaches ``m`` is a
    ForwardBackward from the working state (NOTE [ Two actions per block ]): ``m`` stored, the
    working state, and the delta at its output beside the block. No other moment holds more
    (advances hold at most a delta where a ForwardBackward holds its block and a delta).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import strategies
from .actions import Action, Advance, ForwardBackward, Free
from .errors import InvalidInputError, InvalidTypeError, ScheduleError

__all__ = [
    "MemoryModel",
    "Step",
    "Simulation",
    "MemoryPoint",
    "ScheduleStatistics",
    "walk",
    "walk_schedule",
    "simulate",
    "simulate_schedule",
    "memory_trace",
    "predicted_memory",
    "schedule_statistics",
]

PerBlock = Callable[[int], float] | float | int | None
"""A per-block quantity: a function of the block (or boundary) index, or one number for all."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _per_block(value: PerBlock, name: str) -> Callable[[int], float] | None:
    if value is None or callable(value):
        return value
    if _is_number(value):
        return lambda _index: value
    raise InvalidTypeError(
        f"vlrnn_planner: {name} must be a function of the block index or a number, got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class MemoryModel:
    """The bytes the simulator counts (NOTE [ Memory model ]).

    Attributes
    ----------
    state_bytes : callable or number
        Bytes of the state at boundary ``b`` (``0 <= b <= n``), as ``state_bytes(b)``, or one
        number for every boundary (counted in closed form within advances).
    block_bytes : callable or number
        Bytes of block ``b``'s activations while it runs with grad, as ``block_bytes(b)``, or one
        number for every block.
    base_bytes : int or float
        Bytes held throughout: parameters, gradients, inputs.

    Raises
    ------
    InvalidTypeError
        For a size that is neither a number nor callable.
    """

    state_bytes: Callable[[int], float] | float = 0
    block_bytes: Callable[[int], float] | float = 0
    base_bytes: float = 0

    def __post_init__(self) -> None:
        _per_block(self.state_bytes, "state_bytes")
        _per_block(self.block_bytes, "block_bytes")
        if not _is_number(self.base_bytes):
            raise InvalidTypeError(f"vlrnn_planner: base_bytes must be a number, got {self.base_bytes!r}")


class Step(NamedTuple):
    """One action of a schedule as `walk` sees it.

    Attributes
    ----------
    index : int
        Position of the action in the schedule.
    action : Action
        The action.
    reads : int or None
        The boundary whose state the action reads (None for `Free`).
    producer : int or None
        Index of the action that stored or produced that state; None for the initial state, for
        a `Free`, and where the walk does not follow the stored states (no checks, no memory).
    stores : sequence of int
        The boundaries whose states the action stores (an `Advance`'s ``save``; empty otherwise).
    stored_states : int
        Stored states held after the action (the initial state counts, the working state not).
    forward_evaluations : int
        Block forward evaluations the action makes.
    evaluated_steps : int
        Time steps those evaluations cover (blocks, where the walk was given no boundary steps).
    peak_bytes : int or float
        Peak memory while the action runs (NOTE [ Memory model ]); 0 without a memory model.
    bytes_after : int or float
        Memory held after the action; 0 without a memory model.
    """

    index: int
    action: Action
    reads: int | None
    producer: int | None
    stores: Sequence[int]
    stored_states: int
    forward_evaluations: int
    evaluated_steps: int
    peak_bytes: int | float
    bytes_after: int | float


class _Walk:
    """The state of one walk: stored states, the working state, the memory; one handler per action."""

    def __init__(
        self, n: int, memory: MemoryModel | None, boundary_step: Callable[[int], int] | None, check: bool
    ) -> None:
        self.n = n
        self.check = check
        self.track = check or memory is not None  # follow which boundaries are stored
        self.stored: dict[int, int | None] = {0: None}  # boundary -> the action that stored it
        self.count = 1
        self.working: int | None = None  # boundary of the working state, if any
        self.working_by: int | None = None  # the action that produced it
        self.next_block = n - 1  # the block the next ForwardBackward must backpropagate
        self.step_at = boundary_step if boundary_step is not None else (lambda b: b)
        self.memory = memory
        if memory is not None:
            self.uniform = memory.state_bytes if _is_number(memory.state_bytes) else None
            self.size = _per_block(memory.state_bytes, "state_bytes")
            self.activations = _per_block(memory.block_bytes, "block_bytes")
            self.base = memory.base_bytes
            self.stored_bytes = self.size(0)
            self.delta = 0  # bytes of the gradient held for block next_block

    # -- messages

    def fail(self, index: int, action: Any, what: str) -> ScheduleError:
        return ScheduleError(f"vlrnn_planner: action #{index} {action!r}: {what}")

    def holding(self) -> str:
        where = f"the working state is at {self.working}" if self.working is not None else "no working state"
        shown = sorted(self.stored)
        listing = ", ".join(map(str, shown[:8])) + (", ..." if len(shown) > 8 else "")
        return f"stored: {{{listing}}}; {where}"

    def reads(self, index: int, action: Any, boundary: int, hint: str) -> int | None:
        """The producer of the state at ``boundary``, which must be at hand."""
        if self.working == boundary:
            return self.working_by
        if boundary in self.stored:
            return self.stored[boundary]
        if self.check:
            raise self.fail(
                index,
                action,
                f"reads the state at boundary {boundary}, which is neither stored nor the working "
                f"state ({self.holding()}); {hint}",
            )
        return None

    # -- handlers

    def advance(self, index: int, action: Advance) -> Step:
        start, stop, save = action.start, action.stop, action.save
        if self.check and not 0 <= start < stop <= self.n:
            raise self.fail(
                index,
                action,
                f"needs 0 <= start < stop <= {self.n} (the number of blocks); "
                "advance over at least one block inside the sequence",
            )
        producer = self.reads(index, action, start, "store it earlier or advance from a stored state")
        start_stored = self.track and start in self.stored
        if self.track:
            self.store(index, action, save)
        self.count += len(save)
        peak = after = 0
        if self.memory is not None:
            peak, after = self.advance_bytes(start, stop, save, start_stored)
        self.working, self.working_by = stop, index
        steps = self.step_at(stop) - self.step_at(start)
        return Step(index, action, start, producer, save, self.count, stop - start, steps, peak, after)

    def store(self, index: int, action: Advance, save: Sequence[int]) -> None:
        stored, start, stop = self.stored, action.start, action.stop
        for boundary in save:
            if self.check:
                if not start < boundary <= stop:
                    raise self.fail(
                        index,
                        action,
                        f"saves boundary {boundary}, outside ({start}, {stop}]; an advance can only "
                        "store the states it computes",
                    )
                if boundary in stored:
                    raise self.fail(
                        index,
                        action,
                        f"stores boundary {boundary}, which is already stored; free it first or "
                        "drop it from save",
                    )
            stored[boundary] = index

    def advance_bytes(self, start: int, stop: int, save: Sequence[int], start_stored: bool) -> tuple[float, float]:
        """Peak and after of an advance: the working state moves, saved states accumulate."""
        held = self.base + self.delta
        peak = held + self.stored_bytes + (0 if start_stored else self.size(start))
        if self.uniform is not None:  # the memory only grows along the advance (NOTE)
            self.stored_bytes += self.uniform * len(save)
            after = held + self.stored_bytes + (0 if stop in save else self.uniform)
            return max(peak, after), after
        saved = set(save)
        after = peak
        for boundary in range(start + 1, stop + 1):
            if boundary in saved:
                self.stored_bytes += self.size(boundary)
                after = held + self.stored_bytes
            else:
                after = held + self.stored_bytes + self.size(boundary)
            peak = max(peak, after)
        return peak, after

    def forward_backward(self, index: int, action: ForwardBackward) -> Step:
        block = action.block
        if self.check:
            self.check_order(index, action)
        producer = self.reads(index, action, block, "advance to it or store it first")
        peak = after = 0
        if self.memory is not None:
            # The block's input state is held throughout; the gradient arriving at its output
            # (with the activations) gives way, at the end of the traversal, to the gradient at
            # its input: the action's peak is the larger of the two moments.
            uniform = self.uniform
            size_in = uniform if uniform is not None else self.size(block)
            size_out = uniform if uniform is not None else self.size(block + 1)
            held = self.base + self.stored_bytes + (0 if block in self.stored else size_in)
            self.delta = size_in if block > 0 else 0
            peak = held + max(self.activations(block) + size_out, self.delta)
            after = self.base + self.stored_bytes + self.delta
        self.next_block -= 1
        self.working = self.working_by = None
        steps = self.step_at(block + 1) - self.step_at(block)
        return Step(index, action, block, producer, (), self.count, 1, steps, peak, after)

    def check_order(self, index: int, action: ForwardBackward) -> None:
        block, expected = action.block, self.next_block
        if not 0 <= block < self.n:
            raise self.fail(index, action, f"block {block} is outside 0..{self.n - 1}")
        if block > expected:
            raise self.fail(index, action, f"block {block} was already backpropagated; each block is backpropagated once")
        if block != expected:
            raise self.fail(
                index,
                action,
                f"blocks are backpropagated last to first: ForwardBackward({expected}) "
                f"must come next, not ForwardBackward({block})",
            )

    def free(self, index: int, action: Free) -> Step:
        boundary = action.boundary
        if self.check and boundary not in self.stored:
            if not 0 <= boundary <= self.n:
                raise self.fail(index, action, f"boundary {boundary} is outside 0..{self.n}")
            raise self.fail(
                index,
                action,
                f"frees boundary {boundary}, which is not stored ({self.holding()}); "
                "free each stored state once, after its last use",
            )
        peak = after = 0
        if self.memory is not None:
            peak = self.base + self.stored_bytes + self.delta + self.loose_working()
        if self.track:
            del self.stored[boundary]
        self.count -= 1
        if self.memory is not None:
            self.stored_bytes -= self.uniform if self.uniform is not None else self.size(boundary)
            after = self.base + self.stored_bytes + self.delta + self.loose_working()
        return Step(index, action, None, None, (), self.count, 0, 0, peak, after)

    def loose_working(self) -> float:
        """Bytes of the working state where it is not also a stored state."""
        working = self.working
        return self.size(working) if working is not None and working not in self.stored else 0

    def finish(self, actions: int) -> None:
        """The end of the schedule: every block backpropagated, no state left stored."""
        if self.next_block >= 0:
            raise ScheduleError(
                f"vlrnn_planner: the schedule ended after {actions} actions with blocks "
                f"{self.next_block}..0 not backpropagated; ForwardBackward({self.next_block}) must come next"
            )
        if self.stored:
            shown = sorted(self.stored)
            raise ScheduleError(
                f"vlrnn_planner: the schedule ended after {actions} actions with boundaries "
                f"{shown[:8]}{' ...' if len(shown) > 8 else ''} still stored; free each stored state "
                "after its last use"
            )


def walk(
    actions: Iterable[Action],
    n_blocks: int,
    *,
    memory: MemoryModel | None = None,
    boundary_step: Callable[[int], int] | None = None,
    check: bool = True,
) -> Iterator[Step]:
    """Walk a schedule's actions lazily, one `Step` per action.

    Parameters
    ----------
    actions : iterable of Action
        The schedule, walked once (a generator is fine).
    n_blocks : int
        Number of blocks ``n``; boundaries are ``0 .. n``.
    memory : MemoryModel, optional
        What to count in bytes (NOTE [ Memory model ]); without it the steps' bytes are 0.
    boundary_step : callable, optional
        ``boundary_step(b)``: the time step at boundary ``b`` (``Schedule.boundary_step``), from
        which the steps' ``evaluated_steps`` are counted; without it they count blocks.
    check : bool, default True
        Check every invariant (see the module's documentation). Without checks (the planner's
        walks of schedules its strategies generate), and without a memory model, the walk
        follows only how many states are stored, in ``O(1)`` per action whatever the saves.

    Yields
    ------
    Step
        After each action.

    Raises
    ------
    ScheduleError
        With ``check``: at the first action that breaks an invariant, naming its index; or at
        the end, if blocks were not backpropagated or states not freed.
    InvalidTypeError
        For an object that is not an action.
    InvalidInputError
        For ``n_blocks`` below 1.

    Examples
    --------
    >>> from vlrnn_planner.strategies import blocks
    >>> for s in walk(blocks(3), 3, boundary_step=lambda b: min(4 * b, 10)):
    ...     print(s.action, s.reads, s.producer, s.stored_states, s.evaluated_steps)
    Advance(0, 2, save=(1,)) 0 None 2 8
    ForwardBackward(2) 2 0 2 2
    ForwardBackward(1) 1 0 2 4
    Free(1) None None 1 0
    ForwardBackward(0) 0 None 1 4
    Free(0) None None 0 0
    """
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise InvalidInputError(f"vlrnn_planner: n_blocks must be an int of at least 1, got {n_blocks!r}")
    state = _Walk(n_blocks, memory, boundary_step, check)
    handlers = {Advance: state.advance, ForwardBackward: state.forward_backward, Free: state.free}
    index = -1
    for index, action in enumerate(actions):
        handler = handlers.get(type(action))
        if handler is None:
            raise InvalidTypeError(
                f"vlrnn_planner: action #{index} is {action!r} of type {type(action).__name__}, not an "
                "Advance, ForwardBackward or Free"
            )
        yield handler(index, action)
    if check:
        state.finish(index + 1)


def walk_schedule(schedule: Any, *, memory: MemoryModel | None = None, check: bool = True) -> Iterator[Step]:
    """`walk` the actions of a `vlrnn_planner.Schedule`, counting its own time steps.

    Parameters
    ----------
    schedule : Schedule
        Walked over its ``num_blocks`` blocks, with steps from ``schedule.boundary_step``.
    memory : MemoryModel, optional
        What to count in bytes; `predicted_memory` gives the one behind its prediction.
    check : bool, default True
        Check every invariant.

    Yields
    ------
    Step
        After each action.

    Raises
    ------
    ScheduleError
        As `walk`.

    Examples
    --------
    >>> from vlrnn_planner import Schedule
    >>> s = Schedule("blocks", seq_len=10, block_length=1, boundaries=(0, 2, 5, 10))
    >>> sum(step.evaluated_steps for step in walk_schedule(s))
    15
    """
    return walk(schedule.actions, schedule.num_blocks, memory=memory, boundary_step=schedule.boundary_step, check=check)


# ---------------------------------------------------------------------------------------------
# Totals
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Simulation:
    """What walking a schedule costs.

    Attributes
    ----------
    forward_evaluations : int
        Blocks run by every `Advance` plus one per `ForwardBackward`.
    max_stored_states : int
        Most states stored at once, the initial state included and the working state not.
    peak_bytes : int or float or None
        Peak memory under NOTE [ Memory model ]; None when neither ``state_bytes`` nor
        ``block_bytes`` was given.
    seconds : float or None
        Sum of ``advance_seconds`` over advanced blocks and ``fb_seconds`` over backpropagated
        blocks; None when neither was given.
    num_actions : int
        Number of actions walked.
    """

    forward_evaluations: int
    max_stored_states: int
    peak_bytes: int | float | None
    seconds: float | None
    num_actions: int


class MemoryPoint(NamedTuple):
    """One step of `memory_trace`: an action, the peak while it ran, the memory after it."""

    action: Action
    peak_bytes: int | float
    bytes_after: int | float


def _memory(state_bytes: PerBlock, block_bytes: PerBlock, base_bytes: int | float) -> MemoryModel | None:
    if state_bytes is None and block_bytes is None:
        return None
    return MemoryModel(
        state_bytes=0 if state_bytes is None else state_bytes,
        block_bytes=0 if block_bytes is None else block_bytes,
        base_bytes=base_bytes,
    )


def _advance_seconds(seconds: PerBlock, start: int, stop: int) -> float:
    if callable(seconds):
        return sum(seconds(b) for b in range(start, stop))
    return (stop - start) * seconds


def simulate(
    actions: Iterable[Action],
    n_blocks: int,
    *,
    state_bytes: PerBlock = None,
    block_bytes: PerBlock = None,
    base_bytes: int | float = 0,
    advance_seconds: PerBlock = None,
    fb_seconds: PerBlock = None,
) -> Simulation:
    """Walk a schedule, check its invariants, and count what it costs.

    Parameters
    ----------
    actions : iterable of Action
        The schedule, walked once (a generator is fine).
    n_blocks : int
        Number of blocks ``n``; boundaries are ``0 .. n``.
    state_bytes : callable or number, optional
        ``state_bytes(b)``: bytes of the state at boundary ``b`` (``0 <= b <= n``).
    block_bytes : callable or number, optional
        ``block_bytes(b)``: activation bytes while block ``b`` runs with grad.
    base_bytes : int or float
        Memory held throughout (parameters, gradients, inputs).
    advance_seconds, fb_seconds : callable or number, optional
        Seconds to run block ``b`` without grad, and to run and backpropagate it.

    Returns
    -------
    Simulation
        Forward evaluations, most stored states, peak bytes and seconds (None when their
        callbacks are missing; a missing one of a pair counts as zero), number of actions.

    Raises
    ------
    ScheduleError
        At the first action that breaks an invariant (see the module docstring), naming the
        action's index; or at the end, if blocks were not backpropagated or states not freed.
    InvalidTypeError
        For an object that is not an action, or a size or time that is neither a number nor
        callable.

    Examples
    --------
    >>> from vlrnn_planner.strategies import binomial
    >>> sim = simulate(binomial(4, 2), 4, state_bytes=10, block_bytes=100, advance_seconds=1.0,
    ...                fb_seconds=3.0)
    >>> sim.forward_evaluations, sim.max_stored_states, sim.peak_bytes, sim.seconds
    (8, 2, 140, 16.0)
    >>> from vlrnn_planner.actions import ForwardBackward, Free
    >>> simulate([ForwardBackward(0), Free(0)], 2)
    Traceback (most recent call last):
    ...
    vlrnn_planner.errors.ScheduleError: vlrnn_planner: action #0 ForwardBackward(0): blocks are backpropagated last to first: ForwardBackward(1) must come next, not ForwardBackward(0)
    """
    memory = _memory(state_bytes, block_bytes, base_bytes)
    _per_block(advance_seconds, "advance_seconds")
    fb_time = _per_block(fb_seconds, "fb_seconds")
    evaluations = count = 0
    most = 1
    peak = 0
    if memory is not None:  # before the first action: the initial state
        peak = base_bytes + _per_block(memory.state_bytes, "state_bytes")(0)
    seconds = 0.0
    for step in walk(actions, n_blocks, memory=memory):
        count += 1
        evaluations += step.forward_evaluations
        action = step.action
        if type(action) is Advance and advance_seconds is not None:
            seconds += _advance_seconds(advance_seconds, action.start, action.stop)
        elif type(action) is ForwardBackward and fb_time is not None:
            seconds += fb_time(action.block)
        most = max(most, step.stored_states)
        peak = max(peak, step.peak_bytes)
    timed = advance_seconds is not None or fb_seconds is not None
    return Simulation(
        forward_evaluations=evaluations,
        max_stored_states=most,
        peak_bytes=peak if memory is not None else None,
        seconds=seconds if timed else None,
        num_actions=count,
    )


def simulate_schedule(
    schedule: Any,
    *,
    state_bytes: PerBlock = None,
    block_bytes: PerBlock = None,
    base_bytes: int | float = 0,
    advance_seconds: PerBlock = None,
    fb_seconds: PerBlock = None,
) -> Simulation:
    """`simulate` the actions of a `vlrnn_planner.Schedule` over its ``num_blocks`` blocks.

    Parameters
    ----------
    schedule : Schedule
        The schedule to walk.
    state_bytes, block_bytes, base_bytes, advance_seconds, fb_seconds
        As for `simulate`.

    Returns
    -------
    Simulation

    Raises
    ------
    ScheduleError
        As `simulate`.

    Examples
    --------
    >>> from vlrnn_planner import fixed_plan
    >>> sched = fixed_plan(block_length=10, checkpoints=3).schedule(seq_len=100)
    >>> simulate_schedule(sched).forward_evaluations
    25
    """
    return simulate(
        schedule.actions,
        schedule.num_blocks,
        state_bytes=state_bytes,
        block_bytes=block_bytes,
        base_bytes=base_bytes,
        advance_seconds=advance_seconds,
        fb_seconds=fb_seconds,
    )


def memory_trace(
    actions: Iterable[Action],
    n_blocks: int,
    *,
    state_bytes: PerBlock,
    block_bytes: PerBlock = None,
    base_bytes: int | float = 0,
) -> Iterator[MemoryPoint]:
    """The memory action by action, for plotting (NOTE [ Memory model ]).

    Parameters
    ----------
    actions : iterable of Action
        The schedule, walked once.
    n_blocks : int
        Number of blocks.
    state_bytes, block_bytes, base_bytes
        As for `simulate`; ``state_bytes`` is required.

    Yields
    ------
    MemoryPoint
        ``(action, peak_bytes, bytes_after)`` per action, lazily.

    Raises
    ------
    InvalidInputError
        Without ``state_bytes``.
    ScheduleError
        As `simulate`.

    Examples
    --------
    >>> from vlrnn_planner.strategies import blocks
    >>> for point in memory_trace(blocks(2), 2, state_bytes=10, block_bytes=100):
    ...     print(point.action, point.peak_bytes, point.bytes_after)
    Advance(0, 1, save=()) 20 20
    ForwardBackward(1) 130 20
    ForwardBackward(0) 120 10
    Free(0) 10 0
    """
    if state_bytes is None:
        raise InvalidInputError("vlrnn_planner: memory_trace needs state_bytes (a function or a number)")
    memory = _memory(state_bytes, block_bytes, base_bytes)
    for step in walk(actions, n_blocks, memory=memory):
        yield MemoryPoint(step.action, step.peak_bytes, step.bytes_after)


# ---------------------------------------------------------------------------------------------
# A schedule's statistics
# ---------------------------------------------------------------------------------------------

def predicted_memory(schedule: Any) -> MemoryModel | None:
    """The memory model behind a schedule's prediction: one state size, one block size.

    Read off ``schedule.prediction`` (`vlrnn_planner.schedule.Prediction`): its bytes per state,
    per block and held throughout. A packed batch that shrinks is counted at its largest state
    and block.

    Parameters
    ----------
    schedule : Schedule
        A schedule, with or without a prediction.

    Returns
    -------
    MemoryModel or None
        None when the schedule carries no prediction.

    Examples
    --------
    >>> from vlrnn_planner import Prediction, Schedule
    >>> s = Schedule("blocks", seq_len=30, block_length=10,
    ...              prediction=Prediction(peak_bytes=1140, seconds=1.0, state_bytes=10,
    ...                                    block_bytes=100, fixed_bytes=1000))
    >>> predicted_memory(s)
    MemoryModel(state_bytes=10.0, block_bytes=100, base_bytes=1000)
    """
    p = getattr(schedule, "prediction", None)
    if p is None:
        return None
    return MemoryModel(state_bytes=p.state_bytes, block_bytes=p.block_bytes, base_bytes=p.fixed_bytes)


@dataclass(frozen=True, slots=True)
class ScheduleStatistics:
    """What a schedule's actions add up to.

    Attributes
    ----------
    actions : int
        Number of actions.
    forward_evaluations : int
        Block forward evaluations: blocks advanced without grad plus one per `ForwardBackward`.
    evaluated_steps : int
        Time steps evaluated by those block evaluations (each block counts its own steps).
    backward_blocks : int
        Blocks backpropagated (`ForwardBackward` actions).
    most_stored_states : int
        Most stored states held at once (the initial state included, the working state not).
    seq_len : int
        Time steps of the sequence.
    simulated_peak_bytes : int or None
        The peak of the simulator's memory model fed from the schedule's prediction
        (`predicted_memory`); None where the schedule carries no prediction.
    """

    actions: int
    forward_evaluations: int
    evaluated_steps: int
    backward_blocks: int
    most_stored_states: int
    seq_len: int
    simulated_peak_bytes: int | None = None

    @property
    def evaluations_per_step(self) -> float:
        """Forward evaluations per time step: 1 for plain BPTT, about 2 for one level of blocks."""
        return self.evaluated_steps / self.seq_len


def schedule_statistics(schedule: Any) -> ScheduleStatistics:
    """A schedule's statistics: in closed form for equal blocks, else from one walk.

    For blocks of ``K`` steps (no ``boundaries``) and the strategies' own splits (no ``splits``)
    every statistic has a closed form, so that a schedule of ``10**15`` steps answers at once:
    ``2 n`` actions (NOTE [ Two actions per block ]), forward evaluations ``E`` and the most
    stored states ``m`` from `vlrnn_planner.strategies`, ``(E - n) K + T`` evaluated steps (the
    last block, the only short one, is never advanced), and the peak of NOTE [ Peak of uniform
    states ]. Otherwise the schedule is walked once, ``O(actions)``.

    Parameters
    ----------
    schedule : Schedule
        The schedule.

    Returns
    -------
    ScheduleStatistics

    Raises
    ------
    ScheduleError
        If a walked schedule breaks an invariant.

    Examples
    --------
    >>> from vlrnn_planner import Schedule, fixed_plan
    >>> stats = schedule_statistics(fixed_plan(block_length=10).schedule(seq_len=35))
    >>> stats.actions, stats.forward_evaluations, stats.evaluated_steps, stats.most_stored_states
    (8, 7, 65, 3)
    >>> schedule_statistics(Schedule("binomial", seq_len=10**15, block_length=1, checkpoints=3)).actions
    2000000000000000
    """
    memory = predicted_memory(schedule)
    if schedule.boundaries or schedule.splits:
        return _walked_statistics(schedule, memory)
    s = schedule
    n = s.num_blocks
    evaluations = strategies.forward_evaluations(s.strategy, n, checkpoints=s.checkpoints, levels=s.levels)
    most = strategies.max_stored_states(s.strategy, n, checkpoints=s.checkpoints, levels=s.levels)
    steps = (evaluations - n) * s.block_length + s.seq_len
    peak = None
    if memory is not None:
        held = most + (2 if n >= 2 else 1)  # NOTE [ Peak of uniform states ]
        peak = memory.base_bytes + memory.block_bytes + held * memory.state_bytes
    return _statistics(2 * n, evaluations, steps, n, most, s.seq_len, peak)


def _walked_statistics(schedule: Any, memory: MemoryModel | None) -> ScheduleStatistics:
    actions = evaluations = steps = backward = 0
    most = 1
    peak = None if memory is None else 0
    for step in walk_schedule(schedule, memory=memory):
        actions += 1
        evaluations += step.forward_evaluations
        steps += step.evaluated_steps
        backward += type(step.action) is ForwardBackward
        most = max(most, step.stored_states)
        if memory is not None:
            peak = max(peak, step.peak_bytes)
    return _statistics(actions, evaluations, steps, backward, most, schedule.seq_len, peak)


def _statistics(
    actions: int, evaluations: int, steps: int, backward: int, most: int, seq_len: int, peak: float | None
) -> ScheduleStatistics:
    rounded = None if peak is None else math.ceil(peak)
    return ScheduleStatistics(actions, evaluations, steps, backward, most, seq_len, rounded)
