"""fastxent.dask: chunked results equal the in-memory ones, on both kernel modules and dtypes.

Per-row losses and gradients are the same bits as in memory (each row goes through the same
kernel); reduced losses add per-block sums in another order, so they agree to an ulp or two.
"""

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="Dask is not installed: fastxent.dask untested")

import fastxent  # noqa: E402
import fastxent._api  # noqa: E402
import fastxent.dask as fxd  # noqa: E402
from helpers import assert_ulps, assert_ulps_of_largest, rng_for  # noqa: E402

REDUCTIONS = ["mean", "sum", "none"]
# rows chunked evenly, unevenly, with empty chunks, and with the class axis split (rechunked)
CHUNKINGS = {
    "even": ((4, 4, 4, 4), (7,)),
    "uneven": ((5, 1, 10), (7,)),
    "empty": ((0, 6, 0, 10, 0), (7,)),
    "classes_split": ((8, 8), (3, 4)),
    "one_block": ((16,), (7,)),
}


def _assert_same(actual, expected, reduction):
    if reduction == "none":
        np.testing.assert_array_equal(actual, expected, strict=True)
    elif np.isnan(expected):
        assert np.isnan(actual) and np.asarray(actual).dtype == np.asarray(expected).dtype
    else:
        assert_ulps(actual, expected)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts of calls of fastxent's in-memory loss functions, by name."""
    calls = {}
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        original = getattr(fastxent._api, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(fastxent._api, name, spy)
    return calls


# ------------------------------------------------------------------------------------------
# PyTorch family: every reduction, chunking, weights, ignore_index, smoothing
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "weighted", "ignored", "smoothed"])
def test_chunked_equals_in_memory(backend, dtype, chunks, reduction, options):
    rng = rng_for(chunks, reduction, options)
    x = (rng.standard_normal((16, 7)) * 3).astype(dtype)
    y = rng.integers(0, 7, 16)
    kwargs = {"reduction": reduction}
    if options == "weighted":
        kwargs["weight"] = rng.uniform(0.1, 2.0, 7)
    elif options == "ignored":
        y[::3] = 4
        kwargs.update(ignore_index=4, weight=rng.uniform(0.1, 2.0, 7))
    elif options == "smoothed":
        kwargs.update(label_smoothing=0.2, weight=rng.uniform(0.1, 2.0, 7))
    grad_output = rng.standard_normal(16) if reduction == "none" else 0.75

    expected_loss, expected_grad = fastxent.cross_entropy_with_grad(x, y, grad_output=grad_output,
                                                                     **kwargs)
    dx = da.from_array(x, chunks=chunks)
    loss, grad = fxd.cross_entropy_with_grad(dx, da.from_array(y, chunks=chunks[0]),
                                             grad_output=grad_output, **kwargs)
    assert isinstance(loss, da.Array) and isinstance(grad, da.Array)
    assert grad.chunks[0] == chunks[0] and grad.chunks[1] == (7,)
    loss, grad = da.compute(loss, grad)
    _assert_same(loss, expected_loss, reduction)
    if reduction == "mean" and "weight" in kwargs:
        # the total weight (the mean's denominator) is summed per block: an ulp or two apart
        assert_ulps_of_largest(grad, expected_grad)
    else:
        np.testing.assert_array_equal(grad, expected_grad, strict=True)
    _assert_same(fxd.cross_entropy(dx, y, **kwargs).compute(),
                 fastxent.cross_entropy(x, y, **kwargs), reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_spatial_input_chunked_along_every_row_axis(backend, dtype, reduction):
    rng = rng_for("spatial", reduction)
    x = rng.standard_normal((5, 4, 6, 3)).astype(dtype)  # (N, C, d1, d2)
    y = rng.integers(0, 4, (5, 6, 3))
    y[0, :, 1] = -100
    dx = da.from_array(x, chunks=((2, 3), (1, 3), (4, 0, 2), (3,)))
    expected = fastxent.cross_entropy_with_grad(x, y, reduction=reduction, label_smoothing=0.1)
    loss, grad = da.compute(*fxd.cross_entropy_with_grad(dx, y, reduction=reduction,
                                                        label_smoothing=0.1))
    _assert_same(loss, expected[0], reduction)
    np.testing.assert_array_equal(grad, expected[1], strict=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets(backend, dtype, reduction):
    rng = rng_for("prob", reduction)
    x = rng.standard_normal((13, 5)).astype(dtype)
    t = rng.dirichlet(np.ones(5), 13).astype(dtype)
    w = rng.uniform(0.5, 2.0, 5)
    dx, dt = da.from_array(x, chunks=(4, 5)), da.from_array(t, chunks=(6, 5))  # t rechunked
    kwargs = dict(reduction=reduction, weight=w, label_smoothing=0.1)
    expected = fastxent.cross_entropy_with_grad(x, t, **kwargs)
    loss, grad = da.compute(*fxd.cross_entropy_with_grad(dx, dt, **kwargs))
    _assert_same(loss, expected[0], reduction)
    np.testing.assert_array_equal(grad, expected[1], strict=True)  # mean: over the rows, exact


def test_all_targets_ignored_is_nan_with_zero_gradient(backend, dtype):
    x = da.from_array(np.ones((6, 3), dtype), chunks=(2, 3))
    loss, grad = da.compute(*fxd.cross_entropy_with_grad(x, np.full(6, -100)))
    assert np.isnan(loss) and loss.dtype == dtype and not grad.any()
    assert fxd.cross_entropy(x, np.full(6, -100), reduction="sum").compute() == 0


def test_targets_whose_classes_all_weigh_zero_give_the_in_memory_nan_gradient(backend, dtype):
    # mean over counted targets of total weight 0: PyTorch's gradient is go / 0 = NaN (not the
    # zeros of "every target ignored")
    x = rng_for("zero weight", dtype).standard_normal((6, 3)).astype(dtype)
    t = np.array([0, 0, 1, -100, 0, 1])
    w = np.array([0.0, 0.0, 1.0])
    expected = fastxent.cross_entropy_with_grad(x, t, weight=w)
    loss, grad = da.compute(*fxd.cross_entropy_with_grad(da.from_array(x, chunks=(2, 3)), t,
                                                         weight=w))
    assert np.isnan(expected[0]) and np.isnan(loss)
    np.testing.assert_array_equal(grad, expected[1], strict=True)
    assert np.isnan(grad[[0, 1, 2, 4, 5]]).all() and not grad[3].any()


def test_huge_class_weights_do_not_overflow_the_mean(backend, dtype):
    # the total weight (3e308 here) overflows: the mean is taken with the weights scaled by a
    # power of two, as in memory (another power: subnormal gradients may round differently)
    x = rng_for("huge weight", dtype).standard_normal((6, 3)).astype(dtype)
    t = np.array([0, 0, 1, 1, 0, 2])
    for w in (np.full(3, 1e308), np.array([1e308, 1e-300, 2.0])):
        expected = fastxent.cross_entropy_with_grad(x, t, weight=w)
        loss, grad = da.compute(*fxd.cross_entropy_with_grad(da.from_array(x, chunks=(2, 3)), t,
                                                             weight=w))
        assert np.isfinite(expected[0])
        assert_ulps(loss, expected[0])
        assert_ulps_of_largest(grad, expected[1])


def test_one_dimensional_input_is_one_row(backend):
    x = np.array([1.0, 2.0, 3.0])
    for reduction in REDUCTIONS:
        loss, grad = da.compute(*fxd.cross_entropy_with_grad(da.from_array(x), 2,
                                                            reduction=reduction))
        expected = fastxent.cross_entropy_with_grad(x, 2, reduction=reduction)
        assert np.shape(loss) == () and grad.shape == (3,)
        np.testing.assert_array_equal(loss, expected[0])
        np.testing.assert_array_equal(grad, expected[1])


@pytest.mark.parametrize("chunks", [(4, 0, 5, 3), (12,)], ids=["blocks", "one_block"])
def test_bad_label_in_one_block_raises_the_in_memory_index_error(backend, chunks):
    x = np.zeros((12, 5))
    y = np.arange(12) % 5
    y[10] = 9
    with pytest.raises(IndexError) as in_memory:
        fastxent.cross_entropy(x, y)
    dx = da.from_array(x, chunks=(chunks, 5))
    for lazy in (fxd.cross_entropy(dx, y), fxd.cross_entropy_with_grad(dx, y)[1],
                 fxd.cross_entropy(dx, y, reduction="none")):
        with pytest.raises(IndexError) as chunked:
            lazy.compute()
        assert str(chunked.value) == str(in_memory.value)


def test_argument_errors_raise_when_the_graph_is_built():
    x = da.zeros((4, 3), chunks=2)
    with pytest.raises(ValueError, match="reduction"):
        fxd.cross_entropy(x, np.zeros(4, int), reduction="avg")
    with pytest.raises(ValueError, match="weight"):
        fxd.cross_entropy(x, np.zeros(4, int), weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="target shape"):
        fxd.cross_entropy(x, np.zeros(5, int))
    with pytest.raises(TypeError):
        fxd.cross_entropy(x, np.zeros(4, bool))
    with pytest.raises(ValueError, match="zero classes"):
        fxd.cross_entropy(da.zeros((4, 0)), np.zeros(4, int))
    # the in-memory rules of what a target is (_validation.target_is_class_indices)
    with pytest.raises(TypeError, match="class probabilities must be floating"):
        fxd.cross_entropy(x, np.zeros((4, 3), int))
    with pytest.raises(TypeError, match="class indices must be integers"):
        fxd.cross_entropy(x, da.zeros(4, chunks=2))
    for ignore_index in (-100, 1):
        with pytest.raises(ValueError, match="ignore_index is not supported with class probab"):
            fxd.cross_entropy_with_grad(x, np.full((4, 3), 1 / 3), ignore_index=ignore_index)
    fxd.cross_entropy(x, np.full((4, 3), 1 / 3))  # the default ignore_index is no argument
    for call in (lambda **kw: fxd.cross_entropy(x, np.zeros(4, int), **kw),
                 lambda **kw: fxd.sparse_softmax_cross_entropy_with_logits(np.zeros(4, int), x,
                                                                           **kw),
                 lambda **kw: fxd.softmax_cross_entropy_with_logits_and_grad(x, x, **kw),
                 lambda **kw: fxd.softmax(x, **kw)):
        with pytest.raises(ValueError, match="n_threads"):
            call(n_threads=0)


# ------------------------------------------------------------------------------------------
# Laziness and task sharing
# ------------------------------------------------------------------------------------------

def test_lazy_and_one_kernel_call_per_block(backend, kernel_calls):
    rng = rng_for("calls")
    x = da.from_array(rng.standard_normal((20, 4)), chunks=((5, 5, 5, 5), 4))
    y = rng.integers(0, 4, 20)
    loss, grad = fxd.cross_entropy_with_grad(x, y)
    assert kernel_calls == {}  # nothing runs before compute
    da.compute(loss, grad)
    assert kernel_calls == {"cross_entropy_with_grad": 4}  # loss and gradient from one call


def test_threads_per_block(backend, monkeypatch):
    seen = []
    original = fastxent._api.cross_entropy

    def spy(*args, n_threads=None, **kwargs):
        seen.append(n_threads)
        return original(*args, n_threads=n_threads, **kwargs)
    monkeypatch.setattr(fastxent._api, "cross_entropy", spy)
    x = da.zeros((64, 3), chunks=(8, 3))
    fxd.cross_entropy(x, np.zeros(64, int)).compute()
    assert seen == [1] * 8 or fastxent._backend.kernels.max_threads() >= 16
    seen.clear()
    fxd.cross_entropy(x, np.zeros(64, int), n_threads=3).compute()
    assert seen == [3] * 8


# ------------------------------------------------------------------------------------------
# TensorFlow family and the normalisers
# ------------------------------------------------------------------------------------------

def test_tensorflow_family(backend, dtype):
    rng = rng_for("tf")
    x = rng.standard_normal((9, 2, 6)).astype(dtype)
    labels = rng.integers(0, 6, (9, 2))
    dense = rng.dirichlet(np.ones(9), (2, 6)).astype(dtype).transpose(2, 0, 1)  # axis 0
    dx = da.from_array(x, chunks=((3, 0, 6), 1, (2, 4)))
    cases = [
        (fxd.sparse_softmax_cross_entropy_with_logits(labels, dx),
         fastxent.sparse_softmax_cross_entropy_with_logits(labels, x)),
        (fxd.softmax_cross_entropy_with_logits(dense, dx.rechunk((9, 1, 3)), axis=0),
         fastxent.softmax_cross_entropy_with_logits(dense, x, axis=0)),
    ]
    # rows along axis 0 are strided, and a block's strides are not the whole array's: the class
    # sums run in another order (docs/numerics.md, "Determinism"), an ulp apart
    for lazy, expected in cases:
        assert_ulps(lazy.compute(), expected)
    for lazy_pair, expected_pair in [
        (fxd.sparse_softmax_cross_entropy_with_logits_and_grad(labels, dx),
         fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(labels, x)),
        (fxd.softmax_cross_entropy_with_logits_and_grad(dense, dx, axis=0),
         fastxent.softmax_cross_entropy_with_logits_and_grad(dense, x, axis=0)),
    ]:
        loss, grad = da.compute(*lazy_pair)
        assert_ulps(loss, expected_pair[0])
        assert_ulps_of_largest(grad, expected_pair[1])
    bad = labels.copy()
    bad[7, 1] = 6
    with pytest.raises(IndexError) as in_memory:
        fastxent.sparse_softmax_cross_entropy_with_logits(bad, x)
    with pytest.raises(IndexError) as chunked:
        fxd.sparse_softmax_cross_entropy_with_logits(bad, dx).compute()
    assert str(chunked.value) == str(in_memory.value)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("axis", [-1, 1])
def test_normalisers(backend, dtype, name, axis):
    x = rng_for(name).standard_normal((7, 5, 4)).astype(dtype)
    dx = da.from_array(x, chunks=((2, 0, 5), (2, 3), 4))
    got = getattr(fxd, name)(dx, axis=axis)
    np.testing.assert_array_equal(got.compute(), getattr(fastxent, name)(x, axis=axis), strict=True)


# ------------------------------------------------------------------------------------------
# Schedulers
# ------------------------------------------------------------------------------------------

def _problem():
    rng = rng_for("schedulers")
    x = rng.standard_normal((300, 11)).astype(np.float32)
    y = rng.integers(0, 11, 300)
    y[::7] = -100
    return x, y, da.from_array(x, chunks=((100, 50, 150), 11))


@pytest.mark.parametrize("scheduler", ["threads", "synchronous", "processes"])
def test_local_schedulers(scheduler):
    x, y, dx = _problem()
    expected = fastxent.cross_entropy_with_grad(x, y, reduction="none")
    got = da.compute(*fxd.cross_entropy_with_grad(dx, y, reduction="none"), scheduler=scheduler)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b, strict=True)


def test_distributed_local_cluster():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    x, y, dx = _problem()
    expected = fastxent.cross_entropy_with_grad(x, y, weight=np.linspace(0.5, 2, 11))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        loss, grad = da.compute(*fxd.cross_entropy_with_grad(dx, y, weight=np.linspace(0.5, 2, 11)))
    assert_ulps(loss, expected[0])
    assert_ulps_of_largest(grad, expected[1])  # weighted mean: the denominator is summed per block
