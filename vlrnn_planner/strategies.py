"""Schedule generators: each yields the actions of one strategy, lazily.

A generator takes the number of blocks ``n`` (and the strategy's parameters) and yields
`Advance`, `ForwardBackward` and `Free` actions. Nothing is materialised: a schedule for
millions of blocks costs nothing until it is walked, and the generators keep an explicit stack
whose depth is bounded by the number of checkpoints or levels, never by ``n``.

Every strategy also has closed forms for its cost, `forward_evaluations` and
`max_stored_states`, so that a planner can compare strategies without walking any schedule.

Counting conventions (see `vlrnn_planner.actions`): the initial state (boundary 0) is a stored
state, the working state left by an `Advance` is not. The forward evaluations of a schedule are
the blocks run by its advances plus one per `ForwardBackward`.

NOTE [ Binomial checkpointing ]
    Reversing ``l`` blocks from a stored state with at most ``s`` stored states costs, beyond the
    ``l`` evaluations of the ForwardBackward passes, ``t(l, s)`` no-grad block evaluations:
    ``t(1, s) = 0`` (the one block runs from the state at hand) and
    ``t(l, s) = min over 0 < m < l of m + t(l - m, s - 1) + t(m, s)``: advance ``m`` blocks and
    store that state, reverse the tail with one slot less, free it, then reverse the head with all
    slots again. The tail of one block needs no slot (it runs from the working state), hence
    ``t(l, 1) = l (l - 1) / 2``. Griewank and Walther (ACM TOMS 26(1), 2000, "Algorithm 799:
    Revolve", and Griewank 1992, "Achieving logarithmic growth of temporal and spatial
    complexity in reverse automatic differentiation") give the closed form. With
    ``beta(s, r) = C(s + r, s)`` (and ``beta(s, -1) = 0``) and ``r`` the least integer with
    ``beta(s, r) >= l`` (the number of times the most recomputed block runs, counting its
    ForwardBackward),

        t(l, s) = r * l - beta(s + 1, r - 1).

    The formula holds on the closed range ``beta(s, r - 1) <= l <= beta(s, r)``, so a split ``m``
    is optimal when ``m`` lies in ``[beta(s, r - 2), beta(s, r - 1)]`` (reversed with ``r - 1``)
    and ``l - m`` in ``[beta(s - 1, r - 1), beta(s - 1, r)]`` (reversed with ``r``): then
    ``m + t(l - m, s - 1) + t(m, s) = r l - beta(s, r - 1) - beta(s + 1, r - 2) = t(l, s)`` by
    Pascal's rule. Both ranges overlap because ``beta(s, r) = beta(s, r - 1) + beta(s - 1, r)``.
    We take the largest optimal ``m`` (`_binomial_split`); the tests check the walked count against
    the closed form and against the plain dynamic programme (`_optimal_forward_evaluations_dp`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from .actions import Action, Advance, ForwardBackward, Free, join_saves
from .errors import InvalidInputError, InvalidTypeError

__all__ = [
    "STRATEGIES",
    "store_all",
    "blocks",
    "multilevel",
    "binomial",
    "binomial_splits",
    "chain_splits",
    "chain_dp_work",
    "check_splits",
    "generate",
    "forward_evaluations",
    "max_stored_states",
]

STRATEGIES = ("store_all", "blocks", "multilevel", "binomial")


# --------------------------------------------------------------------------------------------
# argument checks


def _check_blocks(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidTypeError(f"vlrnn_planner: the number of blocks must be an int, got {n!r}")
    if n < 1:
        raise InvalidInputError(f"vlrnn_planner: a schedule needs at least one block, got n={n}")
    return n


def _check_checkpoints(c: Any) -> int:
    if c is None:
        raise InvalidInputError(
            "vlrnn_planner: the binomial strategy needs checkpoints=c, the most stored states "
            "(the initial state included); pass an int of 1 or more"
        )
    if isinstance(c, bool) or not isinstance(c, int):
        raise InvalidTypeError(f"vlrnn_planner: checkpoints must be an int, got {c!r}")
    if c < 1:
        raise InvalidInputError(
            f"vlrnn_planner: checkpoints must be at least 1 (the initial state is stored), got {c}"
        )
    return c


def _check_levels(levels: Any) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise InvalidTypeError(
            f"vlrnn_planner: levels must be a sequence of segment sizes in blocks, got {levels!r}"
        )
    levels = tuple(levels)
    for size in levels:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInputError(
                f"vlrnn_planner: every level must be a segment size of 1 or more blocks, "
                f"got levels={levels!r}"
            )
    return levels


# --------------------------------------------------------------------------------------------
# shared pieces


def _merge_advances(actions: Iterator[Action]) -> Iterator[Action]:
    """Join each `Advance` with the one that continues from its stop.

    ``Advance(a, b, save=S)`` followed by ``Advance(b, c, save=T)`` runs the same blocks from the
    same states as ``Advance(a, c, save=S + T)``: the second starts from the working state at
    ``b`` (which is also stored if ``b`` is in ``S``). Long saves stay runs (`join_saves`).
    """
    first: Advance | None = None  # the advance being extended
    stop = 0  # where the advances joined to it stop
    saves: list = []  # their saves
    for action in actions:
        if first is not None:
            if type(action) is Advance and action.start == stop:
                saves.append(action.save)
                stop = action.stop
                continue
            yield first if len(saves) == 1 else Advance(first.start, stop, join_saves(*saves))
            first = None
        if type(action) is Advance:
            first, stop, saves = action, action.stop, [action.save]
        else:
            yield action
    if first is not None:
        yield first if len(saves) == 1 else Advance(first.start, stop, join_saves(*saves))


def _reverse_run(a: int, length: int, stored: bool) -> Iterator[Action]:
    """Reverse blocks ``a .. a+length-1`` storing every boundary: the ``blocks`` pattern.

    The state at ``a`` is at hand (stored if ``stored``; it must be stored when ``length > 1``).
    """
    if length > 1:
        yield Advance(a, a + length - 1, range(a + 1, a + length - 1))
        yield ForwardBackward(a + length - 1)
        for b in range(a + length - 2, a, -1):
            yield ForwardBackward(b)
            yield Free(b)
    yield ForwardBackward(a)
    if stored:
        yield Free(a)


# --------------------------------------------------------------------------------------------
# store_all and blocks


def store_all(n: int = 1) -> Iterator[Action]:
    """Plain BPTT: the whole sequence is one block, run once with grad.

    Parameters
    ----------
    n : int, default 1
        Number of blocks; must be 1.

    Returns
    -------
    iterator of Action
        ``ForwardBackward(0)``, ``Free(0)``.

    Raises
    ------
    InvalidInputError
        For ``n`` other than 1.

    Examples
    --------
    >>> list(store_all())
    [ForwardBackward(0), Free(0)]
    """
    if n != 1:
        raise InvalidInputError(
            f"vlrnn_planner: store_all is one block, got n={n}; use blocks(n) for {n} blocks"
        )
    return iter((ForwardBackward(0), Free(0)))


def blocks(n: int) -> Iterator[Action]:
    """One level of blocks: store every boundary state in one no-grad sweep, then reverse.

    Holds ``max(1, n - 1)`` stored states (the initial state included) and makes ``2n - 1``
    forward evaluations.

    Parameters
    ----------
    n : int
        Number of blocks, at least 1.

    Returns
    -------
    iterator of Action
        Generated lazily; the first action's ``save`` of ``n - 2`` boundaries is a run
        (`vlrnn_planner.actions.BoundaryRuns`) when long.

    Raises
    ------
    InvalidInputError
        If ``n`` is below 1.

    Examples
    --------
    >>> list(blocks(3))
    [Advance(0, 2, save=(1,)), ForwardBackward(2), ForwardBackward(1), Free(1), ForwardBackward(0), Free(0)]
    """
    return _reverse_run(0, _check_blocks(n), True)


# --------------------------------------------------------------------------------------------
# multilevel


def multilevel(n: int, levels: Sequence[int] = ()) -> Iterator[Action]:
    """Nested levels of stored states, coarsest first.

    ``levels = (S1, S2, ..., Sk)`` are segment sizes in blocks, outermost first. A segment of
    blocks ``[a, b)`` with remaining levels ``(S, *rest)`` is handled so:

    1. it is cut, from ``a``, into pieces of ``S`` blocks (the last piece may be shorter);
    2. one no-grad sweep from ``a`` stores the state at the start of every piece (a last piece of
       a single block is left as the working state instead);
    3. the pieces are reversed last to first, each as a segment with levels ``rest``; the state at
       a piece's start is freed once its first block has been backpropagated.

    A segment with no level left is reversed like `blocks`: re-advanced from its start storing
    every boundary inside it, then its blocks backpropagated last to first. Consecutive advances
    are merged (the sweep runs on into the last piece). ``levels=()`` is `blocks`; sizes need not
    divide each other or ``n``; a size of at least the segment's length makes that level a no-op.

    Parameters
    ----------
    n : int
        Number of blocks, at least 1.
    levels : sequence of int
        Segment sizes in blocks, outermost first, each at least 1.

    Returns
    -------
    iterator of Action
        Generated lazily; nothing is computed until it is walked.

    Raises
    ------
    InvalidInputError
        If ``n`` or a level is below 1.

    See Also
    --------
    forward_evaluations, max_stored_states : the closed forms of its cost.

    Examples
    --------
    Seven blocks in segments of three: boundaries 0, 3 and 6 are stored by the first sweep; the
    last segment (block 6) runs from the working state; segment [3, 6) is re-advanced storing 4.

    >>> for action in multilevel(7, (3,)):
    ...     print(action)
    Advance(0, 6, save=(3,))
    ForwardBackward(6)
    Advance(3, 5, save=(4,))
    ForwardBackward(5)
    ForwardBackward(4)
    Free(4)
    ForwardBackward(3)
    Free(3)
    Advance(0, 2, save=(1,))
    ForwardBackward(2)
    ForwardBackward(1)
    Free(1)
    ForwardBackward(0)
    Free(0)
    >>> forward_evaluations("multilevel", 7, levels=(3,)), max_stored_states("multilevel", 7, levels=(3,))
    (17, 3)
    """
    n = _check_blocks(n)
    levels = _check_levels(levels)
    return _merge_advances(_multilevel(n, levels))


def _multilevel(n: int, levels: tuple[int, ...]) -> Iterator[Action]:
    # Stack entries (LIFO):
    #   ("segment", a, length, depth, stored): reverse blocks a..a+length-1 with levels[depth:];
    #       the state at a is at hand, stored if ``stored`` (always when length > 1).
    #   ("pieces", a, size, j, depth): reverse the full pieces j, j-1, ..., 0 of a segment
    #       starting at a, each of ``size`` blocks and stored at its start, with levels[depth:].
    stack: list[tuple] = [("segment", 0, n, 0, True)]
    while stack:
        entry = stack.pop()
        if entry[0] == "pieces":
            _, a, size, j, depth = entry
            if j > 0:
                stack.append(("pieces", a, size, j - 1, depth))
            stack.append(("segment", a + j * size, size, depth, True))
            continue
        _, a, length, depth, stored = entry
        # Skip levels that do not cut this segment.
        while depth < len(levels) and levels[depth] >= length:
            depth += 1
        if depth == len(levels):
            yield from _reverse_run(a, length, stored)
            continue
        size = levels[depth]
        count = -(-length // size)
        last_start = a + (count - 1) * size
        last = a + length - last_start
        # The starts of the full pieces after the first, and of the last piece unless it is one
        # block (run from the working state).
        yield Advance(a, last_start, range(a + size, last_start + (1 if last > 1 else 0), size))
        stack.append(("pieces", a, size, count - 2, depth + 1))
        stack.append(("segment", last_start, last, depth + 1, last > 1))


@lru_cache(maxsize=4096)
def _multilevel_advance_evaluations(length: int, levels: tuple[int, ...]) -> int:
    """No-grad block evaluations to reverse ``length`` blocks with ``levels`` (see `multilevel`)."""
    while levels and levels[0] >= length:
        levels = levels[1:]
    if not levels:
        return length - 1
    size, rest = levels[0], levels[1:]
    count = -(-length // size)
    last = length - (count - 1) * size
    return (
        (count - 1) * size
        + (count - 1) * _multilevel_advance_evaluations(size, rest)
        + _multilevel_advance_evaluations(last, rest)
    )


@lru_cache(maxsize=4096)
def _multilevel_peak_stored(length: int, levels: tuple[int, ...]) -> int:
    """Most states stored at once while reversing ``length`` blocks, the segment's start included."""
    while levels and levels[0] >= length:
        levels = levels[1:]
    if not levels:
        return max(1, length - 1)
    size, rest = levels[0], levels[1:]
    count = -(-length // size)
    last = length - (count - 1) * size
    # During the last piece: the starts of the count-1 full pieces, plus the last piece's own
    # peak (nothing if it is one block run from the working state).
    during_last = (count - 1) + (_multilevel_peak_stored(last, rest) if last > 1 else 0)
    # During full piece count-2: the starts of the pieces before it, plus its own peak.
    during_full = (count - 2) + _multilevel_peak_stored(size, rest)
    return max(during_last, during_full)


# --------------------------------------------------------------------------------------------
# binomial


def _beta(s: int, r: int) -> int:
    """``beta(s, r) = C(s + r, s)``, the most blocks reversible with s slots and r repetitions."""
    if r < 0 or s < 0:
        return 0
    return math.comb(s + r, s)


def _repetitions(length: int, slots: int) -> int:
    """The least ``r >= 0`` with ``beta(slots, r) >= length`` (see NOTE [ Binomial checkpointing ]).

    ``O(log r)`` binomial coefficients: doubling, then bisection.
    """
    if length <= 1:
        return 0
    if slots == 1:
        return length - 1  # beta(1, r) = r + 1
    if slots + 1 >= length:
        return 1
    low, high = 1, 2  # beta(slots, low) < length
    while _beta(slots, high) < length:
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        if _beta(slots, mid) < length:
            low = mid
        else:
            high = mid
    return high


def _binomial_advance_evaluations(length: int, slots: int) -> int:
    """``t(length, slots)``: the fewest no-grad block evaluations (NOTE [ Binomial checkpointing ])."""
    r = _repetitions(length, slots)
    return r * length - _beta(slots + 1, r - 1)


def _binomial_split(length: int, slots: int) -> int:
    """The largest optimal number of blocks to advance before storing (length >= 2, slots >= 1)."""
    r = _repetitions(length, slots)
    return min(_beta(slots, r - 1), length - _beta(slots - 1, r - 1))


def binomial(n: int, checkpoints: int) -> Iterator[Action]:
    """Reverse ``n`` blocks holding at most ``checkpoints`` stored states, with the fewest evaluations.

    Binomial checkpointing (Griewank and Walther, "Algorithm 799: Revolve", ACM TOMS 2000): from
    a stored state, advance ``m`` blocks and store that state, reverse the tail with one slot less,
    free it, then reverse the head with every slot again; ``m`` comes in closed form (see
    NOTE [ Binomial checkpointing ] in this module), so each action costs ``O(log n)`` to produce
    and nothing is computed until the schedule is walked. Consecutive advances are merged. The
    initial state counts as a stored state, the working state does not. With
    ``checkpoints >= n - 1`` this is `blocks`.

    Parameters
    ----------
    n : int
        Number of blocks, at least 1.
    checkpoints : int
        Most stored states at any time, the initial state included; at least 1.

    Returns
    -------
    iterator of Action
        Generated lazily.

    Raises
    ------
    InvalidInputError
        If ``n`` or ``checkpoints`` is below 1.

    See Also
    --------
    forward_evaluations, max_stored_states : the closed forms of its cost.

    Examples
    --------
    Four blocks, two stored states: store boundary 2 on the way, reverse blocks 3 and 2 from it,
    then blocks 1 and 0 from the initial state. 8 forward evaluations, against 7 with 3 slots.

    >>> for action in binomial(4, 2):
    ...     print(action)
    Advance(0, 3, save=(2,))
    ForwardBackward(3)
    ForwardBackward(2)
    Free(2)
    Advance(0, 1, save=())
    ForwardBackward(1)
    ForwardBackward(0)
    Free(0)
    >>> forward_evaluations("binomial", 4, checkpoints=2)
    8
    >>> forward_evaluations("binomial", 10**6, checkpoints=20)  # closed form: nothing is walked
    7815960
    """
    n = _check_blocks(n)
    checkpoints = _check_checkpoints(checkpoints)
    return _merge_advances(_binomial(n, checkpoints))


def _binomial(n: int, checkpoints: int) -> Iterator[Action]:
    # Stack entries (LIFO): (a, length, slots, stored): reverse blocks a..a+length-1 from the
    # state at a (stored if ``stored``, always when length > 1) with at most ``slots`` stored
    # states, that one included. Depth stays below 2 * checkpoints + 2: every push of a tail takes
    # one slot, and a head is only pushed under its tail.
    stack: list[tuple[int, int, int, bool]] = [(0, n, checkpoints, True)]
    while stack:
        a, length, slots, stored = stack.pop()
        if length <= slots + 1:
            # r = 1: every split is one block, which is the blocks pattern; emit it directly so
            # that a long run of stored boundaries costs one range, not one split each.
            yield from _reverse_run(a, length, stored)
            continue
        m = _binomial_split(length, slots)
        tail_stored = length - m > 1
        yield Advance(a, a + m, (a + m,) if tail_stored else ())
        stack.append((a, m, slots, True))
        stack.append((a + m, length - m, slots - 1, tail_stored))


def _optimal_forward_evaluations_dp(n: int, checkpoints: int) -> int:
    """The fewest forward evaluations for ``n`` blocks and ``checkpoints`` slots, by plain DP.

    ``O(n^2 c)``: a reference for tests on small cases only. Counts the ``n`` ForwardBackward
    evaluations too, like `forward_evaluations`.

    Examples
    --------
    >>> _optimal_forward_evaluations_dp(6, 2)
    14
    """
    inf = float("inf")
    # t[s][l]: no-grad evaluations to reverse l blocks with s slots (NOTE [ Binomial checkpointing ]).
    t = [[inf] * (n + 1) for _ in range(checkpoints + 1)]
    for s in range(checkpoints + 1):
        t[s][1] = 0
    for s in range(1, checkpoints + 1):
        for length in range(2, n + 1):
            t[s][length] = min(m + t[s - 1][length - m] + t[s][m] for m in range(1, length))
    return int(t[checkpoints][n]) + n


# --------------------------------------------------------------------------------------------
# binomial over a chain of unequal blocks

# NOTE [ Binomial over unequal blocks ]
#     With per-block advance costs ``a_0 .. a_{n-1}`` (seconds of a block without grad), the
#     recomputation time to reverse blocks ``i .. j-1`` from a stored state at ``i`` with at most
#     ``s`` stored states (that one included) is
#
#         T(i, i+1, s) = 0,    T(i, j, 0) = inf for j > i + 1,
#         T(i, j, s) = min over i < m < j of  A(i, m) + T(m, j, s - 1) + T(i, m, s),
#
#     ``A(i, m) = a_i + ... + a_{m-1}`` from prefix sums: advance to ``m`` and store it (a tail of
#     one block runs from the working state and takes no slot), reverse the tail with one slot
#     less, then the head with every slot again, as for equal blocks (NOTE [ Binomial
#     checkpointing ]) and as rotor does for heterogeneous chains. With ``s >= j - i - 1`` every
#     boundary fits and ``T = A(i, j - 1)``, the least any schedule can advance (every block but
#     the last must run once to reach it), so only ``s < j - i - 1`` is tabulated: the exact
#     minimum over ``m`` makes it ``O(n^3 c)`` time at worst (``chain_dp_work`` counts the terms)
#     and ``O(n^2 c)`` memory. A schedule is stored compactly as its split points in the order
#     `binomial_splits` consumes them (pre-order: a node, its tail, then its head), ``n - 1`` ints.


def _check_costs(advance_seconds: Any) -> list[float]:
    try:
        costs = [float(a) for a in advance_seconds]
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"vlrnn_planner: advance_seconds must be a sequence of numbers, got {advance_seconds!r}"
        ) from None
    if not costs:
        raise InvalidInputError("vlrnn_planner: advance_seconds needs one cost per block, got none")
    for b, a in enumerate(costs):
        if not (a >= 0 and math.isfinite(a)):
            raise InvalidInputError(
                f"vlrnn_planner: advance_seconds must be finite and non-negative, got {a!r} for block {b}"
            )
    return costs


def chain_dp_work(n: int, checkpoints: int) -> int:
    """The number of split terms `chain_splits` evaluates for ``n`` blocks and ``checkpoints``.

    ``sum over s = 1..c, l = s+2..n of (n - l + 1) (l - 1)``: a planner's guard on the DP's time.

    Parameters
    ----------
    n : int
        Number of blocks.
    checkpoints : int
        Most stored states.

    Returns
    -------
    int

    Examples
    --------
    >>> chain_dp_work(4, 2), chain_dp_work(4, 3), chain_dp_work(200, 3) < 4 * 10**6
    (10, 10, True)
    """
    total = 0
    for s in range(1, min(checkpoints, n - 2) + 1):
        for length in range(s + 2, n + 1):
            total += (n - length + 1) * (length - 1)
    return total


def _chain_tables(prefix: list[float], n: int, c: int) -> list[list[list[float]]]:
    """``T(i, j, s)`` for ``s = 0 .. c`` as ``tables[s][i][j]`` (NOTE [ Binomial over unequal blocks ])."""
    inf = math.inf
    zero = [[0.0 if j == i + 1 else inf for j in range(n + 1)] for i in range(n + 1)]
    tables = [zero]
    # columns[j][m] = T(m, j, s - 1): the tail terms read down a column, kept transposed.
    columns = [[zero[m][j] for m in range(n + 1)] for j in range(n + 1)]
    for s in range(1, c + 1):
        rows = [[inf] * (n + 1) for _ in range(n + 1)]
        for i in range(n):
            row = rows[i]
            p = prefix[i]
            for j in range(i + 1, min(i + s + 1, n) + 1):
                row[j] = prefix[j - 1] - p  # every boundary fits
        for length in range(s + 2, n + 1):
            for i in range(n - length + 1):
                j = i + length
                row = rows[i]
                best = min([x + y + z for x, y, z in zip(prefix[i + 1 : j], columns[j][i + 1 : j], row[i + 1 : j])])
                row[j] = best - prefix[i]
        tables.append(rows)
        columns = [[rows[m][j] for m in range(n + 1)] for j in range(n + 1)]
    return tables


def chain_splits(advance_seconds: Sequence[float], checkpoints: int) -> tuple[float, tuple[int, ...]]:
    """The binomial schedule of least recomputation time over blocks of unequal advance costs.

    Dynamic programme of NOTE [ Binomial over unequal blocks ] (in this module); with equal costs
    it makes as few forward evaluations as `binomial`.

    Parameters
    ----------
    advance_seconds : sequence of float
        Seconds to run each block without grad (``n`` entries, each finite and >= 0).
    checkpoints : int
        Most stored states at once, the initial state included; at least 1.

    Returns
    -------
    (float, tuple of int)
        The seconds spent in advances, and the split points for `binomial_splits` (``n - 1``
        boundaries, pre-order).

    Examples
    --------
    A costly first block is advanced once only; with equal costs the split would be at 2.

    >>> chain_splits([10.0, 1.0, 1.0, 1.0], 2)
    (13.0, (1, 3, 2))
    >>> list(binomial_splits(4, 2, (1, 3, 2)))[:3]
    [Advance(0, 3, save=(1,)), ForwardBackward(3), Advance(1, 2, save=())]
    """
    costs = _check_costs(advance_seconds)
    c = _check_checkpoints(checkpoints)
    n = len(costs)
    prefix = [0.0]
    for a in costs:
        prefix.append(prefix[-1] + a)
    levels = min(c, max(n - 2, 0))
    tables = _chain_tables(prefix, n, levels)

    def value(i: int, j: int, s: int) -> float:
        if j - i == 1:
            return 0.0
        if s >= j - i - 1:
            return prefix[j - 1] - prefix[i]
        return tables[s][i][j]

    splits: list[int] = []
    stack = [(0, n, c)]
    while stack:
        i, j, s = stack.pop()
        if j - i == 1:
            continue
        target = value(i, j, s)
        if s >= j - i - 1:
            m = i + 1  # every boundary fits: the blocks pattern, one block at a time
        else:
            # The same sums as the table, in the same order: the first minimiser is found exactly.
            m = next(
                m
                for m in range(i + 1, j)
                if (prefix[m] + tables[s - 1][m][j] + tables[s][i][m]) - prefix[i] == target
            )
        splits.append(m)
        stack.append((i, m, s))
        stack.append((m, j, s - 1))
    return value(0, n, c), tuple(splits)


def check_splits(n: int, checkpoints: int, splits: Any) -> tuple[int, ...]:
    """``splits`` as a tuple of ints that `binomial_splits` can walk.

    Parameters
    ----------
    n : int
        Number of blocks.
    checkpoints : int
        Most stored states the splits were computed for.
    splits : sequence of int
        Split points in the order `binomial_splits` consumes them, ``n - 1`` of them.

    Returns
    -------
    tuple of int

    Raises
    ------
    InvalidInputError
        Saying which split is wrong and why: not an int, outside its range, or storing a state
        where no slot is left.
    """
    n = _check_blocks(n)
    c = _check_checkpoints(checkpoints)
    hint = "use the splits that vlrnn_planner.strategies.chain_splits returns"
    if isinstance(splits, (str, bytes)) or not isinstance(splits, Iterable):
        raise InvalidInputError(f"vlrnn_planner: splits must be a sequence of ints, got {splits!r}; {hint}")
    splits = tuple(splits)
    for m in splits:
        if isinstance(m, bool) or not isinstance(m, int):
            raise InvalidInputError(f"vlrnn_planner: splits must hold ints, got {m!r}; {hint}")
    if len(splits) != n - 1:
        raise InvalidInputError(
            f"vlrnn_planner: splits for {n} blocks need {n - 1} entries (one per split), got {len(splits)}; {hint}"
        )
    k = 0
    stack = [(0, n, c)]
    while stack:
        i, j, s = stack.pop()
        if j - i == 1:
            continue
        m = splits[k]
        if not i < m < j:
            raise InvalidInputError(
                f"vlrnn_planner: split #{k} ({m}) must lie strictly inside blocks {i}..{j - 1}, "
                f"between {i} and {j}; {hint}"
            )
        if j - m > 1 and s < 2:
            raise InvalidInputError(
                f"vlrnn_planner: split #{k} ({m}) stores boundary {m} for blocks {m}..{j - 1}, but "
                f"{'no slot is' if s < 1 else 'only the one at ' + str(i) + ' is'} left of "
                f"checkpoints={c} there; {hint}"
            )
        k += 1
        stack.append((i, m, s))
        stack.append((m, j, s - 1))
    return splits


def binomial_splits(n: int, checkpoints: int, splits: Sequence[int]) -> Iterator[Action]:
    """The binomial pattern with explicit split points (as `chain_splits` returns), lazily.

    Reversing blocks ``i .. j-1`` with ``s`` slots takes the next split ``m``: advance to ``m``
    (storing it unless one block remains after it), reverse ``m .. j-1`` with ``s - 1`` slots,
    then ``i .. m-1`` with ``s``. Never more than ``checkpoints`` stored states for valid splits
    (`check_splits`); consecutive advances are merged.

    Parameters
    ----------
    n : int
        Number of blocks, at least 1.
    checkpoints : int
        Most stored states, at least 1.
    splits : sequence of int
        The split points, as `chain_splits` returns them.

    Returns
    -------
    iterator of Action
        Generated lazily.

    Raises
    ------
    InvalidInputError
        For ``n`` or ``checkpoints`` below 1, or (while walking) splits that run out or leave
        their range.

    Examples
    --------
    >>> list(binomial_splits(3, 1, (2, 1)))
    [Advance(0, 2, save=()), ForwardBackward(2), Advance(0, 1, save=()), ForwardBackward(1), ForwardBackward(0), Free(0)]
    """
    n = _check_blocks(n)
    _check_checkpoints(checkpoints)
    return _merge_advances(_binomial_splits(n, iter(splits)))


def _binomial_splits(n: int, splits: Iterator[int]) -> Iterator[Action]:
    # Stack entries (LIFO): (a, b, stored): reverse blocks a..b-1 from the state at a.
    stack: list[tuple[int, int, bool]] = [(0, n, True)]
    while stack:
        a, b, stored = stack.pop()
        if b - a == 1:
            yield ForwardBackward(a)
            if stored:
                yield Free(a)
            continue
        m = next(splits, None)
        if m is None or not a < m < b:
            raise InvalidInputError(
                f"vlrnn_planner: splits ran out or left blocks {a}..{b - 1} (got {m!r}); "
                "check them with vlrnn_planner.strategies.check_splits"
            )
        tail_stored = b - m > 1
        yield Advance(a, m, (m,) if tail_stored else ())
        stack.append((a, m, True))
        stack.append((m, b, tail_stored))


# --------------------------------------------------------------------------------------------
# closed forms and dispatch


def forward_evaluations(
    strategy: str, n: int, *, checkpoints: int | None = None, levels: Sequence[int] = ()
) -> int:
    """Forward block evaluations of a strategy's schedule, in closed form.

    Counts the blocks run by every `Advance` plus one per `ForwardBackward`, exactly as walking
    the schedule would, without walking it: ``O(1)`` for ``store_all`` and ``blocks``,
    ``O(log n)`` binomial coefficients for ``binomial``, ``O(2^len(levels))`` for ``multilevel``.

    Parameters
    ----------
    strategy : {"store_all", "blocks", "multilevel", "binomial"}
    n : int
        Number of blocks.
    checkpoints : int, optional
        For ``"binomial"`` (required there): most stored states, the initial state included.
    levels : sequence of int
        For ``"multilevel"``: segment sizes in blocks, outermost first.

    Returns
    -------
    int

    Raises
    ------
    InvalidInputError
        For an unknown strategy or an invalid parameter.

    Examples
    --------
    >>> forward_evaluations("blocks", 10)
    19
    >>> forward_evaluations("binomial", 10, checkpoints=3), forward_evaluations("binomial", 10, checkpoints=1)
    (25, 55)
    >>> forward_evaluations("multilevel", 100, levels=(10,))
    280
    """
    n = _check_blocks(n)
    if strategy == "store_all":
        store_all(n)  # checks n == 1
        return 1
    if strategy == "blocks":
        return 2 * n - 1
    if strategy == "multilevel":
        return n + _multilevel_advance_evaluations(n, _check_levels(levels))
    if strategy == "binomial":
        return n + _binomial_advance_evaluations(n, _check_checkpoints(checkpoints))
    raise InvalidInputError(
        f"vlrnn_planner: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
    )


def max_stored_states(
    strategy: str, n: int, *, checkpoints: int | None = None, levels: Sequence[int] = ()
) -> int:
    """Most states a strategy's schedule holds stored at once (initial state included), in closed form.

    The working state left by an `Advance` is not counted.

    Parameters
    ----------
    strategy : {"store_all", "blocks", "multilevel", "binomial"}
    n : int
        Number of blocks.
    checkpoints : int, optional
        For ``"binomial"`` (required there).
    levels : sequence of int
        For ``"multilevel"``.

    Returns
    -------
    int

    Raises
    ------
    InvalidInputError
        For an unknown strategy or an invalid parameter.

    Examples
    --------
    >>> max_stored_states("blocks", 10), max_stored_states("binomial", 10, checkpoints=3)
    (9, 3)
    >>> max_stored_states("multilevel", 100, levels=(10,))
    18
    """
    n = _check_blocks(n)
    if strategy == "store_all":
        store_all(n)
        return 1
    if strategy == "blocks":
        return max(1, n - 1)
    if strategy == "multilevel":
        return _multilevel_peak_stored(n, _check_levels(levels))
    if strategy == "binomial":
        # Optimal splits leave a tail of at least beta(s - 1, 1) = s blocks whenever more than
        # s + 1 blocks remain, so every slot gets used (NOTE [ Binomial checkpointing ]).
        return min(_check_checkpoints(checkpoints), max(1, n - 1))
    raise InvalidInputError(
        f"vlrnn_planner: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
    )


def generate(schedule: Any) -> Iterator[Action]:
    """The actions of ``schedule`` (a `vlrnn_planner.Schedule`), generated lazily.

    Uses ``schedule.strategy``, ``schedule.num_blocks``, and ``schedule.checkpoints`` (binomial,
    with ``schedule.splits`` for `binomial_splits` where set) or ``schedule.levels`` (multilevel).

    Parameters
    ----------
    schedule : Schedule
        The schedule.

    Returns
    -------
    iterator of Action

    Raises
    ------
    InvalidInputError
        For an unknown strategy or an invalid parameter of it.

    Examples
    --------
    >>> from vlrnn_planner import Schedule
    >>> list(generate(Schedule("binomial", seq_len=30, block_length=10, checkpoints=1)))
    [Advance(0, 2, save=()), ForwardBackward(2), Advance(0, 1, save=()), ForwardBackward(1), ForwardBackward(0), Free(0)]
    """
    name = schedule.strategy
    if name == "store_all":
        return store_all(1)
    if name == "blocks":
        return blocks(schedule.num_blocks)
    if name == "multilevel":
        return multilevel(schedule.num_blocks, schedule.levels)
    if name == "binomial":
        splits = getattr(schedule, "splits", ())
        if splits:
            return binomial_splits(schedule.num_blocks, schedule.checkpoints, splits)
        return binomial(schedule.num_blocks, schedule.checkpoints)
    raise InvalidInputError(
        f"vlrnn_planner: unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
    )
