"""`Plan` (a policy that may not know the input shape yet) and `Schedule` (one concrete run).

A `Plan` says how to choose a schedule: a fixed block length (`fixed_plan`), or a memory budget
with a measured cell profile (`auto_plan`). `Plan.schedule(seq_len=..., batch_size=...)` turns it
into a `Schedule` for one input shape: strategy, block length, number of blocks, the predicted
peak memory and time where a profile is known, and the ordered actions, generated lazily.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import strategies
from .actions import Action
from .errors import InvalidInputError

__all__ = ["Plan", "Schedule", "Actions", "fixed_plan"]


def _positive_int(name: str, value: Any, *, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"vlrnn_planner: {name} must be an int, got {value!r}; {hint}")
    if value < 1:
        raise InvalidInputError(f"vlrnn_planner: {name} must be at least 1, got {value}; {hint}")
    return value


def _listing(values: Sequence[int], most: int = 8) -> str:
    shown = ", ".join(map(str, values[:most]))
    return shown + (", ..." if len(values) > most else "")


def _check_boundaries(boundaries: Any, seq_len: int) -> tuple[int, ...]:
    """``boundaries`` as a tuple of ints ``0 = b_0 < ... < b_n = seq_len``, or InvalidInputError."""
    hint = "give the start step of every block, then seq_len, increasing from 0"
    if isinstance(boundaries, (str, bytes)):
        raise InvalidInputError(f"vlrnn_planner: boundaries must be a sequence of ints, got {boundaries!r}; {hint}")
    try:
        bounds = tuple(boundaries)
    except TypeError:
        raise InvalidInputError(
            f"vlrnn_planner: boundaries must be a sequence of ints, got {boundaries!r}; {hint}"
        ) from None
    for b in bounds:
        if isinstance(b, bool) or not isinstance(b, int):
            raise InvalidInputError(
                f"vlrnn_planner: boundaries must hold ints, got {b!r} in {_listing(bounds)}; {hint}"
            )
    if len(bounds) < 2:
        raise InvalidInputError(
            f"vlrnn_planner: boundaries ({_listing(bounds)}) need at least a start and an end; {hint}"
        )
    if bounds[0] != 0:
        raise InvalidInputError(f"vlrnn_planner: boundaries must start at step 0, got {bounds[0]}; {hint}")
    if bounds[-1] != seq_len:
        raise InvalidInputError(
            f"vlrnn_planner: boundaries must end at seq_len={seq_len}, got {bounds[-1]}; {hint}"
        )
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if b <= a:
            raise InvalidInputError(
                f"vlrnn_planner: boundaries must increase, but entry {i + 1} ({b}) is not above "
                f"entry {i} ({a}); every block needs at least one step"
            )
    return bounds


class Actions(Sequence):
    """The ordered actions of a schedule: re-iterable, generated afresh on each pass.

    Indexing and `len` walk the generator (O(number of actions)); iterate instead where you can.
    """

    __slots__ = ("_schedule", "_len")

    def __init__(self, schedule: Schedule) -> None:
        self._schedule = schedule
        self._len: int | None = None

    def __iter__(self) -> Iterator[Action]:
        return strategies.generate(self._schedule)

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(itertools.islice(self, *index.indices(len(self))))
        if index < 0:
            index += len(self)
        for i, action in enumerate(self):
            if i == index:
                return action
        raise IndexError("schedule action index out of range")

    def __repr__(self) -> str:
        head = list(itertools.islice(self, 6))
        more = ", ..." if len(head) == 6 else ""
        return f"Actions([{', '.join(map(repr, head))}{more}])"


@dataclass(frozen=True)
class Schedule:
    """A concrete schedule for one input shape.

    Attributes
    ----------
    strategy : str
        ``"store_all"`` (plain BPTT), ``"blocks"``, ``"multilevel"`` or ``"binomial"``.
    seq_len : int
        Number of time steps ``T``.
    block_length : int
        Steps per block ``K``; the last block may be shorter. With ``boundaries``, the longest
        block (set from them).
    checkpoints : int or None
        Most stored states (initial state included) for ``"binomial"``.
    levels : tuple of int
        For ``"multilevel"``: the segment sizes in blocks, outermost first.
    batch_size : int or None
        The batch size the schedule was planned for, if known.
    predicted_peak_bytes, predicted_seconds : int or float or None
        The cost model's prediction where a profile was known.
    memory_parts : tuple of (str, int)
        What the predicted peak is made of.
    boundaries : tuple of int
        Unequal blocks: the start step of every block, then ``seq_len``
        (``0 = b_0 < b_1 < ... < b_n = seq_len``); empty for blocks of ``block_length`` steps.
        The planner cuts a shrinking (packed) batch so that blocks hold about equal sample-steps
        (see NOTE [ Per-block costs of a shrinking batch ] in `vlrnn_planner.planner`).
    splits : tuple of int
        For ``"binomial"`` over unequal blocks: the split points of the schedule of least
        recomputation time (`vlrnn_planner.strategies.chain_splits`, walked by
        `vlrnn_planner.strategies.binomial_splits`), ``num_blocks - 1`` of them; empty for the
        equal-cost binomial schedule.

    Examples
    --------
    >>> s = Schedule("blocks", seq_len=10, block_length=1, boundaries=(0, 2, 5, 10))
    >>> s.num_blocks, s.block_length, s.block_steps(1), s.block_steps(2)
    (3, 5, (2, 5), (5, 10))
    """

    strategy: str
    seq_len: int
    block_length: int
    checkpoints: int | None = None
    levels: tuple[int, ...] = ()
    batch_size: int | None = None
    predicted_peak_bytes: int | None = None
    predicted_seconds: float | None = None
    baseline_seconds: float | None = None
    memory_parts: tuple[tuple[str, int], ...] = ()
    device: str | None = None
    budget_bytes: int | None = None
    boundaries: tuple[int, ...] = ()
    splits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _positive_int("seq_len", self.seq_len, hint="pass the number of time steps")
        _positive_int("block_length", self.block_length, hint="use a block length of 1 or more steps")
        if self.boundaries:
            bounds = _check_boundaries(self.boundaries, self.seq_len)
            object.__setattr__(self, "boundaries", bounds)
            longest = max(b - a for a, b in zip(bounds, bounds[1:]))
            if self.block_length != longest:
                object.__setattr__(self, "block_length", longest)
        elif not isinstance(self.boundaries, tuple):
            object.__setattr__(self, "boundaries", ())
        if self.strategy not in strategies.STRATEGIES:
            raise InvalidInputError(
                f"vlrnn_planner: unknown strategy {self.strategy!r}; "
                f"choose one of {', '.join(strategies.STRATEGIES)}"
            )
        if self.strategy == "store_all":
            if len(self.boundaries) > 2:
                raise InvalidInputError(
                    f"vlrnn_planner: store_all is one block, but boundaries={self.boundaries!r} "
                    f"cut {len(self.boundaries) - 1} blocks; use strategy 'blocks' or drop boundaries"
                )
            object.__setattr__(self, "boundaries", ())
            if self.block_length != self.seq_len:
                object.__setattr__(self, "block_length", self.seq_len)
        if not isinstance(self.levels, tuple):
            object.__setattr__(self, "levels", tuple(self.levels))
        if isinstance(self.splits, (str, bytes)) or self.splits:
            if self.strategy != "binomial":
                raise InvalidInputError(
                    f"vlrnn_planner: splits are for the binomial strategy, not {self.strategy!r}; "
                    "drop splits or use strategy 'binomial'"
                )
            if self.checkpoints is None:
                raise InvalidInputError(
                    "vlrnn_planner: splits need checkpoints=c, the most stored states they were "
                    "computed for"
                )
            splits = strategies.check_splits(self.num_blocks, self.checkpoints, self.splits)
            object.__setattr__(self, "splits", splits)
        elif not isinstance(self.splits, tuple):
            object.__setattr__(self, "splits", ())
        if not isinstance(self.memory_parts, tuple):
            object.__setattr__(self, "memory_parts", tuple(tuple(p) for p in self.memory_parts))

    @property
    def num_blocks(self) -> int:
        """Number of blocks: ``ceil(T / K)``, or ``len(boundaries) - 1`` for unequal blocks."""
        if self.boundaries:
            return len(self.boundaries) - 1
        return math.ceil(self.seq_len / self.block_length)

    def block_steps(self, block: int) -> tuple[int, int]:
        """The time steps ``[start, stop)`` of block ``block``."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"vlrnn_planner: block {block} outside 0..{self.num_blocks - 1}")
        if self.boundaries:
            return self.boundaries[block], self.boundaries[block + 1]
        start = block * self.block_length
        return start, min(start + self.block_length, self.seq_len)

    def boundary_step(self, boundary: int) -> int:
        """The time step at boundary ``boundary`` (``0 <= boundary <= num_blocks``): where block
        ``boundary`` starts, or ``seq_len`` at the last boundary.

        Examples
        --------
        >>> Schedule("blocks", seq_len=10, block_length=4).boundary_step(3)
        10
        """
        if self.boundaries:
            return self.boundaries[boundary]
        return min(boundary * self.block_length, self.seq_len)

    @property
    def actions(self) -> Actions:
        """The ordered actions, generated lazily on each iteration."""
        return Actions(self)

    # Export lives in vlrnn_planner.export; these methods are the public entry points.
    def to_json(self, **kwargs: Any) -> str:
        """This schedule as JSON; `Schedule.from_json` gives back an equal object."""
        from .export import schedule_to_json

        return schedule_to_json(self, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """The schedule written by `Schedule.to_json`."""
        from .export import schedule_from_json

        return schedule_from_json(text)

    def graph(self):
        """A `networkx.DiGraph`: one node per action, edges for order and for state reads."""
        from .export import schedule_graph

        return schedule_graph(self)

    def to_dot(self) -> str:
        """The graph of `graph` in Graphviz DOT."""
        from .export import schedule_to_dot

        return schedule_to_dot(self)

    def __str__(self) -> str:
        from .cost import describe_schedule

        text = describe_schedule(self)
        if self.boundaries:
            lengths = [b - a for a, b in zip(self.boundaries, self.boundaries[1:])]
            head, _, rest = text.partition("\n")
            line = (
                f"  unequal blocks: {min(lengths)} to {max(lengths)} steps "
                f"(K above is the longest), starting at steps {_listing(self.boundaries[:-1])}"
            )
            text = head + "\n" + line + ("\n" + rest if rest else "")
        return text


@dataclass(frozen=True)
class Plan:
    """How to choose a schedule; `schedule` resolves it for one input shape.

    Build one with `fixed_plan` or `vlrnn_planner.auto_plan`.
    """

    block_length: int | None = None
    checkpoints: int | None = None
    strategy: str | None = None
    budget_bytes: int | None = None
    profile: Any = None
    budget_spec: str | None = None
    inputs_on_host: bool = False
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def schedule(
        self,
        seq_len: int,
        batch_size: int | None = None,
        *,
        batch_sizes: Sequence[int] | None = None,
    ) -> Schedule:
        """The concrete `Schedule` for a sequence of ``seq_len`` steps and a batch size.

        Parameters
        ----------
        seq_len : int
            Number of time steps.
        batch_size : int, optional
            Batch size (needed for memory predictions).
        batch_sizes : sequence of int, optional
            Batch size at each time step, for batches that shrink (packed sequences).

        Examples
        --------
        >>> fixed_plan(block_length=4).schedule(seq_len=10).num_blocks
        3
        """
        _positive_int("seq_len", seq_len, hint="pass the number of time steps")
        if batch_size is not None:
            _positive_int("batch_size", batch_size, hint="pass the number of sequences in the batch")
        if self.budget_bytes is None:
            batch_sizes = None  # a fixed plan does not depend on how the batch shrinks
        key = self._key(seq_len, batch_size, batch_sizes)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._resolve(seq_len, batch_size, batch_sizes)
            self._cache[key] = cached
        return cached

    @staticmethod
    def _key(seq_len: int, batch_size: int | None, batch_sizes) -> tuple:
        return (seq_len, batch_size, None if batch_sizes is None else tuple(batch_sizes))

    def replan_smaller(self, failed: Schedule, *, batch_sizes: Sequence[int] | None = None) -> Schedule | None:
        """After ``failed`` ran out of memory: a schedule planned to 3/4 of its predicted peak,
        remembered for its shape from now on; None if nothing fits that or this plan has no budget.
        """
        if self.budget_bytes is None or failed.predicted_peak_bytes is None:
            return None
        smaller = replace(self, budget_bytes=failed.predicted_peak_bytes * 3 // 4, _cache={})
        from .errors import InfeasibleBudgetError

        try:
            schedule = smaller.schedule(failed.seq_len, failed.batch_size, batch_sizes=batch_sizes)
        except InfeasibleBudgetError:
            return None
        self._cache[self._key(failed.seq_len, failed.batch_size, batch_sizes)] = schedule
        return schedule

    def _resolve(self, seq_len: int, batch_size: int | None, batch_sizes) -> Schedule:
        if self.budget_bytes is not None:
            from .planner import solve

            return solve(self, seq_len=seq_len, batch_size=batch_size, batch_sizes=batch_sizes)
        if self.block_length is None:
            raise InvalidInputError(
                "vlrnn_planner: this plan has neither a block length nor a budget; "
                "build it with fixed_plan(block_length=K) or auto_plan(cell, budget=...)"
            )
        k = min(self.block_length, seq_len)
        n = math.ceil(seq_len / k)
        strategy = self.strategy
        if strategy is None:
            if self.checkpoints is not None and self.checkpoints < n - 1:
                strategy = "binomial"
            else:
                strategy = "store_all" if n == 1 else "blocks"
        return Schedule(
            strategy=strategy,
            seq_len=seq_len,
            block_length=k,
            checkpoints=self.checkpoints if strategy == "binomial" else None,
            batch_size=batch_size,
        )

    def to_json(self, **kwargs: Any) -> str:
        """This plan (profile included) as JSON; `Plan.from_json` gives back an equal object."""
        from .export import plan_to_json

        return plan_to_json(self, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """The plan written by `Plan.to_json`."""
        from .export import plan_from_json

        return plan_from_json(text)

    def __str__(self) -> str:
        if self.budget_bytes is None:
            text = f"Plan: fixed blocks of {self.block_length} steps"
            if self.checkpoints is not None:
                text += f", at most {self.checkpoints} stored states"
            return text
        from .cost import describe_plan

        return describe_plan(self)


def fixed_plan(block_length: int, *, checkpoints: int | None = None) -> Plan:
    """A plan with a fixed block length, and no profiling.

    Parameters
    ----------
    block_length : int
        Steps per block, at least 1. A block longer than the sequence makes it one block.
    checkpoints : int, optional
        At most this many stored boundary states (the initial state included); the blocks are then
        reversed with the fewest recomputations (binomial checkpointing).

    Raises
    ------
    InvalidInputError
        If ``block_length`` or ``checkpoints`` is not a positive int.

    Examples
    --------
    >>> sched = fixed_plan(block_length=50).schedule(seq_len=120)
    >>> sched.num_blocks, sched.block_steps(2)
    (3, (100, 120))
    """
    _positive_int("block_length", block_length, hint="use a block length of 1 or more steps")
    if checkpoints is not None:
        _positive_int("checkpoints", checkpoints, hint="allow at least one stored state")
    return Plan(block_length=block_length, checkpoints=checkpoints)
