"""`auto_plan`: profile a cell through its backend, and plan to a memory budget.

The entry points that build budget plans: `auto_plan` measures the cell with a backend
(`vlrnn_planner.backends`), `plan_for_profile` starts from a profile measured earlier. The plan
they return resolves schedules per input shape through the solver (`vlrnn_planner.solver`); the
solver's public functions are also importable from here, as they were before it had a module of
its own.
"""

from __future__ import annotations

from typing import Any

from .backends import find_backend
from .budget import Budget, parse_budget
from .cost import Workload
from .errors import InvalidInputError
from .plan import Plan
from .profile import CellProfile
from .records import positive_int
from .solver import candidate_block_lengths, cut_by_sample_steps, minimum_peak, solve

__all__ = [
    "auto_plan",
    "plan_for_profile",
    "minimum_peak",
    "candidate_block_lengths",
    "cut_by_sample_steps",
]


def auto_plan(
    cell: Any,
    budget: int | float | str | Budget,
    *,
    example_input: Any = None,
    state: Any = None,
    loss_fn: Any = None,
    example_target: Any = None,
    device: Any = None,
    time_dim: int | None = None,
    inputs_on_host: bool = False,
    block_multiple: int = 1,
    batch_size: int | None = None,
    backend: Any = None,
    search: str = "quick",
) -> Plan:
    """Profile ``cell`` on its device and return a `Plan` that keeps to ``budget``.

    The plan is a policy: ``plan.schedule(seq_len=..., batch_size=...)`` (or
    `vlrnn_planner.backward`) picks the fastest schedule whose predicted peak memory fits.

    Parameters
    ----------
    cell : module
        A cell the backend accepts (for torch: ``nn.RNN``/``LSTM``/``GRU``, their ``*Cell``
        forms, or a module ``forward(x_block, state) -> (outputs, state)``).
    budget : int, float, str or Budget
        Bytes (``"8GB"``, ``"8GiB"``, an int) or a share of what this process can use on the
        device (``"80%"``, ``0.8``); see `vlrnn_planner.budget`.
    example_input : optional
        A block of inputs (time axis included); needed for custom modules.
    state : optional
        An initial state of the example's batch; None for the cell's default.
    loss_fn : callable, optional
        ``loss_fn(outputs_block, targets_block) -> scalar``, profiled with the cell.
    example_target : optional
        Targets matching ``example_input``, for ``loss_fn``.
    device : optional
        Where to profile; the cell's device by default.
    time_dim : int, optional
        The time axis of the inputs, where it is not the cell's convention; kept in the plan
        (``plan.time_dim``).
    inputs_on_host : bool, default False
        The inputs and targets will stay in host memory while the cell is on an accelerator; the
        executor copies them block by block, so only two blocks of them count against the budget.
    block_multiple : int, default 1
        The cell works in segments of this many steps: every block the plan makes starts at a
        multiple of it (the last may end at ``T``).
    batch_size : int, optional
        The batch the training will run, to profile at (the example's batch otherwise): times per
        step depend on it, on a GPU most of all.
    backend : optional
        Overrides backend discovery.
    search : {"quick", "full"}, default "quick"
        How the plan searches the cuts of a batch that shrinks (packed sequences): ``"quick"``
        plans each new set of lengths in milliseconds, ``"full"`` searches further, for up to a
        second (`vlrnn_planner.solver.solve`).

    Returns
    -------
    Plan
        With ``profile``, ``budget_bytes``, ``budget_spec``, ``time_dim`` and ``block_multiple``
        set.

    Raises
    ------
    InvalidInputError
        For a budget that does not parse, a share where the device reports no memory, or a
        backend that cannot profile.
    InfeasibleBudgetError
        For a budget that not even one step of one sequence fits (the message lists what the
        least needs).
    """
    parsed = parse_budget(budget)
    if backend is None:
        backend = find_backend(cell)
    profile_fn = getattr(backend, "profile", None)
    if profile_fn is None:
        raise InvalidInputError(
            f"vlrnn_planner: the {getattr(backend, 'name', type(backend).__name__)} backend cannot "
            "profile cells; plan without profiling with vlrnn_planner.fixed_plan(block_length=K)"
        )
    profile = profile_fn(
        cell,
        example_input=example_input,
        state=state,
        loss_fn=loss_fn,
        example_target=example_target,
        device=device,
        time_dim=time_dim,
        **({} if batch_size is None else {"batch_size": batch_size}),
    )
    return plan_for_profile(
        profile, parsed, inputs_on_host=inputs_on_host, time_dim=time_dim, block_multiple=block_multiple, search=search
    )


def plan_for_profile(
    profile: CellProfile,
    budget: int | float | str | Budget,
    *,
    inputs_on_host: bool = False,
    time_dim: int | None = None,
    block_multiple: int = 1,
    search: str = "quick",
) -> Plan:
    """A budget `Plan` from a profile measured earlier (no backend needed).

    Parameters
    ----------
    profile : CellProfile
        The cell's measured bytes and seconds.
    budget : int, float, str or Budget
        As for `auto_plan`; a share resolves against ``profile.available_bytes``.
    inputs_on_host : bool, default False
        As for `auto_plan`; refused for a profile measured on the CPU.
    time_dim : int, optional
        The inputs' time axis, kept in the plan.
    block_multiple : int, default 1
        As for `auto_plan`.
    search : {"quick", "full"}, default "quick"
        As for `auto_plan`.

    Returns
    -------
    Plan

    Raises
    ------
    InvalidInputError
        For something that is not a `CellProfile`, a budget that does not parse or resolve,
        inputs on the host of a CPU, a block multiple that is not a positive int, or an unknown
        ``search``.
    InfeasibleBudgetError
        For a budget that not even one step of one sequence fits.

    Examples
    --------
    >>> p = CellProfile(state_bytes_per_sample=4096.0, activation_bytes_per_step=20_000.0,
    ...                 fb_seconds_per_step=1e-4, advance_seconds_per_step=4e-5,
    ...                 block_overhead_seconds=1e-4)
    >>> sched = plan_for_profile(p, "50MB").schedule(seq_len=10_000, batch_size=8)
    >>> sched.strategy, sched.predicted_peak_bytes <= 50_000_000
    ('blocks', True)
    """
    if not isinstance(profile, CellProfile):
        raise InvalidInputError(
            f"vlrnn_planner: expected a CellProfile, got {type(profile).__name__}; "
            "the backend's profile() must return vlrnn_planner.CellProfile"
        )
    if inputs_on_host and profile.device.startswith("cpu"):
        raise InvalidInputError(
            "vlrnn_planner: inputs_on_host=True needs a cell on an accelerator; on the CPU the "
            "host's memory is the device's, so leave it False"
        )
    parsed = parse_budget(budget)
    budget_bytes = parsed.resolve(available_bytes=profile.available_bytes)
    # A budget that not even one step of one sequence fits is refused now, not at the first call.
    solve(profile, budget_bytes, Workload(seq_len=1, batch_size=1, inputs_on_host=inputs_on_host))
    return Plan(
        budget_bytes=budget_bytes,
        profile=profile,
        budget_spec=str(parsed),
        inputs_on_host=inputs_on_host,
        time_dim=time_dim,
        block_multiple=positive_int("block_multiple", block_multiple, hint="pass the steps of the cell's segments"),
        search=search,
    )
