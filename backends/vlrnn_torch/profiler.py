"""Profile a torch cell on its device: the memory and time numbers of a `CellProfile`.

The cell is run over blocks at two block lengths and two batch sizes, so that what grows with
steps x sequences separates from what is fixed per block, and what grows with the batch from what
does not. Each point is run without grad (an advance) and with grad plus its backward (a block's
forward-backward), timed, and measured for memory:

- CUDA: ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` around each run; NVML
  (the ``pynvml`` module of nvidia-ml-py) for the device's name, total and free memory and this
  process's whole footprint, context included.
- CPU: NOTE [ CPU memory ].

NOTE [ CPU memory ]
-------------------
The CPU has no allocator statistics, so two measures are combined. Saved-tensor accounting
(``torch.autograd.graph.saved_tensors_hooks``, counting the unique storages a block saves for
backward, plus its outputs) is exact about what autograd holds, but not about what the process
holds: for ``nn.LSTM`` on CPU it counts about 1.5x the real growth. So each run is also measured
by the kernel's peak resident set: release freed heap pages (``malloc_trim``), reset the peak
(write ``5`` to ``/proc/self/clear_refs``), note ``VmRSS``, run, read ``VmHWM`` from
``/proc/self/status``. The growth so measured calibrates the accounting: the profile keeps the
measured slope per step and sequence (and its fixed part per block) where the growth is large
enough to measure, the accounting otherwise, and says which in ``measured_by`` and ``notes``.
Gradients of the parameters are left out of a block's activations (the cost model counts them
once on their own).

The profiler never touches the cell's ``.grad``: gradients are taken with ``torch.autograd.grad``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlrnn_planner.budget import format_bytes
from vlrnn_planner.errors import InvalidInputError, InvalidTypeError
from vlrnn_planner.profile import CellProfile

from .cells import adapt
from .effects import BufferReplay, GradStash
from .tree import flatten, unflatten

__all__ = ["profile_cell", "query_nvml", "NvmlInfo"]

# The grid: block lengths and, for built-in cells, batch sizes. Large enough for the CPU's peak
# resident set to resolve the growth, small enough to profile a 2 x 256 LSTM in about a second.
BLOCK_LENGTHS = (16, 64)
BUILTIN_BATCH = 32
MIN_MEASURABLE_GROWTH = 4 * 2**20  # below this, the CPU's resident set is too noisy to calibrate
REPEATS = 2

# NOTE [ CPU allocator overhead ]
# On CPU the tensors of a block come from glibc's heap. A training step alternates blocks without
# grad (few, large outputs) and blocks with grad (many per-step tensors freed in reverse), and the
# heap keeps freed memory in fragments that the next block cannot always reuse, so the resident
# set grows beyond what the tensors need. In fresh processes (benchmarks/bench_memory.py) this
# came to a nearly fixed 38-45 MB per step for an LSTM 2 x 256 at batch 32 (K = 109..667) and an
# LSTM 2 x 128 at batch 8 (K = 513), while the growth per step and sequence matched the
# saved-tensor accounting. A process that is already warm cannot see it (its heap has resident
# free pages), so it is not measured here: the planner counts this upper end on CPU.
CPU_ALLOCATOR_OVERHEAD_BYTES = 48 * 2**20


# ---------------------------------------------------------------------------------------------
# NVML
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NvmlInfo:
    """What NVML reports about one GPU and this process on it."""

    name: str
    total_bytes: int
    free_bytes: int
    process_bytes: int | None


def query_nvml(index: int = 0, *, uuid: str | None = None) -> NvmlInfo | str:
    """The device's name, total and free memory, and this process's footprint on it, from NVML.

    Parameters
    ----------
    index : int
        The NVML index of the device (used when ``uuid`` is not given or not found).
    uuid : str, optional
        The device's UUID (``"GPU-..."``), which survives ``CUDA_VISIBLE_DEVICES`` renumbering.

    Returns
    -------
    NvmlInfo or str
        The numbers, or a sentence saying why NVML gave none (not installed, no driver).
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
        handle = None
        if uuid is not None:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception:
                handle = None
        if handle is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
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


# ---------------------------------------------------------------------------------------------
# CPU peak resident memory
# ---------------------------------------------------------------------------------------------


class _ResidentPeak:
    """Peak resident-set growth of a piece of work, from /proc (Linux); unavailable elsewhere."""

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
        if self._trim is not None:
            self._trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return self._status()["VmRSS"]

    def peak(self) -> int:
        return self._status()["VmHWM"]


# ---------------------------------------------------------------------------------------------
# Examples of inputs, states and targets at any block length and batch size
# ---------------------------------------------------------------------------------------------


def _resize(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` cut or tiled along ``dim`` to ``size``."""
    have = t.size(dim)
    if have >= size:
        return t.narrow(dim, 0, size).contiguous()
    reps = [1] * t.dim()
    reps[dim] = math.ceil(size / have)
    return t.repeat(*reps).narrow(dim, 0, size).contiguous()


@contextlib.contextmanager
def _untouched(cell: nn.Module, loss_fn: Any, device: torch.device):
    """Run the body, then put the cell (and a loss module) back as they were: parameter values,
    buffers, training modes, ``.grad`` and hooks (NOTE [ Hooks ]), and the RNG."""
    modules = [cell] + ([loss_fn] if isinstance(loss_fn, nn.Module) else [])
    params = [p for m in modules for p in m.parameters()]
    with torch.no_grad():
        values = [p.detach().to("cpu", copy=True) for p in params]
    modes = [(m, m.training) for top in modules for m in top.modules()]
    buffers = [BufferReplay(m) for m in modules]
    stash = GradStash()
    stash.add(params)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        stash.rollback()
        for replay in buffers:
            replay.rollback()
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for p, v in zip(params, values):
                if not torch.equal(p.detach().cpu(), v):
                    p.copy_(v)


class _Examples:
    """Makes (inputs, state, targets) for a block of K steps over B sequences."""

    def __init__(self, cell: nn.Module, adapter: Any, *, example_input: Any, state: Any,
                 example_target: Any, device: torch.device, dtype: torch.dtype, time_dim: int) -> None:
        self.time_dim = time_dim
        self.batch_dim = 1 if time_dim == 0 else 0
        self.state_batch_dim = adapter.state_batch_dim
        self.cell = cell
        self.device = device
        self.dtype = dtype
        inner = adapter.inner
        self.inner = inner
        if example_input is None:
            if not isinstance(inner, (nn.RNNBase, nn.RNNCellBase)):
                raise InvalidInputError(
                    f"vlrnn_torch: cannot make example inputs for a {type(inner).__name__}; pass "
                    "example_input= (a block of inputs with its time axis, e.g. shape (T, B, features)) "
                    "and, if the cell needs one, state= to auto_plan / profile_cell"
                )
            self.x0 = None
            self.batch = BUILTIN_BATCH
        else:
            if not isinstance(example_input, torch.Tensor):
                raise InvalidTypeError(
                    f"vlrnn_torch: example_input must be a tensor, got {type(example_input).__name__}; "
                    "the profiler takes dense blocks (pad packed sequences for profiling)"
                )
            if adapter.batch_dim(time_dim, example_input.dim()) is None:
                raise InvalidInputError(
                    f"vlrnn_torch: example_input of shape {tuple(example_input.shape)} needs a time "
                    "axis and a batch axis, e.g. (T, B, features), or (B, T) token ids with "
                    "time_dim=1; add a batch axis of 1 with unsqueeze"
                )
            self.x0 = example_input.to(device)
            self.batch = example_input.size(self.batch_dim)
        self.state0 = state
        self.y0 = None if example_target is None else example_target.to(device)
        if self.y0 is not None and self.y0.dim() < 2:
            raise InvalidInputError(
                f"vlrnn_torch: example_target of shape {tuple(self.y0.shape)} needs the inputs' time "
                "and batch axes"
            )

    def batches(self) -> tuple[int, int]:
        high = max(self.batch, 4)
        return max(1, high // 4), high

    def inputs(self, k: int, b: int) -> torch.Tensor:
        if self.x0 is None:
            shape = [0, 0, self.inner.input_size]
            shape[self.time_dim] = k
            shape[self.batch_dim] = b
            return torch.randn(shape, device=self.device, dtype=self.dtype)
        return _resize(_resize(self.x0, self.time_dim, k), self.batch_dim, b)

    def targets(self, k: int, b: int) -> torch.Tensor | None:
        if self.y0 is None:
            return None
        return _resize(_resize(self.y0, self.time_dim, k), self.batch_dim, b)

    def state(self, b: int) -> Any:
        if self.state0 is None:
            return self._default_state(b)
        leaves, spec = flatten(self.state0)
        out = []
        for t in leaves:
            if t is None:
                out.append(None)
                continue
            dim = self._state_dim(t)
            out.append(t.to(self.device) if dim is None else _resize(t.detach().to(self.device), dim, b))
        return unflatten(spec, out)

    def _state_dim(self, t: torch.Tensor) -> int | None:
        dims = [d for d in range(t.dim()) if t.size(d) == self.batch]
        if self.state_batch_dim in dims:
            return self.state_batch_dim
        return dims[0] if dims else None

    def _default_state(self, b: int) -> Any:
        m = self.inner
        z = dict(device=self.device, dtype=self.dtype)
        if isinstance(m, nn.RNNBase):
            layers = m.num_layers * (2 if m.bidirectional else 1)
            out = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
            h = torch.zeros(layers, b, out, **z)
            return (h, torch.zeros(layers, b, m.hidden_size, **z)) if isinstance(m, nn.LSTM) else h
        if isinstance(m, nn.RNNCellBase):
            h = torch.zeros(b, m.hidden_size, **z)
            return (h, torch.zeros(b, m.hidden_size, **z)) if isinstance(m, nn.LSTMCell) else h
        return None  # a custom cell without a given state: its own default


# ---------------------------------------------------------------------------------------------
# Running and measuring one point
# ---------------------------------------------------------------------------------------------


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


@dataclass(slots=True)
class _Point:
    k: int
    b: int
    advance_seconds: float = math.inf
    fb_seconds: float = math.inf
    activation_bytes: float = 0.0  # measured (CUDA allocator or CPU resident set), grads excluded
    transient_bytes: float = 0.0
    accounted_bytes: float = 0.0  # CPU: saved-tensor accounting


class _Runner:
    def __init__(self, adapter: Any, params: list[torch.Tensor], loss_fn: Any, examples: _Examples,
                 cuda: bool, device: torch.device) -> None:
        self.adapter = adapter
        self.params = params
        self.loss_fn = loss_fn
        self.examples = examples
        self.cuda = cuda
        self.device = device
        self.grad_bytes = sum(p.numel() * p.element_size() for p in params)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def data(self, k: int, b: int) -> tuple[torch.Tensor, Any, Any]:
        return self.examples.inputs(k, b), self.examples.state(b), self.examples.targets(k, b)

    def advance(self, x: torch.Tensor, state: Any) -> Any:
        with torch.no_grad():
            _, out_state = self.adapter.run(x, state, self.examples.time_dim)
        return out_state

    def forward(self, x: torch.Tensor, state: Any, y: Any) -> tuple[torch.Tensor, Any]:
        """A block with grad: a scalar to backpropagate, and the output state."""
        leaves, spec = flatten(state)
        state_in = unflatten(spec, [
            t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            for t in leaves
        ])
        outputs, out_state = self.adapter.run(x, state_in, self.examples.time_dim)
        if self.loss_fn is not None:
            loss = self.loss_fn(outputs, y)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise InvalidInputError(
                    "vlrnn_torch: loss_fn must return a scalar tensor (the block's share of the "
                    f"loss), got {type(loss).__name__}; reduce it with .sum() or .mean()"
                )
            loss = loss.reshape(())
        else:
            loss = sum(t.sum() for t in _tensors(outputs) if t.requires_grad)
        # The gradient arriving at the output state, as the executor hands it on.
        extra = [t.sum() for t in _tensors(out_state) if t.requires_grad]
        total = loss + sum(extra) if extra else loss
        return total, (outputs, out_state)

    def backward(self, total: torch.Tensor) -> Any:
        targets = [p for p in self.params]
        if not targets or not total.requires_grad:
            return None
        return torch.autograd.grad(total, targets, allow_unused=True)

    def fb(self, x: torch.Tensor, state: Any, y: Any) -> None:
        with torch.enable_grad():
            total, held = self.forward(x, state, y)
            grads = self.backward(total)
        del total, held, grads

    def accounted(self, x: torch.Tensor, state: Any, y: Any) -> int:
        """Bytes of the unique storages saved for backward by a block with grad, plus its outputs
        (NOTE [ CPU memory ]); storages that existed before (parameters, inputs, state) excluded."""
        existing = {t.untyped_storage().data_ptr() for t in [*self.params, x, *_tensors(state), *_tensors(y)]}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in existing and ptr != 0:
                seen[ptr] = storage.nbytes()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            total, held = self.forward(x, state, y)
        for t in _tensors(held):
            storage = t.untyped_storage()
            if storage.data_ptr() not in existing:
                seen[storage.data_ptr()] = storage.nbytes()
        del total, held
        return sum(seen.values())


def _measure_sequence(runner: _Runner, point: _Point, resident: _ResidentPeak, *, advances: int = 3) -> None:
    """Peak resident growth of what the executor does: ``advances`` blocks without grad, then a
    block with grad and its backward (NOTE [ CPU memory ]). The no-grad blocks leave the heap
    fragmented, and the block with grad then takes more than it would in a fresh heap."""
    x, state, y = runner.data(point.k, point.b)
    base = _start(runner, resident)
    carried = state
    for _ in range(advances):
        carried = runner.advance(x, carried)
    point.transient_bytes = _peak(runner, resident, base)
    runner.fb(x, carried, y)
    extra = runner.grad_bytes + (advances and _nbytes(carried))
    point.activation_bytes = _peak(runner, resident, base) - extra
    del carried


def _start(runner: _Runner, resident: _ResidentPeak | None) -> int:
    runner.sync()
    if runner.cuda:
        torch.cuda.reset_peak_memory_stats(runner.device)
        return torch.cuda.memory_allocated(runner.device)
    return resident.start() if resident is not None else 0


def _peak(runner: _Runner, resident: _ResidentPeak | None, base: int) -> int:
    if runner.cuda:
        return torch.cuda.max_memory_allocated(runner.device) - base
    return resident.peak() - base if resident is not None else 0


def _measure(runner: _Runner, point: _Point, resident: _ResidentPeak | None, *, repeats: int = REPEATS,
             account: bool = True) -> None:
    """Time and measure one point: ``repeats`` no-grad runs and runs with grad plus backward
    (fastest time, largest memory), and, on CPU, the saved-tensor accounting."""
    x, state, y = runner.data(point.k, point.b)
    if resident is not None and account:
        point.accounted_bytes = runner.accounted(x, state, y)
    for _ in range(repeats):
        base = _start(runner, resident)
        t0 = time.perf_counter()
        out_state = runner.advance(x, state)
        runner.sync()
        point.advance_seconds = min(point.advance_seconds, time.perf_counter() - t0)
        point.transient_bytes = max(point.transient_bytes, _peak(runner, resident, base))
        del out_state
        base = _start(runner, resident)
        t0 = time.perf_counter()
        runner.fb(x, state, y)
        runner.sync()
        point.fb_seconds = min(point.fb_seconds, time.perf_counter() - t0)
        point.activation_bytes = max(point.activation_bytes, _peak(runner, resident, base) - runner.grad_bytes)


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def _upper_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """``y = a * x + c`` with the least-squares slope ``a >= 0`` and ``c >= 0`` raised so that the
    line lies on or above every point (a prediction errs on the safe side)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    a = max(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx, 0.0) if sxx > 0 else 0.0
    c = max(max(y - a * x for x, y in zip(xs, ys)), 0.0)
    return a, c


def _secant_line(p: _Point, q: _Point, points: Sequence[_Point], attr: str) -> tuple[float, float]:
    """``y = a * x + c`` with the slope ``a >= 0`` through ``p`` and ``q`` (x = steps x sequences)
    and ``c >= 0`` raised so that the line lies on or above every point."""
    dx = q.k * q.b - p.k * p.b
    a = max((getattr(q, attr) - getattr(p, attr)) / dx, 0.0)
    c = max(max(getattr(r, attr) - a * r.k * r.b for r in points), 0.0)
    return a, c


def _nonnegative_lstsq(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Least squares with every coefficient >= 0, by trying each subset of the columns (few)."""
    m = len(rows[0])
    best: tuple[float, list[float]] | None = None
    for mask in range(1, 2**m):
        cols = [j for j in range(m) if mask >> j & 1]
        a = torch.tensor([[r[j] for j in cols] for r in rows], dtype=torch.float64)
        b = torch.tensor(ys, dtype=torch.float64).unsqueeze(1)
        sol = torch.linalg.lstsq(a, b, driver="gelsd").solution.squeeze(1)
        if (sol < 0).any():
            continue
        residual = float(((a @ sol.unsqueeze(1) - b) ** 2).sum())
        coef = [0.0] * m
        for j, v in zip(cols, sol.tolist()):
            coef[j] = v
        if best is None or residual < best[0] - 1e-18:
            best = (residual, coef)
    return best[1] if best is not None else [0.0] * m


def _time_fit(points: Sequence[_Point], attr: str) -> tuple[float, float, float]:
    """Seconds of a block = K * (per_step + per_step_per_sample * B) + per_block."""
    rows = [(p.k, p.k * p.b, 1.0) for p in points]
    ys = [getattr(p, attr) for p in points]
    per_step, per_sample, per_block = _nonnegative_lstsq(rows, ys)
    return per_step, per_sample, per_block


# ---------------------------------------------------------------------------------------------
# The profiler
# ---------------------------------------------------------------------------------------------


def _describe(cell: nn.Module) -> str:
    text = repr(cell).splitlines()
    first = text[0] if len(text) == 1 else f"{type(cell).__name__}(...)"
    return first if len(first) <= 100 else first[:97] + "..."


def _host_memory() -> tuple[int | None, int | None]:
    """The host's total and available memory (MemTotal, MemAvailable of /proc/meminfo), or Nones
    where the kernel does not say."""
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def profile_cell(
    cell: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    state: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    example_target: torch.Tensor | None = None,
    device: Any = None,
    time_dim: int | None = None,
) -> CellProfile:
    """Measure ``cell``'s memory and time per step on its device.

    Runs blocks of 16 and 64 steps at two batch sizes (8 and 32 for built-in cells; a quarter of
    the example's batch and the example's batch otherwise), each without grad and with grad plus
    backward, and fits the `CellProfile` model to them. The cell's ``.grad`` is left untouched.

    Parameters
    ----------
    cell : nn.Module
        ``nn.RNN``/``nn.LSTM``/``nn.GRU``, ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell`` (example
        inputs are made from ``input_size``), or any module ``forward(x_block, state) ->
        (outputs, state)`` (or a `StepCell`), which needs ``example_input``.
    example_input : tensor, optional
        A block of inputs, with the time axis at ``time_dim`` and the batch axis next to it; cut or
        tiled to the profiled block lengths and batch sizes.
    state : optional
        An initial state for ``example_input``'s batch; zeros (built-in cells) or the cell's own
        default (None) otherwise.
    loss_fn : callable, optional
        ``loss_fn(outputs_block, targets_block) -> scalar``, profiled with the block.
    example_target : tensor, optional
        Targets laid out like ``example_input`` (time and batch axes), for ``loss_fn``.
    device : str or torch.device, optional
        Must be where the cell's parameters are (the default); move the cell first to profile it
        elsewhere.
    time_dim : int, optional
        The inputs' time axis, where it is not the cell's convention.

    Returns
    -------
    CellProfile

    Raises
    ------
    InvalidInputError
        A custom cell without ``example_input``, a bidirectional cell, a ``device`` other than the
        cell's, a ``loss_fn`` that does not return a scalar.

    Examples
    --------
    >>> import torch
    >>> p = profile_cell(torch.nn.GRU(8, 16, dtype=torch.float32))
    >>> p.state_bytes_per_sample, p.input_bytes_per_step, p.parameter_bytes == p.gradient_bytes
    (64.0, 32.0, True)
    """
    started = time.perf_counter()
    if not isinstance(cell, nn.Module):
        raise InvalidTypeError(f"vlrnn_torch: cell must be a torch.nn.Module, got {type(cell).__name__}")
    adapter = adapt(cell)
    params = [p for p in cell.parameters() if p.requires_grad]
    if loss_fn is not None and isinstance(loss_fn, nn.Module):
        params += [p for p in loss_fn.parameters() if p.requires_grad]
    all_params = list(cell.parameters())
    home = all_params[0].device if all_params else (
        example_input.device if isinstance(example_input, torch.Tensor) else torch.device("cpu"))
    dev = home if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if all_params and dev != home:
        raise InvalidInputError(
            f"vlrnn_torch: asked to profile on {dev} but the cell's parameters are on {home}; "
            f"move the cell first with cell.to({str(dev)!r}), or leave device= out"
        )
    floating = [p for p in all_params if p.is_floating_point()]
    dtype = floating[0].dtype if floating else (
        example_input.dtype if isinstance(example_input, torch.Tensor) else torch.get_default_dtype())
    if example_input is None and adapter.kind != "rnn" and not isinstance(adapter.inner, nn.RNNCellBase):
        raise InvalidInputError(
            f"vlrnn_torch: cannot make example inputs for a {adapter.name}; pass example_input= (a "
            "block of inputs with its time axis, e.g. shape (T, B, features), or (B, T) token ids "
            "with time_dim=1) and, if the cell needs one, state= to auto_plan / profile_cell"
        )
    ndim = example_input.dim() if isinstance(example_input, torch.Tensor) else 3
    tdim = adapter.resolve_time_dim(time_dim, ndim)
    examples = _Examples(cell, adapter, example_input=example_input, state=state,
                         example_target=example_target, device=dev, dtype=dtype, time_dim=tdim)
    cuda = dev.type == "cuda"
    notes: list[str] = []

    resident: _ResidentPeak | None = None
    if not cuda:
        resident = _ResidentPeak()
        nvml = query_nvml(0)
        if isinstance(nvml, NvmlInfo):
            notes.append(
                f"measured on the CPU although NVML sees a {nvml.name}; move the cell with "
                "cell.to('cuda') to plan for the GPU"
            )
        else:
            notes.append(f"{nvml}: no GPU in use, the CPU path was taken")

    # NOTE [ Profiling leaves the cell as it was ]: parameters, buffers, training mode, .grad,
    # hooks and the RNG are put back afterwards.
    with _untouched(cell, loss_fn, dev):
        runner = _Runner(adapter, params, loss_fn, examples, cuda, dev)
        b_low, b_high = examples.batches()
        k_low, k_high = BLOCK_LENGTHS

        # Per-sequence sizes, from one small run.
        with torch.no_grad():
            x, st, y = runner.data(2, b_high)
            outputs, out_state = adapter.run(x, st, tdim)
        state_bytes = _nbytes(out_state) / b_high
        output_bytes = _nbytes(outputs) / (2 * b_high)
        input_bytes = _nbytes(x) / (2 * b_high)
        target_bytes = 0.0 if y is None else _nbytes(y) / (2 * b_high)
        if loss_fn is not None and example_target is None:
            notes.append("loss_fn was profiled with targets=None (no example_target given)")
        del x, st, y, outputs, out_state

        runner.fb(*runner.data(k_low, b_low))  # warm-up: lazy initialisation, thread pools
        points = [_Point(k, b) for b in (b_low, b_high) for k in (k_low, k_high)]
        for point in points:
            _measure(runner, point, resident)
        calibration = anchor = None
        if resident is not None and resident.available:
            # NOTE [ CPU memory ]: measured as the executor runs, blocks without grad first, at
            # the grid's largest block and one twice as long.
            anchor = _Point(k_high, b_high)
            calibration = _Point(2 * k_high, b_high)
            for point in (anchor, calibration):
                _measure_sequence(runner, point, resident)

    adv = _time_fit(points, "advance_seconds")
    fb = _time_fit(points, "fb_seconds")
    sample_steps = [p.k * p.b for p in points]
    param_bytes = sum(p.numel() * p.element_size() for p in params)

    # Memory per step and sequence.
    reserved = total = free = process = None
    if cuda:
        act_slope, act_fixed = _upper_line(sample_steps, [p.activation_bytes for p in points])
        tr_slope, tr_fixed = _upper_line(sample_steps, [p.transient_bytes for p in points])
        reserved = int(torch.cuda.memory_reserved(dev))
        props = torch.cuda.get_device_properties(dev)
        uuid = getattr(props, "uuid", None)
        nvml = query_nvml(dev.index or 0, uuid=None if uuid is None else f"GPU-{uuid}")
        if isinstance(nvml, NvmlInfo):
            name, total, free, process = nvml.name, nvml.total_bytes, nvml.free_bytes, nvml.process_bytes
            measured_by = "cuda+nvml"
            if process is None:
                notes.append("NVML lists no footprint for this process (a container's PID namespace?)")
        else:
            free, total = (int(v) for v in torch.cuda.mem_get_info(dev))
            name = torch.cuda.get_device_name(dev)
            measured_by = "cuda (allocator peaks; device memory from cudaMemGetInfo)"
            notes.append(f"{nvml}; this process's footprint is unknown")
    else:
        name = _cpu_name()
        accounted_slope, accounted_fixed = _upper_line(sample_steps, [p.accounted_bytes for p in points])
        if calibration is not None and calibration.activation_bytes >= MIN_MEASURABLE_GROWTH:
            measured_slope, _ = _secant_line(anchor, calibration, [anchor, calibration], "activation_bytes")
            # The accounting is a floor for the slope: a warm heap in this process reuses pages
            # that the executor's run in a fresh process must fault in (NOTE [ CPU memory ]).
            act_slope = max(measured_slope, accounted_slope)
            act_fixed = max(0.0, max(p.activation_bytes - act_slope * p.k * p.b for p in (anchor, calibration)))
            factor = measured_slope / accounted_slope if accounted_slope > 0 else float("nan")
            measured_by = (
                f"cpu: saved-tensor accounting calibrated against VmHWM (measured growth "
                f"{factor:.2f}x the accounting per step and sequence)"
            )
            notes.append(
                f"saved-tensor accounting {format_bytes(accounted_slope)} per step and sequence; "
                f"peak resident growth {format_bytes(measured_slope)} per step and sequence "
                f"after blocks without grad; kept {format_bytes(act_slope)} + {format_bytes(act_fixed)} per block"
            )
        else:
            act_slope, act_fixed = accounted_slope, accounted_fixed
            if calibration is None:
                why = resident.why_not if resident is not None else "no resident-set measure"
            else:
                why = f"peak resident growth of {format_bytes(calibration.activation_bytes)} too small to calibrate"
            measured_by = f"cpu: saved-tensor accounting, uncalibrated ({why})"
        if calibration is not None and calibration.transient_bytes >= MIN_MEASURABLE_GROWTH:
            tr_slope, tr_fixed = _secant_line(anchor, calibration, [anchor, calibration], "transient_bytes")
        else:
            # Too small to resolve: the block's outputs, as a floor.
            tr_slope, tr_fixed = output_bytes, 0.0
        # The executor keeps the CPU generator's state with each stored boundary.
        notes.append("each stored state also keeps the CPU RNG state")
        # A share ("80%") on CPU resolves against the memory the kernel says is available.
        total, free = _host_memory()
    # Kept with every stored state: the cell's buffers (NOTE [ Buffer replay ]) and, on the CPU
    # (where the generator's state is on the device), the RNG state.
    state_fixed = float(BufferReplay(adapter.inner).nbytes()) + (0.0 if cuda else float(torch.get_rng_state().numel()))

    return CellProfile(
        device=str(dev),
        device_name=name,
        dtype=str(dtype).removeprefix("torch."),
        cell=_describe(cell),
        time_dim=tdim,
        parameter_bytes=param_bytes,
        gradient_bytes=param_bytes,
        state_bytes_per_sample=state_bytes,
        state_bytes_fixed=state_fixed,
        input_bytes_per_step=input_bytes,
        target_bytes_per_step=target_bytes,
        activation_bytes_per_step=act_slope,
        activation_bytes_fixed=act_fixed,
        transient_bytes_per_step=tr_slope,
        transient_bytes_fixed=tr_fixed,
        advance_seconds_per_step=adv[0],
        advance_seconds_per_step_per_sample=adv[1],
        fb_seconds_per_step=fb[0],
        fb_seconds_per_step_per_sample=fb[1],
        block_overhead_seconds=(adv[2] + fb[2]) / 2,
        device_total_bytes=total,
        device_free_bytes=free,
        process_bytes=process,
        allocator_reserved_bytes=reserved,
        allocator_overhead_bytes=CPU_ALLOCATOR_OVERHEAD_BYTES if dev.type == "cpu" else 0,
        loss_included=loss_fn is not None,
        measured_by=measured_by,
        profile_seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )
