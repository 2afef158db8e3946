"""RNG replay: the random state at a block's entry, saved in the no-grad pass and restored for the
recomputation, so that dropout draws the same masks both times.

NOTE [ RNG replay ]
A block's recomputation must see the random stream its first run saw. The state of the CPU
generator and of each CUDA device in use is saved with every stored boundary state (and with the
working state); any run that starts from a boundary first restores that boundary's RNG state.
After the call, the generators are left where one plain forward pass would leave them: at the
state after the last block's forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["RNGState", "devices_of"]


def devices_of(tensors: Iterable[torch.Tensor]) -> tuple[int, ...]:
    """The CUDA device indices among ``tensors``."""
    found = {t.device.index for t in tensors if isinstance(t, torch.Tensor) and t.device.type == "cuda"}
    return tuple(sorted(i if i is not None else torch.cuda.current_device() for i in found))


@dataclass(frozen=True, slots=True)
class RNGState:
    """The CPU generator's state and the states of the given CUDA devices."""

    cpu: torch.Tensor
    cuda: tuple[tuple[int, torch.Tensor], ...] = ()

    @classmethod
    def capture(cls, cuda_devices: tuple[int, ...]) -> RNGState:
        return cls(torch.get_rng_state(), tuple((d, torch.cuda.get_rng_state(d)) for d in cuda_devices))

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda:
            torch.cuda.set_rng_state(state, device)
