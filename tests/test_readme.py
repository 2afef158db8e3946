"""The README's Python blocks run as written, and its two commands are the ones that work."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    """The README's fenced blocks in ``language``, indented ones (in a list) included."""
    found = []
    for match in re.finditer(rf"^( *)```{language}\n(.*?)^\1```$", README, flags=re.M | re.S):
        indent = len(match.group(1))
        found.append("".join(line[indent:] for line in match.group(2).splitlines(keepends=True)))
    return found


def test_python_blocks_run_in_order_in_one_session(capsys):
    blocks = _blocks("python")
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "readme"}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # as a reader's session has it (conftest sets float64)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    finally:
        torch.set_default_dtype(default)
    # What the blocks claim: exact BPTT stepped the optimizer, the embedding got its gradient,
    # and the budget plan was printed.
    assert isinstance(namespace["result"].loss, float)
    assert namespace["embedding"].weight.grad is not None
    assert "budget 100 MB" in capsys.readouterr().out


def test_commands_are_the_main_job_and_the_ci_test_command():
    setup, test = _blocks("bash")[:2]
    assert setup.strip().endswith("python3 -m pip install -e \".[test]\" && python3 examples/char_lm.py")
    assert (ROOT / "examples" / "char_lm.py").exists()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert test.strip() == ci[-1] == "python3 -m pytest -q"
    assert 'pip install -q -e ".[test]"' in "\n".join(ci)
