"""`Schedule` (one concrete run of a sequence in blocks) and `Prediction` (what it will cost).

A `Schedule` is data: the strategy, the sequence's length, how it is cut into blocks, and the
ordered actions, generated lazily from them (`vlrnn_planner.strategies`). Where a cell profile
was known it carries a `Prediction` from the cost model: peak bytes and the named memory parts
that add up to it, the bytes of one state, of the largest block in flight and of everything held
throughout (what the reference simulator's memory model needs), and seconds. Both are plain
records: ``to_dict`` / ``from_dict`` write and read them field by field, each field checked, and
``str()`` summarises them. Plans (`vlrnn_planner.plan`) and the planner build schedules;
backends carry them out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import export, strategies
from .actions import Action
from .budget import format_bytes, format_seconds
from .errors import InvalidInputError
from .records import (
    FORMAT_SCHEDULE,
    positive_int,
    read_document,
    read_fields,
    read_int,
    read_bool,
    read_int_tuple,
    read_number,
    read_optional,
    read_str,
    write_document,
)
from .simulate import schedule_statistics

__all__ = ["Actions", "Prediction", "Schedule", "describe_schedule"]


def _listing(values: Sequence[int], most: int = 8) -> str:
    """The first ``most`` of ``values``, comma-separated, with ``...`` if there are more."""
    shown = ", ".join(map(str, values[:most]))
    return shown + (", ..." if len(values) > most else "")


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


def _read_parts(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"vlrnn_planner: {where} must be a list of [name, bytes] pairs, got {value!r}")
    parts = []
    for i, part in enumerate(value):
        if not isinstance(part, (list, tuple)) or len(part) != 2:
            raise InvalidInputError(f"vlrnn_planner: {where}[{i}] must be a [name, bytes] pair, got {part!r}")
        parts.append((read_str(part[0], f"{where}[{i}][0]"), read_int(part[1], f"{where}[{i}][1]")))
    return tuple(parts)


_PREDICTION_READERS = {
    "peak_bytes": read_int,
    "seconds": read_number,
    "memory_parts": _read_parts,
    "state_bytes": read_number,
    "block_bytes": read_int,
    "fixed_bytes": read_int,
    "baseline_seconds": partial(read_optional, read=read_number),
    "device": partial(read_optional, read=read_str),
    "budget_bytes": partial(read_optional, read=read_int, minimum=1),
}


@dataclass(frozen=True)
class Prediction:
    """What the cost model (`vlrnn_planner.cost`) predicts for a schedule.

    Attributes
    ----------
    peak_bytes : int
        Predicted peak memory on the device, bytes: the sum of ``memory_parts``.
    seconds : float
        Predicted seconds of the training step.
    memory_parts : tuple of (str, int)
        What the peak is made of, by name, in bytes (NOTE [ Peak memory model ] in
        `vlrnn_planner.cost`).
    state_bytes : float
        Bytes of one boundary state with its fixed companions (the batch's largest).
    block_bytes : int
        Bytes of the largest block in flight (of the two in flight, with overlap).
    fixed_bytes : int
        Bytes held throughout the step: parameters, gradients, inputs and the like.
    baseline_seconds : float or None
        Predicted seconds of plain BPTT on the same input, for comparison.
    device : str or None
        The device the cell was profiled on.
    budget_bytes : int or None
        The memory budget the schedule was planned to, bytes.

    Raises
    ------
    InvalidInputError
        For a field of the wrong type or range, or parts that do not add up to the peak.

    Examples
    --------
    >>> p = Prediction(peak_bytes=1150, seconds=2.0, memory_parts=(("parameters", 1000), ("block in flight", 150)))
    >>> Prediction.from_dict(p.to_dict()) == p
    True
    """

    peak_bytes: int
    seconds: float
    memory_parts: tuple[tuple[str, int], ...] = ()
    state_bytes: float = 0.0
    block_bytes: int = 0
    fixed_bytes: int = 0
    baseline_seconds: float | None = None
    device: str | None = None
    budget_bytes: int | None = None

    def __post_init__(self) -> None:
        for name, read in _PREDICTION_READERS.items():
            object.__setattr__(self, name, read(getattr(self, name), f"Prediction.{name}"))
        if self.memory_parts and sum(size for _, size in self.memory_parts) != self.peak_bytes:
            raise InvalidInputError(
                f"vlrnn_planner: the memory parts add up to {sum(size for _, size in self.memory_parts)} "
                f"bytes, not the peak of {self.peak_bytes}; give parts that add up to the peak"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of primitives (``memory_parts`` as a list of pairs), for JSON.

        Returns
        -------
        dict
            Field name to value; `from_dict` reads it back.
        """
        data = {name: getattr(self, name) for name in _PREDICTION_READERS}
        data["memory_parts"] = [list(part) for part in self.memory_parts]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "prediction") -> Prediction:
        """The prediction written by `to_dict`, each field's type and range checked.

        Parameters
        ----------
        data : Mapping
            Field name to value; a missing optional field takes its default.
        where : str, default "prediction"
            The record's place in its document, for messages.

        Returns
        -------
        Prediction

        Raises
        ------
        InvalidInputError
            For an unknown or missing field, or a value of the wrong type or range, naming it.
        """
        return cls(**read_fields(data, where, _PREDICTION_READERS, required=("peak_bytes", "seconds")))


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------


def _check_boundaries(boundaries: Any, seq_len: int) -> tuple[int, ...]:
    """``boundaries`` as a tuple of ints ``0 = b_0 < ... < b_n = seq_len``, or InvalidInputError."""
    hint = "give the start step of every block, then seq_len, increasing from 0"
    if isinstance(boundaries, (str, bytes)):
        raise InvalidInputError(f"vlrnn_planner: boundaries must be a sequence of ints, got {boundaries!r}; {hint}")
    try:
        bounds = tuple(boundaries)
    except TypeError:
        raise InvalidInputError(
            f"vlrnn_planner: boundaries must be a sequence of ints, got {boundaries!r}; {hint}"
        ) from None
    for b in bounds:
        if isinstance(b, bool) or not isinstance(b, int):
            raise InvalidInputError(
                f"vlrnn_planner: boundaries must hold ints, got {b!r} in {_listing(bounds)}; {hint}"
            )
    if len(bounds) < 2:
        raise InvalidInputError(
            f"vlrnn_planner: boundaries ({_listing(bounds)}) need at least a start and an end; {hint}"
        )
    if bounds[0] != 0:
        raise InvalidInputError(f"vlrnn_planner: boundaries must start at step 0, got {bounds[0]}; {hint}")
    if bounds[-1] != seq_len:
        raise InvalidInputError(
            f"vlrnn_planner: boundaries must end at seq_len={seq_len}, got {bounds[-1]}; {hint}"
        )
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if b <= a:
            raise InvalidInputError(
                f"vlrnn_planner: boundaries must increase, but entry {i + 1} ({b}) is not above "
                f"entry {i} ({a}); every block needs at least one step"
            )
    return bounds


class Actions(Sequence):
    """The ordered actions of a schedule: re-iterable, generated afresh on each pass.

    Indexing and `len` walk the generator (O(number of actions)); iterate instead where you can.

    Parameters
    ----------
    schedule : Schedule
        The schedule whose actions these are.
    """

    __slots__ = ("_schedule", "_len")

    def __init__(self, schedule: Schedule) -> None:
        self._schedule = schedule
        self._len: int | None = None

    def __iter__(self) -> Iterator[Action]:
        return strategies.generate(self._schedule)

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(itertools.islice(self, *index.indices(len(self))))
        if index < 0:
            index += len(self)
        for i, action in enumerate(self):
            if i == index:
                return action
        raise IndexError("schedule action index out of range")

    def __repr__(self) -> str:
        head = list(itertools.islice(self, 6))
        more = ", ..." if len(head) == 6 else ""
        return f"Actions([{', '.join(map(repr, head))}{more}])"


def _read_prediction(value: Any, where: str) -> Prediction | None:
    if value is None or isinstance(value, Prediction):
        return value
    return Prediction.from_dict(value, where=where)


_SCHEDULE_READERS = {
    "strategy": read_str,
    "seq_len": partial(read_int, minimum=1),
    "block_length": partial(read_int, minimum=1),
    "checkpoints": partial(read_optional, read=read_int, minimum=1),
    "levels": partial(read_int_tuple, minimum=1),
    "batch_size": partial(read_optional, read=read_int, minimum=1),
    "boundaries": read_int_tuple,
    "splits": read_int_tuple,
    "overlap": read_bool,
    "prediction": _read_prediction,
}
_MOVED_TO_PREDICTION = ("predicted_peak_bytes", "predicted_seconds", "baseline_seconds", "memory_parts", "device", "budget_bytes")


@dataclass(frozen=True)
class Schedule:
    """A concrete schedule for one input shape.

    Attributes
    ----------
    strategy : str
        ``"store_all"`` (plain BPTT), ``"blocks"``, ``"multilevel"`` or ``"binomial"``.
    seq_len : int
        Number of time steps ``T``.
    block_length : int
        Steps per block ``K``; the last block may be shorter. With ``boundaries``, the longest
        block (set from them).
    checkpoints : int or None
        Most stored states (initial state included) for ``"binomial"``.
    levels : tuple of int
        For ``"multilevel"``: the segment sizes in blocks, outermost first.
    batch_size : int or None
        The batch size the schedule was planned for, if known.
    boundaries : tuple of int
        Unequal blocks: the start step of every block, then ``seq_len``
        (``0 = b_0 < b_1 < ... < b_n = seq_len``); empty for blocks of ``block_length`` steps.
        The planner cuts a shrinking (packed) batch so that blocks hold about equal sample-steps
        (see NOTE [ Per-block costs of a shrinking batch ] in `vlrnn_planner.solver`).
    splits : tuple of int
        For ``"binomial"`` over unequal blocks: the split points of the schedule of least
        recomputation time (`vlrnn_planner.strategies.chain_splits`, walked by
        `vlrnn_planner.strategies.binomial_splits`), ``num_blocks - 1`` of them; empty for the
        equal-cost binomial schedule.
    overlap : bool, default False
        Backpropagate each block while the block before it is recomputed (the planner sets it
        where the profile measured that it pays: NOTE [ Overlap in the cost model ] in
        `vlrnn_planner.cost`); two blocks are then in flight.
    prediction : Prediction or None
        The cost model's prediction, where a profile was known.

    Raises
    ------
    InvalidInputError
        For a field of the wrong type or range, or boundaries or splits that do not fit.

    Examples
    --------
    >>> s = Schedule("blocks", seq_len=10, block_length=1, boundaries=(0, 2, 5, 10))
    >>> s.num_blocks, s.block_length, s.block_steps(1), s.block_steps(2)
    (3, 5, (2, 5), (5, 10))
    """

    strategy: str
    seq_len: int
    block_length: int
    checkpoints: int | None = None
    levels: tuple[int, ...] = ()
    batch_size: int | None = None
    boundaries: tuple[int, ...] = ()
    splits: tuple[int, ...] = ()
    overlap: bool = False
    prediction: Prediction | None = None

    def __post_init__(self) -> None:
        positive_int("seq_len", self.seq_len, hint="pass the number of time steps")
        positive_int("block_length", self.block_length, hint="use a block length of 1 or more steps")
        if self.strategy not in strategies.STRATEGIES:
            raise InvalidInputError(
                f"vlrnn_planner: unknown strategy {self.strategy!r}; "
                f"choose one of {', '.join(strategies.STRATEGIES)}"
            )
        for name in ("checkpoints", "batch_size"):
            read_optional(getattr(self, name), name, read_int, minimum=1)
        object.__setattr__(self, "levels", read_int_tuple(self.levels, "levels", minimum=1))
        read_bool(self.overlap, "overlap")
        if not (self.prediction is None or isinstance(self.prediction, Prediction)):
            raise InvalidInputError(f"vlrnn_planner: prediction must be a Prediction or None, got {self.prediction!r}")
        self._set_blocks()
        self._set_splits()

    def _set_blocks(self) -> None:
        if self.boundaries:
            bounds = _check_boundaries(self.boundaries, self.seq_len)
            object.__setattr__(self, "boundaries", bounds)
            object.__setattr__(self, "block_length", max(b - a for a, b in zip(bounds, bounds[1:])))
        elif not isinstance(self.boundaries, tuple):
            object.__setattr__(self, "boundaries", ())
        if self.strategy == "store_all":
            if len(self.boundaries) > 2:
                raise InvalidInputError(
                    f"vlrnn_planner: store_all is one block, but boundaries={self.boundaries!r} "
                    f"cut {len(self.boundaries) - 1} blocks; use strategy 'blocks' or drop boundaries"
                )
            object.__setattr__(self, "boundaries", ())
            object.__setattr__(self, "block_length", self.seq_len)

    def _set_splits(self) -> None:
        if isinstance(self.splits, (str, bytes)) or self.splits:
            if self.strategy != "binomial":
                raise InvalidInputError(
                    f"vlrnn_planner: splits are for the binomial strategy, not {self.strategy!r}; "
                    "drop splits or use strategy 'binomial'"
                )
            if self.checkpoints is None:
                raise InvalidInputError(
                    "vlrnn_planner: splits need checkpoints=c, the most stored states they were "
                    "computed for"
                )
            splits = strategies.check_splits(self.num_blocks, self.checkpoints, self.splits)
            object.__setattr__(self, "splits", splits)
        elif not isinstance(self.splits, tuple):
            object.__setattr__(self, "splits", ())

    @property
    def num_blocks(self) -> int:
        """Number of blocks: ``ceil(T / K)``, or ``len(boundaries) - 1`` for unequal blocks."""
        if self.boundaries:
            return len(self.boundaries) - 1
        return math.ceil(self.seq_len / self.block_length)

    def block_steps(self, block: int) -> tuple[int, int]:
        """The time steps ``[start, stop)`` of a block.

        Parameters
        ----------
        block : int
            Block index, ``0 <= block < num_blocks``.

        Returns
        -------
        (int, int)
            Its first step and one past its last.

        Raises
        ------
        IndexError
            For a block outside the schedule.
        """
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"vlrnn_planner: block {block} outside 0..{self.num_blocks - 1}")
        if self.boundaries:
            return self.boundaries[block], self.boundaries[block + 1]
        start = block * self.block_length
        return start, min(start + self.block_length, self.seq_len)

    def boundary_step(self, boundary: int) -> int:
        """The time step at a boundary: where block ``boundary`` starts, or ``seq_len`` at the end.

        Parameters
        ----------
        boundary : int
            Boundary index, ``0 <= boundary <= num_blocks``.

        Returns
        -------
        int

        Examples
        --------
        >>> Schedule("blocks", seq_len=10, block_length=4).boundary_step(3)
        10
        """
        if self.boundaries:
            return self.boundaries[boundary]
        return min(boundary * self.block_length, self.seq_len)

    @property
    def actions(self) -> Actions:
        """The ordered actions, generated lazily on each iteration."""
        return Actions(self)

    # The prediction's fields, read where a schedule is run or printed.
    @property
    def predicted_peak_bytes(self) -> int | None:
        """The predicted peak memory in bytes (``prediction.peak_bytes``), or None."""
        return None if self.prediction is None else self.prediction.peak_bytes

    @property
    def predicted_seconds(self) -> float | None:
        """The predicted seconds (``prediction.seconds``), or None."""
        return None if self.prediction is None else self.prediction.seconds

    @property
    def baseline_seconds(self) -> float | None:
        """The predicted seconds of plain BPTT (``prediction.baseline_seconds``), or None."""
        return None if self.prediction is None else self.prediction.baseline_seconds

    @property
    def memory_parts(self) -> tuple[tuple[str, int], ...]:
        """What the predicted peak is made of (``prediction.memory_parts``); empty without one."""
        return () if self.prediction is None else self.prediction.memory_parts

    @property
    def device(self) -> str | None:
        """The device planned for (``prediction.device``), or None."""
        return None if self.prediction is None else self.prediction.device

    @property
    def budget_bytes(self) -> int | None:
        """The budget planned to (``prediction.budget_bytes``), or None."""
        return None if self.prediction is None else self.prediction.budget_bytes

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of primitives (tuples as lists, the prediction as a dict).

        Returns
        -------
        dict
            Field name to value; `from_dict` reads it back.
        """
        data: dict[str, Any] = {name: getattr(self, name) for name in _SCHEDULE_READERS}
        for name in ("levels", "boundaries", "splits"):
            data[name] = list(data[name])
        data["prediction"] = None if self.prediction is None else self.prediction.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "schedule") -> Schedule:
        """The schedule written by `to_dict`, each field's type and range checked.

        Parameters
        ----------
        data : Mapping
            Field name to value; a missing optional field takes its default.
        where : str, default "schedule"
            The record's place in its document, for messages.

        Returns
        -------
        Schedule

        Raises
        ------
        InvalidInputError
            For an unknown or missing field, or a value of the wrong type or range, naming it.
        """
        moved = [name for name in _MOVED_TO_PREDICTION if isinstance(data, Mapping) and name in data]
        if moved:
            raise InvalidInputError(
                f"vlrnn_planner: {where} has {', '.join(moved)}, which this version keeps in "
                f"{where}.prediction; the file was written by an earlier vlrnn-planner: plan it again"
            )
        return cls(**read_fields(data, where, _SCHEDULE_READERS, required=("strategy", "seq_len", "block_length")))

    def to_json(self, *, indent: int | None = None) -> str:
        """This schedule as a JSON document; `Schedule.from_json` gives back an equal object.

        Parameters
        ----------
        indent : int, optional
            Indentation, as for `json.dumps`; compact when None.

        Returns
        -------
        str
            ``{"format": "vlrnn-planner/schedule", "version": 1, "schedule": {...}}``.

        Examples
        --------
        >>> from vlrnn_planner import fixed_plan
        >>> s = fixed_plan(block_length=10).schedule(seq_len=95, batch_size=8)
        >>> Schedule.from_json(s.to_json()) == s
        True
        """
        return write_document(FORMAT_SCHEDULE, {"schedule": self.to_dict()}, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Schedule:
        """The schedule written by `Schedule.to_json`.

        Parameters
        ----------
        text : str or bytes
            The JSON document.

        Returns
        -------
        Schedule

        Raises
        ------
        InvalidInputError
            If ``text`` is not JSON, not a schedule document of a version this library reads, or
            holds a field of the wrong type or range (named in the message).
        """
        doc = read_document(text, expected=FORMAT_SCHEDULE)
        if "schedule" not in doc:
            raise InvalidInputError('vlrnn_planner: the schedule document has no "schedule" object')
        return cls.from_dict(doc["schedule"])

    def graph(self):
        """A `networkx.DiGraph`: one node per action, edges for order and for state reads.

        Returns
        -------
        networkx.DiGraph
            See `vlrnn_planner.export.schedule_graph`.
        """
        return export.schedule_graph(self)

    def to_dot(self) -> str:
        """The graph of `graph` in Graphviz DOT.

        Returns
        -------
        str
            See `vlrnn_planner.export.schedule_to_dot`.
        """
        return export.schedule_to_dot(self)

    def __str__(self) -> str:
        return describe_schedule(self)


def describe_schedule(schedule: Schedule) -> str:
    """The summary ``str(schedule)`` prints: strategy, K, blocks, device, budget, predicted peak
    with its parts, predicted time and its ratio to plain BPTT.

    Parameters
    ----------
    schedule : Schedule
        The schedule.

    Returns
    -------
    str

    Examples
    --------
    >>> print(Schedule("blocks", seq_len=10, block_length=4, batch_size=2))
    Schedule: blocks, T=10, K=4, 3 blocks, batch 2
      block forward evaluations: 5 (2 without grad, 3 with grad)
    """
    s, n = schedule, schedule.num_blocks
    lines = [
        f"Schedule: {s.strategy}, T={s.seq_len}, K={s.block_length}, {n} block{'s' if n != 1 else ''}"
        + (f", batch {s.batch_size}" if s.batch_size is not None else "")
    ]
    if s.boundaries:
        lengths = [b - a for a, b in zip(s.boundaries, s.boundaries[1:])]
        lines.append(
            f"  unequal blocks: {min(lengths)} to {max(lengths)} steps "
            f"(K above is the longest), starting at steps {_listing(s.boundaries[:-1])}"
        )
    if s.checkpoints is not None:
        lines.append(f"  stored states at most: {s.checkpoints}")
    if s.levels:
        lines.append(f"  levels (blocks per segment): {', '.join(map(str, s.levels))}")
    if s.strategy != "store_all":
        evaluations = schedule_statistics(s).forward_evaluations
        lines.append(f"  block forward evaluations: {evaluations} ({evaluations - n} without grad, {n} with grad)")
    if s.overlap:
        lines.append("  overlap: each block is backpropagated while the one before it is recomputed")
    if s.prediction is not None:
        lines.extend(_describe_prediction(s.prediction))
    return "\n".join(lines)


def _describe_prediction(p: Prediction) -> list[str]:
    lines = []
    if p.device is not None:
        lines.append(f"  device: {p.device}")
    if p.budget_bytes is not None:
        lines.append(f"  budget: {format_bytes(p.budget_bytes)}")
    head = f"  predicted peak: {format_bytes(p.peak_bytes)}"
    if p.budget_bytes:
        head += f" ({100 * p.peak_bytes / p.budget_bytes:.0f}% of the budget)"
    lines.append(head)
    lines.extend(f"    {name}: {format_bytes(size)}" for name, size in p.memory_parts if size)
    text = f"  predicted time: {format_seconds(p.seconds)}"
    if p.baseline_seconds:
        text += f", {p.seconds / p.baseline_seconds:.2f}x plain BPTT ({format_seconds(p.baseline_seconds)})"
    lines.append(text)
    return lines
