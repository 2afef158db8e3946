"""vlrnn-planner: exact backpropagation through time over very long sequences, in blocks,
planned to a memory budget.

The core package is framework-free: it never imports torch. Backends (such as ``vlrnn_torch``)
are found through the entry-point group ``vlrnn_planner.backends``.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from typing import Any

from .actions import Action, Advance, ForwardBackward, Free
from .budget import format_bytes, parse_budget
from .backends import Backend, Result, SequenceShape, available_backends, find_backend
from .errors import (
    BackendNotFoundError,
    InfeasibleBudgetError,
    InvalidInputError,
    InvalidTypeError,
    NoGradientError,
    NondeterministicCellError,
    PerCallEffectError,
    PlannerError,
    ScheduleError,
    TimeAxisError,
    UnsupportedHookError,
)
from .plan import Plan, fixed_plan
from .planner import auto_plan
from .profile import CellProfile
from .schedule import Prediction, Schedule

__version__ = "0.1.0"

# NOTE [ Out of memory ]
# A call that runs out of memory leaves every .grad as it was (the executor's failure
# atomicity), so a budget plan can try again. The failed call's frames are cleared so that its
# tensors go, the backend gives its cached memory back and says how much more the failed call
# could have grown by on the device (`release_memory`; measured by the allocator when it failed);
# the plan replans to what was resident plus 9/10 of that headroom (3/4 of the failed schedule's
# predicted peak where the device does not say), keeps the new schedule for that shape, and warns.
# A fixed plan or a Schedule re-raises at once.
OUT_OF_MEMORY_RETRIES = 2

__all__ = [
    "Action",
    "Advance",
    "ForwardBackward",
    "Free",
    "Backend",
    "Result",
    "SequenceShape",
    "available_backends",
    "find_backend",
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
    "Plan",
    "Schedule",
    "Prediction",
    "fixed_plan",
    "backward",
    "auto_plan",
    "CellProfile",
    "parse_budget",
    "format_bytes",
]


def backward(
    plan: Plan | Schedule,
    cell: Any,
    inputs: Any,
    *,
    targets: Any = None,
    loss_fn: Any = None,
    state: Any = None,
    final_loss_fn: Any = None,
    time_dim: int | None = None,
    scaler: Any = None,
    progress: Any = None,
    verify: bool = True,
    overlap: bool | None = None,
    backend: Backend | None = None,
) -> Result:
    """Run ``cell`` over ``inputs`` in blocks and backpropagate, exactly as plain BPTT would.

    Every ``.grad`` (the cell's parameters, a leaf initial state, and whatever lies upstream of a
    non-leaf initial state) ends as ``loss.backward()`` on the store-everything computation would
    leave it, up to floating-point reassociation; gradients accumulate into existing ``.grad``.
    If anything raises during the call, every ``.grad`` is as it was before and the exception
    propagates unchanged; out of memory under a budget plan is retried with a smaller schedule
    (NOTE [ Out of memory ]).

    Parameters
    ----------
    plan : Plan or Schedule
        From `fixed_plan` or `auto_plan`; a plan resolves (and caches) its schedule for the
        shape of ``inputs``.
    cell : module
        A sequence module ``forward(x_block, state) -> (outputs, state)`` or a step cell; see the
        backend's documentation (`vlrnn_torch`).
    inputs : tensor or PackedSequence
        With a time axis (the cell's convention, or ``time_dim``).
    targets : tensor or PackedSequence, optional
        Sliced like ``inputs`` and handed to ``loss_fn`` block by block.
    loss_fn : callable, optional
        ``loss_fn(outputs_block, targets_block) -> scalar``: the block's share of the total loss.
    state : optional
        Initial state: a tensor, any nesting of tuples, lists and dicts of tensors, or None.
    final_loss_fn : callable, optional
        ``final_loss_fn(final_state) -> scalar``: an extra loss on the final state.
    time_dim : int, optional
        The inputs' time axis, for a cell that does not declare it (see the backend's notes); a
        plan from ``auto_plan(..., time_dim=...)`` supplies its own.
    scaler : optional
        A gradient scaler for mixed precision (``torch.amp.GradScaler``): each block's loss is
        backpropagated as ``scaler.scale(loss)``; ``result.loss`` stays unscaled. The caller's
        ``autocast`` context applies to both passes alike.
    progress : bool or callable, optional
        ``True`` shows a progress bar over blocks (tqdm) when the call lasts more than a second;
        a callable is called as ``progress(blocks_done, num_blocks)`` after each block is
        backpropagated.
    verify : bool, default True
        Check that each block re-run with grad reproduces the state the no-grad pass computed
        after it, and that a sequence module does nothing once per call that cutting the
        sequence would change (see the backend's notes); refuse the call otherwise.
    overlap : bool, optional
        Backpropagate each block while the next one re-runs with grad (see the backend's notes):
        True or False to choose; None (default) as the schedule says (the planner turns it on
        where the profile measured that it pays).
    backend : Backend, optional
        Overrides backend discovery.

    Returns
    -------
    Result
        ``.loss`` (float, the total), ``.state`` (the final state, detached), ``.schedule``.

    Raises
    ------
    InvalidTypeError, InvalidInputError, TimeAxisError
        Before any work, for arguments the call cannot run (the message says what to change);
        a ``time_dim`` that contradicts the plan's or the cell's.
    PerCallEffectError, UnsupportedHookError
        Before any work, for a cell or hooks whose results block BPTT would change.
    NoGradientError
        When no gradient can flow (``torch.no_grad()``, ``inference_mode``, nothing requires grad).
    NondeterministicCellError
        When a block re-run with grad does not reproduce the no-grad pass (``verify=True``).
    """
    if not isinstance(plan, (Plan, Schedule)):
        raise InvalidTypeError(
            f"vlrnn_planner: plan must be a Plan or a Schedule, got {type(plan).__name__}; "
            "make one with vlrnn_planner.fixed_plan(block_length=K) or vlrnn_planner.auto_plan(...)"
        )
    if loss_fn is None and final_loss_fn is None:
        raise InvalidInputError(
            "vlrnn_planner: nothing to backpropagate; pass loss_fn (a per-block loss) "
            "and/or final_loss_fn (a loss on the final state)"
        )
    if isinstance(plan, Plan) and plan.time_dim is not None:
        if time_dim is None:
            time_dim = plan.time_dim
        elif time_dim != plan.time_dim:
            raise TimeAxisError(
                f"vlrnn_planner: time_dim={time_dim} contradicts the plan's time_dim={plan.time_dim} "
                "(given to auto_plan); drop time_dim= here, or plan again with the axis you mean"
            )
    if backend is None:
        backend = find_backend(cell)
    kwargs = dict(targets=targets, loss_fn=loss_fn, state=state, final_loss_fn=final_loss_fn, time_dim=time_dim)
    shape = backend.inspect(cell, inputs, **kwargs)
    if scaler is not None:
        kwargs["scaler"] = scaler
    if not verify:
        kwargs["verify"] = False
    if overlap is not None:
        if not isinstance(overlap, bool):
            raise InvalidTypeError(
                f"vlrnn_planner: overlap must be True, False or None (as the schedule says), got {overlap!r}"
            )
        kwargs["overlap"] = overlap
    if progress is not None and progress is not False:
        if progress is not True and not callable(progress):
            raise InvalidTypeError(
                f"vlrnn_planner: progress must be True (a progress bar) or callable as "
                f"progress(blocks_done, num_blocks), got {type(progress).__name__}"
            )
        kwargs["progress"] = progress
    if isinstance(plan, Schedule):
        if plan.seq_len != shape.seq_len:
            raise InvalidInputError(
                f"vlrnn_planner: the schedule is for {plan.seq_len} steps but the inputs have "
                f"{shape.seq_len}; pass the Plan instead, or a schedule made for this length"
            )
        with _progress(kwargs):
            return backend.execute(plan, cell, inputs, **kwargs)
    schedule = plan.schedule(
        shape.seq_len, shape.batch_size, batch_sizes=shape.batch_sizes, input_gradients=shape.input_gradients
    )
    for attempt in range(OUT_OF_MEMORY_RETRIES + 1):
        try:
            with _progress(kwargs):
                return backend.execute(schedule, cell, inputs, **kwargs)
        except Exception as exc:  # NOTE [ Out of memory ]
            is_oom = getattr(backend, "is_out_of_memory", None)
            if attempt == OUT_OF_MEMORY_RETRIES or not (callable(is_oom) and is_oom(exc)):
                raise
            # Let go of the failed call's tensors (its frames hold them) before planning anew.
            traceback.clear_frames(exc.__traceback__)
            release = getattr(backend, "release_memory", None)
            headroom = release() if callable(release) else None
            smaller = plan.replan_smaller(schedule, batch_sizes=shape.batch_sizes, headroom_bytes=headroom)
            if smaller is None:
                raise
            warnings.warn(
                f"vlrnn_planner: out of memory with {schedule.strategy} K={schedule.block_length} "
                f"(predicted peak {schedule.predicted_peak_bytes} bytes"
                + ("" if headroom is None else f"; the device had room for {headroom} bytes more")
                + f"); gradients were restored, retrying with {smaller.strategy} K={smaller.block_length} "
                f"(predicted peak {smaller.predicted_peak_bytes} bytes), which this plan keeps for this shape",
                RuntimeWarning,
                stacklevel=2,
            )
            schedule = smaller
    raise AssertionError("unreachable")  # the loop returns or raises


class _ProgressBar:
    """``progress(blocks_done, num_blocks)`` drawn as a tqdm bar over blocks, shown only when the
    call lasts more than a second."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="block", desc="vlrnn_planner.backward", delay=1.0, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _progress(kwargs: dict[str, Any]):
    """Put a fresh progress bar in ``kwargs`` for one attempt where ``progress=True``, and close it."""
    if kwargs.get("progress") is not True:
        yield
        return
    bar = _ProgressBar()
    kwargs["progress"] = bar
    try:
        yield
    finally:
        bar.close()
        kwargs["progress"] = True
