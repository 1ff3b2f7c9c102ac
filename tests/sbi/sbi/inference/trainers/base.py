"""Mirror of sbi.inference.trainers.base.NeuralInference (pickling behaviour of sbi <= 0.25)."""
from sbi.utils.torchutils import process_device


class NeuralInference:
    def __init__(self, prior=None, device: str = "cpu", show_progress_bars: bool = True):
        self._device = process_device(device)
        self._prior = prior
        self._neural_net = None
        self._build_neural_net = None
        self._show_progress_bars = show_progress_bars
        self._theta_roundwise = []
        self._x_roundwise = []
        self._prior_masks = []
        self._proposal_roundwise = []
        self._data_round_index = []
        self._round = 0
        self._val_loss = float("Inf")
        self._summary_writer = None
        self._summary = dict(epochs_trained=[], best_validation_loss=[],
                             validation_loss=[], training_loss=[], epoch_durations_sec=[])

    def append_simulations(self, theta, x, proposal=None, exclude_invalid_x=False, data_device=None):
        self._theta_roundwise.append(theta)
        self._x_roundwise.append(x)
        self._prior_masks.append(theta.new_ones(theta.shape[0], 1, dtype=theta.dtype).bool())
        self._proposal_roundwise.append(proposal if proposal is not None else self._prior)
        self._data_round_index.append(self._round)
        return self

    def __getstate__(self):
        dict_to_save = {}
        unpicklable_attributes = ["_summary_writer", "_build_neural_net"]
        for key in self.__dict__.keys():
            if key in unpicklable_attributes:
                dict_to_save[key] = None
            else:
                dict_to_save[key] = self.__dict__[key]
        return dict_to_save

    def __setstate__(self, state_dict):
        self.__dict__ = state_dict
