"""Side effects of a call kept as one plain BPTT call leaves them: gradients and their hooks,
module buffers, parametrizations; and the checks that refuse what cannot be kept.

NOTE [ Failure atomicity ]
--------------------------
Before a leaf's first gradient of the call (the cell's and loss modules' parameters at the start,
any other leaf when a block first reads it, NOTE [ Tensors from outside the call ], and the leaves
upstream of the inputs and the initial state before the last traversal), its ``.grad`` is put
aside and set to None, so the blocks accumulate into fresh ``.grad`` tensors. On success each
put-aside gradient receives the new sum in place, exactly as ``loss.backward()`` accumulates
(``old += new``); on any exception (the cell, ``loss_fn``, out of memory, KeyboardInterrupt) the
put-aside gradients are put back, and the exception propagates unchanged.

NOTE [ Hooks ]
--------------
Under ``loss.backward()`` a leaf's tensor hooks (``register_hook``) see its whole gradient once,
and its post-accumulate-grad hooks run once after it is accumulated. Block BPTT reaches the
cell's parameters once per block, so while a call runs the hooks of every leaf put aside (NOTE
[ Failure atomicity ]) are taken off it; when the call succeeds they are put back and run once on
the call's gradient, in order: the tensor hooks on the sum (each may replace it), the
accumulation, then the post-accumulate hooks. Module backward hooks of a sequence module would
run once per block on a part of the gradients, which no replay can mend: such a call is refused
before any work (a step cell is called once per step in plain BPTT too, so its hooks are kept).

NOTE [ Buffer replay ]
----------------------
Buffers (BatchNorm's running statistics, a spectral norm's power-iteration vectors) change as the
cell runs. Like the RNG (NOTE [ RNG replay ]), they are recorded at every stored boundary and set
back before a block is recomputed, so that the recomputation sees what the first pass saw, and
after the call they hold what they held after the last block's forward: what one forward pass
leaves. Every buffer is copied at each stored boundary (kernels update some in place without a
trace), so the planner counts the cell's buffer bytes with each stored state.

NOTE [ Parametrizations ]
-------------------------
A weight under ``torch.nn.utils.parametrize`` (weight_norm, orthogonal, spectral_norm) is computed
each time the module reads it. Plain BPTT calls a sequence module once, so it computes such a
weight once per call (and a spectral norm runs one power iteration); blocks would compute it once
per block. For a sequence module the weight is therefore computed once when the call begins and
handed to every block as a detached leaf through ``parametrize.cached()`` (it is a tensor with a
graph that every block reads, as an embedding's output is: NOTE [ Inputs with a graph ]); the
blocks' gradients are backpropagated through the parametrization once, after the last block.
A step cell is called once per step in plain BPTT too, so its parametrizations run per step as
they would there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn
from torch.nn.modules import module as module_module

from vlrnn_planner.errors import UnsupportedHookError

__all__ = ["GradStash", "BufferReplay", "ParametrizationCache", "check_module_hooks", "hooks_of"]


def hooks_of(t: torch.Tensor) -> tuple[Any, Any]:
    """The tensor's hook dicts: tensor hooks and post-accumulate-grad hooks (None where absent).

    Parameters
    ----------
    t : torch.Tensor
        A leaf.

    Returns
    -------
    tensor_hooks, post_accumulate_hooks : dict or None
        Torch's own ordered dicts (``_backward_hooks``, ``_post_accumulate_grad_hooks``), not
        copies: clearing or updating them takes hooks off ``t`` or puts them back.
    """
    return getattr(t, "_backward_hooks", None), getattr(t, "_post_accumulate_grad_hooks", None)


class GradStash:
    """Puts leaves' ``.grad`` and hooks aside for the duration of a call (NOTE [ Failure
    atomicity ], NOTE [ Hooks ])."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor | None, list, list]] = {}
        self._merged: dict[int, tuple[torch.Tensor, torch.Tensor | None, list, list]] = {}

    def __contains__(self, t: torch.Tensor) -> bool:
        return id(t) in self._saved

    def tensors(self) -> list[torch.Tensor]:
        """The leaves put aside so far.

        Returns
        -------
        list of tensor
            In the order they were added; those given back by `merge` are left out.
        """
        return [entry[0] for entry in self._saved.values()]

    def add(self, tensors: Iterable[torch.Tensor | None]) -> None:
        """Put aside the gradient and hooks of each leaf that requires grad (once per leaf).

        Parameters
        ----------
        tensors : iterable of tensor or None
            Anything else than a leaf requiring grad is skipped.
        """
        for t in tensors:
            if t is None or not t.requires_grad or t.grad_fn is not None or id(t) in self._saved:
                continue
            tensor_hooks, post_hooks = hooks_of(t)
            pre = list(tensor_hooks.items()) if tensor_hooks else []
            post = list(post_hooks.items()) if post_hooks else []
            self._saved[id(t)] = (t, t.grad, pre, post)
            t.grad = None
            if pre:
                tensor_hooks.clear()
            if post:
                post_hooks.clear()

    def received(self) -> bool:
        """Whether any leaf put aside has received a gradient during the call.

        Returns
        -------
        bool
            True if the ``.grad`` of any leaf put aside (merged ones included) is not None.
        """
        return any(entry[0].grad is not None for entry in (*self._saved.values(), *self._merged.values()))

    def hooked(self) -> list[torch.Tensor]:
        """The leaves put aside that have hooks.

        Returns
        -------
        list of tensor
            Those with a tensor hook or a post-accumulate-grad hook taken off (NOTE [ Hooks ]).
        """
        return [t for t, _, pre, post in self._saved.values() if pre or post]

    def merge(self, tensors: Iterable[torch.Tensor]) -> None:
        """Give ``tensors`` back their put-aside gradient plus what the call added so far, as a new
        tensor (the put-aside one stays intact for a rollback); they leave the stash.

        For a synchronised ``DistributedDataParallel`` step, whose last traversal must all-reduce
        what plain DDP would: everything accumulated locally (NOTE [ DistributedDataParallel ] in
        the executor). Hooks of such leaves are refused beforehand.

        Parameters
        ----------
        tensors : iterable of tensor
            Leaves to give back; those not put aside are skipped. A `rollback` still sets them to
            their put-aside gradient, a `commit` leaves them as they are.
        """
        for t in tensors:
            entry = self._saved.get(id(t))
            if entry is None:
                continue
            _, old, _, _ = entry
            new = t.grad
            if old is not None:
                t.grad = old.clone() if new is None else old + new
            self._merged[id(t)] = entry
            del self._saved[id(t)]

    def commit(self) -> None:
        """The call succeeded: hooks back on, run once on the call's gradient, which is added into
        the put-aside one in place (``old += new``, as ``loss.backward()`` accumulates)."""
        with torch.no_grad():
            for t, old, pre, post in self._saved.values():
                tensor_hooks, post_hooks = hooks_of(t)
                if pre:
                    tensor_hooks.update(pre)
                if post:
                    post_hooks.update(post)
                new = t.grad
                if new is None:
                    t.grad = old
                    continue
                for _, hook in pre:
                    replaced = hook(new)
                    if replaced is not None:
                        new = replaced
                if old is None:
                    t.grad = new
                else:
                    try:
                        old.add_(new)
                        t.grad = old
                    except RuntimeError:  # layouts that cannot add in place (sparse into dense, ...)
                        t.grad = old + new
                for _, hook in post:
                    hook(t)
        self._saved.clear()
        self._merged.clear()

    def rollback(self) -> None:
        """The call failed: every gradient and hook as it was before the call."""
        for t, old, pre, post in list(self._saved.values()) + list(self._merged.values()):
            tensor_hooks, post_hooks = hooks_of(t)
            if pre:
                tensor_hooks.update(pre)
            if post:
                post_hooks.update(post)
            t.grad = old
        self._saved.clear()
        self._merged.clear()


class BufferReplay:
    """Records and restores a module's buffers at block boundaries (NOTE [ Buffer replay ]).

    Parameters
    ----------
    module : nn.Module
        The cell (behind its wrappers); its buffers and its submodules'.
    """

    def __init__(self, module: nn.Module) -> None:
        self.entries: list[tuple[nn.Module, str]] = [
            (m, name) for m in module.modules() for name, b in m._buffers.items() if isinstance(b, torch.Tensor)
        ]
        self.initial = self.capture()
        self.start = self.initial

    def __bool__(self) -> bool:
        return bool(self.entries)

    def mark_start(self) -> None:
        """Take the buffers now as the call's start (boundary 0), after what the call does once
        before its blocks (computing parametrizations, NOTE [ Parametrizations ])."""
        self.start = self.capture()

    def rollback(self) -> None:
        """Set the buffers to what they were when this record was made."""
        self.restore(self.initial)

    def capture(self) -> tuple[torch.Tensor, ...] | None:
        """A copy of every buffer now (None for a module without buffers).

        Every buffer is copied: kernels such as ``batch_norm`` update running statistics in place
        without bumping the tensor's version counter, so a change cannot be told cheaply.

        Returns
        -------
        tuple of tensor or None
            Detached clones, one per buffer in module order, on the buffers' devices (`nbytes`
            bytes in all).
        """
        if not self.entries:
            return None
        with torch.no_grad():
            return tuple(m._buffers[name].detach().clone() for m, name in self.entries)

    def restore(self, snapshot: tuple[torch.Tensor, ...] | None) -> None:
        """Set the buffers to ``snapshot`` (from `capture`; None: as at the start of the call).

        The values are written through ``.data``, which leaves the buffers' version counters
        alone: this rewinds the module to values a graph of this call may have saved (a cached
        parametrization's), it is not an operation to differentiate.

        Parameters
        ----------
        snapshot : tuple of tensor or None
            From `capture`; None for the call's start (`mark_start`, else when this record was
            made). A buffer whose shape or dtype changed since, or that was removed, is replaced
            by a clone of the snapshot's value.
        """
        if not self.entries:
            return
        values = self.start if snapshot is None else snapshot
        with torch.no_grad():
            for (m, name), value in zip(self.entries, values):
                now = m._buffers.get(name)
                if isinstance(now, torch.Tensor) and now.shape == value.shape and now.dtype == value.dtype:
                    now.data.copy_(value)
                else:
                    m._buffers[name] = value.clone()

    def nbytes(self) -> int:
        """Bytes one snapshot keeps.

        Returns
        -------
        int
            The buffers' size in bytes when this record was made; 0 without buffers.
        """
        return 0 if self.initial is None else sum(t.numel() * t.element_size() for t in self.initial)


class ParametrizationCache:
    """Each parametrized weight computed once per call and read by every block as a leaf (NOTE
    [ Parametrizations ]).

    Parameters
    ----------
    modules : iterable of nn.Module
        Modules whose parametrizations to compute once (the cell's and the loss modules').
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.targets = [
            (m, name) for m in modules if parametrize.is_parametrized(m) for name in m.parametrizations.keys()
        ]
        self.weights: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._context = None

    def __bool__(self) -> bool:
        return bool(self.targets)

    def enter(self) -> None:
        """Compute every parametrized weight once (with grad) and cache a detached leaf of it."""
        if not self.targets:
            return
        self._context = parametrize.cached()
        self._context.__enter__()
        with torch.enable_grad():
            for m, name in self.targets:
                weight = getattr(m, name)
                proxy = weight.detach().requires_grad_(weight.requires_grad)
                parametrize._cache[(id(m), name)] = proxy
                self.weights.append((weight, proxy))
        self._ours = set(parametrize._cache.keys())

    def prune(self) -> None:
        """Drop what a block cached on its own (parametrizations outside the modules given), so that
        no block reads a weight with another block's graph."""
        if self._context is None:
            return
        for key in [k for k in parametrize._cache if k not in self._ours]:
            del parametrize._cache[key]

    def proxies(self) -> list[torch.Tensor]:
        """The leaves the blocks read.

        Returns
        -------
        list of tensor
            One detached leaf per parametrized weight (requiring grad where the weight does),
            made by `enter`; empty before it and after `exit`.
        """
        return [p for _, p in self.weights]

    def upstream(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, gradient) for every weight that received a gradient.

        Returns
        -------
        list of (tensor, tensor)
            The weight as computed by `enter` (with its graph into the parametrization) and the
            gradient its leaf gathered over the blocks, for the executor to backpropagate once.
        """
        return [(w, p.grad) for w, p in self.weights if p.grad is not None]

    def exit(self) -> None:
        """Leave ``parametrize.cached()``; the weights are computed anew afterwards."""
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)
        self.weights = []


def check_module_hooks(module: nn.Module, *, per_step: bool) -> None:
    """Refuse module backward hooks that blocks would run once per block (NOTE [ Hooks ]).

    Parameters
    ----------
    module : nn.Module
        The cell behind its wrappers.
    per_step : bool
        Whether the cell is a step cell (called once per step in plain BPTT too).

    Raises
    ------
    UnsupportedHookError
        Naming the module and the hook.
    """
    if per_step:
        return
    for name, m in module.named_modules():
        for kind, hooks in (("backward ", m._backward_hooks), ("backward pre-", m._backward_pre_hooks)):
            if hooks:
                hook = next(iter(hooks.values()))
                where = f"{type(m).__name__}" + (f" ({name})" if name else "")
                raise UnsupportedHookError(
                    f"vlrnn_torch: {where} has a module {kind}hook ({_name(hook)}); plain BPTT runs it "
                    "once for the whole sequence, block BPTT would run it once per block on a part of "
                    "the gradients. Remove it for this call, or register a tensor hook on the "
                    "parameters instead (those see the whole gradient once)"
                )
    for kind, hooks in (("backward ", module_module._global_backward_hooks),
                        ("backward pre-", module_module._global_backward_pre_hooks)):
        if hooks:
            raise UnsupportedHookError(
                f"vlrnn_torch: a global module {kind}hook ({_name(next(iter(hooks.values())))}) is "
                "registered; block BPTT would run it once per block. Remove it for this call"
            )


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
