"""Accuracy of per-row losses in ulps, fastxent beside PyTorch and naive NumPy.

The reference is the exact loss of the given (float32 or float64) inputs, computed in
``np.longdouble`` (80-bit on x86-64) and rounded once to the input dtype; the error of a result
is ``|result - reference| / spacing(reference)``. Run:

    python benchmarks/accuracy.py            # a table of max / 99.9th percentile ulp errors
    python benchmarks/accuracy.py --quick --backend python

Cases: random normal logits (scale 1 and 10) for several class counts, logits whose label is
the clear maximum (tiny losses, where cancellation hurts), and the [40, 0] example.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np

import fastxent as fx


def exact_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """logsumexp(x) - x_y per row, in long double, with the max shift and log1p."""
    x = logits.astype(np.longdouble)
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    rows = np.arange(len(labels))
    at_max = x == m
    rest = np.where(at_max, 0, e).sum(axis=1) + (at_max.sum(axis=1) - 1)
    return np.log1p(rest) - (x[rows, labels] - m[:, 0])


def ulp_errors(result: np.ndarray, exact: np.ndarray, dtype: np.dtype) -> np.ndarray:
    reference = exact.astype(dtype)
    spacing = np.spacing(np.abs(reference)).astype(np.longdouble)
    error = np.abs(result.astype(np.longdouble) - exact.astype(np.longdouble)) / spacing
    return error.astype(float)


def numpy_naive(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]


def cases(quick: bool):
    rng = np.random.default_rng(12345)
    n = 2000 if quick else 20000
    for c in (2, 10, 1000) + (() if quick else (32000, 128256)):
        rows = max(64, n * 10 // c)
        for scale in (1.0, 10.0):
            yield (f"normal*{scale:g}, C={c}", rng.standard_normal((rows, c)) * scale,
                   rng.integers(0, c, rows))
        x = rng.standard_normal((rows, c))
        y = rng.integers(0, c, rows)
        x[np.arange(rows), y] += 30.0  # the label dominates: losses near 0
        yield f"label is max by ~30, C={c}", x, y
    yield "[40, 0], label 0", np.array([[40.0, 0.0]]), np.array([0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=("compiled", "python"), default=fx.backend,
                        help="fastxent kernel module to measure (default: the one imported)")
    args = parser.parse_args()
    suffix = "c" if args.backend == "compiled" else "py"
    fx._backend.kernels = importlib.import_module(f"fastxent._kernels_{suffix}")
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch not installed: its column is skipped", file=sys.stderr)

    header = f"{'case':<28} {'dtype':<8} {'fastxent max':>12} {'p99.9':>7} {'NumPy max':>10}"
    header += f" {'PyTorch max':>12}" if torch else ""
    print(f"fastxent {fx.__version__} ({args.backend}); error in ulps of the exact loss\n{header}")
    for name, x64, y in cases(args.quick):
        for dtype in (np.float32, np.float64):
            x = x64.astype(dtype)
            exact = exact_losses(x, y)
            ours = ulp_errors(fx.cross_entropy(x, y, reduction="none"), exact, dtype)
            naive = ulp_errors(numpy_naive(x, y), exact, dtype)
            line = (f"{name:<28} {np.dtype(dtype).name:<8} {ours.max():>12.2f} "
                    f"{np.percentile(ours, 99.9):>7.2f} {naive.max():>10.3g}")
            if torch:
                theirs = torch.nn.functional.cross_entropy(torch.from_numpy(x), torch.from_numpy(y),
                                                           reduction="none").numpy()
                line += f" {ulp_errors(theirs, exact, dtype).max():>12.3g}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
