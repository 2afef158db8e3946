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
