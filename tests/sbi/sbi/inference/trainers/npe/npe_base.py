"""Mirror of sbi.inference.trainers.npe.npe_base.PosteriorEstimatorTrainer."""
from sbi.inference.trainers.base import NeuralInference


class PosteriorEstimatorTrainer(NeuralInference):
    def __init__(self, prior=None, density_estimator="maf", device="cpu", **kw):
        super().__init__(prior=prior, device=device, **kw)
        self._posterior = None
        self.use_non_atomic_loss = False
