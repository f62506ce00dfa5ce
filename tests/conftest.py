"""Shared test fixtures."""

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Leave no Accelerate state (a process-wide singleton) and no torch thread change behind a test."""
    threads = torch.get_num_threads()
    existed = bool(AcceleratorState._shared_state)
    yield
    torch.set_num_threads(threads)
    if not existed:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
