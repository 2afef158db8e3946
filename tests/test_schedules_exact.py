"""Multi-level and binomial schedules through the executor: plain BPTT's gradients, and as many
cell calls as the reference simulator counts forward evaluations."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close_tree, assert_grads_close, grads_of, sq_loss
from torch import nn

import vlrnn_planner as vp
from vlrnn_planner.plan import Schedule
from vlrnn_planner.simulate import simulate_schedule
from vlrnn_planner.strategies import forward_evaluations


class Counting(nn.Module):
    """A sequence module that counts its forward calls (one per block evaluation)."""

    time_dim = 0

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x, state):
        self.calls += 1
        return self.inner(x, state)


def _reference(cell, x, y):
    cell.zero_grad(set_to_none=True)
    out, final = cell(x, None)
    loss = sq_loss(out, y)
    loss.backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    return loss.item(), final.detach(), expected


@pytest.mark.parametrize(
    "schedule",
    [
        dict(strategy="binomial", checkpoints=1),
        dict(strategy="binomial", checkpoints=2),
        dict(strategy="binomial", checkpoints=3),
        dict(strategy="multilevel", levels=(4,)),
        dict(strategy="multilevel", levels=(5, 2)),
        dict(strategy="blocks"),
    ],
    ids=str,
)
@pytest.mark.parametrize(("seq_len", "block_length"), [(37, 3), (40, 1), (12, 5)])
def test_strategies_match_plain_bptt_and_count_calls(schedule, seq_len, block_length):
    cell = Counting(nn.GRU(2, 3, 2))
    x, y = torch.randn(seq_len, 2, 2), torch.randn(seq_len, 2, 3)
    loss, final, expected = _reference(cell, x, y)
    sched = Schedule(seq_len=seq_len, block_length=block_length, **schedule)
    cell.calls = 0
    # verify=False: the first call would also run the cell to check it for effects per call.
    result = vp.backward(sched, cell, x, targets=y, loss_fn=sq_loss, verify=False)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_close_tree(result.state, final)
    assert_grads_close(list(cell.parameters()), expected)
    sim = simulate_schedule(sched)
    assert cell.calls == result.forward_evaluations == sim.forward_evaluations
    assert sim.forward_evaluations == forward_evaluations(
        sched.strategy, sched.num_blocks, checkpoints=sched.checkpoints, levels=sched.levels
    )


def test_fixed_plan_with_checkpoints_is_binomial_and_optimal():
    plan = vp.fixed_plan(block_length=10, checkpoints=3)
    sched = plan.schedule(seq_len=1000)
    assert sched.strategy == "binomial" and sched.num_blocks == 100
    sim = simulate_schedule(sched)
    assert sim.max_stored_states <= 3
    from vlrnn_planner.strategies import _optimal_forward_evaluations_dp

    assert sim.forward_evaluations == _optimal_forward_evaluations_dp(100, 3)


def test_dropout_replay_under_binomial():
    """Blocks are advanced several times; each time they must draw the same dropout masks."""
    cell = nn.LSTM(2, 3, 3, dropout=0.4)
    x, y = torch.randn(30, 2, 2), torch.randn(30, 2, 3)
    K = 3
    torch.manual_seed(3)
    state, loss = None, 0.0
    for start in range(0, 30, K):
        out, state = cell(x[start : start + K], state)
        loss = loss + sq_loss(out, y[start : start + K])
    loss.backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    result = vp.backward(vp.fixed_plan(K, checkpoints=2), cell, x, targets=y, loss_fn=sq_loss)
    assert result.schedule.strategy == "binomial"
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(list(cell.parameters()), expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [dict(strategy="binomial", checkpoints=6), dict(strategy="multilevel", levels=(10,))],
    ids=str,
)
def test_hundred_thousand_steps(schedule):
    T = 100_000
    cell = nn.RNN(1, 2)
    x, y = torch.randn(T, 1, 1), torch.randn(T, 1, 2)
    loss, final, expected = _reference(cell, x, y)
    sched = Schedule(seq_len=T, block_length=1000, **schedule)
    result = vp.backward(sched, cell, x, targets=y, loss_fn=sq_loss)
    # Over 10^5 steps the gradients reach ~1e4-1e5: compare relative to their size.
    scale = max(g.abs().max().item() for g in expected)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_close_tree(result.state, final)
    assert_grads_close(list(cell.parameters()), expected, atol=1e-12 * scale)
