"""Reliability: threads, threadpoolctl, size (64-bit indexes), memory (leaks, MemoryError),
in-place aliasing, interrupts, and the known kernel/API bugs found by the fuzz tests.

Opt-in: ``-m huge`` runs the cases with more than 2**31 logits (compiled backend; one reads
8.6 GB of lazily zeroed memory, one writes it). ``slow`` cases (leak check, SIGINT of a long
call) are left out of the sanitizer run, where they are slow and RSS is not meaningful.
"""

import math
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastxent
import reference
from fastxent import _api, _backend
from helpers import load_kernels

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _run_python(code, env=None, timeout=120):
    """Run ``code`` in a fresh interpreter; a hang fails (timeout), never blocks the suite."""
    full_env = dict(os.environ, **(env or {}))
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the subprocess hung for {timeout} s: {exc.stdout}{exc.stderr}")


# ------------------------------------------------------------------------------------------
# Bugs the fuzz tests found, kept as regression tests
# ------------------------------------------------------------------------------------------

def test_smoothing_with_zero_class_weights_many_classes(backend, dtype):
    # GCC 12 -O3 vectorised `w != 0 ? w * (x - m) : 0` wrongly for AVX2/AVX-512 (1e-2 relative
    # off in float64 with C > 32): the kernels now compute the product first, then select.
    rng = np.random.default_rng(0)
    for n_classes in (33, 52, 100):
        x = rng.standard_normal((4, n_classes)).astype(dtype)
        y = rng.integers(0, n_classes, 4)
        w = rng.random(n_classes) + 0.5
        w[::3] = 0.0
        got = fastxent.cross_entropy(x, y, weight=w, label_smoothing=0.5, reduction="none")
        # (1 - eps) w_y (lse - x_y) + eps / C sum_c w_c (lse - x_c), by the reference
        expected = reference.rows(x, y, weight=w, label_smoothing=0.5).loss
        np.testing.assert_allclose(got, expected, rtol=64 * np.finfo(dtype).eps)


@pytest.mark.parametrize("scale", [5e-324, 1e-310, 1e308], ids=["denormal", "tiny", "huge"])
def test_mean_does_not_depend_on_the_scale_of_the_weights(backend, scale):
    x = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([0, 1, 2])
    w = np.array([1.0, 1.0, 1.0])
    loss, grad = fastxent.cross_entropy_with_grad(x, y, weight=w)
    loss_s, grad_s = fastxent.cross_entropy_with_grad(x, y, weight=w * scale)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-15)
    np.testing.assert_allclose(grad_s, grad, rtol=1e-15)


# ------------------------------------------------------------------------------------------
# Threads
# ------------------------------------------------------------------------------------------

def _mixed_calls(dtype, seed):
    """(name, thunk) for every public function on data of its own."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, 40)).astype(dtype)
    x3 = rng.standard_normal((8, 40, 64)).astype(dtype)
    y = rng.integers(0, 40, 2000)
    y[::7] = -100
    t = rng.random((2000, 40)).astype(dtype)
    w = rng.random(40) + 0.5
    return [
        ("ce", lambda: fastxent.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.1)),
        ("ce3", lambda: fastxent.cross_entropy_with_grad(x3, y[:512].reshape(8, 64) % 40,
                                                         reduction="none", n_threads=2)),
        ("probs", lambda: fastxent.cross_entropy_with_grad(x, t, reduction="sum", n_threads=1)),
        ("tf", lambda: fastxent.softmax_cross_entropy_with_logits_and_grad(t.T, x.T, axis=0)),
        ("tfs",
         lambda: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(np.abs(y) % 40, x)),
        ("softmax", lambda: fastxent.softmax(x3, axis=1)),
        ("log_softmax", lambda: fastxent.log_softmax(x)),
        ("lse", lambda: fastxent.logsumexp(x3, axis=1, n_threads=2)),
    ]


def _flat(result):
    if isinstance(result, tuple):
        return [np.asarray(r) for r in result]
    return [np.asarray(result)]


def test_many_threads_calling_every_function_at_once_match_sequential_calls(backend, dtype):
    calls = [c for seed in range(2) for c in _mixed_calls(dtype, seed)]
    expected = [_flat(call()) for _, call in calls]
    results = [[] for _ in calls]
    errors = []
    barrier = threading.Barrier(len(calls))

    def work(i):
        try:
            barrier.wait(30)
            for _ in range(4):
                results[i].append(_flat(calls[i][1]()))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    for (name, _), exp, got in zip(calls, expected, results):
        assert len(got) == 4, name
        for one in got:
            for a, b in zip(one, exp):
                np.testing.assert_array_equal(a, b, err_msg=name)


def test_errors_raised_in_threads_are_per_call(backend):
    """A bad call in one thread raises there, and does not disturb the good calls of others."""
    x = np.random.default_rng(1).standard_normal((5000, 20))
    good = np.zeros(5000, dtype=np.int64)
    bad = good.copy()
    bad[-1] = 20
    expected = fastxent.cross_entropy(x, good)
    outcomes = []

    def work(labels):
        for _ in range(20):
            try:
                outcomes.append(("ok", fastxent.cross_entropy(x, labels, n_threads=2)))
            except IndexError:
                outcomes.append(("IndexError", None))

    threads = [threading.Thread(target=work, args=(lab,)) for lab in (good, bad, good, bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(kind for kind, _ in outcomes) == ["IndexError"] * 40 + ["ok"] * 40
    assert all(value == expected for kind, value in outcomes if kind == "ok")


def test_threadpoolctl_limits_are_honoured():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    compiled = load_kernels("compiled")
    if not compiled.openmp_enabled:
        pytest.skip("built without OpenMP")
    x = np.random.default_rng(2).standard_normal((20000, 50))
    y = np.zeros(20000, dtype=np.int64)
    expected = fastxent.cross_entropy_with_grad(x, y)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert compiled.max_threads() == 1
        assert _api.check.n_threads(None, compiled.max_threads()) == 1
        got = fastxent.cross_entropy_with_grad(x, y)
    with threadpoolctl.threadpool_limits(limits=2, user_api="openmp"):
        assert compiled.max_threads() == 2
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    # the library fastxent's kernels use is one threadpoolctl controls
    assert any(info["user_api"] == "openmp" for info in threadpoolctl.threadpool_info())


def test_omp_num_threads_is_honoured_at_call_time():
    load_kernels("compiled")
    code = """
        import fastxent
        from fastxent import _backend
        assert fastxent.backend == "compiled"
        print(_backend.kernels.max_threads())
    """
    result = _run_python(code, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1"


# ------------------------------------------------------------------------------------------
# In-place aliasing: out=input gives exactly the out-of-place result, on every path
# ------------------------------------------------------------------------------------------

IN_PLACE_CALLS = {
    "cross_entropy indices": lambda x, o: fastxent.cross_entropy_with_grad(
        x, _labels(x.shape[:1] + x.shape[2:]), out=o),
    "cross_entropy indices smoothing weight": lambda x, o: fastxent.cross_entropy_with_grad(
        x, _labels(x.shape[:1] + x.shape[2:]), out=o, label_smoothing=0.2,
        weight=np.linspace(0.5, 2, x.shape[1])),
    "cross_entropy probabilities": lambda x, o: fastxent.cross_entropy_with_grad(
        x, _probs(x), out=o, reduction="sum"),
    "TF sparse": lambda x, o: fastxent.sparse_softmax_cross_entropy_with_logits_and_grad(
        _labels(np.moveaxis(x, 1, -1).shape[:-1]), np.moveaxis(x, 1, -1),
        out=None if o is None else np.moveaxis(o, 1, -1)),
    "TF dense": lambda x, o: fastxent.softmax_cross_entropy_with_logits_and_grad(
        _probs(x), x, axis=1, out=o),
    "softmax": lambda x, o: fastxent.softmax(x, axis=1, out=o),
    "log_softmax": lambda x, o: fastxent.log_softmax(x, axis=1, out=o),
}


def _labels(shape):
    return (np.arange(int(np.prod(shape))) % 3).reshape(shape)


def _probs(x):
    return np.abs(np.cos(np.arange(x.size, dtype=np.float64))).reshape(x.shape).astype(x.dtype)


@pytest.mark.parametrize("name", list(IN_PLACE_CALLS))
@pytest.mark.parametrize("shape", [(64, 3), (64, 32), (64, 33), (64, 200), (4, 5, 16)], ids=str)
def test_in_place_results_are_bitwise_the_out_of_place_ones(backend, dtype, name, shape):
    call = IN_PLACE_CALLS[name]
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype) * 4
    x.reshape(-1)[::17] = -np.inf  # masked classes too
    expected = call(x, None)
    work = x.copy()
    got = call(work, work)
    for a, b in zip(_flat(got), _flat(expected)):
        np.testing.assert_array_equal(a, b)



@pytest.mark.parametrize("name", list(IN_PLACE_CALLS))
def test_streamed_outputs_are_bitwise_the_in_place_ones(backend, dtype, name):
    # Note [streamed gradient]: rows of 4096 classes or more of an output of 16 MiB or more are
    # written from a scratch row with non-temporal stores, unless in place
    shape = ((16 << 20) // (4096 * np.dtype(dtype).itemsize), 4096)
    call = IN_PLACE_CALLS[name]
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype) * 4
    x[::7, 2] = x[::7].max(axis=1) + 30  # label 2 at the maximum: tiny losses
    x.reshape(-1)[::1009] = -np.inf
    expected = call(x.copy(), None)
    work = x.copy()
    got = call(work, work)
    for a, b in zip(_flat(got), _flat(expected)):
        np.testing.assert_array_equal(a, b)

# ------------------------------------------------------------------------------------------
# Memory: flat over 100,000 calls; MemoryError when the output cannot be allocated
# ------------------------------------------------------------------------------------------

def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_is_flat_over_a_hundred_thousand_calls(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 10)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    bad = y.copy()
    bad[3] = 10
    t = rng.random((16, 10)).astype(np.float32)
    out = np.empty_like(x)
    calls = [
        lambda: fastxent.cross_entropy_with_grad(x, y, weight=np.ones(10), label_smoothing=0.1),
        lambda: fastxent.cross_entropy(x, t, reduction="none"),
        lambda: fastxent.softmax_cross_entropy_with_logits_and_grad(t, x, out=out),
        lambda: fastxent.logsumexp(x),
    ]

    def failing():
        try:
            fastxent.cross_entropy(x, bad)
        except IndexError:
            pass
    calls.append(failing)
    n_calls = 100_000
    for i in range(5000):  # warm up: caches, the allocator's pools
        calls[i % len(calls)]()
    before = _rss_mb()
    start = time.perf_counter()
    for i in range(n_calls):
        calls[i % len(calls)]()
    elapsed = time.perf_counter() - start
    growth = _rss_mb() - before
    print(f"\n{backend}: {n_calls} calls in {elapsed:.1f} s, "
          f"RSS {before:.1f} MB -> +{growth:.2f} MB")
    assert growth < 2.0, f"RSS grew by {growth:.2f} MB over {n_calls} calls"


@pytest.mark.parametrize("name",
                         ["cross_entropy_with_grad", "tf dense", "softmax", "log_softmax",
                          "logsumexp"])
def test_an_output_that_cannot_be_allocated_raises_memory_error(backend, name):
    # 2**50 logits as a broadcast view (no memory); the result would need petabytes
    x = np.broadcast_to(np.float32(0.0), (2 ** 40, 2 ** 10))
    calls = {
        "cross_entropy_with_grad": lambda: fastxent.cross_entropy_with_grad(
            x, np.broadcast_to(np.int64(0), (2 ** 40,))),
        "tf dense": lambda: fastxent.softmax_cross_entropy_with_logits_and_grad(x, x),
        "softmax": lambda: fastxent.softmax(x),
        "log_softmax": lambda: fastxent.log_softmax(x),
        "logsumexp": lambda: fastxent.logsumexp(x),
    }
    with pytest.raises(MemoryError):
        calls[name]()
    # and the next call works
    assert fastxent.cross_entropy(np.zeros((2, 3)), [0, 1]) == pytest.approx(math.log(3))


# ------------------------------------------------------------------------------------------
# Size: more than 2**31 logits (opt-in: -m huge)
# ------------------------------------------------------------------------------------------

HUGE_C = 1024
HUGE_N = 2 ** 31 // HUGE_C + 3  # 2**31 + 3072 elements, 8.6 GB of float32


@pytest.fixture(autouse=True)
def _huge_only_when_asked_for(request):
    selected = request.config.getoption("-m") or ""
    if (request.node.get_closest_marker("huge")
            and ("huge" not in selected or "not huge" in selected)):
        pytest.skip("opt-in: more than 2**31 logits (8.6 GB); run with -m huge")


def _huge_logits():
    """(N, C) float32 zeros (lazily mapped: reading them costs no memory) with a last row that
    differs, so that a wrong offset beyond 2**31 elements shows."""
    x = np.zeros((HUGE_N, HUGE_C), dtype=np.float32)
    x[-1, :] = np.arange(HUGE_C, dtype=np.float32) / 100
    x[-2, 7] = 30.0
    return x


def _huge_expected_rows():
    """Per-row losses for label 5 on every row, from the formula (float64)."""
    zero_row = math.log(HUGE_C)
    last = np.arange(HUGE_C) / 100
    last_row = math.log(np.exp(last).sum()) - last[5]
    second_last = math.log(HUGE_C - 1 + math.exp(30.0))
    return zero_row, second_last, last_row


@pytest.mark.huge
def test_more_than_2_to_the_31_logits_give_the_right_loss(monkeypatch):
    monkeypatch.setattr(_backend, "kernels", load_kernels("compiled"))
    x = _huge_logits()
    assert x.size > 2 ** 31
    y = np.full(HUGE_N, 5, dtype=np.int32)
    zero_row, second_last, last_row = _huge_expected_rows()
    start = time.perf_counter()
    losses = fastxent.cross_entropy(x, y, reduction="none")
    elapsed = time.perf_counter() - start
    print(f"\n{x.size} float32 logits ({x.nbytes / 2 ** 30:.1f} GiB): {elapsed:.1f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")
    np.testing.assert_allclose(losses[:-2], zero_row, rtol=2e-7)
    np.testing.assert_allclose(losses[-2:], [second_last, last_row], rtol=2e-7)
    mean = fastxent.cross_entropy(x, y)
    expected_mean = ((HUGE_N - 2) * zero_row + second_last + last_row) / HUGE_N
    np.testing.assert_allclose(mean, expected_mean, rtol=2e-7)
    lse = fastxent.logsumexp(x)
    np.testing.assert_allclose(lse[-1], math.log(np.exp(np.arange(HUGE_C) / 100).sum()), rtol=2e-7)
    # the class axis first: rows are columns, 2**31 elements apart along the class axis
    xt = x.T
    losses_t = fastxent.softmax_cross_entropy_with_logits(
        np.broadcast_to(np.eye(HUGE_C, dtype=np.float32)[5][:, None], xt.shape), xt, axis=0)
    np.testing.assert_allclose(losses_t[-2:], [second_last, last_row], rtol=2e-7)


@pytest.mark.huge
def test_more_than_2_to_the_31_logits_in_place_gradient(monkeypatch):
    monkeypatch.setattr(_backend, "kernels", load_kernels("compiled"))
    x = _huge_logits()
    y = np.full(HUGE_N, 5, dtype=np.int64)
    last = x[-1].astype(np.float64)
    start = time.perf_counter()
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction="sum", out=x)  # writes 8.6 GB
    elapsed = time.perf_counter() - start
    print(f"\nin-place gradient of {x.size} logits: {elapsed:.1f} s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")
    zero_row, second_last, last_row = _huge_expected_rows()
    np.testing.assert_allclose(loss, (HUGE_N - 2) * zero_row + second_last + last_row, rtol=1e-6)
    p = np.exp(last - last.max()) / np.exp(last - last.max()).sum()
    p[5] -= 1
    np.testing.assert_allclose(grad[-1], p, rtol=1e-5, atol=1e-7)
    expected_zero = np.full(HUGE_C, 1 / HUGE_C)
    expected_zero[5] -= 1
    np.testing.assert_allclose(grad[HUGE_N // 2], expected_zero, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Interrupts: SIGINT during a long call, from another thread or another process
# ------------------------------------------------------------------------------------------

INTERRUPT_SCRIPT = """
import math, os, signal, sys, threading, time
import numpy as np
import fastxent
rows, classes, source = {rows}, 1000, "{source}"
x = np.zeros((rows, classes), dtype=np.float32)
x[:, 3] = 1.0  # touch every page
y = np.full(rows, 3, dtype=np.int64)
expected = math.log(classes - 1 + math.e) - 1.0
start = time.perf_counter()
fastxent.cross_entropy_with_grad(x, y, n_threads=2)
call_time = time.perf_counter() - start
if source == "thread":
    threading.Timer(call_time / 3, os.kill, (os.getpid(), signal.SIGINT)).start()
else:
    print("ready", call_time, flush=True)
    sys.stdin.readline()  # the parent sends SIGINT, then a line
sent = time.perf_counter()
interrupted = False
try:
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        fastxent.cross_entropy_with_grad(x, y, n_threads=2)
except KeyboardInterrupt:
    interrupted = True
latency = time.perf_counter() - sent
assert interrupted, "SIGINT never arrived"
loss, grad = fastxent.cross_entropy_with_grad(x, y, n_threads=2)  # the next call works
assert abs(loss - expected) < 1e-6 * expected, (loss, expected)
assert fastxent.cross_entropy(np.zeros((3, 4)), [0, 1, 2]) == np.float64(math.log(4))
print("ok", call_time, latency, fastxent.backend)
"""


def _interrupt(source, rows, env):
    code = INTERRUPT_SCRIPT.format(rows=rows, source=source)
    full_env = dict(os.environ, **env)
    proc = subprocess.Popen([sys.executable, "-c", code], env=full_env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if source == "process":
            line = proc.stdout.readline()
            assert line.startswith("ready"), line + proc.stderr.read()
            proc.stdin.write("\n")
            proc.stdin.flush()
            time.sleep(float(line.split()[1]) / 3)
            proc.send_signal(2)  # SIGINT
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the interrupted process hung")
    assert proc.returncode == 0, out + err
    status, call_time, latency, backend = out.split()[-4:]
    print(f"\n{backend} {source}: call {float(call_time):.3f} s, SIGINT -> KeyboardInterrupt "
          f"{float(latency):.3f} s")
    return float(call_time), float(latency)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["thread", "process"])
@pytest.mark.parametrize("pure_python", [False, True], ids=["compiled", "python"])
def test_sigint_during_a_long_call_leaves_a_working_process(source, pure_python):
    if not pure_python:
        load_kernels("compiled")
    env = {"FASTXENT_PURE_PYTHON": "1", "FASTXENT_REQUIRE_EXTENSION": "0"} if pure_python \
        else {"FASTXENT_PURE_PYTHON": "0"}
    _interrupt(source, 60_000, env)  # 240 MB of logits


@pytest.mark.huge
@pytest.mark.parametrize("source", ["thread", "process"])
def test_sigint_during_a_2_gb_call_leaves_a_working_process(source):
    load_kernels("compiled")
    _interrupt(source, 2 ** 29 // 1000, {"FASTXENT_PURE_PYTHON": "0"})  # 2 GiB of logits


# ------------------------------------------------------------------------------------------
# The rows of docs/semantics.md's "Non-finite input" table that test_inputs.py does not cover
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight, smoothing", [([0.0, 1.0, 1.0], 0.0), ([1.0, 1.0, 1.0], 1.0)])
def test_minus_inf_in_the_target_class_without_weight_is_nan_as_pytorch(backend, dtype, weight,
                                                                        smoothing):
    x = np.array([[-np.inf, 0.0, 1.0], [0.0, 1.0, 2.0]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [0, 1], weight=weight,
                                                  label_smoothing=smoothing,
                                                  reduction="none")
    assert np.isnan(loss[0]) and np.isfinite(loss[1])
    assert np.isfinite(grad).all()


def test_nan_in_dense_labels_makes_that_row_nan(backend, dtype):
    x = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], dtype=dtype)
    t = np.array([[np.nan, 0.5, 0.5], [0.0, 0.5, 0.5]], dtype=dtype)
    loss, grad = fastxent.softmax_cross_entropy_with_logits_and_grad(t, x)
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
    assert np.isfinite(loss[1]) and np.isfinite(grad[1]).all()
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none")
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all() and np.isfinite(loss[1])


def test_largest_logits_give_finite_or_infinite_losses_and_finite_gradients(backend, dtype):
    big = 1e38 if dtype == np.float32 else 1e308
    x = np.array([[-big, big, 0.0], [big, big, -big]], dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, [1, 2], reduction="none")
    assert loss[0] == 0.0
    expected = 2 * big + math.log(2)  # a Python float: inf beyond float64's range
    assert loss[1] == (dtype(expected) if np.isfinite(expected) else np.inf)
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad, np.array([[0, 0, 0], [0.5, 0.5, -1]], dtype=dtype))
