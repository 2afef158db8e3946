"""Side effects as one plain BPTT call leaves them: buffers, hooks, the RNG of the loss; and what
cannot be kept is refused before any work."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_grads_close, grads_of, sq_loss
from torch import nn

import vlrnn_planner as vp
from vlrnn_torch import StepCell

T, B, F, H = 9, 4, 3, 5


class NormCell(nn.Module):
    """A step cell with BatchNorm1d (training mode) and a buffer its output depends on."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(F + H, H)
        self.norm = nn.BatchNorm1d(H)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x_t, h):
        self.steps += 1
        h = torch.tanh(self.norm(self.lin(torch.cat([x_t, h], -1)))) * (1 + 0.01 * self.steps)
        return h, h


def _plain_steps(cell, x, h):
    outs = []
    for x_t in x:
        o, h = cell(x_t, h)
        outs.append(o)
    return torch.stack(outs), h


def _buffers(module):
    return {k: v.clone() for k, v in module.named_buffers()}


@pytest.mark.parametrize("block_length", [1, 2, 4, 9])
def test_buffers_as_one_forward_pass_leaves_them(block_length):
    cell = NormCell()
    x, y, h0 = torch.randn(T, B, F), torch.randn(T, B, H), torch.zeros(B, H)
    before = _buffers(cell)
    params = list(cell.parameters())
    out, _ = _plain_steps(cell, x, h0)
    loss = sq_loss(out, y)
    loss.backward()
    expected, after_plain = grads_of(params), _buffers(cell)
    for p in params:
        p.grad = None
    for k, v in cell.named_buffers():
        v.copy_(before[k])
    result = vp.backward(vp.fixed_plan(block_length), StepCell(cell), x, targets=y, loss_fn=sq_loss, state=h0)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(params, expected)
    for k, v in cell.named_buffers():
        torch.testing.assert_close(v, after_plain[k], atol=1e-12, rtol=0)
    assert int(cell.norm.num_batches_tracked) == T  # not 15 updates for 9 steps


def test_auto_plan_leaves_the_cell_as_it_found_it():
    cell = StepCell(NormCell(), time_dim=0)
    cell.module.lin.weight.grad = torch.ones_like(cell.module.lin.weight)
    grad_before = cell.module.lin.weight.grad.clone()
    params_before = [p.detach().clone() for p in cell.parameters()]
    buffers_before = _buffers(cell)
    cell.module.norm.eval()
    modes = [m.training for m in cell.modules()]
    example, target = torch.randn(8, B, F), torch.randn(8, B, H)
    rng = torch.get_rng_state()
    calls = []
    cell.module.lin.weight.register_hook(lambda g: calls.append(1))
    vp.auto_plan(cell, budget="200MB", example_input=example, state=torch.zeros(B, H),
                 loss_fn=sq_loss, example_target=target)
    assert all(torch.equal(p, q) for p, q in zip(cell.parameters(), params_before))
    for k, v in cell.named_buffers():
        assert torch.equal(v, buffers_before[k]), k
    assert torch.equal(cell.module.lin.weight.grad, grad_before)
    assert [m.training for m in cell.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert calls == []  # hooks do not see the profiler's gradients


def test_tensor_hooks_see_the_whole_gradient_once():
    gru = nn.GRU(F, H, 2)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    params = list(gru.parameters())
    seen = []

    def clamp(g):
        seen.append(g.clone())
        return g.clamp(-0.5, 0.5)

    handle = gru.weight_hh_l0.register_hook(clamp)
    out, _ = gru(x)
    sq_loss(out, y).backward()
    expected, seen_plain = grads_of(params), seen[:]
    for p in params:
        p.grad = None
    seen.clear()
    vp.backward(vp.fixed_plan(2), gru, x, targets=y, loss_fn=sq_loss)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], seen_plain[0], atol=1e-10, rtol=0)
    assert_grads_close(params, expected)
    handle.remove()


def test_post_accumulate_hook_runs_once_per_call_like_an_optimizer_in_backward():
    gru = nn.GRU(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    reference = nn.GRU(F, H)
    reference.load_state_dict(gru.state_dict())

    def attach(module):
        steps = []
        optimizers = {p: torch.optim.SGD([p], lr=0.1) for p in module.parameters()}

        def step(p):
            steps.append(1)
            optimizers[p].step()
            p.grad = None

        for p in module.parameters():
            p.register_post_accumulate_grad_hook(step)
        return steps

    steps_plain = attach(reference)
    out, _ = reference(x)
    sq_loss(out, y).backward()
    steps = attach(gru)
    vp.backward(vp.fixed_plan(2), gru, x, targets=y, loss_fn=sq_loss)
    assert len(steps) == len(steps_plain) == len(list(gru.parameters()))
    for p, q in zip(gru.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0)


def test_module_backward_hook_on_a_sequence_module_is_refused():
    lstm = nn.LSTM(F, H)
    lstm.register_full_backward_hook(lambda m, gi, go: None)
    x = torch.randn(T, B, F)
    rng = torch.get_rng_state()
    with pytest.raises(vp.UnsupportedHookError, match="module backward hook"):
        vp.backward(vp.fixed_plan(3), lstm, x, loss_fn=lambda o, t: o.sum())
    assert all(p.grad is None for p in lstm.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_module_backward_hook_on_a_step_cell_sees_each_step_as_in_plain_bptt():
    cell = nn.GRUCell(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    seen = []
    cell.register_full_backward_hook(lambda m, gi, go: seen.append(go[0].clone()))
    params = list(cell.parameters())
    h, outs = None, []
    for x_t in x:
        h = cell(x_t, h)
        outs.append(h)
    sq_loss(torch.stack(outs), y).backward()
    expected, plain = grads_of(params), sorted(seen, key=lambda g: float(g.sum()))
    for p in params:
        p.grad = None
    seen.clear()
    vp.backward(vp.fixed_plan(4), cell, x, targets=y, loss_fn=sq_loss)
    assert_grads_close(params, expected)
    assert len(seen) == T
    for a, b in zip(sorted(seen, key=lambda g: float(g.sum())), plain):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


class NoisyCell(nn.Module):
    """Adds uniform noise at every step; records what it drew."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(F, H)
        self.drawn = []

    def forward(self, x_t, h):
        noise = torch.rand(B, H)
        self.drawn.append(noise)
        h = self.cell(x_t, h) + 0.1 * noise
        return h, h


def test_loss_fn_draws_never_repeat_the_cells_and_the_rng_ends_where_plain_bptt_leaves_it():
    cell = NoisyCell()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    loss_draws = []

    def loss_fn(out, target):
        noise = torch.rand(B, H)
        loss_draws.append(noise)
        return sq_loss(out, target) + (out[0] * noise).sum()

    torch.manual_seed(5)
    vp.backward(vp.fixed_plan(3), StepCell(cell), x, targets=y, loss_fn=loss_fn)
    after = torch.get_rng_state()
    cell_draws = {tuple(d.flatten().tolist()) for d in cell.drawn}
    assert len(loss_draws) == 3
    assert not any(tuple(d.flatten().tolist()) in cell_draws for d in loss_draws)
    # Plain BPTT: the forward's T draws, then the loss's (one per block).
    torch.manual_seed(5)
    for _ in range(T + 3):
        torch.rand(B, H)
    assert torch.equal(after, torch.get_rng_state())


@pytest.mark.parametrize("when", ["inference_mode", "no_grad", "frozen"])
def test_no_gradient_can_flow_raises_like_loss_backward(when):
    gru = nn.GRU(F, H)
    x = torch.randn(T, B, F)
    rng = torch.get_rng_state()
    with pytest.raises(vp.NoGradientError) as info:
        if when == "inference_mode":
            with torch.inference_mode():
                vp.backward(vp.fixed_plan(3), gru, x, loss_fn=lambda o, t: o.sum())
        elif when == "no_grad":
            with torch.no_grad():
                vp.backward(vp.fixed_plan(3), gru, x, loss_fn=lambda o, t: o.sum())
        else:
            gru.requires_grad_(False)
            vp.backward(vp.fixed_plan(3), gru, x, loss_fn=lambda o, t: o.sum())
    assert isinstance(info.value, RuntimeError)
    assert all(p.grad is None for p in gru.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


class OwnGenerator(nn.Module):
    """A step cell drawing noise from a generator of its own, which vlrnn-planner does not replay:
    not deterministic given its inputs, state and the global RNG."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(F, H)
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x_t, h):
        h = self.cell(x_t, h) + 0.5 * torch.rand(h.shape, generator=self.gen)
        return h, h


def test_recomputation_that_differs_is_refused_and_verify_false_skips_the_check():
    cell = StepCell(OwnGenerator())
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    with pytest.raises(vp.NondeterministicCellError, match="did not reproduce"):
        vp.backward(vp.fixed_plan(3), cell, x, targets=y, loss_fn=sq_loss, state=torch.zeros(B, H))
    assert all(p.grad is None for p in cell.parameters())
    vp.backward(vp.fixed_plan(3), cell, x, targets=y, loss_fn=sq_loss, state=torch.zeros(B, H), verify=False)
    assert all(p.grad is not None for p in cell.parameters())


def test_a_leaf_first_reached_late_is_put_back_on_failure():
    """Failure atomicity covers leaves that only an early block (backpropagated last) reaches."""
    gru = nn.GRU(F, H)
    early_head, late_head = nn.Linear(H, 1), nn.Linear(H, 1)
    x = torch.randn(12, B, F)
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        if calls["n"] == 4:  # block 0, after block 1 reached early_head
            raise RuntimeError("late failure")
        head = early_head if calls["n"] == 3 else late_head  # block 1 only uses early_head
        return head(out).sum()

    early_head.weight.grad = torch.full_like(early_head.weight, 7.0)
    with pytest.raises(RuntimeError, match="late failure"):
        vp.backward(vp.fixed_plan(3), gru, x, loss_fn=loss_fn)
    assert torch.equal(early_head.weight.grad, torch.full_like(early_head.weight, 7.0))
    assert early_head.bias.grad is None and late_head.weight.grad is None
    assert all(p.grad is None for p in gru.parameters())
