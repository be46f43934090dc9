"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors run faster on one intra-op thread; the previous count is restored after the
    module. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True, scope="session")
def private_speed_probe_cache(tmp_path_factory):
    """The speed probe's cache (guided_diffusion/precision.py) of the whole session, main.py
    subprocesses included, goes to a temporary folder, never to the user's ~/.cache."""
    import os
    old = os.environ.get("CODPS_CACHE_DIR")
    os.environ["CODPS_CACHE_DIR"] = str(tmp_path_factory.mktemp("codps_cache"))
    yield
    if old is None:
        os.environ.pop("CODPS_CACHE_DIR", None)
    else:
        os.environ["CODPS_CACHE_DIR"] = old
