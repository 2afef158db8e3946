"""The torch executor: an interpreter over a schedule's actions.

NOTE [ One traversal per block ]
Block ``b`` is re-run with grad from a detached copy of its input state. Its loss and the
gradient that arrived at its output state (from block ``b + 1``) are handed to ONE
``torch.autograd.backward`` call, as roots ``[loss, *state_out]`` with grad_tensors
``[None, *delta]``. Autograd sums both contributions inside the block's graph, so each parameter's
AccumulateGrad runs once per block and the graph is walked once. The gradient left at the
detached input state is the delta handed to block ``b - 1``. Block 0 runs from the caller's own
initial state, so its gradient reaches a leaf state's ``.grad`` or flows on into whatever graph
made the state (an encoder), in the same traversal.

NOTE [ DistributedDataParallel ]
A DDP-wrapped cell would all-reduce its gradients after every block's traversal. All blocks but
block 0 (the last traversal of a call) run under ``cell.no_sync()``, so the gradients accumulate
locally and are all-reduced once per call, as with gradient accumulation over micro-batches.

NOTE [ Failure atomicity ]
Before any backward, the ``.grad`` of every leaf the call can reach (the cell's and loss modules'
parameters, the leaves upstream of the initial state, and the leaves found in the first block's
graph) is put aside and set to None; the blocks then accumulate into fresh ``.grad`` tensors.
On success each put-aside gradient receives the new sum in place, exactly as
``loss.backward()`` accumulates (``old += new``); on any exception (the cell, ``loss_fn``, out of
memory, KeyboardInterrupt) the put-aside gradients are put back, the stored states are dropped
and the exception propagates unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import singledispatch
from typing import Any

import torch
from torch import nn

from vlrnn_planner.actions import Advance, ForwardBackward, Free
from vlrnn_planner.backends import Result
from vlrnn_planner.errors import InvalidInputError, ScheduleError

from .rng import RNGState, devices_of
from .tree import flatten, tree_map, unflatten

__all__ = ["run_schedule"]


@dataclass(slots=True)
class _Boundary:
    """A state at a block boundary (sorted batch order for packed inputs) and the RNG there."""

    state: Any
    rng: RNGState


class _GradStash:
    """Puts ``.grad`` aside for the duration of a call; see NOTE [ Failure atomicity ]."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def add(self, tensors) -> None:
        for t in tensors:
            if t is None or not t.requires_grad or not t.is_leaf or id(t) in self._saved:
                continue
            self._saved[id(t)] = (t, t.grad)
            t.grad = None

    def commit(self) -> None:
        for t, old in self._saved.values():
            new = t.grad
            if old is None:
                continue
            if new is None:
                t.grad = old
                continue
            try:
                old.add_(new)
                t.grad = old
            except RuntimeError:  # layouts that cannot add in place (sparse into dense, ...)
                t.grad = old + new
        self._saved.clear()

    def rollback(self) -> None:
        for t, old in self._saved.values():
            t.grad = old
        self._saved.clear()


def _graph_leaves(roots) -> list[torch.Tensor]:
    """The leaf tensors whose gradients a backward from ``roots`` would accumulate."""
    leaves: list[torch.Tensor] = []
    seen: set[int] = set()
    stack = []
    for r in roots:
        if r is None or not r.requires_grad:
            continue
        if r.grad_fn is None:
            leaves.append(r)
        else:
            stack.append(r.grad_fn)
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return leaves


def _scalar(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidInputError(
            f"vlrnn_torch: {name} must return a scalar tensor (the block's share of the total loss), "
            f"got {shape}; reduce it with .sum() or .mean()"
        )
    return value.reshape(())


class _Run:
    """The state of one call of the interpreter."""

    def __init__(
        self, schedule, view, *, cell, loss_fn, final_loss_fn, scaler, progress, initial_state, cuda_devices, stash
    ) -> None:
        self.schedule = schedule
        self.progress = progress
        self.cell = cell
        self.scaler = scaler
        self.view = view
        self.loss_fn = loss_fn
        self.final_loss_fn = final_loss_fn
        self.cuda_devices = cuda_devices
        self.stash = stash
        self.last = schedule.num_blocks - 1
        self.stored: dict[int, _Boundary] = {0: _Boundary(initial_state, RNGState.capture(cuda_devices))}
        self.working: tuple[int, _Boundary] | None = None
        self.delta: list[torch.Tensor | None] | None = None
        self.next_block = self.last
        self.total_loss: torch.Tensor | None = None
        self.final_state: Any = None
        self.rng_end: RNGState | None = None
        self.forward_evaluations = 0
        self.leaves_discovered = False

    def capture_rng(self) -> RNGState:
        return RNGState.capture(self.cuda_devices)

    def state_at(self, boundary: int, action: Any) -> _Boundary:
        if self.working is not None and self.working[0] == boundary:
            return self.working[1]
        found = self.stored.get(boundary)
        if found is None:
            raise ScheduleError(
                f"vlrnn_planner: {action!r} reads the state at boundary {boundary}, which is neither "
                f"stored (stored: {sorted(self.stored)}) nor the working state; the schedule is invalid"
            )
        return found

    def release(self) -> None:
        self.stored.clear()
        self.working = None
        self.delta = None


@singledispatch
def _apply(action: Any, run: _Run) -> None:
    raise TypeError(f"vlrnn_torch: the executor has no handler for the action {action!r} ({type(action).__name__})")


@_apply.register
def _advance(action: Advance, run: _Run) -> None:
    source = run.state_at(action.start, action)
    source.rng.restore()
    state = source.state
    saves = set(action.save)
    with torch.no_grad():
        for b in range(action.start, action.stop):
            _, state = run.view.run(*run.schedule.block_steps(b), state)
            if b + 1 in saves:
                run.stored[b + 1] = _Boundary(state, run.capture_rng())
    run.working = (action.stop, _Boundary(state, run.capture_rng()))
    run.forward_evaluations += action.stop - action.start


@_apply.register
def _forward_backward(action: ForwardBackward, run: _Run) -> None:
    # DDP decides in forward whether the next backward all-reduces: the whole block runs under
    # no_sync but the last one. NOTE [ DistributedDataParallel ]
    no_sync = getattr(run.cell, "no_sync", None) if action.block > 0 else None
    with no_sync() if callable(no_sync) else contextlib.nullcontext():
        _run_block_with_grad(action, run)


def _run_block_with_grad(action: ForwardBackward, run: _Run) -> None:
    b = action.block
    if b != run.next_block:
        raise ScheduleError(
            f"vlrnn_planner: {action!r} comes out of order; blocks are backpropagated last to first "
            f"and block {run.next_block} is next"
        )
    source = run.state_at(b, action)
    start, stop = run.schedule.block_steps(b)
    if b == 0:
        # The caller's own initial state: its gradient goes to its .grad or into its graph.
        inputs_in: list[torch.Tensor | None] = []
        state_in = source.state
    else:
        leaves, spec = flatten(source.state)
        inputs_in = [
            t.detach().requires_grad_() if t is not None and (t.is_floating_point() or t.is_complex()) else t
            for t in leaves
        ]
        state_in = unflatten(spec, inputs_in)
    source.rng.restore()
    with torch.enable_grad():
        outputs, state_out = run.view.run(start, stop, state_in)
        loss = None
        if run.loss_fn is not None:
            loss = _scalar(run.loss_fn(outputs, run.view.block_targets(start, stop)), "loss_fn")
        del outputs
        if b == run.last:
            run.rng_end = run.capture_rng()
            final = run.view.finalize_state(state_out)
            if run.final_loss_fn is not None:
                extra = _scalar(run.final_loss_fn(final), "final_loss_fn")
                loss = extra if loss is None else loss + extra
            run.final_state = tree_map(lambda t: t.detach(), final)
            del final
    roots: list[torch.Tensor] = []
    grads: list[torch.Tensor | None] = []
    if loss is not None and loss.requires_grad:
        roots.append(loss if run.scaler is None else run.scaler.scale(loss))
        grads.append(None)
    if run.delta is not None:
        out_leaves, _ = flatten(state_out)
        for t, d in zip(out_leaves, run.delta):
            if d is not None and t is not None and t.requires_grad:
                roots.append(t)
                grads.append(d)
    del state_out
    if roots:
        if not run.leaves_discovered:
            # Leaves the loss reaches that the call did not know of (a head inside loss_fn).
            run.stash.add(_graph_leaves(roots))
            run.leaves_discovered = True
        torch.autograd.backward(roots, grads)  # NOTE [ One traversal per block ]
    del roots, grads
    run.delta = [t.grad if t is not None and t.requires_grad else None for t in inputs_in] if b > 0 else None
    if loss is not None:
        value = loss.detach()
        run.total_loss = value if run.total_loss is None else run.total_loss + value
    run.working = None
    run.next_block -= 1
    run.forward_evaluations += 1
    if run.progress is not None:
        run.progress(run.last - run.next_block, run.last + 1)


@_apply.register
def _free(action: Free, run: _Run) -> None:
    if run.stored.pop(action.boundary, None) is None:
        raise ScheduleError(f"vlrnn_planner: {action!r} frees a state that is not stored")


def _module_tensors(obj: Any) -> list[torch.Tensor]:
    return list(obj.parameters()) if isinstance(obj, nn.Module) else []


def run_schedule(
    schedule, cell: nn.Module, view, *, state: Any, loss_fn, final_loss_fn, scaler=None, progress=None
) -> Result:
    """Carry out ``schedule``; see `vlrnn_planner.backward` for the contract."""
    state_leaves = [t for t in flatten(state)[0] if t is not None]
    cuda_devices = ()
    if torch.cuda.is_available():
        first_input = view.inputs.data if hasattr(view.inputs, "batch_sizes") else view.inputs
        cuda_devices = devices_of([*cell.parameters(), first_input, *state_leaves])
    stash = _GradStash()
    rng_before = RNGState.capture(cuda_devices)
    run = None
    try:
        stash.add(_module_tensors(cell))
        stash.add(_module_tensors(loss_fn))
        stash.add(_module_tensors(final_loss_fn))
        stash.add(_graph_leaves(state_leaves))
        with torch.enable_grad():
            initial = view.prepare_state(state)
        run = _Run(
            schedule,
            view,
            cell=cell,
            loss_fn=loss_fn,
            final_loss_fn=final_loss_fn,
            scaler=scaler,
            progress=progress,
            initial_state=initial,
            cuda_devices=cuda_devices,
            stash=stash,
        )
        for action in schedule.actions:
            _apply(action, run)
        if run.next_block != -1:
            raise ScheduleError(
                f"vlrnn_planner: the schedule ended with block {run.next_block} not backpropagated"
            )
    except BaseException as exc:
        stash.rollback()
        if run is not None:
            run.release()
        rng_before.restore()
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the cached blocks back for a retry
        raise
    stash.commit()
    run.rng_end.restore()
    total = 0.0 if run.total_loss is None else float(run.total_loss)
    return Result(loss=total, state=run.final_state, schedule=schedule, forward_evaluations=run.forward_evaluations)
