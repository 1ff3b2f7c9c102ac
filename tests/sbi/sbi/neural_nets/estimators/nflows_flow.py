"""Mirror of sbi.neural_nets.estimators.nflows_flow.NFlowsFlow (a tiny affine "flow" here)."""
import torch
from torch import nn

from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
from sbi.utils.sbiutils import Standardize


class _ConditionalAffineFlow(nn.Module):
    """Stands in for nflows.flows.base.Flow: transform + embedding net."""

    def __init__(self, theta_dim: int, x_dim: int, hidden: int):
        super().__init__()
        self._embedding_net = nn.Sequential(Standardize(torch.zeros(x_dim), torch.ones(x_dim)),
                                            nn.Identity())
        self._transform = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(),
                                        nn.Linear(hidden, 2 * theta_dim))
        self._distribution_dim = theta_dim


class NFlowsFlow(ConditionalDensityEstimator):
    def __init__(self, theta_dim: int, x_dim: int, hidden: int = 8):
        net = _ConditionalAffineFlow(theta_dim, x_dim, hidden)
        super().__init__(net, torch.Size([theta_dim]), torch.Size([x_dim]))
