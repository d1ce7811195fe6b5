"""Processes and threads: a forked child does not hang, and concurrent calls agree."""

import multiprocessing
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastxent

# Forking a process that has threads is what these tests are about: the parent has OpenMP's
# workers, NumPy's BLAS threads, and in one test a Python thread inside a parallel call, and the
# child must still compute (serially, with the parent's bits). CPython >= 3.12 warns about every
# such fork in the parent (the child may deadlock in code that is not fork-safe); here that
# warning, and no other, is expected. The message is CPython's, for fork() and forkpty().
forks_a_threaded_process = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork(pty)?\(\) may lead to "
    r"deadlocks in the child\.:DeprecationWarning"
)


def _child_loss(queue, logits, labels):
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, n_threads=2)
    queue.put((float(loss), float(np.abs(grad).sum())))


def _forked(target, args, timeout):
    """Run target(queue, *args) in a forked process: (hung, exit code, queue). A child still
    alive after ``timeout`` seconds is killed, so that a hang fails instead of blocking."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=target, args=(queue, *args))
    child.start()
    child.join(timeout)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    return hung, child.exitcode, queue


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method is POSIX only")
@forks_a_threaded_process
def test_forked_child_after_parallel_calls_does_not_hang(backend, dtype):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((20000, 64)).astype(dtype)
    labels = rng.integers(0, 64, 20000)
    parent = fastxent.cross_entropy_with_grad(logits, labels, n_threads=2)  # pool now in use
    hung, exitcode, queue = _forked(_child_loss, (logits, labels), 60)
    assert not hung, "the forked child hung in an OpenMP parallel region"
    assert exitcode == 0
    loss, grad_sum = queue.get(timeout=10)
    assert loss == float(parent[0])  # bitwise: results do not depend on the thread count
    assert grad_sum == float(np.abs(parent[1]).sum())


def test_concurrent_python_threads_match_sequential_calls(backend, dtype):
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((3000, 50)).astype(dtype), rng.integers(0, 50, 3000))
               for _ in range(8)]
    expected = [fastxent.cross_entropy_with_grad(x, y) for x, y in batches]
    results = [None] * len(batches)

    def work(i):
        for _ in range(5):
            results[i] = fastxent.cross_entropy_with_grad(*batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for (loss, grad), (exp_loss, exp_grad) in zip(results, expected):
        assert loss == exp_loss
        np.testing.assert_array_equal(grad, exp_grad)


def _pool_task(args):
    logits, labels, n_threads = args
    from fastxent import _backend
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, n_threads=n_threads)
    return float(loss), grad, _backend.forked_after_parallel


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method is POSIX only")
@forks_a_threaded_process
def test_fork_pool_after_parallel_calls_does_not_hang_and_matches(backend):
    """A Pool forked (fork start method) after parallel kernels: every worker computes, each
    call gives the parent's bits, and a hang fails after a timeout instead of blocking."""
    rng = np.random.default_rng(5)
    tasks = [(rng.standard_normal((6000, 40)), rng.integers(0, 40, 6000), nt)
             for nt in (None, 2, 1, 2)]
    expected = [fastxent.cross_entropy_with_grad(x, y, n_threads=2) for x, y, _ in tasks]
    context = multiprocessing.get_context("fork")
    pool = context.Pool(2)
    try:
        results = pool.map_async(_pool_task, tasks).get(timeout=120)
    except multiprocessing.TimeoutError:
        pytest.fail("a forked Pool worker hung in an OpenMP parallel region")
    finally:
        pool.terminate()
        pool.join()
    for (loss, grad, forked), (exp_loss, exp_grad) in zip(results, expected):
        assert loss == float(exp_loss)
        np.testing.assert_array_equal(grad, exp_grad)
        if backend == "compiled" and _backend_parallel_used():
            assert forked  # the child knows it must compute serially


def _backend_parallel_used():
    from fastxent import _backend
    return _backend.parallel_used


def _grandchild(queue, logits, labels):
    hung, _, inner = _forked(_child_loss, (logits, labels), 60)
    queue.put(None if hung else inner.get(timeout=10))


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method is POSIX only")
@forks_a_threaded_process
def test_fork_while_another_thread_runs_a_parallel_call_then_fork_again(backend):
    """Fork while a parallel call is running in another thread, and fork again in the child."""
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((40000, 64))
    labels = rng.integers(0, 64, 40000)
    parent = fastxent.cross_entropy_with_grad(logits, labels, n_threads=2)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            fastxent.cross_entropy_with_grad(logits, labels, n_threads=2)

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    try:
        hung, exitcode, queue = _forked(_grandchild, (logits, labels), 120)
    finally:
        stop.set()
        worker.join(60)
    assert not hung, "the forked child hung"
    assert exitcode == 0
    result = queue.get(timeout=10)
    assert result is not None, "the grandchild hung"
    loss, grad_sum = result
    assert loss == float(parent[0])
    assert grad_sum == float(np.abs(parent[1]).sum())


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method is POSIX only")
@forks_a_threaded_process
def test_forked_child_after_another_librarys_parallel_work_does_not_hang(backend):
    # PyTorch's matmul runs on the OpenMP runtime fastxent shares: its idle pool makes a forked
    # child's first parallel region wait forever, though fastxent itself never ran one
    torch = pytest.importorskip("torch")
    a = torch.randn(1000, 1000)
    (a @ a).sum()  # OpenMP workers of the shared runtime, now idle but alive
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((20000, 50))
    labels = rng.integers(0, 50, 20000)
    hung, exitcode, queue = _forked(_child_loss, (logits, labels), 60)
    assert not hung, "the forked child hung in an OpenMP parallel region"
    assert exitcode == 0
    loss, _ = queue.get(timeout=10)
    assert loss == float(fastxent.cross_entropy(logits, labels))


_FORK_FLAG = """
import os
{first}
import fastxent
from fastxent import _backend
pid = os.fork()
if pid == 0:
    os.write(1, b"serial" if _backend.forked_after_parallel else b"parallel")
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
@pytest.mark.parametrize("first, expected", [("", "parallel"), ("import torch", "serial")],
                         ids=["numpy only", "torch loaded"])
def test_a_forked_child_is_serial_only_where_the_openmp_runtime_may_be_busy(first, expected):
    # a fresh interpreter: nothing parallel has run. With NumPy alone (whose OpenBLAS threads
    # are alive) the child keeps its threads; with PyTorch loaded, which shares the OpenMP
    # runtime, it computes serially
    if first:
        pytest.importorskip(first.split()[-1])
    result = subprocess.run([sys.executable, "-c", _FORK_FLAG.format(first=first)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


_TORCH_FIRST = """
import os, time
import numpy as np
import torch
a = torch.randn(1000, 1000)
(a @ a).sum()  # OpenMP workers of PyTorch's runtime, now idle but alive
import fastxent  # after torch: its kernels bind to PyTorch's runtime (loaded RTLD_GLOBAL)
rng = np.random.default_rng(7)
logits = rng.standard_normal((20000, 50))
labels = rng.integers(0, 50, 20000)
expected = float(fastxent.cross_entropy(logits, labels, n_threads=1))
pid = os.fork()
if pid == 0:
    loss = float(fastxent.cross_entropy(logits, labels, n_threads=2))
    os._exit(0 if loss == expected else 3)
for _ in range(600):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        raise SystemExit(os.waitstatus_to_exitcode(status))
    time.sleep(0.1)
os.kill(pid, 9)
raise SystemExit("the forked child hung")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_forked_child_after_pytorchs_work_with_torch_imported_first_does_not_hang():
    # the order that makes even a wheel with its own bundled OpenMP runtime share PyTorch's
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, "-c", _TORCH_FIRST], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
