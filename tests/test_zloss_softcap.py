"""z-loss and logit softcap on cross_entropy, cross_entropy_with_grad and CrossEntropyLoss.

The reference is tests/reference.py, written independently of the kernels: v = s tanh(x / s)
(or x), lse = logsumexp(v), loss = cross-entropy of v + z lse^2; the gradient is checked against
that analytic formula, against finite differences, and against PyTorch.
"""

import numpy as np
import pytest

import fastxent
import reference
from helpers import numerical_gradient

RTOL = {np.float32: 2e-6, np.float64: 1e-13}


def _case(rng, n=9, c=40, scale=4.0):
    x = rng.standard_normal((n, c)) * scale
    y = rng.integers(0, c, n)
    y[0] = np.argmax(x[0])  # the label at the row maximum: its own gradient branch
    y[1] = -100
    return x, y


EXTRAS = [dict(z_loss=1e-3), dict(softcap=3.0), dict(z_loss=0.05, softcap=1.5)]


@pytest.mark.parametrize("extra", EXTRAS, ids=str)
@pytest.mark.parametrize("n_classes", [5, 40])  # tile path (C <= 32) and row path
@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.2), dict(weight="w"),
                                     dict(weight="w", label_smoothing=0.1)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_index_targets_match_the_reference(backend, dtype, extra, n_classes, options, reduction):
    rng = np.random.default_rng(1)
    x, y = _case(rng, c=n_classes)
    x = x.astype(dtype)
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = rng.uniform(0.5, 2.0, n_classes)
    go = rng.uniform(0.5, 2.0, len(y)) if reduction == "none" else 1.5
    want_loss, want_grad = reference.cross_entropy(x, y, reduction=reduction, grad_output=go,
                                                   **options, **extra)
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction=reduction, grad_output=go,
                                                  **options, **extra)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL[dtype], atol=0)
    np.testing.assert_allclose(grad, want_grad, rtol=RTOL[dtype] * 10,
                               atol=RTOL[dtype] * np.abs(want_grad).max())
    alone = fastxent.cross_entropy(x, y, reduction=reduction, **options, **extra)
    np.testing.assert_array_equal(alone, loss)


@pytest.mark.parametrize("extra", EXTRAS, ids=str)
@pytest.mark.parametrize("n_classes", [6, 50])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_probability_targets_match_the_reference(backend, dtype, extra, n_classes,
                                                 label_smoothing):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((7, n_classes)) * 3).astype(dtype)
    t = rng.dirichlet(np.ones(n_classes), 7).astype(dtype)
    w = rng.uniform(0.5, 2.0, n_classes)
    want_loss, want_grad = reference.cross_entropy(x, t, weight=w, label_smoothing=label_smoothing,
                                                   **extra)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, label_smoothing=label_smoothing,
                                                  **extra)
    n_rows = len(t)  # the mean's denominator with probability targets
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL[dtype])
    np.testing.assert_allclose(grad, want_grad, rtol=RTOL[dtype] * 10,
                               atol=RTOL[dtype] * np.abs(want_grad * n_rows).max())


@pytest.mark.parametrize("extra", EXTRAS, ids=str)
@pytest.mark.parametrize("sparse", [True, False])
def test_gradient_matches_finite_differences(backend, extra, sparse):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 7)) * 2
    target = np.array([0, 3, -100, 6]) if sparse else rng.dirichlet(np.ones(7), 4)
    _, grad = fastxent.cross_entropy_with_grad(x, target, label_smoothing=0.1, **extra)
    numeric = numerical_gradient(
        lambda z: fastxent.cross_entropy(z, target, label_smoothing=0.1, **extra), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_defaults_are_the_plain_path(backend, dtype, monkeypatch):
    # z_loss=0.0 and softcap=None, left out or given (to the functions or to CrossEntropyLoss),
    # reach the kernels without z_loss and softcap arguments, and give the same bits
    kernels = fastxent._backend.kernels
    extras_passed = []
    for name in ("sparse_xent", "dense_xent"):
        def spy(*args, _kernel=getattr(kernels, name), **kwargs):
            extras_passed.extend(sorted({"z_loss", "softcap"} & kwargs.keys()))
            return _kernel(*args, **kwargs)
        monkeypatch.setattr(kernels, name, spy)
    rng = np.random.default_rng(4)
    for c in (5, 300):
        x, y = _case(rng, n=33, c=c)
        x = x.astype(dtype)
        for target in (y, rng.dirichlet(np.ones(c), 33).astype(dtype)):
            options = {"label_smoothing": 0.1}
            defaults = {"z_loss": 0.0, "softcap": None}
            module = fastxent.CrossEntropyLoss(**options, **defaults)
            plain = fastxent.cross_entropy_with_grad(x, target, **options)
            for loss, grad in (fastxent.cross_entropy_with_grad(x, target, **options, **defaults),
                               module.with_grad(x, target)):
                np.testing.assert_array_equal(loss, plain[0])
                np.testing.assert_array_equal(grad, plain[1])
            for loss in (fastxent.cross_entropy(x, target, **options),
                         fastxent.cross_entropy(x, target, **options, **defaults),
                         module(x, target)):
                np.testing.assert_array_equal(loss, plain[0])
    assert extras_passed == []


def test_ignored_rows_get_no_z_loss(backend):
    x = np.array([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    loss, grad = fastxent.cross_entropy_with_grad(x, [0, -100], reduction="none", z_loss=0.5)
    assert loss[1] == 0.0 and np.all(grad[1] == 0.0)
    lse = reference.logsumexp(x[0])
    np.testing.assert_allclose(loss[0], lse - 1.0 + 0.5 * lse**2, rtol=1e-14)
    mean = fastxent.cross_entropy(x, [0, -100], z_loss=0.5)
    np.testing.assert_allclose(mean, loss[0], rtol=1e-14)  # divided by one counted row


def test_z_loss_is_not_weighted_by_class_weight(backend):
    x = np.array([[1.0, 2.0, 3.0]])
    w = np.array([0.0, 1.0, 1.0])
    lse = reference.logsumexp(x[0])
    loss = fastxent.cross_entropy(x, [0], weight=w, reduction="sum", z_loss=0.25)
    np.testing.assert_allclose(loss, 0.25 * lse**2, rtol=1e-14)


def test_z_loss_with_all_targets_ignored_is_nan_with_zero_gradient(backend):
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    loss, grad = fastxent.cross_entropy_with_grad(x, [-100, -100], z_loss=0.1, softcap=2.0)
    assert np.isnan(loss) and np.all(grad == 0.0)


def test_softcap_bounds_infinite_logits(backend, dtype):
    x = np.array([[np.inf, 0.0, -np.inf], [-np.inf, -np.inf, -np.inf], [np.nan, 1.0, 2.0],
                  [1.0, 2.0, 3.0]], dtype=dtype)
    y = np.array([0, 1, 2, 0])
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction="none", softcap=5.0)
    v = np.array([5.0, 0.0, -5.0])
    np.testing.assert_allclose(loss[0], reference.logsumexp(v) - 5.0, rtol=RTOL[dtype])
    assert grad[0, 0] == 0.0 and grad[0, 2] == 0.0  # the cap is flat at +-inf
    np.testing.assert_allclose(loss[1], np.log(3.0), rtol=RTOL[dtype])  # all capped to -5
    assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))  # NaN stays NaN, that row only
    assert np.isfinite(loss[3]) and np.all(np.isfinite(grad[3]))


@pytest.mark.parametrize("n_classes", [10, 40, 1000])  # tile-sized, row path, long rows
def test_softcap_tiny_loss_of_a_dominant_label_is_accurate(backend, dtype, n_classes):
    # The label is the maximum and the loss is log1p(sum of exp(v_c - v_y)) ~ 1e-19: all of it
    # is in the sum, none in v_y - m (which must be exactly 0, not a rounding of the cap).
    s = 30.0
    x = np.full((3, n_classes), -30.0, dtype=dtype)
    x[1, : n_classes // 2] = -40.0
    x[2] = np.linspace(-30.0, 20.0, n_classes)
    y = np.array([3, 3, 3])
    x[:, 3] = 30.0
    exact = reference.rows(x, y, softcap=s).loss
    # float32: within 2 ulp like the plain loss; float64: v carries about 1e-16 s
    rtol = 2 * 2.0**-23 if dtype == np.float32 else 1e-13
    one_hot = np.eye(n_classes, dtype=dtype)[y]
    for loss in (fastxent.cross_entropy(x, y, reduction="none", softcap=s),
                 fastxent.cross_entropy(x, one_hot, reduction="none", softcap=s)):
        assert np.all(loss > 0)
        np.testing.assert_allclose(loss.astype(np.longdouble), exact, rtol=rtol, atol=0)


@pytest.mark.parametrize("softcap", [1e10, 1e20, 1e300])
@pytest.mark.parametrize("n_classes", [5, 40])  # tile path (C <= 32) and row path
@pytest.mark.parametrize("sparse", [True, False])
def test_a_softcap_far_above_the_logits_changes_nothing(backend, dtype, softcap, n_classes,
                                                        sparse):
    # s tanh(x / s) is x to within rounding here ((x / s)^2 / 3 < 1e-17). tanh = (1 - e) / (1 + e)
    # with 1 - e computed as such cancelled: the error grew like s and, once e rounded to 1,
    # every capped logit was 0 (the loss log C, whatever the logits)
    rng = np.random.default_rng(8)
    x, y = _case(rng, c=n_classes)
    x = x.astype(dtype)
    target = y if sparse else rng.dirichlet(np.ones(n_classes), len(y)).astype(dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, target, reduction="none", softcap=softcap)
    plain_loss, plain_grad = fastxent.cross_entropy_with_grad(x, target, reduction="none")
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(loss, plain_loss, rtol=8 * eps, atol=0)
    np.testing.assert_allclose(grad, plain_grad, rtol=0, atol=8 * eps * np.abs(plain_grad).max())


@pytest.mark.parametrize("softcap", [0.5, 3.0, 30.0, 1e3, 1e6, 1e12])
def test_softcapped_float32_loss_within_an_ulp(backend, softcap):
    # every scale of x / s, from tanh's saturation to its linear part; labels at the row maximum
    # (tiny losses) included. Reference: long double, the loss as log1p of the other terms
    # (lse - v_y would lose a tiny loss to the rounding of lse), as reference.rows computes it.
    rng = np.random.default_rng(9)
    for scale in (0.1, 1.0, 4.0, 20.0):
        x = (rng.standard_normal((200, 50)) * scale).astype(np.float32)
        y = rng.integers(0, 50, 200)
        y[:50] = np.argmax(x[:50], axis=1)
        exact = reference.rows(x, y, softcap=softcap).loss
        loss = fastxent.cross_entropy(x, y, reduction="none", softcap=softcap)
        ulp = np.spacing(exact.astype(np.float32)).astype(np.longdouble)
        assert np.max(np.abs(loss.astype(np.longdouble) - exact) / ulp) <= 1.0


def test_tiny_softcap_divides_without_overflow(backend, dtype):
    # 1 / s overflows for s below 2**-1024: x / s must not become 0 * inf
    s = 1e-310
    x = np.array([[0.0, 1e-310, -1.0, 2.0]], dtype=np.float64).astype(dtype)
    with np.errstate(over="ignore"):  # 2 / s is inf in float64: tanh gives 1
        want = reference.rows(x, [0], softcap=s, dtype=np.float64).loss
    loss = fastxent.cross_entropy(x, [0], reduction="none", softcap=s)
    np.testing.assert_allclose(loss, want, rtol=RTOL[dtype], atol=1e-320)


def test_without_softcap_infinite_rows_stay_nan_with_z_loss(backend):
    x = np.array([[np.inf, 0.0], [-np.inf, -np.inf], [0.0, -np.inf]])
    loss, grad = fastxent.cross_entropy_with_grad(x, [1, 0, 0], reduction="none", z_loss=0.1)
    assert np.isnan(loss[0]) and np.isnan(loss[1]) and np.isfinite(loss[2])
    assert grad[2, 1] == 0.0


def test_in_place_gradient_equals_out_of_place(backend, dtype):
    rng = np.random.default_rng(5)
    for c in (5, 70):
        x, y = _case(rng, n=20, c=c)
        x = x.astype(dtype)
        for sparse in (True, False):
            target = y if sparse else rng.dirichlet(np.ones(c), 20).astype(dtype)
            kwargs = dict(z_loss=0.01, softcap=2.0, label_smoothing=0.1)
            loss, grad = fastxent.cross_entropy_with_grad(x, target, **kwargs)
            buf = x.copy()
            loss2, grad2 = fastxent.cross_entropy_with_grad(buf, target, out=buf, **kwargs)
            assert grad2 is buf
            np.testing.assert_array_equal(grad, grad2)
            assert loss == loss2


def test_spatial_input_with_class_axis_1(backend, dtype):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((3, 6, 4, 5)) * 3).astype(dtype)
    y = rng.integers(0, 6, (3, 4, 5))
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction="none", z_loss=0.02, softcap=2.5)
    want, want_grad = reference.cross_entropy(x, y, reduction="none", z_loss=0.02, softcap=2.5)
    np.testing.assert_allclose(loss, want, rtol=RTOL[dtype])
    np.testing.assert_allclose(grad, want_grad, rtol=RTOL[dtype] * 10, atol=RTOL[dtype])


def test_same_bits_for_every_thread_count(dtype):
    rng = np.random.default_rng(7)
    x, y = _case(rng, n=3000, c=100)
    x = x.astype(dtype)
    results = [fastxent.cross_entropy_with_grad(x, y, z_loss=1e-3, softcap=4.0, n_threads=t)
               for t in (1, 2, 3)]
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])


def test_cross_entropy_loss_object_carries_z_loss_and_softcap(backend):
    rng = np.random.default_rng(8)
    x, y = _case(rng)
    fn = fastxent.CrossEntropyLoss(z_loss=1e-2, softcap=3.0, label_smoothing=0.1)
    assert "z_loss=0.01" in repr(fn) and "softcap=3.0" in repr(fn)
    want = fastxent.cross_entropy(x, y, z_loss=1e-2, softcap=3.0, label_smoothing=0.1)
    assert fn(x, y) == want
    loss, grad = fn.with_grad(x, y)
    assert loss == want
    np.testing.assert_array_equal(
        grad, fastxent.cross_entropy_with_grad(x, y, z_loss=1e-2, softcap=3.0,
                                               label_smoothing=0.1)[1])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_z_loss_raises_value_error(backend, bad):
    with pytest.raises(ValueError, match="z_loss"):
        fastxent.cross_entropy(np.zeros((2, 3)), [0, 1], z_loss=bad)
    with pytest.raises(ValueError, match="z_loss"):
        fastxent.CrossEntropyLoss(z_loss=bad)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_softcap_raises_value_error(backend, bad):
    with pytest.raises(ValueError, match="softcap"):
        fastxent.cross_entropy_with_grad(np.zeros((2, 3)), [0, 1], softcap=bad)
    with pytest.raises(ValueError, match="softcap"):
        fastxent.CrossEntropyLoss(softcap=bad)


@pytest.mark.parametrize("name, bad", [("z_loss", "0.1"), ("z_loss", True), ("softcap", "3"),
                                       ("softcap", [1.0])])
def test_non_numeric_z_loss_or_softcap_raises_type_error(backend, name, bad):
    with pytest.raises(TypeError, match=name):
        fastxent.cross_entropy(np.zeros((2, 3)), [0, 1], **{name: bad})


# ------------------------------------------------------------------------------------------
# PyTorch parity: the same terms written in PyTorch, float64
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", EXTRAS, ids=str)
@pytest.mark.parametrize("n_classes", [7, 100])
@pytest.mark.parametrize("sparse", [True, False])
def test_matches_pytorch_written_terms(backend, dtype, extra, n_classes, sparse):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((16, n_classes)) * 4).astype(dtype)
    w = rng.uniform(0.5, 2.0, n_classes)
    if sparse:
        target = rng.integers(0, n_classes, 16)
        target[[2, 5]] = -100
    else:
        target = rng.dirichlet(np.ones(n_classes), 16).astype(dtype)
    z, s = extra.get("z_loss", 0.0), extra.get("softcap")

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    v = xt if s is None else s * torch.tanh(xt / s)
    tt = torch.tensor(target) if sparse else torch.tensor(target, dtype=torch.float64)
    wt = torch.tensor(w)
    ce = F.cross_entropy(v, tt, weight=wt, label_smoothing=0.1, reduction="sum")
    keep = (tt != -100) if sparse else torch.ones(16, dtype=torch.bool)
    den = wt[tt[keep]].sum() if sparse else 16.0
    loss_t = (ce + z * (torch.logsumexp(v, 1)[keep] ** 2).sum()) / den
    loss_t.backward()

    loss, grad = fastxent.cross_entropy_with_grad(x, target, weight=w, label_smoothing=0.1, **extra)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=RTOL[dtype] * 2)
    g_ref = xt.grad.numpy()
    np.testing.assert_allclose(grad, g_ref, rtol=RTOL[dtype] * 10,
                               atol=RTOL[dtype] * np.abs(g_ref).max())
