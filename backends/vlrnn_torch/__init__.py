"""vlrnn_torch: the PyTorch backend of vlrnn-planner."""

from __future__ import annotations


class TorchBackend:  # placeholder until the executor lands
    name = "torch"

    def accepts(self, cell) -> bool:
        return False
