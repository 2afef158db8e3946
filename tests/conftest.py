"""Shared helpers: plain BPTT references in float64."""

from __future__ import annotations

import pytest
import torch

from vlrnn_planner.profile import CellProfile

torch.set_default_dtype(torch.float64)

ATOL = 1e-10

# Roughly an LSTM of 2 x 256 on a CPU (numbers of the order the profiler measures).
LSTM_PROFILE = CellProfile(
    cell="LSTM(4, 256, num_layers=2)",
    parameter_bytes=3_200_000,
    gradient_bytes=3_200_000,
    state_bytes_per_sample=4096.0,
    state_bytes_fixed=5056.0,
    input_bytes_per_step=16.0,
    activation_bytes_per_step=20_000.0,
    activation_bytes_fixed=1_000_000.0,
    transient_bytes_per_step=3_000.0,
    transient_bytes_fixed=500_000.0,
    advance_seconds_per_step=4e-5,
    advance_seconds_per_step_per_sample=5e-6,
    fb_seconds_per_step=1e-4,
    fb_seconds_per_step_per_sample=2e-5,
    block_overhead_seconds=2e-4,
)


def sq_loss(outputs, targets):
    """A sum-reduced loss: the total over blocks equals the loss over the whole sequence."""
    return ((outputs - targets) ** 2).sum()


def padded(lengths, feat):
    """A time-major padded batch of random sequences of the given lengths (zeros past the end)."""
    x = torch.zeros(max(lengths), len(lengths), feat)
    for i, n in enumerate(lengths):
        x[:n, i] = torch.randn(n, feat)
    return x


def packed_reference(cell, x, y, state, params):
    """Plain BPTT of ``cell`` over a packed batch: (loss, detached final state, grads of params).

    Leaves every ``params`` grad at None afterwards, ready for the call under test.
    """
    out, final = cell(x, state)
    loss = sq_loss(out.data, y.data)
    loss.backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    detached = final.detach() if isinstance(final, torch.Tensor) else tuple(t.detach() for t in final)
    return loss.item(), detached, expected


def grads_of(params):
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def assert_close_tree(a, b, atol=ATOL):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close_tree(a[k], b[k], atol)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close_tree(x, y, atol)
    else:
        assert a is None and b is None


def assert_grads_close(params, expected, atol=ATOL):
    for i, (p, g) in enumerate(zip(params, expected)):
        if g is None:
            assert p.grad is None, f"parameter {i} got a gradient plain BPTT does not give"
        else:
            assert p.grad is not None, f"parameter {i} got no gradient"
            torch.testing.assert_close(p.grad, g, atol=atol, rtol=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
