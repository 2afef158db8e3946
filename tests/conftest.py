"""Shared helpers: plain BPTT references in float64."""

from __future__ import annotations

import pytest
import torch

torch.set_default_dtype(torch.float64)

ATOL = 1e-10


def sq_loss(outputs, targets):
    """A sum-reduced loss: the total over blocks equals the loss over the whole sequence."""
    return ((outputs - targets) ** 2).sum()


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
