"""The planner on synthetic profiles: budgets respected, monotone, infeasible below the minimum."""


from dataclasses import replace

import pytest

import vlrnn_planner as vp
from vlrnn_planner import CellProfile, InfeasibleBudgetError
from vlrnn_planner.cost import Workload, estimate
from conftest import LSTM_PROFILE

from vlrnn_planner.planner import minimum_peak, plan_for_profile

LSTM = LSTM_PROFILE


def test_store_all_when_it_fits():
    s = plan_for_profile(LSTM, "1GB").schedule(seq_len=100, batch_size=4)
    assert s.strategy == "store_all" and s.block_length == 100
    assert s.predicted_seconds == s.baseline_seconds
    # peak = params + grads + inputs + 1 stored state + working state/gradient + block
    expected = 3_200_000 * 2 + 16 * 400 + (4 * 4096 + 5056) + (2 * 4 * 4096 + 5056) + (20_000 * 400 + 1_000_000)
    assert s.predicted_peak_bytes == expected
    assert sum(b for _, b in s.memory_parts) == s.predicted_peak_bytes


@pytest.mark.parametrize("budget_mb", [40, 60, 100, 200, 400])
def test_never_over_budget_and_fastest(budget_mb):
    plan = plan_for_profile(LSTM, budget_mb * 10**6)
    s = plan.schedule(seq_len=20_000, batch_size=8)
    assert s.predicted_peak_bytes <= budget_mb * 10**6
    assert s.budget_bytes == budget_mb * 10**6
    # No other blocks schedule that fits is faster (exhaustive over K).
    w = Workload(seq_len=20_000, batch_size=8)
    for k in range(1, 20_001, 37):
        e = estimate(LSTM, w, strategy="blocks", block_length=k)
        if e.peak_bytes <= budget_mb * 10**6:
            assert e.seconds >= s.predicted_seconds - 1e-9


def test_monotone_in_budget():
    seconds, peaks = [], []
    for mb in (40, 50, 70, 100, 150, 250, 500, 1000, 5000):
        s = plan_for_profile(LSTM, mb * 10**6).schedule(seq_len=50_000, batch_size=8)
        seconds.append(s.predicted_seconds)
        peaks.append(s.predicted_peak_bytes)
        assert s.predicted_peak_bytes <= mb * 10**6
    assert seconds == sorted(seconds, reverse=True)  # more memory never makes it slower
    assert seconds[-1] < seconds[0]


def test_short_blocks_are_slow():
    # With a large budget but a per-block overhead, the planner does not pick tiny blocks.
    s = plan_for_profile(LSTM, "200MB").schedule(seq_len=20_000, batch_size=8)
    assert s.block_length >= 50
    tiny = estimate(LSTM, Workload(20_000, 8), strategy="blocks", block_length=5)
    assert tiny.seconds > s.predicted_seconds


def test_infeasible_names_the_minimum():
    w = Workload(seq_len=1_000_000, batch_size=8)
    least = minimum_peak(LSTM, w)
    plan = plan_for_profile(LSTM, least.peak_bytes - 1)
    with pytest.raises(InfeasibleBudgetError) as info:
        plan.schedule(seq_len=1_000_000, batch_size=8)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.minimum_bytes == least.peak_bytes and err.budget_bytes == least.peak_bytes - 1
    message = str(err)
    assert message.startswith("vlrnn_planner:")
    for word in ("inputs", "parameters", "batch size", "budget", "precision"):
        assert word in message
    # At exactly the minimum it is feasible, and every schedule is at least the minimum.
    s = plan_for_profile(LSTM, least.peak_bytes).schedule(seq_len=1_000_000, batch_size=8)
    assert s.predicted_peak_bytes == least.peak_bytes


def test_minimum_is_a_lower_bound():
    w = Workload(seq_len=5000, batch_size=4)
    least = minimum_peak(LSTM, w)
    for k in (1, 2, 10, 100, 1000, 5000):
        for strategy, c in (("blocks", None), ("binomial", 1), ("binomial", 3)):
            if strategy == "binomial" and -(-5000 // k) < 2:
                continue
            assert estimate(LSTM, w, strategy=strategy, block_length=k, checkpoints=c).peak_bytes >= least.peak_bytes


def test_million_steps_joint_search_uses_closed_forms(monkeypatch):
    # The search prices candidates with closed forms: no schedule is generated while planning.
    # (Its speed is measured in benchmarks/bench_planner.py, not here.)
    from vlrnn_planner import strategies

    def no_walking(*args, **kwargs):
        raise AssertionError("the planner generated a schedule's actions while searching")

    for name in ("generate", "binomial", "blocks", "multilevel"):
        monkeypatch.setattr(strategies, name, no_walking)
    s = plan_for_profile(LSTM, "250MB").schedule(seq_len=10**6, batch_size=8)
    monkeypatch.undo()
    assert s.strategy == "binomial" and s.checkpoints is not None
    assert s.predicted_peak_bytes <= 250 * 10**6
    # blocks alone cannot fit: n states + one block is above 250 MB for every K
    w = Workload(10**6, 8)
    best_blocks = min(estimate(LSTM, w, strategy="blocks", block_length=k).peak_bytes for k in range(50, 5000, 50))
    assert best_blocks > 250 * 10**6


def test_share_budget_resolves_against_device_memory():
    gpu = CellProfile(device="cuda:0", device_free_bytes=60 * 10**9, allocator_reserved_bytes=4 * 10**9)
    assert plan_for_profile(gpu, "80%").budget_bytes == int(0.8 * 64 * 10**9)
    with pytest.raises(vp.InvalidInputError, match="share"):
        plan_for_profile(CellProfile(), "80%")


def test_summaries():
    plan = plan_for_profile(LSTM, "100MB")
    s = plan.schedule(seq_len=20_000, batch_size=8)
    text = str(s)
    for word in ("blocks", f"K={s.block_length}", f"{s.num_blocks} blocks", "budget: 100 MB",
                 "predicted peak", "stored states", "block in flight", "plain BPTT"):
        assert word in text
    assert f"{s.predicted_seconds / s.baseline_seconds:.2f}x" in text
    assert "budget 100 MB" in str(plan) and f"K={s.block_length}" in str(plan)


def test_plan_round_trips_with_profile():
    plan = plan_for_profile(LSTM, "100MB")
    back = vp.Plan.from_json(plan.to_json())
    assert back == plan and back.profile == LSTM and back.budget_spec == "100MB"


def test_needs_batch_size():
    with pytest.raises(vp.InvalidInputError, match="batch_size"):
        plan_for_profile(LSTM, "100MB").schedule(seq_len=100)


def test_inputs_on_the_host_count_only_blocks_in_flight():
    gpu = replace(LSTM, device="cuda:0")
    w = dict(seq_len=10**6, batch_size=8)
    on_device = plan_for_profile(gpu, "300MB").schedule(**w)
    on_host = plan_for_profile(gpu, "300MB", inputs_on_host=True).schedule(**w)
    inputs = dict(on_device.memory_parts)["inputs"]
    assert inputs == 10**6 * 8 * LSTM.input_bytes_per_step  # the whole sequence is resident
    # With the inputs on the host, two blocks of them: the one running and the next being copied.
    assert dict(on_host.memory_parts)["inputs"] == 2 * on_host.block_length * 8 * LSTM.input_bytes_per_step
    assert on_host.predicted_peak_bytes <= 300 * 10**6
    assert on_host.predicted_seconds <= on_device.predicted_seconds  # the room goes to the blocks
    # A budget below the resident inputs is infeasible on the device, feasible from the host.
    small = inputs // 2
    with pytest.raises(InfeasibleBudgetError, match="inputs_on_host=True"):
        plan_for_profile(gpu, small).schedule(**w)
    assert plan_for_profile(gpu, small, inputs_on_host=True).schedule(**w).predicted_peak_bytes <= small
    # On the CPU the host is the device: the option is refused.
    with pytest.raises(vp.InvalidInputError, match="needs a cell on an accelerator"):
        plan_for_profile(LSTM, "300MB", inputs_on_host=True)


def test_memory_parts_add_up_to_the_peak_for_shrinking_batches():
    gpu = replace(LSTM, device="cuda:0", allocator_overhead_bytes=4096)
    T, B = 5000, 64
    sizes = tuple(max(1, -(-B * (T - t) ** 2 // T**2)) for t in range(T))
    for host in (False, True):
        s = plan_for_profile(gpu, "40MB", inputs_on_host=host).schedule(T, B, batch_sizes=sizes)
        parts = dict(s.memory_parts)
        assert sum(parts.values()) == s.predicted_peak_bytes <= 40 * 10**6
        assert parts["allocator overhead"] == 4096
        resident = 2 * max(sum(sizes[a:b]) for a, b in zip(s.boundaries, s.boundaries[1:])) if host else sum(sizes)
        assert parts["inputs"] == resident * LSTM.input_bytes_per_step


def test_a_budget_nothing_fits_is_refused_when_planning_not_at_the_first_call():
    """The parameters, their gradients and the CPU's allocator allowance alone are over 40 MB."""
    profile = vp.CellProfile(parameter_bytes=2_000_000, gradient_bytes=2_000_000, allocator_overhead_bytes=50 * 2**20,
                             state_bytes_per_sample=64.0, activation_bytes_per_step=1000.0)
    with pytest.raises(vp.InfeasibleBudgetError, match="allocator overhead") as caught:
        plan_for_profile(profile, "40MB")
    assert caught.value.minimum_bytes > 40_000_000
    assert plan_for_profile(profile, "80MB").schedule(seq_len=100, batch_size=2).predicted_peak_bytes <= 80_000_000
