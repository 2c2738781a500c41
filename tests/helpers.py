"""Shared test helpers: one tensor comparison used by every test."""

from __future__ import annotations

import torch
from torch import Tensor


def assert_close(actual: Tensor, expected: Tensor, rtol: float, atol_floor: float, msg: str = "") -> None:
    """Assert that ``actual`` matches ``expected`` within a relative RMS tolerance.

    Passes when the relative RMS error ``||actual - expected|| / ||expected|| <= rtol``,
    or, as a fallback for (near-)zero references where the relative error is
    meaningless, when the max-abs error ``max|actual - expected| <= atol_floor``.
    Fails on any NaN in either tensor and on shape mismatch. The comparison is done
    in float64, so the tolerance is the only slack.
    """
    prefix = f"{msg}: " if msg else ""
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(
            f"{prefix}shape mismatch: actual {list(actual.shape)} vs expected {list(expected.shape)}"
        )
    a = actual.detach().to(device="cpu", dtype=torch.float64)
    e = expected.detach().to(device="cpu", dtype=torch.float64)
    for name, t in (("actual", a), ("expected", e)):
        num_nan = int(torch.isnan(t).sum())
        if num_nan:
            raise AssertionError(f"{prefix}{name} has {num_nan} NaN(s) out of {t.numel()} elements")
    if a.numel() == 0:
        return
    diff = a - e
    if not torch.isfinite(diff).all():
        bad = tuple((~torch.isfinite(diff)).nonzero()[0].tolist())
        raise AssertionError(
            f"{prefix}non-finite difference at index {list(bad)}: "
            f"actual {a[bad].item()}, expected {e[bad].item()}"
        )
    err_norm = torch.linalg.vector_norm(diff).item()
    ref_norm = torch.linalg.vector_norm(e).item()
    rel_rms = err_norm / ref_norm if ref_norm > 0 else float("inf") if err_norm > 0 else 0.0
    max_abs = diff.abs().max().item()
    if rel_rms <= rtol or max_abs <= atol_floor:
        return
    worst = torch.unravel_index(diff.abs().argmax(), diff.shape)
    worst = tuple(int(i) for i in worst)
    raise AssertionError(
        f"{prefix}relative RMS error {rel_rms:.3e} > rtol {rtol:.1e} and max-abs error "
        f"{max_abs:.3e} > atol_floor {atol_floor:.1e} (worst at index {list(worst)}: "
        f"actual {a[worst].item():.6e}, expected {e[worst].item():.6e}; shape {list(a.shape)})"
    )
