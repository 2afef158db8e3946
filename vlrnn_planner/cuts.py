"""Cuts of a batch that shrinks: where its blocks end, found on prefix sums of sample-steps.

A packed batch runs ``batch_sizes[t]`` sequences at step ``t``; a block's activations and time
follow its sample-steps, the sum of ``batch_sizes`` over its steps. Every function here works on
the prefix sums over segments (`segment_prefix`): segment ``j`` holds the steps
``j M .. (j + 1) M - 1`` for a block multiple ``M`` (NOTE [ Block multiples ] in
`vlrnn_planner.solver`), the last one possibly short, and a block is a run of whole segments. A
block's sample-steps are then a difference of two prefix sums, and the longest block from a given
start under a cap is one bisection: a cut of ``n`` blocks costs ``O(n log T)``, not ``O(T)``.

Plain integers in, plain integers out: the cost model and the search over cuts live in
`vlrnn_planner.cost` and `vlrnn_planner.solver`.

NOTE [ Greedy cuts against caps ]
---------------------------------
Given a cap on the sample-steps of each block, possibly different for each block index ``b``
(``caps(b)``), `cut_to_caps` makes every block as long as its cap allows, from the front. That
gives the fewest blocks of any cut that keeps to the caps: by induction, the greedy cut's
``k``-th boundary is never before the ``k``-th boundary of any other cut that keeps to them (if
it were, the other cut's block ``k`` would hold more sample-steps than the greedy one could take
from an earlier start; a later start only holds fewer). With the number of blocks ``n`` fixed,
`cut_to_caps` with ``num_blocks`` makes every block as long as its cap allows from the back: by the same
argument its last block is the longest of any ``n``-block cut that keeps to the caps, and it
keeps to them wherever some ``n``-block cut does.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate

__all__ = ["segment_prefix", "to_steps", "cut_by_sample_steps", "cut_to_caps"]


def segment_prefix(prefix: Sequence[int], block_multiple: int = 1) -> list[int]:
    """Sample-steps before each segment of ``block_multiple`` steps, and the total.

    Parameters
    ----------
    prefix : sequence of int
        Sample-steps before each step and the total (`vlrnn_planner.cost.sample_step_prefix`),
        ``T + 1`` entries.
    block_multiple : int, default 1
        Steps per segment ``M``; the last segment may be short.

    Returns
    -------
    list of int
        ``ceil(T / M) + 1`` entries, from 0 to the total.

    Examples
    --------
    >>> segment_prefix([0, 4, 8, 10, 12, 13], 2)
    [0, 8, 12, 13]
    """
    seq_len = len(prefix) - 1
    segments = list(prefix[::block_multiple])
    if seq_len % block_multiple:
        segments.append(prefix[seq_len])
    return segments


def to_steps(bounds: Sequence[int], seq_len: int, block_multiple: int = 1) -> tuple[int, ...]:
    """Boundaries in segments as boundaries in steps, the last at ``seq_len``.

    Parameters
    ----------
    bounds : sequence of int
        Segment indices, as the cuts here return them.
    seq_len : int
        Steps ``T``.
    block_multiple : int, default 1
        Steps per segment.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> to_steps([0, 2, 3], 11, 4)
    (0, 8, 11)
    """
    if block_multiple == 1:
        return tuple(bounds)
    return tuple(min(j * block_multiple, seq_len) for j in bounds)


def cut_by_sample_steps(batch_sizes: Sequence[int], cap: int, *, block_multiple: int = 1) -> tuple[int, ...]:
    """Block boundaries for a shrinking batch, each block as long as ``cap`` sample-steps allow.

    Each block holds at most ``cap`` sample-steps (steps times sequences running), except that a
    segment over ``cap`` is a block of its own.

    Parameters
    ----------
    batch_sizes : sequence of int
        Sequences running at each step.
    cap : int
        Most sample-steps in a block.
    block_multiple : int, default 1
        Blocks are made of whole segments of this many steps (the last segment may be short);
        NOTE [ Block multiples ] in `vlrnn_planner.solver`.

    Returns
    -------
    tuple of int
        The start step of every block, then the number of steps.

    Examples
    --------
    >>> cut_by_sample_steps([4, 4, 2, 2, 1, 1, 1, 1], 4)
    (0, 1, 2, 4, 8)
    >>> cut_by_sample_steps([4, 4, 2, 2, 1, 1, 1, 1], 4, block_multiple=2)
    (0, 2, 4, 8)
    """
    segments = segment_prefix([0, *accumulate(batch_sizes)], block_multiple)
    units = len(segments) - 1
    bounds, start = [0], 0
    while start < units:
        start = max(bisect_right(segments, segments[start] + cap, start + 1) - 1, start + 1)
        bounds.append(start)
    return to_steps(bounds, len(batch_sizes), block_multiple)


def cut_to_caps(
    segments: Sequence[int], caps: Callable[[int], int], *, num_blocks: int | None = None
) -> list[int] | None:
    """Blocks that keep block ``b`` to ``caps(b)`` sample-steps, each as long as it may be.

    Without ``num_blocks``, the fewest blocks, cut from the front; with it, that many blocks cut
    from the back, so that the last block is the longest any such cut has (NOTE [ Greedy cuts
    against caps ]).

    Parameters
    ----------
    segments : sequence of int
        `segment_prefix` of the batch.
    caps : callable
        ``caps(b)``: the most sample-steps block ``b`` may hold.
    num_blocks : int, optional
        Blocks in the cut, at least 1.

    Returns
    -------
    list of int or None
        The segment at which every block starts, then the number of segments; None if a block
        cannot hold even its first segment, or no cut of ``num_blocks`` blocks keeps to the caps.

    Examples
    --------
    >>> segments = [0, 4, 8, 10, 12, 13, 14, 15, 16]
    >>> cut_to_caps(segments, lambda b: 4)
    [0, 1, 2, 4, 8]
    >>> cut_to_caps(segments, lambda b: 8 - 2 * b), cut_to_caps(segments, lambda b: 8 - 2 * b, num_blocks=3)
    ([0, 2, 6, 8], [0, 2, 4, 8])
    >>> cut_to_caps(segments, lambda b: 8 - 2 * b, num_blocks=2) is None
    True
    >>> cut_to_caps([0, 4, 8, 10], lambda b: 3) is None
    True
    """
    if num_blocks is not None:
        return _cut_from_end(segments, caps, num_blocks)
    units = len(segments) - 1
    bounds, start, block = [0], 0, 0
    while start < units:
        stop = bisect_right(segments, segments[start] + caps(block), start + 1) - 1
        if stop == start:
            return None
        bounds.append(stop)
        start, block = stop, block + 1
    return bounds


def _cut_from_end(segments: Sequence[int], caps: Callable[[int], int], num_blocks: int) -> list[int] | None:
    """`cut_to_caps` with ``num_blocks``: from the back."""
    stop = len(segments) - 1
    bounds = [stop]
    for block in range(num_blocks - 1, 0, -1):
        start = bisect_left(segments, segments[stop] - caps(block), 0, stop)
        if start in (0, stop):
            return None
        bounds.append(start)
        stop = start
    if segments[stop] > caps(0):
        return None
    bounds.append(0)
    return bounds[::-1]
