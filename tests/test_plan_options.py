"""Plan options that backends rely on: block multiples, the time axis, input gradients."""

from __future__ import annotations

import math
import types

import pytest
from conftest import LSTM_PROFILE

import vlrnn_planner as vp
from vlrnn_planner.backends import Result, SequenceShape
from vlrnn_planner.cost import Workload, estimate
from vlrnn_planner.planner import plan_for_profile
from vlrnn_planner.solver import candidate_block_lengths, cut_by_sample_steps, minimum_peak


def shrinking(seq_len: int, batch: int, power: float = 2.0) -> tuple[int, ...]:
    return tuple(max(1, math.ceil(batch * (1 - t / seq_len) ** power)) for t in range(seq_len))


def boundary_steps(schedule: vp.Schedule) -> list[int]:
    return [schedule.boundary_step(b) for b in range(schedule.num_blocks + 1)]


# -- block multiples ---------------------------------------------------------------------------


@pytest.mark.parametrize("multiple", [1, 7, 8])
def test_every_planned_boundary_is_a_multiple(multiple):
    planned = 0
    for seq_len in (50, 333, 2003):
        for budget_mb in (12, 20, 40, 2000):
            plan = plan_for_profile(LSTM_PROFILE, budget_mb * 10**6, block_multiple=multiple)
            for batch_sizes in (None, shrinking(seq_len, 32), shrinking(seq_len, 32, power=4.0)):
                try:
                    s = plan.schedule(seq_len, 32, batch_sizes=batch_sizes)
                except vp.InfeasibleBudgetError as e:
                    # the minimum it names is over block lengths that are multiples too
                    least = minimum_peak(LSTM_PROFILE, Workload(seq_len, 32, batch_sizes), block_multiple=multiple)
                    assert e.minimum_bytes == least.peak_bytes
                    continue
                planned += 1
                assert s.predicted_peak_bytes <= budget_mb * 10**6
                steps = boundary_steps(s)
                assert all(b % multiple == 0 or b == seq_len for b in steps), (seq_len, budget_mb, steps[:8])
                assert steps[-1] == seq_len
    assert planned > 15


def test_multiples_cost_at_most_a_little():
    # Blocks of multiples of 8 are the best the planner can do with them: never faster than
    # blocks of any length, and within a few percent of it here.
    w = dict(seq_len=20_000, batch_size=8)
    free = plan_for_profile(LSTM_PROFILE, "100MB").schedule(**w)
    eights = plan_for_profile(LSTM_PROFILE, "100MB", block_multiple=8).schedule(**w)
    assert eights.block_length % 8 == 0
    assert free.predicted_seconds <= eights.predicted_seconds <= 1.05 * free.predicted_seconds


def test_candidates_and_cuts_keep_multiples():
    for seq_len in (1, 7, 8, 9, 100, 1001):
        for multiple in (1, 3, 8, 2000):
            lengths = candidate_block_lengths(seq_len, multiple)
            assert lengths[0] == seq_len and lengths == sorted(set(lengths), reverse=True)
            assert all(k % multiple == 0 for k in lengths[1:])
            # every block count reachable with multiples is there
            reachable = {-(-seq_len // (j * multiple)) for j in range(1, -(-seq_len // multiple) + 1)}
            assert {-(-seq_len // k) for k in lengths} == reachable
    sizes = shrinking(100, 16)
    for multiple in (1, 7, 8):
        for cap in (10, 50, 200, 10_000):
            bounds = cut_by_sample_steps(sizes, cap, block_multiple=multiple)
            assert bounds[0] == 0 and bounds[-1] == 100
            assert all(b % multiple == 0 for b in bounds[:-1])
    assert candidate_block_lengths(10) == [10, 5, 4, 3, 2, 1]


def test_fixed_plan_needs_a_multiple():
    with pytest.raises(vp.InvalidInputError, match="block_length=50 is not a multiple of block_multiple=8.*use 48 or 56"):
        vp.fixed_plan(block_length=50, block_multiple=8)
    with pytest.raises(vp.InvalidInputError, match="use 8$"):
        vp.fixed_plan(block_length=5, block_multiple=8)
    with pytest.raises(vp.InvalidInputError, match="block_multiple must be at least 1"):
        vp.fixed_plan(block_length=5, block_multiple=0)
    s = vp.fixed_plan(block_length=48, block_multiple=8).schedule(seq_len=100)
    assert boundary_steps(s) == [0, 48, 96, 100]


def test_replanned_schedules_keep_the_multiple():
    plan = plan_for_profile(LSTM_PROFILE, "100MB", block_multiple=8)
    s = plan.schedule(20_000, 8)
    smaller = plan.replan_smaller(s)
    assert smaller is not None and smaller.block_length % 8 == 0
    assert plan.schedule(20_000, 8) is smaller


# -- the time axis -------------------------------------------------------------------------------


def test_auto_plan_keeps_the_time_axis_and_the_multiple():
    seen = {}

    def profile(cell, **kwargs):
        seen.update(kwargs)
        return LSTM_PROFILE

    backend = types.SimpleNamespace(name="fake", profile=profile)
    plan = vp.auto_plan(object(), "100MB", time_dim=1, block_multiple=4, backend=backend)
    assert seen["time_dim"] == 1
    assert (plan.time_dim, plan.block_multiple) == (1, 4)
    assert vp.Plan.from_json(plan.to_json()) == plan
    assert vp.auto_plan(object(), "100MB", backend=backend).time_dim is None


# -- input gradients -----------------------------------------------------------------------------


def test_input_gradients_are_a_memory_part():
    profile = LSTM_PROFILE
    w = Workload(seq_len=1000, batch_size=8, input_gradients=True)
    e = estimate(profile, w, strategy="blocks", block_length=50)
    parts = dict(e.memory_parts)
    assert parts["input gradients"] == parts["inputs"] == 1000 * 8 * profile.input_bytes_per_step
    plain = estimate(profile, Workload(seq_len=1000, batch_size=8), strategy="blocks", block_length=50)
    assert dict(plain.memory_parts)["input gradients"] == 0
    assert e.peak_bytes == plain.peak_bytes + parts["input gradients"]
    # Inputs kept on the host: their gradients are too.
    host = Workload(seq_len=1000, batch_size=8, input_gradients=True, inputs_on_host=True)
    assert dict(estimate(profile, host, strategy="blocks", block_length=50).memory_parts)["input gradients"] == 0
    # A shrinking batch: the input bytes of its sample-steps.
    sizes = shrinking(1000, 8)
    shrunk = plan_for_profile(profile, "40MB").schedule(1000, 8, batch_sizes=sizes, input_gradients=True)
    assert dict(shrunk.memory_parts)["input gradients"] == math.ceil(sum(sizes) * profile.input_bytes_per_step)


def test_plan_schedule_counts_input_gradients_per_shape():
    plan = plan_for_profile(LSTM_PROFILE, "60MB")
    without = plan.schedule(50_000, 8)
    with_gradients = plan.schedule(50_000, 8, input_gradients=True)
    assert with_gradients is not without and plan.schedule(50_000, 8, input_gradients=True) is with_gradients
    assert dict(with_gradients.memory_parts)["input gradients"] > 0
    assert with_gradients.predicted_peak_bytes <= 60 * 10**6
    assert with_gradients.predicted_seconds >= without.predicted_seconds  # less room for blocks
    # A fixed plan does not depend on it.
    fixed = vp.fixed_plan(block_length=10)
    assert fixed.schedule(100, 2, input_gradients=True) is fixed.schedule(100, 2)


def test_backward_plans_with_the_shapes_input_gradients():
    class Backend:
        name = "fake"

        def accepts(self, cell):
            return True

        def inspect(self, cell, inputs, **kwargs):
            return SequenceShape(seq_len=50_000, batch_size=8, input_gradients=True)

        def execute(self, schedule, cell, inputs, **kwargs):
            return Result(loss=0.0, state=None, schedule=schedule, forward_evaluations=0)

    assert SequenceShape(seq_len=1, batch_size=1).input_gradients is False
    plan = plan_for_profile(LSTM_PROFILE, "60MB")
    result = vp.backward(plan, object(), None, loss_fn=lambda o, t: 0, backend=Backend())
    assert result.schedule is plan.schedule(50_000, 8, input_gradients=True)
