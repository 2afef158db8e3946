"""The backend protocol, and discovery of installed backends.

A backend measures a cell (`profile`) and carries out schedules on it (`execute`). Backends are
found through the entry-point group ``vlrnn_planner.backends``; the core never imports one by
name, so a new backend (JAX, a dry-run simulator) needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from .errors import BackendNotFoundError

__all__ = ["Backend", "Result", "SequenceShape", "available_backends", "find_backend"]

ENTRY_POINT_GROUP = "vlrnn_planner.backends"


@dataclass(frozen=True)
class SequenceShape:
    """What a backend read off the inputs of a call, before any work.

    Attributes
    ----------
    seq_len : int
        Time steps ``T``.
    batch_size : int
        Sequences in the batch.
    batch_sizes : tuple of int or None
        Sequences running at each step, where the batch shrinks (packed sequences).
    input_gradients : bool
        The inputs (or targets) carry an autograd graph, so the backward keeps a gradient buffer
        as large as them; budget plans count it (`vlrnn_planner.cost.Workload`).
    """

    seq_len: int
    batch_size: int
    batch_sizes: tuple[int, ...] | None = None
    input_gradients: bool = False


@dataclass(frozen=True)
class Result:
    """What `vlrnn_planner.backward` returns.

    Attributes
    ----------
    loss : float
        The total loss: the sum of the blocks' losses and the final-state loss.
    state : Any
        The final state, detached, in the caller's batch order and nesting.
    schedule : Schedule
        The schedule that was carried out.
    forward_evaluations : int
        Block forward evaluations made (no-grad advances plus one per block run with grad).

    Examples
    --------
    >>> class T:  # stands in for a tensor: only its shape is printed
    ...     shape = (2, 8, 64)
    >>> Result(loss=3.5, state=(T(), T()), schedule=None, forward_evaluations=7)
    Result(loss=3.5, state=(tensor(2, 8, 64), tensor(2, 8, 64)), schedule=None, forward_evaluations=7)
    """

    loss: float
    state: Any
    schedule: Any
    forward_evaluations: int

    def __repr__(self) -> str:
        schedule = self.schedule
        if schedule is not None and hasattr(schedule, "strategy"):
            schedule = f"<{schedule.strategy}, T={schedule.seq_len}, K={schedule.block_length}, {schedule.num_blocks} blocks>"
        return (f"Result(loss={self.loss!r}, state={_shapes(self.state)}, schedule={schedule}, "
                f"forward_evaluations={self.forward_evaluations})")


def _shapes(obj: Any) -> str:
    """A state as its nesting and the shapes of its tensors, not their values."""
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return f"tensor({', '.join(map(str, tuple(shape)))})"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {_shapes(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        inner = ", ".join(_shapes(v) for v in obj)
        return f"[{inner}]" if isinstance(obj, list) else f"({inner}{',' if len(obj) == 1 else ''})"
    return repr(obj)


@runtime_checkable
class Backend(Protocol):
    """What a backend provides. See `vlrnn_torch.TorchBackend` for the reference one."""

    name: str

    def accepts(self, cell: Any) -> bool:
        """Whether this backend can run ``cell``.

        Parameters
        ----------
        cell : Any
            The cell given to `vlrnn_planner.backward` or `vlrnn_planner.auto_plan`.

        Returns
        -------
        bool
        """

    def inspect(self, cell: Any, inputs: Any, **kwargs: Any) -> SequenceShape:
        """Validate a call's arguments before any work and return the sequence's shape.

        Parameters
        ----------
        cell : Any
            The cell.
        inputs : Any
            The inputs, with a time axis.
        **kwargs
            ``targets``, ``loss_fn``, ``state``, ``final_loss_fn``, ``time_dim``, as given to
            `vlrnn_planner.backward`.

        Returns
        -------
        SequenceShape
            Steps, batch, per-step batch sizes where the batch shrinks, and whether the inputs
            carry gradients.

        Raises
        ------
        PlannerError
            A subclass that says what is wrong with the arguments and what to change.
        """

    def execute(self, schedule: Any, cell: Any, inputs: Any, **kwargs: Any) -> Result:
        """Carry out ``schedule`` on ``cell`` and ``inputs``; see `vlrnn_planner.backward`.

        Parameters
        ----------
        schedule : Schedule
            The schedule whose actions to interpret.
        cell : Any
            The cell.
        inputs : Any
            The inputs, with a time axis.
        **kwargs
            As for `inspect`, and ``scaler`` and ``progress``.

        Returns
        -------
        Result
        """


@cache
def available_backends() -> tuple[Backend, ...]:
    """The installed backends, instantiated once, in entry-point name order.

    Returns
    -------
    tuple of Backend
        Empty when none is installed.
    """
    found = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        obj = ep.load()
        found.append(obj() if isinstance(obj, type) else obj)
    return tuple(found)


def find_backend(cell: Any) -> Backend:
    """The first installed backend that accepts ``cell``.

    Parameters
    ----------
    cell : Any
        The cell to run.

    Returns
    -------
    Backend

    Raises
    ------
    BackendNotFoundError
        If none does.
    """
    backends = available_backends()
    for backend in backends:
        if backend.accepts(cell):
            return backend
    names = ", ".join(b.name for b in backends) or "none installed"
    raise BackendNotFoundError(
        f"vlrnn_planner: no backend accepts a cell of type {type(cell).__name__} "
        f"(backends: {names}); install the package with `pip install -e .` so that the torch "
        f"backend is registered, and pass a torch.nn.Module"
    )
