"""The check that a sequence module does nothing once per call that blocks would change.

NOTE [ Effects per call ]
-------------------------
Plain BPTT calls a sequence module once over the whole sequence; block BPTT calls it once per
block. Whatever the module does once per call then happens once per block: a module that works in
segments of fixed length restarts its segments at every block, masks drawn once per call and
shared over time (locked or variational dropout, DropConnect on the recurrent weights, embedding
dropout) are drawn anew for every block, a buffer updated once per call is updated per block.
Gradients come out wrong, silently. So before the first call with a block length, the module is run
over its first block and a little beyond (at least 64 steps, or a quarter of the block) twice
without grad, from the same RNG state and buffers: once as one call, once as two calls cut where
the schedule cuts. They must agree:

- in the random numbers drawn (counted per operator, `vlrnn_torch.capture.RandomDraws`): draws
  per step (ordinary dropout) add up to the same count, draws per call do not;
- in the outputs, the final state and the buffers, up to rounding: where random numbers were drawn
  and differ between the two ways of drawing them (the CPU's dropout draws the same numbers either
  way, CUDA's does not), the outputs are compared again in evaluation mode, which switches
  dropout off.

A module that fails is refused with an error that says how to restructure it (a block multiple
for segments; masks drawn outside the cell and passed in the state or the inputs). Built-in
``nn.RNN``/``nn.LSTM``/``nn.GRU`` (whose dropout is drawn per step) and step cells (called once per
step in plain BPTT too) are not probed, unless a built-in module carries parametrizations or
forward hooks of its own. The result is remembered per module, cut and training mode.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from vlrnn_planner.errors import PerCallEffectError

from .capture import RandomDraws
from .cells import Adapter
from .effects import BufferReplay
from .rng import RNGState
from .tree import flatten, unflatten

__all__ = ["check_per_call_effects", "tolerance"]

_CHECKED: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()

# Steps the probe runs past the first cut: at least this many, or a quarter of the first block.
# Segments of up to this many steps show their restart within the tail.
PROBE_TAIL = 64


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for comparing two computations of the same values in ``dtype`` (kernels
    may differ between them: a no-grad pass and a pass with grad, one call and two).

    Parameters
    ----------
    dtype : torch.dtype
        The values' dtype.

    Returns
    -------
    float
        5e-2 for float16 and bfloat16, 1e-7 for float64 and complex128, 1e-3 for any other
        dtype (float32, complex64).

    Examples
    --------
    >>> import torch
    >>> tolerance(torch.float32), tolerance(torch.bfloat16), tolerance(torch.float64)
    (0.001, 0.05, 1e-07)
    """
    if dtype in (torch.float16, torch.bfloat16):
        return 5e-2
    if dtype in (torch.float64, torch.complex128):
        return 1e-7
    return 1e-3


def _close(a: Any, b: Any) -> bool:
    """Whether two structures of tensors agree up to `tolerance` (shapes, dtypes and integers exactly)."""
    la, sa = flatten(a, packed_leaves=True, what="outputs")
    lb, sb = flatten(b, packed_leaves=True, what="outputs")
    if sa != sb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if x is None or y is None:
            if x is not y:
                return False
            continue
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return False
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not (x.is_floating_point() or x.is_complex()):
            if not torch.equal(x, y):
                return False
            continue
        scale = float(x.abs().max()) if x.numel() else 0.0
        rtol = tolerance(x.dtype)
        if not torch.allclose(x, y, rtol=rtol, atol=rtol * max(scale, 1e-30)):
            return False
    return True


def _joined(first: Any, second: Any, dim: int) -> Any:
    """Two blocks' outputs joined along the time axis (rows for packed data); None where their
    shapes do not join (outputs that are not per step)."""
    la, spec = flatten(first, packed_leaves=True, what="outputs")
    lb, spec_b = flatten(second, packed_leaves=True, what="outputs")
    if spec != spec_b:
        return None
    out = []
    for x, y in zip(la, lb):
        if x is None or y is None:
            out.append(None)
            continue
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() <= dim:
            return None
        if x.shape[:dim] != y.shape[:dim] or x.shape[dim + 1 :] != y.shape[dim + 1 :]:
            return None
        out.append(torch.cat([x, y], dim))
    return unflatten(spec, out)


def _needs_probe(adapter: Adapter) -> bool:
    if adapter.kind == "step":
        return False
    if adapter.kind == "rnn":
        m = adapter.inner
        return bool(getattr(m, "parametrizations", None)) or bool(m._forward_hooks) or bool(m._forward_pre_hooks)
    return True


def check_per_call_effects(adapter: Adapter, view: Any, schedule: Any, state: Any, buffers: BufferReplay,
                           cuda_devices: tuple[int, ...]) -> None:
    """Refuse a sequence module whose result depends on where the sequence is cut (NOTE [ Effects
    per call ]). Leaves the RNG and the buffers as it found them.

    Parameters
    ----------
    adapter : Adapter
    view : DenseView or PackedView
        The call's inputs.
    schedule : Schedule
        Its first two blocks are compared.
    state : structure or None
        The initial state, as the blocks take it (sorted order for packed batches).
    buffers : BufferReplay
        The cell's buffers, set back afterwards.
    cuda_devices : tuple of int
        The CUDA devices whose generators the call uses.

    Raises
    ------
    PerCallEffectError
        If the module draws random numbers per call, or its outputs, state or buffers differ.
    """
    if schedule.num_blocks < 2 or not _needs_probe(adapter):
        return
    inner = adapter.inner
    s1 = schedule.block_steps(0)[1]
    # The one call runs a little past the cut, not a whole second block, so that it takes little
    # more memory than a block (PROBE_TAIL).
    s2 = min(schedule.block_steps(1)[1], s1 + max(PROBE_TAIL, -(-s1 // 4)))
    key = (s1, s2, tuple(m.training for m in inner.modules()))
    done = _CHECKED.setdefault(inner, set())
    if key in done:
        return
    rng = RNGState.capture(cuda_devices)
    try:
        whole, cut, draws_whole, draws_cut = _two_ways(view, s1, s2, state, buffers, rng)
        if draws_whole != draws_cut:
            raise PerCallEffectError(
                f"vlrnn_torch: {adapter.name} draws random numbers once per call ({draws_whole} over "
                f"steps 0..{s2} in one call, {draws_cut} in two calls cut at step {s1}): masks shared "
                "over time (locked or variational dropout, DropConnect, embedding dropout) would be "
                "drawn anew for every block, which changes the model. Draw such masks outside the "
                "cell, once per sequence, and pass them in the state or the inputs"
            )
        if not _close(whole, cut):
            if draws_whole and inner.training and _agrees_in_eval(inner, view, s1, s2, state, buffers, rng):
                done.add(key)
                return
            raise PerCallEffectError(
                f"vlrnn_torch: {adapter.name} gives other outputs, state or buffers over steps 0..{s2} "
                f"when the sequence is cut at step {s1} than in one call: it does something once per "
                "call (works in segments of fixed length, counts steps from the start of each call, "
                "normalises over the time axis, updates a buffer per call). If it works in segments of "
                "M steps, plan with block_multiple=M (fixed_plan or auto_plan); otherwise keep what "
                "it carries from step to step in its state"
            )
        done.add(key)
    finally:
        buffers.restore(None)
        rng.restore()


def _two_ways(view: Any, s1: int, s2: int, state: Any, buffers: BufferReplay, rng: RNGState):
    """Outputs, state and buffers of steps ``[0, s2)`` in one call and in two calls cut at
    ``s1``, and the random numbers each drew."""
    with torch.no_grad():
        rng.restore()
        buffers.restore(None)
        with RandomDraws() as counted:
            out, final = view.run(0, s2, state, bare=True)
        final_buffers = buffers.capture()
        draws_whole = counted.count
        rng.restore()
        buffers.restore(None)
        with RandomDraws() as counted:
            out1, mid = view.run(0, s1, state, bare=True)
            out2, final2 = view.run(s1, s2, mid, bare=True)
        draws_cut = counted.count
        joined = _joined(out1, out2, 0 if view.packed else view.time_dim)
        # Outputs that are not per step (a summary of the block) cannot be joined: compare the
        # states and buffers only.
        whole = (None if joined is None else out, final, final_buffers)
        cut = (joined, final2, buffers.capture())
    return whole, cut, draws_whole, draws_cut


def _agrees_in_eval(inner: nn.Module, view: Any, s1: int, s2: int, state: Any, buffers: BufferReplay,
                    rng: RNGState) -> bool:
    """Whether the two ways agree with dropout switched off (evaluation mode, set back after)."""
    modes = [(m, m.training) for m in inner.modules()]
    inner.train(False)
    try:
        whole, cut, _, _ = _two_ways(view, s1, s2, state, buffers, rng)
        return _close(whole, cut)
    finally:
        for m, mode in modes:
            m.training = mode
