"""The main job, examples/char_lm.py: its data, its exact update against plain BPTT in float64,
taking training up again from a checkpoint, and tiny runs of the main job and of --compare."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from conftest import assert_close_tree, assert_grads_close, grads_of

import vlrnn_planner as vp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import char_lm  # noqa: E402

TINY = ["--embed", "5", "--hidden", "6", "--batch-size", "3", "--seq-len", "50", "--valid-chars", "400",
        "--sample-chars", "20", "--valid-every", "2"]


def _stream(n: int = 2_000) -> torch.Tensor:
    train_files, _ = char_lm.source_files()
    return char_lm.read_stream(train_files[:3])[:n]


def test_text_is_split_by_file_and_encoded_losslessly_in_the_vocabulary():
    train, valid = char_lm.source_files()
    assert train == sorted(train) and valid == sorted(valid)
    everything = sorted(train + valid)
    assert len(set(everything)) == len(everything) and valid == everything[9::10] and len(valid) >= 10
    ids = char_lm.encode("def f(x):\n\treturn 'é'\n")
    assert ids.dtype == torch.int64 and int(ids.max()) < char_lm.VOCAB_SIZE
    assert char_lm.decode(ids) == "def f(x):\n\ufffdreturn '\ufffd'\n"
    data = char_lm.batchify(torch.arange(23), 4)
    assert data.tolist()[1] == [5, 6, 7, 8, 9]
    x, y = char_lm.window(data, 1, 2)
    assert x.tolist()[0] == [2, 3] and y.tolist()[0] == [3, 4]
    assert char_lm.updates_per_epoch(data, 2) == 2


def _model_and_window(seq_len: int = 60):
    model = char_lm.CharLM(embed=5, hidden=6, layers=2)
    data = char_lm.batchify(_stream(), 3)
    x, y = char_lm.window(data, 0, seq_len)
    state = tuple(torch.randn(2, 3, 6) for _ in range(2))  # a state carried in from an earlier update
    return model, x, y, state


def test_exact_update_is_plain_bptt_and_truncated_is_not():
    model, x, y, state = _model_and_window()
    params = list(model.parameters())
    loss, final = char_lm.plain_bptt(model, x, y, state)
    expected = grads_of(params)
    model.zero_grad(set_to_none=True)
    exact_loss, exact_final = char_lm.exact_bptt(model, vp.fixed_plan(7), x, y, state)
    assert math.isclose(exact_loss, loss, rel_tol=1e-12)
    assert_close_tree(exact_final, final)
    assert_grads_close(params, expected)
    # Truncated BPTT in the same blocks loses the gradient across their boundaries.
    model.zero_grad(set_to_none=True)
    truncated_loss, truncated_final = char_lm.truncated_bptt(model, 7, x, y, state)
    assert math.isclose(truncated_loss, loss, rel_tol=1e-12)
    assert_close_tree(truncated_final, final)
    recurrent = [name for name, _ in model.named_parameters()].index("lstm.weight_hh_l0")
    gap = (params[recurrent].grad - expected[recurrent]).abs().max()
    assert gap > 1e-3 * expected[recurrent].abs().max()


def test_a_checkpoint_takes_training_up_exactly_where_it_stopped(tmp_path):
    def trainer():
        torch.manual_seed(0)
        return char_lm.Trainer(char_lm.CharLM(5, 6, 2), char_lm.batchify(_stream(1_000), 3), 100, 3e-3)

    gradient = char_lm.gradient_fn("exact", vp.fixed_plan(30), 30)
    straight = trainer()
    for _ in range(4):  # three windows per pass: the fourth starts the stream again from zero
        straight.step(gradient)
    assert (straight.update, straight.position) == (4, 1)
    first = trainer()
    for _ in range(2):
        first.step(gradient)
    path = tmp_path / "lm.pt"
    first.save(str(path), {})
    resumed = trainer()
    resumed.load(torch.load(path))
    assert resumed.position == 2 and resumed.state is not None
    for _ in range(2):
        resumed.step(gradient)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert_close_tree(straight.state, resumed.state, atol=1e-12)


def test_main_job_trains_validates_samples_saves_and_resumes(tmp_path, capsys):
    path = str(tmp_path / "lm.pt")
    char_lm.main([*TINY, "--updates", "4", "--budget", "60MB", "--save", path])
    out = capsys.readouterr().out
    assert "Plain BPTT would need" in out and "sample:\ndef " in out
    char_lm.main(["--resume", path, "--updates", "2", "--valid-chars", "400", "--sample-chars", "5"])
    out = capsys.readouterr().out
    assert "resumed from" in out and "update 4, window 4" in out


def test_compare_prints_the_three_methods_and_plots(tmp_path, capsys):
    plot = tmp_path / "compare.png"
    char_lm.main([*TINY, "--compare", "--updates", "3", "--budget", "60MB", "--timing-rounds", "2", "--plot", str(plot)])
    out = capsys.readouterr().out
    for name in ("exact BPTT (vlrnn-planner)", "truncated BPTT", "plain BPTT", "exact / plain", "exact / truncated"):
        assert name in out
    assert plot.stat().st_size > 0
