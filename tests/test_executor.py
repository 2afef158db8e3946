"""The executor against plain BPTT in float64: every kind of cell, state and batch."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close_tree, assert_grads_close, grads_of, packed_reference, padded, sq_loss
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import vlrnn_planner as vp
from vlrnn_torch import SequenceModule, StepCell

T, B, F, H = 23, 3, 4, 5
BLOCK_LENGTHS = [1, 5, 23, 50]  # 1, a non-divisor, the whole sequence, longer than the sequence
# (T, K): K = 1, a divisor, a non-divisor, the whole sequence, longer than the sequence.
SHAPES = [(23, 1), (24, 6), (23, 5), (23, 23), (23, 50)]


def run_both(cell, x, y, *, block_length, state=None, time_dim=None, final_loss_fn=None, reference=None):
    """Plain BPTT then vp.backward on the same cell; compare loss, final state and grads."""
    params = list(cell.parameters())
    cell.zero_grad(set_to_none=True)
    out, final = (reference or (lambda: cell(x, state)))()
    loss = sq_loss(out, y)
    if final_loss_fn is not None:
        loss = loss + final_loss_fn(final)
    loss.backward()
    expected = grads_of(params)
    cell.zero_grad(set_to_none=True)
    result = vp.backward(
        vp.fixed_plan(block_length),
        cell,
        x,
        targets=y,
        loss_fn=sq_loss,
        state=state,
        time_dim=time_dim,
        final_loss_fn=final_loss_fn,
    )
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12, abs_tol=1e-10)
    assert_close_tree(result.state, _detach(final))
    assert_grads_close(params, expected)
    return result


def _detach(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: _detach(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_detach(v) for v in tree)
    return tree


@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(("seq_len", "block_length"), SHAPES)
def test_rnn_modules_match_plain_bptt(mode, num_layers, batch_first, seq_len, block_length):
    cell = getattr(nn, mode)(F, H, num_layers, batch_first=batch_first)
    shape = (B, seq_len, F) if batch_first else (seq_len, B, F)
    x = torch.randn(shape)
    y = torch.randn(shape[:2] + (H,))
    result = run_both(cell, x, y, block_length=block_length)
    n = math.ceil(seq_len / min(block_length, seq_len))
    assert result.forward_evaluations == 2 * n - 1


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_initial_state_leaf_gets_its_grad(mode):
    cell = getattr(nn, mode)(F, H, 2)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    h0 = torch.randn(2, B, H, requires_grad=True)
    state = (h0, torch.randn(2, B, H, requires_grad=True)) if mode == "LSTM" else h0
    leaves = list(state) if mode == "LSTM" else [state]
    cell(x, state)[0].pow(2).sum().backward()  # some gradient already there
    before = grads_of(list(cell.parameters()) + leaves)
    params = list(cell.parameters()) + leaves
    out, _ = cell(x, state)
    sq_loss(out, y).backward()
    expected = grads_of(params)
    for p, g in zip(params, before):
        p.grad = g.clone()
    vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss, state=state)
    assert_grads_close(params, expected)


def test_unbatched_inputs():
    cell = nn.GRU(F, H, 2, batch_first=True)  # 2-D inputs are (T, F) whatever batch_first says
    x, y = torch.randn(T, F), torch.randn(T, H)
    run_both(cell, x, y, block_length=4)


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("block_length", BLOCK_LENGTHS)
def test_builtin_step_cells(kind, block_length):
    cell = getattr(nn, kind)(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)

    def reference():
        state, outs = None, []
        for x_t in x:
            state = cell(x_t, state)
            outs.append(state[0] if kind == "LSTMCell" else state)
        return torch.stack(outs), state

    run_both(cell, x, y, block_length=block_length, reference=reference)


class DictCell(nn.Module):
    """A custom per-step cell with a nested dict state and an integer counter in it."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(F, H)
        self.rec = nn.Linear(H, H)
        self.gate = nn.Linear(H, H)

    def forward(self, x_t, state):
        h, (c,) = state["h"], state["mem"]
        h = torch.tanh(self.inp(x_t) + self.rec(h))
        c = torch.sigmoid(self.gate(h)) * c + h
        return h + c, {"h": h, "mem": [c], "steps": state["steps"] + 1}


def test_custom_step_cell_with_dict_state():
    cell = StepCell(DictCell())
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    state = {"h": torch.zeros(B, H), "mem": [torch.randn(B, H)], "steps": torch.zeros((), dtype=torch.long)}

    def reference():
        s, outs = state, []
        for x_t in x:
            o, s = cell(x_t, s)
            outs.append(o)
        return torch.stack(outs), s

    result = run_both(cell, x, y, block_length=6, state=state, reference=reference)
    assert int(result.state["steps"]) == T


class TwoStateSeq(nn.Module):
    """A custom sequence module, batch-first, whose state is a tuple of a tensor and a list."""

    batch_first = True

    def __init__(self):
        super().__init__()
        self.a = nn.GRU(F, H, batch_first=True)
        self.b = nn.RNN(H, H, batch_first=True)

    def forward(self, x, state):
        ha, (hb,) = state
        out, ha = self.a(x, ha)
        out, hb = self.b(out, hb)
        return out, (ha, [hb])


def test_custom_sequence_module_nested_state_batch_first():
    cell = TwoStateSeq()
    x, y = torch.randn(B, T, F), torch.randn(B, T, H)
    state = (torch.randn(1, B, H), [torch.randn(1, B, H)])
    run_both(cell, x, y, block_length=4, state=state)


def test_time_dim_override():
    cell = SequenceModule(nn.LSTM(F, H, batch_first=True), time_dim=1)
    x, y = torch.randn(B, T, F), torch.randn(B, T, H)
    run_both(cell, x, y, block_length=5)
    # The same module unwrapped, with the axis given per call.
    cell2 = StepCell(nn.GRUCell(F, H))

    def wrapped_step(x_t, h):
        h = cell2.module(x_t, h)
        return h, h

    step = StepCell(_Fn(cell2.module))
    xb, yb = torch.randn(B, T, F), torch.randn(B, T, H)

    def reference():
        h, outs = None, []
        for t in range(T):
            o, h = wrapped_step(xb[:, t], h)
            outs.append(o)
        return torch.stack(outs, 1), h

    run_both(step, xb, yb, block_length=4, time_dim=1, reference=reference)


class _Fn(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x_t, h):
        h = self.cell(x_t, h)
        return h, h


def test_final_loss_fn_on_last_state():
    cell = nn.LSTM(F, H, 2)
    head = nn.Linear(H, 2)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    labels = torch.tensor([0, 1, 1])

    def final_loss_fn(state):
        return nn.functional.cross_entropy(head(state[0][-1]), labels, reduction="sum")

    params = list(cell.parameters()) + list(head.parameters())
    out, final = cell(x)
    (sq_loss(out, y) + final_loss_fn(final)).backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=sq_loss, final_loss_fn=final_loss_fn)
    assert_grads_close(params, expected)

    # Only a final-state loss (sequence classification): no per-block loss at all.
    for p in params:
        p.grad = None
    out, final = cell(x)
    final_loss_fn(final).backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    result = vp.backward(vp.fixed_plan(5), cell, x, final_loss_fn=final_loss_fn)
    assert_grads_close(params, expected)
    assert math.isclose(result.loss, final_loss_fn(final).item(), rel_tol=1e-12)


def test_encoder_made_initial_state():
    encoder = nn.Linear(6, H)
    cell = nn.GRU(F, H, 1)
    ctx = torch.randn(B, 6)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    params = list(encoder.parameters()) + list(cell.parameters())
    out, _ = cell(x, torch.tanh(encoder(ctx)).unsqueeze(0))
    sq_loss(out, y).backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    h0 = torch.tanh(encoder(ctx)).unsqueeze(0)
    vp.backward(vp.fixed_plan(4), cell, x, targets=y, loss_fn=sq_loss, state=h0)
    assert_grads_close(params, expected)


def test_gradients_accumulate_into_existing_grad():
    cell = nn.LSTM(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    params = list(cell.parameters())
    out, _ = cell(x)
    sq_loss(out, y).backward()
    once = grads_of(params)
    existing = [p.grad for p in params]  # backward() adds into these very tensors
    vp.backward(vp.fixed_plan(4), cell, x, targets=y, loss_fn=sq_loss)
    for p, g, same in zip(params, once, existing):
        assert p.grad is same
        torch.testing.assert_close(p.grad, 2 * g, atol=1e-10, rtol=0)


def test_dropout_between_layers_replays_rng():
    cell = nn.LSTM(F, H, 3, dropout=0.5)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    K = 4
    params = list(cell.parameters())
    # Reference: the same blocks, run once with grad, the whole graph kept.
    torch.manual_seed(7)
    state, loss = None, 0.0
    for start in range(0, T, K):
        out, state = cell(x[start : start + K], state)
        loss = loss + sq_loss(out, y[start : start + K])
    loss.backward()
    expected = grads_of(params)
    rng_after_reference = torch.get_rng_state()
    for p in params:
        p.grad = None
    torch.manual_seed(7)
    result = vp.backward(vp.fixed_plan(K), cell, x, targets=y, loss_fn=sq_loss)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(params, expected)
    assert_close_tree(result.state, tuple(s.detach() for s in state))
    # The generator is left where one forward pass leaves it.
    assert torch.equal(torch.get_rng_state(), rng_after_reference)
    # Without replay the masks would differ: a different seed gives other gradients.
    for p in params:
        p.grad = None
    torch.manual_seed(8)
    vp.backward(vp.fixed_plan(K), cell, x, targets=y, loss_fn=sq_loss)
    assert not torch.allclose(params[0].grad, expected[0])


@pytest.mark.parametrize("block_length", [1, 4, 23, 100])
def test_one_backward_traversal_per_block(block_length, monkeypatch):
    cell = nn.GRU(F, H, 2)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    traversals = []
    backward = torch.autograd.backward

    def counting(*args, **kwargs):
        traversals.append(1)
        return backward(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting)
    vp.backward(vp.fixed_plan(block_length), cell, x, targets=y, loss_fn=sq_loss)
    assert len(traversals) == math.ceil(T / min(block_length, T))


def test_callers_tensors_untouched():
    cell = nn.LSTM(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    h0, c0 = torch.randn(1, B, H), torch.randn(1, B, H)
    copies = [t.clone() for t in (x, y, h0, c0)]
    state = [h0, c0]
    vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=sq_loss, state=state)
    for t, c in zip((x, y, h0, c0), copies):
        assert torch.equal(t, c)
        assert not t.requires_grad and t.grad is None
    assert isinstance(state, list) and state[0] is h0 and state[1] is c0


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fail_at", [1, 3])
def test_fault_in_reverse_pass_leaves_grads_as_they_were(fail_at):
    cell = nn.LSTM(F, H, 2)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    h0 = torch.randn(2, B, H, requires_grad=True)
    params = list(cell.parameters())
    params[0].grad = torch.randn_like(params[0])  # one with a gradient, the others None
    before = grads_of(params)
    calls = {"n": 0}

    def flaky_loss(out, target):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise Boom("injected")
        return sq_loss(out, target)

    with pytest.raises(Boom, match="injected"):
        vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=flaky_loss, state=(h0, torch.zeros(2, B, H)))
    assert_grads_close(params, before, atol=0)
    assert h0.grad is None
    # The same call without the fault still gives plain BPTT's gradients.
    for p in params:
        p.grad = None
    out, _ = cell(x, (h0, torch.zeros(2, B, H)))
    sq_loss(out, y).backward()
    expected = grads_of(params) + [h0.grad.clone()]
    for p in params:
        p.grad = None
    h0.grad = None
    vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=sq_loss, state=(h0, torch.zeros(2, B, H)))
    assert_grads_close(params + [h0], expected)


def test_fault_inside_the_cell_after_backward_began():
    class Fragile(nn.Module):
        time_dim = 0

        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(F, H)
            self.calls = 0
            self.fail_at = None

        def forward(self, x, h):
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt  # an interrupt, not only an Exception
            return self.rnn(x, h)

    cell = Fragile()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    n = math.ceil(T / 5)
    cell.fail_at = n + 3  # the no-grad pass makes n - 1 calls; fail in the 4th block backpropagated
    with pytest.raises(KeyboardInterrupt):
        vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=sq_loss)
    assert all(p.grad is None for p in cell.parameters())


def test_loss_head_inside_loss_fn_gets_grads_and_is_atomic():
    cell = nn.GRU(F, H)
    head = nn.Linear(H, 2)  # reached only through the closure
    x, y = torch.randn(T, B, F), torch.randn(T, B, 2)

    def loss_fn(out, target):
        return sq_loss(head(out), target)

    out, _ = cell(x)
    loss_fn(out, y).backward()
    expected = grads_of(head.parameters())
    head.zero_grad(set_to_none=True)
    cell.zero_grad(set_to_none=True)
    vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=loss_fn)
    assert_grads_close(list(head.parameters()), expected)

    head.zero_grad(set_to_none=True)
    calls = {"n": 0}

    def failing(out, target):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("late")
        return loss_fn(out, target)

    with pytest.raises(Boom):
        vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=failing)
    assert all(p.grad is None for p in head.parameters())


# ---- packed sequences -----------------------------------------------------------------------

LENGTHS = [23, 17, 9, 4]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("block_length", [1, 5, 30])
def test_packed_sequences(mode, sort, with_state, block_length):
    lengths = LENGTHS if sort else [9, 23, 4, 17]
    cell = getattr(nn, mode)(F, H, 2)
    x = pack_padded_sequence(padded(lengths, F), lengths, enforce_sorted=sort)
    y = pack_padded_sequence(padded(lengths, H), lengths, enforce_sorted=sort)
    nb = len(lengths)
    state = None
    leaves = []
    if with_state:
        h0 = torch.randn(2, nb, H, requires_grad=True)
        leaves = [h0]
        state = (h0, torch.randn(2, nb, H)) if mode == "LSTM" else h0
    params = list(cell.parameters()) + leaves
    loss, final, expected = packed_reference(cell, x, y, state, params)
    result = vp.backward(vp.fixed_plan(block_length), cell, x, targets=y, loss_fn=sq_loss, state=state)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_close_tree(result.state, final)  # the caller's batch order
    assert_grads_close(params, expected)


@pytest.mark.parametrize("sort", [True, False])
def test_packed_with_step_cell_and_final_loss(sort):
    lengths = LENGTHS if sort else [4, 17, 23, 9]
    cell = nn.LSTMCell(F, H)
    x = pack_padded_sequence(padded(lengths, F), lengths, enforce_sorted=sort)
    y = pack_padded_sequence(padded(lengths, H), lengths, enforce_sorted=sort)
    labels = torch.randn(len(lengths), H)

    def final_loss_fn(state):
        return sq_loss(state[1], labels)

    # Reference: each sequence on its own, step by step (no packing at all).
    params = list(cell.parameters())
    loss = 0.0
    finals_h, finals_c = [], []
    xs, ys = _unpack(x), _unpack(y)
    for i, n in enumerate(lengths):
        s = None
        for t in range(n):
            s = cell(xs[i][t : t + 1], s)
            loss = loss + sq_loss(s[0], ys[i][t : t + 1])
        finals_h.append(s[0])
        finals_c.append(s[1])
    final = (torch.cat(finals_h), torch.cat(finals_c))
    loss = loss + final_loss_fn(final)
    loss.backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    result = vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss, final_loss_fn=final_loss_fn)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_close_tree(result.state, _detach(final))
    assert_grads_close(params, expected)


def _unpack(packed):
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(packed)
    return [padded[: int(n), i] for i, n in enumerate(lengths)]
