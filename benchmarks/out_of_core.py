"""Cross-entropy and its gradient for logits larger than the workers' memory, with fastxent.dask.

    python benchmarks/out_of_core.py --gb 4          # 4 GB of float32 logits, workers of 1 GB
    python benchmarks/out_of_core.py --gb 0.5 --keep --dir /tmp/ooc

1. Writes ``logits.npy`` ((rows, classes) float32, ``--gb`` of it) and ``labels.npy`` to
   ``--dir`` (skipped if they are there with the right shape).
2. Starts a ``dask.distributed.LocalCluster`` of ``--workers`` worker processes, one thread each,
   ``--memory-limit`` each (dask pauses a worker at 80% of it and kills it at 95%).
3. Computes the mean loss and its gradient lazily with ``fastxent.dask.cross_entropy_with_grad``
   on blocks of ``--block-rows`` rows, each block read from the ``.npy`` with
   ``np.load(mmap_mode="r")`` when its task runs, and writes the gradient to ``grad.npy``
   (one ``np.lib.format.open_memmap`` per block write) in the same pass, so each block's fused
   kernel runs once.
4. Prints the loss, the time, each worker's peak resident memory during the computation (the
   high-water mark of the whole process, reset before it starts: Python, dask and the blocks),
   and checks the first block's gradient against in-memory fastxent.

Blocks are opened and closed per task rather than handing dask one ``np.memmap`` of the whole
file: pages of a mapping stay in the process's resident set while it is mapped, and dask's
memory limit counts the resident set.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time

import numpy as np

import fastxent
import fastxent.dask as fxd


class NpyRows:
    """A read-only ``.npy`` as an array-like for ``da.from_array``: each ``[...]`` maps the file,
    copies the requested rows, and unmaps it again."""

    def __init__(self, path: str) -> None:
        m = np.load(path, mmap_mode="r")
        self.path, self.shape, self.dtype, self.ndim = path, m.shape, m.dtype, m.ndim

    def __getitem__(self, index):
        return np.array(np.load(self.path, mmap_mode="r")[index])


class NpyWriter:
    """An ``.npy`` on disk as a ``da.store`` target: each block write maps, writes, unmaps."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
        self.path, self.shape, self.dtype = path, shape, dtype

    def __setitem__(self, index, value) -> None:
        m = np.load(self.path, mmap_mode="r+")
        m[index] = value
        m.flush()
        del m


def _write_inputs(directory: str, rows: int, classes: int, block_rows: int) -> None:
    logits_path = os.path.join(directory, "logits.npy")
    if os.path.exists(logits_path) and np.load(logits_path, mmap_mode="r").shape == (rows, classes):
        return
    rng = np.random.default_rng(0)
    out = NpyWriter(logits_path, (rows, classes), np.dtype(np.float32))  # keeps nothing mapped
    for start in range(0, rows, block_rows):
        stop = min(rows, start + block_rows)
        out[start:stop] = rng.standard_normal((stop - start, classes), dtype=np.float32) * 3
    np.save(os.path.join(directory, "labels.npy"), rng.integers(0, classes, rows, dtype=np.int32))


def _reset_peak_rss() -> None:
    # a forked worker inherits its parent's high-water mark: start it from its own resident set
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0, help="size of the float32 logits")
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--block-rows", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GB", help="per worker")
    parser.add_argument("--dir", default="/tmp/fastxent-out-of-core")
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = parser.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster

    rows = int(args.gb * 1e9) // (4 * args.classes)
    os.makedirs(args.dir, exist_ok=True)
    t0 = time.perf_counter()
    _write_inputs(args.dir, rows, args.classes, args.block_rows)
    print(f"inputs: logits ({rows}, {args.classes}) float32 = "
          f"{rows * args.classes * 4 / 1e9:.2f} GB "
          f"in {args.dir} ({time.perf_counter() - t0:.0f} s to write)")

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        logits = da.from_array(NpyRows(os.path.join(args.dir, "logits.npy")),
                               chunks=(args.block_rows, -1), meta=np.empty((0, 0), np.float32))
        labels = np.load(os.path.join(args.dir, "labels.npy"))  # 4 bytes a row: small
        loss, grad = fxd.cross_entropy_with_grad(logits, labels)
        grad_path = os.path.join(args.dir, "grad.npy")
        writer = NpyWriter(grad_path, grad.shape, grad.dtype)  # any object with __setitem__
        store = da.store(grad, writer, lock=False, compute=False)  # type: ignore[arg-type]
        client.run(_reset_peak_rss)
        start = time.perf_counter()
        loss_value, _ = client.compute([loss, store], sync=True)
        seconds = time.perf_counter() - start
        peaks = client.run(_peak_rss_mb)

    print(f"mean loss {float(loss_value):.6f}; loss and gradient in {seconds:.1f} s "
          f"({2 * rows * args.classes * 4 / 1e9 / seconds:.2f} GB/s read + written), "
          f"{args.workers} workers x 1 thread, memory limit {args.memory_limit} each")
    print("peak resident memory per worker: "
          + ", ".join(f"{mb:.0f} MB" for mb in peaks.values())
          + f"; this process: {_peak_rss_mb():.0f} MB")

    # the first block against in-memory fastxent (mean over all rows: grad_output = 1 / rows)
    x0 = np.load(os.path.join(args.dir, "logits.npy"), mmap_mode="r")[:args.block_rows]
    _, expected = fastxent.cross_entropy_with_grad(np.array(x0), labels[:args.block_rows],
                                                   reduction="sum", grad_output=1.0 / rows)
    stored = np.load(grad_path, mmap_mode="r")[:args.block_rows]
    print("first block's gradient equals in-memory fastxent:",
          bool(np.array_equal(stored, expected)))
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
