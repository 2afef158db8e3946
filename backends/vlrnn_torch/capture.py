"""What a block reads: the leaves it reaches and the tensors it takes from outside the call.

NOTE [ Tensors from outside the call ]
--------------------------------------
A block run with grad may read tensors that were not handed to it: parameters of a loss head that
``loss_fn`` closes over, a leaf kept as a plain attribute, an encoder's output used as attention
memory. Walking the autograd graph from Python to find them is not an option (touching the nodes
of a graph of tens of thousands of steps makes its destruction recurse until the process
crashes), so every torch function a block with grad calls is seen by a `TorchFunctionMode`,
`Reads`, that looks at the tensors among its arguments:

- a leaf that requires grad and is not one of the call's own is reported, so that the executor
  puts its ``.grad`` and hooks aside before the block's traversal (NOTE [ Failure atomicity ]);
- a tensor with a graph made before the call (its ``grad_fn``'s sequence number is below the one
  taken when the call began) is replaced, in every block, by one detached leaf of the same value
  (a proxy); the blocks' gradients add up in the proxy, and the executor backpropagates them into
  the tensor's own graph once, after the last block, as ``loss.backward()`` would;
- a tensor with a graph made during the call but before this block can only be hidden state that
  the cell carried from one block to another outside its state argument, which block BPTT cannot
  differentiate: the call is refused (`NondeterministicCellError`).

Autograd numbers nodes per thread in creation order (``Node._sequence_nr``), which is what tells
"before the call" from "in this block".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vlrnn_planner.errors import NondeterministicCellError

__all__ = ["Reads", "sequence_marker", "RandomDraws"]


def sequence_marker() -> int:
    """The sequence number autograd gives the next node made in this thread."""
    with torch.enable_grad():
        probe = torch.zeros((), requires_grad=True) * 1
    return probe.grad_fn._sequence_nr() + 1


class Reads(TorchFunctionMode):
    """Sees every torch function a block with grad calls (NOTE [ Tensors from outside the call ]).

    Parameters
    ----------
    call_marker : int
        `sequence_marker` when the call began (after its own set-up).
    is_own : callable
        ``is_own(tensor) -> bool``: leaves that the call made itself (state and input slices,
        proxies) and parameters it already knows.

    Attributes
    ----------
    discovered : list of tensor
        Leaves requiring grad seen for the first time in the current block.
    proxies : dict
        ``id(tensor) -> (tensor, proxy)`` for tensors with a graph from before the call.
    """

    def __init__(self, call_marker: int, is_own: Callable[[torch.Tensor], bool]) -> None:
        super().__init__()
        self.call_marker = call_marker
        self.block_marker = call_marker
        self.is_own = is_own
        self.discovered: list[torch.Tensor] = []
        self.proxies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._seen: set[int] = set()

    def begin_block(self) -> None:
        """Start a block: tensors with a graph made from now on belong to it."""
        self.block_marker = sequence_marker()
        self.discovered = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        args = self._visit_all(args)
        if kwargs:
            kwargs = dict(zip(kwargs.keys(), self._visit_all(tuple(kwargs.values()))))
        return func(*args, **kwargs)

    def _visit_all(self, items: tuple) -> tuple:
        out = None
        for i, a in enumerate(items):
            if isinstance(a, torch.Tensor):
                b = self._visit(a)
            elif isinstance(a, (list, tuple)) and a and any(isinstance(x, torch.Tensor) for x in a):
                new = [self._visit(x) if isinstance(x, torch.Tensor) else x for x in a]
                b = a if all(x is y for x, y in zip(new, a)) else type(a)(new)
            else:
                continue
            if b is not a:
                if out is None:
                    out = list(items)
                out[i] = b
        return items if out is None else tuple(out)

    def _visit(self, t: torch.Tensor) -> torch.Tensor:
        if not t.requires_grad:
            return t
        fn = t.grad_fn
        if fn is None:
            key = id(t)
            if key not in self._seen and not self.is_own(t):
                self._seen.add(key)
                self.discovered.append(t)
            return t
        seq = fn._sequence_nr()
        if seq >= self.block_marker:
            return t
        if seq < self.call_marker:
            found = self.proxies.get(id(t))
            if found is None:
                found = (t, t.detach().requires_grad_())
                self.proxies[id(t)] = found
            return found[1]
        raise NondeterministicCellError(
            f"vlrnn_torch: a block read a tensor of shape {tuple(t.shape)} with a graph made by an "
            f"earlier block of this call ({type(fn).__name__}): the cell carries state from one block "
            "to the next outside its state argument, which block BPTT cannot differentiate. Return "
            "everything the next step needs in the state instead"
        )

    def upstream(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, gradient) for every tensor from before the call that received a gradient."""
        return [(t, p.grad) for t, p in self.proxies.values() if p.grad is not None]

    def release(self) -> None:
        """Forget the proxies and discovered leaves."""
        self.proxies.clear()
        self.discovered = []
        self._seen.clear()


# Torch functions that may draw random numbers, by name. Only these run under the counting
# dispatch mode: under a dispatch mode the composite kernels of everything else (nn.LSTM's) would
# be decomposed into their parts, slower and with more memory.
RANDOM_FUNCTIONS = frozenset(
    "dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout alpha_dropout_ feature_dropout "
    "feature_alpha_dropout feature_alpha_dropout_ native_dropout fused_dropout bernoulli bernoulli_ rand "
    "randn randint rand_like randn_like randint_like randperm normal normal_ uniform_ random_ "
    "exponential_ geometric_ cauchy_ log_normal_ multinomial poisson rrelu rrelu_ gumbel_softmax".split()
)


class _Count(TorchDispatchMode):
    """Counts the elements of every output of an operator tagged ``nondeterministic_seeded``."""

    def __init__(self, owner: RandomDraws) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()):
            first = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(first, torch.Tensor):
                self.owner.count += first.numel()
        return out


class RandomDraws(TorchFunctionMode):
    """Counts the random numbers drawn while active by torch functions that may draw them
    (dropout, bernoulli, rand, randn, ...: `RANDOM_FUNCTIONS`), as the elements their random
    operators produce. Random draws inside other composite kernels (``nn.LSTM``'s dropout) are not
    seen.

    Examples
    --------
    >>> import torch
    >>> with RandomDraws() as draws:
    ...     _ = torch.nn.functional.dropout(torch.ones(4, 5), 0.5, training=True)
    ...     _ = torch.nn.functional.dropout(torch.ones(4, 5), 0.5, training=False)
    >>> draws.count
    20
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in RANDOM_FUNCTIONS:
            with _Count(self):
                return func(*args, **kwargs)
        return func(*args, **kwargs)
