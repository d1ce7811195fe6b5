"""Values published in PyTorch's and TensorFlow's documentation, and exact values of small cases."""

import numpy as np
import pytest

import fastxent

SEED_LOGITS = [[1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [3.0, 2.0, 1.0]]
SEED_LABELS = [0, 1, 2]
# The exact value is 2.40760596444438030..., which is the float64 2.40760596444438; PyTorch's
# float64 result, 2.4076059644443806, is one ulp above it.
EXACT_SEED_LOSS = 2.4076059644443803


def test_pytorch_crossentropyloss_example_prints_the_documented_float32_value(backend):
    loss = fastxent.CrossEntropyLoss()(np.array(SEED_LOGITS, dtype=np.float32),
                                       np.array(SEED_LABELS))
    assert loss.dtype == np.float32
    assert float(loss) == 2.4076058864593506


@pytest.mark.parametrize("kwargs, expected", [
    ({}, EXACT_SEED_LOSS),
    ({"reduction": "sum"}, 7.222817893333142),
    ({"label_smoothing": 0.1}, 2.3076059644443805),
    ({"weight": [1.0, 2.0, 3.0], "label_smoothing": 0.1}, 2.302050408888825),
])
def test_seed_example_matches_reference_values(backend, kwargs, expected):
    loss = fastxent.cross_entropy(np.array(SEED_LOGITS), SEED_LABELS, **kwargs)
    assert abs(float(loss) - expected) <= 2 * np.spacing(expected)


def test_tensorflow_dense_documentation_example(backend, dtype):
    logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], dtype=dtype)
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]], dtype=dtype)
    loss = fastxent.softmax_cross_entropy_with_logits(labels, logits)
    assert loss.dtype == dtype
    # TensorFlow prints [0.16984604, 0.82474494]: its own float32 rounding, within 2e-7
    np.testing.assert_allclose(loss, [0.16984604, 0.82474494], rtol=2.5e-7)


def test_tensorflow_sparse_documentation_example(backend, dtype):
    logits = np.array([[2.0, -5.0, 0.5, -0.1], [0.0, 0.0, 1.9, 1.4],
                       [-100.0, 100.0, -100.0, -100.0]], dtype=dtype)
    loss = fastxent.sparse_softmax_cross_entropy_with_logits(np.array([0, 3, 1]), logits)
    np.testing.assert_allclose(loss[:2], [0.29750752, 1.1448325], rtol=2.5e-7)
    # TensorFlow prints 0 for the last row; the exact loss is 3 exp(-200) = 4.15e-87, which
    # float64 holds (float32 rounds it to 0).
    exact = dtype(3 * np.exp(np.longdouble(-200)))
    assert abs(loss[2] - exact) <= 2 * np.spacing(exact)


def test_tiny_loss_is_not_rounded_to_zero(backend, dtype):
    loss = fastxent.cross_entropy(np.array([40.0, 0.0], dtype=dtype), 0)
    expected = np.log1p(np.exp(np.longdouble(-40)))  # 4.248354255291589e-18
    assert loss.dtype == dtype
    assert abs(float(loss) - float(expected)) <= 2 * float(np.spacing(dtype(expected)))
    assert float(loss) > 4.2e-18


def test_fused_tensorflow_ops_return_loss_and_backprop(backend, dtype):
    logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], dtype=dtype)
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]], dtype=dtype)
    loss, backprop = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, logits)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(backprop, p - labels, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(loss, fastxent.softmax_cross_entropy_with_logits(labels, logits))
    sparse_loss, sparse_backprop = fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(
        np.array([0, 1]), logits)
    np.testing.assert_allclose(sparse_backprop, p - np.eye(3)[[0, 1]], rtol=1e-6, atol=1e-7)
    wide = logits.astype(np.longdouble)
    exact = np.log(np.exp(wide).sum(axis=1)) - wide[[0, 1], [0, 1]]
    np.testing.assert_allclose(sparse_loss, exact.astype(np.float64), rtol=4 * np.finfo(dtype).eps)
