"""Packed batches that shrink: unequal blocks, per-block costs, and the planner's search over them."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LSTM_PROFILE, assert_close_tree, assert_grads_close, packed_reference, padded, sq_loss
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import vlrnn_planner as vp
from vlrnn_planner import CellProfile, InfeasibleBudgetError
from vlrnn_planner.cost import block_bytes
from vlrnn_planner.errors import InvalidInputError
from vlrnn_planner.planner import cut_by_sample_steps, plan_for_profile
from vlrnn_planner.simulate import simulate_schedule

F, H = 4, 5
LENGTHS = [23, 17, 9, 4, 2]

# Roughly an LSTM of 2 x 256, in whole numbers so that sums are exact.
PROFILE = LSTM_PROFILE


def shrinking(seq_len: int, batch: int, power: float = 2.0) -> tuple[int, ...]:
    """Sequences running at each step: a batch whose lengths fall off like ``(1 - t/T)^power``."""
    return tuple(max(1, math.ceil(batch * (1 - t / seq_len) ** power)) for t in range(seq_len))


def simulated(schedule: vp.Schedule, profile: CellProfile, sizes, batch: int):
    """The reference simulator with per-block costs written out here, independently of the planner."""
    prefix = [0]
    for b in sizes:
        prefix.append(prefix[-1] + b)

    def sample_steps(b):
        start, stop = schedule.block_steps(b)
        return prefix[stop] - prefix[start]

    def steps(b):
        start, stop = schedule.block_steps(b)
        return stop - start

    p = profile
    state = p.state_bytes_per_sample * batch + p.state_bytes_fixed
    base = p.parameter_bytes + p.gradient_bytes + math.ceil(p.input_bytes_per_step * prefix[-1])
    return simulate_schedule(
        schedule,
        state_bytes=state,
        block_bytes=lambda b: block_bytes(p, sample_steps(b)),
        base_bytes=base,
        advance_seconds=lambda b: steps(b) * p.advance_seconds_per_step
        + sample_steps(b) * p.advance_seconds_per_step_per_sample
        + p.block_overhead_seconds,
        fb_seconds=lambda b: steps(b) * p.fb_seconds_per_step
        + sample_steps(b) * p.fb_seconds_per_step_per_sample
        + p.block_overhead_seconds,
    )


# -- unequal blocks ----------------------------------------------------------------------------


def test_schedule_with_boundaries():
    s = vp.Schedule("blocks", seq_len=10, block_length=3, boundaries=[0, 1, 4, 10])
    assert s.boundaries == (0, 1, 4, 10)
    assert s.num_blocks == 3 and s.block_length == 6  # the longest block
    assert [s.block_steps(b) for b in range(3)] == [(0, 1), (1, 4), (4, 10)]
    with pytest.raises(IndexError):
        s.block_steps(3)
    assert "unequal blocks: 1 to 6 steps" in str(s)
    assert vp.Schedule("binomial", seq_len=10, block_length=1, checkpoints=1, boundaries=(0, 1, 4, 10)).num_blocks == 3


@pytest.mark.parametrize(
    ("boundaries", "fragment"),
    [
        ((1, 10), "start at step 0"),
        ((0, 5), "end at seq_len=10"),
        ((0, 5, 5, 10), "must increase"),
        ((0, 2.5, 10), "must hold ints"),
        ((0,), "at least a start and an end"),
        ("0,10", "sequence of ints"),
    ],
)
def test_boundaries_checked(boundaries, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        vp.Schedule("blocks", seq_len=10, block_length=1, boundaries=boundaries)


def test_store_all_is_one_block():
    with pytest.raises(InvalidInputError, match="store_all is one block"):
        vp.Schedule("store_all", seq_len=10, block_length=10, boundaries=(0, 5, 10))
    assert vp.Schedule("store_all", seq_len=10, block_length=10, boundaries=(0, 10)).boundaries == ()


def test_json_round_trip_with_boundaries():
    s = vp.Schedule("binomial", seq_len=50, block_length=1, checkpoints=2, boundaries=(0, 3, 9, 20, 50), batch_size=4)
    back = vp.Schedule.from_json(s.to_json())
    assert back == s and isinstance(back.boundaries, tuple)
    assert list(back.actions) == list(s.actions)


@pytest.mark.parametrize(
    ("strategy", "checkpoints", "boundaries"),
    [
        ("blocks", None, (0, 2, 7, 15, 23)),
        ("blocks", None, (0, 1, 22, 23)),
        ("binomial", 1, (0, 3, 5, 9, 16, 23)),
        ("binomial", 2, tuple(range(0, 23, 2)) + (23,)),
    ],
)
@pytest.mark.parametrize("sort", [True, False])
def test_unequal_blocks_through_executor_match_plain_bptt(strategy, checkpoints, boundaries, sort):
    torch.manual_seed(0)
    lengths = LENGTHS if sort else [9, 23, 2, 17, 4]
    cell = nn.LSTM(F, H, 2)
    x = pack_padded_sequence(padded(lengths, F), lengths, enforce_sorted=sort)
    y = pack_padded_sequence(padded(lengths, H), lengths, enforce_sorted=sort)
    h0 = torch.randn(2, len(lengths), H, requires_grad=True)
    state = (h0, torch.randn(2, len(lengths), H))
    params = list(cell.parameters()) + [h0]
    loss, final, expected = packed_reference(cell, x, y, state, params)
    schedule = vp.Schedule(strategy, seq_len=23, block_length=1, checkpoints=checkpoints, boundaries=boundaries)
    result = vp.backward(schedule, cell, x, targets=y, loss_fn=sq_loss, state=state)
    assert math.isclose(result.loss, loss, rel_tol=1e-12, abs_tol=1e-10)
    assert_close_tree(result.state, final)
    assert_grads_close(params, expected)


# -- planning with per-block costs ---------------------------------------------------------------


def test_cut_by_sample_steps():
    assert cut_by_sample_steps([4, 4, 2, 2, 1, 1, 1, 1], 4) == (0, 1, 2, 4, 8)
    assert cut_by_sample_steps([4, 4, 2], 1) == (0, 1, 2, 3)  # a step over the cap is a block
    assert cut_by_sample_steps([3, 2, 1], 100) == (0, 3)


@pytest.mark.parametrize("budget_mb", [20, 25, 30, 40, 60, 100, 200])
def test_planner_matches_simulator_and_budget(budget_mb):
    sizes = shrinking(3000, 32)
    s = plan_for_profile(PROFILE, budget_mb * 10**6).schedule(3000, 32, batch_sizes=sizes)
    assert s.predicted_peak_bytes <= budget_mb * 10**6
    assert sum(size for _, size in s.memory_parts) == s.predicted_peak_bytes
    sim = simulated(s, PROFILE, sizes, 32)
    assert math.ceil(sim.peak_bytes) == s.predicted_peak_bytes
    assert math.isclose(sim.seconds, s.predicted_seconds, rel_tol=1e-9)
    if s.checkpoints is not None:
        assert sim.max_stored_states <= s.checkpoints


@pytest.mark.parametrize("budget_mb", [20, 25, 30, 40, 60, 100])
def test_never_slower_than_the_widest_block_plan(budget_mb):
    sizes = shrinking(3000, 32)
    plan = plan_for_profile(PROFILE, budget_mb * 10**6)
    packed = plan.schedule(3000, 32, batch_sizes=sizes)
    widest = plan.schedule(3000, 32)  # as if every step ran the whole batch
    priced = simulated(widest, PROFILE, sizes, 32)  # the same schedule, priced block by block
    assert priced.peak_bytes <= budget_mb * 10**6
    assert packed.predicted_seconds <= priced.seconds * (1 + 1e-12)


def test_uniform_blocks_never_beat_it():
    """Exhaustive over equal-step blocks (blocks strategy) at a budget where memory binds."""
    sizes = shrinking(600, 32, power=3.0)
    budget = 22 * 10**6
    s = plan_for_profile(PROFILE, budget).schedule(600, 32, batch_sizes=sizes)
    fastest = math.inf
    for k in range(1, 600):
        sim = simulated(vp.Schedule("blocks", seq_len=600, block_length=k), PROFILE, sizes, 32)
        if sim.peak_bytes <= budget:
            fastest = min(fastest, sim.seconds)
    assert s.predicted_seconds <= fastest * (1 + 1e-12)


def test_strictly_better_on_a_strongly_shrinking_batch():
    sizes = shrinking(5000, 64, power=4.0)
    budget = 40 * 10**6
    plan = plan_for_profile(PROFILE, budget)
    packed = plan.schedule(5000, 64, batch_sizes=sizes)
    widest = plan.schedule(5000, 64)
    priced = simulated(widest, PROFILE, sizes, 64)
    assert packed.boundaries  # unequal blocks won
    assert packed.predicted_seconds < 0.95 * priced.seconds
    lengths = [b - a for a, b in zip(packed.boundaries, packed.boundaries[1:])]
    assert lengths[0] < lengths[-1]  # the wide head is cut finer than the thin tail


def test_infeasible_with_shrinking_batch():
    sizes = shrinking(3000, 32)
    with pytest.raises(InfeasibleBudgetError):
        plan_for_profile(PROFILE, 7 * 10**6).schedule(3000, 32, batch_sizes=sizes)


def test_constant_batch_sizes_plan_as_before():
    plan = plan_for_profile(PROFILE, 60 * 10**6)
    a = plan.schedule(2000, 8, batch_sizes=(8,) * 2000)
    b = plan_for_profile(PROFILE, 60 * 10**6).schedule(2000, 8)
    assert (a.strategy, a.block_length, a.boundaries) == (b.strategy, b.block_length, ())


def test_backward_plans_a_packed_batch_with_unequal_blocks():
    """vp.backward resolves the plan with the PackedSequence's batch sizes."""
    torch.manual_seed(1)
    lengths = [40, 30, 6, 3, 2, 1]
    cell = nn.GRU(F, H)
    x = pack_padded_sequence(padded(lengths, F), lengths)
    y = pack_padded_sequence(padded(lengths, H), lengths)
    small = CellProfile(
        state_bytes_per_sample=40.0,
        activation_bytes_per_step=1000.0,
        advance_seconds_per_step=1e-5,
        fb_seconds_per_step=3e-5,
        fb_seconds_per_step_per_sample=1e-5,
        block_overhead_seconds=1e-5,
    )
    plan = plan_for_profile(small, 30_000)
    params = list(cell.parameters())
    loss, _, expected = packed_reference(cell, x, y, None, params)
    result = vp.backward(plan, cell, x, targets=y, loss_fn=sq_loss)
    assert result.schedule.boundaries and result.schedule.num_blocks > 1
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(params, expected)
