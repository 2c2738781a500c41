"""``nn.Module`` layers, between the parameter-free ops in ``kernels/`` and the blocks."""

from .classic import GRU, LSTM1997, CuDNNLSTM, ElmanRNN, LSTMForget, PeepholeLSTM, RecurrentLayer

__all__ = ["GRU", "LSTM1997", "CuDNNLSTM", "ElmanRNN", "LSTMForget", "PeepholeLSTM", "RecurrentLayer"]
