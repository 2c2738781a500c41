"""Test-session setup shared by every test directory.

Without a GPU, Triton kernels run on the CPU under Triton's interpreter. The switch
is read when ``@triton.jit`` decorates a kernel, so it must be set before anything
imports triton; conftest.py is imported by pytest before any test module.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
