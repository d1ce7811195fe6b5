"""Every array layout and dtype gives the contiguous result, inputs are never modified, `out=`
works as documented, thread counts do not change a bit, and non-finite input follows the table."""

import numpy as np
import pytest

import fastxent
import reference
from helpers import in_layout

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


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative strides", "read-only",
                                    "non-native byte order"])
def test_every_layout_gives_the_contiguous_result(backend, dtype, layout):
    x, y = _data(dtype)
    expected = _all_results(np.ascontiguousarray(x), y)
    arr = in_layout(x, layout)
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
    np.testing.assert_array_equal(fastxent.cross_entropy(x, y.astype(">i4"), reduction="none"),
                                  expected)
    strided = np.repeat(y, 2)[::2]
    np.testing.assert_array_equal(fastxent.cross_entropy(x, strided, reduction="none"), expected)


@pytest.mark.parametrize("n_classes", [7, 32])
def test_class_axis_1_gives_the_bits_of_class_axis_last(backend, dtype, n_classes):
    # (N, C, H, W) with H * W = 45: full tiles of adjacent positions (read and written as
    # vectors) and a partial one; the same per-row arithmetic as rows with the class axis last.
    # The fallback sums its blocks in another order there: equal to a few ulps.
    if backend == "compiled":
        same = np.testing.assert_array_equal
    else:
        def same(a, b):
            np.testing.assert_allclose(a, b, rtol=4 * np.finfo(dtype).eps, atol=0)
    rng = np.random.default_rng(n_classes)
    x = (rng.standard_normal((3, n_classes, 5, 9)) * 3).astype(dtype)
    y = rng.integers(0, n_classes, (3, 5, 9))
    last = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # (3, 5, 9, C)
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction="none")
    rows_loss, rows_grad = fastxent.cross_entropy_with_grad(
        last.reshape(-1, n_classes), y.reshape(-1), reduction="none")
    same(loss, rows_loss.reshape(y.shape))
    same(grad, np.moveaxis(rows_grad.reshape(last.shape), -1, 1))
    in_place = x.copy()
    fastxent.cross_entropy_with_grad(in_place, y, reduction="none", out=in_place)
    same(in_place, grad)
    for name in ("softmax", "log_softmax"):
        f = getattr(fastxent, name)
        same(f(x, axis=1), np.moveaxis(f(last), -1, 1))
    same(fastxent.logsumexp(x, axis=1), fastxent.logsumexp(last))


@pytest.mark.parametrize("shape, axis",
                         [((C, N), 0), ((5, C, 9), 1), ((4, 3, C), 2), ((4, 3, C), -1)])
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
        np.testing.assert_allclose(got if name == "logsumexp" else np.moveaxis(got, axis, -1),
                                   expected,
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
    expected = fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x)[1]
    np.testing.assert_array_equal(work, expected)


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
    (lambda x: np.empty((N, C), np.float64 if x.dtype == np.float32 else np.float32), "dtype"),
    (lambda x: _read_only_like(x), "writeable"),
], ids=["shape", "float16", "other float", "read-only"])
def test_bad_out_raises_value_error(backend, dtype, bad_out, message):
    x, y = _data(dtype)
    onehot = np.eye(C, dtype=dtype)[y]
    for call in [lambda out: fastxent.cross_entropy_with_grad(x, y, out=out),
                 lambda out: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x,
                                                                                        out=out),
                 lambda out: fastxent.softmax_cross_entropy_with_logits_and_grad(onehot, x,
                                                                                 out=out),
                 lambda out: fastxent.softmax(x, out=out),
                 lambda out: fastxent.log_softmax(x, out=out)]:
        out = bad_out(x)
        before = out.copy()
        with pytest.raises(ValueError, match=message):
            call(out)
        np.testing.assert_array_equal(out, before)


@pytest.mark.parametrize("bad_out, message", [
    (lambda x: np.empty(N + 1, x.dtype), "shape"), (lambda x: np.empty((N, 1), x.dtype), "shape"),
    (lambda x: np.empty(N, np.float16), "dtype"),
    (lambda x: _read_only_like(np.empty(N, x.dtype)), "writeable"),
], ids=["length", "keepdims", "dtype", "read-only"])
def test_bad_logsumexp_out_raises_value_error(backend, dtype, bad_out, message):
    x, _ = _data(dtype)
    with pytest.raises(ValueError, match=message):
        fastxent.logsumexp(x, out=bad_out(x))


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
    assert (fastxent.cross_entropy([[1.0, 2.0, 3.0]], [2])
            == fastxent.cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([2])))


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


@pytest.mark.parametrize("bad_row", [[-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0],
                                     [np.nan, 0.0, 1.0], [0.0, 1.0, np.nan]],
                         ids=["all -inf", "+inf", "nan", "nan last"])
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


@pytest.mark.parametrize("n_classes", [3, 7, 100])
def test_in_place_dense_gradient_equals_out_of_place(backend, dtype, n_classes):
    x, y = _data(dtype, shape=(N, n_classes))
    labels = np.random.default_rng(3).random(x.shape).astype(dtype)
    loss, grad = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, x)
    work = x.copy()
    loss2, returned = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, work, out=work)
    assert returned is work
    np.testing.assert_array_equal(loss2, loss)
    np.testing.assert_array_equal(work, grad)


@pytest.mark.parametrize("n_classes", [3, 7, 100])
def test_in_place_probability_target_gradient_equals_out_of_place(backend, dtype, n_classes):
    x, y = _data(dtype, shape=(N, n_classes))
    labels = np.random.default_rng(3).random(x.shape).astype(dtype)
    x3 = np.moveaxis(x.reshape(8, 8, n_classes), 2, 1).copy()
    t3 = np.moveaxis(labels.reshape(8, 8, n_classes), 2, 1).copy()
    loss, grad = fastxent.cross_entropy_with_grad(x3, t3, label_smoothing=0.1)
    loss2, returned = fastxent.cross_entropy_with_grad(x3, t3, label_smoothing=0.1, out=x3)
    assert returned is x3 and loss2 == loss
    np.testing.assert_array_equal(x3, grad)


def test_out_overlapping_other_inputs_is_rejected(backend, dtype):
    x, y = _data(dtype)
    probs = np.random.default_rng(4).random(x.shape).astype(dtype)
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.cross_entropy_with_grad(x, probs, out=probs)
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.cross_entropy_with_grad(x, y, out=x[::-1])  # same memory, not the same view
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.softmax(x, out=x[::-1])
    square = np.random.default_rng(5).standard_normal((C, C)).astype(dtype)
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.log_softmax(square, out=square.T)
    buf = np.ones((N + 1, C), dtype=dtype)
    grad_output = buf.reshape(-1)[:N]  # the first rows of buf, which out=buf[1:] also covers
    with pytest.raises(ValueError, match="overlaps"):
        fastxent.cross_entropy_with_grad(x, y, reduction="none", grad_output=grad_output,
                                         out=buf[1:])


def test_out_overlapping_an_input_given_as_a_buffer_is_rejected(backend, dtype):
    # np.asarray of a memoryview (or a tensor) views its memory: the check must look through it
    x, y = _data(dtype)
    big = np.zeros((N + 1, C), dtype=dtype)
    big[:N] = x
    with pytest.raises(ValueError, match="overlaps x"):
        fastxent.softmax(memoryview(big[:N]), out=big[1:])
    with pytest.raises(ValueError, match="overlaps input"):
        fastxent.cross_entropy_with_grad(memoryview(big[:N]), y, out=big[1:])
    probs = np.zeros((N + 1, C), dtype=dtype)
    with pytest.raises(ValueError, match="overlaps target"):
        fastxent.cross_entropy_with_grad(x, memoryview(probs[1:]), out=probs[:N])
    buf = np.ones((N + 1, C), dtype=dtype)
    with pytest.raises(ValueError, match="overlaps grad_output"):
        fastxent.cross_entropy_with_grad(x, y, reduction="none",
                                         grad_output=memoryview(buf.reshape(-1)[:N]), out=buf[1:])
    # exact aliasing through a buffer is the in-place computation, as out=input is
    work = big[:N].copy()
    loss, grad = fastxent.cross_entropy_with_grad(memoryview(work), y, out=work)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(x, y)
    assert grad is work and loss == want_loss
    np.testing.assert_array_equal(work, want_grad)


def test_out_overlapping_a_tensor_input_is_rejected(backend):
    torch = pytest.importorskip("torch")
    x, y = _data(np.float64)
    big = torch.zeros((N + 1, C), dtype=torch.float64)
    big[:N] = torch.from_numpy(x)
    with pytest.raises(ValueError, match="overlaps input"):
        fastxent.cross_entropy_with_grad(big[:N], y, out=big.numpy()[1:])


# ---------------------------------------------------------------------------------- result types

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_losses_are_numpy_scalars_of_the_input_dtype(backend, dtype, reduction):
    x, y = _data(dtype)
    probs = np.eye(C, dtype=dtype)[y]
    for loss in (fastxent.cross_entropy(x, y, reduction=reduction),
                 fastxent.cross_entropy_with_grad(x, y, reduction=reduction)[0],
                 fastxent.cross_entropy(x, probs, reduction=reduction),
                 fastxent.CrossEntropyLoss(reduction=reduction)(x, y),
                 fastxent.CrossEntropyLoss(reduction=reduction).with_grad(x, y)[0]):
        assert type(loss) is np.dtype(dtype).type


def test_unreduced_losses_are_arrays_of_the_input_dtype(backend, dtype):
    x, y = _data(dtype)
    x3 = x.reshape(8, 8, C).transpose(0, 2, 1)
    for loss, shape in [(fastxent.cross_entropy(x, y, reduction="none"), (N,)),
                        (fastxent.cross_entropy(x3, y.reshape(8, 8), reduction="none"), (8, 8)),
                        (fastxent.sparse_softmax_cross_entropy_with_logits(y, x), (N,)),
                        (fastxent.softmax_cross_entropy_with_logits(np.eye(C, dtype=dtype)[y], x),
                         (N,)),
                        (fastxent.logsumexp(x), (N,))]:
        assert isinstance(loss, np.ndarray) and loss.dtype == dtype and loss.shape == shape


# ---------------------------------------------------------------------------------- more layouts

def test_np_memmap_read_only_logits_labels_and_weights(backend, dtype, tmp_path):
    x, y = _data(dtype)
    weight = np.linspace(0.5, 2.0, C)
    probs = np.random.default_rng(6).random(x.shape).astype(dtype)
    mapped = {}
    for name, arr in [("x", x), ("y", y), ("w", weight), ("p", probs)]:
        path = tmp_path / f"{name}.bin"
        arr.tofile(path)
        mapped[name] = np.memmap(path, dtype=arr.dtype, mode="r", shape=arr.shape)
        assert not mapped[name].flags.writeable
    mx, my, mw, mp = (mapped[k] for k in "xywp")
    for got, want in [
        (fastxent.cross_entropy_with_grad(mx, my, weight=mw, reduction="none",
                                          grad_output=np.ones(N)),
         fastxent.cross_entropy_with_grad(x, y, weight=weight, reduction="none",
                                          grad_output=np.ones(N))),
        (fastxent.cross_entropy_with_grad(mx, mp, weight=mw),
         fastxent.cross_entropy_with_grad(x, probs, weight=weight)),
        (fastxent.softmax_cross_entropy_with_logits_and_grad(mp, mx),
         fastxent.softmax_cross_entropy_with_logits_and_grad(probs, x)),
        (fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(my, mx),
         fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x)),
        ((fastxent.logsumexp(mx, axis=0), fastxent.softmax(mx, axis=0)),
         (fastxent.logsumexp(x, axis=0), fastxent.softmax(x, axis=0))),
    ]:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative strides", "read-only",
                                    "non-native byte order"])
def test_every_layout_of_targets_and_weights_gives_the_contiguous_result(backend, dtype, layout):
    x, y = _data(dtype, seed=7)
    probs = np.random.default_rng(8).random(x.shape).astype(dtype)
    weight = np.linspace(0.5, 2.0, C)
    weight_view = {"fortran": weight, "strided": np.repeat(weight, 3)[::3],
                   "negative strides": weight[::-1].copy()[::-1],
                   "read-only": _read_only_like(weight) * 0 + weight,
                   "non-native byte order": weight.astype(weight.dtype.newbyteorder())}[layout]
    if layout == "read-only":
        weight_view.setflags(write=False)
    kwargs = {"label_smoothing": 0.1}
    expected = [fastxent.cross_entropy_with_grad(x, probs, weight=weight, reduction="none",
                                                 **kwargs),
                fastxent.softmax_cross_entropy_with_logits_and_grad(probs, x),
                fastxent.cross_entropy_with_grad(x, y, weight=weight, **kwargs)]
    p = in_layout(probs, layout)
    got = [fastxent.cross_entropy_with_grad(x, p, weight=weight_view, reduction="none", **kwargs),
           fastxent.softmax_cross_entropy_with_logits_and_grad(p, x),
           fastxent.cross_entropy_with_grad(x, y, weight=weight_view, **kwargs)]
    eps = np.finfo(dtype).eps
    for g, e in zip(got, expected):
        for a, b in zip(g, e):
            np.testing.assert_allclose(a, b, rtol=4 * eps, atol=4 * eps * max(1.0, np.abs(b).max()))


def test_k_dimensional_views_and_class_axis_views(backend, dtype):
    rng = np.random.default_rng(9)
    base = rng.standard_normal((6, 10, C, 5)).astype(dtype)
    x = base[:, ::2].transpose(0, 2, 1, 3)[..., ::-1]  # (6, C, 5, 5), every stride odd
    y = rng.integers(0, C, (6, 5, 5))
    expected = fastxent.cross_entropy_with_grad(np.ascontiguousarray(x), y, reduction="none")
    got = fastxent.cross_entropy_with_grad(x, y, reduction="none")
    eps = np.finfo(dtype).eps
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=4 * eps, atol=4 * eps * np.abs(b).max())


# --------------------------------------------------------------------------------- unchanged inputs

@pytest.mark.parametrize("layout",
                         ["C", "fortran", "strided", "negative strides", "non-native byte order"])
def test_no_function_modifies_its_inputs(backend, dtype, layout):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((N, C)) * 3).astype(dtype)
    x[0, 0] = -np.inf
    x[1, 3] = np.nan
    x[2, 2] = np.inf
    x = in_layout(x, layout)
    y = rng.integers(0, C, N)
    y[::5] = -100
    probs = in_layout(rng.random((N, C)).astype(dtype), layout)
    weight = np.linspace(0.5, 2, C)
    grad_output = rng.standard_normal(N)
    inputs = [x, y, probs, weight, grad_output]
    before = [a.copy() for a in inputs]
    x3 = x.reshape(8, 8, C) if x.flags.c_contiguous else x[:N].reshape(8, 8, C)
    calls = [
        lambda: fastxent.cross_entropy(x, y, weight=weight, label_smoothing=0.2),
        lambda: fastxent.cross_entropy_with_grad(x, y, weight=weight, reduction="none",
                                                 grad_output=grad_output),
        lambda: fastxent.cross_entropy_with_grad(x, probs, weight=weight, label_smoothing=0.3,
                                                 reduction="sum"),
        lambda: fastxent.CrossEntropyLoss(weight=weight).with_grad(x, y, grad_output=2.0),
        lambda: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(
            np.where(y < 0, 0, y), x),
        lambda: fastxent.softmax_cross_entropy_with_logits_and_grad(probs, x),
        lambda: fastxent.softmax_cross_entropy_with_logits_and_grad(probs.T, x.T, axis=0),
        lambda: fastxent.softmax(x), lambda: fastxent.log_softmax(x, axis=0),
        lambda: fastxent.logsumexp(x),
        lambda: fastxent.cross_entropy(np.moveaxis(x3, 2, 1), y.reshape(8, 8), reduction="none"),
    ]
    for call in calls:
        call()
        for a, b in zip(inputs, before):
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
            assert a.dtype == b.dtype


def test_thread_counts_give_identical_bits_for_every_function(backend, dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4096, 100)).astype(dtype)
    y = rng.integers(0, 100, 4096)
    y[::7] = -100
    probs = rng.random((4096, 100)).astype(dtype)
    weight = rng.uniform(0.5, 2, 100)
    calls = [
        lambda n: fastxent.cross_entropy_with_grad(x, y, weight=weight, n_threads=n),
        lambda n: fastxent.cross_entropy_with_grad(x, y, reduction="sum", n_threads=n),
        lambda n: fastxent.cross_entropy_with_grad(x, y, reduction="none",
                                                   grad_output=np.arange(4096.0), n_threads=n),
        lambda n: fastxent.cross_entropy_with_grad(x, probs, weight=weight, label_smoothing=0.1,
                                                   n_threads=n),
        lambda n: (fastxent.cross_entropy(x, y, n_threads=n),),
        lambda n: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(np.abs(y) % 100, x,
                                                                             n_threads=n),
        lambda n: fastxent.softmax_cross_entropy_with_logits_and_grad(probs, x, n_threads=n),
        lambda n: fastxent.softmax_cross_entropy_with_logits_and_grad(probs.T, x.T, axis=0,
                                                                      n_threads=n),
        lambda n: (fastxent.softmax(x, n_threads=n), fastxent.log_softmax(x, n_threads=n),
                   fastxent.logsumexp(x, n_threads=n), fastxent.logsumexp(x, axis=0, n_threads=n)),
    ]
    for call in calls:
        one, two = call(1), call(2)
        for a, b in zip(one, two):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_minus_inf_logit_without_probability_mass_is_harmless_in_the_pytorch_family(backend, dtype):
    x = np.array([[0.0, -np.inf, 1.0, 0.5], [-np.inf, -np.inf, 2.0, 0.0]], dtype=dtype)
    t = np.array([[0.25, 0.0, 0.75, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=dtype)
    weight = np.array([1.0, 2.0, 0.5, 1.5])
    for kwargs in ({}, {"weight": weight}):
        loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", **kwargs)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        assert grad[0, 1] == 0 and grad[1, 0] == 0 and grad[1, 1] == 0
        expected = reference.rows(x, t, **kwargs).loss
        np.testing.assert_allclose(loss, expected.astype(np.float64), rtol=4 * np.finfo(dtype).eps)
    # smoothing puts mass on every class: the masked class now costs an infinite loss, not NaN
    loss = fastxent.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    assert (loss == np.inf).all()


def test_minus_inf_in_every_class_but_the_label_gives_zero_loss_and_gradient(backend, dtype):
    x = np.array([[-np.inf, 3.0, -np.inf], [1.0, 2.0, 3.0]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [1, 2], reduction="none")
    assert loss[0] == 0 and (grad[0] == 0).all()
    sparse_loss, backprop = fastxent.sparse_softmax_cross_entropy_with_logits_and_grad([1, 2], x)
    assert sparse_loss[0] == 0 and (backprop[0] == 0).all()


@pytest.mark.parametrize("reduction, expected", [("mean", np.nan), ("sum", 0.0)])
def test_zero_rows_with_probability_targets_and_k_dimensions(backend, dtype, reduction, expected):
    x = np.empty((0, 4), dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, np.empty((0, 4), dtype=dtype),
                                                  reduction=reduction)
    np.testing.assert_array_equal(loss, expected)
    assert grad.shape == (0, 4) and grad.dtype == dtype
    x3 = np.empty((3, 4, 0), dtype=dtype)  # N > 0 but no positions
    loss, grad = fastxent.cross_entropy_with_grad(x3, np.empty((3, 0), dtype=np.int64),
                                                  reduction=reduction)
    np.testing.assert_array_equal(loss, expected)
    assert grad.shape == (3, 4, 0)
    assert fastxent.cross_entropy(x3, np.empty((3, 0), dtype=np.int64),
                                  reduction="none").shape == (3, 0)
    dense_loss, backprop = fastxent.softmax_cross_entropy_with_logits_and_grad(x, x)
    assert dense_loss.shape == (0,) and backprop.shape == (0, 4)
    with pytest.raises(ValueError, match="zero classes"):  # along axis 0 there are no classes
        fastxent.softmax(x, axis=0)


def test_in_place_dense_gradient_with_the_class_axis_first(backend, dtype):
    x, _ = _data(dtype, shape=(N, C))
    labels = np.random.default_rng(12).random((C, N)).astype(dtype)
    logits = np.ascontiguousarray(x.T)  # (C, N), classes along axis 0
    loss, grad = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, logits, axis=0)
    work = logits.copy()
    loss2, returned = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, work, axis=0,
                                                                          out=work)
    assert returned is work
    np.testing.assert_array_equal(loss2, loss)
    np.testing.assert_array_equal(work, grad)


@pytest.mark.parametrize("layout",
                         ["strided", "negative strides", "fortran", "non-native byte order"])
def test_out_of_any_writeable_layout_receives_the_result(backend, dtype, layout):
    x, y = _data(dtype, seed=13)
    make = {"strided": lambda: np.zeros((2 * N, 2 * C), dtype)[::2, ::2],
            "negative strides": lambda: np.zeros((N, C), dtype)[::-1, ::-1],
            "fortran": lambda: np.zeros((N, C), dtype, order="F"),
            "non-native byte order": lambda: np.zeros((N, C),
                                                      np.dtype(dtype).newbyteorder())}[layout]
    probs = np.random.default_rng(14).random((N, C)).astype(dtype)
    for call in [lambda out: fastxent.cross_entropy_with_grad(x, y, out=out)[1],
                 lambda out: fastxent.cross_entropy_with_grad(x, probs, out=out)[1],
                 lambda out: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x,
                                                                                        out=out)[1],
                 lambda out: fastxent.softmax_cross_entropy_with_logits_and_grad(probs, x,
                                                                                 out=out)[1],
                 lambda out: fastxent.softmax(x, out=out),
                 lambda out: fastxent.log_softmax(x, out=out)]:
        expected = call(None)
        try:
            out = make()
            returned = call(out)
        # a non-native out may be refused for its dtype, never mis-written
        except ValueError as exc:
            assert layout == "non-native byte order" and "dtype" in str(exc)
            continue
        assert returned is out
        np.testing.assert_array_equal(out, expected)


def test_logits_at_the_largest_finite_value_do_not_overflow_into_nan(backend, dtype):
    big = np.finfo(dtype).max
    x = np.array([[big, big, 0.0], [big, -big, big / 2], [-big, -big, -big]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [0, 1, 2], reduction="none")
    np.testing.assert_allclose(loss, [np.log(2), np.inf, np.log(3)], rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_allclose(grad, [[-0.5, 0.5, 0.0], [1.0, -1.0, 0.0], [1 / 3, 1 / 3, -2 / 3]],
                               rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(fastxent.logsumexp(x), [big, big, -big])
    np.testing.assert_allclose(fastxent.softmax(x), [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3] * 3],
                               rtol=2 * np.finfo(dtype).eps)
