"""`Plan`: a policy that turns an input shape into a `Schedule`, and keeps what it chose.

A `Plan` says how to choose a schedule: a fixed block length (`fixed_plan`), or a memory budget
with a measured cell profile (`vlrnn_planner.auto_plan`). `Plan.schedule(seq_len=...,
batch_size=...)` resolves it for one input shape, through the solver (`vlrnn_planner.solver`)
for a budget plan, and caches the result: the cache is the plan's own and only this module
touches it (priming it from a file, replacing a schedule that ran out of memory, listing what was
resolved). Plans are plain records too: `Plan.to_json` / `Plan.from_json`, and `load_document`
for a file that may hold either a plan or a schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from . import strategies
from .budget import format_bytes
from .cost import Workload
from .errors import InfeasibleBudgetError, InvalidInputError
from .profile import CellProfile
from .records import (
    FORMAT_PLAN,
    FORMAT_SCHEDULE,
    positive_int,
    read_bool,
    read_document,
    read_fields,
    read_int,
    read_optional,
    read_str,
    write_document,
)
from .schedule import Schedule, describe_schedule
from .solver import solve

# Memory parts already on the device when a call begins (the rest is what the call adds).
RESIDENT_PARTS = ("parameters", "gradients", "inputs", "targets")

__all__ = ["Plan", "Document", "fixed_plan", "load_document", "describe_plan"]


def _read_profile(value: Any, where: str) -> CellProfile:
    if isinstance(value, CellProfile):
        return value
    if isinstance(value, Mapping) and "__type__" in value:  # files written before profiles were plain
        if value["__type__"] != "CellProfile":
            raise InvalidInputError(
                f"vlrnn_planner: unknown object type {value['__type__']!r} in {where}; expected a CellProfile"
            )
        value = {k: v for k, v in value.items() if k != "__type__"}
    return CellProfile.from_dict(value, where=where)


def _read_strategy(value: Any, where: str) -> str:
    if read_str(value, where) not in strategies.STRATEGIES:
        raise InvalidInputError(
            f"vlrnn_planner: {where} must be one of {', '.join(strategies.STRATEGIES)}, got {value!r}"
        )
    return value


_PLAN_READERS = {
    "block_length": partial(read_optional, read=read_int, minimum=1),
    "checkpoints": partial(read_optional, read=read_int, minimum=1),
    "strategy": partial(read_optional, read=_read_strategy),
    "budget_bytes": partial(read_optional, read=read_int, minimum=1, hint="give the budget in bytes, such as 8000000000"),
    "profile": partial(read_optional, read=_read_profile),
    "budget_spec": partial(read_optional, read=read_str),
    "inputs_on_host": read_bool,
    "time_dim": partial(read_optional, read=read_int, minimum=None),
    "block_multiple": partial(read_int, minimum=1),
}


def _check_multiple(block_length: int, block_multiple: int) -> None:
    if block_length % block_multiple:
        below = block_length // block_multiple * block_multiple
        nearest = f"{below} or {below + block_multiple}" if below else f"{block_multiple}"
        raise InvalidInputError(
            f"vlrnn_planner: block_length={block_length} is not a multiple of block_multiple="
            f"{block_multiple} (the cell works in segments of {block_multiple} steps); use {nearest}"
        )


@dataclass(frozen=True)
class Plan:
    """How to choose a schedule; `schedule` resolves it for one input shape.

    Build one with `fixed_plan` or `vlrnn_planner.auto_plan`.

    Attributes
    ----------
    block_length : int or None
        A fixed plan's steps per block.
    checkpoints : int or None
        A fixed plan's most stored states (binomial checkpointing where fewer than the blocks).
    strategy : str or None
        A fixed plan's strategy, where not chosen from ``checkpoints``.
    budget_bytes : int or None
        A budget plan's memory budget in bytes.
    profile : CellProfile or None
        A budget plan's measured cell.
    budget_spec : str or None
        The budget as it was written (``"8GB"``, ``"80%"``), for summaries.
    inputs_on_host : bool
        The inputs stay in host memory and are copied to the device block by block.
    time_dim : int or None
        The inputs' time axis given to `vlrnn_planner.auto_plan`, if any.
    block_multiple : int
        The cell works in segments of this many steps: every block starts at a multiple of it
        (NOTE [ Block multiples ] in `vlrnn_planner.solver`).

    Raises
    ------
    InvalidInputError
        For a field of the wrong type or range, or a block length that is not a multiple of
        ``block_multiple``.
    """

    block_length: int | None = None
    checkpoints: int | None = None
    strategy: str | None = None
    budget_bytes: int | None = None
    profile: Any = None
    budget_spec: str | None = None
    inputs_on_host: bool = False
    time_dim: int | None = None
    block_multiple: int = 1
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        for name, read in _PLAN_READERS.items():
            if name != "profile":  # checked where it is used: planning and export
                read(getattr(self, name), name)
        if self.block_length is not None:
            _check_multiple(self.block_length, self.block_multiple)

    def schedule(
        self,
        seq_len: int,
        batch_size: int | None = None,
        *,
        batch_sizes: Sequence[int] | None = None,
        input_gradients: bool = False,
    ) -> Schedule:
        """The concrete `Schedule` for a sequence of ``seq_len`` steps and a batch size.

        Parameters
        ----------
        seq_len : int
            Number of time steps.
        batch_size : int, optional
            Batch size (needed for memory predictions).
        batch_sizes : sequence of int, optional
            Batch size at each time step, for batches that shrink (packed sequences).
        input_gradients : bool, default False
            The inputs carry an autograd graph, so the backward keeps a gradient buffer as large
            as them (a memory part of budget plans).

        Returns
        -------
        Schedule
            The same object for the same arguments: resolved once, then cached.

        Raises
        ------
        InvalidInputError
            For a non-positive length or batch size, a budget plan without a batch size or
            profile, or a plan with neither a block length nor a budget.
        InfeasibleBudgetError
            If nothing fits a budget plan's budget.

        Examples
        --------
        >>> fixed_plan(block_length=4).schedule(seq_len=10).num_blocks
        3
        """
        positive_int("seq_len", seq_len, hint="pass the number of time steps")
        if batch_size is not None:
            positive_int("batch_size", batch_size, hint="pass the number of sequences in the batch")
        if self.budget_bytes is None:  # a fixed plan does not depend on how the batch shrinks
            batch_sizes, input_gradients = None, False
        key = self._key(seq_len, batch_size, batch_sizes, input_gradients)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._resolve(*key)
            self._cache[key] = cached
        return cached

    @staticmethod
    def _key(seq_len: int, batch_size: int | None, batch_sizes: Sequence[int] | None, input_gradients: bool) -> tuple:
        return (seq_len, batch_size, None if batch_sizes is None else tuple(batch_sizes), bool(input_gradients))

    def for_shapes_only(self) -> Plan:
        """This plan without the schedules it resolved so far (for a summary of one shape).

        Returns
        -------
        Plan
            Equal to this one, with an empty cache.
        """
        return replace(self, _cache={})

    def replan_smaller(
        self, failed: Schedule, *, batch_sizes: Sequence[int] | None = None, headroom_bytes: int | None = None
    ) -> Schedule | None:
        """After ``failed`` ran out of memory, a schedule planned to what the device could give.

        With ``headroom_bytes`` (what the failed call could grow by, measured by the backend when
        it failed), the new budget is what was resident before the call plus 9/10 of that
        headroom; without it, 3/4 of the failed schedule's predicted peak. The new schedule
        replaces ``failed`` in the cache, for its shape, from now on (NOTE [ Out of memory ] in
        `vlrnn_planner`).

        Parameters
        ----------
        failed : Schedule
            A schedule of this plan that ran out of memory.
        batch_sizes : sequence of int, optional
            The shape's batch sizes, where ``failed`` is not in the cache.
        headroom_bytes : int, optional
            Bytes the failed call could have grown by.

        Returns
        -------
        Schedule or None
            None if nothing fits the smaller budget or this plan has no budget.
        """
        if self.budget_bytes is None or failed.predicted_peak_bytes is None:
            return None
        budget = failed.predicted_peak_bytes * 3 // 4
        if headroom_bytes is not None:
            resident = sum(size for name, size in failed.memory_parts if name in RESIDENT_PARTS)
            budget = min(budget, resident + headroom_bytes * 9 // 10)
        key = next((k for k, s in self._cache.items() if s is failed), None)
        if key is None:
            key = self._key(failed.seq_len, failed.batch_size, batch_sizes, False)
        if budget < 1:
            return None
        smaller = replace(self, budget_bytes=budget, _cache={})
        try:
            schedule = smaller._resolve(*key)
        except InfeasibleBudgetError:
            return None
        self._cache[key] = schedule
        return schedule

    def _resolve(
        self, seq_len: int, batch_size: int | None, batch_sizes: tuple[int, ...] | None, input_gradients: bool
    ) -> Schedule:
        if self.budget_bytes is not None:
            return self._solve(seq_len, batch_size, batch_sizes, input_gradients)
        if self.block_length is None:
            raise InvalidInputError(
                "vlrnn_planner: this plan has neither a block length nor a budget; "
                "build it with fixed_plan(block_length=K) or auto_plan(cell, budget=...)"
            )
        k = min(self.block_length, seq_len)
        n = math.ceil(seq_len / k)
        strategy = self.strategy
        if strategy is None:
            if self.checkpoints is not None and self.checkpoints < n - 1:
                strategy = "binomial"
            else:
                strategy = "store_all" if n == 1 else "blocks"
        return Schedule(
            strategy=strategy,
            seq_len=seq_len,
            block_length=k,
            checkpoints=self.checkpoints if strategy == "binomial" else None,
            batch_size=batch_size,
        )

    def _solve(
        self, seq_len: int, batch_size: int | None, batch_sizes: tuple[int, ...] | None, input_gradients: bool
    ) -> Schedule:
        if not isinstance(self.profile, CellProfile):
            raise InvalidInputError(
                "vlrnn_planner: planning to a budget needs a plan with a cell profile; build it with "
                "vlrnn_planner.auto_plan(cell, budget=...)"
            )
        if batch_size is None:
            if batch_sizes is None:
                raise InvalidInputError(
                    "vlrnn_planner: planning to a memory budget needs the batch size; call "
                    "plan.schedule(seq_len=..., batch_size=...)"
                )
            batch_size = int(max(batch_sizes))
        workload = Workload(
            seq_len=seq_len,
            batch_size=batch_size,
            batch_sizes=batch_sizes,
            inputs_on_host=self.inputs_on_host,
            input_gradients=input_gradients,
        )
        return solve(self.profile, self.budget_bytes, workload, block_multiple=self.block_multiple)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of primitives (the profile as a dict); the cache is not written.

        Returns
        -------
        dict
            Field name to value; `from_dict` reads it back.

        Raises
        ------
        InvalidInputError
            For a profile that is not a `CellProfile`.
        """
        if not (self.profile is None or isinstance(self.profile, CellProfile)):
            raise InvalidInputError(
                f"vlrnn_planner: cannot export Plan.profile: a {type(self.profile).__name__} is not a CellProfile"
            )
        data = {name: getattr(self, name) for name in _PLAN_READERS}
        data["profile"] = None if self.profile is None else self.profile.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "plan") -> Plan:
        """The plan written by `to_dict`, each field's type and range checked.

        Parameters
        ----------
        data : Mapping
            Field name to value; a missing field takes its default.
        where : str, default "plan"
            The record's place in its document, for messages.

        Returns
        -------
        Plan

        Raises
        ------
        InvalidInputError
            For an unknown field, or a value of the wrong type or range, naming it.
        """
        return cls(**read_fields(data, where, _PLAN_READERS))

    def to_json(self, *, schedule: Schedule | None = None, indent: int | None = None) -> str:
        """This plan (profile included) as JSON; `Plan.from_json` gives back an equal object.

        Parameters
        ----------
        schedule : Schedule, optional
            A schedule of this plan for one input shape, stored alongside it (as the
            ``"schedule"`` key) so that the file can be inspected without re-planning.
        indent : int, optional
            Indentation, as for `json.dumps`; compact when None.

        Returns
        -------
        str
            ``{"format": "vlrnn-planner/plan", "version": 1, "plan": {...}, "schedule": {...}}``.

        Raises
        ------
        InvalidInputError
            For a profile that is not a `CellProfile`, or a schedule that is not a `Schedule`.

        Examples
        --------
        >>> p = fixed_plan(block_length=50, checkpoints=4)
        >>> Plan.from_json(p.to_json()) == p
        True
        """
        if not (schedule is None or isinstance(schedule, Schedule)):
            raise InvalidInputError(f"vlrnn_planner: expected a Schedule, got {type(schedule).__name__}")
        records = {"plan": self.to_dict(), "schedule": None if schedule is None else schedule.to_dict()}
        return write_document(FORMAT_PLAN, records, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """The plan written by `Plan.to_json`; a stored schedule primes its cache.

        Parameters
        ----------
        text : str or bytes
            The JSON document.

        Returns
        -------
        Plan

        Raises
        ------
        InvalidInputError
            If ``text`` is not JSON, not a plan document of a version this library reads, or
            holds a field of the wrong type or range (named in the message).
        """
        return _plan_document(read_document(text, expected=FORMAT_PLAN)).plan

    def __str__(self) -> str:
        return describe_plan(self)


@dataclass(frozen=True)
class Document:
    """What a vlrnn-planner JSON file holds: a plan, a schedule, or a plan with its schedule.

    Attributes
    ----------
    plan : Plan or None
        The plan of a plan document.
    schedule : Schedule or None
        The schedule of a schedule document, or the one stored with a plan.
    """

    plan: Plan | None = None
    schedule: Schedule | None = None


def _plan_document(doc: Mapping[str, Any]) -> Document:
    if "plan" not in doc:
        raise InvalidInputError('vlrnn_planner: the plan document has no "plan" object')
    plan = Plan.from_dict(doc["plan"])
    schedule = None
    if doc.get("schedule") is not None:
        schedule = Schedule.from_dict(doc["schedule"])
        plan._cache[plan._key(schedule.seq_len, schedule.batch_size, None, False)] = schedule
    return Document(plan=plan, schedule=schedule)


def load_document(text: str | bytes) -> Document:
    """Read either kind of file: a schedule document, or a plan document (with or without a schedule).

    When a plan document carries a schedule, the plan's cache is primed with it, so that
    ``plan.schedule(seq_len, batch_size)`` for that shape gives it back without re-planning.

    Parameters
    ----------
    text : str or bytes
        The JSON document.

    Returns
    -------
    Document

    Raises
    ------
    InvalidInputError
        If ``text`` is not one of the two documents, or holds a field of the wrong type or range.
    """
    doc = read_document(text)
    if doc["format"] == FORMAT_SCHEDULE:
        return Document(schedule=Schedule.from_json(text))
    return _plan_document(doc)


def describe_plan(plan: Plan) -> str:
    """The summary ``str(plan)`` prints.

    A fixed plan in one line; a budget plan with its device, budget, what was profiled, and the
    schedules resolved so far.

    Parameters
    ----------
    plan : Plan
        The plan.

    Returns
    -------
    str

    Examples
    --------
    >>> print(fixed_plan(block_length=50, checkpoints=8))
    Plan: fixed blocks of 50 steps, at most 8 stored states
    >>> print(Plan(budget_bytes=10**9, profile=CellProfile(cell="GRU(4, 8)")))  # doctest: +ELLIPSIS
    Plan: budget 1 GB on cpu, float32
      cell: GRU(4, 8); memory measured by: unknown
      strategy and block length are chosen per input shape: plan.schedule(seq_len=..., batch_size=...)
    """
    if plan.budget_bytes is None:
        text = f"Plan: fixed blocks of {plan.block_length} steps"
        if plan.checkpoints is not None:
            text += f", at most {plan.checkpoints} stored states"
        return text
    p = plan.profile
    budget = format_bytes(plan.budget_bytes)
    spec = plan.budget_spec
    if spec and spec.strip().lower().replace(" ", "") != budget.lower().replace(" ", ""):
        budget = f"{budget} ({spec})"
    lines = [f"Plan: budget {budget} on {p.device_label if p is not None else 'unknown'}"]
    if p is not None:
        lines.append(f"  cell: {p.cell or 'unknown'}; memory measured by: {p.measured_by or 'unknown'}")
        if p.available_bytes is not None:
            where = ("of host memory (the kernel's MemAvailable)" if p.device.startswith("cpu")
                     else "on the device (free, and what its allocator held)")
            lines.append(f"  this process could use {format_bytes(p.available_bytes)} {where} when profiled")
        if not p.timing_reliable:
            lines.append(
                f"  UNRELIABLE profile: repeated timings differed by up to {100 * p.timing_spread:.0f}% "
                "(other work shared the device?); the fastest schedule may not be chosen: profile again"
            )
    if not plan._cache:
        lines.append("  strategy and block length are chosen per input shape: plan.schedule(seq_len=..., batch_size=...)")
    for s in plan._cache.values():
        lines.extend("  " + line for line in describe_schedule(s).splitlines())
    return "\n".join(lines)


def fixed_plan(block_length: int, *, checkpoints: int | None = None, block_multiple: int = 1) -> Plan:
    """A plan with a fixed block length, and no profiling.

    Parameters
    ----------
    block_length : int
        Steps per block, at least 1. A block longer than the sequence makes it one block.
    checkpoints : int, optional
        At most this many stored boundary states (the initial state included); the blocks are then
        reversed with the fewest recomputations (binomial checkpointing).
    block_multiple : int, default 1
        The cell works in segments of this many steps; ``block_length`` must be a multiple of it.

    Returns
    -------
    Plan

    Raises
    ------
    InvalidInputError
        If ``block_length``, ``checkpoints`` or ``block_multiple`` is not a positive int, or
        ``block_length`` is not a multiple of ``block_multiple`` (the message names the nearest
        multiples).

    Examples
    --------
    >>> sched = fixed_plan(block_length=50).schedule(seq_len=120)
    >>> sched.num_blocks, sched.block_steps(2)
    (3, (100, 120))
    >>> fixed_plan(block_length=50, block_multiple=8)
    Traceback (most recent call last):
    ...
    vlrnn_planner.errors.InvalidInputError: vlrnn_planner: block_length=50 is not a multiple of block_multiple=8 (the cell works in segments of 8 steps); use 48 or 56
    """
    positive_int("block_length", block_length, hint="use a block length of 1 or more steps")
    if checkpoints is not None:
        positive_int("checkpoints", checkpoints, hint="allow at least one stored state")
    positive_int("block_multiple", block_multiple, hint="pass the steps of the cell's segments")
    return Plan(block_length=block_length, checkpoints=checkpoints, block_multiple=block_multiple)
