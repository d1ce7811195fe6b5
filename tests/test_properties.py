"""Properties that hold for every input, checked with hypothesis."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastxent
from fastxent import _backend, _kernels_py

from conftest import load_kernels

# The backend fixture (a monkeypatch) stays the same for every example of a test, which is
# what function-scoped fixtures under hypothesis warn about: here it is intended.
settings.register_profile("fastxent", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("fastxent")


@st.composite
def logits_and_labels(draw, dtype, max_classes=40):
    n_rows = draw(st.integers(1, 30))
    n_classes = draw(st.integers(1, max_classes))
    # integer-valued logits keep a shift by an integer exact in any float type
    x = draw(hnp.arrays(dtype, (n_rows, n_classes), elements=st.integers(-60, 60).map(float)))
    labels = draw(hnp.arrays(np.int64, n_rows, elements=st.integers(0, n_classes - 1)))
    return x, labels


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(data=st.data())
def test_loss_is_invariant_to_shifting_a_row(backend, dtype, data):
    x, labels = data.draw(logits_and_labels(dtype))
    shift = data.draw(hnp.arrays(dtype, (x.shape[0], 1), elements=st.integers(-100, 100).map(float)))
    a = fastxent.cross_entropy(x, labels, reduction="none")
    b = fastxent.cross_entropy(x + shift, labels, reduction="none")
    np.testing.assert_allclose(a, b, rtol=8 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(data=st.data())
def test_softmax_rows_sum_to_one_and_gradient_rows_to_zero(backend, dtype, data):
    x, labels = data.draw(logits_and_labels(dtype))
    p = fastxent.softmax(x)
    np.testing.assert_allclose(p.astype(np.float64).sum(axis=1), 1.0, rtol=x.shape[1] * np.finfo(dtype).eps)
    _, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="sum")
    np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=4 * x.shape[1] * np.finfo(dtype).eps)
    t = data.draw(hnp.arrays(dtype, x.shape, elements=st.integers(1, 100).map(float)))
    t /= t.sum(axis=1, keepdims=True)
    _, backprop = fastxent.softmax_cross_entropy_with_logits_and_grad(t, x)
    np.testing.assert_allclose(backprop.astype(np.float64).sum(axis=1), 0.0,
                               atol=8 * x.shape[1] * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(data=st.data())
def test_compiled_and_fallback_agree_within_a_few_ulps(dtype, data, monkeypatch):
    compiled = load_kernels("compiled")
    x, labels = data.draw(logits_and_labels(dtype))
    x = x * dtype(data.draw(st.sampled_from([0.01, 0.3, 1.0, 7.0])))
    smoothing = data.draw(st.sampled_from([0.0, 0.1]))
    results = []
    for module in (compiled, _kernels_py):
        monkeypatch.setattr(_backend, "kernels", module)
        results.append(fastxent.cross_entropy_with_grad(x, labels, reduction="none",
                                                        label_smoothing=smoothing))
        results.append(fastxent.log_softmax(x))
    eps = np.finfo(dtype).eps
    (loss_c, grad_c), lsm_c, (loss_p, grad_p), lsm_p = results
    np.testing.assert_allclose(loss_c, loss_p, rtol=6 * eps, atol=6 * eps * np.abs(loss_p).max())
    np.testing.assert_allclose(grad_c, grad_p, rtol=0, atol=6 * eps)
    np.testing.assert_allclose(lsm_c, lsm_p, rtol=6 * eps, atol=6 * eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(data=st.data())
def test_losses_are_non_negative_and_mean_is_between_min_and_max(backend, dtype, data):
    x, labels = data.draw(logits_and_labels(dtype))
    losses = fastxent.cross_entropy(x, labels, reduction="none")
    assert (losses >= 0).all()
    mean = fastxent.cross_entropy(x, labels)
    assert losses.min() * (1 - 4 * np.finfo(dtype).eps) <= mean <= losses.max() * (1 + 4 * np.finfo(dtype).eps)
