"""Accuracy in ulps against references computed plainly in np.longdouble.

The guarantee (docs/numerics.md, "Error bounds"): per-row losses within 2 ulp of the exact loss
of the float32 inputs, for any number of classes; within 4 ulp in float64 for C <= 1000. The
reference is the exact loss of the given inputs, computed in long double (64-bit mantissa on
x86-64) by tests/reference.py and rounded once to the input's dtype.
"""

import numpy as np
import pytest

import fastxent
import reference
from helpers import ulp_error

ULP_LIMIT = {np.float32: 2.0, np.float64: 4.0}


def test_ulp_error_measures_in_units_of_the_last_place():
    assert ulp_error(np.float32(1.0), 1.0) == 0
    assert ulp_error(np.nextafter(np.float32(1.0), np.float32(2.0)), 1.0) == 1
    assert ulp_error(np.float64(3.0) + 3 * np.spacing(3.0), 3.0) == 3
    assert ulp_error(np.float32(4.248354e-18), np.longdouble("4.248354255291589e-18")) > 0


def _cases(n_classes, rng):
    rows = max(16, 20000 // n_classes)
    for scale in (1.0, 8.0):
        yield rng.standard_normal((rows, n_classes)) * scale, rng.integers(0, n_classes, rows)
    x = rng.standard_normal((rows, n_classes))
    y = rng.integers(0, n_classes, rows)
    x[np.arange(rows), y] += rng.uniform(10, 35, rows)  # the label dominates: tiny losses
    yield x, y
    yield np.zeros((4, n_classes)), np.arange(4) % n_classes  # constant rows: log C


@pytest.mark.parametrize("n_classes", [2, 3, 10, 31, 33, 100, 1000])
def test_row_losses_within_ulp_limit(backend, dtype, n_classes):
    rng = np.random.default_rng(n_classes)
    for x64, labels in _cases(n_classes, rng):
        x = x64.astype(dtype)
        losses = fastxent.cross_entropy(x, labels, reduction="none")
        errors = ulp_error(losses, reference.rows(x, labels).loss)
        assert errors.max() <= ULP_LIMIT[dtype], f"max {errors.max():.2f} ulp"


@pytest.mark.parametrize("n_classes", [32000])
def test_float32_row_losses_within_2_ulp_for_many_classes(backend, n_classes):
    rng = np.random.default_rng(0)
    for x64, labels in _cases(n_classes, rng):
        x = x64.astype(np.float32)
        errors = ulp_error(fastxent.cross_entropy(x, labels, reduction="none"),
                           reference.rows(x, labels).loss)
        assert errors.max() <= 2.0


def test_tf_functions_have_the_same_accuracy(backend, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((500, 17)) * 6).astype(dtype)
    labels = rng.integers(0, 17, 500)
    exact = reference.rows(x, labels).loss
    sparse = fastxent.sparse_softmax_cross_entropy_with_logits(labels, x)
    dense = fastxent.softmax_cross_entropy_with_logits(np.eye(17, dtype=dtype)[labels], x)
    assert ulp_error(sparse, exact).max() <= ULP_LIMIT[dtype]
    assert ulp_error(dense, exact).max() <= ULP_LIMIT[dtype]


def test_mean_is_the_exact_mean_of_the_row_losses(backend, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4099, 7)).astype(dtype)
    labels = rng.integers(0, 7, 4099)
    exact_mean = reference.rows(x, labels).loss.mean()
    assert ulp_error(fastxent.cross_entropy(x, labels), exact_mean) <= ULP_LIMIT[dtype]


def test_weighted_mean_divides_by_an_accurate_total_weight(backend):
    # the denominator sums 10625 weights: a plain running sum drifted by up to ~150 ulp of the
    # mean (compiled backend); the reference is math.fsum of the rows and of the weights
    import math
    worst = 0.0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((10625, 30))
        y = rng.integers(0, 30, 10625)
        w = rng.uniform(0.1, 3.0, 30)
        rows = fastxent.cross_entropy(x, y, weight=w, reduction="none")
        exact = math.fsum(rows) / math.fsum(w[y])
        mean = fastxent.cross_entropy(x, y, weight=w)
        worst = max(worst, abs(float(mean) - exact) / np.spacing(exact))
    assert worst <= 4.0


@pytest.mark.parametrize("n_classes", [5, 300])
def test_normalisers_within_a_few_ulp(backend, dtype, n_classes):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((200, n_classes)) * 5).astype(dtype)
    # softmax rounds exp, the sum and the scaling: a few ulps (measured: 1.5 in float32, 4.2 in
    # float64 over many seeds)
    limit = 2.0 if dtype == np.float32 else 6.0
    assert ulp_error(fastxent.softmax(x), reference.softmax(x)).max() <= limit
    assert ulp_error(fastxent.log_softmax(x), reference.log_softmax(x)).max() <= limit
    lse = reference.logsumexp(x)
    # m + log s cancels where logsumexp is near 0: there the bound is an ulp of max |x|
    error = np.abs(fastxent.logsumexp(x).astype(np.longdouble) - lse)
    row_max = x.max(axis=1).astype(np.longdouble)
    assert (error <= 4 * np.spacing(np.maximum(np.abs(lse), np.abs(row_max)).astype(dtype))).all()


TINY = reference.rows(np.array([[40.0, 0.0]]), [0]).loss[0]  # log1p(e^-40), in long double


@pytest.mark.parametrize("call", [
    lambda x: fastxent.cross_entropy(x, 0),
    lambda x: fastxent.cross_entropy(x[None], [0], reduction="sum"),
    lambda x: fastxent.cross_entropy(x[None], [0], reduction="none")[0],
    lambda x: fastxent.cross_entropy_with_grad(x[None], [0])[0],
    lambda x: fastxent.CrossEntropyLoss()(x[None], [0]),
    lambda x: fastxent.sparse_softmax_cross_entropy_with_logits([0], x[None])[0],
    lambda x: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad([0], x[None])[0][0],
    lambda x: fastxent.softmax_cross_entropy_with_logits(np.array([[1, 0]], x.dtype), x[None])[0],
    lambda x: fastxent.softmax_cross_entropy_with_logits_and_grad(np.array([[1, 0]], x.dtype),
                                                                  x[None])[0][0],
    lambda x: fastxent.cross_entropy(x[None], np.array([[1, 0]], x.dtype), reduction="sum"),
], ids=["1-d", "sum", "none", "with_grad", "CrossEntropyLoss", "tf sparse", "tf sparse fused",
        "tf dense", "tf dense fused", "probability target"])
def test_tiny_loss_of_a_dominant_label_is_within_2_ulp_in_every_function(backend, dtype, call):
    # [40, 0], label 0: 4.248354255291589e-18, which PyTorch float32 and TensorFlow round to 0
    loss = call(np.array([40.0, 0.0], dtype=dtype))
    assert np.asarray(loss).dtype == dtype
    assert ulp_error(loss, TINY) <= 2


@pytest.mark.parametrize("n_classes", [2, 3, 10, 1000, 32000])
def test_tiny_losses_keep_their_precision_for_any_number_of_classes(backend, dtype, n_classes):
    rng = np.random.default_rng(n_classes + 1)
    rows = 8
    x = rng.uniform(-1, 1, (rows, n_classes))
    labels = rng.integers(0, n_classes, rows)
    x[np.arange(rows), labels] = 30 + np.arange(rows) * 3.0  # losses from ~1e-13 down to ~1e-20 * C
    x = x.astype(dtype)
    exact = reference.rows(x, labels).loss
    assert (exact > 0).all()
    limit = 2.0 if dtype == np.float32 or n_classes <= 1000 else 8.0
    assert ulp_error(fastxent.cross_entropy(x, labels, reduction="none"), exact).max() <= limit


@pytest.mark.parametrize("n_classes", [2, 10, 100, 1000])
def test_dense_label_losses_within_ulp_limit(backend, dtype, n_classes):
    rng = np.random.default_rng(n_classes + 2)
    rows = max(16, 5000 // n_classes)
    for scale in (1.0, 8.0, 30.0):
        x = (rng.standard_normal((rows, n_classes)) * scale).astype(dtype)
        t = rng.random((rows, n_classes))
        t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
        exact = reference.rows(x, t).loss
        got = fastxent.softmax_cross_entropy_with_logits(t, x)
        assert ulp_error(got, exact).max() <= ULP_LIMIT[dtype]


@pytest.mark.parametrize("n_classes", [3, 100, 1000])
def test_label_smoothed_losses_within_ulp_limit(backend, dtype, n_classes):
    rng = np.random.default_rng(n_classes + 3)
    rows = max(16, 5000 // n_classes)
    eps = 0.1
    x = (rng.standard_normal((rows, n_classes)) * 8).astype(dtype)
    labels = rng.integers(0, n_classes, rows)
    exact = reference.rows(x, labels, label_smoothing=eps).loss
    got = fastxent.cross_entropy(x, labels, reduction="none", label_smoothing=eps)
    assert ulp_error(got, exact).max() <= ULP_LIMIT[dtype]


@pytest.mark.parametrize("n_classes", [2, 3, 10, 100, 1000])
def test_gradient_entries_within_a_few_ulp(backend, dtype, n_classes):
    # not a documented target; measured 1.5 ulp (float32) and 4 ulp (float64): a regression guard
    rng = np.random.default_rng(n_classes + 4)
    rows = max(16, 5000 // n_classes)
    for scale in (1.0, 8.0, 30.0):
        x = (rng.standard_normal((rows, n_classes)) * scale).astype(dtype)
        labels = rng.integers(0, n_classes, rows)
        exact = reference.rows(x, labels).grad
        _, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="sum")
        normal = np.abs(exact) > np.finfo(dtype).tiny * 2**10  # leave out the subnormal range
        assert ulp_error(grad[normal], exact[normal]).max() <= (2.0 if dtype == np.float32 else 6.0)


@pytest.mark.parametrize("n_classes", [2, 10, 40, 1000])  # tile path (C <= 32) and row path
@pytest.mark.parametrize("layout", ["rows", "strided"])   # contiguous loops and scalar loops
def test_dense_one_hot_gradient_at_the_maximum_keeps_its_precision(backend, dtype, n_classes,
                                                                  layout):
    # (sum t) p_y - t_y = p_y - 1 cancels when the one-hot class is the row maximum; the kernels
    # give it as the sparse path does (-s_rest / s): [40, 0] with [1, 0] gave 0, not -4.2e-18
    rng = np.random.default_rng(n_classes)
    x = (rng.standard_normal((64, n_classes)) * 3).astype(dtype)
    labels = np.argmax(x, axis=1)
    x[np.arange(64), labels] += np.linspace(0.0, 40.0, 64).astype(dtype)  # down to tiny p - 1
    one_hot = np.eye(n_classes, dtype=dtype)[labels]
    if layout == "strided":
        x, one_hot = np.asfortranarray(x), np.asfortranarray(one_hot)
    exact = reference.rows(x, labels).grad
    for target in (labels, one_hot):
        _, grad = fastxent.cross_entropy_with_grad(x, target, reduction="sum")
        at_max = grad[np.arange(64), labels]
        want = exact[np.arange(64), labels]
        assert ulp_error(at_max, want).max() <= (2.0 if dtype == np.float32 else 6.0)


@pytest.mark.parametrize("n_classes", [100, 1000])
@pytest.mark.parametrize("layout", ["fortran", "class_axis_1"])
def test_strided_class_axis_as_accurate_as_contiguous(backend, dtype, n_classes, layout):
    # a class axis with a stride (Fortran order, or axis 1 of (N, C, H, W)) is summed in the
    # contiguous rows' order: a running sum was 19 ulp off at C = 1000 in float64 (both
    # backends), beyond the 4-ulp limit
    rng = np.random.default_rng(n_classes + 7)
    x = rng.standard_normal((128, n_classes)) * 3
    labels = np.argmax(x, axis=1)
    x[np.arange(128), labels] += np.linspace(0.0, 40.0, 128)  # tiny losses too
    x = x.astype(dtype)
    t = rng.dirichlet(np.ones(n_classes), 128).astype(dtype)
    exact_sparse = reference.rows(x, labels).loss
    exact_dense = reference.rows(x, t).loss
    if layout == "fortran":
        sparse = fastxent.cross_entropy(np.asfortranarray(x), labels, reduction="none")
        dense = fastxent.cross_entropy(np.asfortranarray(x), np.asfortranarray(t), reduction="none")
    else:  # rows as 2 x 64 positions of an (N, C, H, W) array: the class stride is 64
        def spatial(a):
            return np.ascontiguousarray(a.reshape(2, 8, 8, n_classes).transpose(0, 3, 1, 2))
        sparse = fastxent.cross_entropy(spatial(x), labels.reshape(2, 8, 8),
                                        reduction="none").reshape(-1)
        dense = fastxent.cross_entropy(spatial(x), spatial(t), reduction="none").reshape(-1)
    assert ulp_error(sparse, exact_sparse).max() <= ULP_LIMIT[dtype]
    assert ulp_error(dense, exact_dense).max() <= ULP_LIMIT[dtype]


@pytest.mark.parametrize("n_classes", [33, 1000, 1003])
def test_strided_class_axis_gives_the_bits_of_a_contiguous_one(backend, dtype, n_classes):
    rng = np.random.default_rng(n_classes)
    x = (rng.standard_normal((40, n_classes)) * 5).astype(dtype)
    labels = rng.integers(0, n_classes, 40)
    loss, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="none")
    loss_f, grad_f = fastxent.cross_entropy_with_grad(np.asfortranarray(x), labels,
                                                      reduction="none")
    np.testing.assert_array_equal(loss_f, loss)
    np.testing.assert_array_equal(grad_f, grad)


@pytest.mark.parametrize("n_classes", [3, 41])  # tile path and row path
@pytest.mark.parametrize("layout", ["C", "F"])
def test_dense_losses_that_fit_do_not_overflow_on_the_way(backend, n_classes, layout):
    # logits of both signs near the largest double with a small label mass: x - m overflows,
    # q (x - m) and the loss do not (hypothesis found 1e-30 on -1e308 beside 1e308: inf)
    x = np.zeros((3, n_classes))
    x[0, 1], x[2, 1] = 1e308, -1e308
    t = np.zeros((3, n_classes))
    t[2, 1] = 1e-30
    rows, targets = x.T.copy(), t.T.copy()  # the class axis of length 3: rows of the columns
    if layout == "F":
        rows, targets = np.asfortranarray(rows), np.asfortranarray(targets)
    losses = fastxent.softmax_cross_entropy_with_logits(targets, rows)
    expected = reference.rows(rows, targets).loss
    assert np.isfinite(losses[1]) and losses[1] > 1e278
    assert ulp_error(losses, expected).max() <= 2.0


@pytest.mark.parametrize("n_classes", [3, 41])  # tile path and row path
def test_weighted_class_index_losses_that_fit_do_not_overflow_on_the_way(backend, n_classes):
    # the label's logit -1e308 beside 1e308, its class weight 1e-300: x_y - m overflows, the
    # loss w_y (lse - x_y) = 2e8 does not
    x = np.zeros((2, n_classes))
    x[:, 1], x[:, 2] = 1e308, -1e308
    weight = np.ones(n_classes)
    weight[2] = 1e-300
    losses = fastxent.cross_entropy(x, [2, 2], weight=weight, reduction="none")
    np.testing.assert_allclose(losses, [2e8, 2e8], rtol=1e-15)


@pytest.mark.parametrize("n_classes", [4, 40])  # tile path and row path
@pytest.mark.parametrize("scaled_by", ["weight", "grad_output"])
def test_huge_gradients_that_fit_do_not_overflow_on_the_way(backend, n_classes, scaled_by):
    # w (p - onehot) near the largest double: coef * s_rest, 0 * (sum of the weights = inf) and
    # q * s_rest overflowed where the entry itself fits
    x = np.zeros((2, n_classes))
    x[:, 0] = [3.0, 2.0]  # the label, class 0, is the row maximum
    big = 1e308
    weight = np.ones(n_classes)
    kwargs = dict(reduction="sum")
    if scaled_by == "weight":
        weight[:] = big
        kwargs["weight"] = weight
    else:
        kwargs["grad_output"] = big
    exact = reference.rows(x, np.zeros(2, dtype=int)).grad * big
    for target in (np.zeros(2, dtype=int), np.eye(n_classes)[[0, 0]]):
        _, grad = fastxent.cross_entropy_with_grad(x, target, **kwargs)
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(grad, exact.astype(np.float64), rtol=1e-14)


@pytest.mark.parametrize("dtype_", [np.float16, np.float32])
def test_a_gradient_beyond_float32_overflows_with_its_sign(backend, dtype_):
    # a class weight beyond float32's range: the label's entry -w (1 - p_y) is -inf, the others
    # +inf (tile path: the buffer's +inf minus the weight kept the wrong sign)
    w = np.array([0.0, 0.0, 0.0, 1e300, 0.0])
    x = np.zeros((1, 5, 3), dtype_)
    x[0, 4, 0] = 1.0
    with np.errstate(over="ignore"):
        _, grad = fastxent.cross_entropy_with_grad(x, np.array([[3, 0, 0]]), weight=w,
                                                   reduction="sum")
    assert grad[0, 3, 0] == -np.inf and (grad[0, [0, 1, 2, 4], 0] == np.inf).all()


def _hard_float32_rows(n_classes, rng):
    """float32 rows whose exp terms are hard: the label at the maximum with every rival 20 to 90
    below it (tiny losses, terms on both sides of 2^-125, where the float-lane exp hands over to
    the double one), logits of both signs far from 0 (x - m is not exact in float), rows of
    equal logits, and rivals just below a large maximum."""
    rows = 64
    y = rng.integers(0, n_classes, rows)
    at = np.arange(rows)
    tiny = rng.uniform(-3, 3, (rows, 1)) - rng.uniform(20, 90, (rows, n_classes))
    tiny[at, y] = tiny.max(axis=1) + rng.uniform(0, 30, rows)
    mixed = rng.uniform(-60, 60, (rows, n_classes)) + rng.choice([-1e3, 0.0, 1e3], (rows, 1))
    equal = np.full((rows, n_classes), 7.25)
    close = 3e4 - rng.uniform(0, 40, (rows, n_classes))
    for x in (tiny, mixed, equal, close):
        yield x.astype(np.float32), y


@pytest.mark.parametrize("n_classes", [3, 16, 32, 33, 100, 1000])
def test_float32_hard_rows_within_2_ulp_on_every_instruction_set(backend, n_classes):
    # the vector loops of every ISA this CPU has (Note [f32 exp in float lanes]), tiles (up to 32
    # classes) and rows; the fallback has one
    kernels = fastxent._backend.kernels
    current = kernels.current_isa()
    compiled = current != "numpy"
    best = kernels.select_isa("avx512") if compiled else current
    isas = kernels.ISAS[: kernels.ISAS.index(best) + 1] if compiled else (current,)
    rng = np.random.default_rng(n_classes)
    cases = list(_hard_float32_rows(n_classes, rng))
    try:
        for isa in isas:
            if compiled:
                kernels.select_isa(isa)
            for x, labels in cases:
                errors = ulp_error(fastxent.cross_entropy(x, labels, reduction="none"),
                                   reference.rows(x, labels).loss)
                assert errors.max() <= 2.0, f"{isa}: max {errors.max():.2f} ulp"
    finally:
        if compiled:
            kernels.select_isa(current)
