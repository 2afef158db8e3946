"""The reference simulator: walk a schedule's actions, check its invariants, count its cost.

`simulate` interprets the same actions as a backend's executor, without running anything: it
tracks which boundary states are stored and where the working state is, raises `ScheduleError`
at the first action that breaks an invariant, and counts forward evaluations, stored states,
bytes and seconds from per-block callbacks. It is the ground truth that the strategies' closed
forms (`vlrnn_planner.strategies.forward_evaluations`) and the planner's cost model are tested
against.

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
    are counted where they occur. A no-grad block's own transient memory is not modelled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .actions import Action, Advance, ForwardBackward, Free
from .errors import InvalidInputError, InvalidTypeError, ScheduleError

__all__ = ["Simulation", "MemoryPoint", "simulate", "simulate_schedule", "memory_trace"]

PerBlock = Callable[[int], float] | float | int | None
"""A per-block quantity: a function of the block (or boundary) index, or one number for all."""


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


def _per_block(value: PerBlock, name: str) -> Callable[[int], float] | None:
    if value is None or callable(value):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return lambda _index: value
    raise InvalidTypeError(
        f"vlrnn_planner: {name} must be a function of the block index or a number, got {value!r}"
    )


class _Step(NamedTuple):
    action: Action
    peak_bytes: int | float
    bytes_after: int | float
    stored: int


def _walk(
    actions: Iterable[Action],
    n_blocks: int,
    state_bytes: Callable[[int], float] | None,
    block_bytes: Callable[[int], float] | None,
    base_bytes: int | float,
) -> Iterator[_Step]:
    """Check every invariant while walking; yield the memory and stored count after each action.

    Bytes are only computed (block by block within advances) when a size callback is given.
    """
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise InvalidInputError(
            f"vlrnn_planner: n_blocks must be an int of at least 1, got {n_blocks!r}"
        )
    n = n_blocks
    track = state_bytes is not None or block_bytes is not None
    size = state_bytes if state_bytes is not None else (lambda _b: 0)
    activations = block_bytes if block_bytes is not None else (lambda _b: 0)

    stored: set[int] = {0}
    stored_bytes = size(0) if track else 0
    working: int | None = None  # boundary of the working state, if any
    next_block = n - 1  # the block the next ForwardBackward must backpropagate
    delta = 0  # bytes of the gradient held for block next_block

    def fail(index: int, action: Any, what: str) -> ScheduleError:
        return ScheduleError(f"vlrnn_planner: action #{index} {action!r}: {what}")

    def loose_working() -> float:
        """Bytes of the working state where it is not also a stored state."""
        return size(working) if working is not None and working not in stored else 0

    def at_hand(boundary: int) -> bool:
        return boundary in stored or working == boundary

    def held() -> str:
        where = f"the working state is at {working}" if working is not None else "no working state"
        shown = sorted(stored)
        listing = ", ".join(map(str, shown[:8])) + (", ..." if len(shown) > 8 else "")
        return f"stored: {{{listing}}}; {where}"

    index = -1
    for index, action in enumerate(actions):
        kind = type(action)
        if kind is Advance:
            start, stop, save = action.start, action.stop, action.save
            if not 0 <= start < stop <= n:
                raise fail(
                    index,
                    action,
                    f"needs 0 <= start < stop <= {n} (the number of blocks); "
                    "advance over at least one block inside the sequence",
                )
            if not at_hand(start):
                raise fail(
                    index,
                    action,
                    f"reads the state at boundary {start}, which is neither stored nor the working "
                    f"state ({held()}); store it earlier or advance from a stored state",
                )
            for boundary in save:
                if not start < boundary <= stop:
                    raise fail(
                        index,
                        action,
                        f"saves boundary {boundary}, outside ({start}, {stop}]; an advance can only "
                        "store the states it computes",
                    )
                if boundary in stored:
                    raise fail(
                        index,
                        action,
                        f"stores boundary {boundary}, which is already stored; free it first or "
                        "drop it from save",
                    )
                stored.add(boundary)
            peak = after = 0
            if track:
                # The working state moves block by block; saved states accumulate.
                peak = base_bytes + stored_bytes + delta + (0 if start in stored else size(start))
                saved = set(save)
                for boundary in range(start + 1, stop + 1):
                    if boundary in saved:
                        stored_bytes += size(boundary)
                        after = base_bytes + stored_bytes + delta
                    else:
                        after = base_bytes + stored_bytes + delta + size(boundary)
                    peak = max(peak, after)
            working = stop
        elif kind is ForwardBackward:
            block = action.block
            if not 0 <= block < n:
                raise fail(index, action, f"block {block} is outside 0..{n - 1}")
            if block > next_block:
                raise fail(
                    index,
                    action,
                    f"block {block} was already backpropagated; each block is backpropagated once",
                )
            if block != next_block:
                raise fail(
                    index,
                    action,
                    f"blocks are backpropagated last to first: ForwardBackward({next_block}) "
                    f"must come next, not ForwardBackward({block})",
                )
            if not at_hand(block):
                raise fail(
                    index,
                    action,
                    f"reads the state at boundary {block}, which is neither stored nor the working "
                    f"state ({held()}); advance to it or store it first",
                )
            peak = after = 0
            if track:
                # The block's input state is held throughout; the gradient arriving at its
                # output (with the activations) gives way, at the end of the traversal, to the
                # gradient at its input: the action's peak is the larger of the two moments.
                holding = base_bytes + stored_bytes + (0 if block in stored else size(block))
                delta = size(block) if block > 0 else 0
                peak = holding + max(activations(block) + size(block + 1), delta)
                after = base_bytes + stored_bytes + delta
            next_block -= 1
            working = None
        elif kind is Free:
            boundary = action.boundary
            if boundary not in stored:
                if not 0 <= boundary <= n:
                    raise fail(index, action, f"boundary {boundary} is outside 0..{n}")
                raise fail(
                    index,
                    action,
                    f"frees boundary {boundary}, which is not stored ({held()}); "
                    "free each stored state once, after its last use",
                )
            peak = after = 0
            if track:
                peak = base_bytes + stored_bytes + delta + loose_working()
            stored.remove(boundary)
            if track:
                stored_bytes -= size(boundary)
                after = base_bytes + stored_bytes + delta + loose_working()
        else:
            raise InvalidTypeError(
                f"vlrnn_planner: action #{index} is {action!r} of type {kind.__name__}, not an "
                "Advance, ForwardBackward or Free"
            )
        yield _Step(action, peak, after, len(stored))

    if next_block >= 0:
        raise ScheduleError(
            f"vlrnn_planner: the schedule ended after {index + 1} actions with blocks "
            f"{next_block}..0 not backpropagated; ForwardBackward({next_block}) must come next"
        )
    if stored:
        shown = sorted(stored)
        raise ScheduleError(
            f"vlrnn_planner: the schedule ended after {index + 1} actions with boundaries "
            f"{shown[:8]}{' ...' if len(shown) > 8 else ''} still stored; free each stored state "
            "after its last use"
        )


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
        For an object that is not an action.

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
    size = _per_block(state_bytes, "state_bytes")
    activations = _per_block(block_bytes, "block_bytes")
    advance_time = _per_block(advance_seconds, "advance_seconds")
    fb_time = _per_block(fb_seconds, "fb_seconds")
    timed = advance_time is not None or fb_time is not None

    evaluations = 0
    max_stored = 1
    peak = base_bytes + (size(0) if size is not None else 0)
    seconds = 0.0
    count = 0
    for step in _walk(actions, n_blocks, size, activations, base_bytes):
        count += 1
        action = step.action
        if type(action) is Advance:
            evaluations += action.stop - action.start
            if advance_time is not None:
                seconds += sum(advance_time(b) for b in range(action.start, action.stop))
        elif type(action) is ForwardBackward:
            evaluations += 1
            if fb_time is not None:
                seconds += fb_time(action.block)
        if step.stored > max_stored:
            max_stored = step.stored
        if step.peak_bytes > peak:
            peak = step.peak_bytes
    tracked = size is not None or activations is not None
    return Simulation(
        forward_evaluations=evaluations,
        max_stored_states=max_stored,
        peak_bytes=peak if tracked else None,
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

    Yields one `MemoryPoint` ``(action, peak_bytes, bytes_after)`` per action, lazily; checks the
    invariants like `simulate`.

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
    size = _per_block(state_bytes, "state_bytes")
    if size is None:
        raise InvalidInputError("vlrnn_planner: memory_trace needs state_bytes (a function or a number)")
    activations = _per_block(block_bytes, "block_bytes")
    for step in _walk(actions, n_blocks, size, activations, base_bytes):
        yield MemoryPoint(step.action, step.peak_bytes, step.bytes_after)
