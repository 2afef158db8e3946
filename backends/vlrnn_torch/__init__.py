"""vlrnn_torch: the PyTorch backend of vlrnn-planner.

It runs schedules over any strictly sequential torch cell: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` of
any depth, ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``, custom sequence modules
``forward(x_block, state) -> (outputs, state)``, and custom per-step cells wrapped as
`StepCell`, over dense or packed batches, with any nesting of state tensors.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import nn

from vlrnn_planner.backends import Result, SequenceShape
from vlrnn_planner.errors import InvalidTypeError

from .cells import SequenceModule, StepCell, adapt
from .devices import is_out_of_memory
from .executor import run_schedule
from .profiler import profile_cell
from .sequences import make_view
from .tree import check_state

__all__ = ["TorchBackend", "StepCell", "SequenceModule"]


class TorchBackend:
    """The torch backend: accepts any `torch.nn.Module`."""

    name = "torch"

    #: Measure a cell on its device: `vlrnn_torch.profiler.profile_cell`.
    profile = staticmethod(profile_cell)

    def accepts(self, cell: Any) -> bool:
        return isinstance(cell, nn.Module)

    def __init__(self) -> None:
        self._headroom: int | None = None

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the device ran out of memory (`vlrnn_torch.devices.is_out_of_memory`)."""
        return is_out_of_memory(exc)

    def _record_headroom(self, headroom: int) -> None:
        self._headroom = headroom

    def release_memory(self) -> int | None:
        """After a call ran out of memory: free what it left (garbage, the CUDA allocator's cache)
        and return how many bytes more it could have grown by, as the allocator saw it when it
        failed (None where the device does not say: the CPU).

        Returns
        -------
        int or None
        """
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        headroom, self._headroom = self._headroom, None
        return headroom

    def _prepare(self, cell, inputs, *, targets, loss_fn, state, final_loss_fn, time_dim):
        adapter = adapt(cell)
        view = make_view(adapter, inputs, targets, time_dim)
        check_state(state, what="the initial state")
        adapter.check_state(state, view.batch)
        for name, fn in (("loss_fn", loss_fn), ("final_loss_fn", final_loss_fn)):
            if fn is not None and not callable(fn):
                raise InvalidTypeError(f"vlrnn_torch: {name} must be callable, got {type(fn).__name__}")
        if state is not None:
            view.check_initial_state(state)
        return adapter, view

    def inspect(self, cell, inputs, **kwargs) -> SequenceShape:
        """Validate a call before any work; return its sequence's shape."""
        _, view = self._prepare(cell, inputs, **kwargs)
        return SequenceShape(view.seq_len, view.batch_size, view.batch_sizes,
                             input_gradients=view.slices.require_grad)

    def execute(self, schedule, cell, inputs, *, scaler=None, progress=None, verify=True, overlap=None, **kwargs) -> Result:
        """Carry out ``schedule`` on ``cell``; see `vlrnn_planner.backward`."""
        if scaler is not None and not callable(getattr(scaler, "scale", None)):
            raise InvalidTypeError(
                f"vlrnn_torch: scaler must have a scale(loss) method (torch.amp.GradScaler), "
                f"got {type(scaler).__name__}"
            )
        adapter, view = self._prepare(cell, inputs, **kwargs)
        return run_schedule(
            schedule,
            adapter,
            view,
            state=kwargs["state"],
            loss_fn=kwargs["loss_fn"],
            final_loss_fn=kwargs["final_loss_fn"],
            scaler=scaler,
            progress=progress,
            verify=verify,
            on_out_of_memory=self._record_headroom,
            overlap=bool(getattr(schedule, "overlap", False)) if overlap is None else overlap,
        )
