"""Views of a call's inputs and targets as blocks of steps: dense tensors and packed batches.

A view hides how a block is cut out of the inputs, how the state enters and leaves a block, and
what `loss_fn` receives, so that the executor is the same for both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

from vlrnn_planner.errors import InvalidInputError, InvalidTypeError

from .cells import Adapter
from .tree import run_on_leading_rows, tree_map

__all__ = ["DenseView", "PackedView", "make_view"]


def _cell_device(adapter: Adapter) -> torch.device | None:
    first = next(adapter.cell.parameters(), None)
    return None if first is None else first.device


def _to(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """A block of inputs or targets on the cell's device.

    NOTE [ Inputs on the host ]
    When the cell is on an accelerator and the sequence is not, only the block at hand is copied
    over (asynchronously from pinned memory), so a sequence of millions of steps never has to fit
    on the device; the planner counts such inputs as blocks in flight.
    """
    if device is None or t.device == device:
        return t
    return t.to(device, non_blocking=t.is_pinned())


class DenseView:
    """Inputs with a time axis at ``time_dim``; targets sliced along the same axis."""

    def __init__(self, adapter: Adapter, inputs: torch.Tensor, targets: Any, time_dim: int) -> None:
        self.adapter = adapter
        self.inputs = inputs
        self.targets = targets
        self.time_dim = time_dim
        self.seq_len = inputs.size(time_dim)
        # (T, B, ...) or (B, T, ...); 2-D inputs are taken as one unbatched sequence.
        self.batch_size = inputs.size(1 if time_dim == 0 else 0) if inputs.dim() >= 3 else 1
        self.batch_sizes = None
        self.device = _cell_device(adapter)

    def prepare_state(self, state: Any) -> Any:
        return state

    def finalize_state(self, state: Any) -> Any:
        return state

    def run(self, start: int, stop: int, state: Any) -> tuple[Any, Any]:
        x = _to(self.inputs.narrow(self.time_dim, start, stop - start), self.device)
        return self.adapter.run(x, state, self.time_dim)

    def block_targets(self, start: int, stop: int) -> Any:
        if self.targets is None:
            return None
        return _to(self.targets.narrow(self.time_dim, start, stop - start), self.device)


class PackedView:
    """A `PackedSequence` batch, worked on in sorted order (longest sequence first).

    The state at a block boundary holds every sequence of the batch in sorted order. A block
    runs only the sequences still active at its first step; the others pass through unchanged.
    """

    def __init__(self, adapter: Adapter, inputs: PackedSequence, targets: PackedSequence | None) -> None:
        self.adapter = adapter
        self.inputs = inputs
        self.targets = targets
        sizes = inputs.batch_sizes.tolist()
        self.sizes = sizes
        self.seq_len = len(sizes)
        self.batch_size = sizes[0]
        self.batch_sizes = tuple(sizes)
        offsets = [0]
        for b in sizes:
            offsets.append(offsets[-1] + b)
        self.offsets = offsets
        self.dim = adapter.state_batch_dim
        self.device = _cell_device(adapter)

    def prepare_state(self, state: Any) -> Any:
        """The caller's initial state (caller's batch order) in sorted order."""
        return self._reorder(state, self.inputs.sorted_indices)

    def finalize_state(self, state: Any) -> Any:
        """A state in sorted order, back in the caller's batch order."""
        return self._reorder(state, self.inputs.unsorted_indices)

    def _reorder(self, state: Any, index: torch.Tensor | None) -> Any:
        if state is None or index is None:
            return state
        return tree_map(lambda t: t.index_select(self.dim, index.to(t.device)), state)

    def run(self, start: int, stop: int, state: Any) -> tuple[Any, Any]:
        lo, hi = self.offsets[start], self.offsets[stop]
        data = _to(self.inputs.data[lo:hi], self.device)
        batch_sizes = self.inputs.batch_sizes[start:stop]
        return run_on_leading_rows(
            lambda active: self.adapter.run_packed(data, batch_sizes, active), state, self.dim, self.sizes[start]
        )

    def block_targets(self, start: int, stop: int) -> Any:
        if self.targets is None:
            return None
        return _to(self.targets.data[self.offsets[start] : self.offsets[stop]], self.device)


def _time_dim(adapter: Adapter, inputs: torch.Tensor, time_dim: int | None) -> int:
    dim = adapter.default_time_dim(inputs) if time_dim is None else time_dim
    if inputs.dim() == 0:
        raise InvalidInputError(
            "vlrnn_torch: inputs is a 0-d tensor and has no time axis; pass a sequence "
            "(time-major (T, B, ...) or batch_first (B, T, ...))"
        )
    if not -inputs.dim() <= dim < inputs.dim():
        raise InvalidInputError(
            f"vlrnn_torch: time_dim={dim} is outside the inputs' {inputs.dim()} dimensions "
            f"(shape {tuple(inputs.shape)}); pass time_dim= pointing at the time axis"
        )
    dim %= inputs.dim()
    if adapter.kind == "rnn" and inputs.dim() < 2:
        raise InvalidInputError(
            f"vlrnn_torch: inputs of shape {tuple(inputs.shape)} have no time axis: "
            f"{type(adapter.cell).__name__} takes (T, B, features), (B, T, features) with "
            "batch_first=True, or unbatched (T, features)"
        )
    if adapter.kind == "step" and inputs.dim() < 2:
        raise InvalidInputError(
            f"vlrnn_torch: inputs of shape {tuple(inputs.shape)} have no time axis beside the "
            "features a step cell takes; stack the steps as (T, B, features) or (T, features)"
        )
    return dim


def make_view(adapter: Adapter, inputs: Any, targets: Any, time_dim: int | None):
    """Check ``inputs`` and ``targets`` against each other and return the view for them."""
    if isinstance(inputs, PackedSequence):
        if targets is not None and not isinstance(targets, PackedSequence):
            raise InvalidTypeError(
                f"vlrnn_torch: inputs is a PackedSequence but targets is a {type(targets).__name__}; "
                "pack the targets the same way (pack_padded_sequence / pack_sequence with the same "
                "lengths and enforce_sorted) so that each block's target rows line up with its outputs"
            )
        if targets is not None:
            same_sizes = torch.equal(targets.batch_sizes, inputs.batch_sizes)
            same_order = (targets.sorted_indices is None and inputs.sorted_indices is None) or (
                targets.sorted_indices is not None
                and inputs.sorted_indices is not None
                and torch.equal(targets.sorted_indices.cpu(), inputs.sorted_indices.cpu())
            )
            if not (same_sizes and same_order):
                raise InvalidInputError(
                    "vlrnn_torch: the packed targets do not line up with the packed inputs (different "
                    "lengths or order); pack both from the same lengths"
                )
        if time_dim is not None:
            raise InvalidInputError(
                "vlrnn_torch: time_dim has no meaning for a PackedSequence; leave it out"
            )
        return PackedView(adapter, inputs, targets)
    if not isinstance(inputs, torch.Tensor):
        raise InvalidTypeError(
            f"vlrnn_torch: inputs must be a tensor or a PackedSequence, got {type(inputs).__name__}"
        )
    if isinstance(targets, PackedSequence):
        raise InvalidTypeError(
            "vlrnn_torch: targets is a PackedSequence but inputs is a dense tensor; pack the inputs "
            "the same way, or pass dense targets"
        )
    dim = _time_dim(adapter, inputs, time_dim)
    if targets is not None:
        if not isinstance(targets, torch.Tensor):
            raise InvalidTypeError(
                f"vlrnn_torch: targets must be a tensor (or None), got {type(targets).__name__}"
            )
        if targets.dim() <= dim or targets.size(dim) != inputs.size(dim):
            got = targets.size(dim) if targets.dim() > dim else "none"
            raise InvalidInputError(
                f"vlrnn_torch: targets have {got} steps along time_dim={dim} (shape "
                f"{tuple(targets.shape)}) but inputs have {inputs.size(dim)} (shape "
                f"{tuple(inputs.shape)}); give targets the same time axis and length as the inputs"
            )
    if inputs.size(dim) == 0:
        raise InvalidInputError("vlrnn_torch: inputs have zero time steps; pass at least one step")
    return DenseView(adapter, inputs, targets, dim)
