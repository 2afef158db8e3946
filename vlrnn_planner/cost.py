"""The cost model: a cell profile and a schedule's shape give a predicted peak memory and time.

Pure functions of plain numbers; no framework is imported. A schedule's shape enters only through
two closed forms of its strategy (`vlrnn_planner.strategies`): how many block forward evaluations
it makes and how many boundary states it holds at most. Any strategy with those closed forms is
priced the same way.

NOTE [ Peak memory model ]
--------------------------
During a training step the device holds, at its peak:

- the parameters and their gradients;
- the inputs and targets of the whole sequence (resident on the device);
- the stored boundary states (at most ``max_stored_states``, the initial state included), each with
  its fixed companions (``state_bytes_fixed``: the RNG state kept with it, on CPU);
- the working state and the gradient arriving at a block's output state (two more states);
- one block in flight: while a block runs with grad and is backpropagated, its activations (the
  loss head included) and the backward's temporaries; while a block runs without grad, its
  transients. Only one of the two is in flight at a time, so the larger one counts.

Stored states are counted at their most for the whole step, although in most schedules the largest
block activations come while fewer states are stored: the prediction errs on the safe side.

NOTE [ Time model ]
-------------------
A schedule over ``n`` blocks of ``K`` steps with ``E`` forward evaluations runs ``n`` blocks with
grad (``T`` steps in all) and ``E - n`` blocks without grad. The last block, the only short one, is
never advanced without grad (its output state is not needed before its own backward), so the
no-grad steps are ``(E - n) * K``. Every block evaluation also pays the profile's fixed
``block_overhead_seconds``, which is what makes very short blocks slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import strategies
from .budget import format_bytes
from .errors import InvalidInputError
from .profile import CellProfile

__all__ = [
    "Estimate",
    "Workload",
    "forward_evaluations",
    "max_stored_states",
    "block_bytes",
    "peak_memory",
    "predicted_seconds",
    "baseline_seconds",
    "estimate",
    "describe_profile",
    "describe_plan",
    "describe_schedule",
]

# Memory parts, in the order they are summed and printed.
PARTS = (
    "parameters",
    "gradients",
    "inputs",
    "targets",
    "stored states",
    "working state and its gradient",
    "block in flight",
)


@dataclass(frozen=True, slots=True)
class Workload:
    """The shape of one training step's data: steps, batch, and a batch that may shrink.

    Attributes
    ----------
    seq_len : int
        Steps ``T``.
    batch_size : int
        Sequences in the batch (the batch of the states).
    batch_sizes : tuple of int or None
        Sequences still running at each step, for packed batches sorted by decreasing length.
    inputs_on_host : bool
        The inputs and targets stay in host memory and are copied to the device block by block:
        only the block in flight and the next one count against the device's budget.

    Examples
    --------
    >>> w = Workload(seq_len=4, batch_size=3, batch_sizes=(3, 3, 2, 1))
    >>> w.sample_steps, w.block_sample_steps(2), w.advance_sample_steps(2, 1)
    (9, 6, 6.0)
    """

    seq_len: int
    batch_size: int
    batch_sizes: tuple[int, ...] | None = None
    inputs_on_host: bool = False

    def __post_init__(self) -> None:
        if self.batch_sizes is not None:
            sizes = tuple(int(b) for b in self.batch_sizes)
            if len(sizes) != self.seq_len:
                raise InvalidInputError(
                    f"vlrnn_planner: batch_sizes has {len(sizes)} entries for {self.seq_len} steps; "
                    "give one batch size per step"
                )
            object.__setattr__(self, "batch_sizes", sizes)

    @property
    def sample_steps(self) -> int:
        """Steps summed over the sequences: ``T * B`` for a full batch."""
        if self.batch_sizes is None:
            return self.seq_len * self.batch_size
        return sum(self.batch_sizes)

    def resident_input_sample_steps(self, block_sample_steps: int) -> int:
        """Sample-steps of inputs (and targets) on the device while blocks of at most
        ``block_sample_steps`` run: the whole sequence, or with the inputs on the host the block
        in flight and the next one being copied."""
        if not self.inputs_on_host:
            return self.sample_steps
        return min(self.sample_steps, 2 * block_sample_steps)

    def block_sample_steps(self, block_length: int) -> int:
        """The most sample-steps in any one block of ``block_length`` steps."""
        k = min(block_length, self.seq_len)
        if self.batch_sizes is None:
            return k * self.batch_size
        sizes = self.batch_sizes
        if all(a >= b for a, b in zip(sizes, sizes[1:])):
            return sum(sizes[:k])  # sorted by decreasing length: the first block is the largest
        return max(sum(sizes[i : i + k]) for i in range(0, self.seq_len, k))

    def advance_sample_steps(self, block_length: int, advanced_blocks: int) -> float:
        """Sample-steps of ``advanced_blocks`` no-grad block runs, each over one of the first
        ``n - 1`` blocks (their mean batch, for a shrinking batch)."""
        k = min(block_length, self.seq_len)
        if self.batch_sizes is None:
            return advanced_blocks * k * self.batch_size
        head = self.batch_sizes[: max(self.seq_len - k, 0)] or self.batch_sizes[:k]
        mean = sum(head) / len(head)
        return advanced_blocks * k * mean


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the cost model predicts for one schedule shape.

    Attributes
    ----------
    peak_bytes : int
        Predicted peak memory on the device, the sum of ``memory_parts``.
    seconds : float
        Predicted time of the training step.
    memory_parts : tuple of (str, int)
        What the peak is made of (see NOTE [ Peak memory model ]).
    forward_evaluations : int
        Block forward evaluations (no-grad runs plus one per block run with grad).
    stored_states : int
        Most boundary states stored at once, the initial state included.
    """

    peak_bytes: int
    seconds: float
    memory_parts: tuple[tuple[str, int], ...]
    forward_evaluations: int
    stored_states: int


def forward_evaluations(strategy: str, n: int, *, checkpoints: int | None = None, levels: Sequence[int] = ()) -> int:
    """Block forward evaluations of a strategy over ``n`` blocks (the strategies' closed form).

    Examples
    --------
    >>> forward_evaluations("store_all", 1), forward_evaluations("blocks", 10)
    (1, 19)
    """
    return strategies.forward_evaluations(strategy, n, checkpoints=checkpoints, levels=levels)


def max_stored_states(strategy: str, n: int, *, checkpoints: int | None = None, levels: Sequence[int] = ()) -> int:
    """Most boundary states stored at once, the initial state included (the strategies' closed form).

    Examples
    --------
    >>> max_stored_states("store_all", 1), max_stored_states("blocks", 10)
    (1, 9)
    """
    return strategies.max_stored_states(strategy, n, checkpoints=checkpoints, levels=levels)


def block_bytes(profile: CellProfile, sample_steps: float) -> int:
    """Bytes of one block in flight over ``sample_steps`` (steps x sequences): the larger of its
    activations with grad and its no-grad transients.

    Examples
    --------
    >>> p = CellProfile(activation_bytes_per_step=100.0, activation_bytes_fixed=1000.0,
    ...                 transient_bytes_per_step=10.0, transient_bytes_fixed=5000.0)
    >>> block_bytes(p, 8), block_bytes(p, 80)
    (5080, 9000)
    """
    with_grad = profile.activation_bytes_per_step * sample_steps + profile.activation_bytes_fixed
    no_grad = profile.transient_bytes_per_step * sample_steps + profile.transient_bytes_fixed
    return math.ceil(max(with_grad, no_grad))


def peak_memory(
    profile: CellProfile,
    workload: Workload,
    *,
    block_length: int,
    stored_states: int,
) -> tuple[int, tuple[tuple[str, int], ...]]:
    """Predicted peak bytes and its parts (NOTE [ Peak memory model ]).

    Parameters
    ----------
    profile : CellProfile
    workload : Workload
    block_length : int
        Steps per block ``K`` (``T`` for plain BPTT).
    stored_states : int
        Most boundary states stored at once, the initial state included.

    Returns
    -------
    peak_bytes : int
    memory_parts : tuple of (str, int)

    Examples
    --------
    >>> p = CellProfile(parameter_bytes=1000, gradient_bytes=1000, state_bytes_per_sample=10.0,
    ...                 input_bytes_per_step=4.0, activation_bytes_per_step=100.0)
    >>> peak, parts = peak_memory(p, Workload(seq_len=100, batch_size=2), block_length=10,
    ...                           stored_states=9)
    >>> peak, dict(parts)["block in flight"]
    (5020, 2000)
    """
    state = profile.state_bytes_per_sample * workload.batch_size
    samples = workload.resident_input_sample_steps(workload.block_sample_steps(block_length))
    block = block_bytes(profile, workload.block_sample_steps(block_length))
    parts = (
        ("parameters", int(profile.parameter_bytes)),
        ("gradients", int(profile.gradient_bytes)),
        ("inputs", math.ceil(profile.input_bytes_per_step * samples)),
        ("targets", math.ceil(profile.target_bytes_per_step * samples)),
        ("stored states", math.ceil(stored_states * (state + profile.state_bytes_fixed))),
        ("working state and its gradient", math.ceil(2 * state + profile.state_bytes_fixed)),
        ("block in flight", block),
    )
    if profile.allocator_overhead_bytes:
        parts += (("allocator overhead", int(profile.allocator_overhead_bytes)),)
    return sum(b for _, b in parts), parts


def predicted_seconds(
    profile: CellProfile,
    workload: Workload,
    *,
    block_length: int,
    num_blocks: int,
    forward_evaluations: int,
) -> float:
    """Predicted seconds of a schedule (NOTE [ Time model ]).

    Examples
    --------
    >>> p = CellProfile(advance_seconds_per_step=1.0, fb_seconds_per_step=3.0,
    ...                 block_overhead_seconds=0.5)
    >>> predicted_seconds(p, Workload(seq_len=10, batch_size=1), block_length=5, num_blocks=2,
    ...                   forward_evaluations=3)
    36.5
    """
    k = min(block_length, workload.seq_len)
    advanced = max(forward_evaluations - num_blocks, 0)
    advance = (
        advanced * k * profile.advance_seconds_per_step
        + workload.advance_sample_steps(k, advanced) * profile.advance_seconds_per_step_per_sample
    )
    fb = workload.seq_len * profile.fb_seconds_per_step + workload.sample_steps * profile.fb_seconds_per_step_per_sample
    return advance + fb + forward_evaluations * profile.block_overhead_seconds


def baseline_seconds(profile: CellProfile, workload: Workload) -> float:
    """Predicted seconds of plain BPTT: the whole sequence as one block, run once with grad."""
    return predicted_seconds(profile, workload, block_length=workload.seq_len, num_blocks=1, forward_evaluations=1)


def estimate(
    profile: CellProfile,
    workload: Workload,
    *,
    strategy: str,
    block_length: int,
    checkpoints: int | None = None,
    levels: Sequence[int] = (),
) -> Estimate:
    """Peak memory and time of one schedule shape.

    Examples
    --------
    >>> p = CellProfile(state_bytes_per_sample=10.0, activation_bytes_per_step=100.0,
    ...                 fb_seconds_per_step=1.0, advance_seconds_per_step=0.25)
    >>> e = estimate(p, Workload(seq_len=100, batch_size=1), strategy="blocks", block_length=10)
    >>> e.peak_bytes, e.seconds, e.forward_evaluations, e.stored_states
    (1110, 122.5, 19, 9)
    """
    seq_len = workload.seq_len
    k = seq_len if strategy == "store_all" else min(block_length, seq_len)
    n = math.ceil(seq_len / k)
    evaluations = forward_evaluations(strategy, n, checkpoints=checkpoints, levels=levels)
    stored = max_stored_states(strategy, n, checkpoints=checkpoints, levels=levels)
    peak, parts = peak_memory(profile, workload, block_length=k, stored_states=stored)
    seconds = predicted_seconds(profile, workload, block_length=k, num_blocks=n, forward_evaluations=evaluations)
    return Estimate(peak, seconds, parts, evaluations, stored)


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def _seconds(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _device(profile: CellProfile | None, device: str | None) -> str:
    if profile is None:
        return device or "unknown"
    name = f" ({profile.device_name})" if profile.device_name else ""
    return f"{profile.device}{name}, {profile.dtype}"


def describe_profile(profile: CellProfile) -> str:
    """A few lines on what a profile measured.

    Examples
    --------
    >>> print(describe_profile(CellProfile(cell="LSTM(4, 8)", state_bytes_per_sample=64.0,
    ...       activation_bytes_per_step=512.0, measured_by="test")))  # doctest: +ELLIPSIS
    CellProfile of LSTM(4, 8) on cpu, float32
      memory measured by: test
      per step and sequence: activations 512 B, no-grad transients 0 B, inputs 0 B, targets 0 B
    ...
    """
    p = profile
    lines = [
        f"CellProfile of {p.cell or 'a cell'} on {_device(p, None)}",
        f"  memory measured by: {p.measured_by or 'unknown'}",
        f"  per step and sequence: activations {format_bytes(p.activation_bytes_per_step)}, "
        f"no-grad transients {format_bytes(p.transient_bytes_per_step)}, "
        f"inputs {format_bytes(p.input_bytes_per_step)}, targets {format_bytes(p.target_bytes_per_step)}",
        f"  per block: activations {format_bytes(p.activation_bytes_fixed)}, "
        f"no-grad transients {format_bytes(p.transient_bytes_fixed)}, "
        f"overhead {_seconds(p.block_overhead_seconds)}",
        f"  state per sequence {format_bytes(p.state_bytes_per_sample)}; parameters "
        f"{format_bytes(p.parameter_bytes)}, gradients {format_bytes(p.gradient_bytes)}"
        + ("; loss head included" if p.loss_included else ""),
        f"  seconds per step: no-grad {_seconds(p.advance_seconds_per_step)} + "
        f"{_seconds(p.advance_seconds_per_step_per_sample)} per sequence; with grad and backward "
        f"{_seconds(p.fb_seconds_per_step)} + {_seconds(p.fb_seconds_per_step_per_sample)} per sequence",
    ]
    if p.device_total_bytes is not None:
        lines.append(
            f"  device memory: {format_bytes(p.device_total_bytes)} total, "
            f"{format_bytes(p.device_free_bytes or 0)} free"
            + (f", this process {format_bytes(p.process_bytes)}" if p.process_bytes is not None else "")
            + (f", allocator holds {format_bytes(p.allocator_reserved_bytes)}" if p.allocator_reserved_bytes is not None else "")
        )
    if p.profile_seconds:
        lines.append(f"  profiled in {_seconds(p.profile_seconds)}")
    lines.extend(f"  note: {n}" for n in p.notes)
    return "\n".join(lines)


def describe_schedule(schedule) -> str:
    """The summary `Schedule.__str__` prints: strategy, K, blocks, device, budget, predicted peak
    with its parts, predicted time and its ratio to plain BPTT.

    Examples
    --------
    >>> from vlrnn_planner import fixed_plan
    >>> print(fixed_plan(block_length=4).schedule(seq_len=10, batch_size=2))
    Schedule: blocks, T=10, K=4, 3 blocks, batch 2
      block forward evaluations: 5 (2 without grad, 3 with grad)
    """
    s = schedule
    lines = [
        f"Schedule: {s.strategy}, T={s.seq_len}, K={s.block_length}, "
        f"{s.num_blocks} block{'s' if s.num_blocks != 1 else ''}"
        + (f", batch {s.batch_size}" if s.batch_size is not None else "")
    ]
    if s.checkpoints is not None:
        lines.append(f"  stored states at most: {s.checkpoints}")
    if s.levels:
        lines.append(f"  levels (blocks per segment): {', '.join(map(str, s.levels))}")
    try:
        evaluations = forward_evaluations(s.strategy, s.num_blocks, checkpoints=s.checkpoints, levels=s.levels)
    except (InvalidInputError, ValueError):
        evaluations = None
    if evaluations is not None and s.strategy != "store_all":
        lines.append(
            f"  block forward evaluations: {evaluations} "
            f"({evaluations - s.num_blocks} without grad, {s.num_blocks} with grad)"
        )
    if s.device is not None:
        lines.append(f"  device: {s.device}")
    if s.budget_bytes is not None:
        lines.append(f"  budget: {format_bytes(s.budget_bytes)}")
    if s.predicted_peak_bytes is not None:
        head = f"  predicted peak: {format_bytes(s.predicted_peak_bytes)}"
        if s.budget_bytes:
            head += f" ({100 * s.predicted_peak_bytes / s.budget_bytes:.0f}% of the budget)"
        lines.append(head)
        for name, size in s.memory_parts:
            if size:
                lines.append(f"    {name}: {format_bytes(size)}")
    if s.predicted_seconds is not None:
        text = f"  predicted time: {_seconds(s.predicted_seconds)}"
        if s.baseline_seconds:
            text += (
                f", {s.predicted_seconds / s.baseline_seconds:.2f}x plain BPTT "
                f"({_seconds(s.baseline_seconds)})"
            )
        lines.append(text)
    return "\n".join(lines)


def describe_plan(plan) -> str:
    """The summary `Plan.__str__` prints for a budget plan: device, budget, what was profiled,
    and the schedules resolved so far.

    Examples
    --------
    >>> from vlrnn_planner import Plan
    >>> print(Plan(budget_bytes=10**9, profile=CellProfile(cell="GRU(4, 8)")))  # doctest: +ELLIPSIS
    Plan: budget 1 GB on cpu, float32
      cell: GRU(4, 8); memory measured by: unknown
      strategy and block length are chosen per input shape: plan.schedule(seq_len=..., batch_size=...)
    """
    p = plan.profile
    spec = getattr(plan, "budget_spec", None)
    budget = format_bytes(plan.budget_bytes)
    if spec and spec.strip().lower().replace(" ", "") != budget.lower().replace(" ", ""):
        budget = f"{budget} ({spec})"
    lines = [f"Plan: budget {budget} on {_device(p, None)}"]
    if p is not None:
        lines.append(f"  cell: {p.cell or 'unknown'}; memory measured by: {p.measured_by or 'unknown'}")
        if p.available_bytes is not None:
            lines.append(f"  this process could use {format_bytes(p.available_bytes)} on the device when profiled")
    resolved = [s for s in plan._cache.values()]
    if not resolved:
        lines.append("  strategy and block length are chosen per input shape: plan.schedule(seq_len=..., batch_size=...)")
    for s in resolved:
        lines.extend("  " + line for line in describe_schedule(s).splitlines())
    return "\n".join(lines)
