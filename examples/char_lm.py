"""Train a character-level language model with exact BPTT over long sequences: the README's main job.

The model is the one people write for this task: ``nn.Embedding`` -> ``nn.LSTM`` (2 layers) ->
``nn.Linear`` over the characters. The text is real and on every machine with Python: the
standard library's own source files (found with `sysconfig`; the top-level ``*.py`` files, sorted
by name, every tenth one held out for validation), read as one long stream of characters.

Each update reads the next ``--seq-len`` characters at ``--batch-size`` places in the stream and
carries the LSTM's state on to the next update, as truncated BPTT does; but its gradient over the
whole sequence is exact. `vlrnn_planner.backward` runs the sequence in blocks that
`vlrnn_planner.auto_plan` chose so that the update keeps to ``--budget``, which plain BPTT's
activations would not fit.

    python3 examples/char_lm.py                          # about a minute; bits per character going down
    python3 examples/char_lm.py --updates 400 --save lm.pt
    python3 examples/char_lm.py --resume lm.pt --updates 400 --save lm.pt   # 400 more
    python3 examples/char_lm.py --compare                # exact vs truncated vs plain BPTT: table, plot
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import vlrnn_planner as vp

# --------------------------------------------------------------------------------------------
# The text: the standard library's source, as character ids
# --------------------------------------------------------------------------------------------

#: The characters the model knows: newline and printable ASCII. Any other character (a tab, a
#: non-ASCII letter) is read as one more symbol, `UNKNOWN`.
VOCAB = "\n" + "".join(map(chr, range(32, 127)))
UNKNOWN = len(VOCAB)
VOCAB_SIZE = len(VOCAB) + 1
_OTHER = re.compile(r"[^\n -~]")
_IDS = torch.full((128,), UNKNOWN, dtype=torch.int64)
_IDS[torch.tensor([ord(c) for c in VOCAB])] = torch.arange(len(VOCAB))


def source_files() -> tuple[list[Path], list[Path]]:
    """The standard library's top-level ``*.py`` files, sorted by name: (training, validation).

    Every tenth file (the 10th, 20th, ...) is a validation file, so the split is by file and
    the same on every run of the same Python.
    """
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if len(files) < 10:
        raise SystemExit(f"char_lm: found only {len(files)} source files in the standard library")
    return [f for i, f in enumerate(files) if i % 10 != 9], files[9::10]


def encode(text: str) -> torch.Tensor:
    """Character ids (int64) of ``text``."""
    ascii_bytes = _OTHER.sub("\x7f", text).encode("ascii")
    return _IDS[torch.frombuffer(bytearray(ascii_bytes), dtype=torch.uint8).long()]


def decode(ids: torch.Tensor) -> str:
    """The text of character ids (`UNKNOWN` as U+FFFD)."""
    return "".join(VOCAB[i] if i < len(VOCAB) else "\ufffd" for i in ids.tolist())


def read_stream(files: list[Path]) -> torch.Tensor:
    """The files, one after the other, as one stream of character ids."""
    return encode("\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files))


def batchify(stream: torch.Tensor, rows: int) -> torch.Tensor:
    """``stream`` cut into ``rows`` consecutive pieces of equal length: ``(rows, length)``.

    Row ``r`` is the stream's ``r``-th piece; an update reads the same columns of every row, so
    each row goes on where the row's previous update stopped, and the state carries over.
    """
    length = stream.numel() // rows
    return stream[: rows * length].view(rows, length)


def window(data: torch.Tensor, position: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``position``-th update's inputs and targets (the next characters): each ``(rows, seq_len)``."""
    start = position * seq_len
    return data[:, start : start + seq_len], data[:, start + 1 : start + seq_len + 1]


def updates_per_epoch(data: torch.Tensor, seq_len: int) -> int:
    """How many windows of ``seq_len`` (with their next characters) a pass over ``data`` has."""
    return (data.size(1) - 1) // seq_len


# --------------------------------------------------------------------------------------------
# The model and its loss
# --------------------------------------------------------------------------------------------


class CharLM(nn.Module):
    """Embedding -> LSTM -> Linear: character ids in, logits of the next character out.

    ``forward(ids, state) -> (logits, state)`` runs a block of ids ``(batch, time)`` from the
    LSTM's state ``(h, c)`` (each ``(layers, batch, hidden)``; None for zeros): the form
    `vlrnn_planner.backward` runs block by block. Two attributes declare the axes, which the
    library never guesses: ``batch_first = True`` (time is axis 1 of the ids) and
    ``state_batch_dim = 1`` (the batch axis of ``h`` and ``c``).

    Parameters
    ----------
    embed : int
        Size of a character's embedding.
    hidden : int
        Size of the LSTM's state.
    layers : int
        LSTM layers.
    """

    batch_first = True
    state_batch_dim = 1

    def __init__(self, embed: int = 32, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB_SIZE)

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits ``(batch, time, VOCAB_SIZE)`` and the state after the block."""
        outputs, state = self.lstm(self.embedding(ids), state)
        return self.head(outputs), state


def mean_cross_entropy(count: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss_fn(logits, targets)``: a block's share of the mean cross-entropy (nats per
    character) over an update of ``count`` characters, so that the blocks' losses add up to it."""

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / count

    return loss_fn


def bits(nats: float) -> float:
    """Nats per character in bits per character."""
    return nats / math.log(2)


def detach(state: Any) -> Any:
    """The LSTM's state ``(h, c)`` cut from its graph (None stays None)."""
    return None if state is None else tuple(s.detach() for s in state)


# --------------------------------------------------------------------------------------------
# One update's gradient, three ways
# --------------------------------------------------------------------------------------------


def exact_bptt(model: CharLM, plan: vp.Plan, x: torch.Tensor, y: torch.Tensor, state: Any) -> tuple[float, Any]:
    """Exact BPTT over the whole window in blocks (this library): (mean loss, final state)."""
    result = vp.backward(plan, model, x, targets=y, loss_fn=mean_cross_entropy(y.numel()), state=state)
    return result.loss, result.state


def truncated_bptt(model: CharLM, block_length: int, x: torch.Tensor, y: torch.Tensor, state: Any) -> tuple[float, Any]:
    """Truncated BPTT: blocks of ``block_length`` steps, the state carried from block to block
    but detached, so no gradient crosses a block boundary; the blocks' gradients add up."""
    loss_fn = mean_cross_entropy(y.numel())
    total = 0.0
    for start in range(0, x.size(1), block_length):
        logits, state = model(x[:, start : start + block_length], detach(state))
        loss = loss_fn(logits, y[:, start : start + block_length])
        loss.backward()
        total += loss.item()
    return total, detach(state)


def plain_bptt(model: CharLM, x: torch.Tensor, y: torch.Tensor, state: Any) -> tuple[float, Any]:
    """Plain BPTT: the whole window with grad, then ``loss.backward()`` (every step's activations
    held at once)."""
    logits, state = model(x, state)
    loss = mean_cross_entropy(y.numel())(logits, y)
    loss.backward()
    return loss.item(), detach(state)


METHODS = ("exact", "truncated", "plain")


def gradient_fn(method: str, plan: vp.Plan, block_length: int) -> Callable[..., tuple[float, Any]]:
    """``fn(model, x, y, state) -> (loss, state)`` for one of `METHODS`."""
    if method == "exact":
        return lambda model, x, y, state: exact_bptt(model, plan, x, y, state)
    if method == "truncated":
        return lambda model, x, y, state: truncated_bptt(model, block_length, x, y, state)
    if method == "plain":
        return plain_bptt
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------------------------
# Validation and sampling
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def validation_bits(model: CharLM, data: torch.Tensor, chunk: int = 500) -> float:
    """Bits per character of the model on ``data`` ``(rows, length)``, each row read from a zero
    state in chunks of ``chunk`` steps."""
    training = model.training
    model.eval()
    state, total = None, 0.0
    for start in range(0, data.size(1) - 1, chunk):
        x = data[:, start : start + chunk]
        y = data[:, start + 1 : start + chunk + 1]
        x = x[:, : y.size(1)]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    model.train(training)
    return bits(total / (data.size(0) * (data.size(1) - 1)))


@torch.no_grad()
def sample(model: CharLM, prompt: str, length: int, *, temperature: float = 0.7, seed: int = 0) -> str:
    """``prompt`` and ``length`` characters drawn from the model after it."""
    generator = torch.Generator().manual_seed(seed)
    logits, state = model(encode(prompt)[None], None)
    drawn = []
    for _ in range(length):
        probabilities = torch.softmax(logits[0, -1] / temperature, dim=-1)
        token = torch.multinomial(probabilities, 1, generator=generator)
        drawn.append(token)
        logits, state = model(token.view(1, 1), state)
    return prompt + decode(torch.cat(drawn))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class Trainer:
    """The model, its optimizer and where training stands: the update count, the data position
    and the state carried into the next update. `save` and `load` keep all of it.

    Parameters
    ----------
    model : CharLM
    data : tensor
        The training stream, batchified: ``(batch, length)``.
    seq_len : int
        Characters per row and update.
    lr : float
        Adam's learning rate.
    """

    def __init__(self, model: CharLM, data: torch.Tensor, seq_len: int, lr: float) -> None:
        self.model = model
        self.data = data
        self.seq_len = seq_len
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.update = 0  # updates done
        self.position = 0  # the next window of the stream
        self.state: Any = None  # carried into the next update

    def window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next update's inputs and targets."""
        return window(self.data, self.position, self.seq_len)

    def step(self, gradient: Callable[..., tuple[float, Any]]) -> float:
        """One update: the gradient over the next window (``gradient(model, x, y, state)``), a
        clipped Adam step; the state carries over, back to zero where the stream starts again.
        Returns the window's mean loss in nats per character."""
        x, y = self.window()
        self.optimizer.zero_grad(set_to_none=True)
        loss, self.state = gradient(self.model, x, y, self.state)
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.update += 1
        self.position += 1
        if self.position == updates_per_epoch(self.data, self.seq_len):
            self.position, self.state = 0, None
        return loss

    def save(self, path: str, config: dict[str, Any]) -> None:
        """Write model, optimizer, update count, data position, carried state and ``config``."""
        torch.save({"config": config, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "update": self.update, "position": self.position, "state": self.state}, path)

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Take up training where `save` left it."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.update, self.position, self.state = checkpoint["update"], checkpoint["position"], checkpoint["state"]


#: What a checkpoint must agree on to be taken up: the model's sizes and the data's layout.
CONFIG_KEYS = ("embed", "hidden", "layers", "batch_size", "seq_len")


def make_trainer(args: argparse.Namespace, train: torch.Tensor) -> Trainer:
    """The model (seeded) and its trainer for ``args``."""
    torch.manual_seed(args.seed)
    model = CharLM(args.embed, args.hidden, args.layers)
    return Trainer(model, batchify(train, args.batch_size), args.seq_len, args.lr)


def plan_updates(trainer: Trainer, budget: str) -> vp.Plan:
    """`vlrnn_planner.auto_plan` for the trainer's model: it profiles the model (with its loss)
    on a short example block of ids, then picks the block length for each input shape."""
    x, y = window(trainer.data, 0, min(64, trainer.seq_len))
    return vp.auto_plan(trainer.model, budget=budget, example_input=x, example_target=y,
                        loss_fn=mean_cross_entropy(y.numel()))


def plain_bptt_peak(plan: vp.Plan, seq_len: int, batch_size: int) -> int:
    """Plain BPTT's peak memory for one update, as the plan's profile predicts it."""
    from vlrnn_planner.cost import Workload, estimate

    return estimate(plan.profile, Workload(seq_len=seq_len, batch_size=batch_size), strategy="store_all",
                    block_length=seq_len).peak_bytes


def load_data(valid_chars: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training stream, and the first ``valid_chars`` of the validation stream as 8 rows."""
    train_files, valid_files = source_files()
    train, valid = read_stream(train_files), read_stream(valid_files)
    print(f"text: {len(train_files)} training files of the standard library ({train.numel():,} characters), "
          f"{len(valid_files)} validation files ({valid.numel():,}; the first {valid_chars:,} are used)")
    return train, batchify(valid[:valid_chars], 8)


def train(args: argparse.Namespace) -> None:
    """The main job: plan, train with a progress bar, validate, sample, save."""
    from tqdm import tqdm

    train_stream, valid = load_data(args.valid_chars)
    checkpoint = None
    if args.resume:
        checkpoint = torch.load(args.resume)
        for key in CONFIG_KEYS:
            setattr(args, key, checkpoint["config"][key])
    trainer = make_trainer(args, train_stream)
    if checkpoint is not None:
        trainer.load(checkpoint)
        print(f"resumed from {args.resume}: update {trainer.update}, window {trainer.position} of the stream")
    batch, seq_len = args.batch_size, args.seq_len
    print(f"model: Embedding({VOCAB_SIZE}, {args.embed}) -> LSTM({args.embed}, {args.hidden}, "
          f"num_layers={args.layers}) -> Linear({args.hidden}, {VOCAB_SIZE}); "
          f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters")

    plan = plan_updates(trainer, args.budget)
    schedule = plan.schedule(seq_len=seq_len, batch_size=batch)
    plain = plain_bptt_peak(plan, seq_len, batch)
    print(f"each update: {batch} x {seq_len} characters. Plain BPTT would need {vp.format_bytes(plain)} "
          f"(predicted), {'over' if plain > plan.budget_bytes else 'within'} the budget of "
          f"{vp.format_bytes(plan.budget_bytes)};")
    print(f"  exact BPTT in {schedule.num_blocks} blocks of {schedule.block_length} steps "
          f"({schedule.strategy}), predicted peak {vp.format_bytes(schedule.predicted_peak_bytes)}")

    gradient = gradient_fn("exact", plan, schedule.block_length)
    first = trainer.update
    tqdm.write(f"update {first:4d}: validation {validation_bits(trainer.model, valid):.3f} bits per character")
    started = time.perf_counter()
    with tqdm(total=first + args.updates, initial=first, unit="update", dynamic_ncols=True) as bar:
        while trainer.update < first + args.updates:
            loss = trainer.step(gradient)
            bar.set_postfix(loss=f"{loss:.3f}", bpc=f"{bits(loss):.3f}")
            bar.update()
            if trainer.update % args.valid_every == 0 or trainer.update == first + args.updates:
                tqdm.write(f"update {trainer.update:4d}: training {bits(loss):.3f}, validation "
                           f"{validation_bits(trainer.model, valid):.3f} bits per character")
    seconds = time.perf_counter() - started
    print(f"{args.updates} updates of {batch * seq_len:,} characters in {seconds:.0f} s "
          f"({seconds / args.updates:.2f} s per update)")
    print("\nsample:\n" + sample(trainer.model, "def ", args.sample_chars))
    if args.save:
        trainer.save(args.save, {key: getattr(args, key) for key in CONFIG_KEYS})
        print(f"\nsaved to {args.save}; go on with --resume {args.save}")


# --------------------------------------------------------------------------------------------
# --compare: exact, truncated and plain BPTT side by side, each in a fresh process
# --------------------------------------------------------------------------------------------


def run_method(args: argparse.Namespace) -> None:
    """In a fresh process: train with ``args.method`` for ``args.updates`` updates; print JSON
    with the validation curve, the time per update and the peak resident growth of the updates."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from resident import peak_growth_since, reset_peak

    train_stream, valid = load_data(args.valid_chars)
    trainer = make_trainer(args, train_stream)
    with open(args.plan) as f:
        plan = vp.Plan.from_json(f.read())
    block_length = plan.schedule(seq_len=args.seq_len, batch_size=args.batch_size).block_length
    gradient = gradient_fn(args.method, plan, block_length)
    curve = [(0, validation_bits(trainer.model, valid))]
    seconds, peak, base = [], 0, None
    # The first update also warms up (thread pools, the allocator's arenas, Adam's state; for
    # exact BPTT, resolving the schedule and a one-time check of the model): the peak and the time
    # per update are those of the later ones, validation left out.
    while trainer.update < args.updates:
        if base is None and trainer.update > 0:
            base = reset_peak()
        started = time.perf_counter()
        trainer.step(gradient)
        seconds.append(time.perf_counter() - started)
        if trainer.update % args.valid_every == 0 or trainer.update == args.updates:
            if base is not None:
                peak, base = max(peak, peak_growth_since(base)), None
            curve.append((trainer.update, validation_bits(trainer.model, valid)))
    print(json.dumps({"method": args.method, "block_length": block_length, "peak": peak,
                      "seconds": statistics.median(seconds[1:]), "first": seconds[0], "curve": curve}))


def compare(args: argparse.Namespace) -> None:
    """Train the same model the same number of updates with exact, truncated and plain BPTT, each
    in a fresh process; print a table and plot validation bits per character against updates."""
    if args.updates < 2:
        raise SystemExit("char_lm: --compare needs --updates 2 or more (the first one warms up)")
    train_stream, _ = load_data(args.valid_chars)
    trainer = make_trainer(args, train_stream)
    plan = plan_updates(trainer, args.budget)
    schedule = plan.schedule(seq_len=args.seq_len, batch_size=args.batch_size)
    plain_need = plain_bptt_peak(plan, args.seq_len, args.batch_size)
    print(f"{args.updates} updates of {args.batch_size} x {args.seq_len} characters; budget "
          f"{vp.format_bytes(plan.budget_bytes)}: exact BPTT in blocks of {schedule.block_length} steps, "
          f"truncated BPTT in the same blocks")
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = os.path.join(tmp, "plan.json")
        with open(plan_path, "w") as f:
            f.write(plan.to_json())
        results = {}
        for method in METHODS:
            if method == "plain" and plain_need > _available_bytes():
                print(f"plain BPTT: does not fit (predicted {vp.format_bytes(plain_need)}, "
                      f"{vp.format_bytes(_available_bytes())} available)")
                continue
            print(f"training with {method} BPTT in a fresh process ...", flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), "--method", method, "--plan", plan_path,
                   *(f"--{key.replace('_', '-')}={getattr(args, key)}" for key in
                     (*CONFIG_KEYS, "updates", "lr", "seed", "valid_every", "valid_chars"))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"char_lm: {method} BPTT failed:\n{done.stderr[-3000:]}")
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
    methods = list(results)
    print(f"timing {', '.join(methods)} BPTT side by side, {args.timing_rounds} rounds ...", flush=True)
    seconds = time_side_by_side(args, plan, train_stream, methods, args.timing_rounds)
    for method in methods:
        results[method]["seconds"] = seconds[method]
    _print_table(results)
    _plot(results, args.plot)


def time_side_by_side(args: argparse.Namespace, plan: vp.Plan, train_stream: torch.Tensor, methods: list[str],
                      rounds: int) -> dict[str, float]:
    """Median seconds per update of each method, their updates interleaved round by round so that
    whatever else runs on the machine slows them alike; the first round warms up."""
    block_length = plan.schedule(seq_len=args.seq_len, batch_size=args.batch_size).block_length
    trainers = {method: make_trainer(args, train_stream) for method in methods}
    seconds: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(rounds + 1):
        for method in methods:
            gradient = gradient_fn(method, plan, block_length)
            started = time.perf_counter()
            trainers[method].step(gradient)
            seconds[method].append(time.perf_counter() - started)
    return {method: statistics.median(times[1:]) for method, times in seconds.items()}


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _print_table(results: dict[str, dict]) -> None:
    names = {"exact": "exact BPTT (vlrnn-planner)", "truncated": "truncated BPTT", "plain": "plain BPTT"}
    print(f"\n| {'method':<26} | peak memory | time per update | validation bits per character |")
    print(f"|{'-' * 28}|-------------|-----------------|-------------------------------|")
    for method, r in results.items():
        print(f"| {names[method]:<26} | {vp.format_bytes(r['peak']):>11} | {r['seconds']:>13.2f} s | "
              f"{r['curve'][-1][1]:>29.3f} |")
    exact = results["exact"]
    ratios = [f"time per update, exact / truncated: {exact['seconds'] / results['truncated']['seconds']:.2f}"]
    if "plain" in results:
        ratios.insert(0, f"peak memory, exact / plain: {exact['peak'] / results['plain']['peak']:.3f}")
    print("\n" + "; ".join(ratios))
    print("(peak memory: the updates' peak resident growth after the first, each method in a fresh "
          "process; time per update: the median of the methods' updates interleaved, after the first round)")


def _plot(results: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in results.items():
        updates, values = zip(*r["curve"])
        ax.plot(updates, values, marker="o", label=f"{method} BPTT")
    ax.set_xlabel("updates")
    ax.set_ylabel("validation bits per character")
    ax.set_title("Character LM on the Python standard library")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1000, help="characters per sequence and update")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per update")
    parser.add_argument("--budget", default="100MB", help="memory budget of an update (default %(default)s)")
    parser.add_argument("--updates", type=int, default=100, help="updates to run (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid-every", type=int, default=20, help="validate every this many updates")
    parser.add_argument("--valid-chars", type=int, default=40_000, help="validation characters used")
    parser.add_argument("--sample-chars", type=int, default=300, help="characters to generate at the end")
    parser.add_argument("--save", metavar="PATH", help="save model, optimizer, data position and state")
    parser.add_argument("--resume", metavar="PATH", help="go on from a checkpoint written by --save")
    parser.add_argument("--compare", action="store_true",
                        help="train with exact, truncated and plain BPTT; print a table, plot the validation")
    parser.add_argument("--plot", default="char_lm_compare.png", help="where --compare saves its plot")
    parser.add_argument("--timing-rounds", type=int, default=10,
                        help="--compare: rounds of one update per method, timed side by side")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # --compare's child processes
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the main job, ``--compare``, or one of ``--compare``'s child processes."""
    args = parse_args(argv)
    if args.method:
        run_method(args)
    elif args.compare:
        compare(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
