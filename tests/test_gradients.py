"""Gradients against central finite differences of the loss, in float64, for every loss variant."""

import numpy as np
import pytest

import fastxent
import reference
from helpers import numerical_gradient


def _check(loss_of, grad, x):
    np.testing.assert_allclose(grad, numerical_gradient(loss_of, x), rtol=1e-6, atol=1e-8)


VARIANTS = [
    {},
    {"reduction": "sum"},
    {"weight": [0.3, 1.0, 2.5, 0.0, 1.2]},
    {"label_smoothing": 0.2},
    {"weight": [0.3, 1.0, 2.5, 0.7, 1.2], "label_smoothing": 0.3},
    {"ignore_index": 2},
    {"ignore_index": 2, "weight": [0.3, 1.0, 2.5, 0.7, 1.2], "label_smoothing": 0.1},
    {"ignore_index": 2, "weight": [0.3, 1.0, 2.5, 0.7, 1.2], "label_smoothing": 0.1,
     "reduction": "sum"},
    {"weight": [0.3, 1.0, 2.5, 0.0, 1.2], "reduction": "sum"},
    {"label_smoothing": 1.0},
]


@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda k: ",".join(k) or "plain")
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2)], ids=str)
def test_class_index_gradient_matches_finite_differences(backend, kwargs, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    target = rng.integers(0, 5, shape[:1] + shape[2:])
    target.flat[0] = 2
    loss, grad = fastxent.cross_entropy_with_grad(x, target, grad_output=1.7, **kwargs)
    _check(lambda z: 1.7 * float(fastxent.cross_entropy(z, target, **kwargs)), grad, x)


@pytest.mark.parametrize("kwargs",
                         [{}, {"weight": [0.3, 1.0, 2.5, 0.7, 1.2]}, {"label_smoothing": 0.25}],
                         ids=["plain", "weight", "smoothing"])
def test_none_reduction_gradient_with_array_grad_output(backend, kwargs):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5))
    target = rng.integers(0, 5, 7)
    grad_output = rng.standard_normal(7)
    _, grad = fastxent.cross_entropy_with_grad(x, target, reduction="none", grad_output=grad_output,
                                               **kwargs)
    _check(lambda z: float(np.dot(grad_output,
                                  fastxent.cross_entropy(z, target, reduction="none", **kwargs))),
           grad, x)


@pytest.mark.parametrize("kwargs", [{}, {"weight": [0.3, 1.0, 2.5, 0.7, 1.2]},
                                    {"label_smoothing": 0.25}, {"reduction": "sum"}],
                         ids=["plain", "weight", "smoothing", "sum"])
def test_probability_target_gradient_matches_finite_differences(backend, kwargs):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5))
    target = rng.random((6, 5))
    target /= target.sum(axis=1, keepdims=True)
    _, grad = fastxent.cross_entropy_with_grad(x, target, **kwargs)
    _check(lambda z: float(fastxent.cross_entropy(z, target, **kwargs)), grad, x)


def test_dense_labels_not_summing_to_one_get_the_true_gradient(backend):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4))
    labels = rng.random((5, 4)) * 2  # rows sum to anything but 1
    loss, backprop = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, logits)
    _check(lambda z: float(fastxent.softmax_cross_entropy_with_logits(labels, z).sum()), backprop,
           logits)
    np.testing.assert_allclose(backprop, reference.rows(logits, labels).grad, rtol=1e-12)
    # TensorFlow's raw op would be wrong here
    assert not np.allclose(backprop, reference.softmax(logits) - labels)


def test_sparse_tensorflow_backprop_matches_finite_differences(backend):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2, 3, 6))
    labels = rng.integers(0, 6, (2, 3))
    _, backprop = fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(labels, logits)
    _check(lambda z: float(fastxent.sparse_softmax_cross_entropy_with_logits(labels, z).sum()),
           backprop, logits)


def test_dense_class_axis_not_last_gradient(backend):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 3, 2))
    labels = rng.random((4, 3, 2))
    _, backprop = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, logits, axis=1)
    _check(lambda z: float(fastxent.softmax_cross_entropy_with_logits(labels, z, axis=1).sum()),
           backprop, logits)


def test_gradient_of_the_label_class_keeps_precision_when_the_loss_is_tiny(backend, dtype):
    x = np.array([[40.0, 0.0, -3.0]], dtype=dtype)
    _, grad = fastxent.cross_entropy_with_grad(x, [0], reduction="sum")
    exact = -(np.exp(np.longdouble(-40)) + np.exp(np.longdouble(-43))) / (
        1 + np.exp(np.longdouble(-40)) + np.exp(np.longdouble(-43)))
    assert grad[0, 0] != 0  # p - 1 computed as -s_rest / s, not rounded to 0
    assert abs(grad[0, 0] - exact) <= 2 * np.spacing(dtype(abs(exact)))


NONE_VARIANTS = [
    {"ignore_index": 3},
    {"ignore_index": 3, "weight": [0.3, 1.0, 2.5, 0.7, 1.2], "label_smoothing": 0.15},
]


@pytest.mark.parametrize("kwargs", NONE_VARIANTS, ids=["ignore", "ignore,weight,label_smoothing"])
@pytest.mark.parametrize("shape", [(8, 5), (3, 5, 2, 2)], ids=str)
def test_none_reduction_gradient_with_ignored_targets(backend, kwargs, shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    target = rng.integers(0, 5, shape[:1] + shape[2:])
    target.flat[::3] = 3
    grad_output = rng.standard_normal(target.shape)
    _, grad = fastxent.cross_entropy_with_grad(x, target, reduction="none", grad_output=grad_output,
                                               **kwargs)
    ignored_rows = np.moveaxis(grad, 1, -1)[target == 3]
    assert ignored_rows.size and (ignored_rows == 0).all()
    _check(lambda z: float(np.sum(grad_output * fastxent.cross_entropy(z, target, reduction="none",
                                                                       **kwargs))),
           grad, x)


@pytest.mark.parametrize("kwargs",
                         [{}, {"weight": [0.3, 1.0, 2.5, 0.7, 1.2], "label_smoothing": 0.2}],
                         ids=["plain", "weight,label_smoothing"])
@pytest.mark.parametrize("normalised", [True, False], ids=["normalised", "unnormalised"])
def test_probability_target_none_gradient_with_array_grad_output(backend, kwargs, normalised):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 5, 3))
    target = rng.random((4, 5, 3)) * 2.5
    if normalised:
        target /= target.sum(axis=1, keepdims=True)
    grad_output = rng.standard_normal((4, 3))
    _, grad = fastxent.cross_entropy_with_grad(x, target, reduction="none", grad_output=grad_output,
                                               **kwargs)
    _check(lambda z: float(np.sum(grad_output * fastxent.cross_entropy(z, target, reduction="none",
                                                                       **kwargs))),
           grad, x)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_unnormalised_probability_targets_get_the_true_weighted_gradient(backend, reduction):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 4))
    target = rng.random((6, 4)) * 3  # rows sum to anything but 1
    weight = np.array([0.5, 2.0, 1.0, 0.25])
    _, grad = fastxent.cross_entropy_with_grad(x, target, weight=weight, reduction=reduction,
                                               grad_output=0.6)
    _check(lambda z: 0.6 * float(fastxent.cross_entropy(z, target, weight=weight,
                                                        reduction=reduction)), grad, x)
    # the closed form: (sum_c w_c t_c) p - w t per row, scaled by the reduction
    _, expected = reference.cross_entropy(x, target, weight=weight, reduction=reduction,
                                          grad_output=0.6)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_one_dimensional_input_gradient_matches_finite_differences(backend, reduction):
    x = np.array([0.3, -1.2, 2.0, 0.7])
    grad_output = 1.9
    _, grad = fastxent.cross_entropy_with_grad(x, 2, reduction=reduction, grad_output=grad_output,
                                               label_smoothing=0.1, weight=[1.0, 2.0, 0.5, 1.5])
    _check(lambda z: grad_output * float(fastxent.cross_entropy(z, 2, reduction=reduction,
                                                                label_smoothing=0.1,
                                                                weight=[1.0, 2.0, 0.5, 1.5])),
           grad, x)


def test_crossentropyloss_with_grad_matches_finite_differences(backend):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 4, 3))
    target = rng.integers(0, 4, (5, 3))
    target[0] = 0
    module = fastxent.CrossEntropyLoss(weight=[1.0, 0.5, 2.0, 1.0], ignore_index=0,
                                       label_smoothing=0.05)
    _, grad = module.with_grad(x, target, grad_output=2.5)
    _check(lambda z: 2.5 * float(module(z, target)), grad, x)


def test_mean_gradient_is_the_sum_gradient_divided_by_the_weight_total(backend, dtype):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((40, 6)).astype(dtype)
    target = rng.integers(0, 6, 40)
    target[::5] = -100
    weight = rng.uniform(0.5, 2, 6)
    _, mean_grad = fastxent.cross_entropy_with_grad(x, target, weight=weight)
    _, sum_grad = fastxent.cross_entropy_with_grad(x, target, weight=weight, reduction="sum")
    total = weight[target[target != -100]].sum()
    np.testing.assert_allclose(mean_grad, sum_grad / total, rtol=4 * np.finfo(dtype).eps,
                               atol=4 * np.finfo(dtype).eps / total)
