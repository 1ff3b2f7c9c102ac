"""Mirror of sbi.neural_nets.estimators.base.ConditionalDensityEstimator."""
import torch
from torch import nn


class ConditionalDensityEstimator(nn.Module):
    def __init__(self, net: nn.Module, input_shape: torch.Size, condition_shape: torch.Size):
        super().__init__()
        self.net = net
        self.input_shape = input_shape
        self.condition_shape = condition_shape
