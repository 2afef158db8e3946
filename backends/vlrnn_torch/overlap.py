"""Recomputation overlapped with backward: block ``b - 1`` re-run with grad while block ``b`` is
backpropagated.

NOTE [ Overlapping recomputation with backward ]
------------------------------------------------
The re-run with grad of block ``b - 1`` does not depend on the backward of block ``b`` (it starts
from a stored state); only the backward of ``b - 1`` needs the delta that ``b``'s backward leaves.
With overlap on, the executor hands the backward of block ``b`` to a worker thread and re-runs
block ``b - 1`` in the calling thread meanwhile, then waits for both. The forward stays in the
calling thread so that everything that watches or replays a forward (the RNG and loss streams,
NOTE [ Tensors from outside the call ], autocast, which is thread-local) sees it as it would
without overlap; a backward needs none of that. The results are those of the plain order: the
same graphs, the same RNG states, the same gradients, accumulated in the same order.

- On a GPU the two run on two CUDA streams, alternating by block: block ``b``'s forward and
  backward on one, block ``b - 1``'s on the other. Each forward first waits for the stream that
  made the stored states, each backward for the stream that made its delta, and the caller's
  stream waits for both at the end.
- On the CPU the intra-op threads are shared out between the two (half each) while they overlap.

It is off where it cannot be kept exact or cannot pay: buffers (a re-run would restore them while
a backward may read them), a DistributedDataParallel cell (its reducer runs from the backward), a
compiled cell, a profiling call, and a schedule that does not run two blocks with grad in a row.
The planner turns it on where the profile measured that it pays (``Schedule.overlap``), counting
the second block in flight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["Overlap", "Lookahead"]


class Lookahead:
    """Actions one at a time, with a look at the next one that is not a ``Free``.

    Parameters
    ----------
    actions : iterable
        A schedule's actions.
    is_free : callable
        ``is_free(action) -> bool``.
    """

    def __init__(self, actions: Iterable[Any], is_free: Callable[[Any], bool]) -> None:
        self._it: Iterator[Any] = iter(actions)
        self._buffer: list[Any] = []
        self._is_free = is_free

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self) -> Any:
        if self._buffer:
            return self._buffer.pop(0)
        return next(self._it)

    def peek_past_frees(self) -> Any:
        """The next action that is not a ``Free`` (None at the end), without consuming anything."""
        for action in self._buffer:
            if not self._is_free(action):
                return action
        for action in self._it:
            self._buffer.append(action)
            if not self._is_free(action):
                return action
        return None


class Overlap:
    """A worker thread for backward passes and, on a GPU, two streams (NOTE [ Overlapping
    recomputation with backward ]).

    Parameters
    ----------
    device : torch.device or None
        The cell's device.
    """

    def __init__(self, device: torch.device | None) -> None:
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vlrnn-backward")
        self.streams = (torch.cuda.current_stream(device), torch.cuda.Stream(device)) if self.cuda else None
        self.threads = torch.get_num_threads()

    def stream_for(self, block: int) -> Any:
        """The CUDA stream of block ``block`` (alternating), or None on the CPU."""
        return None if self.streams is None else self.streams[block % 2]

    @contextlib.contextmanager
    def forward_on(self, block: int):
        """Run a block's forward on its stream, after the caller's stream (which made the stored
        states); on the CPU, with half the intra-op threads."""
        if self.streams is None:
            torch.set_num_threads(max(1, self.threads // 2))
            yield
            return
        stream = self.stream_for(block)
        stream.wait_stream(self.streams[0])
        with torch.cuda.stream(stream):
            yield

    def backward_elsewhere(self, fn: Callable[[], Any], block: int, delta: list[Any] | None) -> Future:
        """Run ``fn`` (a block's backward) on the worker thread, on the block's stream after the
        stream that made ``delta``."""
        stream = self.stream_for(block)
        if stream is not None and delta is not None:
            other = self.stream_for(block + 1)
            stream.wait_stream(other)
            for d in delta:
                if d is not None:
                    d.record_stream(stream)

        def work() -> Any:
            if stream is None:
                return fn()
            torch.cuda.set_device(self.device)
            with torch.cuda.stream(stream):
                return fn()

        return self.pool.submit(work)

    def finish(self) -> None:
        """After the call (or its failure): the caller's stream waits for both, the threads are as
        they were. Once only."""
        if self.pool is None:
            return
        self.pool.shutdown(wait=True)
        self.pool = None
        if self.streams is not None:
            self.streams[0].wait_stream(self.streams[1])
        torch.set_num_threads(self.threads)
