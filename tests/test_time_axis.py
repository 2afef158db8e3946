"""The time axis is declared, never guessed (NOTE [ The time axis ] in vlrnn_torch.cells)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_grads_close, grads_of, sq_loss
from torch import nn

import vlrnn_planner as vp
from vlrnn_torch import SequenceModule, StepCell

T, B, F, H = 20, 3, 4, 5


class Wrapped(nn.Module):
    """A custom module around a batch-first LSTM that declares nothing itself."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(F, H, batch_first=True)

    def forward(self, x, state):
        return self.lstm(x, state)


def _untouched(cell, rng):
    assert all(p.grad is None for p in cell.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_undeclared_module_is_refused_before_any_work():
    cell = Wrapped()
    x, y = torch.randn(B, T, F), torch.randn(B, T, H)
    rng = torch.get_rng_state()
    with pytest.raises(vp.TimeAxisError, match="time_dim=1 is likely") as info:
        vp.backward(vp.fixed_plan(4), cell, x, targets=y, loss_fn=sq_loss)
    assert isinstance(info.value, ValueError)
    _untouched(cell, rng)


def _reference(cell, x, y):
    params = list(cell.parameters())
    out, _ = cell(x, None)
    sq_loss(out, y).backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    return params, expected


@pytest.mark.parametrize("how", ["time_dim", "attribute", "wrapper"])
def test_each_way_of_declaring_it_is_exact(how):
    cell = Wrapped()
    x, y = torch.randn(B, T, F), torch.randn(B, T, H)
    params, expected = _reference(cell, x, y)
    kwargs = {}
    if how == "time_dim":
        kwargs["time_dim"] = 1
    elif how == "attribute":
        cell.batch_first = True
    else:
        cell = SequenceModule(cell, time_dim=1)
    vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss, **kwargs)
    assert_grads_close(params, expected)


def test_time_dim_against_batch_first_is_an_error():
    x = torch.randn(B, T, F)
    with pytest.raises(vp.TimeAxisError, match=r"time_dim=0 contradicts LSTM\(batch_first=True\)"):
        vp.backward(vp.fixed_plan(4), nn.LSTM(F, H, batch_first=True), x, loss_fn=lambda o, t: o.sum(), time_dim=0)
    cell = Wrapped()
    cell.batch_first = True
    with pytest.raises(vp.TimeAxisError, match="contradicts Wrapped.batch_first=True"):
        vp.backward(vp.fixed_plan(4), cell, x, loss_fn=lambda o, t: o.sum(), time_dim=0)
    with pytest.raises(vp.TimeAxisError, match="contradicts"):
        SequenceModule(nn.LSTM(F, H, batch_first=True), time_dim=0)
    with pytest.raises(vp.TimeAxisError, match="contradicts"):
        vp.backward(vp.fixed_plan(4), StepCell(nn.GRUCell(F, H), time_dim=0), x, loss_fn=lambda o, t: o.sum(),
                    time_dim=1)


def test_a_state_that_does_not_fit_the_axes_is_refused():
    """Cut along the wrong axis, the batch the state was given for does not match the inputs'."""
    cell = Wrapped()
    x = torch.randn(B, T, F)
    state = (torch.zeros(1, B, H), torch.zeros(1, B, H))
    with pytest.raises(vp.InvalidInputError, match="state"):
        # time_dim=0 takes the batch (3) for time and the 20 steps for the batch.
        vp.backward(vp.fixed_plan(2), cell, x, loss_fn=lambda o, t: o.sum(), time_dim=0, state=state)
    assert all(p.grad is None for p in cell.parameters())


def test_compiled_module_is_seen_through():
    lstm = nn.LSTM(F, H, batch_first=True)
    x, y = torch.randn(B, T, F), torch.randn(B, T, H)
    params = list(lstm.parameters())
    out, _ = lstm(x)
    sq_loss(out, y).backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    compiled = torch.compile(lstm, backend="eager")
    vp.backward(vp.fixed_plan(6), compiled, x, targets=y, loss_fn=sq_loss)
    assert_grads_close(params, expected)
    with pytest.raises(vp.InvalidInputError, match="bidirectional"):
        vp.backward(vp.fixed_plan(6), torch.compile(nn.GRU(F, H, bidirectional=True), backend="eager"),
                    torch.randn(T, B, F), loss_fn=lambda o, t: o.sum())
