import numpy as np
import pytest

import mha

DTYPES = ["f32", "f16", "bf16"]


@pytest.fixture(params=mha.supported_isas())
def isa(request):
    """Runs a test once per kernel family this CPU and build have."""
    previous = mha.active_isa()
    mha.set_isa(request.param)
    yield request.param
    mha.set_isa(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
