"""sLSTM ops: the step-by-step reference recurrence and the decode step.

Layout: Wx ``(B, T, 4, H, Dh)`` (gate order i, f, z, o), R ``(H, Dh, 4, Dh)``,
b ``(H, 4, Dh)``, state ``SLSTMState(h, c, n, m)`` each ``(B, H, Dh)``.
"""

from .naive import SLSTMState, slstm_empty_state, slstm_recurrent, slstm_step

__all__ = ["SLSTMState", "slstm_empty_state", "slstm_recurrent", "slstm_step"]
