"""Mirror of sbi.inference.potentials.base_potential.BasePotential."""
from typing import Optional

import torch


class BasePotential:
    def __init__(self, prior, x_o: Optional[torch.Tensor] = None, device: str = "cpu"):
        self.device = device
        self.prior = prior
        self._x_o = x_o

    def set_x(self, x_o):
        self._x_o = x_o
