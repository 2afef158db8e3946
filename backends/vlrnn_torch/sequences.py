"""Views of a call's inputs and targets as blocks of steps: dense tensors and packed batches, any
nesting of several sequences that share the time axis.

A view hides how a block is cut out of the inputs, how the state enters and leaves a block, and
what `loss_fn` receives, so that the executor is the same for both.

NOTE [ Inputs with a graph ]
----------------------------
Inputs (or targets) that require grad, such as an embedding's output, carry a graph of their own
that every block reads. Each block reads its slice of a detached copy as a fresh leaf, so its
traversal stops there; after the traversal the slice's gradient is added into a buffer as large
as the sequence (the planner counts it). When every block is done, the executor backpropagates
the buffers into the inputs' own graphs in ONE traversal (with the initial state's and any
captured tensor's, NOTE [ Tensors from outside the call ] in the executor), so an embedding or an
encoder upstream is traversed once per call, as with ``loss.backward()``, and a leaf input gets its
``.grad`` then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

from vlrnn_planner.errors import InvalidInputError, InvalidTypeError

from .cells import Adapter
from .tree import flatten, run_on_leading_rows, shapes, tree_map, unflatten

__all__ = ["DenseView", "PackedView", "make_view"]


def _cell_device(adapter: Adapter) -> torch.device | None:
    first = next(adapter.cell.parameters(), None)
    return None if first is None else first.device


def _to(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """A block of inputs or targets on the cell's device (NOTE [ Inputs on the host ])."""
    if device is None or t.device == device:
        return t
    return t.to(device, non_blocking=t.is_pinned())


class _Prefetcher:
    """Copies blocks of host-resident inputs to the cell's GPU ahead of their use.

    NOTE [ Inputs on the host ]
    When the cell is on an accelerator and the sequence is not, only the blocks at hand are on the
    device, so a sequence of millions of steps never has to fit there; the planner counts two
    blocks of inputs in flight. While a block runs, the executor names the block it will run next
    (`DenseView.prefetch`): its slices are copied into pinned host memory (the caching host
    allocator reuses it) and from there to the device on a side stream, so the copy overlaps the
    current block's compute; the block that then reads them waits on the copy's event, and the
    tensors are recorded on its stream so their memory is not reused early. At most
    ``MAX_AHEAD`` blocks are kept ahead; one never read is dropped.
    """

    MAX_AHEAD = 2
    enabled = True  # benchmarks/gpu_check.py times the copies with and without it

    def __init__(self, device: torch.device | None) -> None:
        self.active = self.enabled and device is not None and device.type == "cuda" and torch.cuda.is_available()
        self.device = device
        self.stream = torch.cuda.Stream(device) if self.active else None
        self.ready: dict[tuple[int, int, int], tuple[torch.Tensor, Any]] = {}

    def ahead(self, key: tuple[int, int, int], piece: torch.Tensor) -> None:
        """Start copying ``piece`` (tensor ``key[0]``'s steps ``key[1]:key[2]``) to the device."""
        if not self.active or key in self.ready or piece.device.type != "cpu":
            return
        staged = piece if piece.is_pinned() else piece.pin_memory()
        with torch.cuda.stream(self.stream):
            copy = staged.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[key] = (copy, event)
        while len(self.ready) > self.MAX_AHEAD * 4:  # a few tensors per block
            self.ready.pop(next(iter(self.ready)))

    def take(self, key: tuple[int, int, int]) -> torch.Tensor | None:
        """The copy of ``key`` made ahead, ready for the current stream, or None."""
        found = self.ready.pop(key, None) if self.active else None
        if found is None:
            return None
        copy, event = found
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        copy.record_stream(current)
        return copy


class _Slices:
    """The tensors of a call's inputs and targets, cut into blocks (NOTE [ Inputs with a graph ]).

    Parameters
    ----------
    tensors : list of tensor
        Every input and target tensor (for packed batches: their ``.data``).
    cut : callable
        ``cut(tensor, start, stop) -> tensor``: the steps ``[start, stop)`` of one of them.
    device : torch.device or None
        The cell's device; blocks are moved there.
    """

    def __init__(self, tensors: list[torch.Tensor], cut: Callable[[torch.Tensor, int, int], torch.Tensor],
                 device: torch.device | None) -> None:
        self.tensors = tensors
        self.cut = cut
        self.device = device
        self.detached: list[torch.Tensor] | None = None
        self.buffers: list[torch.Tensor | None] = [None] * len(tensors)
        self.pending: list[tuple[int, int, int, torch.Tensor]] = []
        self.own: set[int] | None = None  # ids of the leaves made for the block at hand
        self.prefetcher = _Prefetcher(device)

    @property
    def require_grad(self) -> bool:
        """Whether any input or target carries a graph (NOTE [ Inputs with a graph ])."""
        return any(t.requires_grad for t in self.tensors)

    def start(self) -> None:
        """Detach the tensors that require grad, for the blocks to read (once per call)."""
        self.detached = [t.detach() for t in self.tensors]
        self.buffers = [None] * len(self.tensors)
        self.pending = []

    def block(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Tensor ``i``'s steps ``[start, stop)`` on the cell's device; a fresh leaf where the
        tensor requires grad and grad is enabled."""
        source = self.tensors[i] if self.detached is None else self.detached[i]
        piece = self.cut(source, start, stop)
        if self.tensors[i].requires_grad and torch.is_grad_enabled():
            piece = piece.detach().requires_grad_()
            self.pending.append((i, start, stop, piece))
            if self.own is not None:
                self.own.add(id(piece))
            return _to(piece, self.device)
        ready = self.prefetcher.take((i, start, stop))
        return ready if ready is not None else _to(piece, self.device)

    def prefetch(self, start: int, stop: int) -> None:
        """Start copying steps ``[start, stop)`` of the host tensors to the device (NOTE [ Inputs
        on the host ]); tensors that require grad are copied when read, so that autograd sees it."""
        if not self.prefetcher.active:
            return
        for i, t in enumerate(self.tensors):
            if not t.requires_grad:
                self.prefetcher.ahead((i, start, stop), self.cut(t, start, stop))

    def take_pending(self) -> list[tuple[int, int, int, torch.Tensor]]:
        """The slices made for the block that just ran with grad (for `collect` after its
        traversal)."""
        pending, self.pending = self.pending, []
        return pending

    def collect(self, pieces: list[tuple[int, int, int, torch.Tensor]]) -> None:
        """After a block's traversal: add its slices' gradients into the buffers."""
        for i, start, stop, piece in pieces:
            if piece.grad is None:
                continue
            if self.buffers[i] is None:
                self.buffers[i] = torch.zeros_like(self.detached[i])
            self.cut(self.buffers[i], start, stop).add_(piece.grad)

    def upstream(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, gradient) for every input and target that received a gradient."""
        return [(t, g) for t, g in zip(self.tensors, self.buffers) if g is not None]

    def release(self) -> None:
        """Drop the detached copies, the buffers, any slice still pending and any copy made ahead."""
        self.detached = None
        self.buffers = [None] * len(self.tensors)
        self.pending = []
        self.prefetcher.ready.clear()


def _index(leaves: list[Any], tensors: list[torch.Tensor]) -> list[int | None]:
    """Append the leaves' tensors to ``tensors``; each leaf's position there (None for None)."""
    index: list[int | None] = []
    for leaf in leaves:
        if leaf is None:
            index.append(None)
        else:
            index.append(len(tensors))
            tensors.append(leaf.data if isinstance(leaf, PackedSequence) else leaf)
    return index


def _cut(slices: _Slices, index: list[int | None], spec: Any, start: int, stop: int) -> Any:
    """The structure ``spec`` rebuilt around the block's slices."""
    return unflatten(spec, [None if k is None else slices.block(k, start, stop) for k in index])


class _StateLayout:
    """What a cell's state looks like in this call: set by the initial state, or by the first
    state the cell returns; every state the cell returns must look the same."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.expected: Any = None

    def given(self, state: Any) -> None:
        """Record the layout of a state handed to the cell, if none is known yet."""
        if state is not None and self.expected is None:
            self.expected = shapes(state)

    def returned(self, state: Any, start: int) -> None:
        """Refuse a state of another nesting or shape than the cell was given (or returned before)."""
        found = shapes(state)
        if self.expected is None:
            self.expected = found
        elif found != self.expected:
            raise InvalidInputError(
                f"vlrnn_torch: {self.name} returned from the block starting at step {start} a state of "
                f"another structure or shape than it was given (shapes {list(found[1])}, expected "
                f"{list(self.expected[1])}); a cell must return its state in the nesting and sizes "
                "it received, one row per sequence"
            )


def _check_device(t: torch.Tensor, what: str) -> None:
    if t.device.type == "meta":
        raise InvalidInputError(
            f"vlrnn_torch: {what} is on the meta device (shape only, no data); pass real tensors"
        )


class DenseView:
    """Inputs with a time axis at ``time_dim``, and targets sliced along the same axis.

    Attributes
    ----------
    seq_len : int
        Steps ``T``.
    batch_size : int
        Sequences ``B`` (1 for one unbatched sequence).
    batch : int or None
        ``B``, or None for one unbatched sequence (the state has no batch axis then).
    batch_sizes : None
        (Packed batches only.)
    time_dim : int
    """

    packed = False

    def __init__(self, adapter: Adapter, inputs: Any, targets: Any, time_dim: int | None) -> None:
        self.adapter = adapter
        in_leaves, self.in_spec = flatten(inputs, what="inputs")
        tgt_leaves, self.tgt_spec = flatten(targets, what="targets") if targets is not None else ([], None)
        present = [t for t in in_leaves if t is not None]
        if not present:
            raise InvalidInputError("vlrnn_torch: inputs hold no tensor; pass the input sequence")
        first = present[0]
        if first.dim() == 0:
            raise InvalidInputError(
                "vlrnn_torch: inputs is a 0-d tensor and has no time axis; pass a sequence "
                "(time-major (T, B, ...) or batch-first (B, T, ...))"
            )
        dim = adapter.resolve_time_dim(time_dim, first.dim())
        if not 0 <= dim < first.dim():
            raise InvalidInputError(
                f"vlrnn_torch: time_dim={dim} is outside the inputs' {first.dim()} dimensions "
                f"(shape {tuple(first.shape)}); pass time_dim= pointing at the time axis"
            )
        self.time_dim = dim
        self.seq_len = first.size(dim)
        if self.seq_len == 0:
            raise InvalidInputError("vlrnn_torch: inputs have zero time steps; pass at least one step")
        adapter.check_inputs(present, len(in_leaves) > 1 or self.in_spec != "leaf", dim)
        self.batch = self._batch(present, "inputs")
        self.batch_size = 1 if self.batch is None else self.batch
        for what, leaves in (("inputs", in_leaves), ("targets", tgt_leaves)):
            for t in leaves:
                if t is None:
                    continue
                _check_device(t, what)
                if t.dim() <= dim or t.size(dim) != self.seq_len:
                    got = t.size(dim) if t.dim() > dim else "none"
                    raise InvalidInputError(
                        f"vlrnn_torch: {what} have {got} steps along time_dim={dim} (shape "
                        f"{tuple(t.shape)}) but the inputs have {self.seq_len} (shape "
                        f"{tuple(first.shape)}); give every input and target the same time axis and length"
                    )
        if tgt_leaves:
            self._batch([t for t in tgt_leaves if t is not None], "targets")
        self.batch_sizes = None
        self.device = _cell_device(adapter)
        tensors: list[torch.Tensor] = []
        self._in_index = _index(in_leaves, tensors)
        self._tgt_index = _index(tgt_leaves, tensors)
        self.slices = _Slices(tensors, lambda t, a, b: t.narrow(dim, a, b - a), self.device)
        self.layout = _StateLayout(adapter.name)

    def _batch(self, leaves: list[torch.Tensor], what: str) -> int | None:
        """The batch size the leaves agree on (None: unbatched), or an error."""
        sizes = set()
        for t in leaves:
            axis = self.adapter.batch_dim(self.time_dim, t.dim())
            if axis is not None and t.dim() > axis:
                sizes.add(t.size(axis))
        if len(sizes) > 1:
            raise InvalidInputError(
                f"vlrnn_torch: the {what} disagree on the batch size ({', '.join(map(str, sorted(sizes)))} "
                f"along the axis next to time_dim={self.time_dim}); every sequence needs the same batch"
            )
        if what == "targets" and sizes and self.batch is not None and sizes != {self.batch}:
            raise InvalidInputError(
                f"vlrnn_torch: the targets have batch {sizes.pop()} but the inputs have {self.batch}"
            )
        return sizes.pop() if sizes else None

    def check_initial_state(self, state: Any) -> None:
        """Refuse an initial state that does not hold the inputs' batch: along ``state_batch_dim``
        where the module declares it, on some axis of every tensor of 2 or more dimensions
        otherwise (a state given for another batch shows a time axis taken for the batch)."""
        if state is None or self.batch is None or self.adapter.kind == "rnn":
            return
        declared = self.adapter.state_batch_declared
        dim = self.adapter.state_batch_dim
        for t in flatten(state)[0]:
            if t is None:
                continue
            if declared:
                ok = t.dim() > dim and t.size(dim) == self.batch
            else:
                ok = t.dim() < 2 or self.batch in t.shape
            if not ok:
                where = f"along its state_batch_dim={dim}" if declared else "on any axis"
                raise InvalidInputError(
                    f"vlrnn_torch: the initial state has a tensor of shape {tuple(t.shape)} without the "
                    f"inputs' batch of {self.batch} {where} (the batch axis is next to time_dim="
                    f"{self.time_dim}); check the time axis of the inputs, and give one state row per "
                    "sequence"
                )

    def prepare_state(self, state: Any) -> Any:
        """The caller's initial state as the blocks use it (unchanged for dense inputs)."""
        return state

    def finalize_state(self, state: Any) -> Any:
        """The final state as the caller gets it (unchanged for dense inputs)."""
        return state

    def run(self, start: int, stop: int, state: Any, *, bare: bool = False) -> tuple[Any, Any]:
        """Run the cell over steps ``[start, stop)`` from ``state``: ``(outputs, state)``; with
        ``bare``, the module behind its wrappers (no DDP synchronisation, no compilation)."""
        x = _cut(self.slices, self._in_index, self.in_spec, start, stop)
        self.layout.given(state)
        out, state = self.adapter.run(x, state, self.time_dim, bare=bare)
        self.layout.returned(state, start)
        return out, state

    def block_targets(self, start: int, stop: int) -> Any:
        """The targets of steps ``[start, stop)``, as ``loss_fn`` receives them (None if none)."""
        if self.tgt_spec is None:
            return None
        return _cut(self.slices, self._tgt_index, self.tgt_spec, start, stop)

    def check_outputs(self, outputs: Any, *, needed: bool) -> None:
        """Refuse outputs a dense call cannot hand to ``loss_fn``."""
        leaves, _ = flatten(outputs, packed_leaves=True, what="the cell's outputs")
        if any(isinstance(o, PackedSequence) for o in leaves):
            raise InvalidTypeError(
                f"vlrnn_torch: {self.adapter.name} returned a PackedSequence for dense inputs; return "
                "dense outputs, or pass the inputs as a PackedSequence"
            )
        if needed and all(o is None for o in leaves):
            raise InvalidInputError(
                f"vlrnn_torch: {self.adapter.name} returned no outputs (None) but loss_fn needs them; "
                "return the block's outputs, or use final_loss_fn only"
            )


class PackedView:
    """`PackedSequence` inputs (any nesting of them, with equal lengths), worked on in sorted order
    (longest sequence first).

    The state at a block boundary holds every sequence of the batch in sorted order. A block
    runs only the sequences still active at its first step; the others pass through unchanged.
    """

    packed = True

    def __init__(self, adapter: Adapter, inputs: Any, targets: Any) -> None:
        self.adapter = adapter
        in_leaves, self.in_spec = flatten(inputs, packed_leaves=True, what="inputs")
        tgt_leaves, self.tgt_spec = (
            flatten(targets, packed_leaves=True, what="targets") if targets is not None else ([], None)
        )
        first = next(p for p in in_leaves if p is not None)
        for what, leaves in (("inputs", in_leaves), ("targets", tgt_leaves)):
            for p in leaves:
                if p is None:
                    continue
                if not isinstance(p, PackedSequence):
                    raise InvalidTypeError(
                        f"vlrnn_torch: the inputs are packed but the {what} hold a "
                        f"{type(p).__name__}; pack the {what} the same way (pack_padded_sequence / "
                        "pack_sequence with the same lengths and enforce_sorted) so that each "
                        "block's rows line up"
                    )
                _check_device(p.data, what)
                if not _same_packing(p, first):
                    raise InvalidInputError(
                        f"vlrnn_torch: the packed {what} do not line up with the packed inputs "
                        "(different lengths or order); pack every sequence from the same lengths"
                    )
        if first.batch_sizes.numel() == 0:
            raise InvalidInputError("vlrnn_torch: the packed inputs have no steps (empty batch_sizes)")
        adapter.check_inputs([first.data], len(in_leaves) > 1, 0)
        sizes = first.batch_sizes.tolist()
        self.sizes = sizes
        self.seq_len = len(sizes)
        self.batch_size = sizes[0]
        self.batch = sizes[0]
        self.batch_sizes = tuple(sizes)
        offsets = [0]
        for b in sizes:
            offsets.append(offsets[-1] + b)
        self.offsets = offsets
        self.time_dim = 0
        self.dim = adapter.state_batch_dim
        self.device = _cell_device(adapter)
        self.sorted_indices = first.sorted_indices
        self.unsorted_indices = first.unsorted_indices
        tensors: list[torch.Tensor] = []
        self._in_index = _index(in_leaves, tensors)
        self._tgt_index = _index(tgt_leaves, tensors)
        self.slices = _Slices(tensors, lambda t, a, b: t[offsets[a] : offsets[b]], self.device)
        self.layout = _StateLayout(adapter.name)

    def prepare_state(self, state: Any) -> Any:
        """The caller's initial state (caller's batch order) in sorted order."""
        return self._reorder(state, self.sorted_indices)

    def finalize_state(self, state: Any) -> Any:
        """A state in sorted order, back in the caller's batch order."""
        return self._reorder(state, self.unsorted_indices)

    def _reorder(self, state: Any, index: torch.Tensor | None) -> Any:
        if state is None or index is None:
            return state
        return tree_map(lambda t: t.index_select(self.dim, index.to(t.device)), state)

    def run(self, start: int, stop: int, state: Any, *, bare: bool = False) -> tuple[Any, Any]:
        """Run the cell over steps ``[start, stop)`` from ``state`` (sorted order): ``(out_data,
        state)``; with ``bare``, the module behind its wrappers."""
        data = _cut(self.slices, self._in_index, self.in_spec, start, stop)
        batch_sizes = torch.tensor(self.sizes[start:stop], dtype=torch.int64)
        if state is not None:
            self._check_batch_axis(state, "holds")
        self.layout.given(state)
        out, state = run_on_leading_rows(
            lambda active: self.adapter.run_packed(data, batch_sizes, active, bare=bare), state, self.dim,
            self.sizes[start],
        )
        self.layout.returned(state, start)
        self._check_batch_axis(state, "the cell returned holds")
        return out, state

    def check_initial_state(self, state: Any) -> None:
        """Refuse an initial state without one row per sequence along ``state_batch_dim``."""
        self._check_batch_axis(state, "the call was given holds")

    def _check_batch_axis(self, state: Any, how: str) -> None:
        for t in flatten(state)[0]:
            if t is not None and (t.dim() <= self.dim or t.size(self.dim) != self.batch):
                raise InvalidInputError(
                    f"vlrnn_torch: the state {how} a tensor of shape {tuple(t.shape)} whose axis "
                    f"{self.dim} (state_batch_dim) does not hold the packed batch's {self.batch} "
                    "sequences; declare the state's batch axis (SequenceModule(module, "
                    "state_batch_dim=...) or a state_batch_dim attribute; 1 for an LSTM's (h, c))"
                )

    def block_targets(self, start: int, stop: int) -> Any:
        """The targets' rows of steps ``[start, stop)``, as ``loss_fn`` receives them."""
        if self.tgt_spec is None:
            return None
        return _cut(self.slices, self._tgt_index, self.tgt_spec, start, stop)

    def check_outputs(self, outputs: Any, *, needed: bool) -> None:
        """Refuse outputs that ``loss_fn`` cannot take."""
        leaves, _ = flatten(outputs, packed_leaves=True, what="the cell's outputs")
        if needed and all(o is None for o in leaves):
            raise InvalidInputError(
                f"vlrnn_torch: {self.adapter.name} returned no outputs (None) but loss_fn needs them; "
                "return the block's outputs, or use final_loss_fn only"
            )


def _same_packing(a: PackedSequence, b: PackedSequence) -> bool:
    if a is b:
        return True
    if not torch.equal(a.batch_sizes, b.batch_sizes):
        return False
    if a.sorted_indices is None or b.sorted_indices is None:
        return a.sorted_indices is None and b.sorted_indices is None
    return torch.equal(a.sorted_indices.cpu(), b.sorted_indices.cpu())


def make_view(adapter: Adapter, inputs: Any, targets: Any, time_dim: int | None) -> DenseView | PackedView:
    """Check ``inputs`` and ``targets`` against each other and the cell, and return their view.

    Parameters
    ----------
    adapter : Adapter
    inputs : structure
        A tensor, a PackedSequence, or any nesting of either kind (not mixed).
    targets : structure or None
        Laid out like the inputs.
    time_dim : int or None
        The time axis given by the call or the plan (NOTE [ The time axis ] in `vlrnn_torch.cells`).

    Returns
    -------
    DenseView or PackedView

    Raises
    ------
    InvalidInputError, InvalidTypeError, TimeAxisError
        Before any work, for inputs the call cannot run.
    """
    in_leaves = [x for x in flatten(inputs, packed_leaves=True, what="inputs")[0] if x is not None]
    tgt_leaves = [] if targets is None else [
        x for x in flatten(targets, packed_leaves=True, what="targets")[0] if x is not None
    ]
    if not in_leaves:
        raise InvalidInputError("vlrnn_torch: inputs hold no tensor; pass the input sequence")
    packed = [isinstance(x, PackedSequence) for x in in_leaves]
    if any(packed):
        if not all(packed):
            raise InvalidTypeError(
                "vlrnn_torch: the inputs mix PackedSequences and dense tensors; pack all of them or none"
            )
        if time_dim is not None:
            raise InvalidInputError("vlrnn_torch: time_dim has no meaning for a PackedSequence; leave it out")
        return PackedView(adapter, inputs, targets)
    if any(isinstance(t, PackedSequence) for t in tgt_leaves):
        raise InvalidTypeError(
            "vlrnn_torch: targets is a PackedSequence but inputs is dense; pack the inputs "
            "the same way, or pass dense targets"
        )
    for what, leaves in (("inputs", in_leaves), ("targets", tgt_leaves)):
        for t in leaves:
            if not isinstance(t, torch.Tensor):
                raise InvalidTypeError(
                    f"vlrnn_torch: {what} must be tensors or PackedSequences (or a nesting of them), "
                    f"got {type(t).__name__}"
                )
    return DenseView(adapter, inputs, targets, time_dim)
