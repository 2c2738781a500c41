"""Small building blocks shared by the xLSTM layers: causal conv, head-wise linear,
gated feed-forward, soft cap and the papers' initialisers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def small_init_(w: torch.Tensor, dim: int) -> torch.Tensor:
    """'small init' (Nguyen & Salazar 2019): N(0, sqrt(2 / (5 d)))."""
    return nn.init.normal_(w, mean=0.0, std=math.sqrt(2.0 / (5.0 * dim)))


def wang_init_(w: torch.Tensor, dim: int, num_blocks: int) -> torch.Tensor:
    """'wang init' (GPT-J) for output projections: N(0, 2 / (num_blocks sqrt(d)))."""
    return nn.init.normal_(w, mean=0.0, std=2.0 / num_blocks / math.sqrt(dim))


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap); identity when cap is None."""
    return x if cap is None else cap * torch.tanh(x / cap)


class CausalConv1d(nn.Module):
    """Causal depthwise 1-D convolution over time with a carried state.

    Input ``(B, T, D)``. The state holds the last ``kernel_size - 1`` inputs
    ``(B, K-1, D)``, so processing a sequence in pieces equals one pass. An empty
    state is zeros (the same as left zero-padding).
    """

    def __init__(self, dim: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"CausalConv1d kernel_size must be >= 1, got {kernel_size}")
        self.dim, self.kernel_size = dim, kernel_size
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch's Conv1d default (kaiming-uniform with a = sqrt(5)); fan_in = kernel_size
        bound = 1.0 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def empty_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch, self.kernel_size - 1, self.dim, device=device, dtype=dtype)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, T, D)``; ``reset (B, T)`` bool marks tokens that start a new document:
        the output at t then only sees inputs of t's own document (taps reaching across a
        boundary, or into ``state`` after a reset, read zeros), and the returned state
        keeps only inputs of the last document."""
        B, T, D = x.shape
        K = self.kernel_size
        if state is None:
            state = self.empty_state(B, x.device, x.dtype)
        xs = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+T, D)
        if reset is not None:
            # document index of every position of xs; the carried state is document 0
            seg = torch.cumsum(reset.to(torch.int32), dim=1)
            seg = torch.cat([seg.new_zeros(B, K - 1), seg], dim=1)  # (B, K-1+T)
            cur = seg[:, K - 1 :]  # (B, T)
        # K shifted multiply-adds: the same cross-correlation as a depthwise conv1d,
        # without conv1d's slow CPU paths for depthwise float64 / tiny inputs.
        w = self.weight[:, 0, :]  # (D, K)
        y = None
        for j in range(K):
            tap = xs[:, j : j + T]
            if reset is not None and j < K - 1:
                tap = tap * (seg[:, j : j + T] == cur)[..., None].to(tap.dtype)
            y = tap * w[:, j] if y is None else y + tap * w[:, j]
        if self.bias is not None:
            y = y + self.bias
        new_state = xs[:, xs.shape[1] - (K - 1) :]
        if reset is not None and K > 1:
            keep = seg[:, seg.shape[1] - (K - 1) :] == seg[:, -1:]
            new_state = new_state * keep[..., None].to(new_state.dtype)
        return y, new_state


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map: the input is split into ``num_heads`` blocks, each
    mapped by its own ``(out/h x in/h)`` matrix. Weight ``(H, out_per_head, in_per_head)``."""

    def __init__(self, in_features: int, out_features: int, num_heads: int, bias: bool = False):
        super().__init__()
        if in_features % num_heads or out_features % num_heads:
            raise ValueError(
                f"HeadwiseLinear: in_features={in_features} and out_features={out_features} "
                f"must be divisible by num_heads={num_heads}"
            )
        self.in_features, self.out_features, self.num_heads = in_features, out_features, num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, out_features // num_heads, in_features // num_heads))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / 5.0 / self.weight.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xh = x.unflatten(-1, (self.num_heads, -1))
        y = torch.einsum("...hi,hoi->...ho", xh, self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, num_heads={self.num_heads}, bias={self.bias is not None}"


class GatedFFN(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)). act='swish' gives SwiGLU, 'gelu' GeGLU."""

    def __init__(self, dim: int, inner: int, act: str = "gelu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        acts = {"gelu": F.gelu, "swish": F.silu, "relu": F.relu}
        if act not in acts:
            raise ValueError(f"GatedFFN: unknown activation {act!r}; use one of {sorted(acts)}")
        self.act = acts[act]
        self.gate = nn.Linear(dim, inner, bias=bias)
        self.up = nn.Linear(dim, inner, bias=bias)
        self.down = nn.Linear(inner, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.gate(x)) * self.up(x)))

    def reset_parameters(self, dim: int, num_blocks: int) -> None:
        small_init_(self.gate.weight, dim)
        small_init_(self.up.weight, dim)
        wang_init_(self.down.weight, dim, num_blocks)
        for lin in (self.gate, self.up, self.down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
