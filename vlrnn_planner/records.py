"""Plain records as JSON: checked fields, and the document envelope.

Every record of the library (`vlrnn_planner.profile.CellProfile`,
`vlrnn_planner.schedule.Prediction`, `vlrnn_planner.schedule.Schedule`,
`vlrnn_planner.plan.Plan`) is written by a ``to_dict`` method that lists its fields one by one
(tuples as JSON lists) and read back by a ``from_dict`` that checks each field's type and range
with the functions here, naming the field in the error (``schedule.batch_size must be at least
1, got -1``), as networkx's ``node_link_data`` and ``node_link_graph`` pair up. A field missing
from a file takes its default, so files written before a field was added still load; a field
this version does not know is rejected.

A file is a document::

    {"format": "vlrnn-planner/schedule", "version": 1, "schedule": {...}}
    {"format": "vlrnn-planner/plan", "version": 1, "plan": {...}, "schedule": {...}}

(the plan's schedule is optional).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import InvalidInputError

__all__ = [
    "FORMAT_PLAN",
    "FORMAT_SCHEDULE",
    "FORMAT_VERSION",
    "read_bool",
    "read_fields",
    "read_int",
    "read_int_tuple",
    "read_number",
    "read_optional",
    "read_str",
    "positive_int",
    "write_document",
    "read_document",
]

FORMAT_SCHEDULE = "vlrnn-planner/schedule"
FORMAT_PLAN = "vlrnn-planner/plan"
FORMAT_VERSION = 1


def _reject(where: str, what: str, value: Any, hint: str = "") -> InvalidInputError:
    return InvalidInputError(f"vlrnn_planner: {where} must be {what}, got {value!r}" + (f"; {hint}" if hint else ""))


def positive_int(name: str, value: Any, *, hint: str) -> int:
    """``value`` if it is an int of at least 1.

    Parameters
    ----------
    name : str
        The argument or field, for the message.
    value : Any
        What was given.
    hint : str
        What to do instead, for the message.

    Returns
    -------
    int

    Raises
    ------
    InvalidInputError
        For anything else (a bool, a float, a str, zero, a negative number).

    Examples
    --------
    >>> positive_int("seq_len", 0, hint="pass the number of time steps")
    Traceback (most recent call last):
    ...
    vlrnn_planner.errors.InvalidInputError: vlrnn_planner: seq_len must be at least 1, got 0; pass the number of time steps
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"vlrnn_planner: {name} must be an int, got {value!r}; {hint}")
    if value < 1:
        raise InvalidInputError(f"vlrnn_planner: {name} must be at least 1, got {value}; {hint}")
    return value


def read_int(value: Any, where: str, *, minimum: int | None = 0, hint: str = "") -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``.

    Parameters
    ----------
    value : Any
        The field's value.
    where : str
        The field, for the message (``"schedule.batch_size"``).
    minimum : int or None, default 0
        The least value allowed; None for any.
    hint : str, optional
        What to do instead, for the message.

    Returns
    -------
    int

    Raises
    ------
    InvalidInputError
        Naming ``where``.

    Examples
    --------
    >>> read_int(-1, "schedule.batch_size", minimum=1)
    Traceback (most recent call last):
    ...
    vlrnn_planner.errors.InvalidInputError: vlrnn_planner: schedule.batch_size must be an int >= 1, got -1
    """
    what = "an int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise _reject(where, what, value, hint)
    return value


def read_number(value: Any, where: str, *, minimum: float = 0.0) -> float:
    """``value`` as a float if it is a finite int or float of at least ``minimum``.

    Parameters
    ----------
    value : Any
        The field's value.
    where : str
        The field, for the message.
    minimum : float, default 0.0
        The least value allowed.

    Returns
    -------
    float

    Raises
    ------
    InvalidInputError
        Naming ``where``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise _reject(where, f"a finite number >= {minimum:g}", value)
    return float(value)


def read_str(value: Any, where: str) -> str:
    """``value`` if it is a str.

    Parameters
    ----------
    value : Any
        The field's value.
    where : str
        The field, for the message.

    Returns
    -------
    str

    Raises
    ------
    InvalidInputError
        Naming ``where``.
    """
    if not isinstance(value, str):
        raise _reject(where, "a string", value)
    return value


def read_bool(value: Any, where: str) -> bool:
    """``value`` if it is a bool (``true`` or ``false`` in JSON).

    Parameters
    ----------
    value : Any
        The field's value.
    where : str
        The field, for the message.

    Returns
    -------
    bool

    Raises
    ------
    InvalidInputError
        Naming ``where``.
    """
    if not isinstance(value, bool):
        raise _reject(where, "true or false", value)
    return value


def read_int_tuple(value: Any, where: str, *, minimum: int = 0) -> tuple[int, ...]:
    """``value`` as a tuple if it is a list, tuple or range of ints of at least ``minimum``.

    Parameters
    ----------
    value : Any
        The field's value.
    where : str
        The field, for the message.
    minimum : int, default 0
        The least value allowed for each item.

    Returns
    -------
    tuple of int

    Raises
    ------
    InvalidInputError
        Naming ``where`` and, for a bad item, its index.
    """
    if not isinstance(value, (list, tuple, range)):
        raise _reject(where, f"a list of ints >= {minimum}", value)
    return tuple(read_int(v, f"{where}[{i}]", minimum=minimum) for i, v in enumerate(value))


def read_optional(value: Any, where: str, read: Any, **kwargs: Any) -> Any:
    """None, or ``read(value, where, **kwargs)``.

    Parameters
    ----------
    value : Any
        The field's value.
    where : str
        The field, for the message.
    read : callable
        One of the readers of this module.
    **kwargs
        Passed to ``read``.

    Returns
    -------
    Any
        None or what ``read`` returns.

    Raises
    ------
    InvalidInputError
        As ``read``.
    """
    return None if value is None else read(value, where, **kwargs)


def read_fields(
    data: Any,
    where: str,
    readers: Mapping[str, Callable[[Any, str], Any]],
    *,
    required: Iterable[str] = (),
) -> dict[str, Any]:
    """The fields of a record read from JSON, each through its reader.

    Parameters
    ----------
    data : Any
        The record's object, read from JSON.
    where : str
        The record, for messages (``"schedule"``, ``"plan.profile"``); a field is named
        ``f"{where}.{name}"``.
    readers : Mapping
        Field name to its reader, ``reader(value, where) -> value`` (the readers of this module,
        or a record's ``from_dict``).
    required : iterable of str, optional
        Fields without a default.

    Returns
    -------
    dict
        Field name to the value read, for the fields present in ``data``.

    Raises
    ------
    InvalidInputError
        For something that is not an object, an unknown field, a missing required one, or what
        a reader rejects.
    """
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"vlrnn_planner: {where} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(readers))
    if unknown:
        raise InvalidInputError(
            f"vlrnn_planner: {where} has fields this version does not know: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(readers))}); was it written by a newer vlrnn-planner?"
        )
    missing = [name for name in required if name not in data]
    if missing:
        raise InvalidInputError(f"vlrnn_planner: {where} lacks the required field(s) {', '.join(missing)}")
    return {name: readers[name](value, f"{where}.{name}") for name, value in data.items()}


def write_document(kind: str, records: Mapping[str, Any], *, indent: int | None = None) -> str:
    """A JSON document of ``kind`` holding ``records`` (each a dict of primitives, or None).

    Parameters
    ----------
    kind : str
        `FORMAT_SCHEDULE` or `FORMAT_PLAN`.
    records : Mapping
        Key (``"plan"``, ``"schedule"``) to the record's ``to_dict()``; None values are left out.
    indent : int, optional
        Indentation, as for `json.dumps`; compact when None.

    Returns
    -------
    str
    """
    doc = {"format": kind, "version": FORMAT_VERSION}
    doc.update((key, value) for key, value in records.items() if value is not None)
    return json.dumps(doc, indent=indent)


def read_document(text: str | bytes, *, expected: str | None = None) -> dict[str, Any]:
    """The JSON object of a vlrnn-planner document, its format and version checked.

    Parameters
    ----------
    text : str or bytes
        The document.
    expected : str, optional
        The format it must have (`FORMAT_SCHEDULE` or `FORMAT_PLAN`); either when None.

    Returns
    -------
    dict
        With ``"format"`` one of the two formats.

    Raises
    ------
    InvalidInputError
        For text that is not JSON, not a document, of another format or another version.
    """
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"vlrnn_planner: not a vlrnn-planner JSON document: invalid JSON ({e})") from None
    except TypeError:
        raise InvalidInputError(
            f"vlrnn_planner: from_json takes the JSON text (str), got {type(text).__name__}"
        ) from None
    if not isinstance(doc, dict) or "format" not in doc:
        raise InvalidInputError(
            f"vlrnn_planner: not a vlrnn-planner JSON document: expected an object with "
            f'"format": "{FORMAT_SCHEDULE}" or "{FORMAT_PLAN}"'
        )
    kind = doc["format"]
    if kind in (FORMAT_SCHEDULE, FORMAT_PLAN) and doc.get("version") != FORMAT_VERSION:
        raise InvalidInputError(
            f"vlrnn_planner: {kind} version {doc.get('version')!r} is not supported; this "
            f"vlrnn-planner reads version {FORMAT_VERSION} (upgrade it to read newer files)"
        )
    if expected is not None and kind != expected:
        other = {FORMAT_PLAN: "; read it with Plan.from_json", FORMAT_SCHEDULE: "; read it with Schedule.from_json"}
        raise InvalidInputError(
            f'vlrnn_planner: expected a document with "format": "{expected}", got {kind!r}' + other.get(kind, "")
        )
    if kind not in (FORMAT_SCHEDULE, FORMAT_PLAN):
        raise InvalidInputError(
            f'vlrnn_planner: expected a document with "format": "{FORMAT_PLAN}" or "{FORMAT_SCHEDULE}", got {kind!r}'
        )
    return doc
