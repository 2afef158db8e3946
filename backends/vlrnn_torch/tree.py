"""Nested states: flatten any nesting of tuples, lists and dicts of tensors, and rebuild it.

A state is a tensor, None, or a tuple (named tuples included), list or dict of states. Leaves
are tensors or None. `flatten` returns the leaves in a fixed order and a spec; `unflatten` puts
(possibly new) leaves back in the same nesting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlrnn_planner.errors import InvalidTypeError

__all__ = ["flatten", "unflatten", "tree_map", "check_state", "run_on_leading_rows"]

_LEAF = "leaf"


def flatten(obj: Any) -> tuple[list[Any], Any]:
    """The leaves of ``obj`` in depth-first order, and a spec for `unflatten`."""
    leaves: list[Any] = []
    return leaves, _flatten(obj, leaves)


def _flatten(obj: Any, leaves: list[Any]) -> Any:
    if obj is None or isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return _LEAF
    if isinstance(obj, dict):
        keys = tuple(obj.keys())
        return (dict, type(obj), keys, tuple(_flatten(obj[k], leaves) for k in keys))
    if isinstance(obj, (tuple, list)):
        return (list if isinstance(obj, list) else tuple, type(obj), None, tuple(_flatten(v, leaves) for v in obj))
    raise InvalidTypeError(
        f"vlrnn_torch: a state must be a tensor, None, or a tuple, list or dict of those; "
        f"found {type(obj).__name__}"
    )


def unflatten(spec: Any, leaves: list[Any]) -> Any:
    """Rebuild the nesting described by ``spec`` around ``leaves``."""
    it = iter(leaves)
    out = _unflatten(spec, it)
    return out


def _unflatten(spec: Any, it) -> Any:
    if spec == _LEAF:
        return next(it)
    kind, cls, keys, children = spec
    values = [_unflatten(c, it) for c in children]
    if kind is dict:
        return cls(zip(keys, values)) if cls is not dict else dict(zip(keys, values))
    if kind is list:
        return cls(values) if cls is not list else values
    if cls is tuple:
        return tuple(values)
    if hasattr(cls, "_fields"):  # named tuple
        return cls(*values)
    return cls(values)


def tree_map(fn: Callable[[Any], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of ``obj`` (None leaves stay None)."""
    leaves, spec = flatten(obj)
    return unflatten(spec, [None if x is None else fn(x) for x in leaves])


def check_state(obj: Any, *, what: str = "state") -> None:
    """Raise `InvalidTypeError` naming where ``obj`` holds something other than tensors."""
    try:
        flatten(obj)
    except InvalidTypeError as exc:
        raise InvalidTypeError(f"vlrnn_torch: {what} is not a valid state: {exc}") from None


def run_on_leading_rows(fn: Callable[[Any], tuple[Any, Any]], state: Any, dim: int, rows: int) -> tuple[Any, Any]:
    """``fn`` on the first ``rows`` sequences of ``state`` (along ``dim``), the others passed through.

    For packed batches sorted by decreasing length: ``fn(active_state) -> (outputs, new_state)``
    runs the sequences still active; the finished ones keep their state, concatenated after the
    new rows, so gradients reach both.
    """
    leaves, spec = flatten(state)
    full = next((t.size(dim) for t in leaves if t is not None), rows)
    if rows >= full:
        return fn(state)
    out, new = fn(unflatten(spec, [None if t is None else t.narrow(dim, 0, rows) for t in leaves]))
    new_leaves, new_spec = flatten(new)
    merged = [
        n if n is None else torch.cat([n, old.narrow(dim, rows, full - rows)], dim)
        for n, old in zip(new_leaves, leaves)
    ]
    return out, unflatten(new_spec, merged)
