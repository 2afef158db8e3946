"""Cell adapters: one way to run any supported module over a block of steps.

Every adapter offers ``run(x_block, state) -> (outputs, state)`` over a dense block (time axis at
``time_dim``) and ``run_packed(data, batch_sizes, state) -> (out_data, state)`` over a block of a
packed batch (rows sorted by decreasing length, ``state`` holding exactly ``batch_sizes[0]``
sequences along ``state_batch_dim``).

Kinds of cell:
- sequence modules: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` (any depth, ``batch_first`` either way) and
  any module with ``forward(x_block, state) -> (outputs, state)`` (the default for an unknown module);
- step cells: ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell`` (their output is ``h``) and custom
  modules with ``forward(x_t, state) -> (output_t, state)`` wrapped as `StepCell`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from vlrnn_planner.errors import InvalidInputError, InvalidTypeError

from .tree import run_on_leading_rows

__all__ = ["StepCell", "SequenceModule", "Adapter", "adapt"]


class StepCell(nn.Module):
    """Marks a module as a per-step cell: ``forward(x_t, state) -> (output_t, state)``.

    Parameters
    ----------
    module : nn.Module
        The per-step cell. Its parameters are this wrapper's parameters.
    time_dim : int, default 0
        The time axis of the inputs handed to `vlrnn_planner.backward`; outputs are stacked
        along the same axis.
    state_batch_dim : int, default 0
        The batch axis of the state's tensors (used for packed batches).

    Examples
    --------
    >>> import torch
    >>> class Leaky(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(3, 3)
    ...     def forward(self, x, h):
    ...         h = 0.5 * h + torch.tanh(self.lin(x))
    ...         return h.sum(-1), h
    >>> cell = StepCell(Leaky())
    >>> out, h = cell(torch.ones(2, 3), torch.zeros(2, 3))
    >>> out.shape, h.shape
    (torch.Size([2]), torch.Size([2, 3]))
    """

    def __init__(self, module: nn.Module, *, time_dim: int = 0, state_batch_dim: int = 0) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise InvalidTypeError(
                f"vlrnn_torch: StepCell wraps a torch.nn.Module, got {type(module).__name__}"
            )
        self.module = module
        self.time_dim = time_dim
        self.state_batch_dim = state_batch_dim

    def forward(self, x_t: Any, state: Any) -> tuple[Any, Any]:
        return self.module(x_t, state)


class SequenceModule(nn.Module):
    """Marks a module as a sequence module and states its axes.

    ``forward(x_block, state) -> (outputs, state)`` over a block of steps; this is how an unknown
    module is taken anyway, so wrap only to set ``time_dim`` or ``state_batch_dim`` (the batch axis
    of the state's tensors, used for packed batches; 0 unless given).
    """

    def __init__(self, module: nn.Module, *, time_dim: int = 0, state_batch_dim: int = 0) -> None:
        super().__init__()
        self.module = module
        self.time_dim = time_dim
        self.state_batch_dim = state_batch_dim

    def forward(self, x_block: Any, state: Any) -> tuple[Any, Any]:
        return self.module(x_block, state)


class Adapter:
    """How to run one cell over a block. Build with `adapt`."""

    #: "sequence" (a module over blocks), "rnn" (nn.RNN/LSTM/GRU) or "step" (run step by step).
    kind: str = "sequence"

    def __init__(self, cell: nn.Module, *, time_dim: int, state_batch_dim: int) -> None:
        self.cell = cell
        self.time_dim = time_dim
        self.state_batch_dim = state_batch_dim

    def default_time_dim(self, inputs: torch.Tensor) -> int:
        return self.time_dim

    def run(self, x_block: torch.Tensor, state: Any, time_dim: int) -> tuple[Any, Any]:
        return _pair(self.cell(x_block, state), self.cell)

    def run_packed(self, data: torch.Tensor, batch_sizes: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = _pair(self.cell(PackedSequence(data, batch_sizes), state), self.cell)
        return (out.data if isinstance(out, PackedSequence) else out), state


class _RNNAdapter(Adapter):
    """nn.RNN / nn.LSTM / nn.GRU: unbatched 2-D inputs are time-major whatever batch_first says."""

    kind = "rnn"

    def default_time_dim(self, inputs: torch.Tensor) -> int:
        return 0 if inputs.dim() == 2 else self.time_dim


class _StepAdapter(Adapter):
    """Step cells run step by step; outputs are stacked along the time axis."""

    kind = "step"

    def __init__(self, cell: nn.Module, *, time_dim: int, state_batch_dim: int, builtin: bool) -> None:
        super().__init__(cell, time_dim=time_dim, state_batch_dim=state_batch_dim)
        self.builtin = builtin
        self.is_lstm = isinstance(cell, nn.LSTMCell)

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[Any, Any]:
        if not self.builtin:
            return _pair(self.cell(x_t, state), self.cell)
        new = self.cell(x_t, state)
        return (new[0] if self.is_lstm else new), new

    def run(self, x_block: torch.Tensor, state: Any, time_dim: int) -> tuple[Any, Any]:
        outs = []
        for x_t in x_block.unbind(time_dim):
            out, state = self.step(x_t, state)
            outs.append(out)
        return torch.stack(outs, dim=time_dim), state

    def run_packed(self, data: torch.Tensor, batch_sizes: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        outs = []
        offset = 0
        dim = self.state_batch_dim
        for rows in batch_sizes.tolist():
            x_t = data[offset : offset + rows]
            offset += rows
            out, state = run_on_leading_rows(lambda active: self.step(x_t, active), state, dim, rows)
            outs.append(out)
        return torch.cat(outs, 0), state


def _pair(result: Any, cell: nn.Module) -> tuple[Any, Any]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise InvalidTypeError(
            f"vlrnn_torch: {type(cell).__name__}.forward must return (outputs, state), got "
            f"{type(result).__name__}{'' if not isinstance(result, (tuple, list)) else f' of length {len(result)}'}; "
            "wrap a per-step cell as vlrnn_torch.StepCell(module), or adapt the module to return a pair"
        )
    return result[0], result[1]


def _unwrap_ddp(cell: nn.Module) -> nn.Module:
    # DistributedDataParallel and DataParallel keep the real module in `.module`.
    name = type(cell).__name__
    if name in ("DistributedDataParallel", "DataParallel") and hasattr(cell, "module"):
        return cell.module
    return cell


def adapt(cell: nn.Module, *, time_dim: int | None = None) -> Adapter:
    """The adapter for ``cell``.

    Raises
    ------
    InvalidTypeError
        If ``cell`` is not a torch module.
    InvalidInputError
        If ``cell`` is bidirectional (its output at a step depends on later steps).
    """
    if not isinstance(cell, nn.Module):
        raise InvalidTypeError(f"vlrnn_torch: cell must be a torch.nn.Module, got {type(cell).__name__}")
    inner = _unwrap_ddp(cell)
    if getattr(inner, "bidirectional", False):
        raise InvalidInputError(
            f"vlrnn_torch: {type(inner).__name__} is bidirectional; block BPTT needs a strictly "
            "sequential recurrence (each step depends only on earlier ones). Use bidirectional=False, "
            "or run the backward direction as a second module over the reversed sequence"
        )
    if isinstance(inner, StepCell):
        return _StepAdapter(cell, time_dim=_pick(time_dim, inner.time_dim), state_batch_dim=inner.state_batch_dim, builtin=False)
    if isinstance(inner, nn.RNNCellBase):
        return _StepAdapter(cell, time_dim=_pick(time_dim, 0), state_batch_dim=0, builtin=True)
    if isinstance(inner, nn.RNNBase):
        default = 1 if inner.batch_first else 0
        return _RNNAdapter(cell, time_dim=_pick(time_dim, default), state_batch_dim=1)
    if isinstance(inner, SequenceModule):
        return Adapter(cell, time_dim=_pick(time_dim, inner.time_dim), state_batch_dim=inner.state_batch_dim)
    default = 1 if getattr(inner, "batch_first", False) else 0
    return Adapter(cell, time_dim=_pick(time_dim, default), state_batch_dim=0)


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override
