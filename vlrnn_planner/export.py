"""Export of plans and schedules: JSON that round-trips, a networkx graph, and Graphviz DOT.

`Schedule.to_json`, `Schedule.from_json`, `Schedule.graph`, `Schedule.to_dot`, `Plan.to_json`
and `Plan.from_json` are the public entry points; they delegate here.

The JSON documents
------------------
A schedule file::

    {"format": "vlrnn-planner/schedule", "version": 1,
     "schedule": {"strategy": "blocks", "seq_len": 1000, "block_length": 50, ...}}

A plan file, optionally with the schedule it chose for one input shape::

    {"format": "vlrnn-planner/plan", "version": 1,
     "plan": {"block_length": null, "budget_bytes": 8000000000, ...,
              "profile": {"__type__": "CellProfile", ...}},
     "schedule": {...}}

The ``"schedule"`` and ``"plan"`` objects hold every public dataclass field of `Schedule` and
`Plan` (fields named with a leading underscore, such as the plan's cache, are left out). Tuples
are written as JSON lists and read back as tuples, guided by the fields' type annotations, so
``from_json(to_json(x)) == x``. A field missing from a file takes its default, so files written
before a field was added still load; a field this version does not know is rejected.

Notes
-----
NOTE [ Graph edges ]: `schedule_graph` returns a `networkx.DiGraph`, which holds at most one edge
per pair of nodes. When an action reads the state that the action just before it produced (an
``Advance`` followed by the ``ForwardBackward`` of the block at its stop), the "order" edge and the
"reads" edge coincide; the edge then has ``kind="reads"``. Every edge carries ``order`` (a bool:
whether it joins consecutive actions), so the order chain is the edges with ``order=True`` and
the reads are the edges with ``kind="reads"``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .actions import Action, Advance, ForwardBackward
from .budget import format_bytes
from .errors import InvalidInputError
from .simulate import predicted_memory, walk_schedule

__all__ = [
    "FORMAT_PLAN",
    "FORMAT_SCHEDULE",
    "FORMAT_VERSION",
    "Document",
    "load_document",
    "plan_from_json",
    "plan_to_json",
    "schedule_from_json",
    "schedule_graph",
    "schedule_to_dot",
    "schedule_to_json",
]

FORMAT_SCHEDULE = "vlrnn-planner/schedule"
FORMAT_PLAN = "vlrnn-planner/plan"
FORMAT_VERSION = 1

# Objects that may sit in a field (a plan's profile): tag written in the JSON -> (module, class).
# Only these are ever imported on load; the file names a tag, never a module.
_OBJECT_TYPES: dict[str, tuple[str, str]] = {
    "CellProfile": ("vlrnn_planner.profile", "CellProfile"),
}
_TYPE_KEY = "__type__"


# ---------------------------------------------------------------------------------------------
# Encoding values
# ---------------------------------------------------------------------------------------------


def _exported_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


def _encode(value: Any, where: str) -> Any:
    """A JSON-ready copy of ``value``: tuples become lists, known objects become tagged dicts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_encode(v, where) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInputError(
                    f"vlrnn_planner: cannot export {where}: dict key {k!r} is not a str"
                )
            out[k] = _encode(v, where)
        return out
    tag = type(value).__name__
    if tag in _OBJECT_TYPES:
        if hasattr(value, "to_dict"):
            data = value.to_dict()
        elif dataclasses.is_dataclass(value):
            data = {f.name: getattr(value, f.name) for f in _exported_fields(type(value))}
        else:  # pragma: no cover - every registered type is one or the other
            raise InvalidInputError(f"vlrnn_planner: cannot export {where} of type {tag}")
        return {_TYPE_KEY: tag, **{k: _encode(v, f"{where}.{k}") for k, v in data.items()}}
    raise InvalidInputError(
        f"vlrnn_planner: cannot export {where}: a {type(value).__name__} is not one of the types "
        f"JSON export knows (None, bool, int, float, str, tuple, list, dict, "
        f"{', '.join(_OBJECT_TYPES)})"
    )


def _encode_dataclass(obj: Any) -> dict[str, Any]:
    name = type(obj).__name__
    return {f.name: _encode(getattr(obj, f.name), f"{name}.{f.name}") for f in _exported_fields(type(obj))}


# ---------------------------------------------------------------------------------------------
# Decoding values, guided by the fields' annotations
# ---------------------------------------------------------------------------------------------


def _field_hints(cls: type) -> dict[str, Any]:
    """The resolved type annotations of ``cls``'s fields; one that cannot be resolved is Any."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation naming something only imported for type checkers
        namespace = vars(sys.modules[cls.__module__])
        hints: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            hint = f.type
            if isinstance(hint, str):
                try:
                    hint = eval(hint, namespace)  # what typing.get_type_hints does, field by field
                except Exception:
                    hint = Any
            hints[f.name] = hint
        return hints


def _decode_generic(value: Any) -> Any:
    """Lists back to tuples (all immutable), tagged dicts back to their objects."""
    if isinstance(value, list):
        return tuple(_decode_generic(v) for v in value)
    if isinstance(value, dict):
        if _TYPE_KEY in value:
            return _decode_object(value)
        return {k: _decode_generic(v) for k, v in value.items()}
    return value


def _decode(value: Any, hint: Any, where: str) -> Any:
    """``value`` read from JSON, shaped back to the annotation ``hint``."""
    if value is None:
        return None
    if isinstance(value, dict) and _TYPE_KEY in value:
        return _decode_object(value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _decode(value, options[0], where)
        return _decode_generic(value)
    if hint is tuple or origin is tuple:
        if not isinstance(value, list):
            raise InvalidInputError(f"vlrnn_planner: {where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and args != ((),):
            if len(args) != len(value):
                raise InvalidInputError(
                    f"vlrnn_planner: {where} must have {len(args)} items, got {value!r}"
                )
            return tuple(_decode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return _decode_generic(value)
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise InvalidInputError(f"vlrnn_planner: {where} must be a list, got {value!r}")
        item = args[0] if args else Any
        return [_decode(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise InvalidInputError(f"vlrnn_planner: {where} must be an object, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _decode(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint in (int, float, str, bool):
        return value
    return _decode_generic(value)


def _decode_fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInputError(f"vlrnn_planner: {where} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in _exported_fields(cls)}
    unknown = sorted(set(data) - names - {_TYPE_KEY})
    if unknown:
        raise InvalidInputError(
            f"vlrnn_planner: {where} has fields this version does not know: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(names))}); was it written by a newer vlrnn-planner?"
        )
    hints = _field_hints(cls)
    return {k: _decode(v, hints.get(k, Any), f"{where}.{k}") for k, v in data.items() if k != _TYPE_KEY}


def _construct(cls: type, kwargs: dict[str, Any], where: str) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise InvalidInputError(f"vlrnn_planner: cannot rebuild {where}: {e}") from None


def _decode_object(data: dict[str, Any]) -> Any:
    tag = data.get(_TYPE_KEY)
    if tag not in _OBJECT_TYPES:
        raise InvalidInputError(
            f"vlrnn_planner: unknown object type {tag!r} in the file; "
            f"expected one of {', '.join(_OBJECT_TYPES)}"
        )
    module_name, class_name = _OBJECT_TYPES[tag]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise InvalidInputError(
            f"vlrnn_planner: the file holds a {tag}, but {module_name}.{class_name} is not "
            f"available in this installation; upgrade vlrnn-planner"
        ) from None
    if dataclasses.is_dataclass(cls):
        fields = _decode_fields(cls, data, tag)
    else:
        fields = {k: _decode_generic(v) for k, v in data.items() if k != _TYPE_KEY}
    if hasattr(cls, "from_dict"):
        return cls.from_dict(fields)
    return _construct(cls, fields, tag)


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


def _parse(text: str | bytes) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(
            f"vlrnn_planner: not a vlrnn-planner JSON document: invalid JSON ({e})"
        ) from None
    except TypeError:
        raise InvalidInputError(
            f"vlrnn_planner: from_json takes the JSON text (str), got {type(text).__name__}"
        ) from None
    if not isinstance(doc, dict) or "format" not in doc:
        raise InvalidInputError(
            f"vlrnn_planner: not a vlrnn-planner JSON document: expected an object with "
            f'"format": "{FORMAT_SCHEDULE}" or "{FORMAT_PLAN}"'
        )
    version = doc.get("version")
    if doc["format"] in (FORMAT_SCHEDULE, FORMAT_PLAN) and version != FORMAT_VERSION:
        raise InvalidInputError(
            f"vlrnn_planner: {doc['format']} version {version!r} is not supported; this "
            f"vlrnn-planner reads version {FORMAT_VERSION} (upgrade it to read newer files)"
        )
    return doc


def _expect(doc: dict[str, Any], expected: str) -> None:
    if doc["format"] != expected:
        raise InvalidInputError(
            f'vlrnn_planner: expected a document with "format": "{expected}", got '
            f"{doc['format']!r}"
            + ("; read it with Plan.from_json" if doc["format"] == FORMAT_PLAN else "")
            + ("; read it with Schedule.from_json" if doc["format"] == FORMAT_SCHEDULE else "")
        )


def _schedule_from_dict(data: Any):
    from .plan import Schedule

    return _construct(Schedule, _decode_fields(Schedule, data, "schedule"), "schedule")


def _check_kind(obj: Any, cls_name: str) -> None:
    if type(obj).__name__ != cls_name:
        raise InvalidInputError(
            f"vlrnn_planner: expected a {cls_name}, got {type(obj).__name__}"
        )


def schedule_to_json(schedule, *, indent: int | None = None) -> str:
    """``schedule`` as a JSON document; `schedule_from_json` gives back an equal `Schedule`.

    Parameters
    ----------
    schedule : Schedule
        The schedule to write.
    indent : int, optional
        Indentation, as for `json.dumps`; compact when None.

    Returns
    -------
    str
        ``{"format": "vlrnn-planner/schedule", "version": 1, "schedule": {...}}``.

    Examples
    --------
    >>> from vlrnn_planner import Schedule, fixed_plan
    >>> s = fixed_plan(block_length=10).schedule(seq_len=95, batch_size=8)
    >>> Schedule.from_json(s.to_json()) == s
    True
    """
    _check_kind(schedule, "Schedule")
    doc = {"format": FORMAT_SCHEDULE, "version": FORMAT_VERSION, "schedule": _encode_dataclass(schedule)}
    return json.dumps(doc, indent=indent)


def schedule_from_json(text: str | bytes):
    """The `Schedule` written by `schedule_to_json`.

    Raises
    ------
    InvalidInputError
        If ``text`` is not JSON, not a schedule document of a version this library reads, or
        holds a field value that `Schedule` rejects.
    """
    return _schedule_document(_parse(text))


def _schedule_document(doc: dict[str, Any]):
    _expect(doc, FORMAT_SCHEDULE)
    if "schedule" not in doc:
        raise InvalidInputError('vlrnn_planner: the schedule document has no "schedule" object')
    return _schedule_from_dict(doc["schedule"])


def plan_to_json(plan, *, schedule=None, indent: int | None = None) -> str:
    """``plan`` (its profile included) as a JSON document; `plan_from_json` reads it back.

    Parameters
    ----------
    plan : Plan
        The plan to write. Its private cache of resolved schedules is not written.
    schedule : Schedule, optional
        A schedule of this plan for one input shape, stored alongside it (as the ``"schedule"``
        key) so that the file can be inspected without re-planning.
    indent : int, optional
        Indentation, as for `json.dumps`; compact when None.

    Examples
    --------
    >>> from vlrnn_planner import Plan, fixed_plan
    >>> p = fixed_plan(block_length=50, checkpoints=4)
    >>> Plan.from_json(p.to_json()) == p
    True
    """
    _check_kind(plan, "Plan")
    doc: dict[str, Any] = {"format": FORMAT_PLAN, "version": FORMAT_VERSION, "plan": _encode_dataclass(plan)}
    if schedule is not None:
        _check_kind(schedule, "Schedule")
        doc["schedule"] = _encode_dataclass(schedule)
    return json.dumps(doc, indent=indent)


@dataclass(frozen=True)
class Document:
    """What a vlrnn-planner JSON file holds: a plan, a schedule, or a plan with its schedule."""

    plan: Any = None
    schedule: Any = None


def load_document(text: str | bytes) -> Document:
    """Read either kind of file: a schedule document, or a plan document (with or without a schedule).

    When a plan document carries a schedule, the plan's cache is primed with it, so that
    ``plan.schedule(seq_len, batch_size)`` for that shape gives it back without re-planning.

    Raises
    ------
    InvalidInputError
        If ``text`` is not one of the two documents.
    """
    doc = _parse(text)
    if doc["format"] == FORMAT_SCHEDULE:
        return Document(schedule=_schedule_document(doc))
    return _plan_document(doc)


def _plan_document(doc: dict[str, Any]) -> Document:
    from .plan import Plan

    _expect(doc, FORMAT_PLAN)
    if "plan" not in doc:
        raise InvalidInputError('vlrnn_planner: the plan document has no "plan" object')
    plan = _construct(Plan, _decode_fields(Plan, doc["plan"], "plan"), "plan")
    schedule = None
    if doc.get("schedule") is not None:
        schedule = _schedule_from_dict(doc["schedule"])
        plan._cache[(schedule.seq_len, schedule.batch_size, None)] = schedule
    return Document(plan=plan, schedule=schedule)


def plan_from_json(text: str | bytes):
    """The `Plan` written by `plan_to_json` (a stored schedule primes its cache).

    Raises
    ------
    InvalidInputError
        If ``text`` is not JSON or not a plan document of a version this library reads.
    """
    return _plan_document(_parse(text)).plan


def _action_attributes(action: Action) -> dict[str, Any]:
    if isinstance(action, Advance):
        return {"kind": "Advance", "start": action.start, "stop": action.stop, "save": tuple(action.save)}
    if isinstance(action, ForwardBackward):
        return {"kind": "ForwardBackward", "block": action.block}
    return {"kind": "Free", "boundary": action.boundary}


def schedule_graph(schedule):
    """The actions of ``schedule`` as a `networkx.DiGraph`.

    Nodes are the action indices ``0 .. len(actions) - 1``, with attributes ``index``, ``kind``
    (``"Advance"``, ``"ForwardBackward"`` or ``"Free"``), ``label`` (the action's repr), the
    action's block indices (``start``, ``stop``, ``save``; ``block``; ``boundary``),
    ``stored_states`` (stored states held after it), and, where the schedule carries a
    prediction (`vlrnn_planner.simulate.predicted_memory`), ``memory_bytes`` and ``peak_bytes``: the predicted memory
    after the action and at its peak while it runs, from the reference simulator.

    Edges: ``kind="order"`` from each action to the next; ``kind="reads"`` with ``boundary=b``
    from the action that stored or produced the state at boundary ``b`` to the action that reads
    it (nothing for the initial state, which no action produces). Every edge also has ``order``:
    whether it joins consecutive actions (see NOTE [ Graph edges ] in this module). The graph is
    acyclic; its graph attributes are the schedule's fields.

    Examples
    --------
    >>> import networkx as nx
    >>> from vlrnn_planner import fixed_plan
    >>> g = fixed_plan(block_length=10).schedule(seq_len=30).graph()
    >>> g.number_of_nodes(), nx.is_directed_acyclic_graph(g)
    (6, True)
    >>> sorted((u, v, d["boundary"]) for u, v, d in g.edges(data=True) if d["kind"] == "reads")
    [(0, 1, 2), (0, 2, 1)]
    """
    import networkx as nx

    _check_kind(schedule, "Schedule")
    graph = nx.DiGraph(**{k: v for k, v in _encode_graph_attrs(schedule).items()})
    memory = predicted_memory(schedule)
    previous: int | None = None
    for step in walk_schedule(schedule, memory=memory):
        i = step.index
        attrs = {"index": i, "label": repr(step.action), **_action_attributes(step.action)}
        attrs["stored_states"] = step.stored_states
        if memory is not None:
            attrs["peak_bytes"] = math.ceil(step.peak_bytes)
            attrs["memory_bytes"] = math.ceil(step.bytes_after)
        graph.add_node(i, **attrs)
        if previous is not None:
            graph.add_edge(previous, i, kind="order", order=True)
        if step.producer is not None:
            graph.add_edge(step.producer, i, kind="reads", boundary=step.reads, order=step.producer == previous)
        previous = i
    return graph


def _encode_graph_attrs(schedule) -> dict[str, Any]:
    """The schedule's fields as graph attributes: primitives and tuples only."""
    return {
        f.name: getattr(schedule, f.name)
        for f in _exported_fields(type(schedule))
        if getattr(schedule, f.name) is not None
    }


def _dot_id(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


_DOT_STYLE = {
    "Advance": 'shape=box, style=filled, fillcolor="#dbe9f6"',
    "ForwardBackward": 'shape=box, style=filled, fillcolor="#f6dbdb"',
    "Free": 'shape=ellipse, style=dashed',
}


def schedule_to_dot(schedule) -> str:
    """The graph of `schedule_graph` in Graphviz DOT (written directly; no pydot needed).

    Nodes are named ``a<index>``; order edges are solid, reads edges dashed and labelled with
    the boundary whose state is read.

    Examples
    --------
    >>> from vlrnn_planner import fixed_plan
    >>> print(fixed_plan(block_length=1).schedule(seq_len=1).to_dot())  # doctest: +ELLIPSIS
    digraph schedule {
      label="Schedule: store_all, T=1, K=1, 1 block";
    ...
      a0 -> a1 [kind="order"];
    }
    """
    graph = schedule_graph(schedule)
    title = str(schedule).splitlines()[0]
    lines = [
        "digraph schedule {",
        f"  label={_dot_id(title)};",
        "  labelloc=t;",
        "  rankdir=TB;",
        '  node [fontname="monospace"];',
    ]
    for node, data in graph.nodes(data=True):
        label = f"{node}: {data['label']}\nstored states: {data['stored_states']}"
        if "memory_bytes" in data:
            label += f"\npeak {format_bytes(data['peak_bytes'])}, after {format_bytes(data['memory_bytes'])}"
        lines.append(f"  a{node} [label={_dot_id(label)}, kind={_dot_id(data['kind'])}, {_DOT_STYLE[data['kind']]}];")
    for u, v, data in graph.edges(data=True):
        if data["kind"] == "reads":
            lines.append(
                f'  a{u} -> a{v} [kind="reads", boundary={data["boundary"]}, '
                f'label="h{data["boundary"]}", style=dashed, color="#1f5fa8"];'
            )
        else:
            lines.append(f'  a{u} -> a{v} [kind="order"];')
    lines.append("}")
    return "\n".join(lines)
