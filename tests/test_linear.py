"""linear_cross_entropy(_with_grad): the fused output layer + cross-entropy, chunked.

The reference is the unfused computation in float64: logits = hidden @ weight.T + bias from the
same inputs, then tests/reference.py computing in float64; the gradients are G @ weight,
G.T @ hidden and G.sum(0) with G = d loss / d logits.
"""

import tracemalloc

import numpy as np
import pytest

import fastxent
import reference
from fastxent import _linear

# float32 inputs: the products are rounded in float32 (relative error ~ sqrt(H) eps)
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def _inputs(rng, dtype, n=29, h=12, v=45, scale=1.0):
    hidden = (rng.standard_normal((n, h)) * scale).astype(dtype)
    weight = (rng.standard_normal((v, h)) / np.sqrt(h)).astype(dtype)
    bias = rng.standard_normal(v).astype(dtype) * 0.1
    target = rng.integers(0, v, n)
    target[[2, 7]] = -100
    return hidden, weight, bias, target


def _unfused(hidden, weight, target, bias=None, reduction="mean", grad_output=1.0, **kw):
    h64, w64 = hidden.astype(np.float64), weight.astype(np.float64)
    logits = h64 @ w64.T + (0.0 if bias is None else bias.astype(np.float64))
    loss, g = reference.cross_entropy(logits, target, reduction=reduction,
                                      grad_output=grad_output, dtype=np.float64, **kw)
    grads = [g @ w64, g.T @ h64] + ([g.sum(0)] if bias is not None else [])
    return loss, grads


def _close(actual, desired, rtol):
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol,
                               atol=rtol * max(np.abs(desired).max(initial=0.0), 1e-300))


OPTIONS = [dict(), dict(label_smoothing=0.1), dict(z_loss=1e-3, softcap=2.0),
           dict(label_smoothing=0.2, z_loss=0.01)]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 8, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_unfused_float64_reference(backend, dtype, options, chunk_size, with_bias):
    rng = np.random.default_rng(0)
    hidden, weight, bias, target = _inputs(rng, dtype)
    b = bias if with_bias else None
    loss, *grads = fastxent.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=b, chunk_size=chunk_size, **options)
    want_loss, want_grads = _unfused(hidden, weight, target, b, **options)
    assert len(grads) == (3 if with_bias else 2)
    assert np.asarray(loss).dtype == dtype and all(g.dtype == dtype for g in grads)
    assert grads[0].shape == hidden.shape and grads[1].shape == weight.shape
    _close(loss, want_loss, RTOL[dtype])
    for g, want in zip(grads, want_grads):
        _close(g, want, RTOL[dtype] * 5)
    alone = fastxent.linear_cross_entropy(hidden, weight, target, bias=b, chunk_size=chunk_size,
                                          **options)
    assert alone == loss


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_and_grad_output(backend, dtype, reduction):
    rng = np.random.default_rng(1)
    hidden, weight, bias, target = _inputs(rng, dtype)
    go = rng.uniform(0.5, 2.0, len(target)) if reduction == "none" else 0.7
    loss, gh, gw = fastxent.linear_cross_entropy_with_grad(
        hidden, weight, target, reduction=reduction, grad_output=go, chunk_size=5, z_loss=1e-2)
    want_loss, (wgh, wgw) = _unfused(hidden, weight, target, reduction=reduction,
                                     grad_output=go, z_loss=1e-2)
    _close(loss, want_loss, RTOL[dtype])
    _close(gh, wgh, RTOL[dtype] * 5)
    _close(gw, wgw, RTOL[dtype] * 5)
    if reduction == "none":
        assert loss.shape == target.shape and loss[2] == 0.0


def test_same_result_as_cross_entropy_on_the_logits(backend):
    rng = np.random.default_rng(2)
    hidden, weight, bias, target = _inputs(rng, np.float64)
    logits = hidden @ weight.T + bias
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=5.0, reduction="none")
    np.testing.assert_allclose(
        fastxent.linear_cross_entropy(hidden, weight, target, bias=bias, **kw),
        fastxent.cross_entropy(logits, target, **kw), rtol=1e-13)


def test_matches_pytorch_unfused(backend, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    hidden, weight, bias, target = _inputs(rng, dtype, n=40, h=16, v=100)
    th = torch.tensor(hidden, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    logits = 3.0 * torch.tanh((th @ tw.T + tb) / 3.0)
    tt = torch.tensor(target)
    keep = tt != -100
    loss_t = (F.cross_entropy(logits, tt, label_smoothing=0.1, reduction="sum")
              + 1e-3 * (torch.logsumexp(logits, 1)[keep] ** 2).sum()) / keep.sum()
    loss_t.backward()
    loss, gh, gw, gb = fastxent.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, label_smoothing=0.1, z_loss=1e-3, softcap=3.0,
        chunk_size=16)
    _close(loss, loss_t.item(), RTOL[dtype])
    for g, t in ((gh, th), (gw, tw), (gb, tb)):
        _close(g, t.grad.numpy(), RTOL[dtype] * 5)


def test_all_targets_ignored_mean_is_nan_with_zero_gradients(backend, dtype):
    rng = np.random.default_rng(4)
    hidden, weight, bias, _ = _inputs(rng, dtype)
    target = np.full(len(hidden), -100)
    loss, gh, gw, gb = fastxent.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias,
                                                               chunk_size=7)
    assert np.isnan(loss)
    assert not gh.any() and not gw.any() and not gb.any()


def test_zero_rows(backend, dtype):
    hidden = np.zeros((0, 4), dtype)
    weight = np.ones((6, 4), dtype)
    target = np.zeros(0, dtype=np.int64)
    assert np.isnan(fastxent.linear_cross_entropy(hidden, weight, target))
    loss, gh, gw = fastxent.linear_cross_entropy_with_grad(hidden, weight, target, reduction="sum")
    assert loss == 0.0 and gh.shape == (0, 4) and gw.shape == (6, 4) and not gw.any()


def test_integer_targets_of_every_width(backend):
    rng = np.random.default_rng(5)
    hidden, weight, _, target = _inputs(rng, np.float64)
    target = np.where(target < 0, 1, target)
    want = fastxent.linear_cross_entropy(hidden, weight, target)
    for dt in (np.int8, np.int32, np.uint8, np.uint64):
        assert fastxent.linear_cross_entropy(hidden, weight, target.astype(dt)) == want


def test_mixed_dtypes_compute_in_float64(backend):
    rng = np.random.default_rng(6)
    hidden, weight, _, target = _inputs(rng, np.float64)
    loss, gh, gw = fastxent.linear_cross_entropy_with_grad(hidden.astype(np.float32), weight,
                                                           target)
    assert np.asarray(loss).dtype == np.float64 and gh.dtype == gw.dtype == np.float64


def test_inputs_are_not_modified(backend):
    rng = np.random.default_rng(7)
    hidden, weight, bias, target = _inputs(rng, np.float32)
    copies = [a.copy() for a in (hidden, weight, bias, target)]
    fastxent.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias, chunk_size=3)
    for a, c in zip((hidden, weight, bias, target), copies):
        np.testing.assert_array_equal(a, c)


def test_non_contiguous_inputs(backend):
    rng = np.random.default_rng(8)
    hidden, weight, _, target = _inputs(rng, np.float64, n=30)
    want = fastxent.linear_cross_entropy_with_grad(hidden[::2], weight, target[::2])
    got = fastxent.linear_cross_entropy_with_grad(np.asfortranarray(hidden)[::2],
                                                  np.asfortranarray(weight), target[::2].copy())
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_same_bits_for_every_thread_count_and_chunk_size_is_deterministic(dtype):
    rng = np.random.default_rng(9)
    hidden, weight, bias, target = _inputs(rng, dtype, n=300, v=400)
    runs = [fastxent.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias, n_threads=t,
                                                    z_loss=1e-3) for t in (1, 2, 1)]
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)


def test_chunk_rule():
    assert _linear.chunk_rows(2048, 32000, 4) == 168
    assert _linear.chunk_rows(512, 128256, 4) == 40
    assert _linear.chunk_rows(100, 32000, 4) == 100  # never more than N
    assert _linear.chunk_rows(4096, 10**7, 4) == 8  # at least 8 rows


def test_peak_memory_is_a_chunk_not_the_logits(backend):
    rng = np.random.default_rng(10)
    n, h, v = 512, 16, 4000
    hidden, weight, _, target = _inputs(rng, np.float32, n=n, h=h, v=v)
    fastxent.linear_cross_entropy_with_grad(hidden, weight, target, chunk_size=16)
    tracemalloc.start()
    try:
        result = fastxent.linear_cross_entropy_with_grad(hidden, weight, target, chunk_size=16)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    logits_bytes = n * v * 4
    assert peak - retained < logits_bytes / 4


def test_errors(backend):
    h = np.zeros((4, 3))
    w = np.zeros((5, 3))
    y = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="hidden shape"):
        fastxent.linear_cross_entropy(h, np.zeros((5, 2)), y)
    with pytest.raises(ValueError, match="2-D"):
        fastxent.linear_cross_entropy(h[0], w, y)
    with pytest.raises(ValueError, match="target shape"):
        fastxent.linear_cross_entropy(h, w, y[:3])
    with pytest.raises(IndexError, match="5"):
        fastxent.linear_cross_entropy(h, w, [0, 1, 5, 0])
    with pytest.raises(IndexError):
        fastxent.linear_cross_entropy(h, w, [0, 1, -1, 0])
    with pytest.raises(TypeError, match="integer"):
        fastxent.linear_cross_entropy(h, w, y.astype(float))
    with pytest.raises(ValueError, match="bias"):
        fastxent.linear_cross_entropy(h, w, y, bias=np.zeros(4))
    with pytest.raises(ValueError, match="chunk_size"):
        fastxent.linear_cross_entropy(h, w, y, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        fastxent.linear_cross_entropy(h, w, y, chunk_size=2.5)
    with pytest.raises(ValueError, match="zero classes"):
        fastxent.linear_cross_entropy(h, np.zeros((0, 3)), y)
    with pytest.raises(ValueError, match="reduction"):
        fastxent.linear_cross_entropy(h, w, y, reduction="avg")
    with pytest.raises(ValueError, match="z_loss"):
        fastxent.linear_cross_entropy(h, w, y, z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        fastxent.linear_cross_entropy(h, w, y, softcap=0.0)
    with pytest.raises(ValueError, match="n_threads"):
        fastxent.linear_cross_entropy(h, w, y, n_threads=0)
    with pytest.raises(TypeError):
        fastxent.linear_cross_entropy(h.astype(complex), w, y)
    with pytest.raises(ValueError, match="grad_output"):
        fastxent.linear_cross_entropy_with_grad(h, w, y, grad_output=np.ones(4))


@pytest.fixture
def vocab_path(monkeypatch):
    """Make the default chunk rule pick the vocabulary-chunked path at test sizes."""
    monkeypatch.setattr(_linear, "CHUNK_BUDGET", 4000)
    monkeypatch.setattr(_linear, "VOCAB_MIN_COLUMNS", 8)
    calls = []
    real = _linear._vocab_chunked
    monkeypatch.setattr(_linear, "_vocab_chunked", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("options", OPTIONS + [dict(softcap=1.0, label_smoothing=0.3)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vocab_chunked_path_matches_unfused_reference(backend, dtype, vocab_path, options,
                                                      with_bias, reduction):
    rng = np.random.default_rng(11)
    hidden, weight, bias, target = _inputs(rng, dtype)
    b = bias if with_bias else None
    go = rng.uniform(0.5, 2.0, len(target)) if reduction == "none" else 1.3
    loss, *grads = fastxent.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=b, reduction=reduction, grad_output=go, **options)
    assert vocab_path, "the vocabulary-chunked path was not taken"
    want_loss, want_grads = _unfused(hidden, weight, target, b, reduction=reduction,
                                     grad_output=go, **options)
    _close(loss, want_loss, RTOL[dtype])
    for g, want in zip(grads, want_grads):
        _close(g, want, RTOL[dtype] * 5)
    alone = fastxent.linear_cross_entropy(hidden, weight, target, bias=b, reduction=reduction,
                                          **options)
    np.testing.assert_array_equal(alone, loss)


@pytest.fixture(params=["rows", "vocabulary"])
def each_path(request):
    """(chunk_size, check that the path was taken): the row path in chunks of 4 rows, and the
    vocabulary path, which the vocab_path fixture makes the default rule pick."""
    if request.param == "rows":
        return 4, lambda: None
    taken = request.getfixturevalue("vocab_path")

    def check():
        assert taken, "the vocabulary-chunked path was not taken"
    return None, check


def test_a_softcap_far_above_the_logits_changes_nothing(backend, dtype, each_path):
    # both paths: the row path's kernel once lost every digit of tanh(x / s) for s >> x
    chunk_size, check_path = each_path
    rng = np.random.default_rng(5)
    hidden, weight, bias, target = _inputs(rng, dtype)
    capped = fastxent.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias,
                                                     softcap=1e20, chunk_size=chunk_size)
    plain = fastxent.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias,
                                                    chunk_size=chunk_size)
    check_path()
    eps = np.finfo(dtype).eps
    for got, want in zip(capped, plain):
        _close(got, want, 8 * eps)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_unsigned_targets_with_ignored_rows_on_each_path(backend, dtype, each_path, label_dtype):
    # an unsigned target with an ignore_index it can hold gives the bits of the int64 target with
    # another ignore_index: the ignored rows' "no column" mark is never written in the labels' dtype
    chunk_size, check_path = each_path
    rng = np.random.default_rng(8)
    hidden, weight, bias, target = _inputs(rng, dtype)
    assert (target < 0).any()
    unsigned = np.where(target < 0, 250, target).astype(label_dtype)
    for reduction in ("mean", "none"):
        got = fastxent.linear_cross_entropy_with_grad(hidden, weight, unsigned, bias=bias,
                                                      ignore_index=250, reduction=reduction,
                                                      chunk_size=chunk_size)
        want = fastxent.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias,
                                                       reduction=reduction, chunk_size=chunk_size)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    check_path()


def test_an_ignored_row_whose_logits_overflow_has_no_effect(backend, dtype, each_path):
    # "0 loss, 0 gradient, whatever its logits": its lse is inf, and 0 * inf must not become a
    # NaN that G.T @ hidden spreads over all of grad_weight
    chunk_size, check_path = each_path
    rng = np.random.default_rng(6)
    hidden, weight, bias, target = _inputs(rng, dtype)
    huge = hidden.copy()
    huge[2] = np.finfo(dtype).max  # target[2] is ignored
    with np.errstate(over="ignore"):  # the product overflows in NumPy's matmul
        loss, gh, gw, gb = fastxent.linear_cross_entropy_with_grad(
            huge, weight, target, bias=bias, chunk_size=chunk_size, z_loss=1e-3)
    check_path()
    want = fastxent.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias,
                                                   chunk_size=chunk_size, z_loss=1e-3)
    assert np.isfinite(loss) and not gh[2].any()
    _close(loss, want[0], 8 * np.finfo(dtype).eps)
    for got, expected in zip((gw, gb), want[2:]):
        _close(got, expected, 8 * np.finfo(dtype).eps)


def test_vocab_chunked_path_all_ignored_and_zero_rows(backend, vocab_path):
    rng = np.random.default_rng(12)
    hidden, weight, bias, _ = _inputs(rng, np.float64)
    loss, gh, gw, gb = fastxent.linear_cross_entropy_with_grad(
        hidden, weight, np.full(len(hidden), -100), bias=bias)
    assert np.isnan(loss) and not gh.any() and not gw.any() and not gb.any()
    loss, gh, gw = fastxent.linear_cross_entropy_with_grad(
        np.zeros((0, 12)), weight, np.zeros(0, dtype=np.int64), reduction="sum")
    assert loss == 0.0 and gh.shape == (0, 12) and not gw.any()


def test_default_rule_picks_the_vocabulary_path_for_huge_vocabularies():
    # (512, 128256) float32: 32 rows of logits fit the budget, fewer than ROW_PATH_MIN_ROWS
    assert _linear.chunk_rows(512, 128256, 4) < _linear.ROW_PATH_MIN_ROWS
    assert _linear.chunk_rows(2048, 32000, 4) >= _linear.ROW_PATH_MIN_ROWS


def test_linear_docstring_examples_print_what_they_show():
    import doctest

    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(_linear, globs={"np": np, **vars(_linear)}) if t.examples]
    assert tests
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
