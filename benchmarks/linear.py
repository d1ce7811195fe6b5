"""linear_cross_entropy against PyTorch's unfused linear + cross-entropy, and the matmul bound.

For each case (N, H, V), float32, loss and gradients (hidden, weight):

- fastxent: ``linear_cross_entropy_with_grad(hidden, weight, target)`` (chunk_size=None), and
  the same with ``z_loss=1e-4, softcap=30.0``;
- matmul bound: the three products alone at full size in NumPy, ``L = hidden @ weight.T``,
  ``L @ weight`` and ``L.T @ hidden`` (what any method must at least do; it needs the full
  logits, so its memory is not a target);
- PyTorch unfused: ``F.cross_entropy(hidden @ weight.T, target)`` then ``.backward()``.

Times are the median of ``--repeat`` runs (after one warm-up); peak extra memory is measured as
in ``memory.py`` (tracemalloc for NumPy/fastxent, the profiler for PyTorch): bytes allocated
beyond the inputs and what the call returns (the loss and gradients).

    python benchmarks/linear.py            # the two target cases of issue 7
    python benchmarks/linear.py --quick    # smaller shapes, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from memory import peak_extra_bytes  # noqa: E402

import fastxent  # noqa: E402

FULL = [(2048, 1024, 32000), (512, 2048, 128256)]
QUICK = [(512, 256, 8000), (128, 512, 32064)]


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def case(n, h_dim, v, repeat, with_torch):
    rng = np.random.default_rng(0)
    hidden = (rng.standard_normal((n, h_dim), dtype=np.float32) * 0.5).astype(np.float32)
    weight = (rng.standard_normal((v, h_dim), dtype=np.float32) / np.sqrt(h_dim)).astype(np.float32)
    target = rng.integers(0, v, n)

    def fused():
        return fastxent.linear_cross_entropy_with_grad(hidden, weight, target)

    def matmuls():
        logits = hidden @ weight.T
        return logits @ weight, logits.T @ hidden

    def fused_extras():
        return fastxent.linear_cross_entropy_with_grad(hidden, weight, target, z_loss=1e-4,
                                                       softcap=30.0)

    rows = {}
    rows["fastxent linear_cross_entropy"] = (median_time(fused, repeat),
                                             peak_extra_bytes("tracemalloc", fused))
    rows["fastxent, z_loss=1e-4, softcap=30"] = (median_time(fused_extras, repeat),
                                                 peak_extra_bytes("tracemalloc", fused_extras))
    rows["matmul only (3 products)"] = (median_time(matmuls, repeat), None)
    if with_torch:
        import torch
        import torch.nn.functional as F

        th, tw, tt = torch.from_numpy(hidden), torch.from_numpy(weight), torch.from_numpy(target)

        def unfused():
            hh = th.detach().requires_grad_()
            ww = tw.detach().requires_grad_()
            loss = F.cross_entropy(hh @ ww.T, tt)
            loss.backward()
            return loss, hh.grad, ww.grad

        rows["PyTorch unfused"] = (median_time(unfused, repeat), peak_extra_bytes("torch", unfused))

        # agreement with the float64 reference (PyTorch, float64 on the same float32 inputs)
        hh = th.double().requires_grad_()
        ww = tw.double().requires_grad_()
        ref = F.cross_entropy(hh @ ww.T, tt)
        ref.backward()
        loss, gh, gw = fused()
        err = (abs(float(loss) - ref.item()) / abs(ref.item()),
               float(np.max(np.abs(gh - hh.grad.numpy())) / np.max(np.abs(hh.grad.numpy()))),
               float(np.max(np.abs(gw - ww.grad.numpy())) / np.max(np.abs(ww.grad.numpy()))))
    else:
        err = None
    return rows, err


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    print(f"fastxent {fastxent.__version__}, backend {fastxent.backend}, "
          f"numpy {np.__version__}, float32, median of {args.repeat}")
    for n, h_dim, v in (QUICK if args.quick else FULL):
        rows, err = case(n, h_dim, v, args.repeat, not args.no_torch)
        t_mm = rows["matmul only (3 products)"][0]
        torch_row = rows.get("PyTorch unfused")
        print(f"\n(N, H, V) = ({n}, {h_dim}, {v})")
        print("| method | time (s) | / matmul only | peak extra memory (MB) | / PyTorch's |")
        print("|---|---|---|---|---|")
        for name, (t, mem) in rows.items():
            mem_s = "-" if mem is None else f"{mem / 1e6:.1f}"
            ratio = "-" if mem is None or torch_row is None else f"{mem / torch_row[1]:.1%}"
            print(f"| {name} | {t:.3f} | {t / t_mm:.2f}x | {mem_s} | {ratio} |")
        if err is not None:
            print(f"relative error vs float64: loss {err[0]:.1e}, grad_hidden {err[1]:.1e}, "
                  f"grad_weight {err[2]:.1e} (max abs error / max abs value)")


if __name__ == "__main__":
    main()
