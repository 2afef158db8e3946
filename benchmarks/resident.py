"""Peak resident memory of a piece of work on Linux, for benchmarks that run each case in a fresh
process (the CPU method of DESIGN's "Measuring memory honestly").

Release freed heap pages (glibc's ``malloc_trim``), reset the kernel's peak counter (write ``5``
to ``/proc/self/clear_refs``) and note ``VmRSS``; after the work, ``VmHWM`` in
``/proc/self/status`` is the peak since the reset. Their difference is the work's peak growth.
The reading is the torch backend's own, the one its profiler calibrates against.
"""

from __future__ import annotations

import gc

from vlrnn_torch.profiler import _ResidentPeak

__all__ = ["reset_peak", "peak_growth_since"]

_RESIDENT = _ResidentPeak()


def reset_peak() -> int:
    """Collect garbage, give freed heap pages back, reset the peak counter; the resident bytes now.

    Returns
    -------
    int
        ``VmRSS`` after the reset: the baseline for `peak_growth_since`.

    Raises
    ------
    OSError
        Where ``/proc/self/clear_refs`` cannot be written (not Linux).
    """
    if not _RESIDENT.available:
        raise OSError(f"cannot measure peak resident memory here: {_RESIDENT.why_not}")
    gc.collect()
    return _RESIDENT.start()


def peak_growth_since(base: int) -> int:
    """Peak resident bytes since the last `reset_peak`, less its baseline ``base``."""
    return _RESIDENT.peak() - base
