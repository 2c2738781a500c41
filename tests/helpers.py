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


def backward_gradient_elements(loss: Tensor) -> dict[str, int]:
    """Run ``loss.backward()`` and count the gradient elements every autograd node computes.

    Returns ``{node type: elements}`` summed over the nodes of ``loss``'s graph (each
    node's gradients with respect to its inputs). This is the work and memory of the
    backward pass without timing: a loop over T that indexes ``x[:, t]`` gives every step
    a ``SelectBackward0`` that builds a zero gradient the size of all of x, so the total
    grows as T^2, while a loop over tensors unbound once before it stays O(T).
    """
    counts: dict[str, int] = {}
    handles, seen, stack = [], set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = node.name()

        def count(grad_inputs, grad_outputs, name=name):
            counts[name] = counts.get(name, 0) + sum(g.numel() for g in grad_inputs if g is not None)

        handles.append(node.register_hook(count))
        stack.extend(child for child, _ in node.next_functions)
    try:
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def assert_backward_linear_in_T(make_loss, T: int = 16, limit: float = 4.4) -> None:
    """Assert that the backward of ``make_loss(T)`` (a scalar loss of a T-step run) is linear in T.

    Counts the gradient elements of the backward (``backward_gradient_elements``) at T
    and 4T. A linear backward grows at most 4x plus constant terms (4.02-4.05 measured
    for the loops here); one full-size zero gradient per step adds a T^2 term (the
    loops that indexed ``x[:, t]`` grew 5.1-9.7x at T = 16). Deterministic: no timing.
    """
    small = backward_gradient_elements(make_loss(T))
    big = backward_gradient_elements(make_loss(4 * T))
    growth = sum(big.values()) / sum(small.values())
    top = sorted(big.items(), key=lambda kv: -kv[1])[:4]
    if growth > limit:
        raise AssertionError(
            f"backward gradient elements grow {growth:.2f}x from T={T} to T={4 * T} (linear: about 4, "
            f"limit {limit}); largest node types at T={4 * T}: {top}. A loop that indexes x[:, t] "
            "builds a full-size zero gradient per step: unbind the inputs once before the loop."
        )
