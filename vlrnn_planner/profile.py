"""`CellProfile`: what a backend measured about a cell, as plain numbers.

A profile is a frozen record of primitives (str, int, float, bool, None and tuples of them), with
no framework object in it, so that the planner can run from a saved profile without torch, and
`CellProfile.to_dict` / `CellProfile.from_dict` write and read it field by field (each field's
type and range checked on reading). Backends fill it in (see ``vlrnn_torch.profiler.profile_cell``);
the cost model (`vlrnn_planner.cost`) reads it; ``str(profile)`` summarises it.

The model behind the numbers, for a block of ``K`` steps over ``B`` sequences:

- bytes held while a block runs with grad and is backpropagated (the loss head included when a
  loss was profiled): ``activation_bytes_per_step * K * B + activation_bytes_fixed``;
- bytes a block takes while it runs without grad:
  ``transient_bytes_per_step * K * B + transient_bytes_fixed``;
- seconds of a block without grad:
  ``K * s(K) * (advance_seconds_per_step + advance_seconds_per_step_per_sample * B) +
  block_overhead_seconds``, where ``s(K)`` (`CellProfile.time_scale`) says how the cost of a step
  changes with the block length (caches, allocations): 1 where nothing was measured;
- seconds of a block run with grad and backpropagated: likewise with the ``fb_`` fields.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .budget import format_bytes, format_seconds
from .errors import InvalidInputError
from .records import read_bool, read_fields, read_int, read_number, read_optional, read_str

__all__ = ["CellProfile", "describe_profile", "TIMING_SPREAD_LIMIT", "OVERLAP_MIN_GAIN"]

#: Repeated timings of one block that lie further apart than this (max / min - 1) make a profile
#: unreliable: something else was using the device (NOTE [ Noisy profiles ] in the torch profiler).
TIMING_SPREAD_LIMIT = 0.25

#: The planner overlaps recomputation with backward only where a block with grad takes at most
#: ``1 - OVERLAP_MIN_GAIN`` of its time alone (`CellProfile.overlap_ratio`), and less than the
#: profile's timing spread allows: smaller gains are within what repeated timings differ by, and
#: overlap holds a second block in flight.
OVERLAP_MIN_GAIN = 0.05


@dataclass(frozen=True)
class CellProfile:
    """Measured memory and time of a cell on one device.

    Attributes
    ----------
    device : str
        Where it was measured: ``"cpu"``, ``"cuda:0"``.
    device_name : str
        The device's name (``"NVIDIA H200"``) or the CPU's.
    dtype : str
        The parameters' dtype, such as ``"float32"``.
    cell : str
        A short description of the cell (``"LSTM(64, 256, num_layers=2)"``).
    time_dim : int
        The time axis of the inputs the cell was profiled with.
    parameter_bytes, gradient_bytes : int
        Bytes of the trainable parameters and of their gradients.
    state_bytes_per_sample : float
        Bytes of one boundary state, per sequence in the batch.
    state_bytes_fixed : float
        Bytes kept on the device with each stored state whatever the batch (the CPU's random
        generator state, on CPU).
    input_bytes_per_step, target_bytes_per_step : float
        Bytes of the inputs and targets, per step and per sequence.
    activation_bytes_per_step, activation_bytes_fixed : float
        Peak bytes held by a block run with grad and backpropagated: per step and sequence, and a
        fixed part per block.
    transient_bytes_per_step, transient_bytes_fixed : float
        Peak bytes taken by a block run without grad: per step and sequence, and a fixed part.
    advance_seconds_per_step, advance_seconds_per_step_per_sample : float
        Seconds per step of a block run without grad: a part that does not depend on the batch,
        and a part per sequence.
    fb_seconds_per_step, fb_seconds_per_step_per_sample : float
        The same for a block run with grad and backpropagated.
    block_overhead_seconds : float
        Fixed seconds per block evaluation (launches, Python, bookkeeping), whatever its length:
        of a block run with grad and backpropagated, and of a block without grad where
        ``advance_overhead_seconds`` is None.
    advance_overhead_seconds : float or None
        Fixed seconds per block run without grad, where it was measured apart.
    step_time_scale : tuple of (int, float, float)
        ``(block_length, no-grad factor, with-grad factor)``: the seconds per step at that block
        length over those of the linear model, measured; `time_scale` interpolates between them in
        ``log(block_length)`` and holds the end values beyond. Empty: 1 at every length.
    overlap_ratio : float or None
        Seconds of a block run with grad and backpropagated beside the recomputation of the block
        before it (NOTE [ Overlapping recomputation with backward ] in `vlrnn_torch.overlap`), over
        its seconds alone: below 1 where overlap pays, measured over a few blocks at the longest
        profiled block length; None where not measured.
    timing_spread : float
        How far repeated timings of the same block lay apart after retries (``max / min - 1`` of
        the worst point): large when other work shared the device while profiling
        (`timing_reliable`).
    device_total_bytes, device_free_bytes : int or None
        The device's memory when profiled: on a GPU from NVML (or the runtime), on CPU the host's
        MemTotal and MemAvailable; None where the device does not say.
    process_bytes : int or None
        This process's whole footprint on the device, context included (None on CPU).
    allocator_reserved_bytes : int or None
        Bytes the framework's allocator held for this process when profiled (None on CPU).
    allocator_overhead_bytes : int
        Memory the allocator holds beyond what the tensors need during a training step (heap
        fragmentation; see the torch profiler's NOTE [ CPU allocator overhead ]).
    loss_included : bool
        Whether the activations include a loss head (a ``loss_fn`` was profiled).
    measured_by : str
        How memory was measured, e.g. ``"cuda+nvml"``.
    profile_seconds : float
        How long the profiling took.
    notes : tuple of str
        Anything a reader of the profile should know.

    Examples
    --------
    >>> p = CellProfile(device="cpu", state_bytes_per_sample=4096.0)
    >>> CellProfile.from_dict(p.to_dict()) == p
    True
    >>> p.available_bytes is None
    True
    """

    device: str = "cpu"
    device_name: str = ""
    dtype: str = "float32"
    cell: str = ""
    time_dim: int = 0
    parameter_bytes: int = 0
    gradient_bytes: int = 0
    state_bytes_per_sample: float = 0.0
    state_bytes_fixed: float = 0.0
    input_bytes_per_step: float = 0.0
    target_bytes_per_step: float = 0.0
    activation_bytes_per_step: float = 0.0
    activation_bytes_fixed: float = 0.0
    transient_bytes_per_step: float = 0.0
    transient_bytes_fixed: float = 0.0
    advance_seconds_per_step: float = 0.0
    advance_seconds_per_step_per_sample: float = 0.0
    fb_seconds_per_step: float = 0.0
    fb_seconds_per_step_per_sample: float = 0.0
    block_overhead_seconds: float = 0.0
    advance_overhead_seconds: float | None = None
    step_time_scale: tuple[tuple[int, float, float], ...] = ()
    overlap_ratio: float | None = None
    timing_spread: float = 0.0
    device_total_bytes: int | None = None
    device_free_bytes: int | None = None
    process_bytes: int | None = None
    allocator_reserved_bytes: int | None = None
    allocator_overhead_bytes: int = 0
    loss_included: bool = False
    measured_by: str = ""
    profile_seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.notes, tuple):
            object.__setattr__(self, "notes", tuple(self.notes))
        scale = tuple(sorted((int(k), float(a), float(f)) for k, a, f in self.step_time_scale))
        for k, a, f in scale:
            if k < 1 or not (math.isfinite(a) and math.isfinite(f) and a > 0 and f > 0):
                raise InvalidInputError(
                    f"vlrnn_planner: CellProfile.step_time_scale entries must be (block length >= 1, "
                    f"factor > 0, factor > 0), got {(k, a, f)!r}; re-profile the cell"
                )
        object.__setattr__(self, "step_time_scale", scale)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value) or value < 0:
                    raise InvalidInputError(
                        f"vlrnn_planner: CellProfile.{f.name} must be a finite number >= 0, "
                        f"got {value!r}; re-profile the cell"
                    )

    @property
    def advance_overhead(self) -> float:
        """Fixed seconds per block run without grad."""
        return self.block_overhead_seconds if self.advance_overhead_seconds is None else self.advance_overhead_seconds

    def time_scale(self, block_length: float) -> tuple[float, float]:
        """The factors on the seconds per step at ``block_length`` (no grad, with grad).

        Parameters
        ----------
        block_length : float
            Steps per block.

        Returns
        -------
        tuple of float
            ``(no-grad factor, with-grad factor)``: linear in ``log(block_length)`` between the
            measured lengths; below the shortest, its values; above the longest, the rise between
            the last two carried on (a step that grew dearer with longer blocks keeps doing so, up
            to twice the last value), or the last value where they fall; ``(1, 1)`` without
            measurements.

        Examples
        --------
        >>> p = CellProfile(step_time_scale=((16, 1.0, 1.2), (64, 1.0, 1.0), (256, 1.5, 1.1)))
        >>> p.time_scale(32), p.time_scale(4)
        ((1.0, 1.1), (1.0, 1.2))
        >>> [round(f, 3) for f in p.time_scale(1024)]
        [2.0, 1.2]
        """
        points = self.step_time_scale
        if not points:
            return 1.0, 1.0
        if block_length <= points[0][0]:
            return points[0][1], points[0][2]
        for (k0, a0, f0), (k1, a1, f1) in zip(points, points[1:]):
            if block_length <= k1:
                w = math.log(block_length / k0) / math.log(k1 / k0)
                return a0 + w * (a1 - a0), f0 + w * (f1 - f0)
        k1, a1, f1 = points[-1]
        if len(points) == 1:
            return a1, f1
        k0, a0, f0 = points[-2]
        w = math.log(block_length / k1) / math.log(k1 / k0)

        def carried(v0: float, v1: float) -> float:
            return v1 if v1 <= v0 else min(v1 + w * (v1 - v0), 2 * v1)

        return carried(a0, a1), carried(f0, f1)

    @property
    def overlap_pays(self) -> bool:
        """Whether overlapping recomputation with backward was measured to save at least
        `OVERLAP_MIN_GAIN` of a block's seconds with grad, and more than repeated timings of one
        block differed by (`timing_spread`): a gain within the noise is not one."""
        return self.overlap_ratio is not None and self.overlap_ratio <= 1 - max(OVERLAP_MIN_GAIN, self.timing_spread)

    @property
    def timing_reliable(self) -> bool:
        """Whether repeated timings agreed (`timing_spread` at most `TIMING_SPREAD_LIMIT`)."""
        return self.timing_spread <= TIMING_SPREAD_LIMIT

    @property
    def available_bytes(self) -> int | None:
        """What this process could use on the device when profiled: free memory plus what its
        allocator already held (parameters and cached blocks, reusable by the training step).
        None where the device reports no memory. A budget share resolves against this."""
        if self.device_free_bytes is None:
            return None
        return self.device_free_bytes + (self.allocator_reserved_bytes or 0)

    @property
    def device_label(self) -> str:
        """Where it was measured, for summaries: ``"cuda:0 (NVIDIA H200), float32"``."""
        name = f" ({self.device_name})" if self.device_name else ""
        return f"{self.device}{name}, {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of primitives (``notes`` as a list), for JSON.

        Returns
        -------
        dict
            Field name to value; `from_dict` reads it back.
        """
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["notes"] = list(self.notes)
        data["step_time_scale"] = [list(entry) for entry in self.step_time_scale]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "profile") -> CellProfile:
        """The profile written by `to_dict`, each field's type and range checked.

        Parameters
        ----------
        data : Mapping
            Field name to value; a missing field takes its default.
        where : str, default "profile"
            The record's place in its document, for messages (``"plan.profile"``).

        Returns
        -------
        CellProfile

        Raises
        ------
        InvalidInputError
            For a field this version does not know, or a value of the wrong type or range,
            naming the field.
        """
        return cls(**read_fields(data, where, _READERS))

    def __str__(self) -> str:
        return describe_profile(self)


def _read_notes(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"vlrnn_planner: {where} must be a list of strings, got {value!r}")
    return tuple(read_str(v, f"{where}[{i}]") for i, v in enumerate(value))


def _optional_bytes(value: Any, where: str) -> int | None:
    return read_optional(value, where, read_int)


def _read_scale(value: Any, where: str) -> tuple[tuple[int, float, float], ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"vlrnn_planner: {where} must be a list of [block length, factor, factor], got {value!r}")
    entries = []
    for i, entry in enumerate(value):
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise InvalidInputError(f"vlrnn_planner: {where}[{i}] must be [block length, factor, factor], got {entry!r}")
        entries.append((read_int(entry[0], f"{where}[{i}][0]"), read_number(entry[1], f"{where}[{i}][1]"),
                        read_number(entry[2], f"{where}[{i}][2]")))
    return tuple(entries)


# Each field's reader: its type and range (counts and sizes >= 0, as __post_init__ requires).
_READERS: dict[str, Callable[[Any, str], Any]] = {
    **dict.fromkeys(("device", "device_name", "dtype", "cell", "measured_by"), read_str),
    **dict.fromkeys(("time_dim", "parameter_bytes", "gradient_bytes", "allocator_overhead_bytes"), read_int),
    **dict.fromkeys(
        (
            "state_bytes_per_sample", "state_bytes_fixed", "input_bytes_per_step", "target_bytes_per_step",
            "activation_bytes_per_step", "activation_bytes_fixed", "transient_bytes_per_step",
            "transient_bytes_fixed", "advance_seconds_per_step", "advance_seconds_per_step_per_sample",
            "fb_seconds_per_step", "fb_seconds_per_step_per_sample", "block_overhead_seconds",
            "profile_seconds", "timing_spread",
        ),
        read_number,
    ),
    **dict.fromkeys(("advance_overhead_seconds", "overlap_ratio"), lambda value, where: read_optional(value, where, read_number)),
    "step_time_scale": _read_scale,
    **dict.fromkeys(("device_total_bytes", "device_free_bytes", "process_bytes", "allocator_reserved_bytes"), _optional_bytes),
    "loss_included": read_bool,
    "notes": _read_notes,
}


def describe_profile(profile: CellProfile) -> str:
    """A few lines on what a profile measured (``str(profile)``).

    Parameters
    ----------
    profile : CellProfile
        The profile.

    Returns
    -------
    str

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
        f"CellProfile of {p.cell or 'a cell'} on {p.device_label}",
        f"  memory measured by: {p.measured_by or 'unknown'}",
        f"  per step and sequence: activations {format_bytes(p.activation_bytes_per_step)}, "
        f"no-grad transients {format_bytes(p.transient_bytes_per_step)}, "
        f"inputs {format_bytes(p.input_bytes_per_step)}, targets {format_bytes(p.target_bytes_per_step)}",
        f"  per block: activations {format_bytes(p.activation_bytes_fixed)}, "
        f"no-grad transients {format_bytes(p.transient_bytes_fixed)}, "
        f"overhead {format_seconds(p.advance_overhead)} without grad, {format_seconds(p.block_overhead_seconds)} with",
        f"  state per sequence {format_bytes(p.state_bytes_per_sample)}; parameters "
        f"{format_bytes(p.parameter_bytes)}, gradients {format_bytes(p.gradient_bytes)}"
        + ("; loss head included" if p.loss_included else ""),
        f"  seconds per step: no-grad {format_seconds(p.advance_seconds_per_step)} + "
        f"{format_seconds(p.advance_seconds_per_step_per_sample)} per sequence; with grad and backward "
        f"{format_seconds(p.fb_seconds_per_step)} + {format_seconds(p.fb_seconds_per_step_per_sample)} per sequence",
    ]
    if p.device_total_bytes is not None:
        lines.append(
            f"  device memory: {format_bytes(p.device_total_bytes)} total, "
            f"{format_bytes(p.device_free_bytes or 0)} free"
            + (f", this process {format_bytes(p.process_bytes)}" if p.process_bytes is not None else "")
            + (f", allocator holds {format_bytes(p.allocator_reserved_bytes)}" if p.allocator_reserved_bytes is not None else "")
        )
    if p.step_time_scale:
        lines.append(
            "  seconds per step by block length (no grad, with grad, relative): "
            + ", ".join(f"K={k}: {a:.2f}, {f:.2f}" for k, a, f in p.step_time_scale)
        )
    if p.overlap_ratio is not None:
        lines.append(
            f"  a block with grad beside the next one's recomputation: {p.overlap_ratio:.2f} of its time alone"
            + (" (overlap pays)" if p.overlap_pays else " (overlap does not pay)")
        )
    if not p.timing_reliable:
        lines.append(
            f"  UNRELIABLE timings: repeated runs of one block differed by up to {100 * p.timing_spread:.0f}% "
            "(other work shared the device?); profile again on a quiet device"
        )
    if p.profile_seconds:
        lines.append(f"  profiled in {format_seconds(p.profile_seconds)}")
    lines.extend(f"  note: {n}" for n in p.notes)
    return "\n".join(lines)
