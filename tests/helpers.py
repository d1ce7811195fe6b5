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


def in_layout(arr, layout, rng=None):
    """A copy of ``arr``, equal to it, laid out in memory as ``layout``: ``C``; ``fortran``;
    ``strided``, every k-th element of a larger array along each axis (k = 2, 3, 2, 3, ... or,
    with ``rng``, drawn from 1 to 3); ``negative strides``, reversed along axis 0 only (the rows
    read backwards, each as laid out); ``every stride negative``; ``read-only``; ``non-native
    byte order``; ``misaligned`` (one byte off its dtype's alignment)."""
    if layout == "C":
        return arr.copy()
    if layout == "fortran":
        return np.asfortranarray(arr)
    if layout == "strided":
        steps = (tuple(int(s) for s in rng.integers(1, 4, arr.ndim)) if rng is not None
                 else tuple(2 + k % 2 for k in range(arr.ndim)))
        big = np.zeros(tuple(max(1, n * s) for n, s in zip(arr.shape, steps)), dtype=arr.dtype)
        view = big[tuple(slice(0, n * s, s) for n, s in zip(arr.shape, steps))]
        view[...] = arr
        return view
    if layout == "negative strides":
        return np.ascontiguousarray(arr[::-1])[::-1]
    if layout == "every stride negative":
        return np.flip(np.flip(arr).copy())
    if layout == "read-only":
        out = arr.copy()
        out.flags.writeable = False
        return out
    if layout == "non-native byte order":
        return arr.astype(arr.dtype.newbyteorder("S"))
    if layout == "misaligned":
        buf = np.zeros(arr.nbytes + 1, dtype=np.uint8)[1:]
        out = buf.view(arr.dtype).reshape(arr.shape) if arr.size else arr.copy()
        out[...] = arr
        return out
    raise AssertionError(layout)


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
