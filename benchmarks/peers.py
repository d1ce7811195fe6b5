"""What the benchmark runs: the cases, their data, and one table entry per implementation.

Every peer computes the same thing a user asks for: the mean softmax cross-entropy of a batch,
and for the fused mode also its gradient with respect to the logits, each the way that
library is meant to be used. Work a user could not avoid (the layout copies scikit-learn
needs for a class axis that is not last, the gradient buffer a call allocates) stays inside
the timed call; work done once per training run (moving data into a framework, jit
compilation, preallocating an `out=` buffer) happens in `setup`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

#: (N, C) shapes of the issue, and one segmentation-style (N, C, H, W) case, class axis 1.
SHAPES: list[tuple[int, ...]] = [(64, 10), (4096, 10), (65536, 10), (8192, 1000), (2048, 32000),
                                 (256, 128256), (32, 21, 128, 128)]
#: --quick: small, medium, many-classes and K-dim, enough to exercise every code path.
QUICK_SHAPES: list[tuple[int, ...]] = [(64, 10), (65536, 10), (8192, 1000), (32, 21, 128, 128)]

Labels = str  # "sparse" (class indices) or "dense" (a distribution per row)
Mode = str  # "forward" (the loss) or "fused" (the loss and its gradient)


@dataclass(frozen=True)
class Case:
    """One measured configuration; every peer runs on the same data for it."""

    shape: tuple[int, ...]
    dtype: str
    labels: Labels
    mode: Mode
    threads: int

    @property
    def name(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def key(self) -> str:
        """What `--cases` substrings are matched against."""
        return f"{self.name} {self.dtype} {self.labels} {self.mode} t{self.threads}"

    @property
    def n_classes(self) -> int:
        return self.shape[1]

    @property
    def n_rows(self) -> int:
        """Rows of the loss: every position of (N, d1, ...) is one row."""
        return math.prod(self.shape) // self.n_classes

    def bytes_moved(self) -> int:
        """The least memory traffic of the task, the numerator of every GB/s figure: read the
        logits and the labels once, and write the gradient once in the fused mode."""
        itemsize = np.dtype(self.dtype).itemsize
        logits = math.prod(self.shape) * itemsize
        labels = logits if self.labels == "dense" else self.n_rows * 8  # int64 indices
        return logits + labels + (logits if self.mode == "fused" else 0)


def make_data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal logits (C-contiguous, class axis 1) and labels, the same for every peer."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype)
    if case.labels == "sparse":
        shape = case.shape[:1] + case.shape[2:]
        return logits, rng.integers(0, case.n_classes, shape, dtype=np.int64)
    weights = rng.random(case.shape).astype(case.dtype)
    return logits, weights / weights.sum(axis=1, keepdims=True)


class Skip(Exception):
    """A peer that cannot run a case (not installed, or the case is outside what it does)."""


State = Any  # whatever a peer's setup prepares; only its own callables look inside


@dataclass(frozen=True)
class Peer:
    """One row of the peer table.

    `setup(case, logits, labels)` prepares inputs once (and sets the peer's thread count);
    `forward(state)` returns the mean loss; `fused(state)` returns (mean loss, gradient).
    Either may be None when the peer has no such mode. `memory` names how peak extra memory
    is measured (see memory.py); `threads` says how the case's thread count reaches the peer.
    """

    name: str
    requires: tuple[str, ...]
    setup: Callable[[Case, np.ndarray, np.ndarray], State]
    forward: Callable[[State], object] | None
    fused: Callable[[State], object] | None
    memory: str  # "tracemalloc", "torch", or "n/a"
    threads: str

    def missing(self) -> list[str]:
        """Modules this peer needs that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def callable_for(self, case: Case, logits: np.ndarray,
                     labels: np.ndarray) -> Callable[[], object]:
        step = self.forward if case.mode == "forward" else self.fused
        if step is None:
            raise Skip(f"{self.name} has no {case.mode} mode")
        state = self.setup(case, logits, labels)
        return lambda: step(state)


# ------------------------------------------------------------------------------------------
# fastxent: the PyTorch-family entry points for class indices, the TensorFlow family for
# dense labels (a distribution per row, class axis last), as a user of each would call them.
# ------------------------------------------------------------------------------------------

@dataclass
class _Inputs:
    """Prepared arrays for a peer: x logits, y labels, out a preallocated buffer if any."""

    case: Case
    x: Any
    y: Any
    out: Any = None
    extra: Any = None


def _fastxent_setup(case: Case, logits: np.ndarray, labels: np.ndarray) -> _Inputs:
    return _Inputs(case, logits, labels)


def _fastxent_out_setup(case: Case, logits: np.ndarray, labels: np.ndarray) -> _Inputs:
    return _Inputs(case, logits, labels, out=np.empty_like(logits))


def _fastxent_forward(s: _Inputs) -> object:
    import fastxent

    if s.case.labels == "sparse":
        return fastxent.cross_entropy(s.x, s.y, n_threads=s.case.threads)
    return fastxent.softmax_cross_entropy_with_logits(s.y, s.x, n_threads=s.case.threads).mean()


def _fastxent_fused(s: _Inputs) -> object:
    """The dense form returns the gradient of the summed per-row losses (TensorFlow's
    convention) where the peers return that of the mean: the same work, scaled by 1/N."""
    import fastxent

    if s.case.labels == "sparse":
        return fastxent.cross_entropy_with_grad(s.x, s.y, out=s.out, n_threads=s.case.threads)
    loss, grad = fastxent.softmax_cross_entropy_with_logits_and_grad(
        s.y, s.x, out=s.out, n_threads=s.case.threads)
    return loss.mean(), grad


# ------------------------------------------------------------------------------------------
# NumPy, the way a user writes it: max, subtract, exp, sum, log, gather; class axis 1.
# Its element-wise ufuncs are single-threaded whatever threadpoolctl says.
# ------------------------------------------------------------------------------------------

def _numpy_forward(s: _Inputs) -> object:
    x, y = s.x, s.y
    shifted = x - x.max(axis=1, keepdims=True)
    log_sums = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    if s.case.labels == "sparse":
        picked = np.take_along_axis(shifted, y[:, None], axis=1)
        return (log_sums - picked).mean()
    return -(y * (shifted - log_sums)).sum(axis=1).mean()


def _numpy_fused(s: _Inputs) -> object:
    x, y = s.x, s.y
    shifted = x - x.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    sums = exps.sum(axis=1, keepdims=True)
    grad = exps / sums
    if s.case.labels == "sparse":
        index = y[:, None]
        loss = (np.log(sums) - np.take_along_axis(shifted, index, axis=1)).mean()
        np.put_along_axis(grad, index, np.take_along_axis(grad, index, axis=1) - 1, axis=1)
    else:
        loss = -(y * (shifted - np.log(sums))).sum(axis=1).mean()
        grad -= y
    grad /= s.case.n_rows
    return loss, grad


# ------------------------------------------------------------------------------------------
# PyTorch: F.cross_entropy (class axis 1, probability targets for dense labels), and
# forward + loss.backward() for the fused mode.
# ------------------------------------------------------------------------------------------

def _torch_setup(case: Case, logits: np.ndarray, labels: np.ndarray) -> _Inputs:
    import torch

    torch.set_num_threads(case.threads)
    x = torch.from_numpy(logits)
    leaf = x.clone().requires_grad_()  # a leaf that collects .grad, as a model's output would
    return _Inputs(case, x, torch.from_numpy(labels), extra=leaf)


def _torch_forward(s: _Inputs) -> object:
    import torch.nn.functional as F

    return F.cross_entropy(s.x, s.y)


def _torch_fused(s: _Inputs) -> object:
    import torch.nn.functional as F

    leaf = s.extra
    loss = F.cross_entropy(leaf, s.y)
    loss.backward()
    grad, leaf.grad = leaf.grad, None  # hand the gradient to the caller, as the others do
    return loss, grad


# ------------------------------------------------------------------------------------------
# JAX + optax: jax.jit of the mean loss, jax.jit(jax.value_and_grad(...)) for the fused mode.
# XLA's CPU thread pool is sized at start-up and cannot be changed inside a process.
# ------------------------------------------------------------------------------------------

def _jax_setup(case: Case, logits: np.ndarray, labels: np.ndarray) -> _Inputs:
    import jax
    import jax.numpy as jnp
    import optax

    jax.config.update("jax_enable_x64", True)  # float64 cases; float32 arrays stay float32
    if case.labels == "sparse":
        def loss_fn(z: Any, t: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(z, t, axis=1).mean()
    else:
        def loss_fn(z: Any, t: Any) -> Any:
            return optax.softmax_cross_entropy(z, t, axis=1).mean()
    step = jax.jit(loss_fn if case.mode == "forward" else jax.value_and_grad(loss_fn))
    return _Inputs(case, jnp.asarray(logits), jnp.asarray(labels), extra=step)


def _jax_call(s: _Inputs) -> object:
    import jax

    return jax.block_until_ready(s.extra(s.x, s.y))


# ------------------------------------------------------------------------------------------
# scikit-learn: HalfMultinomialLoss (the multinomial deviance / 2 = cross-entropy), which
# takes raw_prediction (n_samples, n_classes) C-contiguous, y_true as float class indices and
# n_threads. Called without loss_out/gradient_out it allocates them, as every other default
# call here does. Class indices only.
# ------------------------------------------------------------------------------------------

def _sklearn_setup(case: Case, logits: np.ndarray, labels: np.ndarray) -> _Inputs:
    from sklearn._loss.loss import HalfMultinomialLoss

    if case.labels != "sparse":
        raise Skip("scikit-learn takes class indices only")
    y = labels.reshape(-1).astype(logits.dtype)  # float class indices, as it requires
    return _Inputs(case, logits, y, extra=HalfMultinomialLoss(n_classes=case.n_classes))


def _classes_last(x: np.ndarray) -> np.ndarray:
    """(N, C, d...) -> (N * d..., C), a copy for K-dim input (scikit-learn needs C-order)."""
    return x if x.ndim == 2 else np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, x.shape[1])


def _sklearn_forward(s: _Inputs) -> object:
    loss = s.extra.loss(y_true=s.y, raw_prediction=_classes_last(s.x), n_threads=s.case.threads)
    return loss.mean()


def _sklearn_fused(s: _Inputs) -> object:
    loss, grad = s.extra.loss_gradient(y_true=s.y, raw_prediction=_classes_last(s.x),
                                       n_threads=s.case.threads)
    if len(s.case.shape) > 2:  # back to the caller's (N, C, d...) layout
        grad = np.ascontiguousarray(np.moveaxis(grad.reshape(
            s.case.shape[:1] + s.case.shape[2:] + s.case.shape[1:2]), -1, 1))
    return loss.mean(), grad


# ------------------------------------------------------------------------------------------
# Rooflines: the least traffic of the task at the memory bandwidth NumPy reaches, split over
# the case's threads. Fused: copy the logits into a preallocated buffer (np.copyto; for dense
# labels np.subtract(logits, labels, out=), which reads both); forward: read them once (max).
# ------------------------------------------------------------------------------------------

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _roofline_setup(case: Case, logits: np.ndarray, labels: np.ndarray) -> _Inputs:
    rows = logits.reshape(logits.shape[0], -1)
    dense = labels.reshape(rows.shape) if case.labels == "dense" else None
    # threads only pay off on arrays larger than the caches
    parts = case.threads if rows.nbytes > (4 << 20) else 1
    blocks = np.array_split(np.arange(rows.shape[0]), parts)
    bounds = [(int(c[0]), int(c[-1]) + 1) for c in blocks if len(c)]
    if len(bounds) > 1 and len(bounds) not in _POOLS:
        _POOLS[len(bounds)] = ThreadPoolExecutor(len(bounds))
    return _Inputs(case, rows, dense, out=np.empty_like(rows), extra=bounds)


def _roofline(s: _Inputs, work: Callable[[int, int], object]) -> object:
    if len(s.extra) == 1:
        return work(*s.extra[0])
    return list(_POOLS[len(s.extra)].map(lambda b: work(*b), s.extra))


def _roofline_forward(s: _Inputs) -> object:
    if s.y is None:
        return _roofline(s, lambda a, b: s.x[a:b].max())
    return _roofline(s, lambda a, b: (s.x[a:b].max(), s.y[a:b].max()))


def _roofline_fused(s: _Inputs) -> object:
    if s.y is None:
        return _roofline(s, lambda a, b: np.copyto(s.out[a:b], s.x[a:b]))
    return _roofline(s, lambda a, b: np.subtract(s.x[a:b], s.y[a:b], out=s.out[a:b]))


def roofline_bytes(case: Case) -> int:
    """What the roofline actually moves: the task's least traffic less the index labels."""
    return case.bytes_moved() - (case.n_rows * 8 if case.labels == "sparse" else 0)


FASTXENT = "fastxent"
FASTXENT_OUT = "fastxent out="
ROOFLINE = "roofline"

PEERS: list[Peer] = [
    Peer(FASTXENT, ("fastxent",), _fastxent_setup, _fastxent_forward, _fastxent_fused,
         "tracemalloc", "n_threads="),
    Peer(FASTXENT_OUT, ("fastxent",), _fastxent_out_setup, None, _fastxent_fused,
         "tracemalloc", "n_threads="),
    Peer("NumPy naive", (), _fastxent_setup, _numpy_forward, _numpy_fused,
         "tracemalloc", "single-threaded ufuncs"),
    Peer("PyTorch", ("torch",), _torch_setup, _torch_forward, _torch_fused,
         "torch", "torch.set_num_threads"),
    Peer("JAX", ("jax", "optax"), _jax_setup, _jax_call, _jax_call,
         "n/a", "all cores (XLA's pool is fixed at start-up)"),
    Peer("scikit-learn", ("sklearn",), _sklearn_setup, _sklearn_forward, _sklearn_fused,
         "tracemalloc", "n_threads="),
    Peer(ROOFLINE, (), _roofline_setup, _roofline_forward, _roofline_fused,
         "n/a", "a thread pool over row blocks"),
]
