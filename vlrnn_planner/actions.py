"""The vocabulary of a schedule: small immutable actions over block indices.

A sequence of ``T`` steps is cut into ``n`` blocks. Boundary ``b`` is the input state of block
``b``; boundary ``0`` is the initial state and boundary ``n`` the final state. Reading a schedule:

>>> from vlrnn_planner.actions import Advance, ForwardBackward, Free
>>> Advance(0, 3, save=(1, 2))
Advance(0, 3, save=(1, 2))

means "run blocks 0, 1 and 2 without grad from the state at boundary 0, store the states at
boundaries 1 and 2, and keep the state at boundary 3 at hand as the working state".
``ForwardBackward(3)`` then re-runs block 3 with grad from that working state and backpropagates
its loss together with the gradient arriving at its output state, in one autograd traversal.
``Free(2)`` drops the stored state at boundary 2.

Stored states include the initial state; the working state is not a stored state.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Action", "Advance", "ForwardBackward", "Free"]


@dataclass(frozen=True, slots=True)
class Advance:
    """Run blocks ``start .. stop-1`` without grad from the state at boundary ``start``.

    The state at ``start`` is read from the stored states or is the working state. The states at
    the boundaries in ``save`` (each with ``start < s <= stop``) are stored on the way; the state at
    ``stop`` becomes the working state. Costs ``stop - start`` block forward evaluations.
    """

    start: int
    stop: int
    save: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.save, tuple):
            object.__setattr__(self, "save", tuple(self.save))

    def __repr__(self) -> str:
        return f"Advance({self.start}, {self.stop}, save={self.save!r})"


@dataclass(frozen=True, slots=True)
class ForwardBackward:
    """Re-run block ``block`` with grad and backpropagate it, in one autograd traversal.

    The block's input state is the stored state at boundary ``block`` or the working state if that
    is at ``block``. The traversal takes the block's loss and the gradient that arrived at its
    output state (from block ``block + 1``, or from the final-state loss for the last block), and
    leaves the gradient at its input state for block ``block - 1``. Costs one forward evaluation.
    Afterwards there is no working state.
    """

    block: int

    def __repr__(self) -> str:
        return f"ForwardBackward({self.block})"


@dataclass(frozen=True, slots=True)
class Free:
    """Drop the stored state at boundary ``boundary``."""

    boundary: int

    def __repr__(self) -> str:
        return f"Free({self.boundary})"


Action = Advance | ForwardBackward | Free
