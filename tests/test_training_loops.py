"""The executor inside real training loops: mixed precision (autocast, GradScaler) and
DistributedDataParallel (one gradient all-reduce per call)."""

from __future__ import annotations

import math
import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
from conftest import assert_grads_close, grads_of, packed_reference, padded, sq_loss
from torch.nn.utils.rnn import pack_padded_sequence
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import vlrnn_planner as vp
import vlrnn_torch

T, B, F, H = 20, 2, 3, 4


class FixedScaler:
    """The part of torch.amp.GradScaler the executor uses: scale(loss)."""

    def __init__(self, scale: float) -> None:
        self.factor = scale

    def scale(self, loss):
        return loss * self.factor


def test_scaler_scales_every_block_loss():
    cell = nn.LSTM(F, H, 2)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    out, _ = cell(x)
    loss = sq_loss(out, y)
    (loss * 1024.0).backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    result = vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss, scaler=FixedScaler(1024.0))
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)  # unscaled
    assert_grads_close(list(cell.parameters()), expected, atol=1e-7)


def test_torch_grad_scaler_is_accepted():
    cell = nn.GRU(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    out, _ = cell(x)
    scaler.scale(sq_loss(out, y)).backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss, scaler=scaler)
    assert_grads_close(list(cell.parameters()), expected, atol=1e-8)


def test_bad_scaler():
    with pytest.raises(vp.InvalidTypeError, match="scaler must have a scale"):
        vp.backward(vp.fixed_plan(2), nn.GRU(F, H), torch.randn(T, B, F), loss_fn=lambda o, t: o.sum(), scaler=2.0)


class Elman(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(F, H)
        self.rec = nn.Linear(H, H)

    def forward(self, x_t, h):
        h = torch.tanh(self.inp(x_t) + self.rec(h))
        return h, h


def test_autocast_applies_to_both_passes():
    """Under the caller's bfloat16 autocast, blocks give what plain BPTT under autocast gives."""
    # A step cell of Linear layers (autocast casts them to bfloat16 on any CPU).
    cell = vlrnn_torch.StepCell(Elman()).float()
    x, y = torch.randn(T, B, F, dtype=torch.float32), torch.randn(T, B, H, dtype=torch.float32)

    def loss_fn(o, t):
        return ((o.float() - t) ** 2).sum()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, outs = torch.zeros(B, H, dtype=torch.float32), []
        for x_t in x:
            o, h = cell(x_t, h)
            outs.append(o)
        loss = loss_fn(torch.stack(outs), y)
    loss.backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=loss_fn, state=torch.zeros(B, H, dtype=torch.float32))
    # bfloat16 has 8 bits of mantissa: the block decomposition reassociates sums in bf16.
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-2)
    for p, g in zip(cell.parameters(), expected):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, g, atol=5e-2 * g.abs().max().item(), rtol=0)


def test_ddp_all_reduces_once_per_call():
    """A one-process gloo group: DDP gradients equal plain BPTT, with one all-reduce round per call."""
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            torch.manual_seed(0)
            inner = nn.LSTM(F, H, 2)
            plain = nn.LSTM(F, H, 2)
            plain.load_state_dict(inner.state_dict())
            ddp = DDP(inner, bucket_cap_mb=1000)  # one bucket: one all-reduce per sync
            rounds = []

            def counting_hook(state, bucket):
                rounds.append(bucket.index())
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut

            ddp.register_comm_hook(None, counting_hook)
            x, y = torch.randn(T, B, F), torch.randn(T, B, H)
            out, _ = plain(x)
            sq_loss(out, y).backward()
            expected = grads_of(list(plain.parameters()))
            result = vp.backward(vp.fixed_plan(4), ddp, x, targets=y, loss_fn=sq_loss)
            assert result.schedule.num_blocks == 5
            assert_grads_close(list(inner.parameters()), expected)
            assert rounds == [0]  # one bucket all-reduced once, not once per block
        finally:
            dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pinned", [True, False])
def test_inputs_on_the_host_cell_on_the_gpu(pinned):
    """Blocks are copied to the device ahead of their use (NOTE [ Inputs on the host ]), from the
    caller's pinned memory or a pinned copy; gradients as plain BPTT's on the device."""
    cell = nn.LSTM(F, H, 2).cuda()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    if pinned:
        x, y = x.pin_memory(), y.pin_memory()
    out, _ = cell(x.cuda())
    sq_loss(out, y.cuda()).backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    result = vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss)
    assert result.state[0].is_cuda
    assert_grads_close(list(cell.parameters()), expected)


def test_progress_is_reported_after_each_block():
    cell = nn.GRU(F, H)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    seen = []
    result = vp.backward(
        vp.fixed_plan(6, checkpoints=2), cell, x, targets=y, loss_fn=sq_loss,
        progress=lambda done, total: seen.append((done, total)),
    )
    n = result.schedule.num_blocks
    assert seen == [(i, n) for i in range(1, n + 1)]
    with pytest.raises(vp.InvalidTypeError, match="progress must be True .* or callable"):
        vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss, progress="tqdm")


class OOMAbove(nn.Module):
    """An RNN that 'runs out of memory' on any block longer than ``limit`` steps run with grad
    (whose activations are what fills the memory)."""

    time_dim = 0

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(F, H)
        self.limit = limit

    def forward(self, x, h):
        if x.size(0) > self.limit and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.rnn(x, h)


def _oom_plan():
    from vlrnn_planner.planner import plan_for_profile

    profile = vp.CellProfile(state_bytes_per_sample=64.0, activation_bytes_per_step=1000.0,
                             fb_seconds_per_step=1e-4, advance_seconds_per_step=4e-5)
    return plan_for_profile(profile, "1MB")


def test_out_of_memory_is_retried_with_a_smaller_schedule():
    T2 = 200
    cell = OOMAbove(limit=120)
    x, y = torch.randn(T2, B, F), torch.randn(T2, B, H)
    out, _ = cell.rnn(x)
    sq_loss(out, y).backward()
    expected = grads_of(list(cell.parameters()))
    cell.zero_grad(set_to_none=True)
    plan = _oom_plan()
    assert plan.schedule(T2, B).strategy == "store_all"  # the prediction says it all fits
    with pytest.warns(RuntimeWarning, match="out of memory with store_all") as caught:
        result = vp.backward(plan, cell, x, targets=y, loss_fn=sq_loss)
    assert result.schedule.block_length <= 120 and len(caught) >= 1
    assert_grads_close(list(cell.parameters()), expected)  # counted once, not once per try
    # The plan keeps the schedule that fitted: the next call runs it without a retry.
    assert plan.schedule(T2, B) is result.schedule
    cell.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vp.backward(plan, cell, x, targets=y, loss_fn=sq_loss)
    assert_grads_close(list(cell.parameters()), expected)


def test_out_of_memory_is_not_retried_without_a_budget():
    cell = OOMAbove(limit=3)
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    with pytest.raises(torch.OutOfMemoryError):
        vp.backward(vp.fixed_plan(6), cell, x, targets=y, loss_fn=sq_loss)
    assert all(p.grad is None for p in cell.parameters())
    # With a budget plan that cannot shrink enough, the last error propagates, grads untouched.
    hopeless = OOMAbove(limit=0)
    with pytest.warns(RuntimeWarning, match="retrying") as caught, pytest.raises(torch.OutOfMemoryError):
        vp.backward(_oom_plan(), hopeless, x, targets=y, loss_fn=sq_loss)
    assert len(caught) == vp.OUT_OF_MEMORY_RETRIES
    assert all(p.grad is None for p in hopeless.parameters())


def test_cpu_allocation_failure_counts_as_out_of_memory():
    backend = vlrnn_torch.TorchBackend()
    assert backend.is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes"))
    assert backend.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not backend.is_out_of_memory(RuntimeError("size mismatch"))


def _dropout_reference(cell, x, y, block_length, device):
    """The same blocks run once with grad, the graph kept, each block entered with its RNG state
    set again (which is what makes cuDNN draw its dropout state afresh: NOTE [ RNG replay ])."""
    state, loss = None, 0.0
    for start in range(0, x.size(0), block_length):
        if device.type == "cuda":
            torch.cuda.set_rng_state(torch.cuda.get_rng_state(device), device)
        else:
            torch.set_rng_state(torch.get_rng_state())
        out, state = cell(x[start : start + block_length], state)
        loss = loss + sq_loss(out, y[start : start + block_length])
    loss.backward()
    return loss.item()


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]),
    ],
)
def test_dropout_masks_of_blocks_inside_an_advance_match_their_recomputation(device):
    """On cuDNN the masks come from a dropout state that setting the generator reseeds; both passes
    enter every block alike, so a block advanced inside a longer no-grad run is recomputed with
    its own masks (blocks of 4 steps, an advance over several blocks)."""
    device = torch.device(device)
    cell = nn.LSTM(F, H, 3, dropout=0.5).to(device)
    x, y = torch.randn(T, B, F, device=device), torch.randn(T, B, H, device=device)
    params = list(cell.parameters())
    torch.manual_seed(11)
    loss = _dropout_reference(cell, x, y, 4, device)
    expected = grads_of(params)
    cell.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    result = vp.backward(vp.fixed_plan(4), cell, x, targets=y, loss_fn=sq_loss)
    assert math.isclose(result.loss, loss, rel_tol=1e-9)
    assert_grads_close(params, expected, atol=1e-8)


def test_progress_true_draws_a_bar_over_blocks(monkeypatch):
    drawn = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0
            drawn.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    cell = nn.GRU(F, H)
    result = vp.backward(vp.fixed_plan(6), cell, torch.randn(T, B, F), loss_fn=lambda o, t: o.sum(), progress=True)
    (bar,) = drawn
    assert bar.total == bar.n == result.schedule.num_blocks and bar.closed


@pytest.mark.parametrize("packed", [False, True])
def test_blocks_longer_than_cudnn_takes_run_in_pieces(monkeypatch, packed):
    """NOTE [ cuDNN sequence length ]: with the limit lowered to 4 steps (and taken to apply on
    the CPU), a block of 9 and plain BPTT's one block run in pieces, with the same gradients."""
    import vlrnn_torch.cells as cells

    calls = []
    monkeypatch.setattr(cells, "_step_limit", lambda x: 4)
    cell = nn.LSTM(F, H, 2)
    original = cell.forward
    monkeypatch.setattr(cell, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    lengths = [T, T - 5, 9]
    if packed:
        x = pack_padded_sequence(padded(lengths, F), lengths)
        y = pack_padded_sequence(padded(lengths, H), lengths)
        loss, _, expected = packed_reference(cell, x, y, None, list(cell.parameters()))
    else:
        x, y = torch.randn(T, B, F), torch.randn(T, B, H)
        out, _ = original(x)
        loss = sq_loss(out, y)
        loss.backward()
        expected = grads_of(list(cell.parameters()))
        cell.zero_grad(set_to_none=True)
        loss = loss.item()
    calls.clear()
    result = vp.backward(vp.fixed_plan(9), cell, x, targets=y, loss_fn=sq_loss)
    assert math.isclose(result.loss, loss, rel_tol=1e-12)
    assert_grads_close(list(cell.parameters()), expected)
    assert len(calls) > result.forward_evaluations  # blocks of 9 steps ran as 3 pieces each


def test_out_of_memory_retry_plans_from_the_measured_headroom(monkeypatch):
    """NOTE [ Out of memory ]: the backend says how much more the failed call could have grown
    by; the new schedule is planned to what was resident plus 9/10 of that."""
    T2 = 200
    cell = OOMAbove(limit=120)
    x, y = torch.randn(T2, B, F), torch.randn(T2, B, H)
    plan = _oom_plan()
    backend = vp.find_backend(cell)
    monkeypatch.setattr(type(backend), "release_memory", lambda self: 60_000)
    failed = plan.schedule(T2, B)
    with pytest.warns(RuntimeWarning, match="the device had room for 60000 bytes more"):
        result = vp.backward(plan, cell, x, targets=y, loss_fn=sq_loss)
    resident = sum(size for name, size in failed.memory_parts if name in ("parameters", "gradients", "inputs", "targets"))
    assert result.schedule.predicted_peak_bytes <= resident + 54_000
    assert result.schedule.budget_bytes == resident + 54_000


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"), False),
        (vp.NoGradientError("vlrnn_torch: ... out of memory ..."), False),
        (ValueError("out of memory"), False),
    ],
)
def test_which_failures_are_out_of_memory(exc, oom):
    assert vp.find_backend(nn.GRU(F, H)).is_out_of_memory(exc) is oom
