"""The cost model: a cell profile and a schedule's shape give a predicted peak memory and time.

Pure functions of plain numbers; no framework is imported. This module prices and does nothing
else: the search over shapes is `vlrnn_planner.solver`, the summaries live with the records they
describe. A schedule's shape of equal blocks enters only through two closed forms of its strategy
(`vlrnn_planner.strategies`): how many block forward evaluations it makes and how many boundary
states it holds at most. Blocks of unequal work are priced block by block, as a `Chain`.

NOTE [ Peak memory model ]
--------------------------
During a training step the device holds, at its peak:

- the parameters and their gradients;
- the inputs and targets of the whole sequence (resident on the device), and, where the inputs
  carry an autograd graph of their own (an embedding's output), a gradient buffer as large as
  the inputs ("input gradients");
- the stored boundary states (at most ``max_stored_states``, the initial state included), each with
  its fixed companions (``state_bytes_fixed``: the RNG state kept with it, on CPU);
- the working state and the gradient arriving at a block's output state (two more states);
- one block in flight: while a block runs with grad and is backpropagated, its activations (the
  loss head included) and the backward's temporaries; while a block runs without grad, its
  transients. Only one of the two is in flight at a time, so the larger one counts.

Stored states are counted at their most for the whole step, although in most schedules the largest
block activations come while fewer states are stored: the prediction errs on the safe side.
`memory_parts` builds these parts, named, for every prediction.

NOTE [ Time model ]
-------------------
A schedule over ``n`` blocks of ``K`` steps with ``E`` forward evaluations runs ``n`` blocks with
grad (``T`` steps in all) and ``E - n`` blocks without grad. The last block, the only short one, is
never advanced without grad (its output state is not needed before its own backward), so the
no-grad steps are ``(E - n) * K``. Every block evaluation also pays the profile's fixed
``block_overhead_seconds``, which is what makes very short blocks slow. A step costs more in long
blocks on some devices (a block's activations outgrow the caches; fresh memory is faulted in): the
profile's `CellProfile.time_scale` factors, measured at several block lengths, scale the seconds
per step at each block's length, so the planner ranks block lengths as they measure.

NOTE [ Overlap in the cost model ]
----------------------------------
With overlap (NOTE [ Overlapping recomputation with backward ] in `vlrnn_torch.overlap`), each
block but the first one backpropagated runs beside the recomputation of the block before it.
The profile measures what a block with grad then takes relative to its time alone
(`CellProfile.overlap_ratio`, ``r``), so a schedule of ``n`` blocks saves ``(1 - r) (n - 1) / n``
of its seconds with grad, and holds two blocks in flight instead of one (the block being
backpropagated and the next one being recomputed): the part ``"second block in flight"``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from . import strategies
from .actions import Action, Advance, ForwardBackward
from .errors import InvalidInputError
from .profile import CellProfile
from .records import positive_int
from .schedule import Prediction
from .simulate import MemoryModel, walk

__all__ = [
    "Chain",
    "Estimate",
    "Workload",
    "block_bytes",
    "largest_block",
    "boundary_state_bytes",
    "held_bytes",
    "memory_parts",
    "peak_memory",
    "predicted_seconds",
    "baseline_seconds",
    "estimate",
    "overlapped",
    "sample_step_prefix",
]

STORED = "stored states"
WORKING = "working state and its gradient"
BLOCK = "block in flight"
SECOND_BLOCK = "second block in flight"


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
    input_gradients : bool
        The inputs carry an autograd graph (an embedding's output): the backward keeps a
        gradient buffer as large as the inputs, on the device unless ``inputs_on_host``.

    Raises
    ------
    InvalidInputError
        For a non-positive length or batch, or batch sizes that are not one per step.

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
    input_gradients: bool = False

    def __post_init__(self) -> None:
        positive_int("seq_len", self.seq_len, hint="pass the number of time steps")
        positive_int("batch_size", self.batch_size, hint="pass the number of sequences in the batch")
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
        """Sample-steps of inputs (and targets) on the device while blocks run.

        Parameters
        ----------
        block_sample_steps : int
            The most sample-steps in one block.

        Returns
        -------
        int
            The whole sequence's, or with the inputs on the host the block in flight's and the
            next one's, being copied.
        """
        if not self.inputs_on_host:
            return self.sample_steps
        return min(self.sample_steps, 2 * block_sample_steps)

    def block_sample_steps(self, block_length: int) -> int:
        """The most sample-steps in any one block of ``block_length`` steps.

        Parameters
        ----------
        block_length : int
            Steps per block ``K``.

        Returns
        -------
        int
        """
        k = min(block_length, self.seq_len)
        if self.batch_sizes is None:
            return k * self.batch_size
        sizes = self.batch_sizes
        if all(a >= b for a, b in zip(sizes, sizes[1:])):
            return sum(sizes[:k])  # sorted by decreasing length: the first block is the largest
        return max(sum(sizes[i : i + k]) for i in range(0, self.seq_len, k))

    def advance_sample_steps(self, block_length: int, advanced_blocks: int) -> float:
        """Sample-steps of no-grad block runs, each over one of the first ``n - 1`` blocks.

        Parameters
        ----------
        block_length : int
            Steps per block ``K``.
        advanced_blocks : int
            Number of no-grad block runs.

        Returns
        -------
        float
            ``advanced_blocks`` runs of the mean block among the first ``n - 1`` (all blocks
            alike for a full batch).
        """
        k = min(block_length, self.seq_len)
        if self.batch_sizes is None:
            return advanced_blocks * k * self.batch_size
        head = self.batch_sizes[: max(self.seq_len - k, 0)] or self.batch_sizes[:k]
        mean = sum(head) / len(head)
        return advanced_blocks * k * mean


def block_bytes(profile: CellProfile, sample_steps: float) -> int:
    """Bytes of one block in flight: the larger of its activations with grad and its no-grad
    transients.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes.
    sample_steps : float
        The block's steps times sequences.

    Returns
    -------
    int
        Bytes, rounded up.

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


def largest_block(profile: CellProfile, room_bytes: float) -> int:
    """The most sample-steps whose block in flight fits ``room_bytes``: the inverse of `block_bytes`.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes.
    room_bytes : float
        Bytes left for the block.

    Returns
    -------
    int
        The largest ``x`` with ``block_bytes(profile, x) <= room_bytes``; -1 if not even an empty
        block fits; `sys.maxsize` if a block's bytes do not grow with its sample-steps.

    Examples
    --------
    >>> p = CellProfile(activation_bytes_per_step=100.0, activation_bytes_fixed=1000.0,
    ...                 transient_bytes_per_step=10.0, transient_bytes_fixed=5000.0)
    >>> largest_block(p, 9000), block_bytes(p, 80), block_bytes(p, 81)
    (80, 9000, 9100)
    >>> largest_block(p, 4999)
    -1
    """
    room = math.floor(room_bytes)
    most = math.inf
    for per_step, fixed in (
        (profile.activation_bytes_per_step, profile.activation_bytes_fixed),
        (profile.transient_bytes_per_step, profile.transient_bytes_fixed),
    ):
        if fixed > room:
            return -1
        if per_step > 0:
            most = min(most, (room - fixed) / per_step)
    if most == math.inf:
        return sys.maxsize
    x = int(most)
    while x >= 0 and block_bytes(profile, x) > room:  # the division may round up
        x -= 1
    return x


def boundary_state_bytes(profile: CellProfile, workload: Workload) -> float:
    """Bytes of one boundary state of the full batch, with its fixed companions.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes.
    workload : Workload
        The step's data.

    Returns
    -------
    float
    """
    return profile.state_bytes_per_sample * workload.batch_size + profile.state_bytes_fixed


def held_bytes(profile: CellProfile, workload: Workload, *, widest_sample_steps: int) -> int:
    """Bytes held throughout the step: all the parts of NOTE [ Peak memory model ] but the states
    and the block in flight.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes.
    workload : Workload
        The step's data.
    widest_sample_steps : int
        Sample-steps of the widest block (what inputs kept on the host leave on the device).

    Returns
    -------
    int
    """
    head, tail = _held_throughout(profile, workload, widest_sample_steps)
    return sum(size for _, size in head + tail)


def _held_throughout(
    profile: CellProfile, workload: Workload, widest_sample_steps: int
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """The parts held throughout the step: those listed before the states, and after the block."""
    p = profile
    samples = workload.resident_input_sample_steps(widest_sample_steps)
    input_gradients = workload.sample_steps if workload.input_gradients and not workload.inputs_on_host else 0
    head = (
        ("parameters", int(p.parameter_bytes)),
        ("gradients", int(p.gradient_bytes)),
        ("inputs", math.ceil(p.input_bytes_per_step * samples)),
        ("targets", math.ceil(p.target_bytes_per_step * samples)),
        ("input gradients", math.ceil(p.input_bytes_per_step * input_gradients)),
    )
    tail = (("allocator overhead", int(p.allocator_overhead_bytes)),) if p.allocator_overhead_bytes else ()
    return head, tail


def memory_parts(
    profile: CellProfile,
    workload: Workload,
    *,
    widest_sample_steps: int,
    stored_bytes: int,
    block_in_flight: int,
) -> tuple[tuple[str, int], ...]:
    """The named parts of a predicted peak (NOTE [ Peak memory model ]), in the order printed.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes.
    workload : Workload
        The step's data.
    widest_sample_steps : int
        Sample-steps of the widest block (what inputs kept on the host leave on the device).
    stored_bytes : int
        Bytes of the stored states at the peak.
    block_in_flight : int
        Bytes of the block in flight at the peak.

    Returns
    -------
    tuple of (str, int)
        Parameters, gradients, inputs, targets, input gradients, stored states, the working
        state and its gradient, the block in flight, and the allocator overhead where the
        profile measured one; bytes each.
    """
    head, tail = _held_throughout(profile, workload, widest_sample_steps)
    states_and_block = (
        (STORED, stored_bytes),
        (WORKING, _working_bytes(profile, workload)),
        (BLOCK, block_in_flight),
    )
    return head + states_and_block + tail


def _working_bytes(profile: CellProfile, workload: Workload) -> int:
    """The working state (with its fixed companions) and the gradient at a block's output."""
    return math.ceil(2 * profile.state_bytes_per_sample * workload.batch_size + profile.state_bytes_fixed)


def _fixed_bytes(parts: Sequence[tuple[str, int]]) -> int:
    """Bytes of the parts held throughout: all but the states and the block."""
    return sum(size for name, size in parts if name not in (STORED, WORKING, BLOCK, SECOND_BLOCK))


def peak_memory(
    profile: CellProfile,
    workload: Workload,
    *,
    block_length: int,
    stored_states: int,
) -> tuple[int, tuple[tuple[str, int], ...]]:
    """Predicted peak bytes and its parts, for blocks of equal steps (NOTE [ Peak memory model ]).

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes.
    workload : Workload
        The step's data.
    block_length : int
        Steps per block ``K`` (``T`` for plain BPTT).
    stored_states : int
        Most boundary states stored at once, the initial state included.

    Returns
    -------
    peak_bytes : int
        The sum of the parts.
    memory_parts : tuple of (str, int)
        See `memory_parts`.

    Examples
    --------
    >>> p = CellProfile(parameter_bytes=1000, gradient_bytes=1000, state_bytes_per_sample=10.0,
    ...                 input_bytes_per_step=4.0, activation_bytes_per_step=100.0)
    >>> peak, parts = peak_memory(p, Workload(seq_len=100, batch_size=2), block_length=10,
    ...                           stored_states=9)
    >>> peak, dict(parts)["block in flight"]
    (5020, 2000)
    """
    widest = workload.block_sample_steps(block_length)
    parts = memory_parts(
        profile,
        workload,
        widest_sample_steps=widest,
        stored_bytes=math.ceil(stored_states * boundary_state_bytes(profile, workload)),
        block_in_flight=block_bytes(profile, widest),
    )
    return sum(b for _, b in parts), parts


def predicted_seconds(
    profile: CellProfile,
    workload: Workload,
    *,
    block_length: int,
    num_blocks: int,
    forward_evaluations: int,
) -> float:
    """Predicted seconds of a schedule of equal blocks (NOTE [ Time model ]).

    Parameters
    ----------
    profile : CellProfile
        The cell's measured seconds.
    workload : Workload
        The step's data.
    block_length : int
        Steps per block ``K``.
    num_blocks : int
        Number of blocks ``n``.
    forward_evaluations : int
        Block forward evaluations ``E`` (``n`` of them with grad).

    Returns
    -------
    float
        Seconds.

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
    advance_scale = profile.time_scale(k)[0]
    advance = advance_scale * (
        advanced * k * profile.advance_seconds_per_step
        + workload.advance_sample_steps(k, advanced) * profile.advance_seconds_per_step_per_sample
    )
    return advance + _fb_seconds(profile, workload, k) + advanced * profile.advance_overhead + num_blocks * profile.block_overhead_seconds


def _fb_seconds(profile: CellProfile, workload: Workload, block_length: int) -> float:
    """Seconds of every step run with grad and backpropagated, in blocks of ``block_length``."""
    return profile.time_scale(block_length)[1] * (
        workload.seq_len * profile.fb_seconds_per_step + workload.sample_steps * profile.fb_seconds_per_step_per_sample
    )


def baseline_seconds(profile: CellProfile, workload: Workload) -> float:
    """Predicted seconds of plain BPTT: the whole sequence as one block, run once with grad.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured seconds.
    workload : Workload
        The step's data.

    Returns
    -------
    float
        Seconds.
    """
    return predicted_seconds(profile, workload, block_length=workload.seq_len, num_blocks=1, forward_evaluations=1)


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
    state_bytes : float
        One boundary state with its fixed companions.
    block_bytes : int
        The largest block in flight (both blocks in flight where `overlapped`).
    fixed_bytes : int
        Bytes held throughout the step.
    """

    peak_bytes: int
    seconds: float
    memory_parts: tuple[tuple[str, int], ...]
    forward_evaluations: int
    stored_states: int
    state_bytes: float = 0.0
    block_bytes: int = 0
    fixed_bytes: int = 0

    def prediction(self, *, baseline_seconds: float | None, device: str | None, budget_bytes: int | None) -> Prediction:
        """This estimate as a schedule's `Prediction`.

        Parameters
        ----------
        baseline_seconds : float or None
            Predicted seconds of plain BPTT, for comparison.
        device : str or None
            The device profiled.
        budget_bytes : int or None
            The budget planned to.

        Returns
        -------
        Prediction
        """
        return Prediction(
            peak_bytes=self.peak_bytes,
            seconds=self.seconds,
            memory_parts=self.memory_parts,
            state_bytes=self.state_bytes,
            block_bytes=self.block_bytes,
            fixed_bytes=self.fixed_bytes,
            baseline_seconds=baseline_seconds,
            device=device,
            budget_bytes=budget_bytes,
        )


def estimate(
    profile: CellProfile,
    workload: Workload,
    *,
    strategy: str,
    block_length: int,
    checkpoints: int | None = None,
    levels: Sequence[int] = (),
) -> Estimate:
    """Peak memory and time of one schedule shape of equal blocks.

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes and seconds.
    workload : Workload
        The step's data.
    strategy : {"store_all", "blocks", "multilevel", "binomial"}
        The strategy.
    block_length : int
        Steps per block ``K`` (ignored for ``"store_all"``).
    checkpoints : int, optional
        For ``"binomial"``: most stored states.
    levels : sequence of int
        For ``"multilevel"``: segment sizes in blocks.

    Returns
    -------
    Estimate

    Raises
    ------
    InvalidInputError
        For an unknown strategy or an invalid parameter of it.

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
    evaluations = strategies.forward_evaluations(strategy, n, checkpoints=checkpoints, levels=levels)
    stored = strategies.max_stored_states(strategy, n, checkpoints=checkpoints, levels=levels)
    peak, parts = peak_memory(profile, workload, block_length=k, stored_states=stored)
    seconds = predicted_seconds(profile, workload, block_length=k, num_blocks=n, forward_evaluations=evaluations)
    block = dict(parts)[BLOCK]
    return Estimate(peak, seconds, parts, evaluations, stored, boundary_state_bytes(profile, workload), block, _fixed_bytes(parts))


def overlapped(
    profile: CellProfile, workload: Workload, e: Estimate, *, strategy: str, block_length: int
) -> Estimate | None:
    """``e`` with each block backpropagated beside the recomputation of the one before it
    (NOTE [ Overlap in the cost model ]).

    Parameters
    ----------
    profile : CellProfile
        The cell's measured seconds, with `CellProfile.overlap_ratio`.
    workload : Workload
        The step's data.
    e : Estimate
        The schedule without overlap, from `estimate` (blocks of equal steps).
    strategy : str
        Its strategy: only ``"blocks"`` runs every block after the first beside the
        recomputation of the one before it (binomial and multilevel schedules advance between
        their blocks with grad, and overlap only where two run in a row).
    block_length : int
        Its steps per block ``K``.

    Returns
    -------
    Estimate or None
        Fewer seconds and a second block in flight; None where overlap was not measured to pay
        (`CellProfile.overlap_pays`), for another strategy than ``"blocks"``, for inputs kept
        on the host (a third block of them would be held), or for one block.

    Examples
    --------
    >>> p = CellProfile(activation_bytes_per_step=100.0, fb_seconds_per_step=1.0, overlap_ratio=0.5)
    >>> w = Workload(seq_len=100, batch_size=1)
    >>> e = estimate(p, w, strategy="blocks", block_length=10)
    >>> o = overlapped(p, w, e, strategy="blocks", block_length=10)
    >>> e.seconds - o.seconds, o.peak_bytes - e.peak_bytes
    (45.0, 1000)
    """
    k = min(block_length, workload.seq_len)
    n = math.ceil(workload.seq_len / k)
    if not profile.overlap_pays or strategy != "blocks" or workload.inputs_on_host or n < 2:
        return None
    saved = (1 - profile.overlap_ratio) * (n - 1) / n * _fb_seconds(profile, workload, k)
    parts = e.memory_parts + ((SECOND_BLOCK, e.block_bytes),)
    # block_bytes: both blocks in flight, so that a walk of the actions (`vlrnn_planner.simulate`)
    # peaks where this estimate does
    return Estimate(e.peak_bytes + e.block_bytes, e.seconds - saved, parts, e.forward_evaluations, e.stored_states,
                    e.state_bytes, 2 * e.block_bytes, e.fixed_bytes)


# ---------------------------------------------------------------------------------------------
# Blocks of unequal work, priced block by block
# ---------------------------------------------------------------------------------------------


def sample_step_prefix(batch_sizes: Sequence[int]) -> list[int]:
    """Sample-steps before each step: ``prefix[t] = batch_sizes[0] + ... + batch_sizes[t - 1]``.

    Parameters
    ----------
    batch_sizes : sequence of int
        Sequences running at each step.

    Returns
    -------
    list of int
        ``len(batch_sizes) + 1`` entries, from 0 to the total.
    """
    return [0, *accumulate(batch_sizes)]


@dataclass(frozen=True)
class Chain:
    """Per-block costs of a sequence cut into blocks of unequal work (a shrinking batch).

    Every boundary state holds the full batch; a block's activations and time follow its
    sample-steps (NOTE [ Per-block costs of a shrinking batch ] in `vlrnn_planner.solver`).
    Build one with `Chain.from_profile`.

    Attributes
    ----------
    bounds : tuple of int
        The start step of every block, then ``T``.
    state_bytes : float
        One boundary state of the full batch, with its fixed companions.
    fixed_bytes : int
        Bytes held throughout the step.
    block_bytes : tuple of int
        Bytes of each block in flight.
    advance_seconds : tuple of float
        Seconds of each block without grad, the block overhead included.
    fb_seconds : tuple of float
        Seconds of each block with grad and backward, the block overhead included.
    widest_sample_steps : int
        Sample-steps of the widest block.
    """

    bounds: tuple[int, ...]
    state_bytes: float
    fixed_bytes: int
    block_bytes: tuple[int, ...]
    advance_seconds: tuple[float, ...]
    fb_seconds: tuple[float, ...]
    widest_sample_steps: int
    _advance_prefix: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prefix = [0.0]
        for s in self.advance_seconds:
            prefix.append(prefix[-1] + s)
        object.__setattr__(self, "_advance_prefix", tuple(prefix))

    @classmethod
    def from_profile(
        cls, profile: CellProfile, workload: Workload, bounds: Sequence[int], prefix: Sequence[int]
    ) -> Chain:
        """The costs of ``workload`` cut at ``bounds``.

        Parameters
        ----------
        profile : CellProfile
            The cell's measured bytes and seconds.
        workload : Workload
            The step's data, with its ``batch_sizes``.
        bounds : sequence of int
            The start step of every block, then ``T``.
        prefix : sequence of int
            `sample_step_prefix` of the workload's batch sizes (computed once for many cuts).

        Returns
        -------
        Chain
        """
        p = profile
        bounds = tuple(bounds)
        spans = [(b - a, prefix[b] - prefix[a]) for a, b in zip(bounds, bounds[1:])]
        widest = max(samples for _, samples in spans)
        return cls(
            bounds=bounds,
            state_bytes=boundary_state_bytes(p, workload),
            fixed_bytes=held_bytes(p, workload, widest_sample_steps=widest),
            block_bytes=tuple(block_bytes(p, samples) for _, samples in spans),
            advance_seconds=tuple(
                p.time_scale(steps)[0] * (steps * p.advance_seconds_per_step + samples * p.advance_seconds_per_step_per_sample)
                + p.advance_overhead
                for steps, samples in spans
            ),
            fb_seconds=tuple(
                p.time_scale(steps)[1] * (steps * p.fb_seconds_per_step + samples * p.fb_seconds_per_step_per_sample)
                + p.block_overhead_seconds
                for steps, samples in spans
            ),
            widest_sample_steps=widest,
        )

    @property
    def n(self) -> int:
        """Number of blocks."""
        return len(self.bounds) - 1

    def blocks_cost(self) -> tuple[float, float, int]:
        """Peak bytes, seconds and the block at the peak of the ``blocks`` strategy, in closed form.

        While block ``b`` runs with grad, ``b + 2`` states are held beside it (``b`` stored
        before it, its input state, the gradient at its output).

        Returns
        -------
        (float, float, int)
        """
        n = self.n
        peak, at = max(((b + 2) * self.state_bytes + self.block_bytes[b], b) for b in range(n))
        seconds = self._advance_prefix[n - 1] + sum(self.fb_seconds)
        return self.fixed_bytes + peak, seconds, at

    def walk_cost(self, actions: Iterable[Action]) -> tuple[float, float, int]:
        """Peak bytes, seconds and the block at the peak of any schedule over this chain.

        The reference simulator's memory model, walked unchecked, ``O(actions)``.

        Parameters
        ----------
        actions : iterable of Action
            A valid schedule over the chain's blocks.

        Returns
        -------
        (float, float, int)
        """
        memory = MemoryModel(state_bytes=self.state_bytes, block_bytes=self.block_bytes.__getitem__)
        peak, at, seconds = 0.0, 0, 0.0
        for step in walk(actions, self.n, memory=memory, check=False):
            action = step.action
            if type(action) is Advance:
                seconds += self._advance_prefix[action.stop] - self._advance_prefix[action.start]
            elif type(action) is ForwardBackward:
                if step.peak_bytes > peak:
                    peak, at = step.peak_bytes, action.block
                seconds += self.fb_seconds[action.block]
        return self.fixed_bytes + peak, seconds, at

    def prediction(
        self,
        profile: CellProfile,
        workload: Workload,
        *,
        peak_bytes: float,
        seconds: float,
        at: int,
        baseline_seconds: float | None,
        budget_bytes: int | None,
    ) -> Prediction:
        """The `Prediction` of a schedule over this chain whose peak comes with block ``at``.

        Parameters
        ----------
        profile : CellProfile
            The profile the chain was priced from.
        workload : Workload
            Its workload.
        peak_bytes : float
            The peak, from `blocks_cost` or `walk_cost`.
        seconds : float
            The seconds, likewise.
        at : int
            The block in flight at the peak.
        baseline_seconds : float or None
            Predicted seconds of plain BPTT, for comparison.
        budget_bytes : int or None
            The budget planned to.

        Returns
        -------
        Prediction
            Its stored states' part is the rest of the peak; its block bytes the largest block's.
        """
        peak = math.ceil(peak_bytes)
        block = self.block_bytes[at]
        parts = memory_parts(
            profile,
            workload,
            widest_sample_steps=self.widest_sample_steps,
            stored_bytes=peak - self.fixed_bytes - _working_bytes(profile, workload) - block,
            block_in_flight=block,
        )
        return Prediction(
            peak_bytes=peak,
            seconds=seconds,
            memory_parts=parts,
            state_bytes=self.state_bytes,
            block_bytes=max(self.block_bytes),
            fixed_bytes=self.fixed_bytes,
            baseline_seconds=baseline_seconds,
            device=profile.device,
            budget_bytes=budget_bytes,
        )
