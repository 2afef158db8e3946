"""Export of a schedule's actions: a networkx graph, and Graphviz DOT.

`Schedule.graph` and `Schedule.to_dot` are the public entry points; they delegate here. (JSON
lives with the records it writes: `Schedule.to_json`, `Plan.to_json`, `vlrnn_planner.records`.)
The schedule is read through its attributes only, so this module sits below
`vlrnn_planner.schedule`; the actions are walked once by the reference simulator
(`vlrnn_planner.simulate.walk_schedule`), which also gives the predicted memory action by action.

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

import math
from typing import Any

from .actions import Action, Advance, ForwardBackward
from .budget import format_bytes
from .simulate import predicted_memory, walk_schedule

__all__ = ["schedule_graph", "schedule_to_dot"]


def _action_attributes(action: Action) -> dict[str, Any]:
    if isinstance(action, Advance):
        return {"kind": "Advance", "start": action.start, "stop": action.stop, "save": tuple(action.save)}
    if isinstance(action, ForwardBackward):
        return {"kind": "ForwardBackward", "block": action.block}
    return {"kind": "Free", "boundary": action.boundary}


def schedule_graph(schedule: Any) -> Any:
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
    acyclic; its graph attributes are the schedule's fields, and its prediction's as
    ``prediction_<field>``.

    Parameters
    ----------
    schedule : Schedule
        The schedule; its actions are walked once, with every invariant checked.

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    ScheduleError
        If the schedule breaks an invariant.

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

    graph = nx.DiGraph(**_graph_attributes(schedule))
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


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _graph_attributes(schedule: Any) -> dict[str, Any]:
    """The schedule's fields as graph attributes, primitives and tuples only: its own fields,
    then its prediction's as ``prediction_<field>``; None values left out."""
    data = schedule.to_dict()
    prediction = data.pop("prediction") or {}
    data.update((f"prediction_{name}", value) for name, value in prediction.items())
    return {name: _tuples(value) for name, value in data.items() if value is not None}


def _dot_id(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


_DOT_STYLE = {
    "Advance": 'shape=box, style=filled, fillcolor="#dbe9f6"',
    "ForwardBackward": 'shape=box, style=filled, fillcolor="#f6dbdb"',
    "Free": 'shape=ellipse, style=dashed',
}


def schedule_to_dot(schedule: Any) -> str:
    """The graph of `schedule_graph` in Graphviz DOT (written directly; no pydot needed).

    Nodes are named ``a<index>``; order edges are solid, reads edges dashed and labelled with
    the boundary whose state is read.

    Parameters
    ----------
    schedule : Schedule
        The schedule.

    Returns
    -------
    str
        The DOT source.

    Raises
    ------
    ScheduleError
        If the schedule breaks an invariant.

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
