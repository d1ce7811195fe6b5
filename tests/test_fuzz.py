"""Fuzz every public function: any shape (zero-size axes too), layout, dtype, label and value.

Each example draws logits of any real dtype (float16/32/64, long double, every integer width,
bool) in any layout (C, Fortran, strided, negative strides, read-only, non-native byte order,
misaligned), with extreme values mixed in (the largest finite values, +-inf, NaN, denormals,
-0), labels of any integer width in and out of range, ``ignore_index`` anywhere, extreme weights
and every option. The call must either raise the documented exception or return the documented
result, which is computed independently of the kernels by tests/reference.py in float64 (the
formulas of docs/numerics.md and the "Non-finite input" table of docs/semantics.md), with NaN
and inf in exactly the documented places; and the inputs must be unchanged. Runs on both backends.
``FASTXENT_FUZZ_EXAMPLES`` sets the examples per test (default 150);
``pytest --hypothesis-show-statistics`` counts them.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastxent
import reference
from helpers import in_layout

FUZZ = settings(
    max_examples=int(os.environ.get("FASTXENT_FUZZ_EXAMPLES", "150")),
    deadline=None,
    # the backend fixture is the same for every example of a test: intended
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

FLOAT_DTYPES = [np.float16, np.float32, np.float64, np.longdouble]
INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
LOGIT_DTYPES = FLOAT_DTYPES + INT_DTYPES + [np.bool_]
LAYOUTS = ["C", "fortran", "strided", "every stride negative", "read-only", "non-native byte order",
           "misaligned"]


# ------------------------------------------------------------------------------------------
# Dtypes and values
# ------------------------------------------------------------------------------------------

def compute_dtype(dtype):
    """The dtype the kernels compute in (see the API's dtype rules)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize <= 4 else np.dtype(np.float64)
    return np.dtype(np.float64)


def result_dtype(dtype):
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("=") if dtype.kind == "f" else np.dtype(np.float64)


def extreme_values(dtype):
    """Finite values at the edge of ``dtype`` (+-1e38 in float32, +-1e308 in float64, ...)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return [False, True]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return [int(info.min), int(info.max), 0, 1]
    info = np.finfo(dtype)
    big = {2: 6e4, 4: 1e38}.get(dtype.itemsize, 1e308)
    tiny = float(info.smallest_subnormal)
    return [big, -big, float(info.max), -float(info.max), tiny, -tiny, 0.0, -0.0]


def value_strategy(dtype, extremes=True, non_finite=True):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        ordinary = st.integers(max(int(info.min), -60), min(int(info.max), 60))
        return st.one_of(ordinary, ordinary, ordinary, st.sampled_from(extreme_values(dtype))) \
            if extremes else ordinary
    ordinary = st.floats(-40, 40, width=32).map(float)
    choices = [ordinary, ordinary, ordinary, ordinary]
    if extremes:
        choices.append(st.sampled_from(extreme_values(dtype)))
    if non_finite:
        choices.append(st.sampled_from([np.inf, -np.inf, -np.inf, np.nan]))
    return st.one_of(*choices)


@st.composite
def arrays(draw, dtype, shape, elements):
    """A C-ordered array of ``shape`` with values from ``elements``, cast to ``dtype``."""
    size = int(np.prod(shape))
    values = draw(st.lists(elements, min_size=size, max_size=size))
    with np.errstate(all="ignore"):
        return np.array(values, dtype=object).astype(dtype).reshape(shape) if size else \
            np.zeros(shape, dtype=dtype)


def snapshot(arr):
    """Everything about an input that a call must leave unchanged."""
    if not isinstance(arr, np.ndarray):
        return arr
    return (arr.dtype.str, arr.shape, arr.strides, arr.flags.writeable, arr.tobytes())


def assert_unchanged(inputs, before):
    for name, arr in inputs.items():
        assert snapshot(arr) == before[name], f"{name} was modified"


# ------------------------------------------------------------------------------------------
# The independent reference: tests/reference.py computing in float64 (the formulas of
# docs/numerics.md and docs/semantics.md), the tolerances derived from the size of its terms
# ------------------------------------------------------------------------------------------

def as_rows(arr, axis):
    """(R, C) rows of ``arr`` with classes on ``axis``, in the order of the per-row results."""
    moved = np.moveaxis(arr, axis, -1)
    return moved.reshape(-1, arr.shape[axis])


def close(got, expected, dtype, atol, what):
    """Same NaN positions, same infinities, finite values within a few ulp of the result dtype
    plus ``atol`` (the float64 rounding of the terms)."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{what}: NaN places")
    # Within 2**-20 of the largest float64, a sum over the classes (or rows) of terms the size of
    # the result may overflow on the way (documented): inf of the right sign is accepted there.
    edge = np.isfinite(expected) & (np.abs(expected) > np.finfo(np.float64).max * 2.0 ** -20)
    overflowed = edge & np.isinf(got) & (np.sign(got) == np.sign(expected))
    got = np.where(overflowed, expected, got)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)], err_msg=f"{what}: inf")
    eps = max(float(np.finfo(dtype).eps), 2.0 ** -52)  # long double is computed in float64
    tol = 16 * eps * np.abs(expected[finite]) + np.broadcast_to(atol, expected.shape)[finite] \
        + float(np.finfo(dtype).smallest_subnormal) * 4
    err = np.abs(got[finite] - expected[finite])
    assert (err <= tol).all() and np.isfinite(got[finite]).all(), \
        f"{what}: got {got[finite][err > tol][:5]}, expected {expected[finite][err > tol][:5]}"


# ------------------------------------------------------------------------------------------
# Class-index targets (PyTorch family, and TensorFlow's sparse functions)
# ------------------------------------------------------------------------------------------

@st.composite
def sparse_problems(draw):
    ndim = draw(st.sampled_from([1, 2, 2, 3]))
    n_classes = draw(st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(30, 70)))
    n = draw(st.integers(0, 6))
    d = draw(st.integers(0, 3))
    shape = {1: (n_classes,), 2: (n, n_classes), 3: (n, n_classes, d)}[ndim]
    dtype = draw(st.sampled_from(LOGIT_DTYPES))
    x = draw(arrays(dtype, shape, value_strategy(dtype)))
    label_dtype = np.dtype(draw(st.sampled_from(INT_DTYPES)))
    info = np.iinfo(label_dtype)
    ignore_index = draw(st.sampled_from([-100, -1, 0, n_classes - 1, n_classes, 2 ** 40]))
    candidates = [c for c in {0, n_classes - 1, ignore_index, -1, n_classes, -100, 300, 2 ** 33,
                              int(info.max), int(info.min)} if info.min <= c <= info.max]
    label = st.one_of(st.integers(0, n_classes - 1), st.integers(0, n_classes - 1),
                      st.integers(0, n_classes - 1), st.sampled_from(candidates))
    # bad labels are rarer than good ones, so that most examples reach the kernels
    labels_shape = shape[:1] + shape[2:] if ndim > 1 else ()
    if draw(st.integers(0, 3)) == 0:
        labels = draw(arrays(label_dtype, labels_shape, label))
    else:
        good = st.one_of(st.integers(0, n_classes - 1), st.sampled_from(
            [ignore_index] if info.min <= ignore_index <= info.max else [0]))
        labels = draw(arrays(label_dtype, labels_shape, good))
    smoothing = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
    # Extreme weights, tiny or huge, one end of the range at a time: together they span more
    # than a double does. With label smoothing, whose term sums every class's weight times
    # its logit gap, huge is 1e30, so that a loss that fits does not overflow on the way.
    extreme = draw(st.sampled_from([1e-300, 1e300 if smoothing == 0.0 else 1e30]))
    weight = draw(st.none() | arrays(np.float64, (n_classes,),
                                     st.sampled_from([0.0, 0.5, 1.0, 3.0, extreme])))
    options = {
        "ignore_index": ignore_index,
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "label_smoothing": smoothing,
        "n_threads": draw(st.sampled_from([None, 1, 2])),
    }
    if weight is not None:
        options["weight"] = weight
    layout = draw(st.sampled_from(LAYOUTS))
    label_layout = draw(st.sampled_from(LAYOUTS))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = in_layout(x, layout, rng)
    labels = in_layout(labels, label_layout, rng) if np.ndim(labels) else labels
    if options["reduction"] == "none":
        grad_output = draw(st.one_of(st.just(1.0), arrays(np.float64, labels_shape,
                                                         st.sampled_from([0.0, 1.0, -2.5, 1e-3]))))
    else:
        grad_output = draw(st.sampled_from([1.0, 0.5, -3.0, 0.0]))
    return x, labels, options, grad_output


def sparse_reference(x, labels, ignore_index, reduction, label_smoothing, weight=None,
                     grad_output=1.0, n_threads=None):
    """(loss, gradient) of cross_entropy_with_grad, or the exception type it must raise."""
    del n_threads
    compute = compute_dtype(x.dtype)
    xc = np.asarray(x).astype(compute).astype(np.float64)
    ax = 0 if xc.ndim == 1 else 1
    n_classes = xc.shape[ax]
    rows = as_rows(xc, ax)
    y = np.asarray(labels).astype(object).reshape(-1)
    ignored = np.array([v == ignore_index for v in y], dtype=bool)
    bad = np.array([not ign and not 0 <= v < n_classes for v, ign in zip(y, ignored)], dtype=bool)
    if bad.any():
        return IndexError
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    yi = np.array([0 if ign else int(v) for v, ign in zip(y, ignored)], dtype=np.int64)
    total = float(np.sum(w[yi][~ignored], dtype=np.longdouble))
    if reduction == "mean" and weight is not None and 0 < total < np.inf and w.max() > 0:
        # the weighted mean does not depend on the weights' scale: take them by a power of two
        # (exact) near a total of 1, as far as the largest weight allows, so that the float64
        # reference does not overflow where the mean itself does not
        w = np.ldexp(w, min(-int(np.frexp(total)[1]), 1023 - int(np.frexp(w.max())[1])))
    targets = np.array([int(v) for v in y], dtype=np.int64)  # in range or ignore_index
    per_row = reference.rows(rows, targets, weight=w, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, dtype=np.float64)
    coef, denominator = reference.gradient_scale(per_row, reduction, grad_output, np.shape(labels),
                                                 dtype=np.float64)
    with np.errstate(all="ignore"):
        grad = np.where(ignored[:, None], 0.0, per_row.grad * coef[:, None])
    loss, scale, gscale = per_row.loss, per_row.loss_size, per_row.grad_size
    return loss, grad, scale, gscale * np.abs(coef), denominator


def assert_sparse_result(x, labels, options, grad_output, got_loss, got_grad, ref):
    loss_rows, grad_rows, scale, coef, denominator = ref
    result = result_dtype(x.dtype)
    compute = compute_dtype(x.dtype)
    eps = float(np.finfo(compute).eps)
    ax = 0 if x.ndim == 1 else 1
    reduction = options["reduction"]
    with np.errstate(all="ignore"):
        if reduction == "none":
            expected = loss_rows.reshape(np.shape(labels)).astype(result)
            close(got_loss, expected, result, 16 * eps * scale.reshape(np.shape(labels)), "losses")
        else:
            total = loss_rows.sum()
            expected = (total if reduction == "sum"
                        else (total / denominator if denominator else np.nan))
            atol = (16 * eps * scale.sum()
                    * (1 if reduction == "sum" else 1 / max(denominator, 1e-300)))
            close(np.asarray(got_loss), np.asarray(expected).astype(result), result, atol,
                  reduction)
        if got_grad is not None:
            assert got_grad.shape == x.shape and got_grad.dtype == result
            got_rows = as_rows(np.asarray(got_grad, dtype=np.float64), ax)
            size = coef  # |coef| (Q + max q) per row
            expected_rows = grad_rows.astype(compute).astype(result)
            close(got_rows, expected_rows, result,
                  (32 * eps * x.shape[ax] * np.nan_to_num(size, nan=0.0))[:, None], "gradient")


@FUZZ
@given(problem=sparse_problems())
def test_cross_entropy_with_class_indices_returns_the_documented_result_or_raises(backend, problem):
    x, labels, options, grad_output = problem
    inputs = {"x": x, "labels": labels, "weight": options.get("weight"), "grad_output": grad_output}
    before = {k: snapshot(v) for k, v in inputs.items()}
    ref = sparse_reference(x, labels, grad_output=grad_output, **options)
    if ref is IndexError:
        with pytest.raises(IndexError, match="out of range"):
            fastxent.cross_entropy(x, labels, **options)
        with pytest.raises(IndexError, match="out of range"):
            fastxent.cross_entropy_with_grad(x, labels, grad_output=grad_output, **options)
        assert_unchanged(inputs, before)
        return
    with np.errstate(all="ignore"):
        loss = fastxent.cross_entropy(x, labels, **options)
        loss2, grad = fastxent.cross_entropy_with_grad(x, labels, grad_output=grad_output,
                                                       **options)
    assert_unchanged(inputs, before)
    np.testing.assert_array_equal(loss, loss2)  # the fused call gives the same loss
    assert np.asarray(loss).dtype == result_dtype(x.dtype)
    assert_sparse_result(x, labels, options, grad_output, loss, None, ref)
    assert_sparse_result(x, labels, options, grad_output, loss2, grad, ref)


@FUZZ
@given(problem=sparse_problems())
def test_tensorflow_sparse_functions_return_the_documented_result_or_raise(backend, problem):
    x, labels, options, _ = problem
    if x.ndim == 3:  # TensorFlow's classes are last
        x = np.moveaxis(x, 1, -1)
    inputs = {"x": x, "labels": labels}
    before = {k: snapshot(v) for k, v in inputs.items()}
    ref = sparse_reference(np.moveaxis(x, -1, 1) if x.ndim == 3 else x,
                           np.asarray(labels), ignore_index=None, reduction="none",
                           label_smoothing=0.0)
    if ref is IndexError:  # no ignore_index here: every negative label is an error
        with pytest.raises(IndexError, match="out of range"):
            fastxent.sparse_softmax_cross_entropy_with_logits(labels, x)
        with pytest.raises(IndexError, match="out of range"):
            fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(labels, x)
        assert_unchanged(inputs, before)
        return
    with np.errstate(all="ignore"):
        loss = fastxent.sparse_softmax_cross_entropy_with_logits(labels, x,
                                                                 n_threads=options["n_threads"])
        loss2, grad = fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(labels, x)
    assert_unchanged(inputs, before)
    np.testing.assert_array_equal(loss, loss2)
    moved_grad = np.moveaxis(grad, -1, 1) if x.ndim == 3 else grad
    assert_sparse_result(np.moveaxis(x, -1, 1) if x.ndim == 3 else x, labels,
                         {"reduction": "none"}, 1.0, loss2, moved_grad, ref)


# ------------------------------------------------------------------------------------------
# Dense labels / probability targets
# ------------------------------------------------------------------------------------------

@st.composite
def dense_problems(draw):
    ndim = draw(st.sampled_from([1, 2, 2, 3]))
    n_classes = draw(st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(30, 70)))
    n = draw(st.integers(0, 6))
    d = draw(st.integers(0, 3))
    shape = {1: (n_classes,), 2: (n, n_classes), 3: (n, n_classes, d)}[ndim]
    dtype = draw(st.sampled_from(LOGIT_DTYPES))
    x = draw(arrays(dtype, shape, value_strategy(dtype)))
    label_dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    t = draw(arrays(label_dtype, shape, st.sampled_from([0.0, 0.0, 0.25, 1.0, 2.0, 1e-30, 0.5])))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = in_layout(x, draw(st.sampled_from(LAYOUTS)), rng)
    t = in_layout(t, draw(st.sampled_from(LAYOUTS)), rng)
    # huge: 1e300, or 1e30 when computed in float32, whose gradient buffer holds
    # coef * sum(q) * softmax before q is subtracted (an error of an ulp of that term), or 1e3
    # for float16 results, where such an error would not be representable
    huge = (1e300 if compute_dtype(dtype) == np.float64 else
            1e3 if np.dtype(dtype) == np.float16 else 1e30)
    weight = draw(st.none() | arrays(np.float64, (n_classes,),
                                     st.sampled_from([0.0, 1e-300, 0.5, 1.0, 3.0, huge])))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    smoothing = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return x, t, weight, reduction, smoothing, axis, draw(st.sampled_from([None, 1, 2]))


def dense_reference(x, t, axis, weight, smoothing):
    compute = compute_dtype(x.dtype)
    xc = np.asarray(x).astype(compute).astype(np.float64)
    tc = np.asarray(t).astype(compute).astype(np.float64)
    rows, trows = as_rows(xc, axis), as_rows(tc, axis)
    per_row = reference.rows(rows, trows, weight=weight, label_smoothing=smoothing,
                             dtype=np.float64)
    return per_row.loss, per_row.grad, per_row.loss_size, per_row.grad_size


def moved_back(rows, shape, axis):
    """Per-row (R, C) results back to ``shape`` with classes on ``axis``."""
    moved_shape = tuple(np.delete(shape, axis)) + (shape[axis],)
    return np.moveaxis(rows.reshape(moved_shape), -1, axis)


@FUZZ
@given(problem=dense_problems())
def test_dense_labels_and_probability_targets_return_the_documented_result(backend, problem):
    x, t, weight, reduction, smoothing, axis, n_threads = problem
    inputs = {"x": x, "t": t, "weight": weight}
    before = {k: snapshot(v) for k, v in inputs.items()}
    result = result_dtype(x.dtype)
    compute = compute_dtype(x.dtype)
    eps = float(np.finfo(compute).eps)
    ax = axis % x.ndim
    if x.shape[ax] == 0:  # the TensorFlow axis may be a zero-size one: zero classes
        with pytest.raises(ValueError, match="zero classes"):
            fastxent.softmax_cross_entropy_with_logits_and_grad(t, x, axis=axis)
        return
    # TensorFlow: dense labels of the logits' dtype, any class axis, per-row losses.
    with np.errstate(all="ignore"):
        loss, grad = fastxent.softmax_cross_entropy_with_logits_and_grad(t, x, axis=axis,
                                                                         n_threads=n_threads)
        assert_unchanged(inputs, before)
        np.testing.assert_array_equal(loss,
                                      fastxent.softmax_cross_entropy_with_logits(t, x, axis=axis))
        ref_loss, ref_grad, scale, gscale = dense_reference(x, t, ax, None, 0.0)
        loss_shape = np.delete(x.shape, ax)
        close(loss, ref_loss.reshape(loss_shape).astype(result), result,
              16 * eps * scale.reshape(loss_shape), "TF dense losses")
        assert grad.dtype == result and grad.shape == x.shape
        size = gscale + 1
        close(grad, moved_back(ref_grad, x.shape, ax).astype(compute).astype(result), result,
              moved_back(np.broadcast_to((32 * eps * x.shape[ax] * size)[:, None], ref_grad.shape),
                         x.shape, ax), "TF dense gradient")
    # PyTorch: probability targets, classes on axis 1 (0 for 1-D), weight and smoothing.
    tx = 0 if x.ndim == 1 else 1
    kwargs = {"reduction": reduction, "label_smoothing": smoothing, "n_threads": n_threads}
    if weight is not None:
        kwargs["weight"] = weight
    with np.errstate(all="ignore"):
        loss, grad = fastxent.cross_entropy_with_grad(x, t, **kwargs)
        assert_unchanged(inputs, before)
        np.testing.assert_array_equal(loss, fastxent.cross_entropy(x, t, **kwargs))
        ref_loss, ref_grad, scale, gscale = dense_reference(x, t, tx, weight, smoothing)
        n_rows = len(ref_loss)
        if reduction == "none":
            loss_shape = np.delete(x.shape, tx)
            close(loss, ref_loss.reshape(loss_shape).astype(result), result,
                  16 * eps * scale.reshape(loss_shape), "probability losses")
            coef = 1.0
        else:
            total = ref_loss.sum()
            denominator = n_rows if reduction == "mean" else 1
            expected = total / denominator if denominator else np.nan
            close(loss, np.asarray(expected).astype(result), result,
                  16 * eps * scale.sum() / max(denominator, 1), reduction)
            coef = 1.0 / denominator if denominator else 0.0
        size = gscale + 1
        close(grad, moved_back(ref_grad * coef, x.shape, tx).astype(compute).astype(result), result,
              moved_back(np.broadcast_to((32 * eps * x.shape[tx] * size * coef)[:, None],
                                         ref_grad.shape), x.shape, tx), "probability gradient")


# ------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# ------------------------------------------------------------------------------------------

@st.composite
def normaliser_problems(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    shape = shape[:axis % len(shape)] + (draw(st.one_of(st.integers(1, 6), st.integers(30, 40))),) \
        + shape[axis % len(shape) + 1:]
    dtype = draw(st.sampled_from(LOGIT_DTYPES))
    x = draw(arrays(dtype, shape, value_strategy(dtype)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    layout = draw(st.sampled_from(LAYOUTS))
    return in_layout(x, layout, rng), axis, draw(st.sampled_from([None, 1, 2]))


def normaliser_reference(x, axis):
    """(logsumexp, softmax, log_softmax, max |x| per row) of ``x`` as the kernels see it."""
    xc = np.asarray(x).astype(compute_dtype(x.dtype)).astype(np.float64)
    return (reference.logsumexp(xc, axis, np.float64), reference.softmax(xc, axis, np.float64),
            reference.log_softmax(xc, axis, np.float64),
            np.abs(as_rows(xc, axis)).max(axis=1, initial=0))


@FUZZ
@given(problem=normaliser_problems())
def test_normalisers_return_the_documented_result(backend, problem):
    x, axis, n_threads = problem
    before = snapshot(x)
    result = result_dtype(x.dtype)
    eps = float(np.finfo(compute_dtype(x.dtype)).eps)
    ax = axis % x.ndim
    lse, soft, log_soft, size = normaliser_reference(x, ax)
    size = np.nan_to_num(size, posinf=0.0)
    with np.errstate(all="ignore"):
        got = fastxent.logsumexp(x, axis=axis, n_threads=n_threads)
        close(got, lse.reshape(np.delete(x.shape, ax)).astype(result), result,
              (16 * eps * (size + 1)).reshape(np.delete(x.shape, ax)), "logsumexp")
        got = fastxent.softmax(x, axis=axis, n_threads=n_threads)
        assert got.dtype == result and got.shape == x.shape
        close(got, soft.astype(result), result, 16 * eps, "softmax")
        got = fastxent.log_softmax(x, axis=axis, n_threads=n_threads)
        close(got, log_soft.astype(result), result,
              moved_back(np.broadcast_to((16 * eps * (size + 1))[:, None], as_rows(x, ax).shape),
                         x.shape, ax), "log_softmax")
    assert snapshot(x) == before


# ------------------------------------------------------------------------------------------
# out= anywhere: overlapping an input raises ValueError, otherwise the out-of-place result
# ------------------------------------------------------------------------------------------

@st.composite
def out_problems(draw):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    # one buffer holds the logits, the probability targets and out, at random places
    buf = rng.standard_normal(4 * n * c + 8).astype(dtype)
    def view(start, transposed):
        v = buf[start:start + n * c].reshape((c, n) if transposed else (n, c))
        return v.T if transposed else v
    x = view(draw(st.integers(0, 3 * n * c + 8)), draw(st.booleans()))
    out = view(draw(st.integers(0, 3 * n * c + 8)), draw(st.booleans()))
    t_start = draw(st.integers(0, 3 * n * c + 8))
    return buf, x, out, t_start, view, draw(st.sampled_from(["sparse", "probabilities", "softmax",
                                                              "log_softmax", "dense TF"]))


@FUZZ
@given(problem=out_problems())
def test_out_overlapping_an_input_raises_or_gives_the_out_of_place_result(backend, problem):
    buf, x, out, t_start, view, kind = problem
    n, c = x.shape
    y = np.arange(n) % c
    if kind in ("probabilities", "dense TF"):
        t = np.abs(view(t_start, False))
    calls = {
        "sparse": lambda o: fastxent.cross_entropy_with_grad(x, y, out=o, label_smoothing=0.1)[1],
        "probabilities": lambda o: fastxent.cross_entropy_with_grad(x, t, out=o)[1],
        "softmax": lambda o: fastxent.softmax(x, out=o),
        "log_softmax": lambda o: fastxent.log_softmax(x, out=o),
        "dense TF": lambda o: fastxent.softmax_cross_entropy_with_logits_and_grad(t, x, out=o)[1],
    }
    call = calls[kind]
    in_place = out.__array_interface__ == x.__array_interface__
    inputs = [x] + ([t] if kind in ("probabilities", "dense TF") else [])
    overlaps = any(np.shares_memory(out, a) for a in inputs)
    if overlaps and not (in_place and not (kind in ("probabilities", "dense TF")
                                           and np.shares_memory(out, t))):
        before = buf.copy()
        with pytest.raises(ValueError, match="overlaps"):
            call(out)
        np.testing.assert_array_equal(buf, before)  # nothing was written
        return
    expected = call(None)
    if in_place:
        out = x  # the documented in-place case: out is the logits themselves
    with np.errstate(all="ignore"):
        got = call(out)
    if out.flags.c_contiguous:
        np.testing.assert_array_equal(got, expected)
    else:  # another layout of out takes another summation order: the last bit may differ
        np.testing.assert_allclose(got, expected, rtol=4 * np.finfo(x.dtype).eps,
                                   atol=4 * np.finfo(x.dtype).eps)
