"""Schedule strategies: golden traces, closed forms against walks and the plain DP, laziness."""

from __future__ import annotations

import itertools
import random
import tracemalloc

import pytest

from vlrnn_planner import Schedule
from vlrnn_planner.actions import LONG_SAVE, Advance, BoundaryRuns, ForwardBackward, Free, join_saves
from vlrnn_planner.errors import InvalidInputError, InvalidTypeError
from vlrnn_planner.simulate import simulate
from vlrnn_planner.strategies import (
    STRATEGIES,
    _beta,
    _binomial_advance_evaluations,
    _binomial_split,
    _optimal_forward_evaluations_dp,
    binomial,
    blocks,
    forward_evaluations,
    generate,
    max_stored_states,
    multilevel,
    store_all,
)


def trace(actions) -> str:
    """A schedule as one short line: A0-3[2] advance 0..3 saving 2, B3 ForwardBackward(3), F2 Free(2)."""
    parts = []
    for action in actions:
        if isinstance(action, Advance):
            parts.append(f"A{action.start}-{action.stop}[{','.join(map(str, action.save))}]")
        elif isinstance(action, ForwardBackward):
            parts.append(f"B{action.block}")
        else:
            parts.append(f"F{action.boundary}")
    return " ".join(parts)


def walked_evaluations(actions) -> int:
    total = 0
    for action in actions:
        if type(action) is Advance:
            total += action.stop - action.start
        elif type(action) is ForwardBackward:
            total += 1
    return total


# ---------------------------------------------------------------------------------------------
# golden traces, derived by hand from t(l, s) = min_m m + t(l-m, s-1) + t(m, s) with the split m
# the largest optimal one: with r the least integer such that beta(s, r) = C(s+r, s) >= l,
# m = min(beta(s, r-1), l - beta(s-1, r-1)); a range of l <= s + 1 blocks is the blocks pattern.

GOLDEN = {
    # n=4, c=2: r=2 (beta(2,1)=3 < 4 <= 6). m = min(beta(2,1)=3, 4-beta(1,1)=2) = 2: store 2 on
    # the way to 3; the tail 2..3 has one slot (boundary 2) and two blocks: B3 from the working
    # state, B2 from 2; then the head 0..1 (2 blocks, 2 slots): A0-1, B1, B0.
    # Advances 3 + 1 = 4 = r*n - beta(3, 1) = 8 - 4.
    ("binomial", 4, 2): "A0-3[2] B3 B2 F2 A0-1[] B1 B0 F0",
    # n=6, c=2: r=2 (3 < 6 <= 6). m = min(3, 6-2) = 3: store 3. Tail 3..5 with one slot is
    # c=1: A3-5 B5, A3-4 B4, B3. Head 0..2 with two slots: beta(2,1)=3 >= 3 so r=1, blocks:
    # A0-2 storing 1. Advances 5 + 1 + 2 = 8 = 2*6 - beta(3, 1).
    ("binomial", 6, 2): "A0-5[3] B5 A3-4[] B4 B3 F3 A0-2[1] B2 B1 F1 B0 F0",
    # n=5, c=3: r=2 (beta(3,1)=4 < 5 <= 10). m = min(beta(3,1)=4, 5-beta(2,1)=2) = 2: store 2.
    # Tail 2..4 with 2 slots is r=1, blocks: store 3, B4 from the working state, B3, B2.
    # Head 0..1: A0-1, B1, B0. Advances 4 + 1 = 5 = 2*5 - beta(4, 1); 3 states held (0, 2, 3).
    ("binomial", 5, 3): "A0-4[2,3] B4 B3 F3 B2 F2 A0-1[] B1 B0 F0",
    # c=1 is the quadratic schedule: every block re-advanced from the initial state.
    ("binomial", 4, 1): "A0-3[] B3 A0-2[] B2 A0-1[] B1 B0 F0",
    # n=7, c=2: r=3 (beta(2,2)=6 < 7 <= 10). m = min(beta(2,2)=6, 7-beta(1,2)=4) = 4: store 4.
    # Tail 4..6 with one slot: c=1. Head 0..3 with two slots: the n=4, c=2 case above.
    # Advances 6+1 + 3+1 = 11 = 3*7 - beta(3, 2).
    ("binomial", 7, 2): "A0-6[4] B6 A4-5[] B5 B4 F4 A0-3[2] B3 B2 F2 A0-1[] B1 B0 F0",
    ("binomial", 1, 1): "B0 F0",
    ("binomial", 2, 1): "A0-1[] B1 B0 F0",
    ("blocks", 1, None): "B0 F0",
    ("blocks", 4, None): "A0-3[1,2] B3 B2 F2 B1 F1 B0 F0",
    # Segments of 3: the sweep stores 0, 3, 6; block 6 alone runs from the working state;
    # segment 3..5 is re-advanced storing 4; segment 0..2 storing 1.
    ("multilevel", 7, (3,)): "A0-6[3] B6 A3-5[4] B5 B4 F4 B3 F3 A0-2[1] B2 B1 F1 B0 F0",
    # Segments of 3 over 9 blocks: the sweep runs on into the last segment (6..8, storing 7).
    ("multilevel", 9, (3,)): "A0-8[3,6,7] B8 B7 F7 B6 F6 A3-5[4] B5 B4 F4 B3 F3 A0-2[1] B2 B1 F1 B0 F0",
    # Levels (4, 2) over 10 blocks: the sweep stores 4 and 8 (pieces 0-3, 4-7, 8-9) and runs on
    # into piece 8-9, which the inner level of 2 does not cut (blocks pattern). Pieces 4-7 and
    # 0-3 are each cut in two by the inner level: store 6, reverse 6-7, then 4-5; likewise 0-3.
    ("multilevel", 10, (4, 2)): (
        "A0-9[4,8] B9 B8 F8 A4-7[6] B7 B6 F6 A4-5[] B5 B4 F4 A0-3[2] B3 B2 F2 A0-1[] B1 B0 F0"
    ),
    ("multilevel", 5, ()): "A0-4[1,2,3] B4 B3 F3 B2 F2 B1 F1 B0 F0",
    ("multilevel", 3, (1,)): "A0-2[1] B2 B1 F1 B0 F0",
    ("multilevel", 1, (4, 2)): "B0 F0",
}


def _make(strategy: str, n: int, param):
    if strategy == "binomial":
        return binomial(n, param)
    if strategy == "multilevel":
        return multilevel(n, param)
    if strategy == "blocks":
        return blocks(n)
    raise AssertionError(strategy)


@pytest.mark.parametrize("key", list(GOLDEN), ids=[f"{s}-{n}-{p}" for s, n, p in GOLDEN])
def test_golden_trace(key):
    strategy, n, param = key
    expected = GOLDEN[key]
    assert trace(_make(strategy, n, param)) == expected
    kwargs = {"checkpoints": param} if strategy == "binomial" else {}
    if strategy == "multilevel":
        kwargs = {"levels": param}
    sim = simulate(_make(strategy, n, param), n)
    assert sim.forward_evaluations == forward_evaluations(strategy, n, **kwargs)
    assert sim.max_stored_states == max_stored_states(strategy, n, **kwargs)


def test_golden_costs_by_hand():
    # Advances plus one per block, as derived in the comments of GOLDEN.
    assert forward_evaluations("binomial", 4, checkpoints=2) == 4 + 4
    assert forward_evaluations("binomial", 6, checkpoints=2) == 8 + 6
    assert forward_evaluations("binomial", 5, checkpoints=3) == 5 + 5
    assert forward_evaluations("binomial", 7, checkpoints=2) == 11 + 7
    assert forward_evaluations("multilevel", 10, levels=(4, 2)) == 17 + 10


def test_store_all():
    assert list(store_all()) == [ForwardBackward(0), Free(0)]
    assert forward_evaluations("store_all", 1) == 1 and max_stored_states("store_all", 1) == 1
    with pytest.raises(InvalidInputError, match="store_all is one block"):
        store_all(3)


# ---------------------------------------------------------------------------------------------
# binomial: optimality and closed forms


def test_binomial_matches_dp_and_walk_small():
    for c in range(1, 9):
        for n in range(1, 81):
            closed = forward_evaluations("binomial", n, checkpoints=c)
            assert walked_evaluations(binomial(n, c)) == closed, (n, c)
            assert _optimal_forward_evaluations_dp(n, c) == closed, (n, c)


def test_binomial_closed_form_full_grid():
    """Closed form == the generator's own recursion for every n <= 2000 and c <= 40.

    The generator advances ``_binomial_split(l, s)`` blocks, reverses the tail with ``s - 1``
    slots, then the head with ``s``; summing that recursion (memoised on (l, s), since a
    sub-schedule does not depend on where it starts) gives exactly the walked count of every
    schedule of the grid without materialising its ~10^8 actions. The test below walks a sample
    of the same grid action by action.
    """
    n_max, c_max = 2000, 40
    # cost[s][l]: advances of the generated schedule for l blocks with s slots.
    cost = [[0] * (n_max + 1) for _ in range(c_max + 1)]
    for s in range(1, c_max + 1):
        row, below = cost[s], cost[s - 1]
        for length in range(2, n_max + 1):
            if length <= s + 1:
                row[length] = length - 1  # the blocks pattern
                continue
            m = _binomial_split(length, s)
            assert 1 <= m < length
            assert length - m == 1 or s > 1, "a tail of several blocks needs a slot"
            row[length] = m + below[length - m] + row[m]
        for length in range(1, n_max + 1):
            assert row[length] == _binomial_advance_evaluations(length, s), (length, s)
            assert row[length] + length == forward_evaluations("binomial", length, checkpoints=s)


def test_binomial_walked_equals_closed_form_sample():
    """Walk schedules action by action over the n <= 2000, c <= 40 grid: all n <= 120, and for
    larger n the values around each beta(c, r) (where the repetition count changes) and a seeded
    random sample."""
    rng = random.Random(20000)
    for c in range(1, 41):
        ns = set(range(1, 121))
        for r in range(1, 2000):
            edge = _beta(c, r)
            if edge > 2000:
                break
            if edge > 120 and (c > 1 or r % 97 == 0):
                ns.update({edge - 1, edge, edge + 1} & set(range(121, 2001)))
        ns.update(rng.sample(range(121, 2001), 10))
        ns.add(2000)
        for n in sorted(ns):
            assert walked_evaluations(binomial(n, c)) == forward_evaluations(
                "binomial", n, checkpoints=c
            ), (n, c)


def test_binomial_closed_form_matches_known_values():
    # t(l, 1) = l(l - 1)/2 and c >= n - 1 is the blocks cost 2n - 1.
    for n in range(1, 300):
        assert forward_evaluations("binomial", n, checkpoints=1) == n * (n - 1) // 2 + n
        for c in (n - 1, n, n + 5):
            if c >= 1:
                assert forward_evaluations("binomial", n, checkpoints=c) == 2 * n - 1
    # n=10, c=3: r=2 (beta(3,1)=4 < 10 <= beta(3,2)=10), r*n - beta(4, 1) = 20 - 5 advances.
    assert forward_evaluations("binomial", 10, checkpoints=3) == 2 * 10 - 5 + 10


def test_binomial_large_c_is_blocks():
    for n in range(1, 31):
        for c in (n - 1, n, 2 * n):
            if c >= 1:
                assert list(binomial(n, c)) == list(blocks(n)), (n, c)


def test_binomial_is_lazy():
    # The first actions of a 10^7-block schedule cost almost no memory: nothing is materialised.
    for c in (1, 2, 3, 40, 1000):
        tracemalloc.start()
        try:
            head = list(itertools.islice(binomial(10**7, c), 100))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2**20, (c, peak)
        assert len(head) == 100
        assert isinstance(head[0], Advance) and head[0].start == 0 and len(head[0].save) < c
        assert head[1] == ForwardBackward(10**7 - 1)
    assert forward_evaluations("binomial", 10**9, checkpoints=50) > 10**9


def test_long_saves_are_runs_not_tuples():
    # The blocks pattern over 10^9 blocks stores 10^9 - 2 states in its first action: held as
    # runs, it costs no memory until walked.
    for actions in (blocks(10**9), multilevel(10**9, (10, 3)), binomial(10**9, 10**9)):
        tracemalloc.start()
        try:
            head = list(itertools.islice(actions, 3))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2**20, peak
        assert isinstance(head[0].save, BoundaryRuns) and len(head[0].save) > LONG_SAVE
    save = next(blocks(10**9)).save
    assert len(save) == 10**9 - 2 and save[0] == 1 and save[-1] == 10**9 - 2 and 5 in save
    # Runs compare and hash as the tuple of their boundaries, whatever they are made of.
    n = LONG_SAVE + 10
    run = next(blocks(n))
    assert isinstance(run.save, BoundaryRuns)
    assert run == Advance(0, n - 1, tuple(range(1, n - 1))) and hash(run) == hash(Advance(0, n - 1, tuple(range(1, n - 1))))
    assert run.save[2:5] == (3, 4, 5) and run.save != (1, 2)
    assert BoundaryRuns([range(1, 3), (3,)]) == BoundaryRuns([(1,), range(2, 4)])
    # Short saves stay tuples, so small schedules read as before.
    assert next(blocks(5)).save == (1, 2, 3) and type(next(blocks(5)).save) is tuple
    assert join_saves((1, 2), range(3, 5)) == (1, 2, 3, 4)
    # Walked, a long run is the same schedule as its tuple.
    sim = simulate(multilevel(3 * LONG_SAVE, (2,)), 3 * LONG_SAVE)
    assert sim.forward_evaluations == forward_evaluations("multilevel", 3 * LONG_SAVE, levels=(2,))


def test_binomial_stack_stays_small():
    # A deep instance walked to the end: no recursion, so no RecursionError.
    sim = simulate(binomial(20000, 3), 20000)
    assert sim.forward_evaluations == forward_evaluations("binomial", 20000, checkpoints=3)
    assert sim.max_stored_states == 3


# ---------------------------------------------------------------------------------------------
# every strategy through the simulator


LEVELS = [(), (1,), (2,), (3,), (5,), (8,), (4, 2), (7, 3), (2, 3), (10, 3, 2), (60,), (16, 4, 2, 1)]


def test_all_strategies_through_simulator():
    for n in range(1, 61):
        cases = [("blocks", {})]
        if n == 1:
            cases.append(("store_all", {}))
        cases += [("binomial", {"checkpoints": c}) for c in range(1, n + 2)]
        cases += [("multilevel", {"levels": levels}) for levels in LEVELS]
        for strategy, kwargs in cases:
            if strategy == "binomial":
                actions = binomial(n, kwargs["checkpoints"])
            elif strategy == "multilevel":
                actions = multilevel(n, kwargs["levels"])
            elif strategy == "store_all":
                actions = store_all(n)
            else:
                actions = blocks(n)
            sim = simulate(actions, n)
            where = (strategy, n, kwargs)
            assert sim.forward_evaluations == forward_evaluations(strategy, n, **kwargs), where
            assert sim.max_stored_states == max_stored_states(strategy, n, **kwargs), where
            if strategy == "binomial":
                assert sim.max_stored_states <= kwargs["checkpoints"], where


def test_binomial_never_worse_than_multilevel_with_as_many_states():
    for n in range(1, 61):
        for levels in LEVELS:
            peak = max_stored_states("multilevel", n, levels=levels)
            assert forward_evaluations("binomial", n, checkpoints=peak) <= forward_evaluations(
                "multilevel", n, levels=levels
            )


def test_multilevel_closed_forms_large():
    # Closed forms at sizes where walking is still cheap, against the walk.
    for n, levels in [(10_000, (100,)), (9_999, (100, 10)), (12_345, (1000, 37, 5))]:
        sim = simulate(multilevel(n, levels), n)
        assert sim.forward_evaluations == forward_evaluations("multilevel", n, levels=levels)
        assert sim.max_stored_states == max_stored_states("multilevel", n, levels=levels)
    # One level of S dividing n: about 3n evaluations, n/S + S - 2 states.
    assert forward_evaluations("multilevel", 10_000, levels=(100,)) == 3 * 10_000 - 100 - 100
    assert max_stored_states("multilevel", 10_000, levels=(100,)) == 100 + 100 - 2


# ---------------------------------------------------------------------------------------------
# dispatch and argument checks


def test_strategies_tuple():
    assert STRATEGIES == ("store_all", "blocks", "multilevel", "binomial")


def test_generate_from_schedule():
    sched = Schedule("binomial", seq_len=95, block_length=10, checkpoints=3)
    assert list(generate(sched)) == list(binomial(10, 3))
    assert list(sched.actions) == list(binomial(10, 3))
    sched = Schedule("multilevel", seq_len=70, block_length=10, levels=(3,))
    assert list(generate(sched)) == list(multilevel(7, (3,)))
    assert list(generate(Schedule("blocks", seq_len=30, block_length=10))) == list(blocks(3))
    assert list(generate(Schedule("store_all", seq_len=30, block_length=10))) == list(store_all())


def test_invalid_arguments():
    with pytest.raises(InvalidInputError, match="at least one block"):
        binomial(0, 3)
    with pytest.raises(InvalidInputError, match="checkpoints must be at least 1"):
        binomial(5, 0)
    with pytest.raises(InvalidInputError, match="needs checkpoints"):
        forward_evaluations("binomial", 5)
    with pytest.raises(InvalidTypeError, match="checkpoints must be an int"):
        binomial(5, 2.0)
    with pytest.raises(InvalidInputError, match="every level"):
        multilevel(5, (3, 0))
    with pytest.raises(InvalidTypeError, match="levels must be a sequence"):
        multilevel(5, 3)
    with pytest.raises(InvalidInputError, match="unknown strategy 'revolve'"):
        forward_evaluations("revolve", 5)
    with pytest.raises(InvalidInputError, match="unknown strategy"):
        max_stored_states("revolve", 5)
    with pytest.raises(InvalidInputError, match="at least one block"):
        blocks(0)
    # Errors come at the call, not at the first next().
    with pytest.raises(InvalidInputError):
        multilevel(-1, ())


def test_closed_form_is_the_optimum_for_n_to_2000_and_c_to_40():
    """The issue's target, checked against the optimum itself: a dynamic program over every split
    (Griewank & Walther's recursion, vectorised over the split with torch) for all n <= 2000 and
    c <= 40 equals the closed form the generator and the planner use."""
    torch = pytest.importorskip("torch")
    n_max, c_max = 2000, 40
    inf = torch.iinfo(torch.int64).max // 4
    # F[c][n]: fewest advance evaluations to reverse n blocks from a stored state with c slots.
    prev = torch.full((n_max + 1,), inf, dtype=torch.int64)
    prev[1] = 0  # c = 0: only a single block, run from the working state
    for c in range(1, c_max + 1):
        cur = torch.full((n_max + 1,), inf, dtype=torch.int64)
        cur[1] = 0
        for n in range(2, n_max + 1):
            m = torch.arange(1, n, dtype=torch.int64)
            cur[n] = (m + prev[n - m] + cur[1:n]).min()
        expected = [forward_evaluations("binomial", n, checkpoints=c) - n for n in range(1, n_max + 1)]
        assert cur[1:].tolist() == expected, f"c={c}"
        prev = cur
