"""Bad input: a specific exception, a message that says what to change, nothing touched."""

from __future__ import annotations

import collections.abc

import pytest
import torch
from conftest import sq_loss
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import vlrnn_planner as vp
from vlrnn_torch import SequenceModule

T, B, F, H = 10, 2, 3, 4


def _snapshot(cell):
    return [None if p.grad is None else p.grad.clone() for p in cell.parameters()]


def _check_untouched(cell, before, *tensors_and_copies):
    for p, g in zip(cell.parameters(), before):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    for t, c in tensors_and_copies:
        assert torch.equal(t, c) and not t.requires_grad


def test_bidirectional_is_rejected():
    cell = nn.LSTM(F, H, bidirectional=True)
    x = torch.randn(T, B, F)
    with pytest.raises(vp.InvalidInputError, match="bidirectional") as info:
        vp.backward(vp.fixed_plan(5), cell, x, targets=torch.randn(T, B, 2 * H), loss_fn=sq_loss)
    assert isinstance(info.value, ValueError) and isinstance(info.value, vp.PlannerError)
    assert "bidirectional=False" in str(info.value)


@pytest.mark.parametrize("bad", [0, -3])
def test_block_length_below_one(bad):
    with pytest.raises(vp.InvalidInputError, match="block_length must be at least 1"):
        vp.fixed_plan(block_length=bad)


@pytest.mark.parametrize("bad", [2.5, "50", True])
def test_block_length_not_an_int(bad):
    with pytest.raises(vp.InvalidInputError, match="block_length must be an int"):
        vp.fixed_plan(block_length=bad)


def test_targets_of_another_length():
    cell = nn.GRU(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T - 1, B, H)
    x0, y0 = x.clone(), y.clone()
    before = _snapshot(cell)
    with pytest.raises(vp.InvalidInputError, match=r"targets have 9 steps .* inputs have 10"):
        vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=sq_loss)
    _check_untouched(cell, before, (x, x0), (y, y0))


def test_packed_inputs_with_dense_targets_and_the_reverse():
    cell = nn.LSTM(F, H)
    lengths = [4, 2]
    packed = pack_padded_sequence(torch.randn(4, 2, F), lengths)
    with pytest.raises(vp.InvalidTypeError, match="pack the targets the same way"):
        vp.backward(vp.fixed_plan(2), cell, packed, targets=torch.randn(4, 2, H), loss_fn=sq_loss)
    packed_y = pack_padded_sequence(torch.randn(4, 2, H), lengths)
    with pytest.raises(vp.InvalidTypeError, match="pack the inputs"):
        vp.backward(vp.fixed_plan(2), cell, torch.randn(4, 2, F), targets=packed_y, loss_fn=sq_loss)
    other = pack_padded_sequence(torch.randn(4, 2, H), [4, 3])
    with pytest.raises(vp.InvalidInputError, match="do not line up"):
        vp.backward(vp.fixed_plan(2), cell, packed, targets=other, loss_fn=sq_loss)
    assert all(p.grad is None for p in cell.parameters())


@pytest.mark.parametrize(
    ("cell", "x"),
    [
        (nn.LSTM(F, H), torch.randn(F)),
        (nn.LSTM(F, H), torch.tensor(1.0)),
        (nn.GRUCell(F, H), torch.randn(F)),
    ],
)
def test_inputs_without_a_time_axis(cell, x):
    with pytest.raises(vp.InvalidInputError, match="time axis"):
        vp.backward(vp.fixed_plan(2), cell, x, loss_fn=lambda o, t: o.sum())


def test_time_dim_outside_the_inputs():
    with pytest.raises(vp.InvalidInputError, match="time_dim=5 is outside"):
        vp.backward(vp.fixed_plan(2), nn.GRU(F, H), torch.randn(T, B, F), loss_fn=lambda o, t: o.sum(), time_dim=5)


def test_bad_state_and_loss_types():
    cell = nn.GRU(F, H)
    x = torch.randn(T, B, F)
    with pytest.raises(vp.InvalidTypeError, match="initial state .* found a str"):
        vp.backward(vp.fixed_plan(2), cell, x, loss_fn=lambda o, t: o.sum(), state={"h": "zeros"})
    with pytest.raises(vp.InvalidTypeError, match="loss_fn must be callable"):
        vp.backward(vp.fixed_plan(2), cell, x, loss_fn=3)
    with pytest.raises(vp.InvalidInputError, match="nothing to backpropagate"):
        vp.backward(vp.fixed_plan(2), cell, x)
    with pytest.raises(vp.InvalidTypeError, match="plan must be a Plan"):
        vp.backward(5, cell, x, loss_fn=lambda o, t: o.sum())
    with pytest.raises(vp.InvalidTypeError, match="inputs must be a tensor"):
        vp.backward(vp.fixed_plan(2), cell, [1.0, 2.0], loss_fn=lambda o, t: o.sum())


def test_non_scalar_loss_leaves_grads_as_they_were():
    cell = nn.GRU(F, H)
    x = torch.randn(T, B, F)
    cell.weight_hh_l0.grad = torch.ones_like(cell.weight_hh_l0)
    before = _snapshot(cell)
    with pytest.raises(vp.InvalidInputError, match="must return a scalar tensor"):
        vp.backward(vp.fixed_plan(3), cell, x, loss_fn=lambda o, t: o.pow(2))
    _check_untouched(cell, before)


def test_packed_state_with_wrong_batch():
    packed = pack_padded_sequence(torch.randn(4, 2, F), [4, 2])
    with pytest.raises(vp.InvalidInputError, match=r"must have shapes \(1, 2, 4\)"):
        vp.backward(vp.fixed_plan(2), nn.GRU(F, H), packed, loss_fn=lambda o, t: o.sum(), state=torch.zeros(1, 3, H))
    # A custom cell: checked along its state_batch_dim.
    cell = SequenceModule(nn.GRU(F, H), time_dim=0, state_batch_dim=1)
    with pytest.raises(vp.InvalidInputError, match="does not hold the packed batch's 2 sequences"):
        vp.backward(vp.fixed_plan(2), cell, packed, loss_fn=lambda o, t: o.sum(), state=torch.zeros(1, 3, H))


def test_schedule_for_another_length():
    sched = vp.fixed_plan(3).schedule(seq_len=12)
    with pytest.raises(vp.InvalidInputError, match="schedule is for 12 steps but the inputs have 10"):
        vp.backward(sched, nn.GRU(F, H), torch.randn(T, B, F), loss_fn=lambda o, t: o.sum())


def test_cell_returning_no_pair():
    class NoPair(nn.Module):
        time_dim = 0

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(F, H)

        def forward(self, x, h):
            return self.lin(x)

    with pytest.raises(vp.InvalidTypeError, match=r"must return \(outputs, state\)"):
        vp.backward(vp.fixed_plan(2), NoPair(), torch.randn(T, B, F), loss_fn=lambda o, t: o.sum())


def test_not_a_module():
    with pytest.raises(vp.BackendNotFoundError, match="no backend accepts a cell of type function"):
        vp.backward(vp.fixed_plan(2), lambda x, h: (x, h), torch.randn(T, B, F), loss_fn=lambda o, t: o.sum())


# ---- bad input of every kind: our error, before any work ------------------------------------


def _refused(error, match, cell, x, **kwargs):
    before = _snapshot(cell)
    rng = torch.get_rng_state()
    kwargs.setdefault("loss_fn", lambda o, t: o.sum())
    with pytest.raises(error, match=match) as info:
        vp.backward(vp.fixed_plan(3), cell, x, **kwargs)
    assert isinstance(info.value, vp.PlannerError)
    _check_untouched(cell, before)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    ("cell", "state", "match"),
    [
        (nn.LSTM(F, H), torch.zeros(1, B, H), r"pair \(h_0, c_0\) .* got one tensor"),
        (nn.GRU(F, H), (torch.zeros(1, B, H),), r"one tensor h_0 .* got a tuple"),
        (nn.GRU(F, H), torch.zeros(1, B + 1, H), r"shapes \(1, 2, 4\)"),
        (nn.LSTM(F, H), (torch.zeros(1, B, H), torch.zeros(1, B, H + 1)), r"shapes \(1, 2, 4\) and \(1, 2, 4\)"),
        (nn.LSTMCell(F, H), torch.zeros(B, H), r"pair \(h, c\)"),
        (nn.GRUCell(F, H), torch.zeros(B + 3, H), r"shapes \(2, 4\)"),
    ],
)
def test_state_of_the_wrong_structure_or_size(cell, state, match):
    _refused(vp.InvalidInputError, match, cell, torch.randn(T, B, F), state=state)


@pytest.mark.parametrize("cell", [nn.LSTM(F, H), nn.GRUCell(F, H)])
def test_inputs_of_the_wrong_feature_size_or_dtype(cell):
    _refused(vp.InvalidInputError, "expects 3 input features", cell, torch.randn(T, B, F + 2))
    _refused(vp.InvalidInputError, "floating-point inputs, got torch.int64", cell, torch.randint(0, 5, (T, B, F)))


def test_inputs_on_the_meta_device_and_empty_packed_batches():
    _refused(vp.InvalidInputError, "meta device", nn.GRU(F, H), torch.empty(T, B, F, device="meta"))
    empty = torch.nn.utils.rnn.PackedSequence(torch.empty(0, F), torch.empty(0, dtype=torch.int64))
    _refused(vp.InvalidInputError, "no steps", nn.GRU(F, H), empty)


def test_a_packed_sequence_as_state():
    packed = pack_padded_sequence(torch.randn(4, 2, H), [4, 2])
    _refused(vp.InvalidTypeError, "holds a PackedSequence", nn.GRU(F, H), torch.randn(T, B, F), state=packed)


class _TimeMajorRNN(nn.Module):
    time_dim = 0

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(F, H)


class Trimming(_TimeMajorRNN):
    """Returns a state of one row fewer than it was given."""

    def forward(self, x, h):
        out, h = self.rnn(x, h)
        return out, h[:, :-1]


class PackedOut(_TimeMajorRNN):
    def forward(self, x, h):
        out, h = self.rnn(x, h)
        return pack_padded_sequence(out, [x.size(0)] * x.size(1)), h


class NoOutputs(_TimeMajorRNN):
    def forward(self, x, h):
        return None, self.rnn(x, h)[1]


def test_cells_that_return_something_else():
    x = torch.randn(T, B, F)
    _refused(vp.InvalidInputError, "another structure or shape", Trimming(), x, state=torch.zeros(1, B, H))
    _refused(vp.InvalidTypeError, "PackedSequence for dense inputs", PackedOut(), x)
    _refused(vp.InvalidInputError, "no outputs", NoOutputs(), x)
    # Without loss_fn, outputs are not needed (a loss on the final state only).
    vp.backward(vp.fixed_plan(3), NoOutputs(), x, final_loss_fn=lambda s: s.sum())


def test_a_budget_too_large_to_represent():
    for budget in ("1e400GB", 2**80, float("inf"), "nan"):
        with pytest.raises(vp.InvalidInputError):
            vp.parse_budget(budget)


class Pair(collections.abc.Sequence):
    """A sequence type of the user's own, as a state container."""

    def __init__(self, items):
        self.items = list(items)

    def __getitem__(self, i):
        return self.items[i]

    def __len__(self):
        return len(self.items)


class Frozen(collections.abc.Mapping):
    """A mapping type of the user's own, as a state container."""

    def __init__(self, items):
        self._d = dict(items)

    def __getitem__(self, k):
        return self._d[k]

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)


class CustomContainers(nn.Module):
    time_dim = 0

    def __init__(self):
        super().__init__()
        self.a = nn.GRU(F, H)
        self.b = nn.RNN(F, H)

    def forward(self, x, state):
        out_a, ha = self.a(x, state["a"])
        out_b, hb = self.b(x, state["b"][0])
        return out_a + out_b, Frozen({"a": ha, "b": Pair([hb])})


def test_any_mapping_or_sequence_as_a_state_container():
    cell = CustomContainers()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    state = Frozen({"a": torch.randn(1, B, H), "b": Pair([torch.randn(1, B, H)])})
    params = list(cell.parameters())
    out, final = cell(x, state)
    sq_loss(out, y).backward()
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    result = vp.backward(vp.fixed_plan(3), cell, x, targets=y, loss_fn=sq_loss, state=state)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, atol=1e-10, rtol=0)
    assert isinstance(result.state, Frozen) and isinstance(result.state["b"], Pair)
    torch.testing.assert_close(result.state["b"][0], final["b"][0].detach())


def test_a_container_that_cannot_be_rebuilt():
    class Odd(collections.abc.Sequence):
        def __init__(self, a, b):
            self.items = [a, b]

        def __getitem__(self, i):
            return self.items[i]

        def __len__(self):
            return 2

    _refused(vp.InvalidTypeError, "cannot rebuild a Odd", nn.GRU(F, H), torch.randn(T, B, F),
             state=Odd(torch.zeros(1, B, H), None))
