"""Every behaviour test runs on both kernel modules and both float dtypes.

``backend`` swaps ``fastxent._backend.kernels`` (which the public functions look up at call
time) for the compiled or the pure-Python module. Where the compiled module is missing the
compiled cases skip, except under ``FASTXENT_REQUIRE_EXTENSION=1`` (CI), where they fail: CI
must never test the fallback twice.
"""

import importlib

import numpy as np
import pytest

import fastxent
from fastxent._flags import env_flag

BACKENDS = ("compiled", "python")
DTYPES = (np.float32, np.float64)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running cases (deselect with -m 'not slow')")


def load_kernels(name):
    """The kernel module called ``name``, skipping (or failing in CI) if it is unavailable."""
    if name == "python":
        return importlib.import_module("fastxent._kernels_py")
    try:
        return importlib.import_module("fastxent._kernels_c")
    except ImportError as exc:
        if env_flag("FASTXENT_REQUIRE_EXTENSION"):
            pytest.fail(f"FASTXENT_REQUIRE_EXTENSION=1 but fastxent._kernels_c is missing: {exc}")
        pytest.skip(f"compiled extension fastxent._kernels_c unavailable: {exc}")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The name of the kernel module every public call of the test goes through."""
    monkeypatch.setattr(fastxent._backend, "kernels", load_kernels(request.param))
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda dt: np.dtype(dt).name)
def dtype(request):
    return request.param
