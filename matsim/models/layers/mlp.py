"""The multilayer perceptron on invariant (scalar) features shared by the potentials."""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """SiLU MLP with layer sizes ``sizes`` = [in, hidden..., out]; ``bias=False`` maps 0 to exactly 0.

    Shapes: (..., sizes[0]) → (..., sizes[-1]).
    """

    def __init__(self, sizes: Sequence[int], bias: bool = True) -> None:
        layers: list[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=bias))
            if k < len(sizes) - 2:
                layers.append(nn.SiLU())
        super().__init__(*layers)
