"""Mirror of sbi.inference.potentials.posterior_based_potential.PosteriorBasedPotential."""
from sbi.inference.potentials.base_potential import BasePotential


class PosteriorBasedPotential(BasePotential):
    def __init__(self, posterior_estimator, prior, x_o=None, device="cpu"):
        super().__init__(prior, x_o, device)
        self.posterior_estimator = posterior_estimator
        self.posterior_estimator.eval()

