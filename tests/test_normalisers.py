"""softmax, log_softmax and logsumexp: the semantics of scipy.special for one axis, checked against
scipy itself and against the long-double reference (tests/reference.py), for every axis and
layout."""

import numpy as np
import pytest

import fastxent
import reference
from helpers import ulp_error


def scipy_special():
    return pytest.importorskip("scipy.special",
                               reason="scipy is not installed: scipy comparisons skipped")

FUNCTIONS = ["softmax", "log_softmax", "logsumexp"]
SHAPES_AND_AXES = [((6,), 0), ((6,), -1), ((9, 5), 1), ((9, 5), 0), ((9, 5), -2),
                   ((4, 5, 6), 0), ((4, 5, 6), 1), ((4, 5, 6), 2), ((4, 5, 6), -1)]


def _logits(shape, dtype, scale=4.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("shape, axis", SHAPES_AND_AXES,
                         ids=[f"{s}-axis{a}" for s, a in SHAPES_AND_AXES])
def test_normaliser_matches_scipy_along_any_axis(backend, dtype, name, shape, axis):
    x = _logits(shape, dtype)
    got = getattr(fastxent, name)(x, axis=axis)
    expected = getattr(scipy_special(), name)(x, axis=axis)
    assert got.dtype == dtype and got.shape == np.shape(expected)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, expected, rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("shape, axis", SHAPES_AND_AXES,
                         ids=[f"{s}-axis{a}" for s, a in SHAPES_AND_AXES])
def test_normaliser_within_a_few_ulp_of_the_long_double_reference_along_any_axis(backend, dtype,
                                                                                 name, shape, axis):
    x = _logits(shape, dtype, seed=1)
    got = getattr(fastxent, name)(x, axis=axis)
    exact = getattr(reference, name)(x, axis)
    if name == "logsumexp":
        # m + log s cancels where the result is near 0: bound by an ulp of max |x| as well
        error = np.abs(got.astype(np.longdouble) - exact)
        bound = np.maximum(np.abs(exact), np.abs(x).max(axis=axis)).astype(dtype)
        assert (error <= 4 * np.spacing(bound)).all()
    else:
        # log_softmax near 0 keeps its small values exactly: (x - m) - log s
        assert ulp_error(got, exact).max() <= (2.0 if dtype == np.float32 else 6.0)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_class_axis_not_last_equals_moving_it_last(backend, dtype, name):
    x = _logits((7, 30, 11), dtype, seed=2)
    f = getattr(fastxent, name)
    got = f(x, axis=1)
    moved = f(np.moveaxis(x, 1, -1))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got if name == "logsumexp" else np.moveaxis(got, 1, -1), moved,
                               rtol=4 * eps, atol=4 * eps)
    expected = getattr(reference, name)(np.moveaxis(x, 1, -1), -1)
    np.testing.assert_allclose(moved, expected.astype(np.float64),
                               rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_huge_logits_do_not_overflow(backend, dtype, name):
    big = 3e4 if dtype == np.float32 else 1e300
    x = np.array([[big, big * 0.5, -big], [-big, -big, -big * 0.5]], dtype=dtype)
    got = getattr(fastxent, name)(x)
    assert np.isfinite(got).all()
    expected = getattr(scipy_special(), name)(x.astype(np.float64), axis=-1)
    np.testing.assert_allclose(got, expected, rtol=4 * np.finfo(dtype).eps)


def test_softmax_of_a_constant_row_is_uniform_and_of_one_class_is_one(backend, dtype):
    np.testing.assert_array_equal(fastxent.softmax(np.full((3, 4), 7.5, dtype=dtype)),
                                  np.full((3, 4), 0.25))
    np.testing.assert_array_equal(fastxent.softmax(np.array([[-3.0], [2.0]], dtype=dtype)),
                                  [[1.0], [1.0]])
    np.testing.assert_array_equal(fastxent.log_softmax(np.array([[-3.0], [2.0]], dtype=dtype)),
                                  [[0.0], [0.0]])
    np.testing.assert_array_equal(fastxent.logsumexp(np.array([[-3.0], [2.0]], dtype=dtype)),
                                  [-3.0, 2.0])


def test_minus_inf_entries_follow_scipy(backend, dtype):
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [-np.inf, 2.0, -np.inf]],
                 dtype=dtype)
    with np.errstate(all="ignore"):
        expected = {name: getattr(scipy_special(), name)(x.astype(np.float64), axis=-1)
                    for name in FUNCTIONS}
    for name in FUNCTIONS:
        got = getattr(fastxent, name)(x)
        np.testing.assert_allclose(got, expected[name],
                                   rtol=4 * np.finfo(dtype).eps)  # NaN where scipy has NaN
    assert fastxent.softmax(x)[0, 1] == 0 and fastxent.log_softmax(x)[0, 1] == -np.inf
    assert fastxent.logsumexp(x)[1] == -np.inf and np.isnan(fastxent.softmax(x)[1]).all()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_nan_in_a_row_makes_that_row_nan_only(backend, dtype, name):
    x = _logits((3, 5), dtype, seed=3)
    clean = getattr(fastxent, name)(x)
    x[1, 2] = np.nan
    got = getattr(fastxent, name)(x)
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("name", FUNCTIONS)
def test_normaliser_out_along_a_non_last_axis(backend, dtype, name):
    x = _logits((6, 9, 4), dtype, seed=4)
    f = getattr(fastxent, name)
    expected = f(x, axis=1)
    out = np.full(expected.shape, np.nan, dtype=dtype)
    assert f(x, axis=1, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_in_place_normaliser_along_a_non_last_axis(backend, dtype, name):
    x = _logits((5, 8, 3), dtype, seed=5)
    f = getattr(fastxent, name)
    expected = f(x, axis=0)
    work = x.copy()
    assert f(work, axis=0, out=work) is work
    np.testing.assert_array_equal(work, expected)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_normalisers_keep_float16_and_promote_integers(backend, name):
    x16 = _logits((5, 6), np.float16, seed=6)
    f = getattr(fastxent, name)
    got = f(x16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, f(x16.astype(np.float32)).astype(np.float16))
    xi = np.arange(12).reshape(3, 4) % 5
    assert f(xi).dtype == np.float64
    np.testing.assert_array_equal(f(xi), f(xi.astype(np.float64)))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_normalisers_of_a_torch_reference(backend, dtype, name):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x = _logits((20, 13), dtype, seed=7)
    t = torch.tensor(x)
    expected = {"softmax": torch.softmax, "log_softmax": torch.log_softmax,
                "logsumexp": torch.logsumexp}[name](t, 1).numpy()
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(getattr(fastxent, name)(x), expected, rtol=rtol, atol=rtol * 10)
