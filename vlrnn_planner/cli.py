"""`vlrnn-plan`: plan a standard RNN, and show, export or plot a saved plan or schedule.

Subcommands::

    vlrnn-plan rnn --mode LSTM --input-size 64 --hidden-size 1024 --num-layers 4 \\
                   --batch-size 64 --seq-len 1000000 --budget 8GB [--device cuda:0] [-o plan.json]
    vlrnn-plan show FILE [--actions N]
    vlrnn-plan dot FILE [-o schedule.dot]
    vlrnn-plan plot FILE -o memory.png

``FILE`` is a schedule document (`Schedule.to_json`) or a plan document (`Plan.to_json`); a plan
document written by ``rnn`` carries the schedule chosen for its shape. A plan without a schedule
is resolved for ``--seq-len`` (and ``--batch-size``).

Errors print one line, ``vlrnn-plan: error: ...``, on stderr, and exit with 2 for a usage error
and 1 for any other; ``--traceback`` shows the traceback instead.

Only ``rnn`` imports torch, and only when it runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import vlrnn_planner

from .actions import ForwardBackward
from .budget import format_bytes
from .cost import Workload, estimate
from .errors import PlannerError
from .plan import load_document
from .simulate import ScheduleStatistics, predicted_memory, schedule_statistics, walk_schedule

__all__ = ["main", "ScheduleStatistics", "schedule_statistics"]

PROG = "vlrnn-plan"
PLOT_INSTALL_HINT = "pip install 'vlrnn-planner[plot]'"


class UsageError(Exception):
    """A command line that cannot be parsed (exit status 2)."""


class CommandError(Exception):
    """A command that cannot be carried out (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are exceptions, reported by `main` in one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CommandError(f"cannot read {path}: not a text file") from None


def _write_text(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The (plan, schedule) of ``args.file``; resolves a plan for ``--seq-len`` if need be."""
    text = _read_text(args.file)
    try:
        doc = load_document(text)
    except PlannerError as e:
        raise CommandError(f"{args.file}: {_strip_prefix(str(e))}") from None
    plan, schedule = doc.plan, doc.schedule
    if args.seq_len is not None:
        if plan is None:
            if schedule.seq_len != args.seq_len or (
                args.batch_size is not None and schedule.batch_size != args.batch_size
            ):
                raise CommandError(
                    f"{args.file} holds a schedule for seq_len={schedule.seq_len}, "
                    f"batch_size={schedule.batch_size}, not a plan that could be resolved for "
                    "other shapes; drop --seq-len/--batch-size"
                )
        else:
            if plan.budget_bytes is not None and args.batch_size is None:
                raise CommandError(
                    f"{args.file} holds a budget plan, which needs the batch size too: pass "
                    "--batch-size B with --seq-len"
                )
            plan, schedule = plan.for_shapes_only(), plan.schedule(args.seq_len, args.batch_size)
    if schedule is None:
        raise CommandError(
            f"{args.file} holds a plan without a schedule; pass --seq-len T (and --batch-size B) "
            "to resolve it, or save it with plan.to_json(schedule=plan.schedule(T, B))"
        )
    return plan, schedule


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


def _short(action: Any, most: int = 8) -> str:
    """The action's repr, with a long ``save`` tuple elided."""
    save = getattr(action, "save", ())
    if len(save) <= most:
        return repr(action)
    head = ", ".join(map(str, save[: most - 2]))
    tail = ", ".join(map(str, save[-2:]))
    return f"Advance({action.start}, {action.stop}, save=({head}, ..., {tail}))  # {len(save)} saved"


def _print_summary(plan: Any, schedule: Any, *, actions: int, out) -> None:
    """The plan's and the schedule's summaries, the statistics, and the first ``actions`` actions."""
    summary = str(schedule)
    if plan is not None:
        text = str(plan)
        print(text, file=out)
        if summary.splitlines()[0] not in text:  # a budget plan lists the schedules it resolved
            print(summary, file=out)
    else:
        print(summary, file=out)
    stats = schedule_statistics(schedule)
    _print_statistics(stats, schedule, out=out)
    if actions > 0:
        _print_actions(schedule, min(actions, stats.actions), stats.actions, out=out)


def _print_statistics(stats: ScheduleStatistics, schedule: Any, *, out) -> None:
    print("Statistics:", file=out)
    print(f"  actions: {stats.actions}", file=out)
    print(
        f"  forward evaluations: {stats.forward_evaluations} block evaluations, "
        f"{stats.evaluations_per_step:.3f} per time step (plain BPTT: 1)",
        file=out,
    )
    print(f"  blocks backpropagated: {stats.backward_blocks}", file=out)
    print(f"  most stored states: {stats.most_stored_states} (initial state included)", file=out)
    if stats.simulated_peak_bytes is not None:
        print(
            f"  simulated peak memory, action by action: {format_bytes(stats.simulated_peak_bytes)} "
            f"(cost model: {format_bytes(schedule.predicted_peak_bytes)})",
            file=out,
        )


def _print_actions(schedule: Any, shown: int, total: int, *, out) -> None:
    print(f"First {shown} of {total} actions (stored states after each):", file=out)
    width = len(str(max(shown - 1, 0)))
    # Unchecked and without memory, the walk only counts the stored states: O(1) an action,
    # however many states an action stores.
    for step in itertools.islice(walk_schedule(schedule, check=False), shown):
        print(f"  {step.index:>{width}}  {_short(step.action)}  [{step.stored_states}]", file=out)


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------

_MODES = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN"}
_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _cmd_rnn(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise CommandError("the rnn subcommand needs torch; install it with pip install torch") from None
    cls = getattr(torch.nn, _MODES[args.mode])
    kwargs: dict[str, Any] = {"num_layers": args.num_layers, "batch_first": args.batch_first}
    if args.mode == "RNN":
        kwargs["nonlinearity"] = args.nonlinearity
    module = cls(args.input_size, args.hidden_size, **kwargs).to(dtype=getattr(torch, args.dtype))
    if args.device is not None:
        try:
            module = module.to(args.device)
        except (RuntimeError, AssertionError) as e:  # no such device, or torch built without it
            raise CommandError(f"cannot use device {args.device!r}: {e}") from None
    plan_kwargs: dict[str, Any] = {"budget": args.budget}
    if args.device is not None:
        plan_kwargs["device"] = args.device
    if args.inputs_on_host:
        plan_kwargs["inputs_on_host"] = True
    plan = vlrnn_planner.auto_plan(module, **plan_kwargs)  # looked up here, so that tests can stand in for it
    schedule = plan.schedule(args.seq_len, args.batch_size)
    _print_summary(plan, schedule, actions=args.actions, out=sys.stdout)
    if args.output is not None:
        _write_text(args.output, plan.to_json(schedule=schedule, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    plan, schedule = _load(args)
    _print_summary(plan, schedule, actions=args.actions, out=sys.stdout)
    return 0


def _cmd_dot(args: argparse.Namespace) -> int:
    _, schedule = _load(args)
    actions = schedule_statistics(schedule).actions
    if actions > args.max_actions:
        raise CommandError(
            f"the schedule has {actions} actions; a DOT graph of more than {args.max_actions} is too large "
            f"to read or lay out: pass --max-actions {actions} to write it anyway, or use show or plot"
        )
    dot = schedule.to_dot() + "\n"
    if args.output is None:
        sys.stdout.write(dot)
    else:
        _write_text(args.output, dot)
        print(f"wrote {args.output}")
    return 0


@dataclass
class _Trace:
    """Memory along a schedule's computation: one segment per action that computes, as wide as
    the time steps it evaluates (an ``Advance`` forward without grad, a ``ForwardBackward`` forward
    and backward), binned into at most ``points`` segments for long schedules."""

    starts: list[float]
    widths: list[float]
    peaks: list[float]  # bytes (or stored states without a prediction) while the segment runs
    held: list[float]  # after it
    backward: list[bool]  # the segment runs blocks with grad (else: without)
    in_bytes: bool
    binned: bool


def _trace(schedule: Any, points: int) -> _Trace:
    memory = predicted_memory(schedule)
    raw = []
    for step in walk_schedule(schedule, memory=memory):
        if step.evaluated_steps:
            peak = step.peak_bytes if memory is not None else step.stored_states
            held = step.bytes_after if memory is not None else step.stored_states
            raw.append((step.evaluated_steps, float(peak), float(held), isinstance(step.action, ForwardBackward)))
    if len(raw) <= points:
        starts, x = [], 0.0
        for w, *_ in raw:
            starts.append(x)
            x += w
        return _Trace(starts, [r[0] for r in raw], [r[1] for r in raw], [r[2] for r in raw], [r[3] for r in raw],
                      memory is not None, False)
    # Equal bins of steps: the highest peak and held memory in each, and which kind of block
    # takes most of its steps.
    width = sum(r[0] for r in raw) / points
    peaks, held, fb_steps = [0.0] * points, [0.0] * points, [0.0] * points
    x = 0.0
    for w, peak, after, backward in raw:
        first, last = int(x // width), min(int((x + w) // width - 1e-9), points - 1)
        for i in range(first, max(first, last) + 1):
            peaks[i] = max(peaks[i], peak)
            held[i] = max(held[i], after)
            overlap = min(x + w, (i + 1) * width) - max(x, i * width)
            fb_steps[i] += overlap if backward else -overlap
        x += w
    return _Trace([i * width for i in range(points)], [width] * points, peaks, held, [f > 0 for f in fb_steps],
                  memory is not None, True)


def _plain_bptt_peak(plan: Any, schedule: Any) -> int | None:
    """Plain BPTT's predicted peak for the schedule's shape, where the plan carries a profile."""
    profile = getattr(plan, "profile", None)
    if profile is None or schedule.batch_size is None:
        return None
    workload = Workload(seq_len=schedule.seq_len, batch_size=schedule.batch_size)
    return estimate(profile, workload, strategy="store_all", block_length=schedule.seq_len).peak_bytes


def _draw(ax: Any, schedule: Any, trace: _Trace, plain_peak: int | None) -> None:
    top = max(trace.peaks + [schedule.budget_bytes or 0] if trace.in_bytes else trace.peaks)
    scale, unit = 1.0, "stored states"
    if trace.in_bytes:
        unit = "B"
        for name, size in (("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
            if top >= size:
                scale, unit = size, name
        unit = f"predicted memory ({unit})"
    colors = {False: "#7fb3d5", True: "#e59866"}
    names = {False: "forward without grad (Advance)", True: "forward and backward (ForwardBackward)"}
    for backward in (False, True):
        xs = [s for s, b in zip(trace.starts, trace.backward) if b == backward]
        if xs:
            ax.bar(xs, [p / scale for p, b in zip(trace.peaks, trace.backward) if b == backward],
                   width=[w for w, b in zip(trace.widths, trace.backward) if b == backward], align="edge",
                   color=colors[backward], linewidth=0, label=f"peak during {names[backward]}")
    ends = [s + w for s, w in zip(trace.starts, trace.widths)]
    ax.step([0.0] + ends, [trace.held[0] / scale] + [h / scale for h in trace.held], where="pre", color="#2c3e50",
            linewidth=0.8, label="held after each action" + (" (stored states)" if not trace.in_bytes else ""))
    if trace.in_bytes and schedule.budget_bytes is not None:
        ax.axhline(schedule.budget_bytes / scale, color="#c0392b", linestyle="--", linewidth=1.2,
                   label=f"budget {format_bytes(schedule.budget_bytes)}")
    elif not trace.in_bytes and schedule.checkpoints is not None:
        ax.axhline(schedule.checkpoints, color="#c0392b", linestyle="--", linewidth=1.2,
                   label=f"at most {schedule.checkpoints} stored states")
    if plain_peak is not None:
        if plain_peak <= 3 * top:
            ax.axhline(plain_peak / scale, color="#8e44ad", linestyle=":", linewidth=1.5,
                       label=f"plain BPTT (every step stored): {format_bytes(plain_peak)}")
        else:  # far above: named in the legend, not drawn
            ratio = plain_peak / max(schedule.predicted_peak_bytes or top, 1)
            ax.plot([], [], color="#8e44ad", linestyle=":", linewidth=1.5,
                    label=f"plain BPTT (every step stored): {format_bytes(plain_peak)}, {ratio:.0f}x this peak (off the chart)")
    ax.set_xlabel("time steps computed (forward without grad, then forward and backward per block)"
                  + (f"; {len(trace.starts)} bins" if trace.binned else ""))
    ax.set_ylabel(unit)
    ax.set_xlim(0, max(ends[-1] if ends else 1, 1))
    ax.set_ylim(bottom=0)
    ax.set_title(str(schedule).splitlines()[0], fontsize=10)
    ax.figure.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)


def _cmd_plot(args: argparse.Namespace) -> int:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CommandError(f"plotting needs matplotlib; install it with {PLOT_INSTALL_HINT}") from None
    plan, schedule = _load(args)
    fig = Figure(figsize=(args.width, args.height), layout="constrained")
    _draw(fig.add_subplot(), schedule, _trace(schedule, args.points), _plain_bptt_peak(plan, schedule))
    try:
        fig.savefig(args.output, dpi=args.dpi)
    except OSError as e:
        raise CommandError(f"cannot write {args.output}: {e.strerror or e}") from None
    except ValueError as e:  # an extension matplotlib does not know
        raise CommandError(f"cannot write {args.output}: {e}") from None
    print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------
# The parser and main
# ---------------------------------------------------------------------------------------------


def _int_at_least(minimum: int, what: str):
    """An argparse type: an int of at least ``minimum``, described as ``what`` in errors."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive = _int_at_least(1, "a positive int")
_non_negative = _int_at_least(0, "an int >= 0")


def _budget(text: str) -> Any:
    """An argparse type: a budget as `vlrnn_planner.parse_budget` reads it; digits are bytes."""
    spec: Any = int(text) if text.strip().isdigit() else text
    try:
        return vlrnn_planner.parse_budget(spec)
    except PlannerError as e:
        raise argparse.ArgumentTypeError(_strip_prefix(str(e))) from None


# Options whose value may start with "-" (a negative budget is refused by its reader, with a
# message, rather than taken for an option by argparse).
_VALUE_OPTIONS = ("--budget",)


def _join_values(argv: list[str]) -> list[str]:
    """``--budget -5MB`` as ``--budget=-5MB``, so that argparse hands the value to its reader."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _VALUE_OPTIONS:
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def _mode(text: str) -> str:
    mode = text.upper()
    if mode not in _MODES:
        raise argparse.ArgumentTypeError(f"unknown mode {text!r}; choose one of {', '.join(_MODES)}")
    return mode


def _add_file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a plan or schedule JSON file")
    p.add_argument("--seq-len", type=_positive, default=None,
                   help="resolve a plan for this many time steps (a plan file without a schedule)")
    p.add_argument("--batch-size", type=_positive, default=None, help="batch size, with --seq-len")


def build_parser() -> argparse.ArgumentParser:
    """The `vlrnn-plan` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        Whose errors raise instead of exiting, so that `main` reports them in one line.
    """
    parser = _Parser(
        prog=PROG,
        description="Plan exact block backpropagation through time, and inspect saved plans.",
    )
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("rnn", help="plan a torch nn.LSTM / nn.GRU / nn.RNN to a memory budget",
                       description="Profile a standard torch RNN and plan it to a memory budget.")
    p.add_argument("--mode", type=_mode, default="LSTM", help="LSTM, GRU or RNN (default LSTM)")
    p.add_argument("--input-size", type=_positive, required=True)
    p.add_argument("--hidden-size", type=_positive, required=True)
    p.add_argument("--num-layers", type=_positive, default=1)
    p.add_argument("--nonlinearity", choices=("tanh", "relu"), default="tanh", help="for --mode RNN")
    p.add_argument("--batch-first", action="store_true")
    p.add_argument("--dtype", choices=_DTYPES, default="float32")
    p.add_argument("--batch-size", type=_positive, required=True)
    p.add_argument("--seq-len", type=_positive, required=True)
    p.add_argument("--budget", type=_budget, required=True, help='e.g. 8GB, 8GiB, 512MB, 80%% or a byte count')
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: the planner's choice)")
    p.add_argument(
        "--inputs-on-host",
        action="store_true",
        help="the sequence stays in host memory and is copied to the device block by block",
    )
    p.add_argument("--actions", type=_non_negative, default=20, help="actions to list (default 20)")
    p.add_argument("-o", "--output", default=None, help="write the plan and its schedule as JSON here")
    p.set_defaults(handler=_cmd_rnn)

    p = sub.add_parser("show", help="summarise a plan or schedule file",
                       description="Print the summary, statistics and first actions of a plan or schedule.")
    _add_file_args(p)
    p.add_argument("--actions", type=_non_negative, default=20, help="actions to list (default 20)")
    p.set_defaults(handler=_cmd_show)

    p = sub.add_parser("dot", help="write a schedule's action graph as Graphviz DOT",
                       description="Write the schedule's action graph in Graphviz DOT.")
    _add_file_args(p)
    p.add_argument("-o", "--output", default=None, help="output file (default: stdout)")
    p.add_argument("--max-actions", type=_positive, default=2000,
                   help="refuse schedules with more actions than this (default 2000)")
    p.set_defaults(handler=_cmd_dot)

    p = sub.add_parser("plot", help="plot predicted memory over a schedule (needs matplotlib)",
                       description="Plot the predicted memory (or stored states) after each action, "
                                   "with the budget as a horizontal line.")
    _add_file_args(p)
    p.add_argument("-o", "--output", required=True, help="image file (.png, .svg, .pdf)")
    p.add_argument("--points", type=_positive, default=2000,
                   help="bins along the x axis for long schedules (default 2000)")
    p.add_argument("--width", type=float, default=8.0, help="figure width in inches")
    p.add_argument("--height", type=float, default=4.8, help="figure height in inches")
    p.add_argument("--dpi", type=_positive, default=120)
    p.set_defaults(handler=_cmd_plot)
    return parser


def _strip_prefix(message: str) -> str:
    message = " ".join(message.split())
    for prefix in ("vlrnn_planner: ", f"{PROG}: error: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message


def _report(message: str) -> None:
    print(f"{PROG}: error: {_strip_prefix(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `vlrnn-plan` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The command line without the program's name.

    Returns
    -------
    int
        0 on success, 2 for a usage error, 1 for any other error (one line on stderr).
    """
    argv = _join_values(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        _report(str(e))
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (vlrnn-plan show plan.json | head): stop quietly, and keep Python
        # from reporting the pipe once more when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        _report("interrupted")
        return 130
    except Exception as e:
        if args.traceback:
            raise
        if isinstance(e, (CommandError, PlannerError)):
            _report(str(e))
        else:
            _report(f"{type(e).__name__}: {e} (run with --traceback for details)")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
