"""fastxent beside its peers, in one process: times, GB/s, ratios, peak extra memory, a plot.

    python benchmarks/run.py --quick                  # a few float32 cases, under a minute
    python benchmarks/run.py                          # every case, 1 and 2 threads
    python benchmarks/run.py --cases 8192x1000,dense --threads 2 --dtypes float32
    python benchmarks/run.py --markdown table.md      # the tables again, for the README
    python benchmarks/run.py --max-isa avx2 --threads 2 --dtypes float32   # an AVX2 machine

Peers (peers.py; each skipped with a line saying so when not installed, `pip install .[bench]`):
fastxent (and with a preallocated `out=` gradient), NumPy written the way a user would,
PyTorch `F.cross_entropy` (forward + `backward()` when fused), JAX `jax.jit` of optax's
cross-entropy (`jax.value_and_grad` when fused), scikit-learn `HalfMultinomialLoss`, and a
roofline: the least memory traffic of the task at the bandwidth NumPy reaches (`np.copyto` of
the logits for fused, a `max` over them for forward-only). Class indices use fastxent's
`cross_entropy`/`cross_entropy_with_grad` (mean); dense labels its TensorFlow family.

Timing: each peer is set up and called once to warm up (and jit-compile), then timed in
samples of enough back-to-back calls to last a couple of milliseconds, a block of samples per
peer after one untimed call; four passes over the peers in alternating order, so that drift or
a burst of noise on a shared machine hits every peer alike. The table shows the median
per-call time of the samples. Ratios are time / time of fastxent (> 1: fastxent is faster)
and time / time of the roofline (>= 1; 1 would be bandwidth-bound). GB/s is the task's least
traffic (read logits and labels, write the gradient) per second.

Threads: fastxent and scikit-learn through their `n_threads=`, PyTorch through
`torch.set_num_threads`, NumPy and everything else under `threadpoolctl.threadpool_limits`
(NumPy's element-wise functions are single-threaded regardless). JAX's XLA thread pool is sized
when JAX starts and cannot be changed inside a process: JAX always runs with every core, and its
rows say so.

Peak extra memory (memory.py): bytes allocated during one call beyond its inputs and outputs,
measured, not estimated: tracemalloc for NumPy-based implementations (NumPy reports its
allocations to it), `torch.profiler(profile_memory=True)` allocation events for PyTorch, "n/a"
for JAX, whose allocator neither sees.

ISA: every implementation uses the best vector instructions of the CPU, unless --max-isa avx2
caps them where it can: fastxent (FASTXENT_MAX_ISA), PyTorch (ATEN_CPU_CAPABILITY), JAX
(XLA_FLAGS=--xla_cpu_max_isa=AVX2) and NumPy (NPY_DISABLE_CPU_FEATURES) run their AVX2 code, so
that an AVX-512 machine measures an AVX2 one (scikit-learn's kernels are compiled for the
baseline either way). The run re-executes itself with those variables set, and its files get an
-avx2 suffix.

Outputs in --out (default benchmarks/results/): results.md (tables), results.json (every
sample), speedup.png (every peer's time over fastxent's, per case, drawn by report.py).
--quick writes *-quick.*, a run narrowed by --cases/--threads/--dtypes writes *-partial.*, so
neither overwrites a full run. report.py then makes the README's table from results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import memory
import numpy as np
import report
from peers import (
    FASTXENT,
    FASTXENT_OUT,
    PEERS,
    QUICK_SHAPES,
    ROOFLINE,
    SHAPES,
    Case,
    Peer,
    Skip,
    make_data,
    roofline_bytes,
)

try:
    import fastxent
except ImportError as exc:  # the subject of the benchmark: nothing to do without it
    sys.exit(f"fastxent is not importable ({exc}); install it first: pip install .[bench]")

HERE = Path(__file__).resolve().parent
PEER_COLUMNS = ["NumPy naive", "PyTorch", "JAX", "scikit-learn"]
PASSES = 4  # over the peers of a case in alternating order: noise hits several peers, not one
# the environment that keeps each implementation at AVX2 (--max-isa avx2); NumPy's variable names
# the features of its dispatch above AVX2
ISA_CAPS = {"avx2": {"FASTXENT_MAX_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
                     "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",
                     "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX "
                                                 "AVX512_CNL AVX512_ICL AVX512_SPR"}}


@dataclass
class Result:
    """One implementation on one case; seconds is the median per-call time."""

    case: Case
    impl: str
    seconds: float | None = None
    samples: list[float] = field(default_factory=list)
    calls_per_sample: int = 0
    gb_per_s: float | None = None
    extra_bytes: int | None = None
    vs_fastxent: float | None = None
    vs_roofline: float | None = None
    note: str = ""


# ------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------

def build_cases(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str], threads: Sequence[int],
                filters: Sequence[str], quick: bool) -> list[Case]:
    """Every combination, threads innermost so 1 and 2 threads of a case sit side by side.
    The K-dim case is a segmentation loss: class indices only. --quick adds dense labels for
    one shape, to exercise that path too."""
    cases = []
    for shape in shapes:
        for dtype in dtypes:
            for labels in ("sparse", "dense"):
                if labels == "dense" and (len(shape) > 2 or (quick and shape != (8192, 1000))):
                    continue
                for mode in ("forward", "fused"):
                    for n in threads:
                        case = Case(shape, dtype, labels, mode, n)
                        if not filters or any(f in case.key for f in filters):
                            cases.append(case)
    return cases


# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr, with the elapsed time and an estimate of the rest."""

    def __init__(self, total: int) -> None:
        self.total, self.start = max(total, 1), time.perf_counter()

    def show(self, done: float, label: str) -> None:
        fraction = min(done / self.total, 1.0)
        elapsed = time.perf_counter() - self.start
        left = f"{elapsed / fraction - elapsed:4.0f}s left" if fraction > 0.02 else "         "
        bar = "#" * int(30 * fraction)
        sys.stderr.write(f"\r[{bar:<30}] {fraction:4.0%} {elapsed:4.0f}s, {left}  {label[:58]:<58}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Cap BLAS and OpenMP pools (NumPy, and anything not given an explicit count) at n."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n):
        yield


def calls_per_sample(fn: Callable[[], object], target: float) -> int:
    """Enough calls for one sample to last `target` seconds: timer noise stays small for
    microsecond calls, and a slow call is timed alone."""
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    return max(1, min(10_000, math.ceil(target / max(once, 1e-7))))


def sample(fn: Callable[[], object], number: int) -> float:
    """Per-call seconds of `number` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def measure_case(case: Case, peers: list[Peer], args: argparse.Namespace, progress: Progress,
                 done: int) -> list[Result]:
    """Set up, warm up and measure the memory of every peer, then time them in turns."""
    logits, labels = make_data(case)
    results: dict[str, Result] = {}
    runnable: dict[str, tuple[Callable[[], object], int]] = {}
    for peer in peers:
        result = results[peer.name] = Result(case, peer.name)
        progress.show(done, f"{case.key}: set up {peer.name}")
        try:
            fn = peer.callable_for(case, logits, labels)
            fn()  # warm-up, jit compilation, lazy initialisation
            result.extra_bytes = memory.peak_extra_bytes(peer.memory, fn)
            runnable[peer.name] = (fn, calls_per_sample(fn, args.sample_time))
            result.calls_per_sample = runnable[peer.name][1]
        except Skip as reason:
            result.note = f"skipped: {reason}"
        except Exception as exc:  # a failing peer is reported, never the end of the run
            result.note = f"failed: {type(exc).__name__}: {exc}"[:160]
        if peer.name == "JAX" and not result.note:
            result.note = "threads: all cores"

    # Each peer is timed in a block of back-to-back samples, the steady state of calling it in a
    # loop, as timeit would; the block opens with an untimed call that pays what the previous
    # library left behind (its freed memory handed back to the OS, its threads still spinning).
    # Several short passes in alternating order, so that drift or a burst of noise on a shared
    # machine hits every peer alike instead of one peer's whole block.
    per_pass = math.ceil(args.repeat / PASSES)
    names = list(runnable)
    for n_pass in range(PASSES):
        for name in names if n_pass % 2 == 0 else names[::-1]:
            fn, number = runnable[name]
            samples = results[name].samples
            fn()
            taken = 0
            least = args.min_time * (n_pass + 1) / PASSES  # seconds timed by the end of this pass
            while taken < per_pass or (taken < 3 * per_pass and sum(samples) * number < least):
                samples.append(sample(fn, number))
                taken += 1
            progress.show(done + (n_pass + (names.index(name) + 1) / len(names)) / PASSES,
                          f"{case.key}: {name}")

    for result in results.values():
        if result.samples:
            result.seconds = statistics.median(result.samples)
            traffic = roofline_bytes(case) if result.impl == ROOFLINE else case.bytes_moved()
            result.gb_per_s = traffic / result.seconds / 1e9
    ours, roof = results.get(FASTXENT), results.get(ROOFLINE)
    for result in results.values():
        if result.seconds and ours and ours.seconds:
            result.vs_fastxent = result.seconds / ours.seconds
        if result.seconds and roof and roof.seconds:
            result.vs_roofline = result.seconds / roof.seconds
    return list(results.values())


def run(args: argparse.Namespace) -> list[Result]:
    peers = []
    for peer in PEERS:
        missing = peer.missing()
        if missing:
            print(f"skipped {peer.name}: {', '.join(missing)} not installed (pip install .[bench])")
        else:
            peers.append(peer)
    cases = build_cases(QUICK_SHAPES if args.quick else SHAPES, args.dtypes, args.threads,
                        args.cases, args.quick)
    if not cases:
        sys.exit("no case matches --cases " + ",".join(args.cases))
    progress = Progress(len(cases))
    results: list[Result] = []
    for i, case in enumerate(cases):
        with thread_limit(case.threads):
            results += measure_case(case, peers, args, progress, i)
    progress.show(len(cases), "done")
    progress.close()
    for r in results:
        if r.note.startswith("failed"):
            print(f"{r.case.key} {r.impl}: {r.note}")
    return results


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------

def _find(results: list[Result], case: Case, impl: str) -> Result | None:
    return next((r for r in results if r.case == case and r.impl == impl), None)


def _cases(results: list[Result]) -> list[Case]:
    return list(dict.fromkeys(r.case for r in results))


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n < 1024:
        return f"{n} B"
    if n < 1024 ** 2:
        return f"{n / 1024:.0f} KiB"
    return f"{n / 1024 ** 2:.1f} MiB"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.4f}" if seconds < 1e-4 else f"{seconds * 1e3:.3f}"


def _case_cells(c: Case) -> str:
    return f"| {c.name} | {c.dtype} | {c.labels} | {c.mode} | {c.threads} "


def summary_table(results: list[Result]) -> str:
    """One line per case: fastxent's time, its distance to the roofline, its speed-ups."""
    lines = ["| case | dtype | labels | mode | threads | fastxent (ms) | out= (ms) | roofline (ms) "
             "| fastxent / roofline | "
             + " | ".join(f"{p} / fastxent" for p in PEER_COLUMNS) + " |",
             "|---|---|---|---|---|---:|---:|---:|---:|" + "---:|" * len(PEER_COLUMNS)]
    for case in _cases(results):
        ours, out, roof = (_find(results, case, n) for n in (FASTXENT, FASTXENT_OUT, ROOFLINE))
        if not ours or not ours.seconds:
            continue
        cells = []
        for peer in PEER_COLUMNS:
            r = _find(results, case, peer)
            cells.append(f"{r.vs_fastxent:.2f}" if r and r.vs_fastxent else "—")
        lines.append(_case_cells(case) + f"| {_ms(ours.seconds)} | "
                     f"{_ms(out.seconds if out else None)} "
                     f"| {_ms(roof.seconds if roof else None)} "
                     f"| {ours.vs_roofline:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(results: list[Result]) -> str:
    """Peak extra memory per implementation, one line per case (threads 1 and 2 alike: the
    largest thread count run is shown)."""
    impls = [FASTXENT, FASTXENT_OUT, *PEER_COLUMNS]
    lines = ["| case | dtype | labels | mode | logits | " + " | ".join(impls) + " |",
             "|---|---|---|---|---:|" + "---:|" * len(impls)]
    seen: dict[tuple, Case] = {}
    for case in _cases(results):
        key = (case.shape, case.dtype, case.labels, case.mode)
        if key not in seen or case.threads > seen[key].threads:
            seen[key] = case
    for case in seen.values():
        cells = []
        for impl in impls:
            r = _find(results, case, impl)
            cells.append(_bytes(r.extra_bytes) if r and r.seconds else "—")
        size = math.prod(case.shape) * np.dtype(case.dtype).itemsize
        lines.append(f"| {case.name} | {case.dtype} | {case.labels} | {case.mode} | "
                     f"{_bytes(size)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(samples: list[float]) -> str:
    """Interquartile range over the median: how far to trust the median on a noisy machine."""
    if len(samples) < 4:
        return ""
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return f"{(q3 - q1) / median:.0%}"


def full_table(results: list[Result]) -> str:
    lines = ["| case | dtype | labels | mode | threads | implementation | time (ms) | GB/s "
             "| spread | time / fastxent | time / roofline | peak extra memory | note |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if r.seconds is None and r.note.startswith("skipped"):
            continue  # not applicable (dense labels to scikit-learn, forward with out=)
        mem = "" if r.impl == ROOFLINE or r.seconds is None else _bytes(r.extra_bytes)
        lines.append(_case_cells(r.case) + f"| {r.impl} | {_ms(r.seconds)} "
                     f"| {f'{r.gb_per_s:.1f}' if r.gb_per_s else ''} | {_spread(r.samples)} "
                     f"| {f'{r.vs_fastxent:.2f}' if r.vs_fastxent else ''} "
                     f"| {f'{r.vs_roofline:.2f}' if r.vs_roofline else ''} | {mem} | {r.note} |")
    return "\n".join(lines)


def machine(max_isa: str | None = None) -> dict[str, str]:
    from fastxent import _backend

    info = {"python": platform.python_version(), "numpy": np.__version__,
            "fastxent": f"{fastxent.__version__} ({fastxent.backend}, "
                        f"OpenMP {'on' if getattr(fastxent, 'openmp_enabled', False) else 'off'})",
            "cpus": str(os.cpu_count()), "isa": _backend.isa}
    if max_isa:
        info["max_isa"] = max_isa
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    for module in ("torch", "jax", "optax", "sklearn"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    return info


def document(command: str, info: dict[str, str], results: list[Result]) -> str:
    """The Markdown written to results.md and --markdown."""
    return (f"# fastxent benchmarks\n\n`{command}`\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in info.items())
            + "\n\nMedian per-call time of back-to-back samples after warm-up (four passes over "
              "the implementations). `X / fastxent` is "
              "the time of X over fastxent's (> 1: fastxent is faster); `fastxent / roofline` is "
              "fastxent's time over that of the least memory traffic of the task (1 would be "
              "bandwidth-bound). Fused = loss and gradient. JAX always uses every core.\n\n"
            + "Spread (in the last table) is the interquartile range of the samples over their "
              "median.\n\n"
            + f"## Summary\n\n{summary_table(results)}\n\n"
            + "## Peak extra memory\n\nBytes allocated during one call beyond its inputs and "
              "outputs (tracemalloc; torch.profiler for PyTorch; n/a: JAX cannot be measured "
              "in-process).\n\n"
            + f"{memory_table(results)}\n\n## Every measurement\n\n{full_table(results)}\n")


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a few float32 cases at 2 threads, under a minute")
    parser.add_argument("--cases", type=_str_list, default=[],
                        help="comma-separated substrings of 'SHAPE DTYPE LABELS MODE tTHREADS', "
                             "e.g. '8192x1000,dense' or 'fused t2'")
    parser.add_argument("--threads", type=_int_list, default=None,
                        help="e.g. 1,2 (default: 2,1; quick: 2)")
    parser.add_argument("--dtypes", type=_str_list, default=None,
                        help="float32,float64 (quick: float32)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="least number of timed samples, spread over 4 passes "
                             "(default 8; quick 4)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="least timed seconds per implementation and case "
                             "(more samples, up to 3x --repeat)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="directory for the results")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the Markdown tables to this file")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the raw results to this file")
    parser.add_argument("--max-isa", choices=sorted(ISA_CAPS), default=None,
                        help="keep fastxent, PyTorch, JAX and NumPy at most at this vector ISA")
    args = parser.parse_args(argv)
    caps = ISA_CAPS.get(args.max_isa, {})
    if any(os.environ.get(k) != v for k, v in caps.items()):  # set before the peers load
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None
                                                              else argv)],
                  {**os.environ, **caps})
    args.threads = args.threads or ([2] if args.quick else [2, 1])
    args.dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "float64"])
    args.repeat = args.repeat or (4 if args.quick else 8)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 0.1)
    args.sample_time = 0.001 if args.quick else 0.002

    info = machine(args.max_isa)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    results = run(args)
    md = document(command.strip(), info, results)
    print("\n" + md)

    narrowed = (bool(args.cases) or set(args.threads) != {1, 2}
                or set(args.dtypes) != {"float32", "float64"})
    suffix = "-quick" if args.quick else ("-partial" if narrowed else "")
    suffix += f"-{args.max_isa}" if args.max_isa else ""
    args.out.mkdir(parents=True, exist_ok=True)
    raw = json.dumps({"machine": info, "command": command.strip(),
                      "options": {k: v for k, v in vars(args).items()
                                  if k not in ("out", "markdown", "json")},
                      "results": [{**asdict(r), "case": {**asdict(r.case), "name": r.case.name}}
                                  for r in results]}, indent=1, default=str)
    written = [args.out / f"results{suffix}.md", args.out / f"results{suffix}.json"]
    written[0].write_text(md)
    written[1].write_text(raw)
    if report.plot(json.loads(raw), args.out / f"speedup{suffix}.png"):
        written.append(args.out / f"speedup{suffix}.png")
    if not suffix and args.out.resolve() == (HERE / "results").resolve():
        report.update_readme(json.loads(raw))  # a full run: the README's table is this run's
        written.append(report.README)
    if args.markdown:
        args.markdown.write_text(md)
        written.append(args.markdown)
    if args.json:
        args.json.write_text(raw)
        written.append(args.json)
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
