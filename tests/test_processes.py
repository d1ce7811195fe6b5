"""Processes and threads: a forked child does not hang, and concurrent calls agree."""

import multiprocessing
import sys
import threading

import numpy as np
import pytest

import fastxent


def _child_loss(queue, logits, labels):
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, n_threads=2)
    queue.put((float(loss), float(np.abs(grad).sum())))


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method is POSIX only")
def test_forked_child_after_parallel_calls_does_not_hang(backend, dtype):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((20000, 64)).astype(dtype)
    labels = rng.integers(0, 64, 20000)
    parent = fastxent.cross_entropy_with_grad(logits, labels, n_threads=2)  # pool now in use
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_loss, args=(queue, logits, labels))
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "the forked child hung in an OpenMP parallel region"
    assert child.exitcode == 0
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
