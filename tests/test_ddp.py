"""DistributedDataParallel over two processes (gloo, CPU): every rank ends a training step with
what plain DDP gives, for gradient accumulation across calls and for DDP's options."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    import vlrnn_planner as vp

    torch.set_default_dtype(torch.float64)
    T, B, F, H = 12, 3, 4, 5


    class Seq(nn.Module):
        # A sequence module with a per-step BatchNorm (buffers) and, for find_unused_parameters
        # (which plain DDP needs for it), a parameter it never uses.
        time_dim = 0

        def __init__(self, unused):
            super().__init__()
            self.norm = nn.BatchNorm1d(F)
            self.rnn = nn.GRU(F, H)
            if unused:
                self.unused = nn.Linear(2, 2)

        def forward(self, x, h):
            x = torch.stack([self.norm(x_t) for x_t in x.unbind(0)])
            return self.rnn(x, h)


    def loss_fn(out, y):
        return ((out - y) ** 2).sum()


    def main(rank, world, path, options):
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
        torch.manual_seed(0)
        unused = options.get("find_unused_parameters", False)
        ours, plain = Seq(unused), Seq(unused)
        plain.load_state_dict(ours.state_dict())
        # Buffers differ between ranks, so that DDP's broadcast from rank 0 matters.
        for m in (ours, plain):
            m.norm.running_mean.fill_(float(rank))
        ddp_ours, ddp_plain = DDP(ours, **options), DDP(plain, **options)
        torch.manual_seed(100 + rank)  # each rank its own data
        steps = [(torch.randn(T, B, F), torch.randn(T, B, H), sync) for sync in (True, False, True)]
        report = {}
        for i, (x, y, sync) in enumerate(steps):
            for which, ddp in (("plain", ddp_plain), ("ours", ddp_ours)):
                context = ddp.no_sync() if not sync else torch.enable_grad()
                with context:
                    if which == "plain":
                        out, _ = ddp(x, None)
                        loss_fn(out, y).backward()
                    else:
                        vp.backward(vp.fixed_plan(5), ddp, x, targets=y, loss_fn=loss_fn)
            for (name, a), b in zip(ours.named_parameters(), plain.parameters()):
                if (a.grad is None) != (b.grad is None):
                    report[f"step {i} {name}"] = "grad present in one only"
                elif a.grad is not None:
                    diff = float((a.grad - b.grad).abs().max())
                    if diff > 1e-10:
                        report[f"step {i} {name}"] = diff
            for (name, a), b in zip(ours.named_buffers(), plain.buffers()):
                if not torch.allclose(a.double(), b.double(), atol=1e-12, rtol=0):
                    report[f"step {i} buffer {name}"] = float((a.double() - b.double()).abs().max())
        # Every rank holds the same synchronised gradients.
        grads = torch.cat([p.grad.flatten() for p in ours.parameters() if p.grad is not None])
        gathered = [torch.empty_like(grads) for _ in range(world)]
        dist.all_gather(gathered, grads)
        if not all(torch.allclose(g, gathered[0], atol=1e-12, rtol=0) for g in gathered):
            report["ranks"] = "gradients differ between ranks"
        print(json.dumps(report), flush=True)
        dist.destroy_process_group()
        # gloo's threads sometimes abort the interpreter's teardown ("terminate called without an
        # active exception", about 1 run in 20 here): the report is out, so skip the teardown.
        os._exit(0)


    if __name__ == "__main__":
        rank, world, path, options = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
        main(rank, world, path, options)
    """
)


def _run(tmp_path, options):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), "2", str(store), json.dumps(options)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"find_unused_parameters": True},
        {"gradient_as_bucket_view": True},
        {"broadcast_buffers": False},
    ],
    ids=lambda o: ",".join(o) or "default",
)
def test_two_ranks_match_plain_ddp_with_accumulation_across_calls(tmp_path, options):
    reports = _run(tmp_path, options)
    assert reports == [{}, {}], reports


def test_options_block_bptt_cannot_keep_are_refused_before_any_work():
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import vlrnn_planner as vp

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        gru = nn.GRU(3, 4)
        x = torch.randn(10, 2, 3)
        with pytest.raises(vp.InvalidInputError, match="static_graph=False"):
            vp.backward(vp.fixed_plan(4), DDP(gru, static_graph=True), x, loss_fn=lambda o, t: o.sum())
        with pytest.raises(vp.InvalidInputError, match="wraps a step cell"):
            vp.backward(vp.fixed_plan(4), DDP(nn.GRUCell(3, 4)), x, loss_fn=lambda o, t: o.sum())
        hooked = DDP(nn.GRU(3, 4))
        hooked.module.weight_hh_l0.register_hook(lambda g: g * 2)
        with pytest.raises(vp.UnsupportedHookError, match="after the all-reduce"):
            vp.backward(vp.fixed_plan(4), hooked, x, loss_fn=lambda o, t: o.sum())
        assert all(p.grad is None for p in gru.parameters())
    finally:
        dist.destroy_process_group()
