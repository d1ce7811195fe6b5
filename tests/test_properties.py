"""Properties that hold for every input, checked with hypothesis."""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastxent
from fastxent import _backend, _kernels_py
from helpers import load_kernels

# The backend fixture (a monkeypatch) stays the same for every example of a test, which is
# what function-scoped fixtures under hypothesis warn about: here it is intended.
settings.register_profile("fastxent", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
# FASTXENT_HYPOTHESIS_PROFILE=thorough for a long bug hunt
settings.register_profile("thorough", parent=settings.get_profile("fastxent"), max_examples=2000)
settings.load_profile(os.environ.get("FASTXENT_HYPOTHESIS_PROFILE", "fastxent"))


@st.composite
def logits_and_labels(draw, dtype, max_classes=40):
    n_rows = draw(st.integers(1, 30))
    n_classes = draw(st.integers(1, max_classes))
    # integer-valued logits keep a shift by an integer exact in any float type
    x = draw(hnp.arrays(dtype, (n_rows, n_classes), elements=st.integers(-60, 60).map(float)))
    labels = draw(hnp.arrays(np.int64, n_rows, elements=st.integers(0, n_classes - 1)))
    return x, labels


@given(data=st.data())
def test_loss_is_invariant_to_shifting_a_row(backend, dtype, data):
    x, labels = data.draw(logits_and_labels(dtype))
    shift = data.draw(hnp.arrays(dtype, (x.shape[0], 1),
                                 elements=st.integers(-100, 100).map(float)))
    a = fastxent.cross_entropy(x, labels, reduction="none")
    b = fastxent.cross_entropy(x + shift, labels, reduction="none")
    np.testing.assert_allclose(a, b, rtol=8 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


@given(data=st.data())
def test_softmax_rows_sum_to_one_and_gradient_rows_to_zero(backend, dtype, data):
    x, labels = data.draw(logits_and_labels(dtype))
    p = fastxent.softmax(x)
    np.testing.assert_allclose(p.astype(np.float64).sum(axis=1), 1.0,
                               rtol=x.shape[1] * np.finfo(dtype).eps)
    _, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="sum")
    np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0,
                               atol=4 * x.shape[1] * np.finfo(dtype).eps)
    t = data.draw(hnp.arrays(dtype, x.shape, elements=st.integers(1, 100).map(float)))
    t /= t.sum(axis=1, keepdims=True)
    _, backprop = fastxent.softmax_cross_entropy_with_logits_and_grad(t, x)
    np.testing.assert_allclose(backprop.astype(np.float64).sum(axis=1), 0.0,
                               atol=8 * x.shape[1] * np.finfo(dtype).eps)


def _every_result(x, labels, dense, weight, smoothing):
    """The public functions on one input, flattened to a list of arrays."""
    k = x.ndim - 1
    results = [
        *fastxent.cross_entropy_with_grad(np.moveaxis(x, -1, 1) if k > 1 else x,
                                          np.moveaxis(labels, -1, 1) if k > 1 else labels,
                                          reduction="none", label_smoothing=smoothing,
                                          weight=weight),
        *fastxent.cross_entropy_with_grad(x.reshape(-1, x.shape[-1]), labels.reshape(-1),
                                          weight=weight,
                                          label_smoothing=smoothing, ignore_index=0),
        *fastxent.cross_entropy_with_grad(x.reshape(-1, x.shape[-1]),
                                          dense.reshape(-1, x.shape[-1]),
                                          weight=weight, label_smoothing=smoothing,
                                          reduction="sum"),
        *fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(labels, x),
        *fastxent.softmax_cross_entropy_with_logits_and_grad(dense, x),
        *fastxent.softmax_cross_entropy_with_logits_and_grad(np.moveaxis(dense, -1, 0),
                                                             np.moveaxis(x, -1, 0), axis=0),
    ]
    for axis in (-1, 0):
        results += [fastxent.softmax(x, axis=axis), fastxent.log_softmax(x, axis=axis),
                    fastxent.logsumexp(x, axis=axis)]
    return [np.asarray(r, dtype=np.float64) for r in results]


@given(data=st.data())
def test_compiled_and_fallback_agree_within_a_few_ulps(dtype, data, monkeypatch):
    compiled = load_kernels("compiled")
    n_classes = data.draw(st.integers(1, 70))
    shape = tuple(data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=2))) + (n_classes,)
    x = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-30, 30, width=32)))
    labels = data.draw(hnp.arrays(np.int64, shape[:-1], elements=st.integers(0, n_classes - 1)))
    dense = data.draw(hnp.arrays(dtype, shape, elements=st.floats(0, 1, width=32)))
    weight = data.draw(st.none() | hnp.arrays(np.float64, n_classes, elements=st.floats(0.125, 4)))
    smoothing = data.draw(st.sampled_from([0.0, 0.1]))
    monkeypatch.setattr(_backend, "kernels", compiled)
    from_compiled = _every_result(x, labels, dense, weight, smoothing)
    monkeypatch.setattr(_backend, "kernels", _kernels_py)
    from_python = _every_result(x, labels, dense, weight, smoothing)
    eps = np.finfo(dtype).eps
    for i, (c, p) in enumerate(zip(from_compiled, from_python)):
        finite = np.isfinite(p)
        np.testing.assert_array_equal(np.isfinite(c), finite, err_msg=f"result {i}")
        scale = np.abs(p[finite]).max() if finite.any() else 0.0
        np.testing.assert_allclose(c, p, rtol=8 * eps, atol=8 * eps * max(1.0, scale),
                                   err_msg=f"result {i}")


@given(data=st.data())
def test_losses_are_non_negative_and_mean_is_between_min_and_max(backend, dtype, data):
    x, labels = data.draw(logits_and_labels(dtype))
    losses = fastxent.cross_entropy(x, labels, reduction="none")
    assert (losses >= 0).all()
    mean = fastxent.cross_entropy(x, labels)
    eps = np.finfo(dtype).eps
    assert losses.min() * (1 - 4 * eps) <= mean <= losses.max() * (1 + 4 * eps)


@given(data=st.data())
def test_softmax_and_dense_loss_are_invariant_to_shifting_a_row(backend, dtype, data):
    x, _ = data.draw(logits_and_labels(dtype))
    shift = data.draw(hnp.arrays(dtype, (x.shape[0], 1),
                                 elements=st.integers(-100, 100).map(float)))
    t = data.draw(hnp.arrays(dtype, x.shape, elements=st.integers(0, 10).map(float)))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(fastxent.softmax(x + shift), fastxent.softmax(x), rtol=8 * eps,
                               atol=8 * eps)
    np.testing.assert_allclose(fastxent.logsumexp(x + shift), fastxent.logsumexp(x) + shift[:, 0],
                               rtol=8 * eps, atol=8 * eps * 200)
    a, ga = fastxent.softmax_cross_entropy_with_logits_and_grad(t, x)
    b, gb = fastxent.softmax_cross_entropy_with_logits_and_grad(t, x + shift)
    np.testing.assert_allclose(a, b, rtol=8 * eps, atol=8 * eps * max(1.0, np.abs(a).max()))
    np.testing.assert_allclose(ga, gb, rtol=8 * eps, atol=8 * eps * max(1.0, t.sum(axis=1).max()))


@given(data=st.data())
def test_weighted_smoothed_gradient_rows_sum_to_zero_and_reductions_agree(backend, dtype, data):
    x, labels = data.draw(logits_and_labels(dtype))
    n_classes = x.shape[1]
    weight = data.draw(hnp.arrays(np.float64, n_classes, elements=st.floats(0.125, 4)))
    smoothing = data.draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    kwargs = {"weight": weight, "label_smoothing": smoothing}
    eps = np.finfo(dtype).eps
    none, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="none", **kwargs)
    np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0,
                               atol=16 * n_classes * eps * weight.max())
    total = fastxent.cross_entropy(x, labels, reduction="sum", **kwargs)
    mean = fastxent.cross_entropy(x, labels, **kwargs)
    np.testing.assert_allclose(total, none.astype(np.float64).sum(), rtol=8 * eps, atol=8 * eps)
    np.testing.assert_allclose(mean, none.astype(np.float64).sum() / weight[labels].sum(),
                               rtol=8 * eps, atol=8 * eps)
