"""Mirror of sbi.inference.posteriors.base_posterior.NeuralPosterior."""
from typing import Optional

from sbi.utils.torchutils import process_device


class NeuralPosterior:
    def __init__(self, potential_fn, theta_transform=None, device: Optional[str] = None,
                 x_shape=None):
        self._device = process_device(device)
        self.potential_fn = potential_fn
        self.theta_transform = theta_transform
        self._map = None
        self._purpose = ""
        self._x = None
        self._x_shape = x_shape

    def set_default_x(self, x):
        self._x = x
        self.potential_fn.set_x(x)
        return self

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state_dict):
        self.__dict__ = state_dict
