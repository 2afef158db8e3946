"""Nested structures of tensors: states, and the inputs and targets of a call.

A structure is a leaf or a container of structures. Containers are any `collections.abc.Mapping`
(dict, OrderedDict, a custom mapping) and any `collections.abc.Sequence` other than a string
(tuple, list, named tuples, a custom sequence). Leaves are tensors and None; for inputs and targets
a `PackedSequence` is a leaf too (it is a named tuple, so it must be named as such).
`flatten` returns the leaves in a fixed depth-first order and a spec; `unflatten` rebuilds the
same nesting, with the same container types, around (possibly new) leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

from vlrnn_planner.errors import InvalidInputError, InvalidTypeError

__all__ = ["flatten", "unflatten", "tree_map", "check_state", "layout", "shapes", "run_on_leading_rows"]

_LEAF = "leaf"


def flatten(obj: Any, *, packed_leaves: bool = False, what: str = "a state") -> tuple[list[Any], Any]:
    """The leaves of ``obj`` in depth-first order, and a spec for `unflatten`.

    Parameters
    ----------
    obj : structure
        A tensor, None, or a Mapping or Sequence (not a string) of structures.
    packed_leaves : bool, default False
        Take a `PackedSequence` as a leaf (inputs and targets) rather than refuse it (states).
    what : str
        What ``obj`` is, for error messages.

    Returns
    -------
    leaves : list
        Tensors, None (and PackedSequences where allowed).
    spec
        The nesting, for `unflatten`.

    Raises
    ------
    InvalidTypeError
        For a leaf of another type, a string, or a PackedSequence where a state is expected.

    Examples
    --------
    >>> import torch
    >>> leaves, spec = flatten({"h": torch.zeros(2), "mem": [torch.ones(1), None]})
    >>> len(leaves), unflatten(spec, leaves)["mem"][1] is None
    (3, True)
    """
    leaves: list[Any] = []
    return leaves, _flatten(obj, leaves, packed_leaves, what)


def _flatten(obj: Any, leaves: list[Any], packed: bool, what: str) -> Any:
    if obj is None or isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return _LEAF
    if isinstance(obj, PackedSequence):
        if packed:
            leaves.append(obj)
            return _LEAF
        raise InvalidTypeError(
            f"vlrnn_torch: {what} holds a PackedSequence; a state holds tensors (one row per "
            "sequence), so pass the packed batch as inputs and its initial state as tensors"
        )
    if isinstance(obj, Mapping):
        keys = tuple(obj.keys())
        return (Mapping, type(obj), keys, tuple(_flatten(obj[k], leaves, packed, what) for k in keys))
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):
        return (Sequence, type(obj), None, tuple(_flatten(v, leaves, packed, what) for v in obj))
    raise InvalidTypeError(
        f"vlrnn_torch: {what} must be a tensor, None, or a mapping or sequence of those; "
        f"found a {type(obj).__name__}"
    )


def unflatten(spec: Any, leaves: Sequence[Any]) -> Any:
    """Rebuild the nesting described by ``spec`` around ``leaves``, with the same container types.

    Parameters
    ----------
    spec
        From `flatten`.
    leaves : sequence
        One leaf per leaf of ``spec``, in `flatten`'s order.

    Returns
    -------
    structure
        Each container rebuilt by its own type: a mapping from its ``(key, item)`` pairs, a named
        tuple from its fields, any other sequence from the list of its items.

    Raises
    ------
    InvalidTypeError
        If a container type cannot be rebuilt from its items (a custom class whose constructor
        takes something else).
    """
    return _unflatten(spec, iter(leaves))


def _unflatten(spec: Any, it) -> Any:
    if spec == _LEAF:
        return next(it)
    kind, cls, keys, children = spec
    values = [_unflatten(c, it) for c in children]
    try:
        if kind is Mapping:
            return dict(zip(keys, values)) if cls is dict else cls(zip(keys, values))
        if cls is list or cls is tuple:
            return cls(values)
        if hasattr(cls, "_fields"):  # a named tuple
            return cls(*values)
        return cls(values)
    except Exception as exc:  # the container's own constructor refused its items
        raise InvalidTypeError(
            f"vlrnn_torch: cannot rebuild a {cls.__name__} from its items ({type(exc).__name__}: {exc}); "
            "use a dict, list, tuple or named tuple for the state, or give the class a constructor "
            "that takes its items"
        ) from None


def tree_map(fn: Callable[[Any], Any], obj: Any, *, packed_leaves: bool = False) -> Any:
    """Apply ``fn`` to every non-None leaf of ``obj``; None leaves stay None.

    Parameters
    ----------
    fn : callable
        ``fn(leaf) -> new_leaf``.
    obj : structure
        As for `flatten`.
    packed_leaves : bool, default False
        Hand a `PackedSequence` to ``fn`` as a leaf rather than refuse it.

    Returns
    -------
    structure
        The same nesting and container types around ``fn``'s results.

    Raises
    ------
    InvalidTypeError
        As `flatten` and `unflatten` raise it.

    Examples
    --------
    >>> import torch
    >>> tree_map(lambda t: t * 2, {"h": torch.ones(2), "c": None})["h"].tolist()
    [2.0, 2.0]
    """
    leaves, spec = flatten(obj, packed_leaves=packed_leaves)
    return unflatten(spec, [None if x is None else fn(x) for x in leaves])


def check_state(obj: Any, *, what: str = "the state") -> None:
    """Raise `InvalidTypeError` where ``obj`` is not a state, or cannot be rebuilt.

    Parameters
    ----------
    obj : structure
        A tensor, None, or a Mapping or Sequence of those (no `PackedSequence`).
    what : str, default "the state"
        What ``obj`` is, for the error message.

    Raises
    ------
    InvalidTypeError
        For a leaf of another type, a string, a `PackedSequence`, or a container whose
        constructor does not take its items.
    """
    leaves, spec = flatten(obj, what=what)
    unflatten(spec, leaves)


def layout(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """The nesting of a state (mappings with their keys, sequences with their lengths, whatever
    their types: ``nn.LSTM`` takes a list and returns a tuple) and the shape and dtype of each
    leaf: what must not change from one block to the next.

    Parameters
    ----------
    obj : structure
        A state, as for `flatten`.

    Returns
    -------
    nesting
        Comparable with ``==``; container types are left out.
    leaves : tuple
        ``(shape, dtype)`` per leaf, in `flatten`'s order; None for a None leaf.

    Raises
    ------
    InvalidTypeError
        As `flatten` raises it.

    Examples
    --------
    >>> import torch
    >>> layout([torch.zeros(2, 3), None]) == layout((torch.ones(2, 3), None))
    True
    """
    leaves, spec = flatten(obj)
    return _kinds(spec), tuple(None if t is None else (tuple(t.shape), t.dtype) for t in leaves)


def _kinds(spec: Any) -> Any:
    if spec == _LEAF:
        return spec
    kind, _, keys, children = spec
    return (kind.__name__, keys, tuple(_kinds(c) for c in children))


def shapes(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """A state's nesting (as `layout`) and leaf shapes, without dtypes (autocast may change them).

    Parameters
    ----------
    obj : structure
        A state, as for `layout`.

    Returns
    -------
    nesting
        As `layout` gives it.
    shapes : tuple
        The shape of each leaf (a tuple of int), in `flatten`'s order; None for a None leaf.

    Raises
    ------
    InvalidTypeError
        As `flatten` raises it.
    """
    spec, leaves = layout(obj)
    return spec, tuple(None if leaf is None else leaf[0] for leaf in leaves)


def run_on_leading_rows(fn: Callable[[Any], tuple[Any, Any]], state: Any, dim: int, rows: int) -> tuple[Any, Any]:
    """``fn`` on the first ``rows`` sequences of ``state`` (along ``dim``), the others passed through.

    For packed batches sorted by decreasing length: ``fn(active_state) -> (outputs, new_state)``
    runs the sequences still active; the finished ones keep their state, concatenated after the
    new rows, so gradients reach both.

    Parameters
    ----------
    fn : callable
        ``fn(active_state) -> (outputs, new_active_state)``.
    state : structure or None
        Every sequence's state, batch along ``dim``.
    dim : int
        The batch axis of the state's tensors.
    rows : int
        How many leading sequences are active.

    Returns
    -------
    outputs, state
        ``fn``'s outputs, and the state of every sequence.
    """
    leaves, spec = flatten(state)
    full = next((t.size(dim) for t in leaves if t is not None), rows)
    if rows >= full:
        return fn(state)
    out, new = fn(unflatten(spec, [None if t is None else t.narrow(dim, 0, rows) for t in leaves]))
    new_leaves, new_spec = flatten(new)
    if new_spec != spec:
        raise InvalidInputError(
            "vlrnn_torch: the cell returned a state of another structure than it was given; a "
            "cell must return its state in the nesting it received"
        )
    merged = [
        n if n is None else torch.cat([n, old.narrow(dim, rows, full - rows)], dim)
        for n, old in zip(new_leaves, leaves)
    ]
    return out, unflatten(new_spec, merged)
