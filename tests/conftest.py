"""Every behaviour test runs on both kernel modules and both float dtypes.

``backend`` swaps ``fastxent._backend.kernels`` (which the public functions look up at call
time) for the compiled or the pure-Python module. Where the compiled module is missing the
compiled cases skip, except under ``FASTXENT_REQUIRE_EXTENSION=1`` (CI), where they fail: CI
must never test the fallback twice.
"""

import numpy as np
import pytest

import fastxent
from helpers import load_kernels

BACKENDS = ("compiled", "python")
DTYPES = (np.float32, np.float64)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The name of the kernel module every public call of the test goes through."""
    monkeypatch.setattr(fastxent._backend, "kernels", load_kernels(request.param))
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda dt: np.dtype(dt).name)
def dtype(request):
    return request.param
