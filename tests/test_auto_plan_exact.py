"""A plan made by auto_plan, carried out by backward: plain BPTT's gradients, schedule cached."""

from __future__ import annotations

import math

import torch
from conftest import assert_close_tree, assert_grads_close, grads_of, sq_loss
from torch import nn

import vlrnn_planner as vp
from vlrnn_planner.cost import Workload


def test_auto_plan_backward_matches_plain_bptt_and_caches_the_schedule():
    cell = nn.LSTM(3, 8, 2)
    x, y = torch.randn(400, 4, 3), torch.randn(400, 4, 8)
    plan = vp.auto_plan(cell, budget="60MB", loss_fn=sq_loss, example_input=x[:16], example_target=y[:16])
    sched = plan.schedule(seq_len=400, batch_size=4)
    assert sched is plan.schedule(seq_len=400, batch_size=4)  # cached
    assert sched.predicted_peak_bytes <= 60e6
    out, final = cell(x)
    loss = sq_loss(out, y)
    loss.backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    result = vp.backward(plan, cell, x, targets=y, loss_fn=sq_loss)
    assert result.schedule is sched
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_close_tree(result.state, tuple(s.detach() for s in final))
    assert_grads_close(list(cell.parameters()), expected)


def test_tighter_budget_gives_shorter_blocks_and_same_gradients():
    cell = nn.GRU(3, 8)
    x, y = torch.randn(300, 2, 3), torch.randn(300, 2, 8)
    profile_plan = vp.auto_plan(cell, budget="1GB", loss_fn=sq_loss, example_input=x[:16], example_target=y[:16])
    roomy = profile_plan.schedule(seq_len=300, batch_size=2)
    floor = vp.planner.minimum_peak(profile_plan.profile, Workload(seq_len=300, batch_size=2)).peak_bytes
    assert roomy.strategy == "store_all"  # plain BPTT fits in a gigabyte
    # A tenth of the way from the smallest possible peak to plain BPTT's.
    tight_budget = floor + (roomy.predicted_peak_bytes - floor) // 10
    tight = vp.planner.plan_for_profile(profile_plan.profile, tight_budget).schedule(seq_len=300, batch_size=2)
    assert tight.strategy != "store_all" and tight.predicted_peak_bytes <= tight_budget
    out, _ = cell(x)
    sq_loss(out, y).backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    vp.backward(tight, cell, x, targets=y, loss_fn=sq_loss)
    assert_grads_close(list(cell.parameters()), expected)
