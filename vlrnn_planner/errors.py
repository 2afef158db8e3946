"""The library's exceptions.

Every error raised on purpose by vlrnn-planner derives from `PlannerError`; the ones that reject
an argument also derive from the built-in `ValueError` or `TypeError`, so callers that already
catch those keep working.
"""

from __future__ import annotations

__all__ = [
    "PlannerError",
    "InvalidInputError",
    "InvalidTypeError",
    "InfeasibleBudgetError",
    "ScheduleError",
    "BackendNotFoundError",
    "TimeAxisError",
    "PerCallEffectError",
    "UnsupportedHookError",
    "NoGradientError",
    "NondeterministicCellError",
]


class PlannerError(Exception):
    """Base class of the errors raised by vlrnn-planner."""


class InvalidInputError(PlannerError, ValueError):
    """An argument has the right type but a value the library cannot work with."""


class InvalidTypeError(PlannerError, TypeError):
    """An argument has a type the library does not accept."""


class ScheduleError(PlannerError, ValueError):
    """A schedule breaks one of its invariants (see `vlrnn_planner.simulate`)."""


class BackendNotFoundError(PlannerError, LookupError):
    """No installed backend accepts the given cell."""


class InfeasibleBudgetError(PlannerError, ValueError):
    """No schedule fits the memory budget.

    Attributes
    ----------
    budget_bytes : int
        The budget that was asked for, in bytes.
    minimum_bytes : int
        The smallest predicted peak of any schedule the planner could build, in bytes.
    """

    def __init__(self, message: str, *, budget_bytes: int, minimum_bytes: int) -> None:
        super().__init__(message)
        self.budget_bytes = int(budget_bytes)
        self.minimum_bytes = int(minimum_bytes)


class TimeAxisError(InvalidInputError):
    """The inputs' time axis is not declared, or two declarations of it disagree.

    The time axis is never guessed: a module states it (``batch_first``, a ``time_dim``
    attribute, the ``SequenceModule``/``StepCell`` wrappers) or the call gives ``time_dim``.
    """


class PerCallEffectError(InvalidInputError):
    """The cell does something once per call (works in segments, draws masks shared over time,
    updates buffers per call) that cutting the sequence into blocks would change."""


class UnsupportedHookError(InvalidInputError):
    """A hook would see something else under block BPTT than under ``loss.backward()``."""


class NoGradientError(PlannerError, RuntimeError):
    """Nothing in the call requires grad, so no gradient can flow (as ``loss.backward()`` would
    complain of a loss without ``grad_fn``)."""


class NondeterministicCellError(PlannerError, RuntimeError):
    """A block re-run with grad did not reproduce what the no-grad pass computed, or the cell
    carried a tensor with a graph from one block into another outside its state."""
