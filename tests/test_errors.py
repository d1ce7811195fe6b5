"""Every row of the error table: the exception type a NumPy user expects, and a message that
names the problem, on both backends. Nothing crashes, nothing is silently wrong."""

import re

import numpy as np
import pytest

import fastxent

X = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]])


def _sparse_calls(x, labels, **kwargs):
    """Every public function that takes class-index labels."""
    return [
        lambda: fastxent.cross_entropy(x, labels, **kwargs),
        lambda: fastxent.cross_entropy_with_grad(x, labels, **kwargs),
        lambda: fastxent.CrossEntropyLoss(**kwargs)(x, labels),
    ]


BAD_LABELS = [(labels, bad, label_dtype)
              for labels, bad in [([0, 3], 3), ([-1, 0], -1), ([0, 250], 250)]
              for label_dtype in [np.int64, np.int8, np.uint8, np.int32]
              if np.iinfo(label_dtype).min <= bad <= np.iinfo(label_dtype).max]


@pytest.mark.parametrize("labels, bad, label_dtype", BAD_LABELS,
                         ids=[f"{bad}-{np.dtype(t).name}" for _, bad, t in BAD_LABELS])
def test_class_index_out_of_range_raises_index_error_naming_value_and_classes(backend, dtype, labels, bad, label_dtype):
    y = np.array(labels, dtype=label_dtype)
    x = X.astype(dtype)
    calls = _sparse_calls(x, y) + [
        lambda: fastxent.sparse_softmax_cross_entropy_with_logits(y, x),
        lambda: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x),
    ]
    for call in calls:
        with pytest.raises(IndexError, match=rf"label {bad}\b.*3 classes"):
            call()


def test_uint64_label_beyond_int64_raises_index_error(backend):
    y = np.array([0, 2**63 + 5], dtype=np.uint64)
    with pytest.raises(IndexError, match=str(2**63 + 5)):
        fastxent.cross_entropy(X, y)


def test_negative_label_other_than_ignore_index_raises(backend):
    with pytest.raises(IndexError, match="-5"):
        fastxent.cross_entropy(X, [-5, 0], ignore_index=-100)
    assert np.isfinite(fastxent.cross_entropy(X, [-5, 0], ignore_index=-5))


def test_the_first_bad_label_is_reported_with_its_position(backend):
    y = np.zeros((4, 5), dtype=np.int64)
    y[2, 3] = 9
    y[3, 0] = 7
    with pytest.raises(IndexError, match=re.escape("label 9 at index (2, 3)")):
        fastxent.cross_entropy(np.zeros((4, 3, 5)), y)


@pytest.mark.parametrize("call", [
    lambda: fastxent.cross_entropy(X, [0, 1, 2]),
    lambda: fastxent.cross_entropy(X, np.zeros((2, 4))),
    lambda: fastxent.cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=int)),
    lambda: fastxent.sparse_softmax_cross_entropy_with_logits([0], X),
    lambda: fastxent.softmax_cross_entropy_with_logits(np.zeros((2, 4)), X),
], ids=["index too long", "probabilities wrong shape", "k-dim wrong shape", "tf sparse", "tf dense"])
def test_label_shape_mismatch_raises_value_error_naming_both_shapes(backend, call):
    with pytest.raises(ValueError, match=r"shape \(.*\).*shape \(.*\)") as info:
        call()
    assert "(2, 3" in str(info.value) or "(2, 3)" in str(info.value)


@pytest.mark.parametrize("weight, message", [
    ([1.0, 2.0], r"shape \(3,\)"), (np.ones((3, 1)), r"shape \(3,\)"),
    ([1.0, -1.0, 1.0], "non-negative"), ([1.0, np.nan, 1.0], "finite"), ([1.0, np.inf, 1.0], "finite"),
])
def test_bad_weight_raises_value_error(backend, weight, message):
    for call in _sparse_calls(X, [0, 1], weight=weight)[:2]:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "avg"}, "reduction"), ({"reduction": None}, "reduction"),
    ({"label_smoothing": -0.1}, "label_smoothing"), ({"label_smoothing": 1.5}, "label_smoothing"),
    ({"label_smoothing": float("nan")}, "label_smoothing"), ({"n_threads": 0}, "n_threads"),
    ({"n_threads": -2}, "n_threads"),
])
def test_bad_options_raise_value_error(backend, kwargs, message):
    calls = [lambda: fastxent.cross_entropy(X, [0, 1], **kwargs),
             lambda: fastxent.cross_entropy_with_grad(X, [0, 1], **kwargs)]
    if "n_threads" in kwargs:
        calls.append(lambda: fastxent.softmax(X, **kwargs))
    else:
        calls.append(lambda: fastxent.CrossEntropyLoss(**kwargs))
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("kwargs", [{"n_threads": 1.5}, {"n_threads": True}, {"ignore_index": 1.0},
                                    {"ignore_index": True}, {"label_smoothing": "0.1"}])
def test_options_of_the_wrong_type_raise_type_error(backend, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        fastxent.cross_entropy(X, [0, 1], **kwargs)


@pytest.mark.parametrize("bad", [np.array([[1 + 1j, 2, 3]]), np.array([["a", "b", "c"]]),
                                 np.array([[None, 1, 2]], dtype=object)], ids=["complex", "string", "object"])
def test_non_numeric_logits_raise_type_error(backend, bad):
    for call in (lambda: fastxent.cross_entropy(bad, [0]), lambda: fastxent.softmax(bad),
                 lambda: fastxent.logsumexp(bad), lambda: fastxent.sparse_softmax_cross_entropy_with_logits([0], bad)):
        with pytest.raises(TypeError, match="dtype"):
            call()


def test_float_labels_to_a_sparse_function_raise_type_error(backend):
    with pytest.raises(TypeError, match="integer"):
        fastxent.sparse_softmax_cross_entropy_with_logits(np.array([0.0, 1.0]), X)
    with pytest.raises(TypeError, match="integer"):
        fastxent.sparse_softmax_cross_entropy_with_logits(np.array([True, False]), X)
    with pytest.raises(TypeError, match="target"):
        fastxent.cross_entropy(X, np.array([True, False]))


@pytest.mark.parametrize("call", [
    lambda: fastxent.cross_entropy(np.zeros((4, 0)), np.zeros(4, dtype=int)),
    lambda: fastxent.cross_entropy(np.zeros(0), 0),
    lambda: fastxent.softmax(np.zeros((3, 0))),
    lambda: fastxent.logsumexp(np.zeros((3, 0))),
    lambda: fastxent.softmax_cross_entropy_with_logits(np.zeros((3, 0)), np.zeros((3, 0))),
], ids=["cross_entropy", "1-d", "softmax", "logsumexp", "tf dense"])
def test_zero_classes_raise_value_error(backend, call):
    with pytest.raises(ValueError, match="zero classes"):
        call()


def test_zero_dimensional_logits_raise_value_error(backend):
    with pytest.raises(ValueError, match="at least one dimension"):
        fastxent.softmax(np.float64(1.0))
    with pytest.raises(ValueError, match="at least one dimension"):
        fastxent.cross_entropy(np.float64(1.0), 0)


def test_axis_errors(backend):
    with pytest.raises(np.exceptions.AxisError):
        fastxent.softmax(X, axis=2)
    with pytest.raises(TypeError, match="axis"):
        fastxent.softmax(X, axis=1.0)
    with pytest.raises(TypeError, match="axis"):
        fastxent.logsumexp(X, axis=(0, 1))


def test_grad_output_errors(backend):
    with pytest.raises(ValueError, match="scalar"):
        fastxent.cross_entropy_with_grad(X, [0, 1], grad_output=np.ones(2))
    with pytest.raises(ValueError, match=r"grad_output shape \(3,\)"):
        fastxent.cross_entropy_with_grad(X, [0, 1], reduction="none", grad_output=np.ones(3))
    with pytest.raises(TypeError, match="grad_output"):
        fastxent.cross_entropy_with_grad(X, [0, 1], grad_output="one")


def test_errors_leave_out_untouched(backend):
    out = np.full_like(X, 5.0)
    with pytest.raises(IndexError):
        fastxent.cross_entropy_with_grad(X, [0, 7], out=out)
    assert (out == 5.0).all()
