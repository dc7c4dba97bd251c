import sys
from pathlib import Path

import pytest

# Test-only helpers (the helpers/ package) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_torch_thread():
    """2 shared cores: in-process training uses one intra-op thread, as the OMP_NUM_THREADS=1 subprocesses do (a
    second thread only adds contention and keeps in-process runs comparable with them)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
