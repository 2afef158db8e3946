"""Profile a torch cell on its device: the memory and time numbers of a `CellProfile`.

The profile is measured, fitted and described in three steps (`_measure`, `_fit_time` and
`_fit_memory`, `_describe`), each on plain data.

NOTE [ Profiling runs what the executor runs ]
----------------------------------------------
Every measurement is a real call of the executor (`vlrnn_torch.executor.run_schedule`, with
``keep=False`` so that it leaves no gradient, RNG draw or buffer change behind) over a schedule
of two blocks: ``Advance(0, 1)``, ``ForwardBackward(1)``, ``ForwardBackward(0)``. An observer
times, and measures the memory of, the ``Advance`` (a block without grad) and ``ForwardBackward(0)``
(a block with grad that also takes a gradient at its output state: the typical block), so the
numbers include what the executor does around the cell: leaves for the state, RNG replay,
accumulation into the gradients the first block made.

NOTE [ Profile at the shapes that will run ]
--------------------------------------------
Blocks are measured at the batch that will run (``batch_size=``, else the example's batch, else
32 for built-in cells) and at a quarter of it, at 16 and 64 steps: the fit
``K * (a + b * B) + c`` separates what grows with the batch from what does not. The cost of a step
also changes with the block length (activations outgrow the caches, fresh memory is faulted in),
so blocks of 256 steps, and 4 times longer while a block takes under 0.1 s, are timed at the full
batch too, and the ratio to the fit is kept as `CellProfile.step_time_scale`.

NOTE [ Fitting the time per block ]
-----------------------------------
The fixed seconds per block (launches, Python, bookkeeping) decide how short blocks may be, and a
fit over block lengths 16 and 64 alone puts into it whatever those two short blocks measure
beyond a straight line: on a 2-core CPU that made it 9 ms where the calls measured about 1, and
the planner then chose blocks several times longer than the fastest. So the overhead is the
intercept of a line through the full-batch points at every length timed (16 to 1024 and beyond),
and the per-step and per-sequence parts are fitted to the grid with that intercept taken off.

NOTE [ Noisy profiles ]
-----------------------
Each point is timed ``REPEATS`` times and the fastest run is kept. Where the runs of a point lie
more than `TIMING_SPREAD_LIMIT` apart (another process shared the device), the point is timed up to
``EXTRA_REPEATS`` more times and the spread recomputed over its ``REPEATS`` fastest runs. What
spread remains is kept as `CellProfile.timing_spread`; a profile over the limit says so in its
summary and in every plan made from it.

NOTE [ Measuring overlap ]
--------------------------
Whether backpropagating a block beside the recomputation of the block before it (NOTE
[ Overlapping recomputation with backward ] in `vlrnn_torch.overlap`) pays depends on the device:
on a GPU the two share its units through two streams, on a CPU they share its cores. So calls
over 2 and 5 blocks (``OVERLAP_BLOCKS``) at the larger batch, at the longest block length of the
fit whose block takes at most ``OVERLAP_TIME_LIMIT`` (the shortest otherwise), are timed with
overlap on and off, in turn, ``REPEATS + 1`` times each. From the fastest of each, the seconds
saved per overlapped block are the growth of the saving from 2 blocks to 5 (so that what overlap
costs once per call, its worker thread, cancels), kept relative to the block's seconds with grad
as `CellProfile.overlap_ratio`, and never below what hiding the shorter of the two parts (the
recomputation, the backward) would give. Long calls amortise the per-call cost. Cells the
executor never overlaps (with buffers, under DDP, compiled) get no ratio. The planner turns
overlap on only where it saves enough (`vlrnn_planner.profile.OVERLAP_MIN_GAIN`, and more than
the profile's timing spread).

NOTE [ CPU memory ]
-------------------
The CPU has no allocator statistics, so two measures are combined. Saved-tensor accounting
(``torch.autograd.graph.saved_tensors_hooks``, counting the unique storages a block saves for
backward, plus its outputs) is exact about what autograd holds, but not about what the process
holds: for ``nn.LSTM`` on CPU it counts about 1.5x the real growth. So a longer call is also
measured by the kernel's peak resident set (`vlrnn_torch.devices.ResidentPeak`): four blocks at
the largest block length and at twice that, three of them advanced without grad first as the
executor does. The growth so measured calibrates the accounting: the profile keeps the measured
slope per step and sequence (and its fixed part per block) where the growth is large enough to
measure, the accounting otherwise, and says which in ``measured_by`` and ``notes``.

NOTE [ CPU allocator overhead ]
-------------------------------
On CPU the tensors of a block come from glibc's heap. A training step alternates blocks without
grad (few, large outputs) and blocks with grad (many per-step tensors freed in reverse), and the
heap keeps freed memory in fragments that the next block cannot always reuse, so the resident set
grows beyond what the tensors need. How much is not a function of the schedule: for an LSTM
2 x 256 at batch 32 (benchmarks/bench_memory.py, each case in a process of its own after one warm
-up call) the growth beyond the model's tensors ranged from -85 MB to +50 MB over block lengths 5
to 800 in two runs, fresh and warm alike, and varied between runs of the same schedule. (Earlier
measurements put a nearly fixed 38-45 MB here; most of it was torch importing sympy in the
first call, NOTE [ What torch loads on the first backward ] in the executor.) A process cannot
measure this ahead of time, so the planner counts its upper end on CPU: predictions err high by
up to that much, and small budgets see it most.

NOTE [ GPU memory as reserved ]
-------------------------------
A budget is what the process may take on the device, and the caching allocator takes more than
the tensors it hands out: whole segments, sizes rounded up, fragments it cannot reuse, and the
workspaces cuDNN and cuBLAS ask for. Each block measured on a GPU starts from an empty cache, and
counts the larger of what it allocated and what the allocator reserved meanwhile. Gradients are
accumulated as a real call accumulates them (the first block makes them, the measured one adds).

NOTE [ Profiling leaves the cell as it was ]
--------------------------------------------
Parameters, buffers, training modes, ``.grad``, hooks (taken off while profiling) and the RNG are
put back afterwards.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlrnn_planner.actions import Advance, ForwardBackward
from vlrnn_planner.budget import format_bytes
from vlrnn_planner.errors import InvalidInputError, InvalidTypeError
from vlrnn_planner.profile import TIMING_SPREAD_LIMIT, CellProfile
from vlrnn_planner.schedule import Schedule

from .cells import Adapter, adapt
from .devices import NvmlInfo, ResidentPeak, cpu_name, gpu_memory, host_memory, query_nvml
from .effects import BufferReplay, GradStash
from .executor import can_overlap, run_schedule
from .sequences import make_view
from .tree import flatten, unflatten

__all__ = ["profile_cell", "query_nvml", "NvmlInfo"]

BLOCK_LENGTHS = (16, 64)  # the linear fit (NOTE [ Profile at the shapes that will run ])
SCALE_LENGTHS = (256, 1024, 4096)  # timed for the scale factors while a block stays fast
SCALE_TIME_LIMIT = 0.1  # seconds: no longer block length is timed once a block takes this
BUILTIN_BATCH = 32
MIN_MEASURABLE_GROWTH = 4 * 2**20  # below this, the CPU's resident set is too noisy to calibrate
REPEATS = 2
EXTRA_REPEATS = 3
OVERLAP_BLOCKS = (2, 5)  # NOTE [ Measuring overlap ]
OVERLAP_TIME_LIMIT = 0.03  # seconds: the longest block with grad timed for overlap, where one is short
CPU_ALLOCATOR_OVERHEAD_BYTES = 48 * 2**20  # NOTE [ CPU allocator overhead ]

# The old private name of the CPU's resident-set reading (kept for the benchmarks that use it).
_ResidentPeak = ResidentPeak


# ---------------------------------------------------------------------------------------------
# Set-up: what to run, where, on what
# ---------------------------------------------------------------------------------------------


def _resize(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` cut or tiled along ``dim`` to ``size``."""
    have = t.size(dim)
    if have >= size:
        return t.narrow(dim, 0, size).contiguous()
    reps = [1] * t.dim()
    reps[dim] = math.ceil(size / have)
    return t.repeat(*reps).narrow(dim, 0, size).contiguous()


def _sum_loss(outputs: Any, targets: Any) -> torch.Tensor:
    """The loss profiled without a ``loss_fn``: the sum of the outputs (so they take a gradient)."""
    leaves = [t for t in flatten(outputs, packed_leaves=True)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return sum(t.sum() for t in leaves)


@dataclass
class _Setup:
    """What the profiler runs: the adapter, device and dtype, and example data of any shape."""

    cell: nn.Module
    adapter: Adapter
    device: torch.device
    dtype: torch.dtype
    time_dim: int
    batch: int
    loss_fn: Any
    x0: torch.Tensor | None
    y0: torch.Tensor | None
    state0: Any
    notes: list[str] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def batch_dim(self) -> int:
        return 1 if self.time_dim == 0 else 0

    def batches(self) -> tuple[int, int]:
        """The two batch sizes measured: a quarter of the batch that will run, and that batch."""
        high = max(self.batch, 4)
        return max(1, high // 4), high

    def inputs(self, k: int, b: int) -> torch.Tensor:
        if self.x0 is None:
            shape = [0, 0, self.adapter.inner.input_size]
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
            dims = [d for d in range(t.dim()) if t.size(d) == self.batch]
            dim = self.adapter.state_batch_dim if self.adapter.state_batch_dim in dims else (dims[0] if dims else None)
            out.append(t.detach().to(self.device) if dim is None else _resize(t.detach().to(self.device), dim, b))
        return unflatten(spec, out)

    def _default_state(self, b: int) -> Any:
        m = self.adapter.inner
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

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def _setup(cell: Any, example_input: Any, state: Any, loss_fn: Any, example_target: Any, device: Any,
           time_dim: int | None, batch_size: int | None) -> _Setup:
    """Check the arguments and make the `_Setup`."""
    if not isinstance(cell, nn.Module):
        raise InvalidTypeError(f"vlrnn_torch: cell must be a torch.nn.Module, got {type(cell).__name__}")
    adapter = adapt(cell)
    builtin = adapter.kind == "rnn" or isinstance(adapter.inner, nn.RNNCellBase)
    if example_input is None and not builtin:
        raise InvalidInputError(
            f"vlrnn_torch: cannot make example inputs for a {adapter.name}; pass example_input= (a "
            "block of inputs with its time axis, e.g. shape (T, B, features), or (B, T) token ids "
            "with time_dim=1) and, if the cell needs one, state= to auto_plan / profile_cell"
        )
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise InvalidTypeError(
            f"vlrnn_torch: example_input must be a tensor, got {type(example_input).__name__}; the "
            "profiler takes dense blocks (pad packed sequences for profiling)"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InvalidInputError(f"vlrnn_torch: batch_size must be an int >= 1, got {batch_size!r}")
    params = list(cell.parameters())
    home = params[0].device if params else (
        example_input.device if isinstance(example_input, torch.Tensor) else torch.device("cpu"))
    dev = home if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if params and dev != home:
        raise InvalidInputError(
            f"vlrnn_torch: asked to profile on {dev} but the cell's parameters are on {home}; "
            f"move the cell first with cell.to({str(dev)!r}), or leave device= out"
        )
    floating = [p for p in params if p.is_floating_point()]
    dtype = floating[0].dtype if floating else (
        example_input.dtype if isinstance(example_input, torch.Tensor) and example_input.is_floating_point()
        else torch.get_default_dtype())
    ndim = example_input.dim() if example_input is not None else 3
    tdim = adapter.resolve_time_dim(time_dim, ndim)
    if example_input is not None and adapter.batch_dim(tdim, ndim) is None:
        raise InvalidInputError(
            f"vlrnn_torch: example_input of shape {tuple(example_input.shape)} needs a time axis and "
            "a batch axis, e.g. (T, B, features), or (B, T) token ids with time_dim=1; add a batch "
            "axis of 1 with unsqueeze"
        )
    example_batch = BUILTIN_BATCH if example_input is None else example_input.size(1 if tdim == 0 else 0)
    setup = _Setup(cell, adapter, dev, dtype, tdim, batch_size or example_batch, loss_fn or _sum_loss,
                   None if example_input is None else example_input.detach().to(dev),
                   None if example_target is None else example_target.detach().to(dev), state)
    if setup.y0 is not None and setup.y0.dim() < 2:
        raise InvalidInputError(
            f"vlrnn_torch: example_target of shape {tuple(setup.y0.shape)} needs the inputs' time and "
            "batch axes"
        )
    if loss_fn is not None and example_target is None:
        setup.notes.append("loss_fn was profiled with targets=None (no example_target given)")
    return setup


@contextlib.contextmanager
def _untouched(cell: nn.Module, loss_fn: Any, device: torch.device):
    """Run the body, then put the cell (and a loss module) back as they were (NOTE [ Profiling
    leaves the cell as it was ])."""
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


# ---------------------------------------------------------------------------------------------
# Measuring: real calls of the executor (NOTE [ Profiling runs what the executor runs ])
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Point:
    """One (K, B) measured: fastest seconds, largest bytes, and every run's seconds."""

    k: int
    b: int
    advance_runs: list[float] = field(default_factory=list)
    fb_runs: list[float] = field(default_factory=list)
    activation_bytes: float = 0.0  # measured (CUDA allocator or CPU resident set)
    transient_bytes: float = 0.0
    accounted_bytes: float = 0.0  # CPU: saved-tensor accounting

    @property
    def advance_seconds(self) -> float:
        return min(self.advance_runs)

    @property
    def fb_seconds(self) -> float:
        return min(self.fb_runs)

    def spread(self) -> float:
        """How far the fastest `REPEATS` runs lie apart (NOTE [ Noisy profiles ])."""
        worst = 0.0
        for runs in (self.advance_runs, self.fb_runs):
            best = sorted(runs)[:REPEATS]
            if best and best[0] > 0:
                worst = max(worst, best[-1] / best[0] - 1)
        return worst


class _Meter:
    """The observer of a profiling call: times the block without grad and the typical block with
    grad, and measures the memory each takes."""

    def __init__(self, setup: _Setup, resident: ResidentPeak | None) -> None:
        self.setup = setup
        self.resident = resident
        self.seconds: dict[str, float] = {}
        self.bytes: dict[str, float] = {}
        self._base = 0
        self._reserved = 0
        self._t0 = 0.0

    @staticmethod
    def _which(action: Any) -> str | None:
        if isinstance(action, Advance) and action.start == 0:
            return "advance"
        if isinstance(action, ForwardBackward) and action.block == 0:
            return "fb"
        return None

    def __call__(self, action: Any, when: str) -> None:
        which = self._which(action)
        if which is None:
            return
        self.setup.sync()
        if when == "before":
            self._base = self._start()
            self._t0 = time.perf_counter()
        else:
            self.seconds[which] = time.perf_counter() - self._t0
            self.bytes[which] = self._peak() - self._base

    def _start(self) -> int:
        if self.setup.cuda:
            # NOTE [ GPU memory as reserved ]: from an empty cache, what the block makes the
            # allocator reserve (segments, rounding, fragmentation, cuDNN/cuBLAS workspaces)
            # shows besides what it allocates.
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.setup.device)
            self._reserved = torch.cuda.memory_reserved(self.setup.device)
            return torch.cuda.memory_allocated(self.setup.device)
        return self.resident.start() if self.resident is not None else 0

    def _peak(self) -> int:
        if self.setup.cuda:
            allocated = torch.cuda.max_memory_allocated(self.setup.device)
            reserved_growth = torch.cuda.max_memory_reserved(self.setup.device) - self._reserved
            return max(allocated, self._base + reserved_growth)
        return self.resident.peak() if self.resident is not None else 0


def _data(setup: _Setup, k: int, b: int, blocks: int = 2) -> tuple[Any, Any, Any]:
    """Inputs, targets and the initial state of a call over ``blocks`` blocks of ``k`` steps."""
    return setup.inputs(blocks * k, b), setup.targets(blocks * k, b), setup.state(b)


def _call(setup: _Setup, k: int, b: int, blocks: int = 2, observer: Any = None, data: Any = None,
          overlap: bool = False) -> None:
    """One call of the executor over ``blocks`` blocks of ``k`` steps at batch ``b``."""
    x, y, state = _data(setup, k, b, blocks) if data is None else data
    schedule = Schedule("blocks", seq_len=blocks * k, block_length=k)
    view = make_view(setup.adapter, x, y, setup.time_dim)
    with torch.enable_grad():
        run_schedule(schedule, setup.adapter, view, state=state, loss_fn=setup.loss_fn, final_loss_fn=None,
                     verify=False, keep=False, observer=observer, overlap=overlap)


def _time_point(setup: _Setup, point: _Point, resident: ResidentPeak | None, repeats: int) -> None:
    """Time (and measure) ``point`` ``repeats`` more times."""
    for _ in range(repeats):
        meter = _Meter(setup, resident)
        _call(setup, point.k, point.b, observer=meter)
        point.advance_runs.append(meter.seconds["advance"])
        point.fb_runs.append(meter.seconds["fb"])
        point.transient_bytes = max(point.transient_bytes, meter.bytes["advance"])
        point.activation_bytes = max(point.activation_bytes, meter.bytes["fb"])


def _measure_point(setup: _Setup, k: int, b: int, resident: ResidentPeak | None) -> _Point:
    """Time one point, again where its runs disagree (NOTE [ Noisy profiles ])."""
    point = _Point(k, b)
    _time_point(setup, point, resident, REPEATS)
    extra = 0
    while point.spread() > TIMING_SPREAD_LIMIT and extra < EXTRA_REPEATS:
        _time_point(setup, point, resident, 1)
        extra += 1
    return point


def _overlap_ratio(setup: _Setup, point: _Point) -> float:
    """A block's seconds with grad beside the recomputation of the one before it, over its
    seconds alone (NOTE [ Measuring overlap ])."""
    few, many = OVERLAP_BLOCKS
    data = {n: _data(setup, point.k, point.b, n) for n in OVERLAP_BLOCKS}
    runs: dict[tuple[int, bool], list[float]] = {(n, o): [] for n in OVERLAP_BLOCKS for o in (False, True)}
    for _ in range(REPEATS + 1):
        for n, overlap in runs:
            setup.sync()
            started = time.perf_counter()
            _call(setup, point.k, point.b, n, data=data[n], overlap=overlap)
            setup.sync()
            runs[n, overlap].append(time.perf_counter() - started)
    best = {key: min(times) for key, times in runs.items()}
    # What a call saves grows by one overlapped block per block; the difference between the two
    # block counts leaves out what overlap costs once per call (its worker thread).
    saved = ((best[many, False] - best[many, True]) - (best[few, False] - best[few, True])) / (many - few)
    # Overlap hides at most the shorter of the two parts it runs together: the recomputation
    # (about a block's seconds without grad) or the backward.
    least = 1 - min(point.advance_seconds, point.fb_seconds / 2) / point.fb_seconds
    return max(least, 1 - saved / point.fb_seconds)


def _accounted(setup: _Setup, k: int, b: int) -> int:
    """Bytes of the unique storages the typical block saves for backward (NOTE [ CPU memory ]),
    storages that existed before it excluded."""
    seen: dict[int, int] = {}
    existing: set[int] = set()
    counting = {"on": False}

    def observe(action: Any, when: str) -> None:
        if _Meter._which(action) == "fb":
            counting["on"] = when == "before"

    def pack(t: torch.Tensor) -> torch.Tensor:
        if counting["on"]:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in existing and ptr != 0:
                seen[ptr] = storage.nbytes()
        return t

    data = _data(setup, k, b)
    for t in [*setup.cell.parameters(), *_tensors(data)]:
        existing.add(t.untyped_storage().data_ptr())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _call(setup, k, b, observer=observe, data=data)
    return sum(seen.values())


def _resident_growth(setup: _Setup, k: int, b: int, resident: ResidentPeak) -> tuple[float, float]:
    """Peak resident growth of four blocks (three advanced without grad first, as the executor
    does) while the no-grad pass runs, and while the last block runs with grad, its held states and
    gradients taken off (NOTE [ CPU memory ])."""
    peaks: dict[str, float] = {}
    base = {"at": 0}

    def observe(action: Any, when: str) -> None:
        if isinstance(action, Advance) and when == "before":
            base["at"] = resident.start()
        elif isinstance(action, Advance):
            peaks["advance"] = resident.peak() - base["at"]
        elif isinstance(action, ForwardBackward) and action.block == 3 and when == "after":
            peaks["fb"] = resident.peak() - base["at"]

    _call(setup, k, b, blocks=4, observer=observe)
    state_bytes = _nbytes(setup.state(b))
    grads = sum(p.numel() * p.element_size() for p in setup.cell.parameters() if p.requires_grad)
    return peaks["advance"], peaks["fb"] - grads - 4 * state_bytes


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in flatten(obj, packed_leaves=True)[0] if isinstance(t, torch.Tensor)]


def _nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


@dataclass
class _Measured:
    """Everything `_measure` found."""

    points: list[_Point]
    scale_points: list[_Point]
    state_bytes: float
    output_bytes: float
    input_bytes: float
    target_bytes: float
    anchor: _Point | None = None
    calibration: _Point | None = None
    overlap_ratio: float | None = None


def _measure(setup: _Setup, resident: ResidentPeak | None) -> _Measured:
    """Sizes per sequence, the time and memory grid, and (CPU) the resident-set calibration."""
    b_low, b_high = setup.batches()
    with torch.no_grad():
        x, state, y = setup.inputs(2, b_high), setup.state(b_high), setup.targets(2, b_high)
        outputs, out_state = setup.adapter.run(x, state, setup.time_dim)
    sizes = dict(state_bytes=_nbytes(out_state) / b_high, output_bytes=_nbytes(outputs) / (2 * b_high),
                 input_bytes=_nbytes(x) / (2 * b_high), target_bytes=0.0 if y is None else _nbytes(y) / (2 * b_high))
    del x, state, y, outputs, out_state
    _call(setup, BLOCK_LENGTHS[0], b_low)  # warm-up: lazy initialisation, thread pools
    points = [_measure_point(setup, k, b, resident) for b in (b_low, b_high) for k in BLOCK_LENGTHS]
    if resident is not None:
        for point in points:
            point.accounted_bytes = _accounted(setup, point.k, point.b)
    scale_points = []
    for k in SCALE_LENGTHS:
        point = _measure_point(setup, k, b_high, None)
        scale_points.append(point)
        if point.fb_seconds > SCALE_TIME_LIMIT:
            break
    measured = _Measured(points, scale_points, **sizes)
    # NOTE [ Measuring overlap ]: the longest block of the grid at the full batch that stays short;
    # not where the executor never overlaps (buffers, DDP, a compiled cell)
    adapter = setup.adapter
    if can_overlap(adapter, BufferReplay(adapter.inner)):
        full_batch = points[len(BLOCK_LENGTHS):]
        measured.overlap_ratio = _overlap_ratio(
            setup, max((p for p in full_batch if p.fb_seconds <= OVERLAP_TIME_LIMIT), default=full_batch[0], key=lambda p: p.k))
    if resident is not None and resident.available:
        k_high = BLOCK_LENGTHS[-1]
        for name, k in (("anchor", k_high), ("calibration", 2 * k_high)):
            point = _Point(k, b_high)
            point.transient_bytes, point.activation_bytes = _resident_growth(setup, k, b_high, resident)
            setattr(measured, name, point)
    return measured


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


def _secant_line(p: _Point, q: _Point, attr: str) -> tuple[float, float]:
    """``y = a * x + c`` with the slope ``a >= 0`` through ``p`` and ``q`` (x = steps x sequences)
    and ``c >= 0`` raised so that the line lies on or above both."""
    dx = q.k * q.b - p.k * p.b
    a = max((getattr(q, attr) - getattr(p, attr)) / dx, 0.0)
    c = max(max(getattr(r, attr) - a * r.k * r.b for r in (p, q)), 0.0)
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


@dataclass(frozen=True)
class _TimeFit:
    """Seconds of a block = ``K * s(K) * (per_step + per_sample * B) + overhead``, without grad
    (``advance``) and with grad (``fb``): each ``(per_step, per_sample, overhead)``."""

    advance: tuple[float, float, float]
    fb: tuple[float, float, float]
    scale: tuple[tuple[int, float, float], ...]
    spread: float


def _fit_time(measured: _Measured) -> _TimeFit:
    """The linear fit over the grid, and the scale factors at the longer blocks (NOTE [ Fitting
    the time per block ])."""
    points, full = measured.points, measured.points[len(BLOCK_LENGTHS):] + measured.scale_points
    fits = []
    for seconds in (lambda p: p.advance_seconds, lambda p: p.fb_seconds):
        overhead = _nonnegative_lstsq([(p.k, 1.0) for p in full], [seconds(p) for p in full])[1]
        per_step = _nonnegative_lstsq([(p.k, p.k * p.b) for p in points], [seconds(p) - overhead for p in points])
        fits.append((per_step[0], per_step[1], overhead))
    adv, fb = fits
    scale = []
    for p in full:
        linear_adv = p.k * (adv[0] + adv[1] * p.b)
        linear_fb = p.k * (fb[0] + fb[1] * p.b)
        if linear_adv > 0 and linear_fb > 0:
            scale.append((p.k, max(p.advance_seconds - adv[2], 1e-12) / linear_adv,
                          max(p.fb_seconds - fb[2], 1e-12) / linear_fb))
    spread = max(p.spread() for p in points + measured.scale_points)
    return _TimeFit(adv, fb, tuple(scale), spread)


@dataclass(frozen=True)
class _MemoryFit:
    """Bytes of a block in flight, with and without grad: ``slope * K * B + fixed``."""

    activation: tuple[float, float]
    transient: tuple[float, float]
    measured_by: str
    notes: tuple[str, ...] = ()


def _fit_memory_cuda(measured: _Measured) -> _MemoryFit:
    xs = [p.k * p.b for p in measured.points]
    return _MemoryFit(_upper_line(xs, [p.activation_bytes for p in measured.points]),
                      _upper_line(xs, [p.transient_bytes for p in measured.points]), "cuda+nvml")


def _fit_memory_cpu(measured: _Measured, resident: ResidentPeak) -> _MemoryFit:
    """NOTE [ CPU memory ]: the accounting, calibrated by the resident set where it can be."""
    xs = [p.k * p.b for p in measured.points]
    accounted = _upper_line(xs, [p.accounted_bytes for p in measured.points])
    anchor, calibration = measured.anchor, measured.calibration
    notes = []
    if calibration is not None and calibration.activation_bytes >= MIN_MEASURABLE_GROWTH:
        measured_slope, _ = _secant_line(anchor, calibration, "activation_bytes")
        # The accounting is a floor for the slope: a warm heap in this process reuses pages that
        # the executor's run in a fresh process must fault in.
        slope = max(measured_slope, accounted[0])
        fixed = max(0.0, max(p.activation_bytes - slope * p.k * p.b for p in (anchor, calibration)))
        factor = measured_slope / accounted[0] if accounted[0] > 0 else float("nan")
        measured_by = (f"cpu: the peak resident set of real blocks (its growth per step and sequence "
                       f"{factor:.2f}x what autograd saves), never below what autograd saves")
        notes.append(f"saved-tensor accounting {format_bytes(accounted[0])} per step and sequence; peak "
                     f"resident growth {format_bytes(measured_slope)} per step and sequence after blocks "
                     f"without grad; kept {format_bytes(slope)} + {format_bytes(fixed)} per block")
        activation = (slope, fixed)
    else:
        activation = accounted
        if calibration is None:
            why = resident.why_not or "no resident-set measure"
        else:
            why = f"peak resident growth of {format_bytes(calibration.activation_bytes)} too small to calibrate"
        measured_by = f"cpu: saved-tensor accounting, uncalibrated ({why})"
    if calibration is not None and calibration.transient_bytes >= MIN_MEASURABLE_GROWTH:
        transient = _secant_line(anchor, calibration, "transient_bytes")
    else:
        transient = (measured.output_bytes, 0.0)  # too small to resolve: the outputs, as a floor
    notes.append("each stored state also keeps the CPU RNG state")
    return _MemoryFit(activation, transient, measured_by, tuple(notes))


# ---------------------------------------------------------------------------------------------
# The profiler
# ---------------------------------------------------------------------------------------------


def _short(cell: nn.Module) -> str:
    text = repr(cell).splitlines()
    first = text[0] if len(text) == 1 else f"{type(cell).__name__}(...)"
    return first if len(first) <= 100 else first[:97] + "..."


def _device_info(setup: _Setup) -> dict[str, Any]:
    """The device's name and memory, and this process's footprint and allocator (NOTE [ GPU
    memory: the allocator's view, NVML for the rest ] in `vlrnn_torch.devices`)."""
    if setup.cuda:
        total, free, reserved, nvml = gpu_memory(setup.device)
        if isinstance(nvml, NvmlInfo):
            if nvml.process_bytes is None:
                setup.notes.append("NVML lists no footprint for this process (a container's PID namespace?)")
            return dict(device_name=nvml.name, device_total_bytes=total, device_free_bytes=free,
                        process_bytes=nvml.process_bytes, allocator_reserved_bytes=reserved)
        setup.notes.append(f"{nvml}; this process's footprint is unknown")
        return dict(device_name=torch.cuda.get_device_name(setup.device), device_total_bytes=total,
                    device_free_bytes=free, process_bytes=None, allocator_reserved_bytes=reserved)
    nvml = query_nvml(0)
    if isinstance(nvml, NvmlInfo):
        setup.notes.append(f"measured on the CPU although NVML sees a {nvml.name}; move the cell with "
                           "cell.to('cuda') to plan for the GPU")
    else:
        setup.notes.append(f"{nvml}: no GPU in use, the CPU path was taken")
    total, free = host_memory()  # a share ("80%") on CPU: of the memory the kernel says is available
    return dict(device_name=cpu_name(), device_total_bytes=total, device_free_bytes=free)


def _describe(setup: _Setup, measured: _Measured, timing: _TimeFit, memory: _MemoryFit, device: dict[str, Any],
              started: float, loss_included: bool) -> CellProfile:
    """The `CellProfile` of what was measured and fitted."""
    params = [p for p in setup.cell.parameters() if p.requires_grad]
    if isinstance(setup.loss_fn, nn.Module):
        params += [p for p in setup.loss_fn.parameters() if p.requires_grad]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    # Kept with every stored state: the cell's buffers (NOTE [ Buffer replay ]) and, on the CPU
    # (where the generator's state lives with the data), the RNG state.
    state_fixed = float(BufferReplay(setup.adapter.inner).nbytes()) + (
        0.0 if setup.cuda else float(torch.get_rng_state().numel()))
    notes = list(setup.notes) + list(memory.notes)
    if timing.spread > TIMING_SPREAD_LIMIT:
        notes.append(f"timings unreliable: repeated runs of one block differed by up to {100 * timing.spread:.0f}%")
    return CellProfile(
        device=str(setup.device),
        dtype=str(setup.dtype).removeprefix("torch."),
        cell=_short(setup.cell),
        time_dim=setup.time_dim,
        parameter_bytes=param_bytes,
        gradient_bytes=param_bytes,
        state_bytes_per_sample=measured.state_bytes,
        state_bytes_fixed=state_fixed,
        input_bytes_per_step=measured.input_bytes,
        target_bytes_per_step=measured.target_bytes,
        activation_bytes_per_step=memory.activation[0],
        activation_bytes_fixed=memory.activation[1],
        transient_bytes_per_step=memory.transient[0],
        transient_bytes_fixed=memory.transient[1],
        advance_seconds_per_step=timing.advance[0],
        advance_seconds_per_step_per_sample=timing.advance[1],
        fb_seconds_per_step=timing.fb[0],
        fb_seconds_per_step_per_sample=timing.fb[1],
        block_overhead_seconds=timing.fb[2],
        advance_overhead_seconds=timing.advance[2],
        step_time_scale=timing.scale,
        timing_spread=timing.spread,
        overlap_ratio=measured.overlap_ratio,
        allocator_overhead_bytes=0 if setup.cuda else CPU_ALLOCATOR_OVERHEAD_BYTES,
        loss_included=loss_included,
        measured_by=memory.measured_by,
        profile_seconds=time.perf_counter() - started,
        notes=tuple(notes),
        **device,
    )


def profile_cell(
    cell: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    state: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    example_target: torch.Tensor | None = None,
    device: Any = None,
    time_dim: int | None = None,
    batch_size: int | None = None,
) -> CellProfile:
    """Measure ``cell``'s memory and time per step on its device.

    Runs real calls of the executor (NOTE [ Profiling runs what the executor runs ]) at 16 and 64
    steps per block, at the batch that will run and a quarter of it, and times longer blocks at
    the full batch (NOTE [ Profile at the shapes that will run ]); fits the `CellProfile` model
    to them. The cell is left as it was found (NOTE [ Profiling leaves the cell as it was ]).

    Parameters
    ----------
    cell : nn.Module
        ``nn.RNN``/``nn.LSTM``/``nn.GRU``, ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell`` (example
        inputs are made from ``input_size``), or any module ``forward(x_block, state) ->
        (outputs, state)`` (or a `StepCell`), which needs ``example_input``.
    example_input : tensor, optional
        A block of inputs, with the time axis at ``time_dim`` and the batch axis next to it
        (token ids ``(B, T)`` with ``time_dim=1`` too); cut or tiled to the profiled block lengths
        and batch sizes.
    state : optional
        An initial state for ``example_input``'s batch; zeros (built-in cells) or the cell's own
        default (None) otherwise.
    loss_fn : callable, optional
        ``loss_fn(outputs_block, targets_block) -> scalar``, profiled with the block (the sum of
        the outputs otherwise).
    example_target : tensor, optional
        Targets laid out like ``example_input`` (time and batch axes), for ``loss_fn``.
    device : str or torch.device, optional
        Must be where the cell's parameters are (the default); move the cell first to profile it
        elsewhere.
    time_dim : int, optional
        The inputs' time axis, where the cell does not declare it (NOTE [ The time axis ]).
    batch_size : int, optional
        The batch that will run; the example's batch (or 32 for built-in cells) otherwise.

    Returns
    -------
    CellProfile

    Raises
    ------
    InvalidInputError
        A custom cell without ``example_input``, a bidirectional cell, a ``device`` other than the
        cell's, a ``loss_fn`` that does not return a scalar, an undeclared time axis.

    Examples
    --------
    >>> import torch
    >>> p = profile_cell(torch.nn.GRU(8, 16, dtype=torch.float32))
    >>> p.state_bytes_per_sample, p.input_bytes_per_step, p.parameter_bytes == p.gradient_bytes
    (64.0, 32.0, True)
    """
    started = time.perf_counter()
    setup = _setup(cell, example_input, state, loss_fn, example_target, device, time_dim, batch_size)
    resident = None if setup.cuda else ResidentPeak()
    with _untouched(cell, loss_fn, setup.device):
        measured = _measure(setup, resident)
    timing = _fit_time(measured)
    memory = _fit_memory_cuda(measured) if setup.cuda else _fit_memory_cpu(measured, resident)
    return _describe(setup, measured, timing, memory, _device_info(setup), started, loss_fn is not None)
