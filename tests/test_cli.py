"""The `vlrnn-plan` command line, run in-process through `main([...])`."""

from __future__ import annotations

import json
import sys
import tracemalloc

import pytest

import vlrnn_planner as vp
from vlrnn_planner import cli
from vlrnn_planner.errors import InfeasibleBudgetError, PlannerError
from vlrnn_planner.plan import load_document
from vlrnn_planner.simulate import predicted_memory, walk_schedule
from conftest import LSTM_PROFILE

PARTS = (
    ("parameters", 1_000_000),
    ("gradients", 1_000_000),
    ("inputs", 0),
    ("targets", 0),
    ("stored states", 9 * 100_000),
    ("working state and its gradient", 2 * 100_000),
    ("block in flight", 3_000_000),
)
PREDICTION = vp.Prediction(
    peak_bytes=sum(size for _, size in PARTS),
    seconds=2.0,
    baseline_seconds=1.0,
    memory_parts=PARTS,
    state_bytes=100_000,
    block_bytes=3_000_000,
    fixed_bytes=2_000_000,
    budget_bytes=8_000_000,
)


def predicted_schedule(**overrides) -> vp.Schedule:
    fields = dict(strategy="blocks", seq_len=1000, block_length=100, batch_size=4, prediction=PREDICTION)
    fields.update(overrides)
    return vp.Schedule(**fields)


@pytest.fixture
def files(tmp_path):
    """A schedule file, a plan file with a schedule, a plan file without one, and a bad file."""
    schedule = predicted_schedule()
    plan = vp.fixed_plan(block_length=10)
    paths = {
        "schedule": tmp_path / "schedule.json",
        "plan_with_schedule": tmp_path / "plan.json",
        "plan": tmp_path / "bare_plan.json",
        "bad": tmp_path / "bad.json",
        "garbage": tmp_path / "garbage.json",
    }
    paths["schedule"].write_text(schedule.to_json())
    paths["plan_with_schedule"].write_text(plan.to_json(schedule=plan.schedule(95, 2), indent=2))
    paths["plan"].write_text(plan.to_json())
    paths["bad"].write_text(json.dumps({"format": "someone-else/plan", "version": 1}))
    paths["garbage"].write_text("{not json")
    return {k: str(v) for k, v in paths.items()}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vlrnn-plan: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- show ------------------------------------------------------------------------------------


def test_show_schedule(capsys, files):
    code, out, err = run(capsys, "show", files["schedule"], "--actions", "3")
    assert code == 0, err
    assert out.startswith("Schedule: blocks, T=1000, K=100, 10 blocks, batch 4")
    assert "forward evaluations: 19 block evaluations, 1.900 per time step" in out
    assert "most stored states: 9 (initial state included)" in out
    assert "simulated peak memory, action by action: 6.1 MB (cost model: 6.1 MB)" in out
    assert "First 3 of 20 actions" in out
    assert "  0  Advance(0, 9, save=(1, 2, 3, 4, 5, 6, 7, 8))  [9]" in out
    assert "  2  ForwardBackward(8)  [9]" in out
    assert "ForwardBackward(7)" not in out


def test_show_default_lists_twenty_actions(capsys, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(vp.fixed_plan(block_length=1).schedule(seq_len=50).to_json())
    code, out, _ = run(capsys, "show", str(path))
    assert code == 0
    assert "First 20 of 100 actions" in out
    assert "\n  19  " in out and "\n  20  " not in out


def test_show_plan_with_schedule(capsys, files):
    code, out, err = run(capsys, "show", files["plan_with_schedule"], "--actions", "0")
    assert code == 0, err
    assert out.startswith("Plan: fixed blocks of 10 steps\nSchedule: blocks, T=95, K=10, 10 blocks, batch 2")
    assert "First" not in out


def test_show_plan_resolved_for_seq_len(capsys, files):
    code, out, err = run(capsys, "show", files["plan"])
    assert code == 1
    assert_one_line_error(err, "without a schedule", "--seq-len")
    code, out, err = run(capsys, "show", files["plan"], "--seq-len", "30", "--batch-size", "5")
    assert code == 0, err
    assert "Schedule: blocks, T=30, K=10, 3 blocks, batch 5" in out


@pytest.mark.parametrize(
    "schedule, lines",
    [
        (
            vp.Schedule("blocks", seq_len=10**9, block_length=1),
            ["actions: 2000000000", "most stored states: 999999999",
             "0  Advance(0, 999999999, save=(1, 2, 3, 4, 5, 6, ..., 999999997, 999999998))"],
        ),
        (
            vp.Schedule("binomial", seq_len=10**15, block_length=1, checkpoints=3),
            ["actions: 2000000000000000", "most stored states: 3", "1  ForwardBackward(999999999999999)  [3]"],
        ),
    ],
    ids=["blocks-1e9", "binomial-1e15"],
)
def test_show_huge_schedules_from_closed_forms(capsys, tmp_path, schedule, lines):
    # Every statistic has a closed form and the listing walks 20 actions without listing the
    # stored states: no memory to speak of, whatever the schedule's length.
    path = tmp_path / "huge.json"
    path.write_text(schedule.to_json())
    tracemalloc.start()
    try:
        code, out, err = run(capsys, "show", str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert peak < 4 * 2**20
    for line in lines:
        assert line in out


def test_statistics_match_simulator():
    from vlrnn_planner.simulate import simulate_schedule

    for schedule in (
        vp.fixed_plan(block_length=7).schedule(seq_len=100),
        vp.fixed_plan(block_length=3, checkpoints=3).schedule(seq_len=100),
        vp.Schedule("multilevel", seq_len=500, block_length=2, levels=(20, 5)),
        vp.fixed_plan(block_length=10).schedule(seq_len=5),
    ):
        stats = cli.schedule_statistics(schedule)
        sim = simulate_schedule(schedule)
        assert stats.actions == sim.num_actions
        assert stats.forward_evaluations == sim.forward_evaluations
        assert stats.most_stored_states == sim.max_stored_states
        assert stats.backward_blocks == schedule.num_blocks
    # a short last block counts its own steps
    stats = cli.schedule_statistics(vp.fixed_plan(block_length=10).schedule(seq_len=35))
    assert (stats.forward_evaluations, stats.evaluated_steps) == (7, 30 + 35)
    # unequal blocks count their own steps: blocks 0..1 advanced (5 steps), all three backpropagated
    stats = cli.schedule_statistics(vp.Schedule("blocks", seq_len=10, block_length=1, boundaries=(0, 2, 5, 10)))
    assert (stats.forward_evaluations, stats.evaluated_steps) == (5, 15)


# -- dot -------------------------------------------------------------------------------------


def test_dot_to_stdout_and_file(capsys, files, tmp_path):
    schedule = vp.Plan.from_json(open(files["plan_with_schedule"]).read()).schedule(95, 2)
    code, out, err = run(capsys, "dot", files["plan_with_schedule"])
    assert code == 0, err
    assert out == schedule.to_dot() + "\n"
    for i in range(len(schedule.actions)):
        assert f"  a{i} [label=" in out
    target = tmp_path / "out.dot"
    code, out, err = run(capsys, "dot", files["schedule"], "-o", str(target))
    assert code == 0, err
    assert out.strip() == f"wrote {target}"
    assert target.read_text().startswith("digraph schedule {")


# -- plot ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["schedule", "plan_with_schedule"])
def test_plot(capsys, files, tmp_path, which):
    pytest.importorskip("matplotlib")
    target = tmp_path / "memory.png"
    code, out, err = run(capsys, "plot", files[which], "-o", str(target))
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_long_schedule_is_binned(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    schedule = predicted_schedule(strategy="binomial", seq_len=20_000, block_length=1, checkpoints=12)
    path = tmp_path / "long.json"
    path.write_text(schedule.to_json())
    target = tmp_path / "long.svg"
    code, _, err = run(capsys, "plot", str(path), "-o", str(target), "--points", "100")
    assert code == 0, err
    assert target.read_text().lstrip().startswith("<?xml")
    trace = cli._trace(schedule, 100)
    assert trace.in_bytes and trace.binned and len(trace.starts) == 100
    steps = list(walk_schedule(schedule, memory=predicted_memory(schedule)))
    assert max(trace.peaks) == max(step.peak_bytes for step in steps)
    assert sum(trace.widths) == pytest.approx(sum(step.evaluated_steps for step in steps))


def test_plot_segments_are_the_actions_that_compute():
    """Unbinned, one segment per Advance and ForwardBackward, as wide as the steps it evaluates
    (Free actions compute nothing and take no width)."""
    schedule = predicted_schedule(strategy="binomial", seq_len=40, block_length=3, checkpoints=3)
    trace = cli._trace(schedule, 1000)
    steps = [s for s in walk_schedule(schedule, memory=predicted_memory(schedule)) if s.evaluated_steps]
    assert not trace.binned and len(trace.starts) == len(steps)
    assert trace.widths == [s.evaluated_steps for s in steps]
    assert trace.backward == [type(s.action).__name__ == "ForwardBackward" for s in steps]
    assert trace.starts[0] == 0 and all(a + w == b for a, w, b in zip(trace.starts, trace.widths, trace.starts[1:]))


def test_plot_without_matplotlib(capsys, files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    target = tmp_path / "memory.png"
    code, out, err = run(capsys, "plot", files["schedule"], "-o", str(target))
    assert code == 1
    assert_one_line_error(err, "matplotlib", "pip install 'vlrnn-planner[plot]'")
    assert not target.exists()


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragments",
    [
        ([], ["required: COMMAND"]),
        (["frobnicate"], ["invalid choice"]),
        (["show"], ["FILE"]),
        (["show", "x.json", "--actions", "-2"], ["--actions"]),
        (["show", "x.json", "--actions", "many"], ["--actions"]),
        (["plot", "x.json"], ["-o/--output"]),
        (["rnn", "--input-size", "4"], ["--hidden-size"]),
        (["rnn", "--mode", "TRANSFORMER", "--input-size", "1", "--hidden-size", "1",
          "--batch-size", "1", "--seq-len", "1", "--budget", "1GB"], ["unknown mode"]),
        (["rnn", "--input-size", "0", "--hidden-size", "1", "--batch-size", "1",
          "--seq-len", "1", "--budget", "1GB"], ["--input-size", "positive"]),
    ],
)
def test_usage_errors_exit_2(capsys, argv, fragments):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, *fragments)


@pytest.mark.parametrize(
    "which, fragments",
    [
        ("missing", ["cannot read", "No such file"]),
        ("bad", ["bad.json", 'expected a document with "format": "vlrnn-planner/plan"', "someone-else/plan"]),
        ("garbage", ["garbage.json", "invalid JSON"]),
    ],
)
@pytest.mark.parametrize("command", ["show", "dot", "plot"])
def test_file_errors_exit_1(capsys, files, tmp_path, which, fragments, command):
    path = str(tmp_path / "missing.json") if which == "missing" else files[which]
    argv = [command, path] + (["-o", str(tmp_path / "m.png")] if command == "plot" else [])
    if command == "plot":
        pytest.importorskip("matplotlib")
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert_one_line_error(err, *fragments)
    assert "vlrnn_planner:" not in err


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "rnn" in out and "show" in out and "plot" in out


def test_unexpected_error_is_one_line(capsys, files, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something broke\non two lines")

    monkeypatch.setattr(cli, "schedule_statistics", boom)
    code, _, err = run(capsys, "show", files["schedule"])
    assert code == 1
    assert_one_line_error(err, "RuntimeError: something broke on two lines", "--traceback")
    with pytest.raises(RuntimeError):
        cli.main(["--traceback", "show", files["schedule"]])


# -- rnn -------------------------------------------------------------------------------------

RNN_ARGS = ["rnn", "--mode", "gru", "--input-size", "3", "--hidden-size", "5", "--num-layers", "2",
            "--batch-size", "2", "--seq-len", "200", "--budget", "64MB", "--actions", "2"]


def test_rnn_with_a_stand_in_planner(capsys, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    seen = {}

    def fake_auto_plan(cell, budget, **kwargs):
        seen.update(cell=cell, budget=budget, kwargs=kwargs)
        return vp.fixed_plan(block_length=20)

    monkeypatch.setattr(vp, "auto_plan", fake_auto_plan, raising=False)
    target = tmp_path / "plan.json"
    code, out, err = run(capsys, *RNN_ARGS, "-o", str(target))
    assert code == 0, err
    assert isinstance(seen["cell"], torch.nn.GRU)
    assert (seen["cell"].input_size, seen["cell"].hidden_size, seen["cell"].num_layers) == (3, 5, 2)
    assert seen["budget"] == vp.parse_budget("64MB") and seen["kwargs"] == {}
    assert "Schedule: blocks, T=200, K=20, 10 blocks, batch 2" in out
    assert out.rstrip().endswith(f"wrote {target}")
    doc = load_document(target.read_text())
    assert doc.plan == vp.fixed_plan(block_length=20)
    assert doc.schedule == vp.fixed_plan(block_length=20).schedule(200, 2)
    code, out, err = run(capsys, "show", str(target))
    assert code == 0, err
    # --inputs-on-host reaches the planner.
    code, out, err = run(capsys, *RNN_ARGS, "--inputs-on-host")
    assert code == 0, err
    assert seen["kwargs"] == {"inputs_on_host": True}


def test_rnn_infeasible_budget_is_one_line(capsys, monkeypatch):
    pytest.importorskip("torch")

    def infeasible(cell, budget, **kwargs):
        raise InfeasibleBudgetError(
            "vlrnn_planner: budget 1 KB is below the minimum 2.5 MB\n(parameters 1 MB, ...); "
            "raise the budget",
            budget_bytes=1000,
            minimum_bytes=2_500_000,
        )

    monkeypatch.setattr(vp, "auto_plan", infeasible, raising=False)
    code, out, err = run(capsys, *RNN_ARGS)
    assert code == 1
    assert_one_line_error(err, "budget 1 KB is below the minimum 2.5 MB (parameters 1 MB, ...)")
    assert "vlrnn_planner:" not in err

    monkeypatch.setattr(vp, "auto_plan", lambda *a, **k: (_ for _ in ()).throw(PlannerError("vlrnn_planner: no")))
    code, _, err = run(capsys, *RNN_ARGS)
    assert code == 1
    assert_one_line_error(err, "error: no")


def test_rnn_bad_device_is_one_line(capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(vp, "auto_plan", lambda *a, **k: vp.fixed_plan(block_length=5), raising=False)
    code, _, err = run(capsys, *RNN_ARGS, "--device", "nonsense:7")
    assert code == 1
    assert_one_line_error(err, "nonsense:7")


def test_rnn_end_to_end(capsys, tmp_path):
    """The real planner on a small LSTM on the CPU."""
    pytest.importorskip("torch")
    if not hasattr(vp, "auto_plan"):
        pytest.skip("vlrnn_planner.auto_plan is not there yet")
    target = tmp_path / "plan.json"
    code, out, err = run(
        capsys, "rnn", "--mode", "LSTM", "--input-size", "4", "--hidden-size", "8", "--batch-size", "2",
        "--seq-len", "300", "--budget", "2GB", "--device", "cpu", "-o", str(target),
    )
    if code == 1 and "cannot profile" in err:
        pytest.skip("the torch backend cannot profile cells yet")
    assert code == 0, err
    assert "T=300" in out
    doc = load_document(target.read_text())
    assert doc.plan is not None and doc.schedule is not None
    assert doc.schedule.seq_len == 300 and doc.schedule.batch_size == 2
    assert vp.Plan.from_json(target.read_text()) == doc.plan
    assert doc.plan.schedule(300, 2) == doc.schedule


def test_rnn_without_torch(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    code, _, err = run(capsys, *RNN_ARGS)
    assert code == 1
    assert_one_line_error(err, "needs torch")


def test_show_and_dot_run_with_torch_absent(files):
    """Inspecting a plan made on a GPU machine needs neither torch nor a GPU."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        from vlrnn_planner.cli import main
        assert main(["show", {files["schedule"]!r}]) == 0
        assert main(["dot", {files["plan_with_schedule"]!r}]) == 0
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"


def test_gpu_check_says_there_is_no_gpu_and_runs_its_checks_at_tiny_sizes():
    """benchmarks/gpu_check.py exits 0 without CUDA; --smoke runs every check on the CPU."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    if not __import__("torch").cuda.is_available():
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "no CUDA device" in done.stdout
    done = subprocess.run([sys.executable, str(script), "--smoke", "--device", "cpu"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    for check in ("budget 100MB", "speed: ours / plain BPTT", "overlap: same gradients", "cuDNN dropout: exact",
                  "inputs on the host: same gradients"):
        assert check in table
    assert "| NO |" not in table


def test_newcomer_rough_edges(tmp_path, capsys):
    """A negative or zero budget and a plain byte count reach the budget's own reader; show
    --seq-len on a budget plan asks for --batch-size by its flag and prints only the new schedule;
    dot refuses a huge graph and says how to force it."""
    from vlrnn_planner.cli import main

    assert main(["rnn", "--input-size", "4", "--hidden-size", "8", "--batch-size", "2", "--seq-len", "50",
                 "--budget", "-5MB"]) == 2
    assert "a budget must be positive" in capsys.readouterr().err
    assert main(["rnn", "--input-size", "4", "--hidden-size", "8", "--batch-size", "2", "--seq-len", "50",
                 "--budget", "0"]) == 2
    assert "at least 1 byte" in capsys.readouterr().err
    plan = vp.planner.plan_for_profile(LSTM_PROFILE, 60_000_000)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json(schedule=plan.schedule(2000, 8)))
    assert main(["show", str(path), "--seq-len", "3000"]) == 1
    assert "--batch-size B" in capsys.readouterr().err
    assert main(["show", str(path), "--seq-len", "3000", "--batch-size", "8", "--actions", "0"]) == 0
    out = capsys.readouterr().out
    assert "T=3000" in out and "T=2000" not in out
    assert main(["dot", str(path), "--max-actions", "3"]) == 1
    assert "pass --max-actions" in capsys.readouterr().err


def test_show_into_a_closed_pipe_stops_quietly(tmp_path):
    import subprocess
    import sys

    plan = vp.planner.plan_for_profile(LSTM_PROFILE, 60_000_000)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json(schedule=plan.schedule(200_000, 8)))
    done = subprocess.run(f"{sys.executable} -m vlrnn_planner.cli show {path} --actions 5000 | head -1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("Plan:") and "Error" not in done.stderr, done.stderr
