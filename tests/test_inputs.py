"""Every array layout and dtype gives the contiguous result, inputs are never modified, `out=`
works as documented, thread counts do not change a bit, and non-finite input follows the table."""

import numpy as np
import pytest

import fastxent

N, C = 64, 7


def _data(dtype, seed=0, shape=(N, C)):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(dtype), rng.integers(0, shape[1], shape[0])


def _all_results(x, y):
    """Every public function on (x, y), as a list of arrays, for comparisons."""
    onehot = np.eye(x.shape[1], dtype=np.float64)[y]
    return [np.asarray(r) for r in (
        fastxent.cross_entropy(x, y, reduction="none"),
        *fastxent.cross_entropy_with_grad(x, y, weight=np.linspace(0.5, 2, x.shape[1]),
                                          label_smoothing=0.1),
        *fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x),
        *fastxent.softmax_cross_entropy_with_logits_and_grad(onehot, x),
        fastxent.softmax(x), fastxent.log_softmax(x), fastxent.logsumexp(x),
    )]


def _layouts(x):
    c_order = np.ascontiguousarray(x)
    fortran = np.asfortranarray(x)
    strided = np.zeros((x.shape[0] * 2, x.shape[1] * 3), dtype=x.dtype)[::2, ::3]
    strided[...] = x
    reversed_rows = np.ascontiguousarray(x[::-1])[::-1]
    read_only = x.copy()
    read_only.setflags(write=False)
    swapped = x.astype(x.dtype.newbyteorder())
    return {"fortran": fortran, "strided": strided, "negative strides": reversed_rows,
            "read-only": read_only, "non-native byte order": swapped, "C": c_order}


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative strides", "read-only",
                                    "non-native byte order"])
def test_every_layout_gives_the_contiguous_result(backend, dtype, layout):
    x, y = _data(dtype)
    expected = _all_results(np.ascontiguousarray(x), y)
    arr = _layouts(x)[layout]
    eps = np.finfo(dtype).eps
    for got, want in zip(_all_results(arr, y), expected):
        # strided rows are summed in another order than contiguous ones: the last bits may differ
        np.testing.assert_allclose(got, want, rtol=4 * eps, atol=4 * eps * np.abs(want).max())


def test_memmap_read_only_input(backend, dtype, tmp_path):
    x, y = _data(dtype)
    path = tmp_path / "logits.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    for got, want in zip(_all_results(mapped, y), _all_results(x, y)):
        np.testing.assert_array_equal(got, want)


def test_inputs_are_never_modified(backend, dtype):
    x, y = _data(dtype)
    x[0, 0] = -np.inf
    x[1, :] = np.nan
    copies = (x.copy(), y.copy())
    weight = np.linspace(0.5, 2, C)
    weight_copy = weight.copy()
    _all_results(x, y)
    fastxent.cross_entropy_with_grad(x, y, weight=weight, reduction="none", grad_output=np.ones(N))
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(y, copies[1])
    np.testing.assert_array_equal(weight, weight_copy)


def test_labels_of_non_native_byte_order_and_strided_labels(backend, dtype):
    x, y = _data(dtype)
    expected = fastxent.cross_entropy(x, y, reduction="none")
    np.testing.assert_array_equal(fastxent.cross_entropy(x, y.astype(">i4"), reduction="none"), expected)
    strided = np.repeat(y, 2)[::2]
    np.testing.assert_array_equal(fastxent.cross_entropy(x, strided, reduction="none"), expected)


@pytest.mark.parametrize("shape, axis", [((C, N), 0), ((5, C, 9), 1), ((4, 3, C), 2), ((4, 3, C), -1)])
def test_tensorflow_axis_argument_equals_moving_the_axis_last(backend, dtype, shape, axis):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(shape).astype(dtype)
    labels = rng.random(shape).astype(dtype)
    loss, grad = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, logits, axis=axis)
    last_loss, last_grad = fastxent.softmax_cross_entropy_with_logits_and_grad(
        np.moveaxis(labels, axis, -1), np.moveaxis(logits, axis, -1))
    np.testing.assert_allclose(loss, last_loss, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(grad, np.moveaxis(last_grad, -1, axis), rtol=4 * np.finfo(dtype).eps,
                               atol=4 * np.finfo(dtype).eps)
    for name in ("softmax", "log_softmax", "logsumexp"):
        f = getattr(fastxent, name)
        expected = f(np.moveaxis(logits, axis, -1))
        got = f(logits, axis=axis)
        np.testing.assert_allclose(got if name == "logsumexp" else np.moveaxis(got, axis, -1), expected,
                                   rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


def test_thread_counts_give_identical_bits(backend, dtype):
    for shape in [(4096, 100), (20000, 10), (64, 5000), (16, 12, 64, 64)]:
        rng = np.random.default_rng(shape[1])
        x = rng.standard_normal(shape).astype(dtype)
        y = rng.integers(0, shape[1], shape[:1] + shape[2:])
        one = fastxent.cross_entropy_with_grad(x, y, n_threads=1, label_smoothing=0.1)
        two = fastxent.cross_entropy_with_grad(x, y, n_threads=2, label_smoothing=0.1)
        default = fastxent.cross_entropy_with_grad(x, y, label_smoothing=0.1)
        for a, b, c in zip(one, two, default):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(fastxent.softmax(x, axis=1, n_threads=1),
                                      fastxent.softmax(x, axis=1, n_threads=2))


# ---------------------------------------------------------------------------------- out=

def test_out_receives_the_gradient_and_is_returned(backend, dtype):
    x, y = _data(dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, y)
    out = np.full_like(x, 7.0)
    loss2, returned = fastxent.cross_entropy_with_grad(x, y, out=out)
    assert returned is out and loss2 == loss
    np.testing.assert_array_equal(out, grad)
    out_f = np.asfortranarray(np.zeros_like(x))  # any writeable layout
    fastxent.cross_entropy_with_grad(x, y, out=out_f)
    np.testing.assert_array_equal(out_f, grad)


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.2, "weight": np.linspace(0.1, 1, C)}])
def test_in_place_gradient_equals_out_of_place(backend, dtype, kwargs):
    x, y = _data(dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, y, **kwargs)
    work = x.copy()
    loss2, returned = fastxent.cross_entropy_with_grad(work, y, out=work, **kwargs)
    assert returned is work and loss2 == loss
    np.testing.assert_array_equal(work, grad)
    work = x.copy()
    fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, work, out=work)
    np.testing.assert_array_equal(work, fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x)[1])


def test_normalisers_write_out_and_work_in_place(backend, dtype):
    x, _ = _data(dtype)
    for name in ("softmax", "log_softmax"):
        f = getattr(fastxent, name)
        expected = f(x)
        out = np.empty_like(x)
        assert f(x, out=out) is out
        np.testing.assert_array_equal(out, expected)
        work = x.copy()
        f(work, out=work)
        np.testing.assert_array_equal(work, expected)
    out = np.empty(N, dtype=dtype)
    assert fastxent.logsumexp(x, out=out) is out
    np.testing.assert_array_equal(out, fastxent.logsumexp(x))


def test_out_overlapping_an_input_other_than_in_place_is_rejected(backend, dtype):
    x, y = _data(dtype, shape=(N, C))
    big = np.zeros((N + 1, C), dtype=dtype)
    big[:N] = x
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.cross_entropy_with_grad(big[:N], y, out=big[1:])
    labels = np.eye(C, dtype=dtype)[y]
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.softmax_cross_entropy_with_logits_and_grad(labels, x, out=labels)
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.logsumexp(x, out=x[:, 0])


@pytest.mark.parametrize("bad_out, message", [
    (lambda x: np.empty((N, C + 1), x.dtype), "shape"),
    (lambda x: np.empty((N, C), np.float16), "dtype"),
    (lambda x: np.empty((N, C), x.dtype)[::1].copy().view() if False else _read_only_like(x), "writeable"),
])
def test_bad_out_raises_value_error(backend, dtype, bad_out, message):
    x, y = _data(dtype)
    with pytest.raises(ValueError, match=message):
        fastxent.cross_entropy_with_grad(x, y, out=bad_out(x))
    with pytest.raises(ValueError, match=message):
        fastxent.softmax(x, out=bad_out(x))


def _read_only_like(x):
    out = np.empty_like(x)
    out.setflags(write=False)
    return out


def test_out_that_is_not_an_array_raises_type_error(backend):
    with pytest.raises(TypeError, match="ndarray"):
        fastxent.softmax(np.ones((2, 3)), out=[[0.0] * 3] * 2)


# ---------------------------------------------------------------------------------- dtypes

def test_float16_is_computed_in_float32_and_returned_as_float16(backend):
    x, y = _data(np.float16)
    loss, grad = fastxent.cross_entropy_with_grad(x, y)
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    loss32, grad32 = fastxent.cross_entropy_with_grad(x.astype(np.float32), y)
    assert loss == np.float16(loss32)
    np.testing.assert_array_equal(grad, grad32.astype(np.float16))
    assert fastxent.softmax(x).dtype == np.float16


@pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.uint8, bool])
def test_integer_and_bool_logits_are_computed_in_float64(backend, int_dtype):
    x = (np.arange(12).reshape(4, 3) % 2).astype(int_dtype)
    loss = fastxent.cross_entropy(x, [0, 1, 2, 0])
    assert loss.dtype == np.float64
    assert loss == fastxent.cross_entropy(x.astype(np.float64), [0, 1, 2, 0])
    assert fastxent.logsumexp(x).dtype == np.float64


def test_array_likes_are_accepted(backend):
    assert fastxent.cross_entropy([[1.0, 2.0, 3.0]], [2]) == fastxent.cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([2]))


# ---------------------------------------------------------------------------------- non-finite

def test_minus_inf_logit_without_label_mass_is_harmless(backend, dtype):
    x = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [2, 0], reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    assert grad[0, 1] == 0 and grad[1, 2] == 0
    np.testing.assert_allclose(loss[0], np.log1p(np.exp(-1.0)), rtol=2 * np.finfo(dtype).eps)
    dense_loss, backprop = fastxent.softmax_cross_entropy_with_logits_and_grad(
        np.array([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]], dtype=dtype), x)
    assert np.isfinite(dense_loss).all() and backprop[0, 1] == 0 and backprop[1, 2] == 0


def test_minus_inf_logit_with_label_mass_gives_infinite_loss(backend, dtype):
    x = np.array([[0.0, -np.inf, 1.0]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [1], reduction="none")
    assert loss[0] == np.inf and np.isfinite(grad).all()


@pytest.mark.parametrize("bad_row", [[-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0], [np.nan, 0.0, 1.0],
                                     [0.0, 1.0, np.nan]], ids=["all -inf", "+inf", "nan", "nan last"])
def test_non_finite_rows_are_nan_and_other_rows_unaffected(backend, dtype, bad_row):
    x = np.array([bad_row, [1.0, 2.0, 3.0]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [0, 1], reduction="none")
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
    clean_loss, clean_grad = fastxent.cross_entropy_with_grad(x[1:], [1], reduction="none")
    assert loss[1] == clean_loss[0]
    np.testing.assert_array_equal(grad[1], clean_grad[0])
    assert np.isnan(fastxent.cross_entropy(x, [0, 1]))
    assert np.isnan(fastxent.softmax(x)[0]).all() and np.isnan(fastxent.log_softmax(x)[0]).all()
    assert np.isfinite(fastxent.softmax(x)[1]).all()


def test_ignored_rows_are_zero_whatever_their_logits(backend, dtype):
    x = np.array([[np.nan, 0.0, 1.0], [1.0, 2.0, 3.0]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [-100, 1], reduction="none")
    assert loss[0] == 0 and (grad[0] == 0).all()


def test_logsumexp_of_infinite_rows_follows_scipy(backend, dtype):
    x = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [np.nan, 0.0], [np.inf, np.nan]], dtype=dtype)
    np.testing.assert_array_equal(fastxent.logsumexp(x), [-np.inf, np.inf, np.nan, np.nan])


# ---------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("reduction, expected", [("mean", np.nan), ("sum", 0.0)])
def test_zero_rows_give_empty_results(backend, dtype, reduction, expected):
    x = np.empty((0, 4), dtype=dtype)
    y = np.empty(0, dtype=np.int64)
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction=reduction)
    np.testing.assert_array_equal(loss, expected)
    assert grad.shape == (0, 4) and grad.dtype == dtype
    assert fastxent.cross_entropy(x, y, reduction="none").shape == (0,)
    assert fastxent.softmax(x).shape == (0, 4) and fastxent.logsumexp(x).shape == (0,)
    assert fastxent.sparse_softmax_cross_entropy_with_logits(y, x).shape == (0,)


def test_one_dimensional_input_with_scalar_target(backend, dtype):
    x = np.array([1.0, 2.0, 3.0], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, 2)
    assert np.ndim(loss) == 0 and grad.shape == (3,)
    assert loss == fastxent.cross_entropy(x[None], [2])
    assert np.ndim(fastxent.cross_entropy(x, 2, reduction="none")) == 0
    assert np.ndim(fastxent.sparse_softmax_cross_entropy_with_logits(2, x)) == 0
