"""Parity with torch.nn.functional.cross_entropy and its autograd gradient over the argument matrix.

PyTorch computes float32 in float32 (fastxent accumulates in double and is the more exact of
the two), so float32 is compared at a few float32 ulps of the largest value and float64 at a
few float64 ulps.
"""

import itertools

import numpy as np
import pytest

import fastxent
from helpers import n_classes_of, rng_for, target_shape_of

torch = pytest.importorskip("torch", reason="PyTorch is not installed: parity tests skipped")

SHAPES = [(7,), (12, 5), (6, 4, 3), (3, 5, 2, 4)]
REDUCTIONS = ["mean", "sum", "none"]
INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def _assert_close_to_torch(ours, theirs, dtype, scale):
    """float64 within a few ulps; float32 within a few e-6 relative to the value or to ``scale``
    (the magnitude the result was computed from: PyTorch's float32 error is absolute in the
    logits' magnitude, ours is not, so tiny losses are compared at that absolute level)."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * max(1.0, scale))


def _torch_loss_and_grad(x, target, grad_output=1.0, **kwargs):
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(target.astype(np.int64) if target.dtype.kind in "iu" else target)
    if kwargs.get("weight") is not None:
        kwargs["weight"] = torch.tensor(kwargs["weight"], dtype=xt.dtype)
    loss = torch.nn.functional.cross_entropy(xt, tt, **kwargs)
    loss.backward(torch.as_tensor(grad_output, dtype=xt.dtype).expand_as(loss))
    return loss.detach().numpy(), xt.grad.numpy()


def _compare(x, target, dtype, grad_output=1.0, **kwargs):
    expected_loss, expected_grad = _torch_loss_and_grad(x, target, grad_output, **kwargs)
    loss = fastxent.cross_entropy(x, target, **kwargs)
    loss2, grad = fastxent.cross_entropy_with_grad(x, target, grad_output=grad_output, **kwargs)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
    assert np.shape(loss) == expected_loss.shape
    np.testing.assert_array_equal(loss, loss2)  # the fused call computes the same loss
    _assert_close_to_torch(loss, expected_loss, dtype, float(np.abs(x).max()))
    _assert_close_to_torch(grad, expected_grad, dtype, float(np.abs(expected_grad).max()))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_class_index_targets_match_torch(backend, dtype, shape, reduction, weighted, smoothing):
    rng = rng_for(shape, reduction, weighted, smoothing)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    c = n_classes_of(shape)
    target = rng.integers(0, c, target_shape_of(shape))
    weight = rng.uniform(0.1, 2.0, c) if weighted else None
    grad_output = rng.standard_normal(target.shape) if reduction == "none" else 0.7
    _compare(x, target, dtype, grad_output, weight=weight, reduction=reduction,
             label_smoothing=smoothing)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ignored_targets_match_torch(backend, dtype, shape, reduction, ignore_index, smoothing):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, n_classes_of(shape), target_shape_of(shape))
    target.flat[::3] = ignore_index
    weight = rng.uniform(0.1, 2.0, n_classes_of(shape))
    _compare(x, target, dtype, weight=weight, reduction=reduction, ignore_index=ignore_index,
             label_smoothing=smoothing)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kwargs, shape", [
    ({}, (4, 3)),
    ({"ignore_index": 1, "weight": [0.5, 2.0, 1.0], "label_smoothing": 0.2}, (4, 3)),
    ({"ignore_index": -7, "label_smoothing": 0.1}, (2, 3, 5)),
], ids=["default", "custom-weighted-smoothed", "k-dim"])
def test_all_targets_ignored_gives_nan_mean_and_zero_gradient(backend, dtype, reduction, kwargs,
                                                              shape):
    x = np.arange(np.prod(shape), dtype=dtype).reshape(shape) / 3
    target = np.full(target_shape_of(shape), kwargs.get("ignore_index", -100))
    expected_loss, expected_grad = _torch_loss_and_grad(x, target, reduction=reduction, **kwargs)
    if reduction == "mean":
        assert np.isnan(expected_loss)  # what PyTorch does: 0 / 0
    loss, grad = fastxent.cross_entropy_with_grad(x, target, reduction=reduction, **kwargs)
    np.testing.assert_array_equal(fastxent.cross_entropy(x, target, reduction=reduction, **kwargs),
                                  expected_loss)
    np.testing.assert_array_equal(loss, expected_loss)  # NaN for mean, 0 for sum, zeros for none
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    np.testing.assert_array_equal(grad, expected_grad)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_probability_targets_match_torch(backend, dtype, shape, reduction, weighted, smoothing):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    class_axis = 1 if len(shape) > 1 else 0
    target = rng.random(shape).astype(dtype)
    target /= target.sum(axis=class_axis, keepdims=True)
    weight = rng.uniform(0.1, 2.0, n_classes_of(shape)) if weighted else None
    grad_output = rng.standard_normal(target_shape_of(shape)) if reduction == "none" else 1.3
    _compare(x, target, dtype, grad_output, weight=weight, reduction=reduction,
             label_smoothing=smoothing)


@pytest.mark.parametrize("int_dtype", INT_DTYPES, ids=lambda t: np.dtype(t).name)
def test_every_integer_target_dtype_matches_torch(backend, dtype, int_dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 6)).astype(dtype)
    target = rng.integers(0, 6, 9).astype(int_dtype)
    _compare(x, target, dtype)
    if np.dtype(int_dtype).kind == "i":  # a negative ignore_index in a signed type
        target[::2] = -1
        _compare(x, target, dtype, ignore_index=-1)


@pytest.mark.parametrize("n_classes", [3, 40, 1000])
def test_large_class_counts_and_logits_match_torch(backend, dtype, n_classes):
    rng = np.random.default_rng(n_classes)
    x = (rng.standard_normal((33, n_classes)) * 20).astype(dtype)
    target = rng.integers(0, n_classes, 33)
    for reduction, smoothing in itertools.product(REDUCTIONS, [0.0, 0.1]):
        _compare(x, target, dtype, reduction=reduction, label_smoothing=smoothing)


def test_crossentropyloss_object_matches_torch_module(backend, dtype):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((10, 4, 3)).astype(dtype)
    target = rng.integers(0, 4, (10, 3))
    target[0, 0] = 1  # make sure index 1 (the ignore_index here) appears
    weight = np.array([0.5, 1.0, 2.0, 1.5])
    ours = fastxent.CrossEntropyLoss(weight=weight, ignore_index=1, label_smoothing=0.05)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    theirs = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch_dtype),
                                       ignore_index=1, label_smoothing=0.05)
    xt = torch.tensor(x, requires_grad=True)
    expected = theirs(xt, torch.tensor(target))
    expected.backward()
    _assert_close_to_torch(ours(x, target), expected.detach().numpy(), dtype, 10.0)
    loss, grad = ours.with_grad(x, target)
    _assert_close_to_torch(loss, expected.detach().numpy(), dtype, 10.0)
    _assert_close_to_torch(grad, xt.grad.numpy(), dtype, float(np.abs(xt.grad.numpy()).max()))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_count_every_row(backend, dtype, reduction):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((8, 4)).astype(dtype)
    target = rng.random((8, 4)).astype(dtype)
    target /= target.sum(axis=1, keepdims=True)
    target[0] = [0.0, 1.0, 0.0, 0.0]  # a row that "is" class 1 still counts
    _compare(x, target, dtype, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_unnormalised_probability_targets_match_torch(backend, dtype, reduction, smoothing):
    rng = np.random.default_rng(22)
    x = rng.standard_normal((7, 5, 2)).astype(dtype)
    target = (rng.random((7, 5, 2)) * 3).astype(dtype)  # rows sum to anything
    weight = rng.uniform(0.1, 2.0, 5)
    _compare(x, target, dtype, weight=weight, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_weights_and_ignored_targets_in_the_mean_denominator_match_torch(backend, dtype,
                                                                              reduction):
    rng = np.random.default_rng(23)
    x = rng.standard_normal((30, 4)).astype(dtype)
    target = rng.integers(0, 4, 30)
    target[::4] = -100
    weight = np.array([0.0, 1.5, 0.0, 0.5])
    _compare(x, target, dtype, weight=weight, reduction=reduction)
    _compare(x, target, dtype, weight=weight, reduction=reduction, label_smoothing=0.3)


@pytest.mark.parametrize("int_dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8],
                         ids=lambda t: np.dtype(t).name)
def test_custom_non_negative_ignore_index_in_any_integer_dtype_matches_torch(backend, dtype,
                                                                             int_dtype):
    rng = np.random.default_rng(24)
    x = rng.standard_normal((3, 6, 4)).astype(dtype)
    target = rng.integers(0, 6, (3, 4)).astype(int_dtype)
    target[:, 0] = 5
    for reduction in REDUCTIONS:
        _compare(x, target, dtype, reduction=reduction, ignore_index=5, weight=np.arange(1.0, 7.0))


@pytest.mark.parametrize("shape", [(9, 5), (3, 4, 6)], ids=str)
def test_tensorflow_family_matches_torch_with_the_class_axis_moved(backend, dtype, shape):
    rng = np.random.default_rng(25)
    logits = (rng.standard_normal(shape) * 2).astype(dtype)  # class axis last
    labels = rng.integers(0, shape[-1], shape[:-1])
    dense = rng.random(shape).astype(dtype)
    dense /= dense.sum(axis=-1, keepdims=True)
    for target, ours in [
        (labels, fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(labels, logits)),
        (dense, fastxent.softmax_cross_entropy_with_logits_and_grad(dense, logits)),
    ]:
        torch_target = np.moveaxis(target, -1, 1) if target.ndim == logits.ndim else target
        loss, grad = _torch_loss_and_grad(np.moveaxis(logits, -1, 1).copy(),
                                          np.ascontiguousarray(torch_target),
                                          reduction="none")
        _assert_close_to_torch(ours[0], loss, dtype, float(np.abs(logits).max()))
        _assert_close_to_torch(ours[1], np.moveaxis(grad, 1, -1), dtype, 1.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_full_label_smoothing_matches_torch(backend, dtype, reduction):
    rng = np.random.default_rng(26)
    x = rng.standard_normal((10, 4, 3)).astype(dtype)
    target = rng.integers(0, 4, (10, 3))
    target[0] = -100
    _compare(x, target, dtype, reduction=reduction, label_smoothing=1.0,
             weight=[0.5, 1.0, 2.0, 0.25])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_zero_total_weight_of_the_targets_matches_torch(backend, dtype, smoothing):
    # every target's class has weight 0 (none is ignored): the mean is 0 / 0. PyTorch's autograd
    # gives a NaN gradient here (unlike the all-ignored case, where it gives zeros); the
    # contract lists no deliberate difference, so we follow it.
    x = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]], dtype=dtype)
    target = np.array([0, 1])
    weight = np.array([0.0, 0.0, 5.0])
    expected_loss, expected_grad = _torch_loss_and_grad(x, target, weight=weight,
                                                        label_smoothing=smoothing)
    loss, grad = fastxent.cross_entropy_with_grad(x, target, weight=weight,
                                                  label_smoothing=smoothing)
    assert np.isnan(expected_loss) and np.isnan(loss)
    np.testing.assert_array_equal(grad, expected_grad)
