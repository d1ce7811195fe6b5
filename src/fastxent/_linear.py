"""Fused linear layer + cross-entropy for large vocabularies, never materialising the logits.

``linear_cross_entropy(hidden, weight, target)`` is ``cross_entropy(hidden @ weight.T + bias,
target)`` for hidden ``(N, H)``, weight ``(V, H)``, integer target ``(N,)``. The rows are done in
chunks of ``R`` rows; for each chunk:

1. ``buf = hidden[r0:r1] @ weight.T (+ bias)``: one matrix product into a reusable ``(R, V)``
   buffer (BLAS, through NumPy's ``matmul``, with BLAS's own threads);
2. the fused cross-entropy kernel (``sparse_xent``, the one behind ``cross_entropy``) turns the
   buffer into the per-row losses and, in place, into the gradient w.r.t. the logits
   ``G = d loss / d logits`` (OpenMP threads, between BLAS calls, never at the same time);
3. ``grad_hidden[r0:r1] = G @ weight`` (written in place), and
   ``grad_weight += G.T @ hidden[r0:r1]`` in blocks of vocabulary rows, through a small
   ``(Vb, H)`` temporary (NumPy's matmul cannot accumulate); ``grad_bias += G.sum(0)``.

Chunk rule (``chunk_size=None``), with ``b`` the item size (4 or 8) and the scratch budget
``CHUNK_BUDGET`` = 24 MiB: seven eighths for the logits buffer (BLAS is more efficient the more
rows a product has: 168 rows instead of 144 saved about 7% at (2048, 1024, 32000)), one eighth
for the gradient temporary,

    R  = min(N, max(8, floor(7/8 * budget / (V * b)) rounded down to a multiple of 8))
    Vb = min(V, max(64, floor(1/8 * budget / (H * b))))

so the scratch stays near 24 MiB whatever N (for V = 32000 float32, R = 168). When fewer than
``ROW_PATH_MIN_ROWS`` = 64 rows fit (and N is larger), accumulating ``grad_weight`` once per
short chunk would cost more than computing the logits twice, and the vocabulary-chunked path
(``_vocab_chunked``) is taken, with all N rows and

    Vb = min(V, max(1024, floor(0.25 * budget / (N * b))))

vocabulary columns at a time (for (512, 128256) float32: Vb = 3072, about 10 MiB of scratch).
An explicit ``chunk_size`` sets R and always takes the row path.

The same code runs on both backends: the fallback's ``sparse_xent`` chunks in NumPy too.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _backend
from . import _reduction as rules
from . import _validation as check
from ._api import FloatArray, Loss, Reduction
from ._reduction import LossOptions

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad", "CHUNK_BUDGET", "chunk_rows"]

#: scratch bytes a call aims for (logits buffer + gradient temporary), see the module docstring
CHUNK_BUDGET = 24 * 2**20
#: below this many rows per chunk (and fewer than N), the vocabulary-chunked path is used
ROW_PATH_MIN_ROWS = 64
#: the share of the budget for the row path's logits buffer (the rest: the gradient temporary)
ROW_BUFFER_FRACTION = 0.875
#: the vocabulary-chunked path: at least this many columns per chunk, from this budget fraction
VOCAB_MIN_COLUMNS = 1024
VOCAB_BUDGET_FRACTION = 0.25


def chunk_rows(n_rows: int, vocab: int, itemsize: int, budget: int | None = None) -> int:
    """R, the rows of logits computed at a time (see the module docstring)."""
    budget = CHUNK_BUDGET if budget is None else budget
    rows = int(ROW_BUFFER_FRACTION * budget) // max(vocab * itemsize, 1)
    rows = max(8, rows - rows % 8)
    return max(1, min(n_rows, rows))


def _vocab_block(vocab: int, hidden: int, itemsize: int, budget: int | None = None) -> int:
    """Vb, the vocabulary rows of grad_weight accumulated through one temporary."""
    budget = CHUNK_BUDGET if budget is None else budget
    return max(1, min(vocab, max(64, int((1.0 - ROW_BUFFER_FRACTION) * budget)
                                      // max(hidden * itemsize, 1))))


def _linear_call(hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss,
                 softcap, chunk_size, n_threads, with_grad, grad_output=1.0):
    h, res_h = check.matrix(hidden, "hidden")
    w, res_w = check.matrix(weight, "weight")
    check.linear_shapes(h.shape, w.shape)
    n, vocab = h.shape[0], w.shape[0]
    compute = np.promote_types(h.dtype, w.dtype)
    result = np.promote_types(res_h, res_w)
    h = check.kernel_ready(h.astype(compute, copy=False))
    w = check.kernel_ready(w.astype(compute, copy=False))
    b = check.linear_bias(bias, w.shape)
    if b is not None:
        b = b.astype(compute, copy=False)
    labels = check.sparse_labels(target, (n,), "logits", (n, vocab), "target")
    options = LossOptions.parse(None, ignore_index, reduction, label_smoothing, z_loss, softcap,
                                vocab)
    rows = check.chunk_size(chunk_size)
    nt = _backend.effective_n_threads(n_threads)
    kernels = _backend.kernels

    labels2 = labels.reshape(n, 1)
    n_bad, counted = kernels.sparse_label_check(labels2, vocab, options.ignore_index, True, None,
                                                nt)
    if n_bad:
        check.labels_in_range(labels, vocab, options.ignore_index)
    denominator = rules.denominator(options.reduction, counted)

    grad_scale, grad_rows = 1.0, None
    if with_grad:
        scale, per_row = check.grad_output(grad_output, options.reduction, (n,))
        if per_row is not None:
            grad_rows = per_row.reshape(n, 1)
        grad_scale = rules.gradient_scale(scale, denominator, bool, counted)

    if rows is None:
        rows = chunk_rows(n, vocab, compute.itemsize)
        if rows < min(n, ROW_PATH_MIN_ROWS):
            return _vocab_chunked(h, w, b, labels, options, denominator, with_grad, grad_scale,
                                  grad_rows, result, nt)
    rows = min(rows, n)
    loss_rows = np.empty((n, 1), dtype=np.float64)
    grad_h = grad_w = grad_b = tmp = None
    if with_grad:
        grad_h = np.empty(h.shape, dtype=compute)
        grad_w = np.zeros(w.shape, dtype=compute) if n == 0 else np.empty(w.shape, dtype=compute)
        if b is not None:
            grad_b = np.zeros(vocab, dtype=np.float64)
    buf = np.empty((max(rows, 1), vocab), dtype=compute)
    terms = rules.kernel_terms(options.z_loss, options.softcap)
    vb = _vocab_block(vocab, h.shape[1], compute.itemsize)
    for r0 in range(0, n, max(rows, 1)):
        r1 = min(n, r0 + rows)
        logits = buf[: r1 - r0]
        h_c = h[r0:r1]
        np.matmul(h_c, w.T, out=logits)
        if b is not None:
            logits += b
        kernels.sparse_xent(
            logits[:, :, None], labels2[r0:r1], None, options.ignore_index, True,
            options.label_smoothing, loss_rows[r0:r1], logits[:, :, None] if with_grad else None,
            grad_scale, None if grad_rows is None else grad_rows[r0:r1], nt, **terms)
        if not with_grad:
            continue
        np.matmul(logits, w, out=grad_h[r0:r1])
        if r0 == 0:
            np.matmul(logits.T, h_c, out=grad_w)
        else:
            if tmp is None:
                tmp = np.empty((vb, h.shape[1]), dtype=compute)
            for v0 in range(0, vocab, vb):
                v1 = min(vocab, v0 + vb)
                t = tmp[: v1 - v0]
                np.matmul(logits[:, v0:v1].T, h_c, out=t)
                grad_w[v0:v1] += t
        if grad_b is not None:
            grad_b += logits.sum(axis=0, dtype=np.float64)
    del buf, tmp

    return _finish(loss_rows[:, 0], options.reduction, denominator, result, with_grad, compute,
                   grad_h, grad_w, grad_b)


def _finish(loss_rows, reduction, denominator, result, with_grad, compute, grad_h, grad_w, grad_b):
    loss = rules.reduce(loss_rows, reduction, denominator, result, loss_rows.shape)
    if not with_grad:
        return loss
    grads = [grad_h, grad_w] + ([grad_b.astype(compute)] if grad_b is not None else [])
    if result != compute:
        grads = [g.astype(result) for g in grads]
    return (loss, *grads)


def _vocab_chunked(h, w, b, labels, options, denominator, with_grad, grad_scale, grad_rows,
                   result, nt):
    """The vocabulary-chunked path, for vocabularies so large that a row chunk within the budget
    would be too short for BLAS to accumulate ``grad_weight`` efficiently (see the module
    docstring). All N rows, ``Vb`` vocabulary columns at a time, in two passes:

    1. ``L = hidden @ weight[v].T``, per-row log-sum-exp of the chunk (the ``logsumexp`` kernel),
       combined across chunks in float64 (``logaddexp``); the label's logit and, for label
       smoothing, the row sums are picked up on the way;
    2. ``L`` again, turned in place into ``G = coef ((1 + 2 z lse) p - eps / V - (1 - eps)
       onehot) * cap'`` with ``p = exp(v - lse)``; then ``grad_hidden += G @ weight[v]`` (through
       an ``(N, H)`` temporary) and ``grad_weight[v] = G.T @ hidden`` (written once).

    One more product than the row path (the logits are computed twice) but no pass over
    ``grad_weight`` per chunk. Softcap needs a second chunk buffer for tanh, so ``Vb`` is halved.
    """
    kernels = _backend.kernels
    ignore, smoothing = options.ignore_index, options.label_smoothing
    z, cap = options.z_loss, options.softcap
    n, hidden = h.shape
    vocab = w.shape[0]
    dtype = h.dtype
    vb = max(1, min(vocab, max(VOCAB_MIN_COLUMNS,
                               int(VOCAB_BUDGET_FRACTION * CHUNK_BUDGET) // (n * dtype.itemsize))))
    if cap:  # two chunk buffers (logits and tanh): half the columns each, the same scratch
        vb = max(1, min(vocab, max(VOCAB_MIN_COLUMNS // 2, vb // 2)))
    buf = np.empty((n, vb), dtype=dtype)
    tbuf = np.empty((n, vb), dtype=dtype) if cap else None
    lse_v = np.empty((n, 1), dtype=dtype)
    lse = np.full(n, -np.inf)
    x_y = np.zeros(n)
    row_sum = np.zeros(n)
    counted = labels != ignore if ignore is not None else np.ones(n, dtype=bool)
    # -1 (no column) for an ignored row, written into the int64 copy: np.where(counted, labels, -1)
    # would give -1 the labels' dtype, which NumPy >= 2.5 refuses for unsigned labels.
    y = labels.astype(np.int64)
    y[~counted] = -1

    def logits(v0, v1, out):
        np.matmul(h, w[v0:v1].T, out=out)
        if b is not None:
            out += b[v0:v1]
        if cap:  # v = s tanh(x / s), in place; tanh(x / s) kept in tbuf for the slope
            t = tbuf[:, : v1 - v0]
            np.divide(out, cap, out=t)
            np.tanh(t, out=t)
            np.multiply(t, cap, out=out)
        return out

    def label_rows(v0, v1):
        rows = np.flatnonzero((y >= v0) & (y < v1))
        return rows, y[rows] - v0

    with np.errstate(all="ignore"):
        for v0 in range(0, vocab, vb):  # pass 1: lse, the label's logit, row sums
            v1 = min(vocab, v0 + vb)
            chunk = logits(v0, v1, buf[:, : v1 - v0])
            rows, cols = label_rows(v0, v1)
            x_y[rows] = chunk[rows, cols]
            if smoothing:
                row_sum += chunk.sum(axis=1, dtype=np.float64)
            kernels.logsumexp(chunk[:, :, None], lse_v, nt)
            np.logaddexp(lse, lse_v[:, 0], out=lse)
        bad = ~np.isfinite(lse)
        loss_rows = (1.0 - smoothing) * (lse - x_y) + z * lse * lse
        if smoothing:
            loss_rows += smoothing / vocab * (vocab * lse - row_sum)
        loss_rows[~counted] = 0.0
        loss_rows[counted & bad] = np.nan

    grad_h = grad_w = grad_b = None
    if with_grad:
        grad_h = np.empty((n, hidden), dtype=dtype)
        grad_w = np.empty(w.shape, dtype=dtype)
        grad_b = np.zeros(vocab) if b is not None else None
        tmp = np.empty((n, hidden), dtype=dtype) if vocab > vb else None
        coef = np.full(n, grad_scale) if grad_rows is None else grad_scale * grad_rows[:, 0]
        coef = np.where(counted, coef, 0.0)
        with np.errstate(invalid="ignore"):  # a counted row of infinite lse: NaN, as below
            scale = (coef * (1.0 + 2.0 * z * np.where(counted, lse, 0.0)))[:, None]
        spread = (coef * (smoothing / vocab))[:, None]
        # rows with ignored targets are set to 0 at the end: exp(L - lse) * 0 is NaN when their
        # logits overflow (lse = inf), and G.T @ hidden would spread it over grad_weight
        ignored = np.flatnonzero(~counted)
        with np.errstate(all="ignore"):
            for v0 in range(0, vocab, vb):  # pass 2: the gradients
                v1 = min(vocab, v0 + vb)
                g = logits(v0, v1, buf[:, : v1 - v0])
                np.subtract(g, lse[:, None], out=g)  # in float64, rounded once
                np.exp(g, out=g)
                np.multiply(g, scale, out=g)
                if smoothing:
                    np.subtract(g, spread, out=g)
                rows, cols = label_rows(v0, v1)
                g[rows, cols] -= (coef[rows] * (1.0 - smoothing)).astype(dtype)
                if cap:  # times d v / d x = 1 - tanh^2(x / s)
                    t = tbuf[:, : v1 - v0]
                    np.multiply(t, t, out=t)
                    np.subtract(1.0, t, out=t)
                    g *= t
                g[bad & counted] = np.nan
                if ignored.size:
                    g[ignored] = 0.0
                if v0 == 0:
                    np.matmul(g, w[v0:v1], out=grad_h)
                else:
                    np.matmul(g, w[v0:v1], out=tmp)
                    grad_h += tmp
                np.matmul(g.T, h, out=grad_w[v0:v1])
                if grad_b is not None:
                    grad_b[v0:v1] = g.sum(axis=0, dtype=np.float64)
        if n == 0:
            grad_w[...] = 0.0
    return _finish(loss_rows, options.reduction, denominator, result, with_grad, dtype, grad_h,
                   grad_w, grad_b)


# A reduction gives a NumPy scalar, reduction="none" an array of shape (N,).
@overload
def linear_cross_entropy(hidden: ArrayLike, weight: ArrayLike, target: ArrayLike, *,
                         bias: ArrayLike | None = None, ignore_index: int = -100,
                         reduction: Literal["mean", "sum"] = "mean", label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: float | None = None,
                         chunk_size: int | None = None,
                         n_threads: int | None = None) -> np.floating[Any]: ...
@overload
def linear_cross_entropy(hidden: ArrayLike, weight: ArrayLike, target: ArrayLike, *,
                         bias: ArrayLike | None = None, ignore_index: int = -100,
                         reduction: Literal["none"], label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: float | None = None,
                         chunk_size: int | None = None,
                         n_threads: int | None = None) -> FloatArray: ...
@overload
def linear_cross_entropy(hidden: ArrayLike, weight: ArrayLike, target: ArrayLike, *,
                         bias: ArrayLike | None = None, ignore_index: int = -100,
                         reduction: Reduction, label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: float | None = None,
                         chunk_size: int | None = None,
                         n_threads: int | None = None) -> Loss: ...


def linear_cross_entropy(hidden: ArrayLike, weight: ArrayLike, target: ArrayLike, *,
                         bias: ArrayLike | None = None, ignore_index: int = -100,
                         reduction: Reduction = "mean", label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: float | None = None,
                         chunk_size: int | None = None,
                         n_threads: int | None = None) -> Loss:
    """``cross_entropy(hidden @ weight.T + bias, target)`` without the ``(N, V)`` logits.

    The logits are computed a chunk at a time into one reusable buffer, so the memory beyond the
    inputs stays near 24 MiB whatever N and V.

    Parameters
    ----------
    hidden : array_like
        The last hidden states, shape ``(N, H)``.
    weight : array_like
        The output layer's weight, shape ``(V, H)``: PyTorch's ``nn.Linear(H, V).weight``.
    target : array_like of int
        Class indices, shape ``(N,)``, in ``[0, V)`` or equal to ``ignore_index``.
    bias : array_like, optional
        The output layer's bias, shape ``(V,)``.
    ignore_index : int, default -100
        A class index whose rows contribute nothing, as in :func:`cross_entropy`.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As in :func:`cross_entropy` (``'none'``: shape ``(N,)``).
    label_smoothing : float, default 0.0
        As in :func:`cross_entropy`.
    z_loss : float, default 0.0
        As in :func:`cross_entropy`.
    softcap : float, optional
        As in :func:`cross_entropy`.
    chunk_size : int, optional
        Rows of logits computed at a time. None chooses it from a scratch budget of 24 MiB (the
        user guide's Large vocabularies page gives the rule); a given size always takes the row
        path.
    n_threads : int, optional
        The cross-entropy kernel's threads (None: every thread OpenMP may use). The matrix
        products run on BLAS's own threads, which ``threadpoolctl`` sets.

    Returns
    -------
    numpy scalar or ndarray
        The loss: a NumPy scalar for ``'mean'`` and ``'sum'``, shape ``(N,)`` for ``'none'``;
        float32 when ``hidden`` and ``weight`` are float32, else float64.

    Raises
    ------
    IndexError
        If a class index is outside ``[0, V)`` and not ``ignore_index``.
    ValueError
        If ``hidden`` and ``weight`` differ in ``H``, ``bias`` is not of shape ``(V,)``, the target
        is not of shape ``(N,)``, or an option is out of range (``chunk_size`` < 1 included).
    TypeError
        If the target is not integer, or an argument has the wrong type.

    See Also
    --------
    linear_cross_entropy_with_grad : The loss and the three gradients.
    cross_entropy : The loss of given logits.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> h = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> w = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    >>> fx.linear_cross_entropy(h, w, [0, 2])
    np.float64(1.7887259920003329)
    >>> float(fx.cross_entropy(h @ w.T, [0, 2]))
    1.7887259920003329
    """
    return _linear_call(hidden, weight, target, bias, ignore_index, reduction, label_smoothing,
                        z_loss, softcap, chunk_size, n_threads, with_grad=False)


# Three results without a bias, four with one (its gradient last).
@overload
def linear_cross_entropy_with_grad(hidden: ArrayLike, weight: ArrayLike, target: ArrayLike, *,
                                   bias: None = None, ignore_index: int = -100,
                                   reduction: Reduction = "mean", label_smoothing: float = 0.0,
                                   z_loss: float = 0.0, softcap: float | None = None,
                                   grad_output: ArrayLike = 1.0, chunk_size: int | None = None,
                                   n_threads: int | None = None
                                   ) -> tuple[Loss, FloatArray, FloatArray]: ...
@overload
def linear_cross_entropy_with_grad(hidden: ArrayLike, weight: ArrayLike, target: ArrayLike, *,
                                   bias: ArrayLike, ignore_index: int = -100,
                                   reduction: Reduction = "mean", label_smoothing: float = 0.0,
                                   z_loss: float = 0.0, softcap: float | None = None,
                                   grad_output: ArrayLike = 1.0, chunk_size: int | None = None,
                                   n_threads: int | None = None
                                   ) -> tuple[Loss, FloatArray, FloatArray, FloatArray]: ...


def linear_cross_entropy_with_grad(hidden: ArrayLike, weight: ArrayLike, target: ArrayLike, *,
                                   bias: ArrayLike | None = None, ignore_index: int = -100,
                                   reduction: Reduction = "mean", label_smoothing: float = 0.0,
                                   z_loss: float = 0.0, softcap: float | None = None,
                                   grad_output: ArrayLike = 1.0, chunk_size: int | None = None,
                                   n_threads: int | None = None
                                   ) -> tuple[Loss, FloatArray, FloatArray] | tuple[
                                       Loss, FloatArray, FloatArray, FloatArray]:
    """The loss of :func:`linear_cross_entropy` and its gradients, fused chunk by chunk.

    Parameters
    ----------
    hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`linear_cross_entropy`.
    grad_output : array_like, default 1.0
        The gradient flowing into the loss: a scalar for ``'mean'`` and ``'sum'``, an array of
        shape ``(N,)`` for ``'none'``.
    chunk_size, n_threads
        As in :func:`linear_cross_entropy`.

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`linear_cross_entropy`.
    grad_hidden : ndarray
        ``d(grad_output * loss) / d hidden``, shape ``(N, H)``.
    grad_weight : ndarray
        ``d(grad_output * loss) / d weight``, shape ``(V, H)``.
    grad_bias : ndarray
        ``d(grad_output * loss) / d bias``, shape ``(V,)``; returned only when ``bias`` is given.

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`linear_cross_entropy`; ``ValueError`` also if ``grad_output`` has the wrong
        shape.

    See Also
    --------
    linear_cross_entropy, cross_entropy_with_grad

    Notes
    -----
    The gradients have the dtype of the computation: float32 when ``hidden`` and ``weight`` are
    both float32, else float64 (float16 inputs give float16).

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> h = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> w = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    >>> loss, grad_h, grad_w, grad_b = fx.linear_cross_entropy_with_grad(
    ...     h, w, [0, 2], bias=np.zeros(3))
    >>> grad_h
    array([[ 0.8227897 , -0.86479977],
           [ 0.46766634,  0.28760519]])
    >>> grad_b
    array([-0.11028192,  0.46691265, -0.35663073])
    """
    return _linear_call(hidden, weight, target, bias, ignore_index, reduction, label_smoothing,
                        z_loss, softcap, chunk_size, n_threads, with_grad=True,
                        grad_output=grad_output)
