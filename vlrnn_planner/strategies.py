"""Schedule generators: each yields the actions of one strategy, lazily.

A generator takes the number of blocks ``n`` (and the strategy's parameters) and yields
`Advance`, `ForwardBackward` and `Free` actions. Nothing is materialised: a schedule for
millions of blocks costs nothing until it is walked.
"""

from __future__ import annotations

from collections.abc import Iterator

from .actions import Action, Advance, ForwardBackward, Free

__all__ = ["store_all", "blocks", "STRATEGIES"]


def store_all(n: int = 1) -> Iterator[Action]:
    """Plain BPTT: the whole sequence is one block, run once with grad.

    Examples
    --------
    >>> list(store_all())
    [ForwardBackward(0), Free(0)]
    """
    if n != 1:
        raise ValueError(f"vlrnn_planner: store_all is one block, got n={n}")
    yield ForwardBackward(0)
    yield Free(0)


def blocks(n: int) -> Iterator[Action]:
    """One level of blocks: store every boundary state in one no-grad sweep, then reverse.

    Holds ``n - 1`` stored states (the initial state included) and makes ``2n - 1`` forward
    evaluations.

    Examples
    --------
    >>> list(blocks(3))
    [Advance(0, 2, save=(1,)), ForwardBackward(2), ForwardBackward(1), Free(1), ForwardBackward(0), Free(0)]
    """
    if n < 1:
        raise ValueError(f"vlrnn_planner: a schedule needs at least one block, got n={n}")
    if n > 1:
        yield Advance(0, n - 1, save=tuple(range(1, n - 1)))
        yield ForwardBackward(n - 1)
    for b in range(n - 2, -1, -1):
        yield ForwardBackward(b)
        yield Free(b)
    if n == 1:
        yield ForwardBackward(0)
        yield Free(0)


STRATEGIES = ("store_all", "blocks")


def generate(schedule) -> Iterator[Action]:
    """The actions of ``schedule`` (a `vlrnn_planner.Schedule`), generated lazily."""
    name = schedule.strategy
    if name == "store_all":
        return store_all(1)
    if name == "blocks":
        return blocks(schedule.num_blocks)
    raise ValueError(f"vlrnn_planner: unknown strategy {name!r}")
