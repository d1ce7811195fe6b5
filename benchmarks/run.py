"""fastxent beside its peers, in one process: times, GB/s, ratios, peak extra memory, a plot.

    python benchmarks/run.py --quick                 # under a minute
    python benchmarks/run.py                         # every case (about 15 minutes here)
    python benchmarks/run.py --cases 8192x1000 --threads 2 --dtypes float32

Peers (each skipped with a line saying so when not installed; `pip install .[bench]`):
NumPy written the way a user would, PyTorch (`F.cross_entropy`, and forward + `backward()`),
JAX (`jax.jit(jax.value_and_grad(...))` of optax's cross-entropy), scikit-learn
(`HalfMultinomialLoss.loss_gradient`), and two memory rooflines: copying an array the size of
the logits with as many threads as the case (the least traffic a fused forward + backward can
do) and reading it once (`max`, for the forward alone).

Timing: one warm-up call, then repeats until at least --repeat calls and --min-time seconds;
the median is reported. Threads: fastxent's `n_threads=`, `torch.set_num_threads`,
scikit-learn's `n_threads=`, threadpoolctl for NumPy's BLAS (unused here); JAX's thread pool
cannot be resized inside a process, so it always runs with every core.

Peak extra memory: bytes allocated during one call beyond its inputs and its outputs (the loss
and the gradient). NumPy-based implementations are measured with tracemalloc (NumPy reports its
allocations to it); PyTorch with `torch.profiler` (`profile_memory=True`: the peak of the
running sum of its CPU allocations and frees); JAX's allocations are not visible to either, so
its column says n/a.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import fastxent

HERE = Path(__file__).resolve().parent
SHAPES = [(64, 10), (4096, 10), (65536, 10), (8192, 1000), (2048, 32000), (256, 128256),
          (32, 21, 128, 128)]
QUICK_SHAPES = [(64, 10), (65536, 10), (8192, 1000), (32, 21, 128, 128)]


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    dtype: str
    labels: str  # "sparse" or "dense"
    mode: str  # "forward" or "fused"
    threads: int

    @property
    def name(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def n_classes(self) -> int:
        return self.shape[1]

    def bytes_moved(self) -> int:
        """Least traffic: read the logits (and dense labels), write the gradient when fused."""
        size = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        return size * (1 + (self.labels == "dense") + (self.mode == "fused"))


@dataclass
class Result:
    case: Case
    impl: str
    seconds: float | None = None
    extra_bytes: int | None = None
    note: str = ""
    ratios: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

def make_data(case: Case):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype)
    if case.labels == "sparse":
        labels = rng.integers(0, case.n_classes, case.shape[:1] + case.shape[2:])
    else:
        labels = rng.random(case.shape).astype(case.dtype)
        labels /= labels.sum(axis=1, keepdims=True)
    return logits, labels


def classes_last(a: np.ndarray) -> np.ndarray:
    """(N, C, d...) -> (N * d..., C) for peers that only take classes on the last axis."""
    if a.ndim == 2:
        return a
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


# ------------------------------------------------------------------------------------------
# Implementations: each returns a zero-argument callable for a case, or raises Skip.
# ------------------------------------------------------------------------------------------

class Skip(Exception):
    pass


def fastxent_impl(case: Case, logits, labels, use_out: bool):
    if case.labels == "sparse":
        if case.mode == "forward":
            return lambda: fastxent.cross_entropy(logits, labels, n_threads=case.threads)
        out = np.empty_like(logits) if use_out else None
        return lambda: fastxent.cross_entropy_with_grad(logits, labels, out=out, n_threads=case.threads)
    if case.mode == "forward":
        return lambda: fastxent.cross_entropy(logits, labels, n_threads=case.threads)
    out = np.empty_like(logits) if use_out else None
    return lambda: fastxent.cross_entropy_with_grad(logits, labels, out=out, n_threads=case.threads)


def numpy_impl(case: Case, logits, labels):
    """Softmax cross-entropy the way one writes it in NumPy (classes last, mean reduction)."""
    x = classes_last(logits)
    y = labels.reshape(-1) if case.labels == "sparse" else classes_last(labels)
    rows = np.arange(x.shape[0])

    def forward():
        shifted = x - x.max(axis=1, keepdims=True)
        log_sums = np.log(np.exp(shifted).sum(axis=1))
        if case.labels == "sparse":
            return (log_sums - shifted[rows, y]).mean()
        return (y * (log_sums[:, None] - shifted)).sum(axis=1).mean()

    def fused():
        shifted = x - x.max(axis=1, keepdims=True)
        exps = np.exp(shifted)
        sums = exps.sum(axis=1, keepdims=True)
        grad = exps / sums
        if case.labels == "sparse":
            loss = (np.log(sums[:, 0]) - shifted[rows, y]).mean()
            grad[rows, y] -= 1.0
        else:
            loss = (y * (np.log(sums) - shifted)).sum(axis=1).mean()
            grad -= y
        grad /= x.shape[0]
        return loss, grad

    return forward if case.mode == "forward" else fused


def torch_impl(case: Case, logits, labels):
    try:
        import torch
    except ImportError:
        raise Skip("PyTorch not installed") from None
    torch.set_num_threads(case.threads)
    x = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    if case.mode == "forward":
        return lambda: torch.nn.functional.cross_entropy(x, y)
    xg = x.clone().requires_grad_()

    def fused():
        xg.grad = None
        loss = torch.nn.functional.cross_entropy(xg, y)
        loss.backward()
        return loss, xg.grad

    return fused


def jax_impl(case: Case, logits, labels):
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        raise Skip("JAX or optax not installed") from None
    if case.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    x = jnp.asarray(classes_last(logits))
    if case.labels == "sparse":
        y = jnp.asarray(labels.reshape(-1))
        loss_fn = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()  # noqa: E731
    else:
        y = jnp.asarray(classes_last(labels))
        loss_fn = lambda z: optax.softmax_cross_entropy(z, y).mean()  # noqa: E731
    f = jax.jit(loss_fn if case.mode == "forward" else jax.value_and_grad(loss_fn))
    return lambda: jax.block_until_ready(f(x))


def sklearn_impl(case: Case, logits, labels):
    try:
        from sklearn._loss.loss import HalfMultinomialLoss
    except ImportError:
        raise Skip("scikit-learn not installed") from None
    if case.labels != "sparse":
        raise Skip("scikit-learn takes class indices only")
    x = np.ascontiguousarray(classes_last(logits))
    y = labels.reshape(-1).astype(x.dtype)
    loss = HalfMultinomialLoss(n_classes=case.n_classes)
    loss_out = np.empty(x.shape[0], dtype=x.dtype)
    grad_out = np.empty_like(x)
    if case.mode == "forward":
        return lambda: loss.loss(y_true=y, raw_prediction=x, loss_out=loss_out, n_threads=case.threads)
    return lambda: loss.loss_gradient(y_true=y, raw_prediction=x, loss_out=loss_out,
                                      gradient_out=grad_out, n_threads=case.threads)


def roofline_impl(case: Case, logits, labels):
    """The least memory traffic: copy the logits (fused) or read them once (forward), split over
    the case's threads (NumPy releases the GIL in both)."""
    flat = logits.reshape(logits.shape[0], -1)
    dest = np.empty_like(flat)
    chunks = np.array_split(np.arange(flat.shape[0]), case.threads)
    bounds = [(c[0], c[-1] + 1) for c in chunks if len(c)]
    # a thread pool only pays off on arrays larger than the caches
    pool = ThreadPoolExecutor(case.threads) if case.threads > 1 and flat.nbytes > (4 << 20) else None
    if case.mode == "fused":
        work = lambda b: np.copyto(dest[b[0]:b[1]], flat[b[0]:b[1]])  # noqa: E731
    else:
        work = lambda b: flat[b[0]:b[1]].max()  # noqa: E731
    if pool is None:
        return lambda: work((0, flat.shape[0]))
    return lambda: list(pool.map(work, bounds))


IMPLEMENTATIONS: dict[str, Callable] = {
    "fastxent": lambda c, x, y: fastxent_impl(c, x, y, use_out=False),
    "fastxent out=": lambda c, x, y: fastxent_impl(c, x, y, use_out=True),
    "NumPy naive": numpy_impl,
    "PyTorch": torch_impl,
    "JAX": jax_impl,
    "scikit-learn": sklearn_impl,
    "roofline": roofline_impl,
}


# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------

def median_seconds(fn, repeat: int, min_time: float) -> float:
    fn()  # warm-up (and JIT compilation)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _output_bytes(result) -> int:
    items = result if isinstance(result, (tuple, list)) else (result,)
    total = 0
    for item in items:
        nbytes = getattr(item, "nbytes", None)
        if nbytes is None and hasattr(item, "element_size"):
            nbytes = item.element_size() * item.nelement()
        total += int(nbytes or 0)
    return total


def peak_extra_bytes(impl: str, fn) -> int | None:
    """Bytes allocated during one call beyond its outputs (see the module docstring)."""
    if impl == "JAX":
        return None
    if impl == "PyTorch":
        import torch
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
        events = sorted((e for e in prof.events() if e.cpu_memory_usage),
                        key=lambda e: e.time_range.start)
        running = peak = 0
        for event in events:
            running += event.cpu_memory_usage
            peak = max(peak, running)
        outputs = _output_bytes(result)
        if isinstance(result, torch.Tensor) and result.ndim == 0:
            outputs = 0  # the loss of forward-only: a scalar
        return max(0, peak - outputs)
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    outputs = 0 if impl.endswith("out=") else _output_bytes(result)
    return max(0, peak - outputs)


# ------------------------------------------------------------------------------------------
# Running and reporting
# ------------------------------------------------------------------------------------------

def build_cases(args) -> list[Case]:
    shapes = QUICK_SHAPES if args.quick else SHAPES
    cases = []
    for shape in shapes:
        for dtype in args.dtypes:
            for labels in ("sparse",) if args.quick else ("sparse", "dense"):
                if labels == "dense" and len(shape) > 2:
                    continue  # the K-dim case is a segmentation loss: class indices
                for mode in ("fused", "forward"):
                    for threads in args.threads:
                        case = Case(shape, dtype, labels, mode, threads)
                        if args.cases and not any(s in f"{case.name} {dtype} {labels} {mode}" for s in args.cases):
                            continue
                        cases.append(case)
    return cases


def progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:60]:<60}")
    sys.stderr.flush()


def run(args) -> list[Result]:
    cases = build_cases(args)
    results: list[Result] = []
    skipped: dict[str, str] = {}
    total = len(cases) * len(IMPLEMENTATIONS)
    done = 0
    for case in cases:
        logits, labels = make_data(case)
        for impl, factory in IMPLEMENTATIONS.items():
            done += 1
            progress(done, total, f"{case.name} {case.dtype} {case.labels} {case.mode} t={case.threads} {impl}")
            result = Result(case, impl)
            try:
                fn = factory(case, logits, labels)
                result.seconds = median_seconds(fn, args.repeat, args.min_time)
                if impl != "roofline":
                    result.extra_bytes = peak_extra_bytes(impl, fn)
            except Skip as reason:
                skipped.setdefault(impl, str(reason))
                result.note = str(reason)
            except Exception as exc:  # a peer failing must not end the run
                result.note = f"failed: {type(exc).__name__}: {exc}"[:120]
            results.append(result)
        del logits, labels
    sys.stderr.write("\n")
    for impl, reason in skipped.items():
        print(f"skipped {impl}: {reason}")
    for r in results:
        ours = _find(results, r.case, "fastxent")
        roof = _find(results, r.case, "roofline")
        if r.seconds and ours and ours.seconds:
            r.ratios["vs fastxent"] = r.seconds / ours.seconds
        if r.seconds and roof and roof.seconds:
            r.ratios["vs roofline"] = r.seconds / roof.seconds
    return results


def _find(results: list[Result], case: Case, impl: str) -> Result | None:
    for r in results:
        if r.case == case and r.impl == impl:
            return r
    return None


def table(results: list[Result]) -> str:
    lines = ["| case | dtype | labels | mode | threads | implementation | time (ms) | GB/s "
             "| time / fastxent | time / roofline | peak extra memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.case
        if r.seconds is None:
            if r.note and not r.note.startswith(("PyTorch not", "JAX or", "scikit-learn not")):
                lines.append(f"| {c.name} | {c.dtype} | {c.labels} | {c.mode} | {c.threads} | {r.impl} "
                             f"| {r.note} | | | | |")
            continue
        gbs = c.bytes_moved() / r.seconds / 1e9
        mem = "n/a" if r.extra_bytes is None else _bytes(r.extra_bytes)
        if r.impl == "roofline":
            mem = ""
        vs_fx = f"{r.ratios['vs fastxent']:.2f}" if "vs fastxent" in r.ratios else ""
        vs_roof = f"{r.ratios['vs roofline']:.2f}" if "vs roofline" in r.ratios else ""
        lines.append(f"| {c.name} | {c.dtype} | {c.labels} | {c.mode} | {c.threads} | {r.impl} "
                     f"| {r.seconds * 1e3:.3f} | {gbs:.1f} | {vs_fx} | {vs_roof} | {mem} |")
    return "\n".join(lines)


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 ** 2:
        return f"{n / 1024:.0f} KiB"
    return f"{n / 1024 ** 2:.1f} MiB"


def summary(results: list[Result]) -> str:
    """One line per case: fastxent's time and its speed-up over each peer."""
    lines = ["| case | dtype | labels | mode | threads | fastxent (ms) | / roofline | "
             "NumPy | PyTorch | JAX | scikit-learn |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r.case for r in results):
        ours = _find(results, case, "fastxent out=") if case.mode == "fused" else _find(results, case, "fastxent")
        if not ours or not ours.seconds:
            continue
        roof = _find(results, case, "roofline")
        cells = []
        for peer in ("NumPy naive", "PyTorch", "JAX", "scikit-learn"):
            r = _find(results, case, peer)
            cells.append(f"{r.seconds / ours.seconds:.1f}x" if r and r.seconds else "—")
        roof_ratio = f"{ours.seconds / roof.seconds:.2f}" if roof and roof.seconds else "—"
        lines.append(f"| {case.name} | {case.dtype} | {case.labels} | {case.mode} | {case.threads} "
                     f"| {ours.seconds * 1e3:.3f} | {roof_ratio} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("skipped the plot: matplotlib not installed")
        return False
    labels, speedups = [], []
    for case in dict.fromkeys(r.case for r in results):
        ours = _find(results, case, "fastxent out=" if case.mode == "fused" else "fastxent")
        torch_r = _find(results, case, "PyTorch")
        if ours and ours.seconds and torch_r and torch_r.seconds:
            labels.append(f"{case.name} {case.dtype[5:]} {case.labels[0]} {case.mode[:3]} t{case.threads}")
            speedups.append(torch_r.seconds / ours.seconds)
    if not speedups:
        return False
    fig, ax = plt.subplots(figsize=(10, max(4, 0.22 * len(labels))))
    ax.barh(range(len(labels)), speedups, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of fastxent over PyTorch (time of PyTorch / time of fastxent)")
    ax.set_title("fastxent vs torch.nn.functional.cross_entropy (f/b: forward + backward)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "fastxent": f"{fastxent.__version__} ({fastxent.backend})", "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    for module in ("torch", "jax", "sklearn"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    return info


def argv_filters(args) -> bool:
    """Whether --threads or --dtypes narrowed a full run."""
    return set(args.threads) != {1, 2} or set(args.dtypes) != {"float32", "float64"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cases, float32, under a minute")
    parser.add_argument("--cases", nargs="*", help="only cases whose description contains one of these")
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=None)
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=None)
    parser.add_argument("--repeat", type=int, default=None, help="least number of timed calls")
    parser.add_argument("--min-time", type=float, default=None, help="least seconds of timed calls")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    args.threads = args.threads or ([2] if args.quick else [1, 2])
    args.dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "float64"])
    args.repeat = args.repeat or (3 if args.quick else 7)
    args.min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.3)

    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    results = run(args)
    summary_md, table_md = summary(results), table(results)
    print("\nfastxent's time and the speed-up over each peer (peer time / fastxent time; "
          "fused rows use fastxent with out=):\n")
    print(summary_md)
    print("\nevery measurement:\n")
    print(table_md)

    args.out.mkdir(parents=True, exist_ok=True)
    # a filtered run never overwrites the results of a whole one
    suffix = "-quick" if args.quick else ("-partial" if args.cases or argv_filters(args) else "")
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    document = (f"# fastxent benchmarks\n\n`{command.strip()}`\n\n"
                + "\n".join(f"- {k}: {v}" for k, v in info.items())
                + f"\n\n## Summary\n\n{summary_md}\n\n## Every measurement\n\n{table_md}\n")
    (args.out / f"results{suffix}.md").write_text(document)
    (args.out / f"results{suffix}.json").write_text(json.dumps(
        {"machine": info, "command": command, "results": [
            {**asdict(r), "case": {**asdict(r.case), "name": r.case.name}} for r in results]}, indent=1))
    if plot(results, args.out / f"speedup{suffix}.png"):
        print(f"\nplot: {args.out / f'speedup{suffix}.png'}")
    if args.markdown:
        args.markdown.write_text(document)
    print(f"tables: {args.out / f'results{suffix}.md'}, raw: {args.out / f'results{suffix}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
