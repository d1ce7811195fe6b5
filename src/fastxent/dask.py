"""fastxent on ``dask.array``: logits chunked along rows, beyond one machine's memory.

``import fastxent.dask`` (needs Dask; ``pip install fastxent[dask]``)::

    import dask.array as da, fastxent.dask as fxd
    logits = da.from_array(np.load("logits.npy", mmap_mode="r"), chunks=(65536, -1))
    loss, grad = fxd.cross_entropy_with_grad(logits, labels)     # lazy
    da.compute(loss, da.to_zarr(grad, "grad.zarr", compute=False))

Every function has the semantics of its in-memory namesake in ``fastxent`` and returns lazy
dask arrays. Each block of rows runs the fused kernel once (a loss and its gradient come from
the same task). The class axis must be one chunk; it is rechunked to one if it is not.
Reductions add per-block float64 sums of the per-row losses, and ``mean`` divides by the
total weight of the targets (computed from the targets alone), so a reduced loss equals the
in-memory one to an ulp or two of summation order; per-row losses and gradients are the same
bits. All-ignored ``mean`` is NaN with a zero gradient, as in memory.

A bad class index raises the in-memory ``IndexError`` (with the position in the whole target)
when the block holding it is computed; with several bad labels, the first block to run reports.

``n_threads=None`` gives each block ``max(1, threads // number of blocks)`` threads, where
``threads`` is what OpenMP may use on the machine that runs the block (its cores, unless
``OMP_NUM_THREADS`` or threadpoolctl limit them): with at least as many blocks as cores, dask's
own workers (one thread per core by default) are the parallelism and the kernels, which release
the GIL, use one thread each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

from . import _api, _backend
from . import _reduction as rules
from . import _validation as check
from ._reduction import LossOptions

__all__ = [
    "cross_entropy", "cross_entropy_with_grad",
    "softmax", "log_softmax", "logsumexp",
    "softmax_cross_entropy_with_logits", "softmax_cross_entropy_with_logits_and_grad",
    "sparse_softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits_and_grad",
]


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def _logits(x: Any, name: str) -> da.Array:
    arr = da.asarray(x)
    check.real_dtype(arr.dtype, name)
    check.at_least_1d(arr, name)
    return arr


def _result_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype fastxent returns for inputs of ``dtype`` (float16 stays float16, ints ->
    float64)."""
    return _api.softmax(np.zeros(1, dtype)).dtype


def _whole_axis(x: da.Array, axis: int) -> da.Array:
    """``x`` with its class axis in one chunk: a kernel needs whole rows."""
    return x.rechunk({axis: -1}) if len(x.chunks[axis]) > 1 else x


def _aligned(a: Any, chunks: tuple[tuple[int, ...], ...]) -> da.Array:
    """``a`` (NumPy or dask) as a dask array chunked exactly as ``chunks``."""
    if isinstance(a, da.Array):
        return a if a.chunks == chunks else a.rechunk(chunks)
    return da.from_array(np.asarray(a), chunks=chunks)


def _ones_chunks(x: da.Array) -> tuple[tuple[int, ...], ...]:
    """One element per block: the chunks of an array of per-block partial results."""
    return tuple((1,) * len(c) for c in x.chunks)


def _sum_partials(parts: da.Array) -> da.Array:
    return parts.sum(dtype=np.float64)


def _mean(total: np.ndarray, denominator: np.ndarray, result: np.dtype) -> np.ndarray:
    return np.asarray(rules.reduce(total, "mean", float(denominator), result, ()))


def _gradient_scale(grad_output: np.ndarray, denominator: np.ndarray,
                    counted: np.ndarray) -> np.ndarray:
    return np.asarray(rules.gradient_scale(float(grad_output), float(denominator), bool,
                                           float(counted)))


# ------------------------------------------------------------------------------------------
# The block functions (run by the workers)
# ------------------------------------------------------------------------------------------

def _loss_block(x: np.ndarray, labels: np.ndarray, scale: Any = None, *, fn: Callable,
                label_axis: int, sparse: bool, n_classes: int, ignore_index: int | None,
                n_threads: int | None, n_blocks: int, with_grad: bool, keep: str,
                block_info: dict | None = None) -> Any:
    """One block of rows through the fused kernel.

    ``labels`` carries a length-1 class axis (sparse) so that its blocks line up with the
    logits'; ``scale`` is the gradient factor (a 0-d array, or per-row factors with a length-1
    class axis). Returns the per-row losses (``keep="rows"``), their float64 sum with every
    axis kept (``keep="sum"``), or ``(losses, grad)`` for a pair array.
    """
    if sparse:
        labels = labels.reshape(labels.shape[:label_axis] + labels.shape[label_axis + 1:])
    kwargs: dict[str, Any] = {"n_threads": _backend.effective_n_threads(n_threads, n_blocks)}
    if with_grad:
        factor = np.asarray(scale)
        if factor.ndim:  # per-row factors, reduction "none"
            factor = factor.reshape(factor.shape[:label_axis] + factor.shape[label_axis + 1:])
        kwargs["grad_output"] = factor if factor.ndim else float(factor)
    try:
        result = fn(x, labels, **kwargs)
    except IndexError:
        if sparse and block_info is not None:  # the in-memory error, at its index in the target
            start = [lo for lo, _ in block_info[0]["array-location"]]
            del start[label_axis]
            check.labels_in_range(labels, n_classes, ignore_index, tuple(start))
        raise
    losses, grad = result if with_grad else (result, None)
    losses = np.asarray(losses)
    if keep == "sum":
        losses = np.full((1,) * x.ndim, losses.sum(dtype=np.float64))
    else:  # a length-1 class axis keeps the blocks of logits and losses lined up
        losses = np.expand_dims(losses, label_axis)
    return (losses, grad) if with_grad else losses


def _weight_total_block(labels: np.ndarray, *, weight: np.ndarray | None, ignore_index: int,
                        n_classes: int, ndim: int) -> np.ndarray:
    """Σ w[y] over the rows not ignored (the ``mean`` denominator), from the targets alone.
    Bad labels count nothing here: the kernel raises for them in the same block."""
    y = labels[labels != ignore_index]
    y = y[(y >= 0) & (y < n_classes)] if y.dtype.kind == "i" else y[y < n_classes]
    total = float(len(y)) if weight is None else float(weight[y].sum(dtype=np.float64))
    return np.full((1,) * ndim, total)


def _first(pair: tuple) -> np.ndarray:
    return pair[0]


def _second(pair: tuple) -> np.ndarray:
    return pair[1]


# ------------------------------------------------------------------------------------------
# The shared driver: blocks of rows -> losses (reduced or not) and the gradient
# ------------------------------------------------------------------------------------------

def _run(x: da.Array, labels: Any, axis: int, fn: Callable, *, sparse: bool, reduction: str,
         result: np.dtype, denominator: Any, grad_output: Any, with_grad: bool,
         ignore_index: int | None, n_threads: int | None, counted: Any = None) -> Any:
    """The lazy loss (and gradient) of ``fn`` (an in-memory fastxent function of one block,
    reduction "none") over the blocks of ``x``; ``axis`` is the class axis, in one chunk.
    ``counted``: the number of targets not ignored, when ``denominator`` is a sum of weights."""
    x = _whole_axis(x, axis)
    loss_chunks = x.chunks[:axis] + x.chunks[axis + 1:]
    if sparse:
        y = da.expand_dims(_aligned(labels, loss_chunks), axis)  # blocks line up with x's
    else:
        y = _aligned(labels, x.chunks)
    common = dict(fn=fn, label_axis=axis, sparse=sparse, n_classes=x.shape[axis],
                  ignore_index=ignore_index, n_threads=n_threads, n_blocks=math.prod(x.numblocks),
                  with_grad=with_grad)

    args: list[Any] = [x, y]
    if with_grad:
        if reduction == "none" and np.ndim(grad_output):
            rows = da.broadcast_to(da.asarray(grad_output),
                                   tuple(x.shape[:axis] + x.shape[axis + 1:]))
            args.append(da.expand_dims(_aligned(rows, loss_chunks), axis))
        else:
            args.append(da.map_blocks(
                _gradient_scale, da.asarray(grad_output), da.asarray(denominator),
                da.asarray(denominator if counted is None else counted),
                dtype=np.float64, meta=np.empty((), np.float64)))

    keep = "rows" if reduction == "none" else "sum"
    if keep == "rows":
        row_chunks = x.chunks[:axis] + ((1,),) + x.chunks[axis + 1:]
        loss_kw: dict[str, Any] = dict(chunks=row_chunks, dtype=result,
                                       meta=np.empty((0,) * x.ndim, result))
    else:
        loss_kw = dict(chunks=_ones_chunks(x), dtype=np.float64, meta=np.empty((0,) * x.ndim))
    if with_grad:
        pairs = da.map_blocks(_loss_block, *args, keep=keep, **common, dtype=object,
                              meta=np.empty((0,) * x.ndim, dtype=object))
        losses = da.map_blocks(_first, pairs, **loss_kw)
        grad = da.map_blocks(_second, pairs, dtype=result, meta=np.empty((0,) * x.ndim, result))
    else:
        losses = da.map_blocks(_loss_block, *args, keep=keep, **common, **loss_kw)
        grad = None

    if reduction == "none":
        losses = losses[(slice(None),) * axis + (0,)]  # drop the length-1 class axis
    elif reduction == "sum":
        losses = _sum_partials(losses).astype(result)
    elif reduction == "mean":
        losses = da.map_blocks(_mean, _sum_partials(losses), da.asarray(denominator),
                               result=result, dtype=result, meta=np.empty((), result))
    return (losses, grad) if with_grad else losses


def _squeeze_row(value: Any) -> Any:
    """Undo the one-row view of 1-D input."""
    if isinstance(value, tuple):
        return tuple(_squeeze_row(v) for v in value)
    return value if value is None or value.ndim == 0 else value[0]


# ------------------------------------------------------------------------------------------
# PyTorch family
# ------------------------------------------------------------------------------------------

def _torch_call(input: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any,
                label_smoothing: Any, grad_output: Any, n_threads: int | None,
                with_grad: bool) -> Any:
    x = _logits(input, "input")
    one_row = x.ndim == 1
    class_axis = 0 if one_row else 1
    c = check.n_classes(x.shape, class_axis, "input")
    options = LossOptions.parse(weight, ignore_index, reduction, label_smoothing, 0.0, None, c)
    reduction, ignore = options.reduction, options.ignore_index
    if n_threads is not None:
        check.n_threads(n_threads, 1)
    t = target if isinstance(target, da.Array) else np.asarray(target)
    sparse = check.target_is_class_indices(t.dtype, t.shape, x.shape, class_axis, ignore)
    if one_row:  # (C,) is one row: view it as (1, C) and squeeze the results
        x, t = x[None], t[None]
        if reduction == "none" and with_grad and np.ndim(grad_output):
            grad_output = (grad_output if isinstance(grad_output, da.Array)
                           else np.asarray(grad_output))[None]
    w = options.weight
    result = _result_dtype(x.dtype)
    loss_shape = x.shape[:1] + x.shape[2:]
    if sparse:
        ty = _aligned(t, x.chunks[:1] + x.chunks[2:])
        denominator: Any = 1.0
        counted = None
        if reduction == "mean":  # the total weight of the targets, and how many are counted
            w = rules.weights_for_lazy_mean(w, math.prod(loss_shape))

            def total(weight: np.ndarray | None) -> da.Array:
                return _sum_partials(da.map_blocks(
                    _weight_total_block, ty, weight=weight, ignore_index=ignore, n_classes=c,
                    ndim=ty.ndim, chunks=_ones_chunks(ty), dtype=np.float64,
                    meta=np.empty((0,) * ty.ndim)))

            denominator = total(w)
            counted = total(None) if w is not None else None
        t = ty
    else:  # probability targets: the mean is over the rows
        denominator = rules.denominator(reduction, float(math.prod(loss_shape)))
        counted = None
    call = _api.cross_entropy_with_grad if with_grad else _api.cross_entropy
    # per block: per-row losses (and the gradient scaled by grad_output / denominator)
    fn = _Partial(call, weight=w, ignore_index=ignore, reduction="none",
                  label_smoothing=options.label_smoothing)
    out = _run(x, t, 1, fn, sparse=sparse, reduction=reduction, result=result,
               denominator=denominator, grad_output=grad_output, with_grad=with_grad,
               ignore_index=ignore if sparse else None, n_threads=n_threads, counted=counted)
    return _squeeze_row(out) if one_row else out


class _Partial:
    """``functools.partial`` with a readable name in dask's task stream."""

    def __init__(self, fn: Callable, **kwargs: Any) -> None:
        self.fn, self.kwargs = fn, kwargs
        self.__name__ = fn.__name__

    def __call__(self, x: np.ndarray, labels: np.ndarray, **kwargs: Any) -> Any:
        return self.fn(x, labels, **self.kwargs, **kwargs)


def cross_entropy(input: Any, target: Any, *, weight: Any = None,
                  ignore_index: int = check.IGNORE_INDEX_DEFAULT, reduction: str = "mean",
                  label_smoothing: float = 0.0, n_threads: int | None = None) -> da.Array:
    """:func:`fastxent.cross_entropy` of a dask array, lazily.

    Each block of rows runs the kernel once. ``mean`` and ``sum`` add per-block float64 sums of the
    row losses, so they equal the in-memory result to an ulp or two of summation order; per-row
    losses are the same bits.

    Parameters
    ----------
    input : dask.array.Array or array_like
        The logits, ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``, chunked along rows (axis 0
        and the axes after the class axis 1); the class axis is rechunked to one chunk if it is
        not.
    target : dask.array.Array or array_like
        Class indices of shape ``(N, d1, ..., dK)`` or class probabilities of ``input``'s shape,
        as in :func:`fastxent.cross_entropy`.
    weight : array_like, optional
        Class weights, shape ``(C,)``.
    ignore_index : int, default -100
        A class index whose rows contribute nothing (class indices only).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As in :func:`fastxent.cross_entropy`.
    label_smoothing : float, default 0.0
        In ``[0, 1]``, as in :func:`fastxent.cross_entropy`.
    n_threads : int, optional
        Threads per block's kernel call. None gives each block ``max(1, threads // blocks)``,
        ``threads`` being what OpenMP may use on the worker, so dask's own workers are not
        oversubscribed.

    Returns
    -------
    dask.array.Array
        0-d for ``'mean'`` and ``'sum'``; for ``'none'`` the per-row losses, chunked like the
        rows.

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`fastxent.cross_entropy`.
        Shapes, dtypes and options are checked when the graph is built, class indices
        when their block is computed.

    See Also
    --------
    cross_entropy_with_grad, fastxent.cross_entropy

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> round(float(fxd.cross_entropy(x, np.array([0, 1, 2])).compute()), 12)
    2.407605964444
    """
    return _torch_call(input, target, weight, ignore_index, reduction, label_smoothing, 1.0,
                       n_threads, with_grad=False)


def cross_entropy_with_grad(input: Any, target: Any, *, weight: Any = None,
                            ignore_index: int = check.IGNORE_INDEX_DEFAULT, reduction: str = "mean",
                            label_smoothing: float = 0.0, grad_output: Any = 1.0,
                            n_threads: int | None = None) -> tuple[da.Array, da.Array]:
    """``(loss, grad)`` as :func:`fastxent.cross_entropy_with_grad`, lazily.

    The loss and the gradient of a block come from one kernel call when they are computed together
    (``da.compute(loss, grad)``, or one ``da.store``).

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing
        As in :func:`cross_entropy`.
    grad_output : array_like or dask.array.Array, default 1.0
        A scalar for ``'mean'`` and ``'sum'``; for ``'none'`` a scalar or an array broadcastable
        to the loss's shape.
    n_threads : int, optional
        Threads per block's kernel call. None gives each block ``max(1, threads // blocks)``,
        ``threads`` being what OpenMP may use on the worker, so dask's own workers are not
        oversubscribed.

    Returns
    -------
    loss : dask.array.Array
        As :func:`cross_entropy`.
    grad : dask.array.Array
        The gradient, chunked like ``input`` (class axis in one chunk); the same bits as in
        memory.

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`fastxent.cross_entropy_with_grad`.
        Shapes, dtypes and options are checked when the graph is built, class indices
        when their block is computed.

    See Also
    --------
    cross_entropy, fastxent.cross_entropy_with_grad

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> loss, grad = fxd.cross_entropy_with_grad(x, np.array([0, 1, 2]))
    >>> loss, grad = da.compute(loss, grad)
    >>> grad[0]
    array([-0.30332314,  0.08157616,  0.22174699])
    """
    return _torch_call(input, target, weight, ignore_index, reduction, label_smoothing,
                       grad_output, n_threads, with_grad=True)


# ------------------------------------------------------------------------------------------
# TensorFlow family (class axis last for sparse labels)
# ------------------------------------------------------------------------------------------

def _tf_call(labels: Any, logits: Any, axis: int, n_threads: int | None, with_grad: bool,
             sparse: bool) -> Any:
    x = _logits(logits, "logits")
    if n_threads is not None:  # checked when the graph is built, as in fastxent.dask.cross_entropy
        check.n_threads(n_threads, 1)
    ax = x.ndim - 1 if sparse else check.normalise_axis(axis, x.ndim)
    check.n_classes(x.shape, ax, "logits")
    y = labels if isinstance(labels, da.Array) else np.asarray(labels)
    if sparse:  # the in-memory checks, on the dtype and shape
        check.sparse_label_kind(y.dtype, y.shape, x.shape[:-1], "logits", x.shape, "labels")
    else:
        check.dense_label_kind(y.dtype, y.shape, x.shape, "logits", "labels")
    if sparse:
        call = (_api.sparse_softmax_cross_entropy_with_logits_and_grad if with_grad
                else _api.sparse_softmax_cross_entropy_with_logits)
        fn = _Partial(_tf_sparse_block, call=call)
    else:
        call = (_api.softmax_cross_entropy_with_logits_and_grad if with_grad
                else _api.softmax_cross_entropy_with_logits)
        fn = _Partial(_tf_dense_block, call=call, axis=ax)
    return _run(x, y, ax, fn, sparse=sparse, reduction="none", result=_result_dtype(x.dtype),
                denominator=1.0, grad_output=1.0, with_grad=with_grad, ignore_index=None,
                n_threads=n_threads)


def _tf_sparse_block(x: np.ndarray, labels: np.ndarray, *, call: Callable, n_threads: int,
                     grad_output: Any = None) -> Any:
    # grad_output is always 1 here: the TF functions have no scaling argument
    return call(labels, x, n_threads=n_threads)


def _tf_dense_block(x: np.ndarray, labels: np.ndarray, *, call: Callable, axis: int,
                    n_threads: int, grad_output: Any = None) -> Any:
    return call(labels, x, axis, n_threads=n_threads)


def softmax_cross_entropy_with_logits(labels: Any, logits: Any, axis: int = -1, *,
                                      n_threads: int | None = None) -> da.Array:
    """Per-example loss as :func:`fastxent.softmax_cross_entropy_with_logits`, lazily.

    Parameters
    ----------
    labels : dask.array.Array or array_like
        Class probabilities, of ``logits``' shape.
    logits : dask.array.Array or array_like
        The logits, chunked along rows (the class axis is rechunked to one chunk if needed).
    axis : int, default -1
        The class axis.
    n_threads : int, optional
        Threads per block's kernel call. None gives each block ``max(1, threads // blocks)``,
        ``threads`` being what OpenMP may use on the worker, so dask's own workers are not
        oversubscribed.

    Returns
    -------
    dask.array.Array
        The loss of each row, chunked like the rows.

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`fastxent.softmax_cross_entropy_with_logits`.
        Shapes, dtypes and options are checked when the graph is built, class indices
        when their block is computed.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> fxd.softmax_cross_entropy_with_logits(np.eye(3), x).compute()
    array([2.40760596, 2.40760596, 2.40760596])
    """
    return _tf_call(labels, logits, axis, n_threads, with_grad=False, sparse=False)


def softmax_cross_entropy_with_logits_and_grad(labels: Any, logits: Any, axis: int = -1, *,
                                               n_threads: int | None = None):
    """``(loss, backprop)`` as :func:`fastxent.softmax_cross_entropy_with_logits_and_grad`, lazily.

    Parameters
    ----------
    labels, logits, axis
        As in :func:`softmax_cross_entropy_with_logits`.
    n_threads : int, optional
        Threads per block's kernel call. None gives each block ``max(1, threads // blocks)``,
        ``threads`` being what OpenMP may use on the worker, so dask's own workers are not
        oversubscribed.

    Returns
    -------
    loss : dask.array.Array
        The loss of each row, chunked like the rows.
    backprop : dask.array.Array
        The gradient, chunked like ``logits`` (class axis in one chunk).

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`fastxent.softmax_cross_entropy_with_logits_and_grad`.
        Shapes, dtypes and options are checked when the graph is built, class indices
        when their block is computed.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> loss, backprop = fxd.softmax_cross_entropy_with_logits_and_grad(np.eye(3), x)
    >>> backprop.compute()[0]
    array([-0.90996943,  0.24472847,  0.66524096])
    """
    return _tf_call(labels, logits, axis, n_threads, with_grad=True, sparse=False)


def sparse_softmax_cross_entropy_with_logits(labels: Any, logits: Any, *,
                                             n_threads: int | None = None) -> da.Array:
    """Per-example loss as :func:`fastxent.sparse_softmax_cross_entropy_with_logits`, lazily.

    Parameters
    ----------
    labels : dask.array.Array or array_like of int
        Class indices in ``[0, C)``, of shape ``logits.shape[:-1]``.
    logits : dask.array.Array or array_like
        The logits, classes on the last axis, chunked along rows.
    n_threads : int, optional
        Threads per block's kernel call. None gives each block ``max(1, threads // blocks)``,
        ``threads`` being what OpenMP may use on the worker, so dask's own workers are not
        oversubscribed.

    Returns
    -------
    dask.array.Array
        The loss of each row, chunked like the rows.

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`fastxent.sparse_softmax_cross_entropy_with_logits`.
        Shapes, dtypes and options are checked when the graph is built, class indices
        when their block is computed.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> fxd.sparse_softmax_cross_entropy_with_logits(np.array([0, 1, 2]), x).compute()
    array([2.40760596, 2.40760596, 2.40760596])
    """
    return _tf_call(labels, logits, -1, n_threads, with_grad=False, sparse=True)


def sparse_softmax_cross_entropy_with_logits_and_grad(labels: Any, logits: Any, *,
                                                      n_threads: int | None = None):
    """``(loss, backprop)``, lazily, as
    :func:`fastxent.sparse_softmax_cross_entropy_with_logits_and_grad`.

    Parameters
    ----------
    labels, logits
        As in :func:`sparse_softmax_cross_entropy_with_logits`.
    n_threads : int, optional
        Threads per block's kernel call. None gives each block ``max(1, threads // blocks)``,
        ``threads`` being what OpenMP may use on the worker, so dask's own workers are not
        oversubscribed.

    Returns
    -------
    loss : dask.array.Array
        The loss of each row, chunked like the rows.
    backprop : dask.array.Array
        The gradient, chunked like ``logits`` (class axis in one chunk).

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`fastxent.sparse_softmax_cross_entropy_with_logits_and_grad`.
        Shapes, dtypes and options are checked when the graph is built, class indices
        when their block is computed.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> loss, backprop = fxd.sparse_softmax_cross_entropy_with_logits_and_grad(
    ...     np.array([0, 1, 2]), x)
    >>> backprop.compute()[0]
    array([-0.90996943,  0.24472847,  0.66524096])
    """
    return _tf_call(labels, logits, -1, n_threads, with_grad=True, sparse=True)


# ------------------------------------------------------------------------------------------
# Normalisers
# ------------------------------------------------------------------------------------------

def _normaliser(fn: Callable, x: Any, axis: int, n_threads: int | None,
                keep_axis: bool) -> da.Array:
    arr = _logits(x, "x")
    ax = check.normalise_axis(axis, arr.ndim)
    check.n_classes(arr.shape, ax, "x")
    if n_threads is not None:
        check.n_threads(n_threads, 1)
    arr = _whole_axis(arr, ax)
    result = _result_dtype(arr.dtype)
    ndim = arr.ndim if keep_axis else arr.ndim - 1
    return da.map_blocks(_normaliser_block, arr, fn=fn, axis=ax, n_threads=n_threads,
                          n_blocks=math.prod(arr.numblocks), dtype=result,
                          meta=np.empty((0,) * ndim, result),
                          **({} if keep_axis else {"drop_axis": ax}))


def _normaliser_block(x: np.ndarray, *, fn: Callable, axis: int, n_threads: int | None,
                      n_blocks: int) -> np.ndarray:
    return np.asarray(fn(x, axis, n_threads=_backend.effective_n_threads(n_threads, n_blocks)))


def softmax(x: Any, axis: int = -1, *, n_threads: int | None = None) -> da.Array:
    """:func:`fastxent.softmax` along ``axis``, lazily.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The logits.
    axis : int, default -1
        The class axis (rechunked to one chunk).
    n_threads : int, optional
        Threads per block's kernel call. None gives each block ``max(1, threads // blocks)``,
        ``threads`` being what OpenMP may use on the worker, so dask's own workers are not
        oversubscribed.

    Returns
    -------
    dask.array.Array
        The probabilities, of ``x``'s shape and chunks.

    Raises
    ------
    ValueError, TypeError
        For the inputs :func:`fastxent.softmax` rejects, when the graph is built.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> fxd.softmax(x).compute()[0]
    array([0.09003057, 0.24472847, 0.66524096])
    """
    return _normaliser(_api.softmax, x, axis, n_threads, keep_axis=True)


def log_softmax(x: Any, axis: int = -1, *, n_threads: int | None = None) -> da.Array:
    """:func:`fastxent.log_softmax` along ``axis``, lazily.

    Parameters
    ----------
    x, axis, n_threads
        As in :func:`softmax`.

    Returns
    -------
    dask.array.Array
        The log-probabilities, of ``x``'s shape and chunks.

    Raises
    ------
    ValueError, TypeError
        For the inputs :func:`fastxent.log_softmax` rejects, when the graph is built.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> fxd.log_softmax(x).compute()[0]
    array([-2.40760596, -1.40760596, -0.40760596])
    """
    return _normaliser(_api.log_softmax, x, axis, n_threads, keep_axis=True)


def logsumexp(x: Any, axis: int = -1, *, n_threads: int | None = None) -> da.Array:
    """:func:`fastxent.logsumexp` along ``axis``, lazily.

    Parameters
    ----------
    x, axis, n_threads
        As in :func:`softmax`.

    Returns
    -------
    dask.array.Array
        Of ``x``'s shape without ``axis``.

    Raises
    ------
    ValueError, TypeError
        For the inputs :func:`fastxent.logsumexp` rejects, when the graph is built.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastxent.dask as fxd
    >>> x = da.from_array(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]]), chunks=(2, 3))
    >>> fxd.logsumexp(x).compute()[0]
    np.float64(3.40760596444438)
    """
    return _normaliser(_api.logsumexp, x, axis, n_threads, keep_axis=False)
