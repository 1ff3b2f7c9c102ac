"""Mirror of sbi.utils.torchutils: process_device and BoxUniform."""
from typing import Optional, Union

import torch
from torch.distributions import Independent, Uniform


def process_device(device: Optional[Union[str, torch.device]]) -> str:
    """sbi stores devices as plain strings such as 'cpu' or 'cuda:0'."""
    if device is None:
        return "cpu"
    device = str(device)
    if device == "cuda":
        return "cuda:0"
    return device


class BoxUniform(Independent):
    """Like sbi's BoxUniform: Independent(Uniform(low, high), 1) plus `device`, `low`, `high`."""

    def __init__(self, low, high, reinterpreted_batch_ndims: int = 1, device: Optional[str] = None):
        # Tensors are created on the CPU: these fixtures only *label* storages as cuda:0.
        self.device = process_device(device)
        self.low = torch.as_tensor(low, dtype=torch.float32)
        self.high = torch.as_tensor(high, dtype=torch.float32)
        super().__init__(Uniform(low=self.low, high=self.high, validate_args=False),
                         reinterpreted_batch_ndims)
