"""Blocks of any length that plain BPTT can run: 30,000 steps of a CPU GRU, whose autograd graph
is unrolled step by step (a Python walk of such a graph used to crash the process on its
destruction). Run in a subprocess, so that a crash fails this test instead of the whole suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import torch, vlrnn_planner as vp
    from torch import nn
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    gru = nn.GRU(4, 16)
    x, y = torch.randn(30000, 2, 4), torch.randn(30000, 2, 16)
    loss_fn = lambda o, t: ((o - t) ** 2).sum()
    out, _ = gru(x)
    loss = loss_fn(out, y)
    loss.backward()
    expected = [p.grad.clone() for p in gru.parameters()]
    for block_length in (30000, 20000):
        gru.zero_grad(set_to_none=True)
        result = vp.backward(vp.fixed_plan(block_length), gru, x, targets=y, loss_fn=loss_fn)
        assert abs(result.loss - loss.item()) <= 1e-12 * abs(loss.item()), (result.loss, loss.item())
        for p, g in zip(gru.parameters(), expected):
            torch.testing.assert_close(p.grad, g, atol=1e-10 * float(g.abs().max()), rtol=0)
    print("ok")
    """
)


@pytest.mark.slow
def test_thirty_thousand_steps_in_one_block_match_plain_bptt():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert done.stdout.strip().endswith("ok")
