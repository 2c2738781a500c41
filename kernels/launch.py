"""What every Triton launcher in this package shares: output allocation and the interpreter check.

``POISON_OUTPUTS`` (tests set it) fills every output buffer with NaN before a kernel
writes it, so an element a kernel forgets to write shows up as NaN instead of
whatever the allocator left there.
"""

from __future__ import annotations

import torch
import triton

POISON_OUTPUTS = False


def empty(shape, dtype, device) -> torch.Tensor:
    """``torch.empty``, NaN-filled when ``POISON_OUTPUTS`` is set."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def interpreted() -> bool:
    """Whether Triton runs kernels under its CPU interpreter (TRITON_INTERPRET=1)."""
    return bool(triton.knobs.runtime.interpret)
