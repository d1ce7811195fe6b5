"""Every row of the error table: the exception type a NumPy user expects, and a message that
names the problem, on both backends. Nothing crashes, nothing is silently wrong."""

import re

import numpy as np
import pytest

import fastxent

X64 = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]])


@pytest.fixture(autouse=True)
def logits(backend, dtype):
    """Every test here runs on both backends and both dtypes, since argument checks may take
    dtype-specific fast paths; a test that calls with logits takes these, in its dtype."""
    return X64.astype(dtype)


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
def test_class_index_out_of_range_raises_index_error_naming_value_and_classes(backend, dtype,
                                                                              labels, bad,
                                                                              label_dtype, logits):
    y = np.array(labels, dtype=label_dtype)
    x = logits.astype(dtype)
    calls = _sparse_calls(x, y) + [
        lambda: fastxent.sparse_softmax_cross_entropy_with_logits(y, x),
        lambda: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(y, x),
    ]
    for call in calls:
        with pytest.raises(IndexError, match=rf"label {bad}\b.*3 classes"):
            call()


def test_uint64_label_beyond_int64_raises_index_error(backend, logits):
    y = np.array([0, 2**63 + 5], dtype=np.uint64)
    with pytest.raises(IndexError, match=str(2**63 + 5)):
        fastxent.cross_entropy(logits, y)


def test_negative_label_other_than_ignore_index_raises(backend, logits):
    with pytest.raises(IndexError, match="-5"):
        fastxent.cross_entropy(logits, [-5, 0], ignore_index=-100)
    assert np.isfinite(fastxent.cross_entropy(logits, [-5, 0], ignore_index=-5))


def test_the_first_bad_label_is_reported_with_its_position(backend):
    y = np.zeros((4, 5), dtype=np.int64)
    y[2, 3] = 9
    y[3, 0] = 7
    with pytest.raises(IndexError, match=re.escape("label 9 at index (2, 3)")):
        fastxent.cross_entropy(np.zeros((4, 3, 5)), y)


SHAPE_MISMATCHES = [
    ("cross_entropy index", lambda x, t: fastxent.cross_entropy(x, t), (2, 3), (3,)),
    ("cross_entropy probabilities", lambda x, t: fastxent.cross_entropy(x, t), (2, 3), (2, 4)),
    ("with_grad k-dim", lambda x, t: fastxent.cross_entropy_with_grad(x, t), (2, 3, 4), (2, 3)),
    ("with_grad k-dim probabilities", lambda x, t: fastxent.cross_entropy_with_grad(x, t),
     (2, 3, 4), (2, 4, 3)),
    ("1-d", lambda x, t: fastxent.cross_entropy(x, t), (5,), (2,)),
    ("CrossEntropyLoss", lambda x, t: fastxent.CrossEntropyLoss()(x, t), (4, 3), (5,)),
    ("tf sparse", lambda x, t: fastxent.sparse_softmax_cross_entropy_with_logits(t, x),
     (2, 3), (1,)),
    ("tf sparse fused",
     lambda x, t: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(t, x),
     (2, 3, 5), (3, 2)),
    ("tf dense", lambda x, t: fastxent.softmax_cross_entropy_with_logits(t, x), (2, 3), (2, 4)),
    ("tf dense fused", lambda x, t: fastxent.softmax_cross_entropy_with_logits_and_grad(t, x),
     (2, 3), (3, 2)),
]


@pytest.mark.parametrize("call, logits_shape, labels_shape",
                         [case[1:] for case in SHAPE_MISMATCHES],
                         ids=[case[0] for case in SHAPE_MISMATCHES])
def test_label_shape_mismatch_raises_value_error_naming_both_shapes(backend, dtype, call,
                                                                    logits_shape, labels_shape):
    x = np.zeros(logits_shape, dtype=dtype)
    probabilities = len(labels_shape) == len(logits_shape)
    t = (np.full(labels_shape, 0.25, dtype=dtype) if probabilities
         else np.zeros(labels_shape, dtype=np.int64))
    with pytest.raises(ValueError) as info:
        call(x, t)
    message = str(info.value)
    assert str(logits_shape) in message and str(labels_shape) in message, message


@pytest.mark.parametrize("weight, message", [
    # the loss object checks at construction what it can without knowing C: "(C,)"
    ([1.0, 2.0], r"shape \(3,\)"), (np.ones((3, 1)), r"shape \((3|C),\)"),
    ([1.0, -1.0, 1.0], "non-negative"), ([1.0, np.nan, 1.0], "finite"),
    ([1.0, np.inf, 1.0], "finite"),
])
def test_bad_weight_raises_value_error(backend, weight, message, logits):
    probabilities = np.full_like(logits, 1 / 3)
    calls = _sparse_calls(logits, [0, 1], weight=weight) + [
        lambda: fastxent.cross_entropy_with_grad(logits, probabilities, weight=weight),
        lambda: fastxent.CrossEntropyLoss(weight=weight).with_grad(logits, [0, 1]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("weight, error, message", [
    ([1.0, -1.0, 1.0], ValueError, "non-negative"), ([np.nan, 2.0, 3.0], ValueError, "finite"),
    (np.ones((1, 3)), ValueError, r"shape \(C,\)"), (np.array([1 + 1j, 1, 1]), TypeError, "real"),
    (["1", "2", "3"], TypeError, "real"),
])
def test_loss_object_checks_its_weight_when_built(weight, error, message):
    # "arguments are checked once": at construction, with cross_entropy's rules
    with pytest.raises(error, match=message):
        fastxent.CrossEntropyLoss(weight=weight)


OPTION_CHECKS = ("class_weight", "ignore_index", "reduction", "label_smoothing", "z_loss",
                 "softcap")


def test_loss_object_checks_its_options_once(monkeypatch, logits):
    """The options are checked when the object is built, never again when it is called; the
    functions check them on every call (so the spies below see what they should)."""
    from fastxent import _validation

    calls = []
    for name in OPTION_CHECKS:
        original = getattr(_validation, name)
        monkeypatch.setattr(_validation, name,
                            lambda *a, _name=name, _original=original: calls.append(_name)
                            or _original(*a))
    options = dict(weight=[1.0, 2.0, 3.0], ignore_index=1, reduction="sum", label_smoothing=0.1,
                   z_loss=1e-3, softcap=5.0)
    loss_fn = fastxent.CrossEntropyLoss(**options)
    assert sorted(calls) == sorted(OPTION_CHECKS)
    calls.clear()
    loss_fn(logits, [0, 1])
    loss_fn.with_grad(logits, [0, 1], out=np.empty_like(logits))
    assert calls == []
    fastxent.cross_entropy(logits, [0, 1], **options)
    assert sorted(calls) == sorted(OPTION_CHECKS)
    calls.clear()
    loss_fn.reduction = "mean"  # an option set later is checked once, when set
    assert sorted(calls) == sorted(OPTION_CHECKS) and loss_fn.reduction == "mean"
    for ours, expected in zip(loss_fn.with_grad(logits, [0, 1]), fastxent.cross_entropy_with_grad(
            logits, [0, 1], **{**options, "reduction": "mean"})):
        np.testing.assert_array_equal(ours, expected)
    with pytest.raises(ValueError, match="reduction"):
        loss_fn.reduction = "avg"
    assert loss_fn.reduction == "mean"


def test_loss_object_keeps_its_own_copy_of_the_weight(backend, logits):
    weight = np.array([1.0, 2.0, 3.0])
    loss_fn = fastxent.CrossEntropyLoss(weight=weight)
    before = loss_fn(logits, [0, 1])
    weight[:] = 5.0
    assert loss_fn(logits, [0, 1]) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "avg"}, "reduction"), ({"reduction": None}, "reduction"),
    ({"label_smoothing": -0.1}, "label_smoothing"), ({"label_smoothing": 1.5}, "label_smoothing"),
    ({"label_smoothing": float("nan")}, "label_smoothing"), ({"n_threads": 0}, "n_threads"),
    ({"n_threads": -2}, "n_threads"),
])
def test_bad_options_raise_value_error(backend, kwargs, message, logits):
    calls = [lambda: fastxent.cross_entropy(logits, [0, 1], **kwargs),
             lambda: fastxent.cross_entropy_with_grad(logits, [0, 1], **kwargs)]
    if "n_threads" in kwargs:
        calls.append(lambda: fastxent.softmax(logits, **kwargs))
    else:
        calls.append(lambda: fastxent.CrossEntropyLoss(**kwargs))
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("kwargs", [{"n_threads": 1.5}, {"n_threads": True}, {"ignore_index": 1.0},
                                    {"ignore_index": True}, {"label_smoothing": "0.1"}])
def test_options_of_the_wrong_type_raise_type_error(backend, kwargs, logits):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        fastxent.cross_entropy(logits, [0, 1], **kwargs)


@pytest.mark.parametrize("bad", [np.array([[1 + 1j, 2, 3]]), np.array([["a", "b", "c"]]),
                                 np.array([[None, 1, 2]], dtype=object)],
                         ids=["complex", "string", "object"])
def test_non_numeric_logits_raise_type_error(backend, bad):
    for call in (lambda: fastxent.cross_entropy(bad, [0]), lambda: fastxent.softmax(bad),
                 lambda: fastxent.logsumexp(bad),
                 lambda: fastxent.sparse_softmax_cross_entropy_with_logits([0], bad)):
        with pytest.raises(TypeError, match="dtype"):
            call()


def test_float_labels_to_a_sparse_function_raise_type_error(backend, logits):
    with pytest.raises(TypeError, match="integer"):
        fastxent.sparse_softmax_cross_entropy_with_logits(np.array([0.0, 1.0]), logits)
    with pytest.raises(TypeError, match="integer"):
        fastxent.sparse_softmax_cross_entropy_with_logits(np.array([True, False]), logits)
    with pytest.raises(TypeError, match="target"):
        fastxent.cross_entropy(logits, np.array([True, False]))


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


def test_axis_errors(backend, logits):
    with pytest.raises(np.exceptions.AxisError):
        fastxent.softmax(logits, axis=2)
    with pytest.raises(TypeError, match="axis"):
        fastxent.softmax(logits, axis=1.0)
    with pytest.raises(TypeError, match="axis"):
        fastxent.logsumexp(logits, axis=(0, 1))


def test_grad_output_errors(backend, logits):
    with pytest.raises(ValueError, match="scalar"):
        fastxent.cross_entropy_with_grad(logits, [0, 1], grad_output=np.ones(2))
    with pytest.raises(ValueError, match=r"grad_output shape \(3,\)"):
        fastxent.cross_entropy_with_grad(logits, [0, 1], reduction="none", grad_output=np.ones(3))
    with pytest.raises(TypeError, match="grad_output"):
        fastxent.cross_entropy_with_grad(logits, [0, 1], grad_output="one")


def test_errors_leave_out_untouched(backend, logits):
    out = np.full_like(logits, 5.0)
    with pytest.raises(IndexError):
        fastxent.cross_entropy_with_grad(logits, [0, 7], out=out)
    assert (out == 5.0).all()


PUBLIC_CALLS = {
    "softmax": lambda x, **kw: fastxent.softmax(x, **kw),
    "log_softmax": lambda x, **kw: fastxent.log_softmax(x, **kw),
    "logsumexp": lambda x, **kw: fastxent.logsumexp(x, **kw),
    "tf dense": lambda x, **kw: fastxent.softmax_cross_entropy_with_logits(
        np.full_like(x, 1 / 3), x, **kw),
    "tf dense fused": lambda x, **kw: fastxent.softmax_cross_entropy_with_logits_and_grad(
        np.full_like(x, 1 / 3), x, **kw),
    "tf sparse": lambda x, **kw: fastxent.sparse_softmax_cross_entropy_with_logits([0, 1], x, **kw),
    "tf sparse fused": lambda x, **kw: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(
        [0, 1], x, **kw),
    "cross_entropy": lambda x, **kw: fastxent.cross_entropy(x, [0, 1], **kw),
    "cross_entropy_with_grad": lambda x, **kw: fastxent.cross_entropy_with_grad(x, [0, 1], **kw),
}


@pytest.mark.parametrize("name", list(PUBLIC_CALLS))
@pytest.mark.parametrize("n_threads", [0, -1])
def test_n_threads_below_one_raises_value_error_in_every_function(backend, name, n_threads, logits):
    with pytest.raises(ValueError, match="n_threads"):
        PUBLIC_CALLS[name](logits, n_threads=n_threads)


@pytest.mark.parametrize("name", list(PUBLIC_CALLS))
def test_n_threads_one_and_two_are_accepted_by_every_function(backend, name, logits):
    a, b = PUBLIC_CALLS[name](logits, n_threads=1), PUBLIC_CALLS[name](logits, n_threads=2)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_array_equal(x, y)


def test_non_numeric_labels_targets_and_weights_raise_type_error(backend, logits):
    complex_labels = np.full(logits.shape, 1 / 3 + 0j)
    with pytest.raises(TypeError):
        fastxent.softmax_cross_entropy_with_logits(complex_labels, logits)
    with pytest.raises(TypeError):
        fastxent.cross_entropy(logits, complex_labels)
    with pytest.raises(TypeError):
        fastxent.cross_entropy(logits, np.array(["0", "1"]))
    with pytest.raises(TypeError):
        fastxent.sparse_softmax_cross_entropy_with_logits(np.array([0, 1], dtype=object), logits)
    with pytest.raises(TypeError, match="weight"):
        fastxent.cross_entropy(logits, [0, 1], weight=np.ones(3, dtype=complex))


def test_the_default_ignore_index_is_an_error_when_another_is_chosen(backend, logits):
    with pytest.raises(IndexError, match=r"-100\b.*3 classes"):
        fastxent.cross_entropy(logits, [-100, 0], ignore_index=2)
    with pytest.raises(IndexError, match=r"-100\b.*3 classes"):
        fastxent.CrossEntropyLoss(ignore_index=2).with_grad(logits, [-100, 0])


def test_ignore_index_is_not_special_to_the_tensorflow_functions(backend, logits):
    with pytest.raises(IndexError, match=r"-100\b.*3 classes"):
        fastxent.sparse_softmax_cross_entropy_with_logits([-100, 0], logits)


def test_out_of_range_scalar_target_of_one_dimensional_input_raises(backend, dtype):
    with pytest.raises(IndexError, match=r"\b3\b.*3 classes"):
        fastxent.cross_entropy(np.zeros(3, dtype=dtype), 3)
    with pytest.raises(IndexError, match=r"\b7\b.*3 classes"):
        fastxent.cross_entropy_with_grad(np.zeros(3, dtype=dtype), np.uint8(7))


def test_bad_label_is_found_anywhere_in_a_large_batch(backend):
    x = np.zeros((10000, 4))
    y = np.zeros(10000, dtype=np.int32)
    y[9999] = 4
    with pytest.raises(IndexError, match=r"\b4\b.*4 classes"):
        fastxent.cross_entropy(x, y, n_threads=2)
    y[9999] = 0
    y[5000] = -3
    with pytest.raises(IndexError, match=r"-3\b.*4 classes"):
        fastxent.cross_entropy_with_grad(x, y, n_threads=2)


@pytest.mark.parametrize("labels, ignore_index, bad", [
    (np.array([255, 0], dtype=np.uint8), -1, 255),
    (np.array([-1, 0], dtype=np.int8), 255, -1),
    (np.array([2**64 - 1, 0], dtype=np.uint64), -1, 2**64 - 1),
    (np.array([-128, 0], dtype=np.int8), 128, -128),
], ids=["uint8 255 vs -1", "int8 -1 vs 255", "uint64 max vs -1", "int8 -128 vs 128"])
def test_ignore_index_is_compared_by_value_not_by_bit_pattern(labels, ignore_index, bad, logits):
    with pytest.raises(IndexError, match=rf"{bad}\b.*3 classes"):
        fastxent.cross_entropy(logits, labels, ignore_index=ignore_index)
    with pytest.raises(IndexError, match=rf"{bad}\b.*3 classes"):
        fastxent.cross_entropy_with_grad(logits, labels, ignore_index=ignore_index)


def test_ignore_index_outside_the_label_dtype_never_matches(dtype, logits):
    labels = np.array([1, 0], dtype=np.int8)
    expected = fastxent.cross_entropy(logits, labels)
    assert fastxent.cross_entropy(logits, labels, ignore_index=2**40) == expected
    assert fastxent.cross_entropy(logits, labels.astype(np.uint8), ignore_index=-2**40) == expected
