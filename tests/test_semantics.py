"""PyTorch's cross_entropy semantics checked against the long-double reference (tests/reference.py)
over the argument matrix, without PyTorch installed; and CrossEntropyLoss equals the functions."""

import inspect
import itertools
import pickle

import numpy as np
import pytest

import fastxent
import reference
from helpers import rng_for

SHAPES = [(5,), (9, 5), (4, 5, 3), (2, 5, 3, 2)]
REDUCTIONS = ["mean", "sum", "none"]


def _assert_close(actual, exact, dtype, scale):
    eps = np.finfo(dtype).eps
    actual = np.asarray(actual, dtype=np.longdouble)
    np.testing.assert_allclose(actual.astype(np.float64),
                               np.asarray(exact, np.longdouble).astype(np.float64),
                               rtol=8 * eps, atol=8 * eps * max(1.0, scale))


def _case(shape, dtype, rng, probabilities):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    n_classes = shape[1] if len(shape) > 1 else shape[0]
    if probabilities:
        t = rng.random(shape).astype(dtype)
        t /= t.sum(axis=1 if len(shape) > 1 else 0, keepdims=True)
    else:
        t = rng.integers(0, n_classes, shape[:1] + shape[2:] if len(shape) > 1 else ())
    return x, t, rng.uniform(0.2, 2.0, n_classes), rng


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("weighted, smoothing", list(itertools.product([False, True], [0.0, 0.2])),
                         ids=["plain", "smoothed", "weighted", "weighted-smoothed"])
def test_cross_entropy_follows_the_written_formulas(backend, dtype, shape, reduction, probabilities,
                                                    weighted, smoothing):
    x, t, weight, rng = _case(shape, dtype, rng_for(shape, reduction), probabilities)
    weight = weight if weighted else None
    loss_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    grad_output = rng.standard_normal(loss_shape) if reduction == "none" else -1.25
    kwargs = {"weight": weight, "reduction": reduction, "label_smoothing": smoothing}
    exact_loss, exact_grad = reference.cross_entropy(x, t, grad_output=grad_output, **kwargs)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, grad_output=grad_output, **kwargs)
    assert np.shape(loss) == np.shape(exact_loss)
    _assert_close(loss, exact_loss, dtype, float(np.abs(x).max()))
    _assert_close(grad, exact_grad, dtype, float(np.abs(exact_grad).max()))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 0, 4])
def test_ignored_targets_excluded_from_loss_gradient_and_mean(backend, dtype, reduction,
                                                              ignore_index):
    x, t, weight, rng = _case((12, 5, 2), dtype, np.random.default_rng(3), False)
    t[::3, 0] = ignore_index
    t[1, 1] = ignore_index
    for smoothing in (0.0, 0.3):
        kwargs = {"weight": weight, "reduction": reduction, "label_smoothing": smoothing,
                  "ignore_index": ignore_index}
        exact_loss, exact_grad = reference.cross_entropy(x, t, **kwargs)
        loss, grad = fastxent.cross_entropy_with_grad(x, t, **kwargs)
        _assert_close(loss, exact_loss, dtype, float(np.abs(x).max()))
        _assert_close(grad, exact_grad, dtype, float(np.abs(exact_grad).max()))
        ignored = np.moveaxis(grad, 1, -1)[t == ignore_index]
        assert ignored.size and (ignored == 0).all()


def test_ignored_targets_excluded_from_mean(backend, dtype):
    x = np.array([[1.0, 2.0, 3.0], [5.0, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    kept = fastxent.cross_entropy(x[[0, 2]], [2, 1])
    assert fastxent.cross_entropy(x, [2, -100, 1]) == kept
    weight = [1.0, 3.0, 0.5]
    weighted = fastxent.cross_entropy(x, [2, -100, 1], weight=weight)
    expected = (0.5 * np.log1p(np.exp(-1.0) + np.exp(-2.0)) + 3.0 * np.log(3.0)) / 3.5
    assert abs(weighted - expected) <= 4 * np.spacing(dtype(expected))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["indices", "probabilities"])
def test_crossentropyloss_equals_the_functions(backend, dtype, reduction, probabilities):
    x, t, weight, rng = _case((6, 4, 3), dtype, np.random.default_rng(4), probabilities)
    if not probabilities:
        t[0, 0] = 2
    options = {"weight": weight, "reduction": reduction, "label_smoothing": 0.1}
    if not probabilities:  # (an ignore_index with probabilities is an error)
        options["ignore_index"] = 2
    module = fastxent.CrossEntropyLoss(**options)
    np.testing.assert_array_equal(module(x, t), fastxent.cross_entropy(x, t, **options))
    grad_output = rng.standard_normal((6, 3)) if reduction == "none" else 0.5
    ours = module.with_grad(x, t, grad_output=grad_output)
    expected = fastxent.cross_entropy_with_grad(x, t, grad_output=grad_output, **options)
    for a, b in zip(ours, expected):
        np.testing.assert_array_equal(a, b)
    if reduction != "none":  # grad_output defaults to 1
        for a, b in zip(module.with_grad(x, t), fastxent.cross_entropy_with_grad(x, t, **options)):
            np.testing.assert_array_equal(a, b)


def test_crossentropyloss_defaults_are_pytorchs(backend, dtype):
    x, t, _, _ = _case((8, 5), dtype, np.random.default_rng(5), False)
    t[0] = -100
    np.testing.assert_array_equal(fastxent.CrossEntropyLoss()(x, t), fastxent.cross_entropy(x, t))
    assert np.isfinite(fastxent.CrossEntropyLoss()(x, t))  # -100 ignored by default


@pytest.mark.parametrize("ignore_index", [1, -100, -5])
def test_an_explicit_ignore_index_with_probability_targets_is_an_error(backend, dtype,
                                                                       ignore_index):
    # PyTorch: RuntimeError "ignore_index is not supported for floating point target" (for
    # ignore_index >= 0); here any explicit value, the default's -100 included, is refused
    x = np.zeros((3, 4), dtype)
    target = np.full((3, 4), 0.25, dtype)
    for call in (lambda: fastxent.cross_entropy(x, target, ignore_index=ignore_index),
                 lambda: fastxent.cross_entropy_with_grad(x, target, ignore_index=ignore_index),
                 lambda: fastxent.CrossEntropyLoss(ignore_index=ignore_index)(x, target),
                 lambda: fastxent.CrossEntropyLoss(ignore_index=ignore_index).with_grad(x, target)):
        with pytest.raises(ValueError, match="ignore_index is not supported with class probab"):
            call()
    # class indices with the same loss object are fine
    loss = fastxent.CrossEntropyLoss(ignore_index=ignore_index)(x, np.array([0, 1, 2]))
    assert np.isfinite(loss)


def test_the_default_ignore_index_is_minus_100_and_told_apart(backend):
    default = inspect.signature(fastxent.cross_entropy).parameters["ignore_index"].default
    assert default == -100 and repr(default) == "-100"
    module = pickle.loads(pickle.dumps(fastxent.CrossEntropyLoss()))
    assert "ignore_index=-100" in repr(module)
    x, target = np.zeros((2, 3)), np.full((2, 3), 1 / 3)
    np.testing.assert_allclose(module(x, target), np.log(3), rtol=1e-15)  # still the default
    labels = np.array([0, -100])
    np.testing.assert_allclose(module(x, labels), np.log(3), rtol=1e-15)  # -100 is ignored
