"""Peak extra memory of one call: bytes allocated beyond its inputs and its outputs, measured.

Both methods record every allocation and free made during one call (after a warm-up call, so
one-off caches are not counted), keep the running total, and report

    peak of the running total  -  what is still allocated when the call returns

where the second term is exactly the outputs the call handed back (the loss, the gradient
when it allocated one), since the result is still held. What is left is the scratch memory
the call needed on top of its inputs and outputs: temporaries, saved activations, copies.

- NumPy-based implementations (fastxent, NumPy, scikit-learn): `tracemalloc`. NumPy reports
  every array buffer it allocates to tracemalloc, and fastxent allocates only through NumPy.
  Blind spot: memory a compiled extension takes with plain malloc is invisible (scikit-learn's
  per-thread scratch of C doubles, negligible).
- PyTorch: `torch.profiler` with `profile_memory=True`, which records each allocation and free
  of PyTorch's CPU allocator as a `[memory]` event; the events are summed in time order. (The
  per-operator `cpu_memory_usage` totals are not used: nested operators count the same bytes
  again.)
- JAX: XLA allocates outside both, so no honest figure exists in-process: reported as n/a.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterator


def peak_extra_bytes(method: str, fn: Callable[[], object]) -> int | None:
    """Measure one call of `fn` with `method` ("tracemalloc", "torch"); None for "n/a"."""
    if method == "tracemalloc":
        return _tracemalloc(fn)
    if method == "torch":
        return _torch_profiler(fn)
    return None


def _tracemalloc(fn: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return max(0, peak - retained)


def _torch_profiler(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    del result
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return max(0, peak - running)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Kineto prints start/stop lines on file descriptor 2; keep the progress bar readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
