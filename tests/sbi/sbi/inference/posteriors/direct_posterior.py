"""Mirror of sbi.inference.posteriors.direct_posterior.DirectPosterior."""
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.inference.potentials.posterior_based_potential import PosteriorBasedPotential


class DirectPosterior(NeuralPosterior):
    def __init__(self, posterior_estimator, prior, max_sampling_batch_size: int = 10_000,
                 device=None, x_shape=None, enable_transform: bool = True, theta_transform=None):
        self.prior = prior
        self.posterior_estimator = posterior_estimator
        potential_fn = PosteriorBasedPotential(posterior_estimator, prior, None, device=str(device))
        super().__init__(potential_fn=potential_fn, theta_transform=theta_transform,
                         device=device, x_shape=x_shape)
        self.device = self._device  # newer sbi keeps both
        self.max_sampling_batch_size = max_sampling_batch_size
        self._leakage_density_correction_factor = None
        self._purpose = ("It samples the posterior network and rejects samples that lie "
                         "outside of the prior bounds.")
