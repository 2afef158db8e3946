"""What a sequence module does once per call: segments, masks shared over time, parametrizations
(NOTE [ Effects per call ] and NOTE [ Parametrizations ] in vlrnn_torch)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_grads_close, grads_of, sq_loss
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import vlrnn_planner as vp
from vlrnn_torch import SequenceModule

T, B, F, H = 48, 3, 4, 6


class CompressiveMemory(nn.Module):
    """A GRU whose memory is compressed every 8 steps, counted from the start of each call."""

    time_dim = 0

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(F, H)
        self.compress = nn.Linear(2 * H, H)

    def forward(self, x, state):
        h, memory = state
        outs = []
        for t, x_t in enumerate(x.unbind(0)):
            h = self.cell(x_t, h + memory)
            if (t + 1) % 8 == 0:
                memory = torch.tanh(self.compress(torch.cat([memory, h], -1)))
            outs.append(h)
        return torch.stack(outs), (h, memory)


def _grads_and_loss(cell, x, y, state, block_length):
    params = list(cell.parameters())
    out, _ = cell(x, state)
    loss = sq_loss(out, y)
    loss.backward()
    expected = grads_of(params)
    for p in params:
        p.grad = None
    return params, expected, loss.item()


def test_segments_of_eight_steps_are_exact_with_a_multiple_of_eight():
    cell = CompressiveMemory()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    state = (torch.zeros(B, H), torch.zeros(B, H))
    params, expected, loss = _grads_and_loss(cell, x, y, state, T)
    result = vp.backward(vp.fixed_plan(16), cell, x, targets=y, loss_fn=sq_loss, state=state)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(params, expected)


@pytest.mark.parametrize("block_length", [12, 20, 30])
def test_segments_cut_elsewhere_are_refused_before_any_work(block_length):
    cell = CompressiveMemory()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    rng = torch.get_rng_state()
    with pytest.raises(vp.PerCallEffectError, match="block_multiple"):
        vp.backward(vp.fixed_plan(block_length), cell, x, targets=y, loss_fn=sq_loss,
                    state=(torch.zeros(B, H), torch.zeros(B, H)))
    assert all(p.grad is None for p in cell.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


class LockedDropout(nn.Module):
    """An LSTM whose inputs and outputs are dropped with one mask per call, shared over time
    (AWD-LSTM's locked dropout)."""

    time_dim = 0

    def __init__(self, p=0.5):
        super().__init__()
        self.lstm = nn.LSTM(F, H)
        self.p = p

    def forward(self, x, state):
        if self.training:
            x = x * x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return self.lstm(x, state)


class WeightDrop(nn.Module):
    """DropConnect on the recurrent weights: one mask per call."""

    time_dim = 0

    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(F, H)

    def forward(self, x, h):
        w = nn.functional.dropout(self.cell.weight_hh, 0.3, self.training)
        h = x.new_zeros(x.size(1), H) if h is None else h
        outs = []
        for x_t in x.unbind(0):
            h = torch.tanh(x_t @ self.cell.weight_ih.T + h @ w.T + self.cell.bias_ih)
            outs.append(h)
        return torch.stack(outs), h


class EmbeddingDropout(nn.Module):
    """Drops whole words of the vocabulary, one mask per call; inputs are token ids."""

    time_dim = 0

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, F)
        self.rnn = nn.GRU(F, H)

    def forward(self, ids, h):
        weight = self.emb.weight
        if self.training:
            weight = weight * torch.empty(10, 1).bernoulli_(0.8) / 0.8
        return self.rnn(nn.functional.embedding(ids, weight), h)


@pytest.mark.parametrize("module", [LockedDropout, WeightDrop, EmbeddingDropout])
def test_masks_drawn_once_per_call_are_refused(module):
    cell = module()
    x = torch.randint(0, 10, (T, B)) if module is EmbeddingDropout else torch.randn(T, B, F)
    rng = torch.get_rng_state()
    with pytest.raises(vp.PerCallEffectError, match="once per call"):
        vp.backward(vp.fixed_plan(8), cell, x, loss_fn=lambda o, t: o.pow(2).sum())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in cell.parameters())
    # In evaluation mode there is nothing random: exact.
    cell.eval()
    vp.backward(vp.fixed_plan(8), cell, x, loss_fn=lambda o, t: o.pow(2).sum())


class LockedDropoutInState(nn.Module):
    """The same locked dropout, restructured: the mask is drawn once outside and carried in the state."""

    time_dim = 0

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(F, H)

    def forward(self, x, state):
        hc, mask = state
        out, hc = self.lstm(x * mask, hc)
        return out, (hc, mask)


def test_mask_passed_in_the_state_is_exact():
    cell = LockedDropoutInState()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    mask = torch.empty(1, B, F).bernoulli_(0.5) / 0.5
    state = ((torch.zeros(1, B, H), torch.zeros(1, B, H)), mask)
    params, expected, loss = _grads_and_loss(cell, x, y, state, T)
    result = vp.backward(vp.fixed_plan(7), cell, x, targets=y, loss_fn=sq_loss, state=state)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(params, expected)


def test_dropout_per_step_inside_a_custom_module_is_accepted():
    """Ordinary dropout draws per step: the same count of random numbers however the call is cut."""

    class PerStep(nn.Module):
        time_dim = 0

        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(F, H)

        def forward(self, x, h):
            out, h = self.gru(nn.functional.dropout(x, 0.3, self.training), h)
            return out, h

    vp.backward(vp.fixed_plan(8), PerStep(), torch.randn(T, B, F), loss_fn=lambda o, t: o.pow(2).sum())


class Counted(nn.Module):
    """A parametrization (weight normalisation) that counts how often it is computed."""

    calls = 0

    def forward(self, w):
        Counted.calls += 1
        return w / w.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("kind", ["custom", "weight_norm", "orthogonal"])
def test_parametrizations_of_a_sequence_module_are_computed_once_per_call(kind):
    lstm = nn.LSTM(F, H)
    if kind == "custom":
        parametrize.register_parametrization(lstm, "weight_hh_l0", Counted())
    elif kind == "weight_norm":
        parametrizations.weight_norm(lstm, "weight_hh_l0")
    else:
        parametrizations.orthogonal(lstm, "weight_hh_l0")
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    params, expected, loss = _grads_and_loss(lstm, x, y, None, T)
    Counted.calls = 0
    result = vp.backward(vp.fixed_plan(6), lstm, x, targets=y, loss_fn=sq_loss)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(params, expected)
    if kind == "custom":
        assert Counted.calls == 1


class SpectralRNN(nn.Module):
    """A custom sequence module with a spectral-normed recurrent weight (one power iteration per
    forward in training mode)."""

    time_dim = 0

    def __init__(self):
        super().__init__()
        self.rec = parametrizations.spectral_norm(nn.Linear(H, H))
        self.inp = nn.Linear(F, H)

    def forward(self, x, h):
        w = self.rec.weight  # once per call, as plain BPTT computes it
        outs = []
        for x_t in x.unbind(0):
            h = torch.tanh(self.inp(x_t) + h @ w.T)
            outs.append(h)
        return torch.stack(outs), h


def test_spectral_norm_power_iteration_runs_once_per_call():
    cell = SpectralRNN()
    x, y, h0 = torch.randn(T, B, F), torch.randn(T, B, H), torch.zeros(B, H)
    before = {k: v.clone() for k, v in cell.named_buffers()}
    params, expected, loss = _grads_and_loss(cell, x, y, h0, T)
    after_plain = {k: v.clone() for k, v in cell.named_buffers()}
    for k, v in cell.named_buffers():
        v.copy_(before[k])
    result = vp.backward(vp.fixed_plan(8), cell, x, targets=y, loss_fn=sq_loss, state=h0)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(params, expected)
    for k, v in cell.named_buffers():
        torch.testing.assert_close(v, after_plain[k], atol=1e-12, rtol=0)


def test_the_probe_runs_once_per_cut():
    calls = []

    class Watched(nn.Module):
        time_dim = 0

        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(F, H)

        def forward(self, x, h):
            calls.append(x.size(0))
            return self.gru(x, h)

    cell = Watched()
    x = torch.randn(T, B, F)
    vp.backward(vp.fixed_plan(8), cell, x, loss_fn=lambda o, t: o.sum())
    first = len(calls)
    calls.clear()
    vp.backward(vp.fixed_plan(8), cell, x, loss_fn=lambda o, t: o.sum())
    assert first == len(calls) + 3  # one call past the cut, and the two calls cut there
    calls.clear()
    vp.backward(vp.fixed_plan(8), SequenceModule(cell, time_dim=0), x, loss_fn=lambda o, t: o.sum())
    assert len(calls) == first  # another module (the wrapper) is probed afresh


def test_auto_plan_keeps_a_block_multiple():
    cell = CompressiveMemory()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    state = (torch.zeros(B, H), torch.zeros(B, H))
    params, expected, loss = _grads_and_loss(cell, x, y, state, T)
    roomy = vp.auto_plan(cell, budget="10GB", example_input=x[:16], state=state, loss_fn=sq_loss,
                         example_target=y[:16], block_multiple=8)
    assert roomy.block_multiple == 8
    whole = roomy.schedule(seq_len=T, batch_size=B)
    assert whole.strategy == "store_all"
    # A budget just below plain BPTT's predicted peak: blocks, each a multiple of 8 steps.
    plan = vp.planner.plan_for_profile(roomy.profile, whole.predicted_peak_bytes - 1, block_multiple=8)
    sched = plan.schedule(seq_len=T, batch_size=B)
    assert sched.num_blocks > 1
    assert all(sched.block_steps(b)[0] % 8 == 0 for b in range(sched.num_blocks))
    result = vp.backward(plan, cell, x, targets=y, loss_fn=sq_loss, state=state)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(params, expected)
