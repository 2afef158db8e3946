"""The core package is framework-free: it imports, plans and walks schedules with torch absent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_imports_with_torch_absent():
    code = textwrap.dedent(
        """
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        import vlrnn_planner as vp
        import vlrnn_planner.actions, vlrnn_planner.plan, vlrnn_planner.strategies, vlrnn_planner.backends
        sched = vp.fixed_plan(block_length=4).schedule(seq_len=10)
        print(len(list(sched.actions)), "torch" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6", "False"]
