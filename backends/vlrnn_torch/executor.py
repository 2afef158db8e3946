"""The torch executor: an interpreter over a schedule's actions.

NOTE [ One traversal per block ]
--------------------------------
Block ``b`` is re-run with grad from a detached copy of its input state. Its loss and the
gradient that arrived at its output state (from block ``b + 1``) are handed to ONE
``torch.autograd.backward`` call, as roots ``[loss, *state_out]`` with grad_tensors
``[None, *delta]``. Autograd sums both contributions inside the block's graph, so each parameter's
AccumulateGrad runs once per block and the graph is walked once. The gradient left at the
detached input state is the delta handed to block ``b - 1``. Block 0 runs from detached leaves of
the caller's initial state too; their gradients, the inputs' (NOTE [ Inputs with a graph ]) and
those of tensors taken from outside the call (NOTE [ Tensors from outside the call ]) are
backpropagated into their own graphs (an encoder, an embedding) in one last traversal, so whatever
lies upstream is traversed once per call.

NOTE [ DistributedDataParallel ]
--------------------------------
A DDP-wrapped cell would all-reduce its gradients after every block's traversal. All blocks but
block 0 (the last traversal of a call) run under ``cell.no_sync()``, so the gradients accumulate
locally and are all-reduced once per call, as with gradient accumulation over micro-batches. When
that last traversal synchronises, the gradients put aside at the start of the call (accumulated by
earlier calls under ``no_sync()``) are first given back to the parameters with what this call
added so far, so that DDP all-reduces everything accumulated locally, as plain DDP does. DDP's
forward broadcasts the buffers from rank 0 in the first forward of a synchronised step; the
boundary-0 buffers are recorded after that broadcast (a forward pre-hook on the module), so the
recomputation of block 0 sees what the no-grad pass saw. Hooks on the parameters of a
synchronising DDP cell are refused (they would run after the all-reduce), as are DDP's modes that
run their own reducer from hooks (``_use_python_reducer``, ``_delay_all_reduce_all_params``).

NOTE [ What torch loads on the first backward ]
-----------------------------------------------
``torch.autograd.backward`` imports ``torch.fx.experimental.symbolic_shapes`` (and sympy with it)
the first time it is given ``grad_tensors``, which every block's traversal is (the delta at the
block's output): some 35 MB of resident memory on a CPU, once per process. Left to the first call,
it would count as part of that training step's peak, which the planner does not predict (fresh
processes measured 35-40 MB more in their first call than in every later one). It is imported
with the backend instead, as torch itself is: memory of the process, not of a step.

NOTE [ Verifying the recomputation ]
------------------------------------
Block ``b`` re-run with grad must end in the state the no-grad pass computed at boundary ``b + 1``
(which the run of block ``b + 1`` just read). Each boundary state made without grad is summarised
by a fingerprint per leaf (its sum, the sum of its magnitudes and of its squares, in float64);
the state a recomputation ends in is summarised the same way and compared up to a tolerance by
dtype (`vlrnn_torch.probe.tolerance`: the no-grad and grad kernels may round differently, as CPU
``nn.LSTM`` in float32 does). A cell that draws random numbers from another thread, runs an op
that is not deterministic, or keeps hidden state across calls ends elsewhere, and the call is
refused with `NondeterministicCellError` before anything is committed. The comparisons stay on the
device and are read once, at the end of the call. ``verify=False`` turns this (and NOTE [ Effects
per call ]) off.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import singledispatch
from typing import Any

import torch
import torch.fx.experimental.symbolic_shapes  # noqa: F401  NOTE [ What torch loads on the first backward ]
from torch import nn

from vlrnn_planner.actions import Advance, ForwardBackward, Free
from vlrnn_planner.backends import Result
from vlrnn_planner.errors import (
    InvalidInputError,
    NoGradientError,
    NondeterministicCellError,
    ScheduleError,
    UnsupportedHookError,
)

from .capture import Reads, sequence_marker
from .devices import is_out_of_memory
from .cells import Adapter
from .effects import BufferReplay, GradStash, ParametrizationCache, check_module_hooks, hooks_of
from .overlap import Lookahead, Overlap
from .probe import check_per_call_effects, tolerance
from .rng import RNGState, devices_of
from .tree import flatten, tree_map, unflatten

__all__ = ["run_schedule", "Observer"]

#: ``observer(action, when)`` with ``when`` in ("before", "after"): the profiler's way to time and
#: measure single actions of a real call.
Observer = Callable[[Any, str], None]

# Leaves upstream of the inputs and the initial state are found by walking at most this many
# autograd nodes from Python (NOTE [ Tensors from outside the call ] says why not more).
UPSTREAM_WALK_LIMIT = 4096


@dataclass(slots=True)
class _Boundary:
    """A state at a block boundary (sorted batch order for packed inputs) and what goes with it."""

    state: Any
    rng: RNGState
    buffers: Any = None  # BufferReplay.capture(); None: as at the start of the call
    fingerprint: list[torch.Tensor] | None = None  # NOTE [ Verifying the recomputation ]


def _scalar(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidInputError(
            f"vlrnn_torch: {name} must return a scalar tensor (the block's share of the total loss), "
            f"got {shape}; reduce it with .sum() or .mean()"
        )
    return value.reshape(())


def _fingerprint(state: Any) -> list[torch.Tensor]:
    """Per leaf: (sum, sum of magnitudes, sum of squares) in float64 (NOTE [ Verifying the
    recomputation ])."""
    prints = []
    for t in flatten(state)[0]:
        if t is None:
            continue
        t = t.detach()
        if t.is_complex():
            t = t.abs()
        if t.is_floating_point():
            prints.append(torch.stack([
                t.sum(dtype=torch.float64),
                torch.linalg.vector_norm(t, 1, dtype=torch.float64),
                torch.linalg.vector_norm(t, 2, dtype=torch.float64) ** 2,
            ]))
        else:
            t = t.to(torch.int64)
            prints.append(torch.stack([t.sum(), (t * t).sum()]).to(torch.float64))
    return prints


def _mismatch(expected: list[torch.Tensor], got: list[torch.Tensor], dtypes: list[torch.dtype]) -> torch.Tensor:
    """How far ``got`` is from ``expected`` in units of the tolerance (> 1: a mismatch), on the device."""
    worst = None
    for e, g, dtype in zip(expected, got, dtypes):
        if e.numel() == 2:  # integers: exactly
            r = (e != g).any().to(torch.float64) * math.inf
            r = torch.nan_to_num(r, nan=0.0)
        else:
            tol = tolerance(dtype)
            scale = torch.stack([e[1], e[1], 2 * e[2]]) * tol + 1e-300
            r = ((e - g).abs() / scale).max()
        worst = r if worst is None else torch.maximum(worst, r)
    return worst if worst is not None else torch.zeros((), dtype=torch.float64)


def _state_dtypes(state: Any) -> list[torch.dtype]:
    return [t.dtype for t in flatten(state)[0] if t is not None]


class _Run:
    """The state of one call of the interpreter."""

    def __init__(self, schedule: Any, adapter: Adapter, view: Any, *, loss_fn: Any, final_loss_fn: Any,
                 scaler: Any, progress: Any, initial: _Boundary, cuda_devices: tuple[int, ...],
                 stash: GradStash, buffers: BufferReplay, reads: Reads, parametrizations: ParametrizationCache,
                 verify: bool, sync: bool, own: set[int]) -> None:
        self.schedule = schedule
        self.adapter = adapter
        self.view = view
        self.loss_fn = loss_fn
        self.final_loss_fn = final_loss_fn
        self.scaler = scaler
        self.progress = progress
        self.cuda_devices = cuda_devices
        self.stash = stash
        self.buffers = buffers
        self.reads = reads
        self.parametrizations = parametrizations
        self.verify = verify
        self.sync = sync
        self.own = own
        self.block_own: set[int] = set()
        self.last = schedule.num_blocks - 1
        self.stored: dict[int, _Boundary] = {0: initial}
        self.working: tuple[int, _Boundary] | None = None
        self.delta: list[torch.Tensor | None] | None = None
        self.next_block = self.last  # the next block to backpropagate
        self.next_forward = self.last  # the next block to re-run with grad (ahead with overlap)
        self.ahead: dict[int, _Forward] = {}  # blocks re-run with grad ahead of their backward
        self.overlap: Overlap | None = None  # NOTE [ Overlapping recomputation with backward ]
        self.total_loss: torch.Tensor | None = None
        self.final_state: Any = None
        self.loss_rng: RNGState | None = None
        self.buffers_end: Any = None
        self.forward_evaluations = 0
        self.expect: tuple[list[torch.Tensor], list[torch.dtype]] | None = None
        self.worst: torch.Tensor | None = None
        self.first_bad: torch.Tensor | None = None

    def is_own(self, t: torch.Tensor) -> bool:
        """Leaves the call made itself or already knows (NOTE [ Tensors from outside the call ])."""
        return t in self.stash or id(t) in self.own or id(t) in self.block_own

    def state_at(self, boundary: int, action: Any) -> _Boundary:
        """The state at ``boundary``: the working state or a stored one."""
        if self.working is not None and self.working[0] == boundary:
            return self.working[1]
        found = self.stored.get(boundary)
        if found is None:
            raise ScheduleError(
                f"vlrnn_planner: {action!r} reads the state at boundary {boundary}, which is neither "
                f"stored (stored: {sorted(self.stored)}) nor the working state; the schedule is invalid"
            )
        return found

    def boundary(self, state: Any) -> _Boundary:
        """A boundary made now by the no-grad pass: the state, the RNG and buffers here, and its
        fingerprint."""
        return _Boundary(state, RNGState.capture(self.cuda_devices), self.buffers.capture(),
                         _fingerprint(state) if self.verify else None)

    def record_mismatch(self, block: int, state_out: Any, expect: Any) -> None:
        """Compare a recomputed state with the no-grad pass's fingerprint ``expect`` (NOTE
        [ Verifying the recomputation ])."""
        if expect is None:
            return
        expected, dtypes = expect
        got = _fingerprint(state_out)
        if len(got) != len(expected):
            raise NondeterministicCellError(
                f"vlrnn_torch: block {block} re-run with grad returned a state with other leaves than "
                "the no-grad pass did"
            )
        r = _mismatch(expected, got, dtypes)
        bad = (r > 1).to(torch.int64)
        if self.worst is None:
            self.worst = r
            self.first_bad = torch.where(bad > 0, block, -1)
        else:
            self.worst = torch.maximum(self.worst, r)
            self.first_bad = torch.where((bad > 0) & (self.first_bad < 0), block, self.first_bad)

    def raise_mismatch(self) -> None:
        """Raise if any recomputation ended elsewhere than the no-grad pass (read once, here)."""
        if self.worst is None or float(self.worst) <= 1:
            return
        block = int(self.first_bad)
        raise NondeterministicCellError(
            f"vlrnn_torch: block {block} re-run with grad did not reproduce the state the no-grad pass "
            f"computed after it (off by {float(self.worst):.3g} times the tolerance). Likely causes: "
            "an op that is not deterministic (torch.use_deterministic_algorithms(True) tells which), "
            "random draws from another thread or from a generator vlrnn-planner does not replay, or "
            "a cell with hidden state (something kept on the module between calls). Make the cell "
            "deterministic given its inputs, state and the RNG, or pass verify=False to skip this check"
        )

    def release(self) -> None:
        """Drop every stored state, the working state and the delta."""
        self.stored.clear()
        self.working = None
        self.delta = None
        self.expect = None


@singledispatch
def _apply(action: Any, run: _Run) -> None:
    raise TypeError(f"vlrnn_torch: the executor has no handler for the action {action!r} ({type(action).__name__})")


@_apply.register
def _advance(action: Advance, run: _Run) -> None:
    source = run.state_at(action.start, action)
    source.rng.restore()
    run.buffers.restore(source.buffers)
    state = source.state
    saves = set(action.save)
    with torch.no_grad():
        for b in range(action.start, action.stop):
            if b > action.start:
                RNGState.enter(run.cuda_devices)  # NOTE [ RNG replay ]
            if b + 1 < run.schedule.num_blocks:
                run.view.slices.prefetch(*run.schedule.block_steps(b + 1))  # NOTE [ Inputs on the host ]
            _, state = run.view.run(*run.schedule.block_steps(b), state)
            if b + 1 in saves:
                run.stored[b + 1] = run.boundary(state)
    run.working = (action.stop, run.boundary(state))
    run.forward_evaluations += action.stop - action.start


@_apply.register
def _forward_backward(action: ForwardBackward, run: _Run) -> None:
    # DDP decides in forward whether the next backward all-reduces: the whole block runs under
    # no_sync but the last one. NOTE [ DistributedDataParallel ]
    ddp = run.adapter.ddp
    context = ddp.no_sync() if ddp is not None and action.block > 0 else contextlib.nullcontext()
    with context:
        _run_block_with_grad(action, run)


def _block_input(run: _Run, b: int, source: _Boundary) -> tuple[Any, list[torch.Tensor | None]]:
    """The state block ``b`` runs from with grad: fresh leaves of the boundary's state (the
    initial state's leaves for block 0, made once per call), and those leaves."""
    if b == 0:
        return source.state, []
    leaves, spec = flatten(source.state)
    inputs = [
        t.detach().requires_grad_() if t is not None and (t.is_floating_point() or t.is_complex()) else t
        for t in leaves
    ]
    run.block_own.update(id(t) for t in inputs if t is not None)
    return unflatten(spec, inputs), inputs


@dataclass(slots=True)
class _Forward:
    """A block run with grad, its backward still to come."""

    block: int
    loss: torch.Tensor | None  # the block's loss, for the total
    root: torch.Tensor | None  # what is backpropagated: the loss, scaled by a GradScaler
    state_out: Any
    inputs_in: list[torch.Tensor | None]
    pieces: list[Any]  # the input slices whose gradients go into the buffers
    discovered: list[torch.Tensor]  # leaves first read by this block


def _run_block_with_grad(action: ForwardBackward, run: _Run) -> None:
    _backward_phase(run, run.ahead.pop(action.block, None) or _forward_phase(run, action))
    _report(run)


def _report(run: _Run) -> None:
    if run.progress is not None:
        run.progress(run.last - run.next_block, run.last + 1)


def _forward_backward_overlapped(action: ForwardBackward, run: _Run, actions: Lookahead) -> None:
    """Block ``b``'s backward on the worker while block ``b - 1`` re-runs with grad here, where
    the schedule runs them in a row (NOTE [ Overlapping recomputation with backward ])."""
    b, overlap = action.block, run.overlap
    forward = run.ahead.pop(b, None)
    if forward is None:
        with overlap.forward_on(b):
            forward = _forward_phase(run, action)
    following = actions.peek_past_frees()
    pending = overlap.backward_elsewhere(lambda: _backward_phase(run, forward), b, run.delta)
    if isinstance(following, ForwardBackward) and following.block == b - 1 and b - 1 in run.stored:
        try:
            with overlap.forward_on(b - 1):
                run.ahead[b - 1] = _forward_phase(run, following)
        except BaseException:
            with contextlib.suppress(BaseException):
                pending.result()
            raise
    pending.result()
    _report(run)


def _forward_phase(run: _Run, action: ForwardBackward) -> _Forward:
    """Re-run block ``action.block`` with grad from its input state, and its loss."""
    b = action.block
    if b != run.next_forward:
        raise ScheduleError(
            f"vlrnn_planner: {action!r} comes out of order; blocks are backpropagated last to first "
            f"and block {run.next_forward} is next"
        )
    run.next_forward -= 1
    source = run.state_at(b, action)
    expect, run.expect = run.expect, (
        None if source.fingerprint is None else (source.fingerprint, _state_dtypes(source.state))
    )
    start, stop = run.schedule.block_steps(b)
    run.block_own = set()
    run.view.slices.own = run.block_own
    state_in, inputs_in = _block_input(run, b, source)
    source.rng.restore()
    run.buffers.restore(source.buffers)
    if b > 0:
        run.view.slices.prefetch(*run.schedule.block_steps(b - 1))  # NOTE [ Inputs on the host ]
    run.reads.begin_block()
    with torch.enable_grad():
        # A compiled cell is not watched: dynamo cannot trace through the mode (NOTE [ Tensors
        # from outside the call ]); its parameters are known all the same.
        with run.reads if not run.adapter.compiled else contextlib.nullcontext():
            outputs, state_out = run.view.run(start, stop, state_in)
        run.view.check_outputs(outputs, needed=run.loss_fn is not None)
        if b == run.last:
            run.loss_rng = RNGState.capture(run.cuda_devices)  # NOTE [ RNG replay ]: the loss stream
            run.buffers_end = run.buffers.capture()
        loss = None
        if run.loss_fn is not None:
            run.loss_rng.restore()
            targets = run.view.block_targets(start, stop)
            with run.reads:
                loss = _scalar(run.loss_fn(outputs, targets), "loss_fn")
            run.loss_rng = RNGState.capture(run.cuda_devices)
        del outputs
        if b == run.last:
            final = run.view.finalize_state(state_out)
            if run.final_loss_fn is not None:
                run.loss_rng.restore()
                with run.reads:
                    extra = _scalar(run.final_loss_fn(final), "final_loss_fn")
                run.loss_rng = RNGState.capture(run.cuda_devices)
                loss = extra if loss is None else loss + extra
            run.final_state = tree_map(lambda t: t.detach(), final)
            del final
        root = loss if loss is None or not loss.requires_grad or run.scaler is None else run.scaler.scale(loss)
    run.parametrizations.prune()
    run.record_mismatch(b, state_out, expect)
    return _Forward(b, loss, root, state_out, inputs_in, run.view.slices.take_pending(), list(run.reads.discovered))


def _backward_phase(run: _Run, forward: _Forward) -> None:
    """Backpropagate a block's loss and the delta at its output state in one traversal."""
    b = forward.block
    roots: list[torch.Tensor] = []
    grads: list[torch.Tensor | None] = []
    if forward.root is not None and forward.root.requires_grad:
        roots.append(forward.root)
        grads.append(None)
    if run.delta is not None:
        out_leaves, _ = flatten(forward.state_out)
        for t, d in zip(out_leaves, run.delta):
            if d is not None and t is not None and t.requires_grad:
                roots.append(t)
                grads.append(d)
    forward.state_out = None
    run.stash.add(forward.discovered)  # NOTE [ Failure atomicity ]: before their first gradient
    if b == 0 and run.sync:
        run.stash.merge(list(run.adapter.cell.parameters()))  # NOTE [ DistributedDataParallel ]
    if roots:
        torch.autograd.backward(roots, grads)  # NOTE [ One traversal per block ]
    del roots, grads
    run.view.slices.collect(forward.pieces)
    inputs_in = forward.inputs_in
    run.delta = [t.grad if t is not None and t.requires_grad else None for t in inputs_in] if b > 0 else None
    if forward.loss is not None:
        value = forward.loss.detach()
        run.total_loss = value if run.total_loss is None else run.total_loss + value
    run.working = None
    run.next_block -= 1
    run.forward_evaluations += 1


@_apply.register
def _free(action: Free, run: _Run) -> None:
    if run.stored.pop(action.boundary, None) is None:
        raise ScheduleError(f"vlrnn_planner: {action!r} frees a state that is not stored")


def _module_parameters(obj: Any) -> list[torch.Tensor]:
    return list(obj.parameters()) if isinstance(obj, nn.Module) else []


def _upstream_leaves(roots: list[torch.Tensor], limit: int = UPSTREAM_WALK_LIMIT) -> list[torch.Tensor]:
    """Leaves that a traversal from ``roots`` accumulates into, found by walking at most ``limit``
    nodes (beyond, leaves get their gradient without being put aside first)."""
    leaves = [r for r in roots if r.grad_fn is None]
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    seen: list[Any] = []  # keep the nodes alive while walking, so that ids stay unique
    ids: set[int] = set()
    while stack and len(seen) < limit:
        node = stack.pop()
        if id(node) in ids:
            continue
        ids.add(id(node))
        seen.append(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return leaves


def _detach_state(state: Any) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The initial state with a detached leaf for each tensor that requires grad, and the pairs
    (caller's tensor, leaf) for the last traversal (NOTE [ One traversal per block ])."""
    leaves, spec = flatten(state)
    pairs = []
    out = []
    for t in leaves:
        if t is not None and t.requires_grad:
            proxy = t.detach().requires_grad_()
            pairs.append((t, proxy))
            out.append(proxy)
        else:
            out.append(t)
    return unflatten(spec, out), pairs


def _check_ddp(adapter: Adapter, params: list[torch.Tensor]) -> bool:
    """Whether the last traversal synchronises a DDP cell; refuse what DDP cannot do here."""
    ddp = adapter.ddp
    if ddp is None:
        return False
    for flag in ("_use_python_reducer", "_delay_all_reduce_all_params"):
        if getattr(ddp, flag, False):
            raise UnsupportedHookError(
                f"vlrnn_torch: this DistributedDataParallel runs its reducer from hooks ({flag}), which "
                "block BPTT would trigger once per block; use DDP's default reducer"
            )
    if getattr(ddp, "static_graph", False):
        raise InvalidInputError(
            "vlrnn_torch: DistributedDataParallel(static_graph=True) expects one backward pass per "
            "forward with the same graph each time, but block BPTT backpropagates block by block; "
            "use static_graph=False (DDP's default)"
        )
    if adapter.kind == "step":
        raise InvalidInputError(
            f"vlrnn_torch: DistributedDataParallel wraps a step cell ({adapter.name}), so its forward "
            "would run once per step before one backward, which DDP does not allow (nor does plain "
            "BPTT with it); wrap a sequence module that runs the steps instead"
        )
    sync = bool(getattr(ddp, "require_backward_grad_sync", True))
    if sync:
        for p in params:
            tensor_hooks, post_hooks = hooks_of(p)
            if tensor_hooks or post_hooks:
                hook = next(iter((tensor_hooks or post_hooks).values()))
                raise UnsupportedHookError(
                    f"vlrnn_torch: a parameter of the DistributedDataParallel cell (shape "
                    f"{tuple(p.shape)}) has a hook ({getattr(hook, '__qualname__', hook)}); under block "
                    "BPTT it could only run after the all-reduce, not before as in plain DDP. Remove it, "
                    "or run the call under ddp.no_sync() and a synchronising step without hooks"
                )
    return sync


def run_schedule(
    schedule: Any,
    adapter: Adapter,
    view: Any,
    *,
    state: Any,
    loss_fn: Any,
    final_loss_fn: Any,
    scaler: Any = None,
    progress: Any = None,
    verify: bool = True,
    keep: bool = True,
    observer: Observer | None = None,
    on_out_of_memory: Callable[[int], None] | None = None,
    overlap: bool = False,
) -> Result:
    """Carry out ``schedule``; see `vlrnn_planner.backward` for the contract.

    Parameters
    ----------
    schedule : Schedule
    adapter : Adapter
    view : DenseView or PackedView
        From `vlrnn_torch.sequences.make_view`.
    state : structure or None
        The caller's initial state.
    loss_fn, final_loss_fn : callable or None
    scaler : GradScaler, optional
    progress : callable, optional
        ``progress(blocks_done, num_blocks)`` after each block.
    verify : bool, default True
        NOTE [ Verifying the recomputation ] and NOTE [ Effects per call ].
    keep : bool, default True
        Keep the call's effects (gradients, RNG, buffers). False puts everything back as it was
        (the profiler measures real calls that way).
    observer : callable, optional
        ``observer(action, "before" | "after")`` around every action.
    on_out_of_memory : callable, optional
        Called with the bytes the call could still have grown by on its CUDA device when it ran
        out of memory (the allocator's view at the failure), before its tensors are let go.
    overlap : bool, default False
        Backpropagate each block while the next one re-runs with grad, where that can be kept
        exact (NOTE [ Overlapping recomputation with backward ]).

    Returns
    -------
    Result

    Raises
    ------
    NoGradientError
        Under ``torch.inference_mode()`` or ``torch.no_grad()``, or when no block's loss or state
        requires grad.
    NondeterministicCellError
        NOTE [ Verifying the recomputation ], NOTE [ Tensors from outside the call ].
    PerCallEffectError, UnsupportedHookError
        Before any work (NOTE [ Effects per call ], NOTE [ Hooks ]).
    """
    _refuse_without_grad()
    check_module_hooks(adapter.inner, per_step=adapter.kind == "step")
    params = _module_parameters(adapter.cell) + _module_parameters(loss_fn) + _module_parameters(final_loss_fn)
    sync = _check_ddp(adapter, params)
    state_leaves = [t for t in flatten(state)[0] if t is not None]
    cuda_devices: tuple[int, ...] = ()
    if torch.cuda.is_available():
        inputs = [t for t in view.slices.tensors]
        cuda_devices = devices_of([*adapter.cell.parameters(), *inputs, *state_leaves])
    stash = GradStash()
    rng_before = RNGState.capture(cuda_devices)
    home = view.device if view.device is not None and view.device.type == "cuda" else None
    allocated_before = torch.cuda.memory_allocated(home) if home is not None else 0
    buffers = BufferReplay(adapter.inner)
    parametrizations = ParametrizationCache(
        [] if adapter.kind == "step" or adapter.ddp is not None
        else [*adapter.inner.modules(), *(m for f in (loss_fn, final_loss_fn) if isinstance(f, nn.Module) for m in f.modules())]
    )
    run: _Run | None = None
    hook = None
    try:
        stash.add(params)
        view.slices.start()
        with torch.enable_grad():
            prepared = view.prepare_state(state)
        initial_state, state_pairs = _detach_state(prepared)
        parametrizations.enter()
        buffers.mark_start()
        own = {id(p) for _, p in state_pairs} | {id(p) for p in parametrizations.proxies()}
        if verify:
            with torch.no_grad():
                check_per_call_effects(adapter, view, schedule, initial_state, buffers, cuda_devices)
        initial = _Boundary(initial_state, RNGState.capture(cuda_devices))
        if adapter.ddp is not None and buffers:
            def _record_broadcast(module: nn.Module, args: Any) -> None:
                initial.buffers = buffers.capture()  # after DDP's broadcast from rank 0
                hook.remove()

            hook = adapter.inner.register_forward_pre_hook(_record_broadcast)
        reads = Reads(sequence_marker(), lambda t: run is not None and run.is_own(t))
        run = _Run(schedule, adapter, view, loss_fn=loss_fn, final_loss_fn=final_loss_fn, scaler=scaler,
                   progress=progress, initial=initial, cuda_devices=cuda_devices, stash=stash, buffers=buffers,
                   reads=reads, parametrizations=parametrizations, verify=verify, sync=sync, own=own)
        if overlap and observer is None and can_overlap(adapter, buffers):
            run.overlap = Overlap(view.device)
        _interpret(run, observer)
        if run.overlap is not None:
            run.overlap.finish()
        if hook is not None:
            hook.remove()
            hook = None
        run.raise_mismatch()
        own.update(id(p) for _, p in reads.proxies.values())
        if not _backpropagate_upstream(run, state_pairs) and not stash.received():
            raise NoGradientError(
                "vlrnn_torch: nothing in this call requires grad (no parameter, input or initial "
                "state that the loss depends on), so no gradient can flow, as loss.backward() would "
                "complain; check that the parameters require grad and that loss_fn uses the outputs"
            )
    except BaseException as exc:
        if run is not None and run.overlap is not None:
            run.overlap.finish()
        if home is not None and on_out_of_memory is not None and is_out_of_memory(exc):
            on_out_of_memory(torch.cuda.memory_allocated(home) - allocated_before + torch.cuda.mem_get_info(home)[0])
        stash.rollback()
        if hook is not None:
            hook.remove()
        if run is not None:
            run.release()
        buffers.rollback()
        rng_before.restore()
        parametrizations.exit()
        view.slices.release()
        raise
    parametrizations.exit()
    view.slices.release()
    run.reads.release()
    if keep:
        stash.commit()
        run.loss_rng.restore()
        buffers.restore(run.buffers_end)
    else:
        stash.rollback()
        buffers.rollback()
        rng_before.restore()
    total = 0.0 if run.total_loss is None else float(run.total_loss)
    result = Result(loss=total, state=run.final_state, schedule=schedule, forward_evaluations=run.forward_evaluations)
    run.release()
    return result


def can_overlap(adapter: Adapter, buffers: BufferReplay) -> bool:
    """Whether the executor may overlap a block's backward with the next recomputation for this
    cell (NOTE [ Overlapping recomputation with backward ]): not with buffers (a re-run restores
    them while a backward may read them), a DDP cell (its reducer runs from the backward) or a
    compiled one.

    Parameters
    ----------
    adapter : Adapter
        The cell's adapter.
    buffers : BufferReplay
        The cell's buffers.

    Returns
    -------
    bool
    """
    return not buffers and adapter.ddp is None and not adapter.compiled


def _refuse_without_grad() -> None:
    """Raise `NoGradientError` where grad mode lets no gradient flow, as ``loss.backward()`` would."""
    if torch.is_inference_mode_enabled():
        raise NoGradientError(
            "vlrnn_torch: called under torch.inference_mode(), where no gradient can flow; call "
            "vlrnn_planner.backward outside it"
        )
    if not torch.is_grad_enabled():
        raise NoGradientError(
            "vlrnn_torch: called with grad disabled (torch.no_grad()), where loss.backward() would "
            "find no graph; call vlrnn_planner.backward with grad enabled"
        )


def _interpret(run: _Run, observer: Observer | None) -> None:
    """Carry out the schedule's actions in order, one handler per action type (a block
    backpropagated beside the next one's recomputation where ``run.overlap`` is set)."""
    actions = Lookahead(run.schedule.actions, lambda a: isinstance(a, Free))
    for action in actions:
        if observer is not None:
            observer(action, "before")
        if run.overlap is not None and isinstance(action, ForwardBackward):
            _forward_backward_overlapped(action, run, actions)
        else:
            _apply(action, run)
        if observer is not None:
            observer(action, "after")
    if run.next_block != -1:
        raise ScheduleError(f"vlrnn_planner: the schedule ended with block {run.next_block} not backpropagated")


def _backpropagate_upstream(run: _Run, state_pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """The last traversal: the gradients of the initial state, the inputs and the tensors taken
    from outside the call, into their own graphs at once (NOTE [ One traversal per block ]).
    Whether there was any."""
    pairs = [(t, p.grad) for t, p in state_pairs if p.grad is not None]
    pairs += run.view.slices.upstream() + run.reads.upstream() + run.parametrizations.upstream()
    pairs = [(t, g) for t, g in pairs if t.requires_grad]
    if not pairs:
        return False
    roots = [t for t, _ in pairs]
    run.stash.add(_upstream_leaves(roots))
    torch.autograd.backward(roots, [g for _, g in pairs])
    return True
