"""The reference simulator: invariant violations, memory model, seconds, doctests."""

from __future__ import annotations

import dataclasses
import doctest
import itertools
import math
import subprocess
import sys
import tracemalloc

import pytest

import vlrnn_planner as vp
import vlrnn_planner.simulate
import vlrnn_planner.strategies
from vlrnn_planner import Schedule
from vlrnn_planner.actions import Advance, ForwardBackward, Free
from vlrnn_planner.errors import InvalidInputError, InvalidTypeError, PlannerError, ScheduleError
from vlrnn_planner.simulate import (
    MemoryModel,
    MemoryPoint,
    Simulation,
    memory_trace,
    predicted_memory,
    schedule_statistics,
    simulate,
    simulate_schedule,
    walk,
    walk_schedule,
)
from vlrnn_planner.strategies import binomial, blocks, forward_evaluations, max_stored_states, multilevel

A, B, F = Advance, ForwardBackward, Free


def rejects(actions, n, match):
    with pytest.raises(ScheduleError, match=match) as info:
        simulate(actions, n)
    assert str(info.value).startswith("vlrnn_planner:")
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# one test per invariant


def test_valid_schedule_passes():
    sim = simulate([A(0, 2, (1,)), B(2), B(1), F(1), B(0), F(0)], 3)
    assert sim == Simulation(
        forward_evaluations=5, max_stored_states=2, peak_bytes=None, seconds=None, num_actions=6
    )


def test_advance_reads_a_state_not_at_hand():
    message = rejects([A(1, 2), B(1), B(0), F(0)], 2, r"action #0 .*boundary 1, which is neither stored")
    assert "stored: {0}" in message


def test_forward_backward_reads_a_state_not_at_hand():
    # The working state is at 2, but block 1 needs the state at 1, never stored.
    rejects([A(0, 2), B(2), B(1)], 3, r"action #2 ForwardBackward\(1\): reads the state at boundary 1")


def test_working_state_is_gone_after_forward_backward():
    rejects([A(0, 1), B(1), B(0), F(0)], 3, r"action #1 ForwardBackward\(1\): blocks are backpropagated")
    rejects([A(0, 2), B(2), A(2, 3)], 3, r"action #2 .*boundary 2, which is neither stored nor")


def test_save_outside_the_advance():
    rejects([A(0, 2, (3,))], 4, r"action #0 .*saves boundary 3, outside \(0, 2\]")
    rejects([A(1, 3, (1,))], 4, r"action #0 .*neither stored")  # start 1 not at hand
    rejects([A(0, 2, (1,)), A(1, 3, (1,))], 4, r"action #1 .*saves boundary 1, outside \(1, 3\]")


def test_storing_an_already_stored_state():
    rejects([A(0, 2, (1,)), B(2), A(0, 1, (1,))], 3, r"action #2 .*stores boundary 1, which is already stored")
    rejects([A(0, 2, (1, 1))], 3, r"action #0 .*stores boundary 1, which is already stored")


def test_freeing_a_state_not_stored():
    rejects([A(0, 1), B(1), F(1)], 2, r"action #2 Free\(1\): frees boundary 1, which is not stored")
    rejects([B(0), F(0), F(0)], 1, r"action #2 Free\(0\): frees boundary 0")


def test_forward_backward_out_of_order():
    rejects([A(0, 1, (1,)), B(0)], 3, r"action #1 ForwardBackward\(0\): .*ForwardBackward\(2\) must come next")


def test_forward_backward_twice():
    rejects([A(0, 1), B(1), B(1)], 2, r"action #2 ForwardBackward\(1\): block 1 was already backpropagated")


def test_blocks_missing_at_the_end():
    rejects([A(0, 1), B(1), F(0)], 2, r"ended after 3 actions with blocks 0..0 not backpropagated")
    rejects([], 2, r"ended after 0 actions with blocks 1..0")


def test_states_left_stored_at_the_end():
    rejects([A(0, 1, (1,)), B(1), B(0), F(0)], 2, r"boundaries \[1\] still stored")


def test_indexes_out_of_range():
    rejects([A(0, 4)], 3, r"action #0 Advance\(0, 4, save=\(\)\): needs 0 <= start < stop <= 3")
    rejects([A(0, 0)], 3, r"action #0 .*needs 0 <= start < stop")
    rejects([A(-1, 1)], 3, r"action #0 .*needs 0 <= start < stop")
    rejects([B(3)], 3, r"action #0 ForwardBackward\(3\): block 3 is outside 0..2")
    rejects([B(-1)], 3, r"action #0 .*outside 0..2")
    rejects([F(7)], 3, r"action #0 Free\(7\): boundary 7 is outside 0..3")


def test_not_an_action():
    with pytest.raises(InvalidTypeError, match=r"action #1 is 'B1' of type str"):
        simulate([A(0, 1), "B1"], 2)


def test_bad_arguments():
    with pytest.raises(InvalidInputError, match="n_blocks"):
        simulate([], 0)
    with pytest.raises(InvalidTypeError, match="state_bytes must be"):
        simulate(blocks(2), 2, state_bytes="10")
    with pytest.raises(InvalidInputError, match="needs state_bytes"):
        list(memory_trace(blocks(2), 2, state_bytes=None))
    assert issubclass(ScheduleError, PlannerError) and issubclass(ScheduleError, ValueError)


# ---------------------------------------------------------------------------------------------
# memory and time


def test_memory_trace_by_hand():
    # binomial(3, 1) with states of 10 (b+1) bytes at boundary b and blocks of 100 bytes:
    #   Advance(0, 2): stored {0} (10) + working at 1 (20), then at 2 (30)      -> peak 40, after 40
    #   FB(2): 10 + working 30 + block 100 + delta in at 3 (40)                 -> 180; holds delta 30
    #   Advance(0, 1): 10 + delta 30 + working at 1 (20)                        -> 60
    #   FB(1): 10 + working 20 + 100 + delta in 30                              -> 160; delta 20
    #   FB(0): stored 10 + 100 + delta in 20                                    -> 130; nothing held
    #   Free(0)                                                                 -> 0
    points = list(
        memory_trace(binomial(3, 1), 3, state_bytes=lambda b: 10 * (b + 1), block_bytes=100)
    )
    assert [(p.peak_bytes, p.bytes_after) for p in points] == [
        (40, 40), (180, 40), (60, 60), (160, 30), (130, 10), (10, 0)
    ]
    assert [p.action for p in points] == list(binomial(3, 1))
    assert isinstance(points[0], MemoryPoint)
    sim = simulate(
        binomial(3, 1), 3, state_bytes=lambda b: 10 * (b + 1), block_bytes=100, base_bytes=1000,
        advance_seconds=lambda b: b + 1, fb_seconds=10,
    )
    assert sim.peak_bytes == 1180
    assert sim.seconds == (1 + 2) + 1 + 3 * 10
    assert sim.forward_evaluations == 6


def test_peak_of_blocks_and_binomial_with_equal_states():
    # The peak is at the last block: every allowed state stored, the last block's input as the
    # working state, its activations, and the final-state gradient.
    state, block = 7, 1000
    for n in range(2, 40):
        for c in range(1, n + 1):
            sim = simulate(binomial(n, c), n, state_bytes=state, block_bytes=block)
            assert sim.peak_bytes == (max_stored_states("binomial", n, checkpoints=c) + 2) * state + block
        assert simulate(blocks(n), n, state_bytes=state, block_bytes=block).peak_bytes == (n + 1) * state + block
    assert simulate(blocks(1), 1, state_bytes=state, block_bytes=block).peak_bytes == 2 * state + block


def test_peak_follows_states_of_different_sizes():
    # A packed batch that shrinks: later states are smaller, so the peak is not (count x size).
    sizes = [100, 90, 80, 10, 10, 10]
    sim = simulate(blocks(5), 5, state_bytes=sizes.__getitem__, block_bytes=0)
    # The last block: states 0..3 stored, the working state at 4, the final-state gradient:
    # 300 bytes. But after ForwardBackward(2), states 0, 1 and 2 are still stored (270) and the
    # gradient at boundary 2 (80) is held: 350, the peak.
    sim_trace = list(memory_trace(blocks(5), 5, state_bytes=sizes.__getitem__))
    assert sim_trace[1].peak_bytes == 300
    assert sim.peak_bytes == sim_trace[4].peak_bytes == sim_trace[4].bytes_after == 350
    trace = list(memory_trace(blocks(5), 5, state_bytes=sizes.__getitem__))
    assert trace[0].bytes_after == sum(sizes[:5])


def test_memory_is_none_without_sizes_and_seconds_without_times():
    sim = simulate(multilevel(20, (5,)), 20)
    assert sim.peak_bytes is None and sim.seconds is None
    sim = simulate(multilevel(20, (5,)), 20, advance_seconds=1.0)
    assert sim.seconds == sim.forward_evaluations - 20


def test_simulate_schedule():
    sched = Schedule("multilevel", seq_len=200, block_length=10, levels=(4,))
    sim = simulate_schedule(sched, state_bytes=1, block_bytes=0)
    assert sim == simulate(multilevel(20, (4,)), 20, state_bytes=1, block_bytes=0)
    assert sim.max_stored_states == max_stored_states("multilevel", 20, levels=(4,))


# ---------------------------------------------------------------------------------------------
# the walk: what each action reads and stores, and who produced it


def test_walk_reads_stores_and_producers():
    # binomial(4, 2): A0-3[2] B3 B2 F2 A0-1[] B1 B0 F0, blocks of 5 steps, the last of 2
    steps = list(walk(binomial(4, 2), 4, boundary_step=lambda b: min(5 * b, 17)))
    assert [s.reads for s in steps] == [0, 3, 2, None, 0, 1, 0, None]
    assert [s.producer for s in steps] == [None, 0, 0, None, None, 4, None, None]
    assert [tuple(s.stores) for s in steps] == [(2,), (), (), (), (), (), (), ()]
    assert [s.stored_states for s in steps] == [2, 2, 2, 1, 1, 1, 1, 0]
    assert [s.forward_evaluations for s in steps] == [3, 1, 1, 0, 1, 1, 1, 0]
    assert [s.evaluated_steps for s in steps] == [15, 2, 5, 0, 5, 5, 5, 0]
    assert [s.index for s in steps] == list(range(8))


def test_walk_rejects_reading_a_missing_state():
    with pytest.raises(ScheduleError, match="boundary 1, which is neither stored nor the working state"):
        list(walk([A(0, 2), B(2), B(1)], 3))
    with pytest.raises(ScheduleError, match="frees boundary 2, which is not stored"):
        list(walk([F(2)], 3))
    with pytest.raises(InvalidTypeError, match="'jump' of type str"):
        list(walk(["jump"], 3))


def test_walk_without_checks_only_counts():
    # Neither checks nor memory: the stored states are counted, not listed, so the first action
    # of a 10^9-block schedule costs nothing.
    tracemalloc.start()
    try:
        head = list(itertools.islice(walk(blocks(10**9), 10**9, check=False), 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert [s.stored_states for s in head] == [10**9 - 1] * 3
    assert head[1].producer == 0  # the working state
    assert head[2].producer is None  # stored states are not followed without checks or memory
    # Unchecked, a broken schedule is walked as it comes, and the planner's memory still counts.
    steps = list(walk([A(0, 2), B(2), B(1)], 3, check=False, memory=MemoryModel(state_bytes=1)))
    assert len(steps) == 3


def test_walk_uniform_sizes_match_per_boundary_sizes():
    # One number for every state is counted in closed form within advances: the same bytes as
    # the block-by-block count of a function giving that number.
    for actions, n in ((blocks(9), 9), (binomial(30, 3), 30), (multilevel(40, (7, 3)), 40)):
        actions = list(actions)
        uniform = list(walk(actions, n, memory=MemoryModel(state_bytes=7, block_bytes=lambda b: 100 + b, base_bytes=3)))
        each = list(walk(actions, n, memory=MemoryModel(state_bytes=lambda b: 7, block_bytes=lambda b: 100 + b, base_bytes=3)))
        assert [(s.peak_bytes, s.bytes_after) for s in uniform] == [(s.peak_bytes, s.bytes_after) for s in each]


# ---------------------------------------------------------------------------------------------
# statistics: closed forms against the walk


def walked(schedule):
    memory = predicted_memory(schedule)
    steps = list(walk_schedule(schedule, memory=memory))
    peak = max(s.peak_bytes for s in steps) if memory is not None else None
    return (
        len(steps),
        sum(s.forward_evaluations for s in steps),
        sum(s.evaluated_steps for s in steps),
        sum(type(s.action) is ForwardBackward for s in steps),
        max(s.stored_states for s in steps),
        None if peak is None else math.ceil(peak),
    )


def grid():
    for seq_len in (1, 7, 40, 97):
        for k in (1, 3, 10, 40):
            n = -(-seq_len // k)
            yield Schedule("blocks", seq_len=seq_len, block_length=k)
            for c in range(1, n + 1):
                yield Schedule("binomial", seq_len=seq_len, block_length=k, checkpoints=c)
            for levels in ((2,), (5, 2), (3, 3, 1)):
                yield Schedule("multilevel", seq_len=seq_len, block_length=k, levels=levels)
    yield Schedule("store_all", seq_len=12, block_length=12)


PREDICTION = vp.Prediction(peak_bytes=1, seconds=0.0, state_bytes=7, block_bytes=300, fixed_bytes=1000)


@pytest.mark.parametrize("predicted", [False, True])
def test_statistics_closed_forms_match_the_walk(predicted):
    for schedule in grid():
        if predicted:
            schedule = dataclasses.replace(schedule, prediction=PREDICTION)
        stats = schedule_statistics(schedule)
        got = (stats.actions, stats.forward_evaluations, stats.evaluated_steps, stats.backward_blocks,
               stats.most_stored_states, stats.simulated_peak_bytes)
        assert got == walked(schedule), schedule
        assert stats.actions == 2 * schedule.num_blocks  # NOTE [ Two actions per block ]


def test_statistics_walk_unequal_blocks_and_splits():
    s = Schedule("binomial", seq_len=50, block_length=1, checkpoints=2, boundaries=(0, 3, 9, 20, 30, 41, 50))
    stats = schedule_statistics(s)
    assert stats.evaluated_steps == walked(s)[2] and stats.actions == 12
    # block b is evaluated as often as binomial(6, 2) evaluates it; every step of a block counts
    counts = [0] * 6
    for action in binomial(6, 2):
        for b in range(action.start, action.stop) if type(action) is A else [getattr(action, "block", None)]:
            if b is not None:
                counts[b] += 1
    lengths = [3, 6, 11, 10, 11, 9]
    assert stats.evaluated_steps == sum(c * n for c, n in zip(counts, lengths))
    split = Schedule("binomial", seq_len=8, block_length=2, checkpoints=2, splits=(1, 3, 2))
    assert schedule_statistics(split).forward_evaluations == walked(split)[1] == 3 + 1 + 4


def test_statistics_of_huge_schedules_in_closed_form():
    tracemalloc.start()
    try:
        blocks_stats = schedule_statistics(Schedule("blocks", seq_len=10**9, block_length=1))
        binomial_stats = schedule_statistics(Schedule("binomial", seq_len=10**15, block_length=1, checkpoints=3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert (blocks_stats.actions, blocks_stats.forward_evaluations, blocks_stats.most_stored_states) == (
        2 * 10**9, 2 * 10**9 - 1, 10**9 - 1)
    assert blocks_stats.evaluated_steps == 2 * 10**9 - 1
    assert binomial_stats.forward_evaluations == forward_evaluations("binomial", 10**15, checkpoints=3)
    assert binomial_stats.most_stored_states == 3 and binomial_stats.actions == 2 * 10**15


# ---------------------------------------------------------------------------------------------
# doctests (also run by `pytest --doctest-modules` on the core) and the framework-free core


@pytest.mark.parametrize("module", [vlrnn_planner.strategies, vlrnn_planner.simulate])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_core_does_not_import_torch():
    code = (
        "import sys; import vlrnn_planner.strategies, vlrnn_planner.simulate; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_invalid_schedule_with_sizes_is_a_schedule_error():
    # A local name once shadowed the helper that lists the stored states: TypeError instead.
    with pytest.raises(ScheduleError, match=r"action #2 ForwardBackward\(1\): reads the state at boundary 1"):
        simulate([A(0, 2), B(2), B(1)], 3, state_bytes=10, block_bytes=100)
