"""What the test modules share besides the reference: the kernel modules, seeded generators and
the measures of error (ulps)."""

import importlib
import zlib

import numpy as np
import pytest

from fastxent._flags import env_flag


def load_kernels(name):
    """The kernel module called ``name`` ("compiled" or "python"), skipping the test if the
    compiled one is unavailable, or failing it under ``FASTXENT_REQUIRE_EXTENSION=1`` (CI)."""
    if name == "python":
        return importlib.import_module("fastxent._kernels_py")
    try:
        return importlib.import_module("fastxent._kernels_c")
    except ImportError as exc:
        if env_flag("FASTXENT_REQUIRE_EXTENSION"):
            pytest.fail(f"FASTXENT_REQUIRE_EXTENSION=1 but fastxent._kernels_c is missing: {exc}")
        pytest.skip(f"compiled extension fastxent._kernels_c unavailable: {exc}")


def rng_for(*key):
    """A generator seeded by ``key`` (any repr-able values): the same stream for the same case
    in every run and on every platform."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def numerical_gradient(f, x, h=1e-6):
    """Central differences of the scalar function ``f`` at ``x``, step ``h``."""
    grad = np.empty_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (f(up) - f(down)) / (2 * h)
    return grad


def n_classes_of(shape):
    """The number of classes of logits of ``shape`` in PyTorch's layout (axis 1, or 0 in 1-D)."""
    return shape[1] if len(shape) > 1 else shape[0]


def target_shape_of(shape):
    """The shape of the class indices (and of the ``none`` losses) of logits of ``shape``."""
    return shape[:1] + shape[2:] if len(shape) > 1 else ()


def ulp_error(actual, exact):
    """|actual - exact| in ulps: units of the spacing of the exact value rounded to the dtype of
    ``actual`` (the exact value is given in long double)."""
    actual = np.asarray(actual)
    exact = np.asarray(exact, dtype=np.longdouble)
    spacing = np.spacing(np.abs(exact.astype(actual.dtype))).astype(np.longdouble)
    return np.abs(actual.astype(np.longdouble) - exact) / spacing


def assert_ulps(actual, expected, ulps=4):
    """Same dtype and shape, and every element within ``ulps`` spacings of ``expected``'s own."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    spacing = np.spacing(np.abs(expected).astype(expected.dtype))
    np.testing.assert_array_less(np.abs(actual.astype(np.float64) - expected),
                                 ulps * spacing + 1e-300)


def assert_ulps_of_largest(actual, expected, ulps=4):
    """Same dtype and shape, and every element within ``ulps`` spacings of the largest element of
    ``expected`` (gradients: smoothing terms cancel in the small ones)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tolerance = ulps * np.spacing(np.abs(expected).max())
    np.testing.assert_array_less(np.abs(actual.astype(np.float64) - expected), tolerance)
