"""Mirror of sbi.inference.trainers.npe.npe_c.NPE_C (alias SNPE_C)."""
from sbi.inference.trainers.npe.npe_base import PosteriorEstimatorTrainer


class NPE_C(PosteriorEstimatorTrainer):
    def __init__(self, prior=None, density_estimator="maf", device="cpu", **kw):
        super().__init__(prior=prior, density_estimator=density_estimator, device=device, **kw)
        self._num_atoms = 10
        self._use_combined_loss = False


SNPE_C = NPE_C
