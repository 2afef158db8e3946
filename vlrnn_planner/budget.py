"""Memory budgets: parse byte sizes and shares, and print sizes (and durations) back.

A budget is either a number of bytes or a share of the memory that this process can use on the
device. Accepted forms:

- an ``int`` number of bytes, at least 1: ``8_000_000_000``;
- a string with an SI unit (powers of 1000): ``"512MB"``, ``"8GB"``, ``"1.5 TB"``;
  units ``B``, ``KB``, ``MB``, ``GB``, ``TB``;
- a string with a binary unit (powers of 1024): ``"8GiB"``; units ``KiB``, ``MiB``, ``GiB``,
  ``TiB``;
- a share: a percentage string in (0, 100] such as ``"80%"``, or a ``float`` in (0, 1] such as
  ``0.8``.

Units are case-insensitive (``"8gb"`` is ``"8GB"``, ``"8gib"`` is ``"8GiB"``) and numbers may
have decimals. A share is resolved against what this process can use on the device when the cell
is profiled (`Budget.resolve`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInputError

__all__ = ["Budget", "parse_budget", "format_bytes", "format_seconds", "ACCEPTED_FORMS"]

ACCEPTED_FORMS = (
    'an int number of bytes (8000000000), a size with a unit ("8GB" = 8e9 bytes, "8GiB" = 8*2**30; '
    "units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, any case, decimals allowed), or a share of what "
    'this process can use on the device ("80%", or a float in (0, 1] such as 0.8)'
)

_SI = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BINARY = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_UNITS = {**_SI, **_BINARY}

_NUMBER = r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)"
_SIZE_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[a-z]+)\s*$", re.IGNORECASE)
_SHARE_RE = re.compile(rf"^\s*{_NUMBER}\s*%\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Budget:
    """A parsed memory budget: a number of bytes, or a share of what the process can use.

    Exactly one of ``bytes`` and ``share`` is set.

    Attributes
    ----------
    bytes : int or None
        The budget in bytes.
    share : float or None
        The budget as a share in (0, 1] of the memory this process can use on the device.
    spec : str
        The budget as it was written, for summaries (``"8GB"``, ``"80%"``).

    Examples
    --------
    >>> parse_budget("80%").resolve(available_bytes=10_000_000_000)
    8000000000
    >>> parse_budget("8GB").resolve(available_bytes=None)
    8000000000
    """

    bytes: int | None = None
    share: float | None = None
    spec: str = ""

    @property
    def is_share(self) -> bool:
        """Whether this budget is a share of the device's memory rather than a size."""
        return self.share is not None

    def resolve(self, *, available_bytes: int | None) -> int:
        """The budget in bytes.

        Parameters
        ----------
        available_bytes : int or None
            What this process can use on the device (free memory plus what the process's
            allocator already holds); needed only for a share.

        Returns
        -------
        int
            Bytes, at least 1.

        Raises
        ------
        InvalidInputError
            For a share when ``available_bytes`` is unknown (on CPU, where no device memory is
            reported).
        """
        if self.bytes is not None:
            return self.bytes
        assert self.share is not None
        if available_bytes is None:
            raise InvalidInputError(
                f"vlrnn_planner: the budget {self.spec!r} is a share of the device's memory, but "
                "the profile reports no device memory (NVML unavailable, or a host that does not report its memory); pass a size "
                'instead, such as budget="8GB"'
            )
        resolved = int(self.share * available_bytes)
        if resolved < 1:
            raise InvalidInputError(
                f"vlrnn_planner: the budget {self.spec!r} of {format_bytes(available_bytes)} "
                "available is less than one byte; pass a size such as budget=\"8GB\""
            )
        return resolved

    def __str__(self) -> str:
        if self.share is not None:
            return self.spec or f"{self.share * 100:g}%"
        assert self.bytes is not None
        return self.spec or format_bytes(self.bytes)


# The largest budget: what a signed 64-bit byte count holds (frameworks count bytes in int64).
MAX_BUDGET_BYTES = 2**63 - 1


def _reject(spec: Any, why: str) -> InvalidInputError:
    return InvalidInputError(f"vlrnn_planner: invalid budget {spec!r}: {why}; pass {ACCEPTED_FORMS}")


def parse_budget(spec: Any) -> Budget:
    """Parse a memory budget.

    Parameters
    ----------
    spec : int, float, str or Budget
        See the module's documentation for the accepted forms.

    Returns
    -------
    Budget
        With ``bytes`` set for a size, ``share`` for a share.

    Raises
    ------
    InvalidInputError
        (a ValueError) for anything else: an unknown unit, a size below one byte or above
        ``2**63 - 1`` bytes, zero, a negative number, NaN or infinity, a share above 100 %, a bool,
        a float above 1.

    Examples
    --------
    >>> parse_budget("8GB").bytes
    8000000000
    >>> parse_budget("8GiB").bytes == 8 * 2**30
    True
    >>> parse_budget("1.5gb").bytes
    1500000000
    >>> parse_budget("80%").share
    0.8
    >>> parse_budget(0.5).share
    0.5
    >>> parse_budget(4096).bytes
    4096
    >>> parse_budget("8 GB/s")
    Traceback (most recent call last):
    ...
    vlrnn_planner.errors.InvalidInputError: vlrnn_planner: invalid budget '8 GB/s': ...
    """
    if isinstance(spec, Budget):
        return spec
    if isinstance(spec, bool):
        raise _reject(spec, "a bool is not a size")
    if isinstance(spec, int):
        if spec < 1:
            raise _reject(spec, "a size must be at least 1 byte")
        if spec > MAX_BUDGET_BYTES:
            raise _reject(spec, "larger than any device's memory can be counted (2**63 - 1 bytes)")
        return Budget(bytes=spec, spec=format_bytes(spec))
    if isinstance(spec, float):
        if not math.isfinite(spec) or not 0.0 < spec <= 1.0:
            raise _reject(
                spec,
                "a float is a share and must lie in (0, 1]; for a size in bytes pass an int "
                "(int(8e9)) or a string with a unit (\"8GB\")",
            )
        return Budget(share=spec, spec=f"{spec * 100:g}%")
    if not isinstance(spec, str):
        raise _reject(spec, f"a {type(spec).__name__} is not a budget")
    if spec.strip().startswith("-"):
        raise _reject(spec, "a budget must be positive")
    match = _SHARE_RE.match(spec)
    if match:
        percent = float(match["num"])
        if not 0.0 < percent <= 100.0:
            raise _reject(spec, "a percentage must lie in (0, 100]")
        return Budget(share=percent / 100.0, spec=spec.strip())
    match = _SIZE_RE.match(spec)
    if not match:
        raise _reject(spec, "not a number followed by a unit, nor a percentage")
    unit = match["unit"].lower()
    if unit not in _UNITS:
        raise _reject(spec, f"unknown unit {match['unit']!r}")
    value = float(match["num"]) * _UNITS[unit]
    if not math.isfinite(value):
        raise _reject(spec, "the size is not finite")
    size = round(value)
    if size < 1:
        raise _reject(spec, "a size must be at least 1 byte")
    if size > MAX_BUDGET_BYTES:
        raise _reject(spec, "larger than any device's memory can be counted (2**63 - 1 bytes)")
    return Budget(bytes=size, spec=spec.strip())


def format_bytes(n: int | float, *, binary: bool = False) -> str:
    """``n`` bytes written with the largest unit that keeps the number at least 1.

    Three significant digits (integers below 1000 bytes exactly), in the units `parse_budget`
    reads, so that ``parse_budget(format_bytes(n)).bytes`` is ``n`` within 0.5 %.

    Parameters
    ----------
    n : int or float
        A number of bytes; may be negative (a difference).
    binary : bool, default False
        Powers of 1024 (KiB, MiB, GiB, TiB) instead of powers of 1000 (KB, MB, GB, TB).

    Returns
    -------
    str

    Examples
    --------
    >>> format_bytes(8_000_000_000)
    '8 GB'
    >>> format_bytes(1_500_000_000)
    '1.5 GB'
    >>> format_bytes(8 * 2**30, binary=True)
    '8 GiB'
    >>> format_bytes(123_456_789)
    '123 MB'
    >>> format_bytes(999)
    '999 B'
    >>> format_bytes(-2_500_000)
    '-2.5 MB'
    """
    if not math.isfinite(n):
        return f"{n} B"
    sign = "-" if n < 0 else ""
    size = abs(n)
    if binary:
        units = [("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)]
    else:
        units = [("B", 1), ("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12)]
    name, scale = units[0]
    for unit_name, unit_scale in units:
        if size >= unit_scale:
            name, scale = unit_name, unit_scale
    value = size / scale
    if name == "B":
        return f"{sign}{round(value)} B"
    # Three significant digits; a value that rounds up to 1000 moves to the next unit.
    text = f"{value:.3g}"
    if "e" in text or float(text) >= 1000:
        index = [u for u, _ in units].index(name)
        if index + 1 < len(units):
            name, scale = units[index + 1]
            text = f"{size / scale:.3g}"
        else:
            text = f"{value:.0f}"
    return f"{sign}{text} {name}"


def format_seconds(seconds: float) -> str:
    """``seconds`` written with three significant digits in s, ms or us, for summaries.

    Parameters
    ----------
    seconds : float
        A duration in seconds, at least 0.

    Returns
    -------
    str

    Examples
    --------
    >>> format_seconds(250.0), format_seconds(1.5), format_seconds(0.0123), format_seconds(4e-6)
    ('250 s', '1.5 s', '12.3 ms', '4 us')
    """
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"
