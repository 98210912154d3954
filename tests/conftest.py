"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (tiny matrices: as fast, and immune to OpenMP spin-waits when other
    jobs share the two CPU cores, where two threads made UNet steps up to 10x slower); restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
