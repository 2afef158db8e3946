"""RNG replay: the random state at every block's entry, set the same way in the no-grad pass and
in the recomputation, so that dropout draws the same masks both times.

NOTE [ RNG replay ]
-------------------
A block's recomputation must see the random stream its first run saw. At the entry of EVERY
block, in both passes, the generators' states are captured and set again (`RNGState.enter`), and
the state is kept with every stored boundary (and with the working state); a recomputation from
a boundary sets that boundary's state. Setting a CUDA generator's state also makes cuDNN draw its
dropout state afresh from that generator (``CUDAGeneratorImpl::set_state`` resets the RNN flag and
``get_dropout_state`` in ``aten/src/ATen/native/cudnn/RNN.cpp`` reseeds), so an ``nn.LSTM`` with
``dropout > 0`` on cuDNN starts every block from the same dropout state in both passes; on the CPU
the set is a no-op on the stream, through the same code.

Draws made by ``loss_fn`` (and ``final_loss_fn``) come from a stream of their own that begins where
the cell's draws end (after the last block's forward), as they would in plain BPTT, where the
loss runs after the whole forward pass: they never repeat the cell's draws. After the call, the
generators are where that loss stream ends, which is where one forward pass and the loss leave them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["RNGState", "devices_of"]


def devices_of(tensors: Iterable[torch.Tensor]) -> tuple[int, ...]:
    """The CUDA device indices among ``tensors``.

    Parameters
    ----------
    tensors : iterable of tensor
        Parameters, inputs and states of a call.

    Returns
    -------
    tuple of int
        Sorted CUDA device indices (empty without CUDA tensors).
    """
    found = {t.device.index for t in tensors if isinstance(t, torch.Tensor) and t.device.type == "cuda"}
    return tuple(sorted(i if i is not None else torch.cuda.current_device() for i in found))


@dataclass(frozen=True, slots=True)
class RNGState:
    """The CPU generator's state and the states of the given CUDA devices' generators.

    Attributes
    ----------
    cpu : torch.Tensor
        ``torch.get_rng_state()`` (a uint8 tensor, 5056 bytes).
    cuda : tuple of (int, torch.Tensor)
        ``(device index, torch.cuda.get_rng_state(index))`` for each device in use.
    """

    cpu: torch.Tensor
    cuda: tuple[tuple[int, torch.Tensor], ...] = ()

    @classmethod
    def capture(cls, cuda_devices: tuple[int, ...]) -> RNGState:
        """The generators' states now.

        Parameters
        ----------
        cuda_devices : tuple of int
            The CUDA devices whose generators the call uses (see `devices_of`).

        Returns
        -------
        RNGState
        """
        return cls(torch.get_rng_state(), tuple((d, torch.cuda.get_rng_state(d)) for d in cuda_devices))

    @classmethod
    def enter(cls, cuda_devices: tuple[int, ...]) -> RNGState:
        """Capture the generators' states at a block's entry and set them again, so that this
        pass and any recomputation start the block alike (NOTE [ RNG replay ]).

        Parameters
        ----------
        cuda_devices : tuple of int

        Returns
        -------
        RNGState
            The state at the block's entry.
        """
        state = cls.capture(cuda_devices)
        state.restore()
        return state

    def restore(self) -> None:
        """Set the generators to this state."""
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda:
            torch.cuda.set_rng_state(state, device)

    @property
    def nbytes(self) -> int:
        """Bytes this record keeps (on the host)."""
        return self.cpu.numel() + sum(s.numel() for _, s in self.cuda)
