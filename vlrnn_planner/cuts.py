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
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

__all__ = ["segment_prefix", "to_steps", "cut_by_sample_steps"]


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
