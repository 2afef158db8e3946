"""Binomial checkpointing over a chain of unequal blocks: the DP of least recomputation time."""

from __future__ import annotations

import dataclasses
import math
import random
from functools import lru_cache

import pytest
import torch
from conftest import assert_close_tree, assert_grads_close, packed_reference, padded, sq_loss
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import vlrnn_planner as vp
from vlrnn_planner import strategies
from vlrnn_planner.errors import InvalidInputError
from vlrnn_planner.simulate import simulate, simulate_schedule


def brute_force(costs, c):
    """Least advance seconds, every split choice enumerated recursively (no tables, no closed form)."""

    @lru_cache(maxsize=None)
    def t(i, j, s):
        if j - i == 1:
            return 0.0
        if s < 1:
            return math.inf
        return min(sum(costs[i:m]) + t(m, j, s - 1) + t(i, m, s) for m in range(i + 1, j))

    return t(0, len(costs), c)


def walk(costs, c, splits, fb=1.0):
    return simulate(
        strategies.binomial_splits(len(costs), c, splits),
        len(costs),
        advance_seconds=lambda b: costs[b],
        fb_seconds=fb,
    )


def shrinking_costs(n, power=4.0):
    """Advance seconds of equal-step blocks over a batch that shrinks like (1 - t/T)^power."""
    return [1e-3 + (1 - b / n) ** power for b in range(n)]


@pytest.mark.parametrize("seed", range(40))
def test_dp_equals_brute_force(seed):
    rng = random.Random(seed)
    n, c = rng.randint(1, 8), rng.randint(1, 3)
    costs = [rng.choice([rng.random(), float(rng.randint(0, 5))]) for _ in range(n)]
    seconds, splits = strategies.chain_splits(costs, c)
    assert seconds == pytest.approx(brute_force(tuple(costs), c), rel=1e-12, abs=1e-12)
    sim = walk(costs, c, splits)
    assert sim.max_stored_states <= c
    assert sim.seconds == pytest.approx(seconds + n, rel=1e-12)  # the n ForwardBackwards at 1 s


@pytest.mark.parametrize(("n", "c"), [(1, 1), (2, 1), (5, 1), (9, 2), (20, 3), (30, 4), (40, 2), (12, 11), (25, 7)])
def test_equal_costs_give_the_binomial_count(n, c):
    seconds, splits = strategies.chain_splits([1.0] * n, c)
    closed = strategies.forward_evaluations("binomial", n, checkpoints=c)
    assert seconds + n == closed
    sim = walk([1.0] * n, c, splits)
    assert sim.forward_evaluations == closed
    assert sim.max_stored_states <= c


@pytest.mark.parametrize(("n", "c"), [(10, 2), (24, 3), (40, 5), (60, 3)])
def test_simulator_accepts_and_agrees_on_unequal_chains(n, c):
    rng = random.Random(n * 31 + c)
    costs = [rng.uniform(0.1, 3.0) for _ in range(n)]
    fb = [3 * a + 0.5 for a in costs]
    seconds, splits = strategies.chain_splits(costs, c)
    sched = vp.Schedule("binomial", seq_len=n, block_length=1, checkpoints=c, splits=splits)
    sim = simulate_schedule(sched, advance_seconds=lambda b: costs[b], fb_seconds=lambda b: fb[b])
    assert sim.max_stored_states <= c
    assert sim.seconds == pytest.approx(seconds + sum(fb), rel=1e-12)
    uniform = simulate_schedule(
        dataclasses.replace(sched, splits=()), advance_seconds=lambda b: costs[b], fb_seconds=lambda b: fb[b]
    )
    assert sim.seconds <= uniform.seconds * (1 + 1e-12)


def test_strictly_faster_on_a_strongly_shrinking_chain():
    n, c = 60, 3
    costs = shrinking_costs(n)
    seconds, splits = strategies.chain_splits(costs, c)
    uniform = simulate(strategies.binomial(n, c), n, advance_seconds=lambda b: costs[b])
    assert seconds < 0.8 * uniform.seconds
    assert walk(costs, c, splits, fb=0.0).seconds == pytest.approx(seconds, rel=1e-12)


def test_splits_checked():
    ok = strategies.chain_splits([3.0, 2.0, 1.0, 1.0], 2)[1]
    vp.Schedule("binomial", seq_len=4, block_length=1, checkpoints=2, splits=ok)
    with pytest.raises(InvalidInputError, match="need 3 entries"):
        vp.Schedule("binomial", seq_len=4, block_length=1, checkpoints=2, splits=ok[:2])
    with pytest.raises(InvalidInputError, match="strictly inside"):
        vp.Schedule("binomial", seq_len=4, block_length=1, checkpoints=2, splits=(4, 3, 2))
    with pytest.raises(InvalidInputError, match="left of checkpoints=1"):
        vp.Schedule("binomial", seq_len=4, block_length=1, checkpoints=1, splits=(1, 3, 2))
    with pytest.raises(InvalidInputError, match="for the binomial strategy"):
        vp.Schedule("blocks", seq_len=4, block_length=1, splits=ok)
    with pytest.raises(InvalidInputError, match="must hold ints"):
        vp.Schedule("binomial", seq_len=4, block_length=1, checkpoints=2, splits=(1.0, 3, 2))
    with pytest.raises(InvalidInputError, match="non-negative"):
        strategies.chain_splits([1.0, -1.0], 1)


def test_json_round_trip():
    costs = shrinking_costs(12)
    _, splits = strategies.chain_splits(costs, 3)
    s = vp.Schedule("binomial", seq_len=30, block_length=1, checkpoints=3, splits=splits,
                    boundaries=(0, 1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 25, 30))
    back = vp.Schedule.from_json(s.to_json())
    assert back == s and back.splits == splits
    assert list(back.actions) == list(s.actions)


@pytest.mark.parametrize("c", [1, 2, 3])
def test_executor_on_packed_sequence_matches_plain_bptt(c):
    torch.manual_seed(0)
    F, H = 3, 4
    lengths = [23, 17, 9, 4, 2]
    cell = nn.LSTM(F, H, 2)
    x = pack_padded_sequence(padded(lengths, F), lengths)
    y = pack_padded_sequence(padded(lengths, H), lengths)
    h0 = torch.randn(2, len(lengths), H, requires_grad=True)
    state = (h0, torch.randn(2, len(lengths), H))
    params = list(cell.parameters()) + [h0]
    loss, final, expected = packed_reference(cell, x, y, state, params)
    bounds = tuple(range(0, 23, 2)) + (23,)
    sizes = [sum(1 for n in lengths if n > t) for t in range(23)]
    costs = [sum(sizes[a:b]) ** 3 for a, b in zip(bounds, bounds[1:])]  # strongly uneven
    _, splits = strategies.chain_splits(costs, c)
    n = len(costs)
    assert c == 1 or list(strategies.binomial_splits(n, c, splits)) != list(strategies.binomial(n, c))
    schedule = vp.Schedule("binomial", seq_len=23, block_length=1, checkpoints=c, boundaries=bounds, splits=splits)
    result = vp.backward(schedule, cell, x, targets=y, loss_fn=sq_loss, state=state)
    assert math.isclose(result.loss, loss, rel_tol=1e-12, abs_tol=1e-10)
    assert_close_tree(result.state, final)
    assert_grads_close(params, expected)


def test_planner_schedules_with_splits_agree_with_simulator():
    from test_packed_planning import PROFILE, shrinking, simulated

    from vlrnn_planner.planner import plan_for_profile

    sizes = shrinking(800, 64, power=4.0)
    s = plan_for_profile(PROFILE, 14 * 10**6, search="full").schedule(800, 64, batch_sizes=sizes)
    assert s.strategy == "binomial" and s.splits
    sim = simulated(s, PROFILE, sizes, 64)
    assert math.ceil(sim.peak_bytes) == s.predicted_peak_bytes <= 14 * 10**6
    assert math.isclose(sim.seconds, s.predicted_seconds, rel_tol=1e-9)
    assert sim.max_stored_states <= s.checkpoints
    uniform = simulated(dataclasses.replace(s, splits=()), PROFILE, sizes, 64)
    assert s.predicted_seconds < uniform.seconds
