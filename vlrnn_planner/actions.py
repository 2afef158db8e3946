"""The vocabulary of a schedule: small immutable actions over block indices.

A sequence of ``T`` steps is cut into ``n`` blocks. Boundary ``b`` is the input state of block
``b``; boundary ``0`` is the initial state and boundary ``n`` the final state. Reading a schedule:

>>> from vlrnn_planner.actions import Advance, ForwardBackward, Free
>>> Advance(0, 3, save=(1, 2))
Advance(0, 3, save=(1, 2))

means "run blocks 0, 1 and 2 without grad from the state at boundary 0, store the states at
boundaries 1 and 2, and keep the state at boundary 3 at hand as the working state".
``ForwardBackward(3)`` then re-runs block 3 with grad from that working state and backpropagates
its loss together with the gradient arriving at its output state, in one autograd traversal.
``Free(2)`` drops the stored state at boundary 2.

Stored states include the initial state; the working state is not a stored state.

A long ``save`` (more than `LONG_SAVE` boundaries, such as the ``10**9 - 2`` states that the
blocks pattern stores over ``10**9`` blocks) is held as a `BoundaryRuns`, a few `range` runs,
so that generating the action costs nothing; it compares and hashes as the tuple of its
boundaries.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Action", "Advance", "ForwardBackward", "Free", "BoundaryRuns", "LONG_SAVE", "join_saves"]

LONG_SAVE = 4096
"""Saves of more boundaries than this are held as `BoundaryRuns` rather than tuples."""


class BoundaryRuns(Sequence):
    """Boundaries held as a few runs (ranges or tuples), for the long saves of long schedules.

    Indexing, ``len`` and ``in`` cost ``O(number of runs)``; iterating yields the boundaries one
    by one. Compares equal to any sequence of the same boundaries, and hashes as their tuple
    (``O(length)``).

    Parameters
    ----------
    runs : iterable of range or tuple of int
        The boundaries, run after run; empty runs are dropped.

    Examples
    --------
    >>> saved = BoundaryRuns([range(1, 10**9), (10**9 + 5,)])
    >>> len(saved), saved[0], saved[-1], 10**9 - 1 in saved, 10**9 in saved
    (1000000000, 1, 1000000005, True, False)
    >>> BoundaryRuns([range(1, 4)]) == (1, 2, 3)
    True
    """

    __slots__ = ("runs", "_ends")

    def __init__(self, runs: Iterable[Sequence[int]]) -> None:
        self.runs = tuple(r for r in runs if len(r))
        self._ends = tuple(itertools.accumulate(len(r) for r in self.runs))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self.runs)

    def __contains__(self, boundary: object) -> bool:
        return any(boundary in r for r in self.runs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("BoundaryRuns index out of range")
        before = 0
        for run, end in zip(self.runs, self._ends):
            if index < end:
                return run[index - before]
            before = end
        raise AssertionError("unreachable")  # the bounds were checked above

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"BoundaryRuns({list(self.runs)!r})"


def join_saves(*saves: Sequence[int]) -> tuple[int, ...] | BoundaryRuns:
    """The boundaries of ``saves``, one after another: a tuple, or `BoundaryRuns` when long.

    Parameters
    ----------
    *saves : sequence of int
        Tuples, ranges or `BoundaryRuns`.

    Returns
    -------
    tuple of int or BoundaryRuns
        A tuple of at most `LONG_SAVE` boundaries, else the runs without copying them.

    Examples
    --------
    >>> join_saves((1, 2), range(3, 5))
    (1, 2, 3, 4)
    >>> join_saves(range(1, 10**6))
    BoundaryRuns([range(1, 1000000)])
    """
    runs: list[Sequence[int]] = []
    for save in saves:
        runs.extend(save.runs if isinstance(save, BoundaryRuns) else (save,))
    if sum(len(r) for r in runs) <= LONG_SAVE:
        return tuple(itertools.chain.from_iterable(runs))
    return BoundaryRuns(runs)


@dataclass(frozen=True, slots=True)
class Advance:
    """Run blocks ``start .. stop-1`` without grad from the state at boundary ``start``.

    The state at ``start`` is read from the stored states or is the working state. The states at
    the boundaries in ``save`` (each with ``start < s <= stop``) are stored on the way; the state at
    ``stop`` becomes the working state. Costs ``stop - start`` block forward evaluations.
    """

    start: int
    stop: int
    save: Any = ()
    """The boundaries stored on the way: a tuple of int, or `BoundaryRuns` when long."""

    def __post_init__(self) -> None:
        save = self.save
        if type(save) is not tuple:
            lazy = isinstance(save, BoundaryRuns) or (isinstance(save, range) and len(save) > LONG_SAVE)
            object.__setattr__(self, "save", join_saves(save) if lazy else tuple(save))

    def __repr__(self) -> str:
        return f"Advance({self.start}, {self.stop}, save={self.save!r})"


@dataclass(frozen=True, slots=True)
class ForwardBackward:
    """Re-run block ``block`` with grad and backpropagate it, in one autograd traversal.

    The block's input state is the stored state at boundary ``block`` or the working state if that
    is at ``block``. The traversal takes the block's loss and the gradient that arrived at its
    output state (from block ``block + 1``, or from the final-state loss for the last block), and
    leaves the gradient at its input state for block ``block - 1``. Costs one forward evaluation.
    Afterwards there is no working state.
    """

    block: int

    def __repr__(self) -> str:
        return f"ForwardBackward({self.block})"


@dataclass(frozen=True, slots=True)
class Free:
    """Drop the stored state at boundary ``boundary``."""

    boundary: int

    def __repr__(self) -> str:
        return f"Free({self.boundary})"


Action = Advance | ForwardBackward | Free
