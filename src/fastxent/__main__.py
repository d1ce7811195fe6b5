"""``python -m fastxent``: what is installed, the documented examples checked, a short timing.

Exits with status 1 if any documented example gives a different value.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

import fastxent as fx
from fastxent import _backend

# The published values are the frameworks' own roundings: PyTorch's float64 2.4076059644443806 is
# one ulp above the exact 2.40760596444438030..., which fastxent returns; TensorFlow's float32
# doc values are within an ulp or two of the exact ones. Hence a relative tolerance per example.
EXAMPLE_LOGITS = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [3.0, 2.0, 1.0]], dtype=np.float32)
EXAMPLE_LABELS = np.array([0, 1, 2])


def _examples() -> list[tuple[str, object, object, float]]:
    """(description, fastxent's value, the published value, relative tolerance)."""
    tf_dense_logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], dtype=np.float32)
    tf_dense_labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]], dtype=np.float32)
    tf_sparse_logits = np.array([[2.0, -5.0, 0.5, -0.1], [0.0, 0.0, 1.9, 1.4],
                                 [-100.0, 100.0, -100.0, -100.0]], dtype=np.float32)
    loss_fn = fx.CrossEntropyLoss()
    return [
        ("PyTorch nn.CrossEntropyLoss()(logits, labels).item(), float32",
         float(loss_fn(EXAMPLE_LOGITS, EXAMPLE_LABELS)), 2.4076058864593506, 0.0),
        ("the same in float64",
         float(fx.cross_entropy(EXAMPLE_LOGITS.astype(np.float64), EXAMPLE_LABELS)),
         2.4076059644443806, 1e-15),
        ("the same, label_smoothing=0.1, weight=[1, 2, 3], float64",
         float(fx.cross_entropy(EXAMPLE_LOGITS.astype(np.float64), EXAMPLE_LABELS,
                                weight=[1.0, 2.0, 3.0], label_smoothing=0.1)),
         2.302050408888825, 1e-15),
        ("tf.nn.softmax_cross_entropy_with_logits doc example, float32",
         fx.softmax_cross_entropy_with_logits(tf_dense_labels, tf_dense_logits).tolist(),
         [0.16984604, 0.82474494], 2.5e-7),
        ("tf.nn.sparse_softmax_cross_entropy_with_logits doc example, float32",
         fx.sparse_softmax_cross_entropy_with_logits(np.array([0, 3, 1]),
                                                     tf_sparse_logits).tolist(),
         [0.29750752, 1.1448325, 0.0], 2.5e-7),
        ("a tiny loss survives: cross_entropy([40, 0], 0), float64",
         float(fx.cross_entropy(np.array([40.0, 0.0]), 0)), 4.248354255291589e-18, 1e-15),
    ]


def _speed(t_peer: float, t_fx: float) -> str:
    """"fastxent is 3.1x faster", or slower (the pure-Python fallback can be)."""
    if t_peer >= t_fx:
        return f"fastxent is {t_peer / t_fx:5.1f}x faster"
    return f"fastxent is {t_fx / t_peer:5.1f}x slower"


def _median_seconds(fn: Callable[[], object], repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _numpy_naive(logits: np.ndarray, labels: np.ndarray) -> tuple[np.floating, np.ndarray]:
    """Cross-entropy and its gradient the way one writes them in NumPy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    sums = exps.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = (np.log(sums[:, 0]) - shifted[rows, labels]).mean()
    grad = exps / sums
    grad[rows, labels] -= 1.0
    return loss, grad / len(labels)


def _timing() -> None:
    rng = np.random.default_rng(0)
    n, c = 4096, 1000
    logits = rng.standard_normal((n, c), dtype=np.float32)
    labels = rng.integers(0, c, n)
    grad = np.empty_like(logits)
    print(f"\nTiming: loss + gradient, sparse labels, mean, ({n}, {c}) float32, median of 7")
    t_fx = _median_seconds(lambda: fx.cross_entropy_with_grad(logits, labels, out=grad))
    print(f"  fastxent ({fx.backend}) {t_fx * 1e3:8.2f} ms")
    t_np = _median_seconds(lambda: _numpy_naive(logits, labels))
    print(f"  NumPy, naive           {t_np * 1e3:8.2f} ms   {_speed(t_np, t_fx)}")
    try:
        import torch
    except ImportError:
        print("  PyTorch                not installed (pip install torch for this comparison)")
        return
    x_t = torch.from_numpy(logits).requires_grad_()
    y_t = torch.from_numpy(labels)

    def torch_step() -> None:
        x_t.grad = None
        torch.nn.functional.cross_entropy(x_t, y_t).backward()

    t_torch = _median_seconds(torch_step)
    print(f"  PyTorch {torch.__version__:<14} {t_torch * 1e3:8.2f} ms   {_speed(t_torch, t_fx)}")


def main() -> int:
    print(f"fastxent {fx.__version__}  (numpy {np.__version__}, python {sys.version.split()[0]})")
    threads = _backend.kernels.max_threads()
    print(f"backend: {fx.backend}   OpenMP: {'yes' if fx.openmp_enabled else 'no'}   "
          f"threads: {threads}   vector loops: {_backend.isa}")
    print("\nDocumented examples:")
    failures = 0
    for description, got, expected, tolerance in _examples():
        ok = bool(np.allclose(got, expected, rtol=tolerance, atol=0.0))
        failures += not ok
        print(f"  [{'ok' if ok else 'FAIL'}] {description}\n"
              f"         got {got}  published {expected}")
    _timing()
    if failures:
        print(f"\n{failures} example(s) did not match", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
