"""What the devices say about memory: NVML and the CUDA allocator for a GPU, ``/proc`` for the
host; and which exceptions mean the device ran out of memory.

NOTE [ GPU memory: the allocator's view, NVML for the rest ]
------------------------------------------------------------
A budget share ("80%") resolves against what this process can use: the free memory and what its
caching allocator already holds. The free and total memory come from ``torch.cuda.mem_get_info``,
which is what the allocator itself sees (on a MIG slice: the slice, not the whole GPU). NVML adds
the device's name and this process's whole footprint (the CUDA context included). The NVML device
is found by its UUID only: ``GPU-<uuid>`` for a whole GPU, ``MIG-<uuid>`` for a MIG slice; an
index is never guessed from the torch ordinal, which ``CUDA_VISIBLE_DEVICES`` and CUDA's device
order make differ from NVML's.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vlrnn_planner.errors import PlannerError

__all__ = ["NvmlInfo", "query_nvml", "gpu_memory", "ResidentPeak", "host_memory", "cpu_name", "is_out_of_memory"]


@dataclass(frozen=True, slots=True)
class NvmlInfo:
    """What NVML reports about one GPU and this process on it.

    Attributes
    ----------
    name : str
    total_bytes, free_bytes : int
        The device's memory, as NVML counts it (the whole GPU).
    process_bytes : int or None
        This process's footprint on the device (context included); None where NVML does not list it.
    """

    name: str
    total_bytes: int
    free_bytes: int
    process_bytes: int | None


def query_nvml(index: int | None = 0, *, uuid: str | None = None) -> NvmlInfo | str:
    """The device's name, memory, and this process's footprint on it, from NVML.

    Parameters
    ----------
    index : int or None
        The NVML index of the device, used only when ``uuid`` is None (a plain query).
    uuid : str, optional
        The device's UUID: ``"GPU-..."``, ``"MIG-..."``, or bare (both prefixes are tried). Given,
        it is the only way the device is looked up (NOTE [ GPU memory: the allocator's view, NVML
        for the rest ]).

    Returns
    -------
    NvmlInfo or str
        The numbers, or a sentence saying why NVML gave none (not installed, no driver, no such
        device).
    """
    try:
        import pynvml
    except ImportError:
        return "NVML unavailable (the nvidia-ml-py package is not installed)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # pynvml.NVMLError subclasses, or OSError from the loader
        return f"NVML unavailable ({type(e).__name__}: {e})"
    try:
        handle = _handle(pynvml, index, uuid)
        if isinstance(handle, str):
            return handle
        name = pynvml.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):
            name = name.decode()
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        process_bytes = None
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    process_bytes = int(proc.usedGpuMemory)
        except Exception:
            process_bytes = None
        return NvmlInfo(str(name), int(memory.total), int(memory.free), process_bytes)
    except Exception as e:
        return f"NVML query failed ({type(e).__name__}: {e})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _handle(pynvml, index: int | None, uuid: str | None):
    if uuid is None:
        return pynvml.nvmlDeviceGetHandleByIndex(index or 0)
    bare = uuid.removeprefix("GPU-").removeprefix("MIG-")
    candidates = [uuid] if uuid != bare else [f"GPU-{bare}", f"MIG-{bare}"]
    for candidate in candidates:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(candidate)
        except Exception:
            continue
    return f"NVML knows no device with UUID {uuid} (tried {', '.join(candidates)})"


def gpu_memory(device: torch.device) -> tuple[int, int, int, NvmlInfo | str]:
    """The GPU's total and free memory as its allocator sees them, the bytes the allocator holds,
    and NVML's view (NOTE [ GPU memory: the allocator's view, NVML for the rest ]).

    Parameters
    ----------
    device : torch.device
        A CUDA device.

    Returns
    -------
    total, free, reserved : int
        Bytes.
    nvml : NvmlInfo or str
        NVML's numbers (for the name and this process's footprint) or why there are none.
    """
    free, total = (int(v) for v in torch.cuda.mem_get_info(device))
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    nvml = query_nvml(None, uuid=str(uuid)) if uuid is not None else "the device has no UUID to find it in NVML"
    return total, free, int(torch.cuda.memory_reserved(device)), nvml


class ResidentPeak:
    """Peak resident-set growth of a piece of work, from ``/proc`` (Linux); unavailable elsewhere.

    `start` releases freed heap pages (``malloc_trim``), resets the kernel's peak (writes ``5`` to
    ``/proc/self/clear_refs``) and returns ``VmRSS``; `peak` returns ``VmHWM``.
    """

    def __init__(self) -> None:
        self.why_not: str | None = None
        self._trim: Callable[[int], int] | None = None
        try:
            self._trim = ctypes.CDLL(None).malloc_trim  # glibc: return freed heap pages
        except (OSError, AttributeError):
            self._trim = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._status()
        except OSError as e:
            self.why_not = f"/proc/self/clear_refs or /proc/self/status unavailable ({e.strerror})"

    @property
    def available(self) -> bool:
        """Whether this system offers the reading."""
        return self.why_not is None

    @staticmethod
    def _status() -> dict[str, int]:
        found = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    found[key] = int(value.split()[0]) * 1024
        return found

    def start(self) -> int:
        """Reset the peak; the resident bytes now."""
        if self._trim is not None:
            self._trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return self._status()["VmRSS"]

    def peak(self) -> int:
        """The peak resident bytes since `start`."""
        return self._status()["VmHWM"]


def host_memory() -> tuple[int | None, int | None]:
    """The host's total and available memory (MemTotal, MemAvailable of ``/proc/meminfo``), or
    Nones where the kernel does not say."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return None, None
    return found.get("MemTotal"), found.get("MemAvailable")


def cpu_name() -> str:
    """The CPU's model name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# The exception classes torch raises when a device's memory runs out, in the releases the
# requirement admits: torch.OutOfMemoryError (2.1+), torch.cuda.OutOfMemoryError (1.13+).
_OOM_TYPES = tuple({t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                    if isinstance(t, type)})
# Allocation failures that reach Python as plain RuntimeErrors: cuDNN's and cuBLAS's own
# workspaces, and the CPU allocator.
_OOM_MESSAGES = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "out of memory", "can't allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    bool

    Examples
    --------
    >>> is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    True
    >>> is_out_of_memory(ValueError("out of memory"))
    False
    """
    if _OOM_TYPES and isinstance(exc, _OOM_TYPES):
        return True
    if isinstance(exc, PlannerError) or not isinstance(exc, RuntimeError):
        return False
    return any(m in str(exc) for m in _OOM_MESSAGES)
