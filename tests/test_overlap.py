"""Recomputation overlapped with backward (NOTE [ Overlapping recomputation with backward ]): the
same gradients, loss, final state, RNG and failure atomicity as without it."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close_tree, assert_grads_close, grads_of, packed_reference, padded, sq_loss
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import vlrnn_planner as vp
from vlrnn_torch import StepCell

T, B, F, H = 41, 3, 4, 5


def _both(cell, x, y, plan, **kwargs):
    """The call without and with overlap, from the same RNG state: (loss, state, grads, rng) each."""
    params = [p for p in cell.parameters() if p.requires_grad] + kwargs.pop("extra", [])
    out = []
    for overlap in (False, True):
        for p in params:
            p.grad = None
        torch.manual_seed(3)
        result = vp.backward(plan, cell, x, targets=y, loss_fn=sq_loss, overlap=overlap, **kwargs)
        out.append((result.loss, result.state, grads_of(params), torch.get_rng_state(), params))
    return out


@pytest.mark.parametrize(
    "plan",
    [vp.fixed_plan(1), vp.fixed_plan(6), vp.fixed_plan(6, checkpoints=3), vp.fixed_plan(41)],
    ids=["K=1", "K=6", "binomial", "one block"],
)
def test_lstm_with_dropout_same_as_without_overlap(plan):
    cell = nn.LSTM(F, H, 3, dropout=0.4)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    (l0, s0, g0, r0, params), (l1, s1, g1, r1, _) = _both(cell, x, y, plan)
    assert math.isclose(l0, l1, rel_tol=1e-12)
    assert_close_tree(s0, s1)
    assert_grads_close(params, g0)  # the last run (with overlap) left these grads
    assert torch.equal(r0, r1)


def test_inputs_with_a_graph_and_a_leaf_state():
    emb, gru = nn.Embedding(7, F), nn.GRU(F, H)
    tokens, y = torch.randint(0, 7, (T, B)), torch.randn(T, B, H)
    h0 = torch.randn(1, B, H, requires_grad=True)
    out, _ = gru(emb(tokens), h0)
    sq_loss(out, y).backward()
    params = [*emb.parameters(), *gru.parameters(), h0]
    expected = grads_of(params)
    for p in params:
        p.grad = None
    vp.backward(vp.fixed_plan(5), gru, emb(tokens), targets=y, loss_fn=sq_loss, state=h0, overlap=True)
    assert_grads_close(params, expected)


def test_packed_batch_and_a_step_cell():
    lengths = [23, 17, 9, 4]
    cell = nn.LSTMCell(F, H)
    x = pack_padded_sequence(padded(lengths, F), lengths)
    y = pack_padded_sequence(padded(lengths, H), lengths)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x_t, state):
            h, c = self.cell(x_t, state)
            return h, (h, c)

    lstm = nn.LSTM(F, H)
    loss, _, expected = packed_reference(lstm, x, y, None, list(lstm.parameters()))
    result = vp.backward(vp.fixed_plan(4), lstm, x, targets=y, loss_fn=sq_loss, overlap=True)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(list(lstm.parameters()), expected)
    step = StepCell(Wrapped())
    xs, ys = torch.randn(T, B, F), torch.randn(T, B, H)
    (l0, _, g0, _, params), (l1, _, g1, _, _) = _both(step, xs, ys, vp.fixed_plan(5), state=(torch.zeros(B, H), torch.zeros(B, H)))
    assert math.isclose(l0, l1, rel_tol=1e-12)
    assert_grads_close(params, g0)


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_failure_while_overlapped_leaves_everything_as_it_was(where):
    gru = nn.GRU(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    gru.weight_hh_l0.grad = torch.ones_like(gru.weight_hh_l0)
    before = grads_of(list(gru.parameters()))
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        loss = sq_loss(out, target)
        if calls["n"] == 4:
            if where == "forward":
                raise RuntimeError("injected")
            loss.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("injected")))  # fails in backward
        return loss

    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="injected"):
        vp.backward(vp.fixed_plan(5), gru, x, targets=y, loss_fn=loss_fn, overlap=True)
    assert_grads_close(list(gru.parameters()), before, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads


def test_overlap_is_off_where_it_cannot_be_kept_exact():
    """A cell with buffers runs without overlap (a forward would restore them under a backward)."""

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(F, H)
            self.norm = nn.BatchNorm1d(H)

        def forward(self, x_t, h):
            h = self.norm(self.cell(x_t, h))
            return h, h

    cell = StepCell(Normed())
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    (l0, _, g0, _, params), (l1, _, g1, _, _) = _both(cell, x, y, vp.fixed_plan(5), state=torch.zeros(B, H))
    assert math.isclose(l0, l1, rel_tol=1e-12)
    assert_grads_close(params, g0)


# ---------------------------------------------------------------------------------------------
# The planner decides from the profile (NOTE [ Overlap in the cost model ])
# ---------------------------------------------------------------------------------------------

from vlrnn_planner.cost import SECOND_BLOCK, Workload  # noqa: E402
from vlrnn_planner.solver import minimum_peak, solve  # noqa: E402

_PROFILE = vp.CellProfile(
    state_bytes_per_sample=1024.0,
    activation_bytes_per_step=10_000.0,
    fb_seconds_per_step_per_sample=1e-4,
    advance_seconds_per_step_per_sample=3e-5,
    block_overhead_seconds=1e-3,
)


@pytest.mark.parametrize("ratio, expected", [(None, False), (1.2, False), (0.97, False), (0.7, True)])
def test_the_planner_overlaps_only_where_the_profile_measured_that_it_pays(ratio, expected):
    profile = vp.CellProfile(**{**_PROFILE.to_dict(), "overlap_ratio": ratio})
    workload = Workload(seq_len=1000, batch_size=8)
    sched = solve(profile, 30_000_000, workload)
    assert sched.strategy != "store_all" and sched.overlap is expected
    parts = dict(sched.memory_parts)
    if expected:
        # the second block in flight is counted, and the time saved is what the ratio says
        plain = solve(vp.CellProfile(**{**profile.to_dict(), "overlap_ratio": None}), 30_000_000, workload)
        assert parts[SECOND_BLOCK] == parts["block in flight"] > 0
        assert sched.predicted_peak_bytes <= 30_000_000
        assert sched.predicted_seconds < plain.predicted_seconds
    else:
        assert SECOND_BLOCK not in parts


def test_a_budget_that_fits_one_block_in_flight_only_plans_without_overlap():
    profile = vp.CellProfile(**{**_PROFILE.to_dict(), "overlap_ratio": 0.5})
    workload = Workload(seq_len=1000, batch_size=8)
    sched = solve(profile, 30_000_000, workload)
    assert sched.overlap
    # a budget at the smallest peak of any schedule leaves no room for a second block
    budget = minimum_peak(profile, workload).peak_bytes
    tight = solve(profile, budget, workload)
    assert not tight.overlap and tight.predicted_peak_bytes <= budget


def test_overlap_travels_in_json_and_is_checked():
    s = vp.Schedule("blocks", seq_len=100, block_length=10, overlap=True)
    assert vp.Schedule.from_json(s.to_json()) == s and "overlap" in str(s)
    with pytest.raises(vp.InvalidInputError, match="overlap"):
        vp.Schedule("blocks", seq_len=100, block_length=10, overlap="yes")
    bad = s.to_dict()
    bad["overlap"] = 1
    with pytest.raises(vp.InvalidInputError, match="overlap"):
        vp.Schedule.from_dict(bad)


def test_a_schedule_that_says_overlap_runs_overlapped_and_exact(monkeypatch):
    from vlrnn_torch import overlap as overlap_module

    made = []
    real = overlap_module.Overlap

    class Counting(real):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("vlrnn_torch.executor.Overlap", Counting)
    torch.manual_seed(0)
    cell = nn.GRU(3, 5).double()
    x, y = torch.randn(40, 2, 3, dtype=torch.float64), torch.randn(40, 2, 5, dtype=torch.float64)
    params = list(cell.parameters())
    out, _ = cell(x)
    sq_loss(out, y).backward()
    expected = grads_of(params)
    cell.zero_grad(set_to_none=True)
    vp.backward(vp.Schedule("blocks", seq_len=40, block_length=10, overlap=True), cell, x, targets=y, loss_fn=sq_loss)
    assert made, "the schedule's overlap was not used"
    assert_grads_close(params, expected, atol=1e-10)


def test_profile_measures_overlap():
    profile = vp.auto_plan(nn.GRU(4, 8), budget="2GB").profile
    assert profile.overlap_ratio is not None and 0 <= profile.overlap_ratio < 10
    assert "overlap" in str(profile)


def test_only_blocks_schedules_are_priced_with_overlap():
    """A binomial schedule advances between its blocks with grad, so few of them run in a row:
    the cost model does not price it as overlapped (nor inputs kept on the host, which would hold
    a third block of them)."""
    profile = vp.CellProfile(state_bytes_per_sample=3e4, activation_bytes_per_step=1e3,
                             fb_seconds_per_step=1e-3, advance_seconds_per_step=3e-4, overlap_ratio=0.0)
    workload = Workload(seq_len=100, batch_size=8)
    budget = minimum_peak(profile, workload).peak_bytes * 3 // 2
    sched = solve(profile, budget, workload)
    assert sched.strategy == "binomial" and not sched.overlap
    on_host = vp.CellProfile(**{**_PROFILE.to_dict(), "device": "cuda:0", "overlap_ratio": 0.5})
    assert not solve(on_host, 30_000_000, Workload(seq_len=1000, batch_size=8, inputs_on_host=True)).overlap
    assert solve(on_host, 30_000_000, Workload(seq_len=1000, batch_size=8)).overlap


def test_a_gain_within_the_timing_spread_is_not_taken():
    noisy = vp.CellProfile(**{**_PROFILE.to_dict(), "overlap_ratio": 0.85, "timing_spread": 0.2})
    assert not noisy.overlap_pays
    assert not solve(noisy, 30_000_000, Workload(seq_len=1000, batch_size=8)).overlap
    assert vp.CellProfile(**{**noisy.to_dict(), "timing_spread": 0.1}).overlap_pays


def test_no_overlap_ratio_for_a_cell_the_executor_never_overlaps():
    class Normed(nn.Module):
        time_dim = 0

        def __init__(self):
            super().__init__()
            self.norm, self.gru = nn.BatchNorm1d(4), nn.GRU(4, 8)

        def forward(self, x, h=None):
            return self.gru(torch.stack([self.norm(x_t) for x_t in x.unbind(0)]), h)

    profile = vp.auto_plan(Normed(), budget="2GB", example_input=torch.randn(16, 16, 4)).profile
    assert profile.overlap_ratio is None and not profile.overlap_pays


def test_overlap_must_be_a_bool():
    with pytest.raises(vp.InvalidTypeError, match="overlap must be True, False or None"):
        vp.backward(vp.fixed_plan(5), nn.GRU(3, 4), torch.randn(10, 2, 3), loss_fn=lambda o, t: o.sum(), overlap="no")


def test_the_walk_of_an_overlapped_schedule_peaks_where_its_prediction_does():
    from vlrnn_planner.simulate import predicted_memory, simulate_schedule

    profile = vp.CellProfile(**{**_PROFILE.to_dict(), "overlap_ratio": 0.5})
    sched = solve(profile, 30_000_000, Workload(seq_len=1000, batch_size=8))
    assert sched.overlap
    memory = predicted_memory(sched)
    walked = simulate_schedule(sched, state_bytes=memory.state_bytes, block_bytes=memory.block_bytes,
                               base_bytes=memory.base_bytes)
    assert math.ceil(walked.peak_bytes) == sched.predicted_peak_bytes
