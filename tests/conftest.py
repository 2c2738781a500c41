"""Test-session setup shared by every test directory.

Without a GPU, Triton kernels run on the CPU under Triton's interpreter. The switch
is read when ``@triton.jit`` decorates a kernel, so it must be set before anything
imports triton; conftest.py is imported by pytest before any test module.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one intra-op thread: the models here are tiny, and a second
    thread only adds wake-up latency, which grows to milliseconds per op when other
    processes compete for the 2 cores of the development and CI machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Deprecation announcements reached from our code fail the test (autouse fixture).
from tests.deprecations import fail_on_deprecations_from_our_code  # noqa: E402, F401
