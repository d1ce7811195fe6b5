"""Compare two builds of the compiled kernels bit for bit on a fixed corpus of inputs.

A refactoring of the kernels must not change a result: build the module before and after
(``python setup.py build_ext --inplace`` in two checkouts) and run

    python benchmarks/kernel_bits.py BEFORE/src/fastxent/_kernels_c*.so \
        AFTER/src/fastxent/_kernels_c*.so

The corpus covers every kernel function, both float dtypes, class counts on the tile path and
the row path, contiguous, class-axis-1 and Fortran layouts, class weights, ignored and bad
labels, label smoothing, z-loss, softcap, loss only and fused, in place, and per-row
``grad_output``. It prints the cases whose results differ (with the largest difference in ulps)
and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys

import numpy as np


def load(path: str):
    spec = importlib.util.spec_from_file_location("fastxent._kernels_c", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layouts(rng, dtype, n_rows, n_classes):
    """(name, x as an (A, C, B) view, matching labels (A, B), dense target (A, C, B))."""
    x2 = (rng.standard_normal((n_rows, n_classes)) * 4).astype(dtype)
    x2[0, :] = 0.0                          # a row of ties
    x2[1, 0] = x2[1].max() + 40.0           # a tiny loss
    if n_rows > 3:
        x2[3, 1] = -np.inf
    y = rng.integers(0, n_classes, n_rows)
    y[1] = 0
    t2 = rng.dirichlet(np.ones(n_classes), n_rows).astype(dtype)
    yield "C", x2[:, :, None], y[:, None], t2[:, :, None]
    xf, tf = np.asfortranarray(x2), np.asfortranarray(t2)
    yield "F", xf[:, :, None], y[:, None], tf[:, :, None]
    # (N, C, d) with the class axis 1: 4 positions per sample
    n = n_rows // 4
    x3 = np.ascontiguousarray(x2[:4 * n].reshape(n, 4, n_classes).transpose(0, 2, 1))
    t3 = np.ascontiguousarray(t2[:4 * n].reshape(n, 4, n_classes).transpose(0, 2, 1))
    yield "axis1", x3, y[:4 * n].reshape(n, 4), t3


def cases(rng):
    for dtype, n_classes in itertools.product((np.float32, np.float64), (3, 10, 33, 100, 1000)):
        n_rows = 64 if n_classes < 1000 else 16
        weight = rng.uniform(0.0, 3.0, n_classes)
        for name, x, y, t in layouts(rng, dtype, n_rows, n_classes):
            key = f"{np.dtype(dtype).name} C={n_classes} {name}"
            for fn in ("softmax", "log_softmax"):
                yield f"{key} {fn}", fn, (x,), "out_like_x"
            yield f"{key} logsumexp", "logsumexp", (x,), "out_rows"
            bad = y.copy()
            bad.flat[2] = n_classes
            yield f"{key} label_check", "sparse_label_check", (y, n_classes, -100, True,
                                                               weight, 2), None
            options = itertools.product((None, weight), (0.0, 0.1), (0.0, 1e-3), (0.0, 5.0),
                                        (False, True), (False, True))
            for w, smoothing, z_loss, softcap, with_grad, per_row in options:
                if per_row and not with_grad:
                    continue
                extra = {"z_loss": z_loss, "softcap": softcap} if (z_loss or softcap) else {}
                tag = (f"{key} w={w is not None} eps={smoothing} z={z_loss} cap={softcap} "
                       f"grad={with_grad} rows={per_row}")
                labels = y.copy()
                labels.flat[4] = -100  # ignored
                yield (f"{tag} sparse", "sparse_xent",
                       (x, labels, w, -100, True, smoothing), ("xent", with_grad, per_row, extra))
                yield (f"{tag} dense", "dense_xent", (x, t, w, smoothing),
                       ("xent", with_grad, per_row, extra))
            yield f"{key} sparse in place", "sparse_xent", (x, y, None, -100, True, 0.0), \
                ("inplace", True, False, {})
            yield f"{key} bad label", "sparse_xent", (x, bad, None, -100, True, 0.0), \
                ("xent", True, False, {})


def run(module, fn, args, mode):
    if mode == "out_like_x":
        out = np.empty_like(args[0])
        getattr(module, fn)(args[0], out, 2)
        return [out]
    if mode == "out_rows":
        x = args[0]
        out = np.empty((x.shape[0], x.shape[2]), dtype=x.dtype)
        getattr(module, fn)(x, out, 2)
        return [out]
    if mode is None:
        return [np.asarray(getattr(module, fn)(*args), dtype=np.float64)]
    kind, with_grad, per_row, extra = mode
    x = args[0]
    loss = np.empty((x.shape[0], x.shape[2]))
    rows = np.linspace(0.5, 2.0, loss.size).reshape(loss.shape) if per_row else None
    if kind == "inplace":
        x = x.copy()
        grad = x
        args = (x,) + args[1:]
    else:
        grad = np.empty_like(x) if with_grad else None
    count = getattr(module, fn)(*args, loss, grad, 0.25, rows, 2, **extra)
    results = [loss, np.asarray(count if count is not None else 0, dtype=np.float64)]
    if grad is not None:
        results.append(grad)
    return results


def ulps(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return 0.0
    spacing = np.spacing(np.maximum(np.abs(a[finite]), np.abs(b[finite])))
    return float((np.abs(a[finite] - b[finite]) / spacing).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    before, after = load(args.before), load(args.after)
    n_cases = n_diff = 0
    for name, fn, fn_args, mode in cases(np.random.default_rng(0)):
        old, new = run(before, fn, fn_args, mode), run(after, fn, fn_args, mode)
        n_cases += 1
        same = all(a.dtype == b.dtype and a.shape == b.shape
                   and np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                                     np.ascontiguousarray(b).view(np.uint8))
                   for a, b in zip(old, new))
        if not same:
            n_diff += 1
            print(f"DIFFERS: {name}: up to {max(ulps(a, b) for a, b in zip(old, new)):.3g} ulp")
    print(f"{n_cases} cases, {n_diff} differ")
    return 1 if n_diff else 0


if __name__ == "__main__":
    sys.exit(main())
