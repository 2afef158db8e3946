"""Packed batches planned per call: the quick search keeps the budget, agrees with the reference
simulator on the actual batch, keeps block multiples, and stays close to the full search."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import LSTM_PROFILE

import vlrnn_planner as vp
from vlrnn_planner import CellProfile, InfeasibleBudgetError
from vlrnn_planner.cost import Workload, block_bytes
from vlrnn_planner.cuts import cut_to_caps, segment_prefix
from vlrnn_planner.errors import InvalidInputError
from vlrnn_planner.planner import plan_for_profile
from vlrnn_planner.simulate import simulate_schedule
from vlrnn_planner.solver import solve

# Per-step costs that grow with the block length, as profiled on some devices.
SCALED = dataclasses.replace(LSTM_PROFILE, step_time_scale=((16, 1.3, 1.25), (64, 1.0, 1.0), (1024, 1.05, 1.2)))


def packed(lengths) -> tuple[int, ...]:
    """Sequences running at each step of a batch of ``lengths``, sorted by decreasing length."""
    return tuple(sum(1 for n in lengths if n > t) for t in range(max(lengths)))


def simulated(schedule, profile, sizes, *, inputs_on_host=False, input_gradients=False):
    """The reference simulator on the actual batch, with the memory parts written out here."""
    prefix = [0]
    for b in sizes:
        prefix.append(prefix[-1] + b)
    bounds = [schedule.block_steps(b) for b in range(schedule.num_blocks)]
    samples = [prefix[stop] - prefix[start] for start, stop in bounds]
    steps = [stop - start for start, stop in bounds]
    p = profile
    total = prefix[-1]
    resident = min(total, 2 * max(samples)) if inputs_on_host else total
    base = (
        p.parameter_bytes
        + p.gradient_bytes
        + math.ceil(p.input_bytes_per_step * resident)
        + math.ceil(p.target_bytes_per_step * resident)
        + (math.ceil(p.input_bytes_per_step * total) if input_gradients and not inputs_on_host else 0)
    )

    def seconds(per_step, per_sample, which):
        def at(b):
            scale = p.time_scale(steps[b])[which]
            return scale * (steps[b] * per_step + samples[b] * per_sample) + p.block_overhead_seconds

        return at

    return simulate_schedule(
        schedule,
        state_bytes=p.state_bytes_per_sample * max(sizes) + p.state_bytes_fixed,
        block_bytes=lambda b: block_bytes(p, samples[b]),
        base_bytes=base,
        advance_seconds=seconds(p.advance_seconds_per_step, p.advance_seconds_per_step_per_sample, 0),
        fb_seconds=seconds(p.fb_seconds_per_step, p.fb_seconds_per_step_per_sample, 1),
    )


def check_against_simulator(schedule, profile, sizes, budget, multiple=1, **where):
    assert schedule.predicted_peak_bytes <= budget
    sim = simulated(schedule, profile, sizes, **where)
    assert math.ceil(sim.peak_bytes) == schedule.predicted_peak_bytes
    assert math.isclose(sim.seconds, schedule.predicted_seconds, rel_tol=1e-9)
    if schedule.checkpoints is not None:
        assert sim.max_stored_states <= schedule.checkpoints
    starts = [schedule.block_steps(b)[0] for b in range(schedule.num_blocks)]
    assert all(start % multiple == 0 for start in starts)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget_mb", [12, 16, 25, 60])
@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("profile", [LSTM_PROFILE, SCALED], ids=["linear", "scaled"])
def test_random_packed_batches_keep_the_budget(seed, budget_mb, multiple, profile):
    rng = random.Random(seed * 1000 + budget_mb)
    sizes = packed([rng.randint(50, 900) for _ in range(32)])
    budget = budget_mb * 10**6
    plan = plan_for_profile(profile, budget, block_multiple=multiple)
    try:
        schedule = plan.schedule(len(sizes), 32, batch_sizes=sizes)
    except InfeasibleBudgetError:
        with pytest.raises(InfeasibleBudgetError):
            solve(profile, budget, Workload(len(sizes), 32, sizes), block_multiple=multiple, search="full")
        return
    check_against_simulator(schedule, profile, sizes, budget, multiple)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("inputs_on_host", "input_gradients"), [(True, False), (False, True)])
def test_inputs_on_the_host_and_input_gradients(seed, inputs_on_host, input_gradients):
    profile = dataclasses.replace(LSTM_PROFILE, device="cuda:0", input_bytes_per_step=256.0, target_bytes_per_step=64.0)
    rng = random.Random(seed)
    sizes = packed([rng.randint(100, 1200) for _ in range(32)])
    budget = (30 if input_gradients else 14) * 10**6
    plan = plan_for_profile(profile, budget, inputs_on_host=inputs_on_host)
    schedule = plan.schedule(len(sizes), 32, batch_sizes=sizes, input_gradients=input_gradients)
    check_against_simulator(
        schedule, profile, sizes, budget, inputs_on_host=inputs_on_host, input_gradients=input_gradients
    )


@pytest.mark.parametrize(("seed", "budget_mb"), [(0, 14), (1, 20), (2, 40), (3, 100)])
def test_close_to_the_full_search(seed, budget_mb):
    rng = random.Random(seed)
    sizes = packed([rng.randint(50, 600) for _ in range(32)])
    workload = Workload(len(sizes), 32, sizes)
    quick = solve(LSTM_PROFILE, budget_mb * 10**6, workload)
    full = solve(LSTM_PROFILE, budget_mb * 10**6, workload, search="full")
    assert full.predicted_seconds <= quick.predicted_seconds * (1 + 1e-12)  # it starts from the quick one
    assert quick.predicted_seconds <= 1.1 * full.predicted_seconds


TINY = CellProfile(
    parameter_bytes=1000,
    state_bytes_per_sample=100.0,
    activation_bytes_per_step=60.0,
    activation_bytes_fixed=50.0,
    advance_seconds_per_step=1.0,
    advance_seconds_per_step_per_sample=0.5,
    fb_seconds_per_step=2.0,
    fb_seconds_per_step_per_sample=1.0,
    block_overhead_seconds=0.25,
)


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 11), min_size=2, max_size=5).filter(lambda ls: len(set(ls)) > 1),
    states=st.integers(4, 22),
    steps=st.integers(1, 8),
)
def test_no_cut_runs_blocks_faster(lengths, states, steps):
    """NOTE [ Planning a packed batch per call ]: the blocks cut made to the budget is the fastest
    blocks schedule of every cut that fits, all 2^(T-1) of them priced by the simulator."""
    sizes = packed(lengths)
    seq_len, batch = len(sizes), len(lengths)
    budget = 1000 + min(states, 2 * seq_len) * 100 * batch + steps * 60 * batch
    fastest = math.inf
    for cut in itertools.product([False, True], repeat=seq_len - 1):
        bounds = (0, *(t for t, c in enumerate(cut, start=1) if c), seq_len)
        if len(bounds) > 2:
            s = vp.Schedule("blocks", seq_len=seq_len, block_length=1, boundaries=bounds)
            sim = simulated(s, TINY, sizes)
            if sim.peak_bytes <= budget:
                fastest = min(fastest, sim.seconds)
    try:
        quick = solve(TINY, budget, Workload(seq_len, batch, sizes))
    except InfeasibleBudgetError:
        assert fastest == math.inf
        return
    assert quick.predicted_peak_bytes <= budget
    assert quick.predicted_seconds <= fastest * (1 + 1e-12)


@settings(max_examples=200, deadline=None)
@given(widths=st.lists(st.integers(1, 5), min_size=1, max_size=10), top=st.integers(3, 14), slope=st.integers(0, 2))
def test_cut_to_caps_is_the_fewest_blocks_and_the_longest_last(widths, top, slope):
    """NOTE [ Greedy cuts against caps ], against every cut of the segments."""
    segments = segment_prefix([0, *itertools.accumulate(widths)])

    def caps(b):
        return top - slope * b

    units = len(widths)
    fitting = []
    for cut in itertools.product([False, True], repeat=units - 1):
        bounds = [0, *(j for j, c in enumerate(cut, start=1) if c), units]
        if all(segments[b] - segments[a] <= caps(k) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))):
            fitting.append(bounds)
    front = cut_to_caps(segments, caps)
    if not fitting:
        assert front is None
        return
    fewest = min(len(b) for b in fitting)
    assert front is not None and len(front) == fewest and front in fitting
    back = cut_to_caps(segments, caps, num_blocks=fewest - 1)
    assert back in fitting
    assert back[-2] == min(b[-2] for b in fitting if len(b) == fewest)


def test_search_is_a_plan_option():
    plan = plan_for_profile(LSTM_PROFILE, "20MB", search="full")
    assert plan.search == "full" and vp.Plan.from_json(plan.to_json()) == plan
    assert plan_for_profile(LSTM_PROFILE, "20MB").search == "quick"
    with pytest.raises(InvalidInputError, match="search must be one of quick, full"):
        vp.Plan(budget_bytes=10**6, search="fast")
    with pytest.raises(InvalidInputError, match="unknown search 'fast'"):
        solve(LSTM_PROFILE, 10**6, Workload(10, 2), search="fast")


def test_a_budget_below_any_block_is_turned_down_without_the_full_search(monkeypatch):
    from vlrnn_planner import solver

    def full_search(*args):
        raise AssertionError("the full search ran")

    monkeypatch.setattr(solver, "_full_search", full_search)
    sizes = packed([900, 700, 300, 100])
    with pytest.raises(InfeasibleBudgetError, match="no schedule fits"):
        solve(LSTM_PROFILE, LSTM_PROFILE.parameter_bytes * 2, Workload(len(sizes), 4, sizes))
