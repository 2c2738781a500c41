"""Normalisation layers: LayerNorm / RMSNorm over the last dim, and per-head variants.

All reduce in float32 (then cast back), so bf16 activations get fp32 statistics.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with optional weight and bias."""

    def __init__(self, dim: int, eps: float = 1e-5, weight: bool = True, bias: bool = False):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = xf.mean(dim=-1, keepdim=True)
        var = xf.var(dim=-1, keepdim=True, unbiased=False)
        return ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)

    def affine(self, y: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(self.normalize(x))

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(LayerNorm):
    """RMSNorm over the last dimension (xLSTM-7B)."""

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)


class MultiHeadLayerNorm(LayerNorm):
    """LayerNorm of each head separately (the paper's group norm on cell outputs).

    Input ``(..., H, Dh)``; statistics per head; the weight spans all ``H * Dh``
    features. Output ``(..., H * Dh)``.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5, weight: bool = True, bias: bool = False):
        super().__init__(num_heads * head_dim, eps, weight, bias)
        self.num_heads, self.head_dim = num_heads, head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.num_heads, self.head_dim):
            raise ValueError(
                f"MultiHeadLayerNorm expects (..., {self.num_heads}, {self.head_dim}), got {tuple(x.shape)}"
            )
        y = self.normalize(x).flatten(-2)
        return self.affine(y)


def make_norm(kind: str, dim: int, eps: float) -> LayerNorm:
    """Norm by name: 'layernorm' or 'rmsnorm' (weight, no bias)."""
    if kind == "layernorm":
        return LayerNorm(dim, eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    raise ValueError(f"unknown norm {kind!r}; use 'layernorm' or 'rmsnorm'")
