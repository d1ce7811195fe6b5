"""fastxent.torch against PyTorch's own cross-entropy: time and peak memory, large vocabulary.

    python benchmarks/torch_training.py                       # (2048, 32000) float32
    python benchmarks/torch_training.py --rows 512 --classes 8000 --repeats 5
    python benchmarks/torch_training.py --digits          # the loss curves of a small training

Two cases, each with fastxent's loss and PyTorch's:
- "loss": forward + backward of the loss alone, on (rows, classes) logits that require grad;
- "step": a whole training step: Linear(hidden, classes) -> loss -> backward -> SGD step.

Times are medians of ``--repeats`` runs after ``--warmup`` runs, the two implementations
interleaved in one process. Peak extra memory is measured in a fresh subprocess per
implementation and case: after a warm-up and with the gradients freed, the kernel's
resident-set high-water mark is reset (``/proc/self/clear_refs``), one more run is made, and the
peak (``VmHWM``) minus the resident set before the run is reported: the scratch memory of the
run plus the gradients it leaves in ``.grad`` (the same for both). That counts every allocator
(PyTorch's CPU allocator and NumPy's, which fastxent's buffers come from) — tracemalloc would
see only NumPy's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import fastxent
import fastxent.torch as fxt

IMPLEMENTATIONS = {"fastxent": fxt.cross_entropy, "torch": torch.nn.functional.cross_entropy}


def _setup(case: str, impl: str,
           args: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one run of ``case`` with ``impl``'s loss, a reset that frees the gradients it left)."""
    torch.manual_seed(0)
    loss_fn = IMPLEMENTATIONS[impl]
    dtype = getattr(torch, args.dtype)
    target = torch.randint(0, args.classes, (args.rows,))
    if case == "loss":
        logits = torch.randn(args.rows, args.classes, dtype=dtype, requires_grad=True)

        def reset() -> None:
            logits.grad = None

        def run() -> None:
            reset()
            loss_fn(logits, target).backward()
        return run, reset
    model = torch.nn.Linear(args.hidden, args.classes).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    hidden = torch.randn(args.rows, args.hidden, dtype=dtype)

    def zero_grad() -> None:
        optimizer.zero_grad(set_to_none=True)

    def step() -> None:
        zero_grad()
        loss_fn(model(hidden), target).backward()
        optimizer.step()
    return step, zero_grad


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child_peak(case: str, impl: str, args: argparse.Namespace) -> None:
    run, reset = _setup(case, impl, args)
    for _ in range(2):
        run()
    reset()  # the baseline holds the inputs and parameters, not last run's gradients
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    run()
    print(json.dumps({"peak_extra": _status("VmHWM") - before}))


def _peak_extra(case: str, impl: str, argv: list[str]) -> int:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", case, impl],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])["peak_extra"]


def _median_times(case: str, args: argparse.Namespace) -> dict[str, float]:
    runs = {impl: _setup(case, impl, args)[0] for impl in IMPLEMENTATIONS}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    for i in range(args.warmup + args.repeats):
        for impl, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= args.warmup:
                times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(t) for impl, t in times.items()}


def digits_curves(steps: int = 100) -> None:
    """A small MLP trained on scikit-learn's bundled digits, once with each loss, from the same
    initial weights: the loss of every step side by side."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    digits = load_digits()
    for dtype in (torch.float32, torch.float64):
        curves = {}
        for impl, loss_fn in IMPLEMENTATIONS.items():
            x, y = torch.tensor(digits.data / 16.0, dtype=dtype), torch.tensor(digits.target)
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                        torch.nn.Linear(32, 10)).to(dtype)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
            losses = []
            for _ in range(steps):
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            curves[impl] = torch.tensor(losses, dtype=torch.float64)
        ours, theirs = curves["fastxent"], curves["torch"]
        relative = ((ours - theirs).abs() / theirs).max().item()
        print(f"digits, {dtype}, {steps} full-batch SGD steps: loss {theirs[0]:.6f} -> "
              f"{theirs[-1]:.6f} (torch), {ours[-1]:.6f} (fastxent); "
              f"largest relative difference over the curve {relative:.1e}; steps 1, 10, 100: "
              + ", ".join(f"{ours[i]:.10f}/{theirs[i]:.10f}" for i in (0, 9, steps - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--digits", action="store_true", help="compare digits loss curves")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        case, impl = args.child
        _child_peak(case, impl, args)
        return
    if args.digits:
        digits_curves()
        return
    argv = [a for a in sys.argv[1:]]
    mb = 1 << 20
    logits_mb = args.rows * args.classes * torch.finfo(getattr(torch, args.dtype)).bits // 8 / mb
    print(f"fastxent {fastxent.__version__} ({fastxent.backend}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; logits ({args.rows}, {args.classes}) {args.dtype} "
          f"= {logits_mb:.0f} MB")
    print(f"{'case':<26}{'fastxent':>12}{'torch':>12}{'speed-up':>10}"
          f"{'peak extra fastxent':>22}{'torch':>10}{'saved':>10}")
    for case, label in [("loss", "loss forward+backward"), ("step", "training step")]:
        t = _median_times(case, args)
        peak = {impl: _peak_extra(case, impl, argv) for impl in IMPLEMENTATIONS}
        print(f"{label:<26}{t['fastxent'] * 1e3:>10.1f}ms{t['torch'] * 1e3:>10.1f}ms"
              f"{t['torch'] / t['fastxent']:>9.2f}x{peak['fastxent'] / mb:>20.0f}MB"
              f"{peak['torch'] / mb:>8.0f}MB{(peak['torch'] - peak['fastxent']) / mb:>8.0f}MB")


if __name__ == "__main__":
    main()
