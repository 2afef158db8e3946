"""Inputs that carry an autograd graph, several input sequences, token ids, tensors taken from
outside the call: the executor against plain BPTT in float64."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close_tree, assert_grads_close, grads_of, sq_loss
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import vlrnn_planner as vp
from vlrnn_torch import SequenceModule, StepCell

T, B, F, H, V = 37, 3, 4, 5, 11


def _reset(params):
    for p in params:
        p.grad = None


def _ce_head(head):
    def loss_fn(out, target):
        return nn.functional.cross_entropy(head(out).flatten(0, -2), target.flatten(), reduction="sum")

    return loss_fn


@pytest.mark.parametrize("block_length", [1, 5, 37])
def test_embedding_output_as_inputs(block_length):
    emb, lstm, head = nn.Embedding(V, F), nn.LSTM(F, H, 2), nn.Linear(H, V)
    tokens, labels = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))
    loss_fn = _ce_head(head)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    out, final = lstm(emb(tokens))
    loss = loss_fn(out, labels)
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    hook_calls = []
    emb.weight.register_hook(lambda g: hook_calls.append(1))
    result = vp.backward(vp.fixed_plan(block_length), lstm, emb(tokens), targets=labels, loss_fn=loss_fn)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_close_tree(result.state, tuple(s.detach() for s in final))
    assert_grads_close(params, expected)
    assert len(hook_calls) == 1  # the embedding's graph is traversed once per call


class _CountingBackward(torch.autograd.Function):
    """The identity, counting how often autograd runs its backward."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _CountingBackward.calls += 1
        return g


@pytest.mark.parametrize("kind", ["mlp", "conv", "scaled_leaf"])
def test_feature_extractor_upstream_is_traversed_once(kind):
    gru = nn.GRU(F, H)
    raw = torch.randn(T, B, 3, requires_grad=kind == "scaled_leaf")
    if kind == "mlp":
        extractor = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, F))
        make = lambda: extractor(raw)  # noqa: E731
    elif kind == "conv":
        extractor = nn.Conv1d(3, F, kernel_size=3, padding=1)  # mixes neighbouring steps
        make = lambda: extractor(raw.permute(1, 2, 0)).permute(2, 0, 1)  # noqa: E731
    else:
        extractor = nn.Module()
        make = lambda: torch.cat([raw * 2.0, raw[..., :1]], -1)  # noqa: E731
    y = torch.randn(T, B, H)
    params = [*extractor.parameters(), *gru.parameters()] + ([raw] if raw.requires_grad else [])
    out, _ = gru(make())
    loss = sq_loss(out, y)
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    _CountingBackward.calls = 0
    result = vp.backward(vp.fixed_plan(6), gru, _CountingBackward.apply(make()), targets=y, loss_fn=sq_loss)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(params, expected)
    assert _CountingBackward.calls == 1


def test_packed_inputs_from_an_embedding():
    lengths = [23, 17, 9, 4]
    emb, lstm = nn.Embedding(V, F), nn.LSTM(F, H)
    tokens = torch.randint(0, V, (max(lengths), len(lengths)))
    y = pack_padded_sequence(torch.randn(max(lengths), len(lengths), H), lengths)
    params = [*emb.parameters(), *lstm.parameters()]
    out, _ = lstm(pack_padded_sequence(emb(tokens), lengths))
    loss = sq_loss(out.data, y.data)
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    packed = pack_padded_sequence(emb(tokens), lengths)
    result = vp.backward(vp.fixed_plan(4), lstm, packed, targets=y, loss_fn=sq_loss)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(params, expected)


def test_targets_with_a_graph():
    gru = nn.GRU(F, H)
    target_net = nn.Linear(F, H)
    x = torch.randn(T, B, F)
    params = [*gru.parameters(), *target_net.parameters()]
    out, _ = gru(x)
    loss = sq_loss(out, target_net(x))
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    vp.backward(vp.fixed_plan(8), gru, x, targets=target_net(x), loss_fn=sq_loss)
    assert_grads_close(params, expected)


class AttentionCell(nn.Module):
    """A step cell attending over a memory it holds as an attribute (an encoder's output)."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(F + H, H)
        self.memory = None

    def forward(self, x_t, h):
        scores = torch.einsum("bh,mbh->mb", h, self.memory).softmax(0)
        context = torch.einsum("mb,mbh->bh", scores, self.memory)
        h = self.cell(torch.cat([x_t, context], -1), h)
        return h, h


def test_encoder_output_captured_by_the_cell_and_the_loss():
    encoder = nn.GRU(F, H)
    cell = AttentionCell()
    source, x, y = torch.randn(9, B, F), torch.randn(T, B, F), torch.randn(T, B, H)
    params = [*encoder.parameters(), *cell.parameters()]

    def run_plain():
        memory, h0 = encoder(source)
        cell.memory = memory
        h, outs = h0[0], []
        for x_t in x:
            o, h = cell(x_t, h)
            outs.append(o)
        out = torch.stack(outs)
        return sq_loss(out, y) + (out * memory.mean(0)).sum()  # the loss reads the memory too

    loss = run_plain()
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    memory, h0 = encoder(source)
    cell.memory = memory
    counted = _CountingBackward.apply(memory)
    cell.memory = counted
    _CountingBackward.calls = 0

    def loss_fn(out, target):
        return sq_loss(out, target) + (out * counted.mean(0)).sum()

    result = vp.backward(vp.fixed_plan(5), StepCell(cell), x, targets=y, loss_fn=loss_fn, state=h0[0])
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(params, expected)
    assert _CountingBackward.calls == 1  # the encoder's graph once, for the state and the memory


class CarriesHidden(nn.Module):
    """Keeps the last state on the module between calls: hidden state block BPTT cannot replay."""

    time_dim = 0

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(F, H)
        self.last = None

    def forward(self, x, h):
        if self.last is not None:
            h = h + 0.1 * self.last
        out, h = self.rnn(x, h)
        self.last = h
        return out, h


@pytest.mark.parametrize(("verify", "error"), [(True, vp.PerCallEffectError), (False, vp.NondeterministicCellError)])
def test_hidden_state_carried_between_blocks_is_refused_and_nothing_changes(verify, error):
    cell = CarriesHidden()
    x, y = torch.randn(T, B, F), torch.randn(T, B, H)
    rng = torch.get_rng_state()
    # The check for effects per call sees it first; without it, the block that reads another
    # block's tensor is refused.
    with pytest.raises(error):
        vp.backward(vp.fixed_plan(5), cell, x, targets=y, loss_fn=sq_loss, state=torch.zeros(1, B, H),
                    verify=verify)
    assert all(p.grad is None for p in cell.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


class TwoStreams(nn.Module):
    """A sequence module over a dict of two input sequences; returns a dict of outputs."""

    batch_first = True

    def __init__(self):
        super().__init__()
        self.a = nn.GRU(F, H, batch_first=True)
        self.b = nn.Linear(2, H)

    def forward(self, x, h):
        out, h = self.a(x["tokens"], h)
        return {"main": out + self.b(x["side"]), "aux": [out.sum(-1)]}, h


def _nested_loss(out, target):
    return sq_loss(out["main"], target["main"]) + sq_loss(out["aux"][0], target["aux"])


@pytest.mark.parametrize("block_length", [1, 6, 40])
def test_dict_of_sequences_and_nested_outputs(block_length):
    cell = TwoStreams()
    x = {"tokens": torch.randn(B, T, F), "side": torch.randn(B, T, 2)}
    y = {"main": torch.randn(B, T, H), "aux": torch.randn(B, T)}
    params = list(cell.parameters())
    out, final = cell(x, None)
    loss = _nested_loss(out, y)
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    result = vp.backward(vp.fixed_plan(block_length), cell, x, targets=y, loss_fn=_nested_loss)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_close_tree(result.state, final.detach())
    assert_grads_close(params, expected)


def test_step_cell_with_a_tuple_of_inputs():
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(F + 1, H)

        def forward(self, x_t, h):
            features, gate = x_t
            h = self.cell(torch.cat([features, gate.unsqueeze(-1)], -1), h)
            return (h, h.sum(-1)), h

    cell = StepCell(Mix())
    x = (torch.randn(T, B, F), torch.randn(T, B))
    y = (torch.randn(T, B, H), torch.randn(T, B))

    def loss_fn(out, target):
        return sq_loss(out[0], target[0]) + sq_loss(out[1], target[1])

    params = list(cell.parameters())
    h, outs = None, []
    for t in range(T):
        o, h = cell((x[0][t], x[1][t]), h)
        outs.append(o)
    loss = loss_fn((torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])), y)
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    result = vp.backward(vp.fixed_plan(7), cell, x, targets=y, loss_fn=loss_fn)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(params, expected)


def test_two_packed_sequences_with_equal_lengths():
    lengths = [9, 23, 4, 17]

    class Packed2(nn.Module):
        time_dim = 0
        state_batch_dim = 1  # an LSTM's (h, c)

        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(F + 2, H)

        def forward(self, x, state):
            a, b = x
            joined = torch.nn.utils.rnn.PackedSequence(torch.cat([a.data, b.data], -1), a.batch_sizes)
            return self.rnn(joined, state)

    cell = Packed2()
    xa = pack_padded_sequence(torch.randn(23, 4, F), lengths, enforce_sorted=False)
    xb = pack_padded_sequence(torch.randn(23, 4, 2), lengths, enforce_sorted=False)
    y = pack_padded_sequence(torch.randn(23, 4, H), lengths, enforce_sorted=False)
    params = list(cell.parameters())
    joined = torch.nn.utils.rnn.PackedSequence(torch.cat([xa.data, xb.data], -1), xa.batch_sizes,
                                               xa.sorted_indices, xa.unsorted_indices)
    out, final = cell.rnn(joined)
    loss = sq_loss(out.data, y.data)
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    result = vp.backward(vp.fixed_plan(5), cell, (xa, xb), targets=y, loss_fn=sq_loss)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_close_tree(result.state, tuple(s.detach() for s in final))
    assert_grads_close(params, expected)
    other = pack_padded_sequence(torch.randn(23, 4, 2), [23, 17, 9, 3], enforce_sorted=False)
    with pytest.raises(vp.InvalidInputError, match="do not line up"):
        vp.backward(vp.fixed_plan(5), cell, (xa, other), targets=y, loss_fn=sq_loss)


class TokenLM(nn.Module):
    """Token ids (B, T) in, logits out: the embedding inside the module, batch-first."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, F)
        self.rnn = nn.LSTM(F, H, batch_first=True)
        self.head = nn.Linear(H, V)

    def forward(self, ids, state):
        out, state = self.rnn(self.emb(ids), state)
        return self.head(out), state


def _lm_loss(logits, ids):
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="sum")


def test_token_ids_with_time_dim():
    model = TokenLM()
    ids, labels = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    params = list(model.parameters())
    logits, _ = model(ids, None)
    loss = _lm_loss(logits, labels)
    loss.backward()
    expected = grads_of(params)
    _reset(params)
    plan = vp.fixed_plan(8)
    result = vp.backward(plan, model, ids, targets=labels, loss_fn=_lm_loss, time_dim=1)
    assert math.isclose(result.loss, loss.item(), rel_tol=1e-12)
    assert_grads_close(params, expected)
    assert result.schedule.seq_len == T and result.schedule.batch_size == B
    # Without a declared time axis the ids are refused, not guessed.
    with pytest.raises(vp.TimeAxisError, match="time_dim=1 is likely"):
        vp.backward(plan, model, ids, targets=labels, loss_fn=_lm_loss)


def test_token_ids_one_sequence():
    model = SequenceModule(TokenLM(), time_dim=0)
    model.module.rnn.batch_first = False
    ids, labels = torch.randint(0, V, (T,)), torch.randint(0, V, (T,))

    def loss_fn(logits, target):
        return nn.functional.cross_entropy(logits, target, reduction="sum")

    params = list(model.parameters())
    logits, _ = model(ids, None)
    loss_fn(logits, labels).backward()
    expected = grads_of(params)
    _reset(params)
    result = vp.backward(vp.fixed_plan(10), model, ids, targets=labels, loss_fn=loss_fn)
    assert_grads_close(params, expected)
    assert result.schedule.batch_size == 1


def test_the_time_axis_given_to_auto_plan_is_kept_and_used():
    model = TokenLM()
    ids, labels = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    plan = vp.auto_plan(model, budget="200MB", example_input=ids[:, :8], loss_fn=_lm_loss,
                        example_target=labels[:, :8], time_dim=1)
    assert plan.time_dim == 1 and vp.Plan.from_json(plan.to_json()).time_dim == 1
    params = list(model.parameters())
    logits, _ = model(ids, None)
    _lm_loss(logits, labels).backward()
    expected = grads_of(params)
    _reset(params)
    result = vp.backward(plan, model, ids, targets=labels, loss_fn=_lm_loss)
    assert_grads_close(params, expected)
    assert result.schedule.batch_size == B
    with pytest.raises(vp.TimeAxisError, match="contradicts the plan's time_dim=1"):
        vp.backward(plan, model, ids, targets=labels, loss_fn=_lm_loss, time_dim=0)


def test_the_input_gradient_buffer_is_planned():
    emb, lstm = nn.Embedding(V, F), nn.LSTM(F, H)
    plan = vp.auto_plan(lstm, budget="200MB")
    tokens = torch.randint(0, V, (T, B))
    with_graph = vp.backward(plan, lstm, emb(tokens), loss_fn=lambda o, t: o.sum()).schedule
    plain = vp.backward(plan, lstm, emb(tokens).detach(), loss_fn=lambda o, t: o.sum()).schedule
    parts = dict(with_graph.memory_parts)
    assert parts["input gradients"] == dict(plain.memory_parts)["inputs"] > 0
    assert dict(plain.memory_parts).get("input gradients", 0) == 0
