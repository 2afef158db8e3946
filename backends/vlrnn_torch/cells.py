"""Cell adapters: one way to run any supported module over a block of steps, and the rule that
says which axis of its inputs is time.

Every adapter offers ``run(x_block, state) -> (outputs, state)`` over a dense block (time axis at
``time_dim``) and ``run_packed(data, batch_sizes, state) -> (out_data, state)`` over a block of a
packed batch (rows sorted by decreasing length, ``state`` holding exactly ``batch_sizes[0]``
sequences along ``state_batch_dim``). ``x_block`` and ``data`` are structures (a tensor, or any
nesting of mappings and sequences of tensors) when the call has several input sequences.

Kinds of cell:
- ``"rnn"``: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` (any depth, ``batch_first`` either way);
- ``"step"``: ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell`` (their output is ``h``) and custom
  modules ``forward(x_t, state) -> (output_t, state)`` wrapped as `StepCell`, run step by step;
- ``"sequence"``: any other module ``forward(x_block, state) -> (outputs, state)``, wrapped as
  `SequenceModule` or not.

NOTE [ The time axis ]
----------------------
The time axis is declared, never guessed (a wrong guess silently cuts the batch into blocks):

- ``nn.RNN``/``nn.LSTM``/``nn.GRU`` by ``batch_first`` (time at 1 if True, else 0); a 2-D input is
  one unbatched sequence ``(T, features)``, as for the module itself;
- step cells are time-major (time at 0) unless the call says otherwise;
- `SequenceModule` and `StepCell` by their ``time_dim``;
- any other module by a ``batch_first`` (bool) or ``time_dim`` (int) attribute of its own.

A ``time_dim`` given to the call (or kept by the plan from ``auto_plan``) must agree with what the
module declares; for an undeclared module it is the declaration, and without it the call is
refused before any work. The batch axis is the other one of the first two (1 if time is at 0,
else 0); a 1-D input is one sequence (token ids of one sequence), as is a 2-D input into a built-in
module. Wrappers (``DistributedDataParallel``, ``DataParallel``, ``torch.compile``'s module) are
looked through to find what the module is; the wrapper is what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from vlrnn_planner.errors import InvalidInputError, InvalidTypeError, TimeAxisError

from .tree import flatten, run_on_leading_rows, tree_map, unflatten

__all__ = ["StepCell", "SequenceModule", "Adapter", "adapt", "unwrap"]


class StepCell(nn.Module):
    """Marks a module as a per-step cell: ``forward(x_t, state) -> (output_t, state)``.

    Parameters
    ----------
    module : nn.Module
        The per-step cell. Its parameters are this wrapper's parameters.
    time_dim : int, optional
        The time axis of the inputs handed to `vlrnn_planner.backward`; outputs are stacked
        along the same axis. Time-major (0) unless given here or by the call.
    state_batch_dim : int, optional
        The batch axis of the state's tensors (checked against the inputs' batch, and used for
        packed batches); 0 for packed batches unless given.

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

    def __init__(self, module: nn.Module, *, time_dim: int | None = None, state_batch_dim: int | None = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise InvalidTypeError(f"vlrnn_torch: StepCell wraps a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.time_dim = _check_axis("time_dim", time_dim)
        self.state_batch_dim = _check_axis("state_batch_dim", state_batch_dim)

    def forward(self, x_t: Any, state: Any) -> tuple[Any, Any]:
        """One step: ``module(x_t, state)``.

        Parameters
        ----------
        x_t : structure of tensors
            The inputs of one step, the time axis removed: ``(B, F)`` for inputs ``(T, B, F)``
            or ``(B, T, F)``; for a packed batch, the rows of the sequences still running.
        state : structure or None
            The state entering the step.

        Returns
        -------
        output_t, state
            Whatever the wrapped module returns: the step's outputs (the adapter stacks them along
            the time axis) and the state leaving the step.
        """
        return self.module(x_t, state)


class SequenceModule(nn.Module):
    """Marks a module as a sequence module ``forward(x_block, state) -> (outputs, state)`` and
    declares its axes (NOTE [ The time axis ]).

    Parameters
    ----------
    module : nn.Module
        The sequence module; its parameters are this wrapper's.
    time_dim : int, optional
        The time axis of its inputs. Taken from the module's own ``batch_first`` attribute when
        not given (and required when it has none, unless every call gives ``time_dim``).
    state_batch_dim : int, optional
        The batch axis of the state's tensors (checked against the inputs' batch, and used for
        packed batches); 0 for packed batches unless given.

    Examples
    --------
    >>> import torch
    >>> m = SequenceModule(torch.nn.LSTM(3, 4, batch_first=True))
    >>> m.time_dim
    1
    """

    def __init__(self, module: nn.Module, *, time_dim: int | None = None, state_batch_dim: int | None = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise InvalidTypeError(f"vlrnn_torch: SequenceModule wraps a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        declared = _declared_time_dim(module)
        time_dim = _check_axis("time_dim", time_dim)
        if time_dim is not None and declared is not None and time_dim != declared[0]:
            raise TimeAxisError(
                f"vlrnn_torch: SequenceModule(time_dim={time_dim}) contradicts {declared[1]}; "
                "drop time_dim= or make the two agree"
            )
        self.time_dim = time_dim if time_dim is not None else (None if declared is None else declared[0])
        self.state_batch_dim = _check_axis("state_batch_dim", state_batch_dim)

    def forward(self, x_block: Any, state: Any) -> tuple[Any, Any]:
        """A block of steps: ``module(x_block, state)``.

        Parameters
        ----------
        x_block : structure of tensors
            The block's inputs, time axis at ``time_dim`` (``(K, B, F)`` or ``(B, K, F)`` for a
            block of ``K`` steps); for a packed batch, a `PackedSequence` of the block's steps
            (sorted order, the sequences still running at its first step).
        state : structure or None
            The state entering the block.

        Returns
        -------
        outputs, state
            Whatever the wrapped module returns: the block's outputs and the state leaving it.
        """
        return self.module(x_block, state)


def _check_axis(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"vlrnn_torch: {name} must be an int >= 0, got {value!r}")
    return value


def _declared_time_dim(module: nn.Module) -> tuple[int, str] | None:
    """The time axis a module declares by its own attributes, and how it declares it."""
    batch_first = getattr(module, "batch_first", None)
    if isinstance(batch_first, bool):
        return (1 if batch_first else 0), f"{type(module).__name__}.batch_first={batch_first}"
    time_dim = getattr(module, "time_dim", None)
    if isinstance(time_dim, int) and not isinstance(time_dim, bool):
        return time_dim, f"{type(module).__name__}.time_dim={time_dim}"
    return None


def unwrap(cell: nn.Module) -> tuple[nn.Module, nn.Module | None, bool]:
    """The module behind the wrappers (``DistributedDataParallel``, ``DataParallel``,
    ``torch.compile``'s module), the ``DistributedDataParallel`` wrapper among them, if any, and
    whether one of them compiles.

    Parameters
    ----------
    cell : nn.Module
        What the caller passed.

    Returns
    -------
    inner : nn.Module
        The module that defines the cell's kind and axes.
    ddp : DistributedDataParallel or None
    compiled : bool
    """
    ddp = None
    compiled = False
    inner = cell
    for _ in range(8):  # wrappers of wrappers
        if isinstance(inner, nn.parallel.DistributedDataParallel):
            ddp = ddp or inner
            inner = inner.module
        elif isinstance(inner, nn.DataParallel):
            inner = inner.module
        elif isinstance(getattr(inner, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            inner = inner._orig_mod
            compiled = True
        else:
            break
    return inner, ddp, compiled


class Adapter:
    """How to run one cell over a block, and what it declares about its axes. Build with `adapt`.

    Attributes
    ----------
    cell : nn.Module
        What runs (the caller's module, wrappers included).
    inner : nn.Module
        The module behind the wrappers.
    ddp : DistributedDataParallel or None
        The DDP wrapper, if the cell has one.
    compiled : bool
        Whether a wrapper compiles the module (``torch.compile``).
    kind : str
        ``"rnn"``, ``"step"`` or ``"sequence"``.
    time_dim : int or None
        The declared time axis (None: the call must give one).
    state_batch_dim : int
        The batch axis of the state's tensors (0 where not declared).
    state_batch_declared : bool
        Whether the module declares ``state_batch_dim``.
    """

    kind: str = "sequence"

    def __init__(self, cell: nn.Module, inner: nn.Module, ddp: nn.Module | None, compiled: bool, *,
                 time_dim: int | None, declared_by: str | None, strict: bool, state_batch_dim: int | None) -> None:
        self.cell = cell
        self.inner = inner
        self.ddp = ddp
        self.compiled = compiled
        self.time_dim = time_dim
        self.declared_by = declared_by
        self.strict = strict
        self.state_batch_declared = state_batch_dim is not None
        self.state_batch_dim = 0 if state_batch_dim is None else state_batch_dim

    @property
    def name(self) -> str:
        """The inner module's class name, for messages."""
        return type(self.inner).__name__

    # -- axes ------------------------------------------------------------------------------------

    def resolve_time_dim(self, given: int | None, ndim: int) -> int:
        """The time axis of inputs with ``ndim`` dimensions (NOTE [ The time axis ]).

        Parameters
        ----------
        given : int or None
            ``time_dim`` from the call or the plan (negative counts from the end).
        ndim : int
            Dimensions of the (first) input tensor.

        Returns
        -------
        int
            The time axis, ``>= 0``: ``given`` where the module allows it, else what the module
            declares. Not checked against ``ndim`` when taken from the declaration.

        Raises
        ------
        TimeAxisError
            Undeclared and not given, or given against what the module declares.
        InvalidInputError
            ``given`` is not an int, or lies outside ``ndim`` dimensions.
        """
        if given is not None:
            if isinstance(given, bool) or not isinstance(given, int):
                raise InvalidInputError(f"vlrnn_torch: time_dim must be an int, got {given!r}")
            if not -ndim <= given < ndim:
                raise InvalidInputError(
                    f"vlrnn_torch: time_dim={given} is outside the inputs' {ndim} dimensions; pass "
                    "time_dim= pointing at the time axis"
                )
            given %= ndim
        if given is None:
            if self.time_dim is None:
                raise TimeAxisError(self._undeclared_message())
            return self.time_dim
        if self.strict and self.time_dim is not None and given != self.time_dim:
            raise TimeAxisError(
                f"vlrnn_torch: time_dim={given} contradicts {self.declared_by}, which puts time at "
                f"axis {self.time_dim}; drop time_dim= or make the two agree"
            )
        return given

    def batch_dim(self, time_dim: int, ndim: int) -> int | None:
        """The batch axis of an input of ``ndim`` dimensions with time at ``time_dim``.

        Parameters
        ----------
        time_dim : int
            The time axis, as `resolve_time_dim` returns it.
        ndim : int
            Dimensions of the tensor (an input or a target).

        Returns
        -------
        int or None
            1 if time is at 0, else 0; None for one unbatched sequence (a 1-D tensor, and for
            built-in modules a 2-D ``(T, F)`` one).
        """
        if ndim < 2:
            return None
        return 1 if time_dim == 0 else 0

    def _undeclared_message(self) -> str:
        hint = ""
        for module in self.inner.modules():
            if isinstance(module, nn.RNNBase):
                hint = (
                    f" (inside it, nn.{type(module).__name__} has batch_first={module.batch_first}: "
                    f"time_dim={1 if module.batch_first else 0} is likely)"
                )
                break
        return (
            f"vlrnn_torch: {self.name} does not declare which axis of its inputs is time, and "
            "vlrnn-planner does not guess it (a wrong guess would cut the batch into blocks). "
            "Declare it: pass time_dim= to backward or auto_plan, give the module a batch_first "
            "attribute, or wrap it as vlrnn_torch.SequenceModule(module, time_dim=...)" + hint
        )

    # -- checks before any work ------------------------------------------------------------------

    def check_inputs(self, leaves: Sequence[torch.Tensor], nested: bool, time_dim: int) -> None:
        """Refuse inputs the module cannot take (built-in modules know their sizes).

        The base adapter (a custom module) accepts anything.

        Parameters
        ----------
        leaves : sequence of tensor
            The input tensors (for a packed batch: the first one's ``.data``, ``(rows, F)``).
        nested : bool
            Whether the inputs are a structure of several tensors rather than one.
        time_dim : int
            The inputs' time axis (0 for a packed batch).

        Raises
        ------
        InvalidTypeError
            A built-in module given a structure of inputs.
        InvalidInputError
            A built-in module given inputs that are not floating-point, have a rank other than 2
            or 3, or a feature size other than its ``input_size``.
        """

    def check_state(self, state: Any, batch: int | None) -> None:
        """Refuse a state of the wrong structure or size (built-in modules know theirs).

        The base adapter (a custom module) accepts anything.

        Parameters
        ----------
        state : structure or None
            The caller's initial state (None: the module's default, never refused).
        batch : int or None
            The inputs' batch ``B``; None for one unbatched sequence (the state has no batch axis
            then).

        Raises
        ------
        InvalidInputError
            A built-in module's state that is not one tensor ``h`` (a pair ``(h, c)`` for an
            LSTM), or whose shapes are not ``(num_layers, B, hidden_size)`` (``nn.RNN``/``LSTM``/
            ``GRU``; ``proj_size`` for an LSTM's ``h``) or ``(B, hidden_size)`` (step cells),
            without ``B`` for one unbatched sequence.
        """

    # -- running ---------------------------------------------------------------------------------

    def module(self, bare: bool) -> nn.Module:
        """What runs: the caller's module, or with ``bare`` the one behind its wrappers.

        Parameters
        ----------
        bare : bool
            Take the module behind the wrappers (no DDP synchronisation, no compilation).

        Returns
        -------
        nn.Module
            `cell` or `inner`.
        """
        return self.inner if bare else self.cell

    def run(self, x_block: Any, state: Any, time_dim: int, *, bare: bool = False) -> tuple[Any, Any]:
        """Run the cell over one dense block.

        Parameters
        ----------
        x_block : structure of tensors
            The block's inputs, time axis at ``time_dim``.
        state : structure or None
            The state entering the block.
        time_dim : int
        bare : bool
            Run the module behind the wrappers (see `module`).

        Returns
        -------
        outputs, state
            The block's outputs (any structure) and the state leaving it.
        """
        return _pair(self.module(bare)(x_block, state), self.inner)

    def run_packed(self, data: Any, batch_sizes: torch.Tensor, state: Any, *, bare: bool = False) -> tuple[Any, Any]:
        """Run the cell over one block of a packed batch.

        Parameters
        ----------
        data : structure of tensors
            The block's rows of each packed input, ``(sum(batch_sizes), ...)``.
        batch_sizes : 1-D int64 tensor on the CPU
            Sequences running at each step of the block, non-increasing.
        state : structure or None
            The active sequences' state (``batch_sizes[0]`` of them, sorted order).
        bare : bool
            Run the module behind the wrappers (see `module`).

        Returns
        -------
        out_data, state
            The outputs' rows (a PackedSequence output is replaced by its ``.data``) and the state.
        """
        packed = tree_map(lambda d: PackedSequence(d, batch_sizes), data)
        out, state = _pair(self.module(bare)(packed, state), self.inner)
        return _packed_data(out), state


def _packed_data(out: Any) -> Any:
    return tree_map(lambda o: o.data if isinstance(o, PackedSequence) else o, out, packed_leaves=True)


# NOTE [ cuDNN sequence length ]
# cuDNN refuses an RNN call over more than 65,535 steps (CUDNN_STATUS_NOT_SUPPORTED; see
# pytorch/pytorch#133751), and a plan may make a block that long (plain BPTT over a long sequence
# is one block). Such a block is run as several calls of at most 65,535 steps each, the state
# carried from one to the next: the same computation (nn.RNN/LSTM/GRU do nothing once per call),
# in both passes alike.
CUDNN_MAX_STEPS = 65535


def _step_limit(x: torch.Tensor) -> int | None:
    """The most steps one call may run over ``x`` (NOTE [ cuDNN sequence length ]); None: any."""
    if x.is_cuda and torch.backends.cudnn.enabled and torch.backends.cudnn.is_available():
        return CUDNN_MAX_STEPS
    return None


class _RNNAdapter(Adapter):
    """nn.RNN / nn.LSTM / nn.GRU: a 2-D input is one unbatched sequence whatever batch_first says;
    blocks longer than cuDNN takes are run in pieces (NOTE [ cuDNN sequence length ])."""

    kind = "rnn"

    def run(self, x_block: Any, state: Any, time_dim: int, *, bare: bool = False) -> tuple[Any, Any]:
        limit = _step_limit(x_block)
        steps = x_block.size(time_dim)
        if limit is None or steps <= limit:
            return super().run(x_block, state, time_dim, bare=bare)
        outs = []
        for start in range(0, steps, limit):
            out, state = super().run(x_block.narrow(time_dim, start, min(limit, steps - start)), state, time_dim, bare=bare)
            outs.append(out)
        return torch.cat(outs, time_dim), state

    def run_packed(self, data: Any, batch_sizes: torch.Tensor, state: Any, *, bare: bool = False) -> tuple[Any, Any]:
        limit = _step_limit(data)
        steps = batch_sizes.numel()
        if limit is None or steps <= limit:
            return super().run_packed(data, batch_sizes, state, bare=bare)
        outs, offset = [], 0
        for start in range(0, steps, limit):
            sizes = batch_sizes[start : start + limit]
            rows = int(sizes.sum())
            out, state = run_on_leading_rows(
                lambda active: super(_RNNAdapter, self).run_packed(data[offset : offset + rows], sizes, active, bare=bare),
                state, self.state_batch_dim, int(sizes[0]),
            )
            outs.append(out)
            offset += rows
        return torch.cat(outs, 0), state

    def resolve_time_dim(self, given: int | None, ndim: int) -> int:
        if ndim == 2:
            if given is not None and given in (1, -1):
                raise TimeAxisError(
                    f"vlrnn_torch: a 2-D input to {self.name} is one sequence (T, features), time "
                    f"at axis 0, but time_dim={given} was given; drop time_dim= or add a batch axis"
                )
            return 0
        return super().resolve_time_dim(given, ndim)

    def batch_dim(self, time_dim: int, ndim: int) -> int | None:
        return None if ndim == 2 else super().batch_dim(time_dim, ndim)

    def check_inputs(self, leaves: Sequence[torch.Tensor], nested: bool, time_dim: int) -> None:
        m = self.inner
        if nested:
            raise InvalidTypeError(
                f"vlrnn_torch: {self.name} takes one input tensor, not a structure of them; pass "
                "several input sequences to a custom module of your own"
            )
        x = leaves[0]
        _check_float_input(self.name, x)
        if x.dim() not in (2, 3):
            raise InvalidInputError(
                f"vlrnn_torch: {self.name} takes inputs with a time axis: (T, B, features), "
                f"(B, T, features) with batch_first=True, or unbatched (T, features); got shape "
                f"{tuple(x.shape)}"
            )
        _check_features(self.name, x, m.input_size)

    def check_state(self, state: Any, batch: int | None) -> None:
        if state is None:
            return
        m = self.inner
        layers = m.num_layers * (2 if m.bidirectional else 1)
        out = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
        lead = (layers,) if batch is None else (layers, batch)
        if isinstance(m, nn.LSTM):
            _check_state_tensors(self.name, state, [lead + (out,), lead + (m.hidden_size,)], "(h_0, c_0)")
        else:
            _check_state_tensors(self.name, state, [lead + (m.hidden_size,)], "h_0")


class _StepAdapter(Adapter):
    """Step cells run step by step; outputs are stacked along the time axis."""

    kind = "step"

    def __init__(self, *args: Any, builtin: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.builtin = builtin
        self.is_lstm = isinstance(self.inner, nn.LSTMCell)

    def batch_dim(self, time_dim: int, ndim: int) -> int | None:
        if self.builtin and ndim == 2:
            return None  # (T, features): one unbatched sequence
        return super().batch_dim(time_dim, ndim)

    def check_inputs(self, leaves: Sequence[torch.Tensor], nested: bool, time_dim: int) -> None:
        if not self.builtin:
            return
        if nested:
            raise InvalidTypeError(f"vlrnn_torch: {self.name} takes one input tensor, not a structure of them")
        x = leaves[0]
        _check_float_input(self.name, x)
        if x.dim() not in (2, 3):
            raise InvalidInputError(
                f"vlrnn_torch: {self.name} runs over inputs with a time axis beside the features: "
                f"(T, B, features) or (T, features) (time at time_dim); got shape {tuple(x.shape)}"
            )
        _check_features(self.name, x, self.inner.input_size)

    def check_state(self, state: Any, batch: int | None) -> None:
        if state is None or not self.builtin:
            return
        size = (self.inner.hidden_size,) if batch is None else (batch, self.inner.hidden_size)
        if self.is_lstm:
            _check_state_tensors(self.name, state, [size, size], "(h, c)")
        else:
            _check_state_tensors(self.name, state, [size], "h")

    def step(self, x_t: Any, state: Any, *, bare: bool = False) -> tuple[Any, Any]:
        """One step of the cell: ``(output_t, state)``."""
        if not self.builtin:
            return _pair(self.module(bare)(x_t, state), self.inner)
        new = self.module(bare)(x_t, state)
        return (new[0] if self.is_lstm else new), new

    def run(self, x_block: Any, state: Any, time_dim: int, *, bare: bool = False) -> tuple[Any, Any]:
        leaves, spec = flatten(x_block)
        steps = [t.unbind(time_dim) for t in leaves]
        outs = []
        for t in range(len(steps[0])):
            out, state = self.step(unflatten(spec, [s[t] for s in steps]), state, bare=bare)
            outs.append(out)
        return _stack(outs, lambda parts: torch.stack(parts, dim=time_dim)), state

    def run_packed(self, data: Any, batch_sizes: torch.Tensor, state: Any, *, bare: bool = False) -> tuple[Any, Any]:
        leaves, spec = flatten(data)
        outs = []
        offset = 0
        for rows in batch_sizes.tolist():
            x_t = unflatten(spec, [d[offset : offset + rows] for d in leaves])
            offset += rows
            out, state = run_on_leading_rows(
                lambda active: self.step(x_t, active, bare=bare), state, self.state_batch_dim, rows
            )
            outs.append(out)
        return _stack(outs, lambda parts: torch.cat(parts, 0)), state


def _stack(outs: list[Any], join) -> Any:
    """Per-step outputs (any structure) joined leaf by leaf."""
    flat = [flatten(o, what="a step's output") for o in outs]
    spec = flat[0][1]
    columns = zip(*(leaves for leaves, _ in flat))
    return unflatten(spec, [None if col[0] is None else join(list(col)) for col in columns])


def _pair(result: Any, cell: nn.Module) -> tuple[Any, Any]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise InvalidTypeError(
            f"vlrnn_torch: {type(cell).__name__}.forward must return (outputs, state), got "
            f"{type(result).__name__}{'' if not isinstance(result, (tuple, list)) else f' of length {len(result)}'}; "
            "wrap a per-step cell as vlrnn_torch.StepCell(module), or adapt the module to return a pair"
        )
    return result[0], result[1]


def _check_float_input(name: str, x: torch.Tensor) -> None:
    if not (x.is_floating_point() or x.is_complex()):
        raise InvalidInputError(
            f"vlrnn_torch: {name} takes floating-point inputs, got {x.dtype}; embed token ids "
            "first (pass nn.Embedding's output as inputs, or put the embedding inside a module of "
            "your own that takes the ids)"
        )


def _check_features(name: str, x: torch.Tensor, expected: int) -> None:
    if x.size(-1) != expected:
        raise InvalidInputError(
            f"vlrnn_torch: {name} expects {expected} input features (input_size), but the inputs "
            f"have {x.size(-1)} (shape {tuple(x.shape)})"
        )


def _check_state_tensors(name: str, state: Any, shapes: list[tuple[int, ...]], form: str) -> None:
    """``state`` must be one tensor of ``shapes[0]`` or a sequence of tensors of ``shapes``."""
    expected = " and ".join(str(s) for s in shapes)
    if len(shapes) == 1:
        if not isinstance(state, torch.Tensor):
            raise InvalidInputError(
                f"vlrnn_torch: {name} takes its state as one tensor {form} of shape {shapes[0]}, "
                f"got a {type(state).__name__}"
            )
        tensors = [state]
    else:
        if isinstance(state, torch.Tensor) or not isinstance(state, Sequence) or len(state) != len(shapes):
            got = "one tensor" if isinstance(state, torch.Tensor) else (
                f"a {type(state).__name__} of {len(state)}" if isinstance(state, Sequence) else type(state).__name__
            )
            raise InvalidInputError(
                f"vlrnn_torch: {name} takes its state as a pair {form} of shapes {expected}, got {got}"
            )
        tensors = list(state)
    for t, shape in zip(tensors, shapes):
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(
                f"vlrnn_torch: {name}'s state {form} must hold tensors of shapes {expected}, got a {type(t).__name__}"
            )
        if tuple(t.shape) != shape:
            raise InvalidInputError(
                f"vlrnn_torch: {name}'s state {form} must have shapes {expected} for these inputs, "
                f"got {' and '.join(str(tuple(x.shape)) for x in tensors)}; check its batch size "
                "and hidden size (the batch is the inputs' batch axis)"
            )


def adapt(cell: nn.Module) -> Adapter:
    """The adapter for ``cell``.

    Parameters
    ----------
    cell : nn.Module
        The caller's module, wrappers included.

    Returns
    -------
    Adapter

    Raises
    ------
    InvalidTypeError
        If ``cell`` is not a torch module.
    InvalidInputError
        If ``cell`` is bidirectional (its output at a step depends on later steps).
    """
    if not isinstance(cell, nn.Module):
        raise InvalidTypeError(f"vlrnn_torch: cell must be a torch.nn.Module, got {type(cell).__name__}")
    inner, ddp, compiled = unwrap(cell)
    if getattr(inner, "bidirectional", False) is True:
        raise InvalidInputError(
            f"vlrnn_torch: {type(inner).__name__} is bidirectional; block BPTT needs a strictly "
            "sequential recurrence (each step depends only on earlier ones). Use bidirectional=False, "
            "or run the backward direction as a second module over the reversed sequence"
        )
    common = dict(cell=cell, inner=inner, ddp=ddp, compiled=compiled)
    if isinstance(inner, StepCell):
        strict = inner.time_dim is not None
        return _StepAdapter(**common, time_dim=0 if inner.time_dim is None else inner.time_dim,
                            declared_by=f"StepCell(time_dim={inner.time_dim})" if strict else None,
                            strict=strict, state_batch_dim=inner.state_batch_dim, builtin=False)
    if isinstance(inner, nn.RNNCellBase):
        return _StepAdapter(**common, time_dim=0, declared_by=None, strict=False, state_batch_dim=0, builtin=True)
    if isinstance(inner, nn.RNNBase):
        return _RNNAdapter(**common, time_dim=1 if inner.batch_first else 0,
                           declared_by=f"{type(inner).__name__}(batch_first={inner.batch_first})",
                           strict=True, state_batch_dim=1)
    if isinstance(inner, SequenceModule):
        return Adapter(**common, time_dim=inner.time_dim,
                       declared_by=f"SequenceModule(time_dim={inner.time_dim})", strict=inner.time_dim is not None,
                       state_batch_dim=inner.state_batch_dim)
    declared = _declared_time_dim(inner)
    state_dim = getattr(inner, "state_batch_dim", None)
    return Adapter(**common, time_dim=None if declared is None else declared[0],
                   declared_by=None if declared is None else declared[1], strict=declared is not None,
                   state_batch_dim=state_dim if isinstance(state_dim, int) and not isinstance(state_dim, bool) else None)
