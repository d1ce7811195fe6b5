"""The public functions: validate the arguments, view the data as rows, allocate, call a kernel.

Data flow is one way: public function -> ``_validation`` (checks, conversions) -> a kernel of
``_backend.kernels`` (looked up at call time). Kernels see the logits as an ``(A, C, B)`` view
whose rows are the ``A * B`` positions around the class axis, so a class axis that is not last
costs no transposed copy.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

from . import _backend
from . import _reduction as rules
from . import _validation as check
from ._reduction import LossOptions

__all__ = [
    "softmax", "log_softmax", "logsumexp",
    "softmax_cross_entropy_with_logits", "softmax_cross_entropy_with_logits_and_grad",
    "sparse_softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits_and_grad",
    "cross_entropy", "cross_entropy_with_grad", "CrossEntropyLoss",
]

#: The values of ``reduction`` (``_validation.reduction`` accepts exactly these).
Reduction = Literal["mean", "sum", "none"]
#: A floating array: float16, float32 or float64, the dtype the inputs' computation returns.
FloatArray = npt.NDArray[np.floating[Any]]
#: A loss: an array, or a NumPy scalar where the loss has no axes (a reduction, or the loss of
#: one row of logits).
Loss = FloatArray | np.floating[Any]


# ------------------------------------------------------------------------------------------
# Shaping helpers
# ------------------------------------------------------------------------------------------

def _split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(A, C, B): the sizes before, at and after the class axis."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _writable_view(out: np.ndarray,
                   shape3: tuple[int, int, int] | tuple[int, int]) -> np.ndarray | None:
    """A view of ``out`` with ``shape3`` that a kernel can write directly, or None."""
    if (not out.dtype.isnative or not out.flags.aligned
            or any(s % out.itemsize for s in out.strides)):
        return None
    try:
        return out.reshape(shape3, copy=False)
    except ValueError:  # the reshape would need a copy
        return None


class _Result:
    """A result array of the caller's shape: ``out`` when a kernel can write it in place,
    otherwise a fresh buffer in the kernel dtype, converted or copied into ``out`` at the end."""

    def __init__(self, out: np.ndarray | None, shape: tuple[int, ...],
                 kernel_shape: tuple[int, ...],
                 compute: np.dtype, result: np.dtype) -> None:
        self.out, self.result_dtype = out, result
        view = None
        if out is not None and compute == result:
            view = _writable_view(out, kernel_shape)
        if view is not None:
            self.array, self.kernel_view = out, view
        else:
            self.array = np.empty(shape, dtype=compute)
            self.kernel_view = self.array.reshape(kernel_shape)

    def finish(self) -> np.ndarray:
        if self.out is not None:
            if self.array is not self.out:
                np.copyto(self.out, self.array, casting="unsafe")
            return self.out
        if self.array.dtype != self.result_dtype:
            return self.array.astype(self.result_dtype)
        return self.array


def _prepare_out(out: Any, shape: tuple[int, ...], result: np.dtype, inputs: dict[str, Any],
                 in_place_ok: Any = None) -> np.ndarray | None:
    if out is None:
        return None
    out = check.out_array(out, shape, result)
    check.no_overlap(out, inputs, in_place_ok)
    return out


def _as_read(original: Any, converted: np.ndarray | None) -> Any:
    """What ``out`` must not overlap for an argument: the caller's ndarray itself; for another
    array-like (a memoryview, a tensor, a list) the array the kernel reads, which may view the
    argument's memory (checked on it, the argument is not converted a second time)."""
    return original if isinstance(original, np.ndarray) or converted is None else converted


# ------------------------------------------------------------------------------------------
# Normalisers
# ------------------------------------------------------------------------------------------

def _normaliser(kernel_name: str, x: ArrayLike, axis: int, out: Any, n_threads: Any) -> FloatArray:
    arr, result = check.float_array(x, "x")
    check.at_least_1d(arr, "x")
    ax = check.normalise_axis(axis, arr.ndim)
    check.n_classes(arr.shape, ax, "x")
    nt = _backend.effective_n_threads(n_threads)
    read = _as_read(x, arr)
    out = _prepare_out(out, arr.shape, result, {"x": read}, in_place_ok=read)
    shape3 = _split(arr.shape, ax)
    res = _Result(out, arr.shape, shape3, arr.dtype, result)
    getattr(_backend.kernels, kernel_name)(arr.reshape(shape3), res.kernel_view, nt)
    return res.finish()


def softmax(x: ArrayLike, axis: int = -1, *, out: FloatArray | None = None,
            n_threads: int | None = None) -> FloatArray:
    """Softmax along one axis, as ``scipy.special.softmax``.

    ``exp(x - logsumexp(x, axis))``: the probabilities of each row, computed in one pass.

    Parameters
    ----------
    x : array_like
        The logits. float32 and float64 are computed natively and keep their dtype; float16 is
        computed in float32 and returned as float16; integers and bool become float64.
    axis : int, default -1
        The class axis: the one reduced over.
    out : ndarray, optional
        Receives the result: an array of ``x``'s shape and of the result's dtype. ``out=x``
        computes in place, the only overlap with ``x`` that is allowed.
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    ndarray
        The probabilities, of ``x``'s shape. Rows whose maximum is not finite (all -inf, or a
        +inf) are NaN; a -inf entry of a finite row gives 0.

    Raises
    ------
    ValueError
        If ``x`` is 0-d, has no classes (size 0 along ``axis``), or ``out`` has the wrong shape
        or dtype, is not writeable or overlaps ``x`` other than as ``out=x``.
    numpy.exceptions.AxisError
        If ``axis`` is out of range.
    TypeError
        If ``x`` is complex, object or string data, or ``axis`` or ``n_threads`` is not an
        integer.

    See Also
    --------
    log_softmax : The logarithm of the same, without its rounding.
    logsumexp : The normaliser.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> fx.softmax(np.array([1.0, 2.0, 3.0]))
    array([0.09003057, 0.24472847, 0.66524096])
    >>> x = np.array([[1.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    >>> fx.softmax(x, axis=0)
    array([[0.11920292, 0.26894143],
           [0.8807971 , 0.7310586 ]], dtype=float32)
    """
    return _normaliser("softmax", x, axis, out, n_threads)


def log_softmax(x: ArrayLike, axis: int = -1, *, out: FloatArray | None = None,
                n_threads: int | None = None) -> FloatArray:
    """Log-softmax along one axis, as ``scipy.special.log_softmax``.

    ``x - logsumexp(x, axis)``, computed in one pass per row.

    Parameters
    ----------
    x, axis, out
        As in :func:`softmax`.
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    ndarray
        The log-probabilities, of ``x``'s shape. Rows whose maximum is not finite are NaN; a
        -inf entry of a finite row gives -inf.

    Raises
    ------
    ValueError, numpy.exceptions.AxisError, TypeError
        As :func:`softmax`.

    See Also
    --------
    softmax, logsumexp

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> fx.log_softmax(np.array([1.0, 2.0, 3.0]))
    array([-2.40760596, -1.40760596, -0.40760596])
    """
    return _normaliser("log_softmax", x, axis, out, n_threads)


def logsumexp(x: ArrayLike, axis: int = -1, *, out: FloatArray | None = None,
              n_threads: int | None = None) -> Loss:
    """``log(sum(exp(x), axis))``, computed stably, as ``scipy.special.logsumexp`` for one axis.

    Parameters
    ----------
    x, axis
        As in :func:`softmax`.
    out : ndarray, optional
        Receives the result: an array of ``x``'s shape without ``axis``, of the result's dtype.
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    ndarray or numpy scalar
        Of ``x``'s shape without ``axis`` (a NumPy scalar for 1-D ``x`` without ``out``). A row
        of -inf gives -inf, a +inf gives +inf, a NaN gives NaN.

    Raises
    ------
    ValueError, numpy.exceptions.AxisError, TypeError
        As :func:`softmax`.

    See Also
    --------
    softmax, log_softmax

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> fx.logsumexp(np.array([1.0, 2.0, 3.0]))
    np.float64(3.40760596444438)
    >>> fx.logsumexp([[1000.0, 1000.0], [-np.inf, -np.inf]])
    array([1000.69314718,          -inf])
    """
    arr, result = check.float_array(x, "x")
    check.at_least_1d(arr, "x")
    ax = check.normalise_axis(axis, arr.ndim)
    check.n_classes(arr.shape, ax, "x")
    nt = _backend.effective_n_threads(n_threads)
    out_shape = arr.shape[:ax] + arr.shape[ax + 1:]
    out = _prepare_out(out, out_shape, result, {"x": _as_read(x, arr)})
    a, c, b = _split(arr.shape, ax)
    res = _Result(out, out_shape, (a, b), arr.dtype, result)
    _backend.kernels.logsumexp(arr.reshape(a, c, b), res.kernel_view, nt)
    value = res.finish()
    return value if out is not None or value.ndim else value[()]


# ------------------------------------------------------------------------------------------
# Loss machinery shared by both families
# ------------------------------------------------------------------------------------------

class _Problem:
    """Validated logits and labels of one loss call, viewed as (A, C, B) rows."""

    def __init__(self, logits: np.ndarray, axis: int, result: np.dtype) -> None:
        self.logits, self.axis, self.result = logits, axis, result
        self.a, self.c, self.b = _split(logits.shape, axis)
        self.x3 = logits.reshape(self.a, self.c, self.b)
        self.loss_shape = logits.shape[:axis] + logits.shape[axis + 1:]


def _weight_total(weight: np.ndarray | None, labels: np.ndarray, n_classes: int, ignore: int,
                  has_ignore: bool, n_threads: int) -> float:
    """The total of ``weight`` over the targets not ignored (their count for None)."""
    return _backend.kernels.sparse_label_check(labels, n_classes, ignore, has_ignore, weight,
                                               n_threads)[1]


def _run(problem: _Problem, labels: np.ndarray, sparse: bool, options: LossOptions,
         ignore_index: int | None, grad: _Result | None, grad_output: Any,
         n_threads: int) -> Loss:
    """Check the labels against the classes, run the fused kernel, reduce the loss by the rules
    of ``_reduction``. ``ignore_index`` is None when no target can be ignored."""
    kernels = _backend.kernels
    p = problem
    weight, _, reduction, smoothing, z_loss, softcap = options
    if sparse:
        labels2 = labels.reshape(p.a, p.b)
        has_ignore = ignore_index is not None
        ignore = ignore_index if has_ignore else 0
        n_bad, total = kernels.sparse_label_check(labels2, p.c, ignore, has_ignore, weight,
                                                  n_threads)
        if n_bad:
            check.labels_in_range(labels, p.c, ignore_index)
        if reduction == "mean" and weight is not None and total != 0.0:
            weight, total, z_loss = rules.weights_for_mean(
                weight, total, p.a * p.b, z_loss, _weight_total, labels2, p.c, ignore, has_ignore,
                n_threads)
    else:
        labels3 = labels.reshape(p.a, p.c, p.b)
        total = float(p.a * p.b)  # probability targets: mean over the rows, not the weights
    denominator = rules.denominator(reduction, total)

    grad_scale, grad_rows = 1.0, None
    if grad is not None:
        scale, rows = check.grad_output(grad_output, reduction, p.loss_shape)
        if rows is not None:
            grad_rows = rows.reshape(p.a, p.b)
        # any target counted, asked only of a zero denominator: the kernels' count of the
        # targets that are not ignored (probability targets count only where there are rows)
        grad_scale = rules.gradient_scale(
            scale, denominator,
            lambda: sparse and _weight_total(None, labels2, p.c, ignore, has_ignore,
                                             n_threads) > 0)

    loss_rows = np.empty((p.a, p.b), dtype=np.float64)
    terms = rules.kernel_terms(z_loss, softcap)
    kernel_grad = grad.kernel_view if grad is not None else None
    if sparse:
        kernels.sparse_xent(p.x3, labels2, weight, ignore, has_ignore, smoothing, loss_rows,
                            kernel_grad, grad_scale, grad_rows, n_threads, **terms)
    else:
        kernels.dense_xent(p.x3, labels3, weight, smoothing, loss_rows, kernel_grad, grad_scale,
                           grad_rows, n_threads, **terms)
    return rules.reduce(loss_rows, reduction, denominator, p.result, p.loss_shape)


def _grad_result(problem: _Problem, out: Any, inputs: dict[str, tuple[Any, Any]],
                 in_place_ok: str) -> _Result:
    """The gradient's result array; ``inputs`` maps each argument's name to the argument as
    given and the array the kernel reads, which ``out`` must not overlap (except exactly
    ``in_place_ok``'s, in place)."""
    if out is not None:
        read = {name: _as_read(*given_and_read) for name, given_and_read in inputs.items()}
        out = _prepare_out(out, problem.logits.shape, problem.result, read, read[in_place_ok])
    return _Result(out, problem.logits.shape, (problem.a, problem.c, problem.b),
                   problem.logits.dtype, problem.result)


# ------------------------------------------------------------------------------------------
# TensorFlow family
# ------------------------------------------------------------------------------------------

def _tf_call(labels, logits, axis, out, n_threads, with_grad, sparse):
    """The TensorFlow family: per-example losses, class axis ``axis`` (last for sparse labels)."""
    x, result = check.float_array(logits, "logits")
    check.at_least_1d(x, "logits")
    ax = x.ndim - 1 if sparse else check.normalise_axis(axis, x.ndim)
    check.n_classes(x.shape, ax, "logits")
    if sparse:
        y = check.sparse_labels(labels, x.shape[:-1], "logits", x.shape, "labels")
    else:
        y = check.dense_labels(labels, x.shape, x.dtype, "logits", "labels")
    nt = _backend.effective_n_threads(n_threads)
    problem = _Problem(x, ax, result)
    grad = None
    if with_grad:
        grad = _grad_result(problem, out, {"logits": (logits, x), "labels": (labels, y)}, "logits")
    loss = _run(problem, y, sparse, rules.PLAIN, None, grad, 1.0, nt)
    return (loss, grad.finish()) if with_grad else loss


def softmax_cross_entropy_with_logits(labels: ArrayLike, logits: ArrayLike, axis: int = -1, *,
                                      n_threads: int | None = None) -> Loss:
    """Per-example cross-entropy with class probabilities (TensorFlow's convention).

    ``loss = sum_c labels_c * (logsumexp(logits) - logits_c)`` along ``axis``, as
    ``tf.nn.softmax_cross_entropy_with_logits``.

    Parameters
    ----------
    labels : array_like
        Class probabilities, of ``logits``' shape (a distribution per row; rows need not sum
        to 1).
    logits : array_like
        The unnormalised log-probabilities. float32 and float64 keep their dtype; float16 is
        computed in float32 and returned as float16; integers and bool become float64.
    axis : int, default -1
        The class axis.
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    ndarray or numpy scalar
        The loss of each row: ``logits``' shape without ``axis`` (a NumPy scalar for 1-D
        logits), of the logits' dtype.

    Raises
    ------
    IndexError
        If a class index is outside ``[0, C)`` (the message names the value and its position).
    ValueError
        If the labels' shape does not fit the logits', the logits are 0-d or have no classes, or
        ``out`` does not fit.
    TypeError
        If the labels' dtype does not fit their kind (floats as class indices, integers as
        probabilities), or the data are complex, object or strings.

    See Also
    --------
    softmax_cross_entropy_with_logits_and_grad : The loss and its gradient, fused.
    cross_entropy : PyTorch's conventions, with reductions and weights.

    Examples
    --------
    >>> import fastxent as fx
    >>> fx.softmax_cross_entropy_with_logits([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]],
    ...                                      [[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    array([0.16984602, 0.82474489])
    """
    return _tf_call(labels, logits, axis, None, n_threads, with_grad=False, sparse=False)


def softmax_cross_entropy_with_logits_and_grad(labels: ArrayLike, logits: ArrayLike,
                                               axis: int = -1, *,
                                               out: FloatArray | None = None,
                                               n_threads: int | None = None
                                               ) -> tuple[Loss, FloatArray]:
    """``(loss, backprop)``: the per-example loss with class probabilities and its gradient, fused.

    The gradient of the summed loss with respect to ``logits``,
    ``backprop = (sum labels) * softmax(logits) - labels``. TensorFlow's raw op returns
    ``softmax - labels``, which is the gradient only where each row of labels sums to 1.

    Parameters
    ----------
    labels, logits, axis
        As in :func:`softmax_cross_entropy_with_logits`.
    out : ndarray, optional
        Receives the gradient: an array of ``logits``' shape and of the result's dtype.
        ``out=logits`` computes the gradient in place (the logits are overwritten).
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    loss : ndarray or numpy scalar
        As :func:`softmax_cross_entropy_with_logits`.
    backprop : ndarray
        The gradient, of ``logits``' shape and dtype (``out`` if given).

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`softmax_cross_entropy_with_logits`; ``ValueError`` also if ``out`` does not fit.

    See Also
    --------
    softmax_cross_entropy_with_logits, cross_entropy_with_grad

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    >>> loss, backprop = fx.softmax_cross_entropy_with_logits_and_grad(
    ...     [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]], logits)
    >>> backprop
    array([[-0.15620527,  0.1141952 ,  0.04201007],
           [ 0.00657326,  0.17555875, -0.18213202]])
    >>> _ = fx.softmax_cross_entropy_with_logits_and_grad(
    ...     [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]], logits, out=logits)   # in place
    >>> np.array_equal(logits, backprop)
    True
    """
    return _tf_call(labels, logits, axis, out, n_threads, with_grad=True, sparse=False)


def sparse_softmax_cross_entropy_with_logits(labels: ArrayLike, logits: ArrayLike, *,
                                             n_threads: int | None = None) -> Loss:
    """Per-example cross-entropy with class indices (TensorFlow's convention).

    ``loss = logsumexp(logits) - logits[labels]`` along the last axis, as
    ``tf.nn.sparse_softmax_cross_entropy_with_logits``.

    Parameters
    ----------
    labels : array_like of int
        Class indices in ``[0, C)``, of shape ``logits.shape[:-1]``; integers of any width.
    logits : array_like
        The unnormalised log-probabilities, classes on the last axis. float32 and float64 keep
        their dtype; float16 is computed in float32 and returned as float16; integers and bool
        become float64.
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    ndarray or numpy scalar
        The loss of each row, of shape ``logits.shape[:-1]`` and the logits' dtype.

    Raises
    ------
    IndexError
        If a class index is outside ``[0, C)`` (the message names the value and its position).
    ValueError
        If the labels' shape does not fit the logits', the logits are 0-d or have no classes, or
        ``out`` does not fit.
    TypeError
        If the labels' dtype does not fit their kind (floats as class indices, integers as
        probabilities), or the data are complex, object or strings.

    See Also
    --------
    sparse_softmax_cross_entropy_with_logits_and_grad : The loss and its gradient, fused.
    cross_entropy : PyTorch's conventions, with reductions, weights and ``ignore_index``.

    Examples
    --------
    >>> import fastxent as fx
    >>> fx.sparse_softmax_cross_entropy_with_logits([0, 3, 1], [[2.0, -5.0, 0.5, -0.1],
    ...     [0.0, 0.0, 1.9, 1.4], [-100.0, 100.0, -100.0, -100.0]])
    array([2.97507497e-01, 1.14483255e+00, 4.15168958e-87])

    TensorFlow's float32 op rounds the last loss to 0.
    """
    return _tf_call(labels, logits, -1, None, n_threads, with_grad=False, sparse=True)


def sparse_softmax_cross_entropy_with_logits_and_grad(labels: ArrayLike, logits: ArrayLike, *,
                                                      out: FloatArray | None = None,
                                                      n_threads: int | None = None
                                                      ) -> tuple[Loss, FloatArray]:
    """``(loss, backprop)``: the per-example loss with class indices and its gradient, fused.

    ``backprop = softmax(logits) - one_hot(labels)``, computed in the same pass over the logits as
    the loss, as ``tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits``.

    Parameters
    ----------
    labels, logits
        As in :func:`sparse_softmax_cross_entropy_with_logits`.
    out : ndarray, optional
        Receives the gradient: an array of ``logits``' shape and of the result's dtype.
        ``out=logits`` computes the gradient in place (the logits are overwritten).
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    loss : ndarray or numpy scalar
        As :func:`sparse_softmax_cross_entropy_with_logits`.
    backprop : ndarray
        The gradient, of ``logits``' shape and dtype (``out`` if given).

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`sparse_softmax_cross_entropy_with_logits`; ``ValueError`` also if ``out`` does
        not fit.

    See Also
    --------
    sparse_softmax_cross_entropy_with_logits, cross_entropy_with_grad

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> loss, backprop = fx.sparse_softmax_cross_entropy_with_logits_and_grad(
    ...     np.array([2, 0]), np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    >>> loss
    array([0.40760598, 1.0986123 ], dtype=float32)
    >>> backprop
    array([[ 0.09003057,  0.24472848, -0.33475906],
           [-0.6666667 ,  0.33333334,  0.33333334]], dtype=float32)
    """
    return _tf_call(labels, logits, -1, out, n_threads, with_grad=True, sparse=True)


# ------------------------------------------------------------------------------------------
# PyTorch family
# ------------------------------------------------------------------------------------------

def _torch_logits(input: ArrayLike) -> _Problem:
    """The logits of the PyTorch family: classes on axis 1, or 0 for 1-D input."""
    x, result = check.float_array(input, "input")
    check.at_least_1d(x, "input")
    ax = 0 if x.ndim == 1 else 1
    check.n_classes(x.shape, ax, "input")
    return _Problem(x, ax, result)


def _torch_call(problem, input, target, weight, options, n_threads, with_grad, grad_output=1.0,
                out=None):
    """The PyTorch family, on the logits of ``_torch_logits(input)`` and ``options`` for their
    classes; ``weight`` is the weight argument as given (``out`` must not overlap it)."""
    x, ax = problem.logits, problem.axis
    nt = _backend.effective_n_threads(n_threads)
    t = np.asarray(target)
    sparse = check.target_is_class_indices(t.dtype, t.shape, x.shape, ax, options.ignore_index)
    if sparse:  # integers of the loss's shape: target_is_class_indices checked both
        labels = check.kernel_ready(t)
    else:
        labels = check.dense_labels(t, x.shape, x.dtype, "input", "target (class probabilities)")
    grad = None
    if with_grad:
        grad = _grad_result(problem, out, {"input": (input, x), "target": (target, labels),
                                           "weight": (weight, options.weight),
                                           "grad_output": (grad_output, None)}, "input")
    loss = _run(problem, labels, sparse, options, options.ignore_index if sparse else None, grad,
                grad_output, nt)
    return (loss, grad.finish()) if with_grad else loss


# A reduction gives a NumPy scalar; reduction="none" an array of the loss's shape (a scalar for
# 1-D input); a reduction known only as a Reduction, either.
@overload
def cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                  ignore_index: int = check.IGNORE_INDEX_DEFAULT,
                  reduction: Literal["mean", "sum"] = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: float | None = None,
                  n_threads: int | None = None) -> np.floating[Any]: ...
@overload
def cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                  ignore_index: int = check.IGNORE_INDEX_DEFAULT, reduction: Reduction,
                  label_smoothing: float = 0.0, z_loss: float = 0.0,
                  softcap: float | None = None, n_threads: int | None = None) -> Loss: ...


def cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                  ignore_index: int = check.IGNORE_INDEX_DEFAULT, reduction: Reduction = "mean",
                  label_smoothing: float = 0.0, z_loss: float = 0.0,
                  softcap: float | None = None, n_threads: int | None = None) -> Loss:
    """Cross-entropy of logits, as ``torch.nn.functional.cross_entropy``.

    For class indices, row ``n`` with target ``y`` has the loss
    ``w[y] * (logsumexp(x_n) - x_n[y])``; for class probabilities ``t``,
    ``sum_c w[c] t_c (logsumexp(x_n) - x_n[c])``. See the user guide's Semantics page for every
    rule (reductions, weights, ``ignore_index``, smoothing, non-finite input).

    Parameters
    ----------
    input : array_like
        The logits: ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``, classes on axis 1 (axis 0
        for 1-D input). float32 and float64 keep their dtype; float16 is computed in float32 and
        returned as float16; integers and bool become float64.
    target : array_like
        Either class indices: integers of any width, of shape ``(N, d1, ..., dK)`` (``()`` for
        1-D input), in ``[0, C)`` or equal to ``ignore_index``; or class probabilities: floats
        of ``input``'s shape.
    weight : array_like, optional
        Class weights, shape ``(C,)``, finite and non-negative. For class indices the row of
        target ``y`` weighs ``weight[y]`` and ``mean`` divides by the total weight; for
        probabilities each class's term is weighted.
    ignore_index : int, default -100
        A class index whose rows contribute nothing (to the loss, the mean's denominator and the
        gradient). Only for class indices: passing it with probability targets, even -100, is a
        ValueError.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        ``'none'``: the loss of each row, shape ``(N, d1, ..., dK)``; ``'sum'``: their sum;
        ``'mean'``: the sum over the total weight of the targets not ignored (class indices) or
        over the number of rows (probabilities).
    label_smoothing : float, default 0.0
        In ``[0, 1]``: the target is mixed with the uniform distribution,
        ``(1 - label_smoothing) * target + label_smoothing / C``, as PyTorch does.
    z_loss : float, default 0.0
        Adds ``z_loss * logsumexp(x_n)**2`` to each row's loss (PaLM's z-loss): unweighted,
        independent of the target and of ``label_smoothing``; ignored rows get nothing.
    softcap : float, optional
        Replaces every logit ``x`` by ``softcap * tanh(x / softcap)`` before everything else
        (Gemma 2); ``+-inf`` logits become ``+-softcap``.
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    numpy scalar or ndarray
        A NumPy scalar for ``'mean'`` and ``'sum'`` (and for 1-D input); for ``'none'`` an array
        of shape ``(N, d1, ..., dK)``. Of the input's dtype.

    Raises
    ------
    IndexError
        If a class index is outside ``[0, C)`` and not ``ignore_index`` (the message names the
        value, its position and C).
    ValueError
        If the target's shape fits neither kind of target; ``ignore_index`` is passed with
        probabilities; ``weight`` is not of shape ``(C,)``, negative or not finite; an option is
        out of range (``reduction``, ``label_smoothing``, ``z_loss``, ``softcap``,
        ``n_threads``); or C is 0.
    TypeError
        If the target has the right shape and the wrong dtype, or an argument has the wrong
        type.

    See Also
    --------
    cross_entropy_with_grad : The loss and its gradient, fused.
    CrossEntropyLoss : The same as an object, its arguments checked once.
    linear_cross_entropy : The loss of a linear layer's output, without the logits.

    Notes
    -----
    ``mean`` over rows that are all ignored is NaN (as PyTorch); ``sum`` is 0. Losses are within
    2 ulp (float32) and 4 ulp (float64, C up to 1000) of the exact loss; tiny losses are not
    rounded to 0.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> logits = np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]], np.float32)
    >>> fx.cross_entropy(logits, [0, 1, 2])
    np.float32(2.407606)
    >>> fx.cross_entropy(logits, [0, 1, -100], reduction="none")
    array([2.407606, 2.407606, 0.      ], dtype=float32)
    >>> fx.cross_entropy(logits, [0, 1, 2], weight=[1.0, 2.0, 3.0], label_smoothing=0.1)
    np.float32(2.3020504)
    >>> fx.cross_entropy(np.array([40.0, 0.0]), 0)    # not rounded to 0
    np.float64(4.248354255291589e-18)
    """
    problem = _torch_logits(input)
    options = LossOptions.parse(weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                                problem.c)
    return _torch_call(problem, input, target, weight, options, n_threads, with_grad=False)


@overload
def cross_entropy_with_grad(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                            ignore_index: int = check.IGNORE_INDEX_DEFAULT,
                            reduction: Literal["mean", "sum"] = "mean",
                            label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: float | None = None, grad_output: ArrayLike = 1.0,
                            out: FloatArray | None = None, n_threads: int | None = None
                            ) -> tuple[np.floating[Any], FloatArray]: ...
@overload
def cross_entropy_with_grad(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                            ignore_index: int = check.IGNORE_INDEX_DEFAULT,
                            reduction: Reduction,
                            label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: float | None = None, grad_output: ArrayLike = 1.0,
                            out: FloatArray | None = None, n_threads: int | None = None
                            ) -> tuple[Loss, FloatArray]: ...


def cross_entropy_with_grad(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                            ignore_index: int = check.IGNORE_INDEX_DEFAULT,
                            reduction: Reduction = "mean",
                            label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: float | None = None, grad_output: ArrayLike = 1.0,
                            out: FloatArray | None = None, n_threads: int | None = None
                            ) -> tuple[Loss, FloatArray]:
    """``(loss, grad)``: :func:`cross_entropy` and the gradient of ``grad_output * loss``, fused.

    One pass over the logits computes both; the gradient with respect to ``input`` is written
    into a new array, or into ``out``.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`cross_entropy`.
    grad_output : array_like, default 1.0
        The gradient flowing into the loss: a scalar for ``'mean'`` and ``'sum'``; for
        ``'none'`` an array of the loss's shape (or broadcastable to it).
    out : ndarray, optional
        Receives the gradient: an array of ``input``'s shape and of the result's dtype.
        ``out=input`` computes it in place (the logits are overwritten).
    n_threads : int, optional
        The number of threads. None (the default) uses every thread OpenMP may use at call time
        (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
        calling thread. Results are the same bits for every thread count.

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`cross_entropy`.
    grad : ndarray
        ``d(grad_output * loss) / d input``, of ``input``'s shape and dtype (``out`` if given).
        With ``z_loss`` it gains ``2 z_loss lse * softmax``; with ``softcap`` it carries the factor
        ``1 - tanh(x / softcap)**2``.

    Raises
    ------
    IndexError, ValueError, TypeError
        As :func:`cross_entropy`; ``ValueError`` also if ``grad_output`` does not broadcast to
        the loss's shape, or ``out`` does not fit.

    See Also
    --------
    cross_entropy, CrossEntropyLoss.with_grad

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> logits = np.array([[1., 2., 3.], [2., 1., 3.]], np.float32)
    >>> loss, grad = fx.cross_entropy_with_grad(logits, [0, 2])
    >>> loss
    np.float32(1.407606)
    >>> grad
    array([[-0.45498472,  0.12236424,  0.33262047],
           [ 0.12236424,  0.04501529, -0.16737953]], dtype=float32)
    >>> loss, grad = fx.cross_entropy_with_grad(logits, [0, 2], out=logits)  # in place
    >>> grad is logits
    True
    """
    problem = _torch_logits(input)
    options = LossOptions.parse(weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                                problem.c)
    return _torch_call(problem, input, target, weight, options, n_threads, with_grad=True,
                       grad_output=grad_output, out=out)


class CrossEntropyLoss:
    """The loss as an object, as ``torch.nn.CrossEntropyLoss``.

    The arguments are checked once, when the object is built (or an attribute is set), and
    ``weight`` is copied. Call the object for the loss, or :meth:`with_grad` for the loss and its
    gradient.

    Parameters
    ----------
    weight : array_like, optional
        Class weights, shape ``(C,)``, finite and non-negative (copied as float64).
    ignore_index : int, default -100
        A class index whose rows contribute nothing. Not allowed with probability targets unless
        left at its default.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As in :func:`cross_entropy`.
    label_smoothing : float, default 0.0
        In ``[0, 1]``, as in :func:`cross_entropy`.
    z_loss : float, default 0.0
        As in :func:`cross_entropy`.
    softcap : float, optional
        As in :func:`cross_entropy`.

    Attributes
    ----------
    weight : ndarray or None
        The object's own float64 copy of the class weights.
    ignore_index, reduction, label_smoothing, z_loss, softcap
        The arguments as given (``softcap`` None or a float). Setting one checks it again.

    Raises
    ------
    ValueError
        If an argument is out of range (as in :func:`cross_entropy`).
    TypeError
        If an argument has the wrong type.

    See Also
    --------
    cross_entropy, cross_entropy_with_grad

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent as fx
    >>> loss_fn = fx.CrossEntropyLoss(label_smoothing=0.1)
    >>> loss_fn
    CrossEntropyLoss(weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.1)
    >>> logits = np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]], np.float32)
    >>> loss_fn(logits, np.array([0, 1, 2]))
    np.float32(2.307606)
    """

    _options: LossOptions  # checked once, when built or when an option is set

    def __init__(self, weight: ArrayLike | None = None,
                 ignore_index: int = check.IGNORE_INDEX_DEFAULT, reduction: Reduction = "mean",
                 label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: float | None = None) -> None:
        options = LossOptions.parse(weight, ignore_index, reduction, label_smoothing, z_loss,
                                    softcap, None)
        object.__setattr__(self, "_options", options.with_own_weight())

    def __call__(self, input: ArrayLike, target: ArrayLike, *,
                 n_threads: int | None = None) -> Loss:
        """The loss, as :func:`cross_entropy` with the object's arguments.

        Parameters
        ----------
        input : array_like
            The logits, ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target : array_like
            Class indices or class probabilities, as in :func:`cross_entropy`.
        n_threads : int, optional
            The number of threads. None (the default) uses every thread OpenMP may use at call time
            (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
            calling thread. Results are the same bits for every thread count.

        Returns
        -------
        numpy scalar or ndarray
            As :func:`cross_entropy`.

        Raises
        ------
        IndexError, ValueError, TypeError
            As :func:`cross_entropy`; ``ValueError`` also if ``weight`` does not have C entries.

        Examples
        --------
        >>> import numpy as np
        >>> import fastxent as fx
        >>> loss_fn = fx.CrossEntropyLoss(weight=[1.0, 2.0, 3.0], reduction="sum")
        >>> loss_fn(np.array([[1., 2., 3.], [2., 1., 3.]]), np.array([0, 1]))
        np.float64(7.22281789333314)
        """
        problem = _torch_logits(input)
        options = self._options
        check.weight_classes(options.weight, problem.c)
        return _torch_call(problem, input, target, options.weight, options, n_threads,
                           with_grad=False)

    def with_grad(self, input: ArrayLike, target: ArrayLike, grad_output: ArrayLike = 1.0, *,
                  out: FloatArray | None = None,
                  n_threads: int | None = None) -> tuple[Loss, FloatArray]:
        """``(loss, grad)``, as :func:`cross_entropy_with_grad` with the object's arguments.

        Parameters
        ----------
        input : array_like
            The logits, ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target : array_like
            Class indices or class probabilities, as in :func:`cross_entropy`.
        grad_output : array_like, default 1.0
            The gradient flowing into the loss, as in :func:`cross_entropy_with_grad`.
        out : ndarray, optional
            Receives the gradient; ``out=input`` computes it in place.
        n_threads : int, optional
            The number of threads. None (the default) uses every thread OpenMP may use at call time
            (``OMP_NUM_THREADS`` and ``threadpoolctl`` are honoured); small problems stay on the
            calling thread. Results are the same bits for every thread count.

        Returns
        -------
        loss : numpy scalar or ndarray
            As :func:`cross_entropy`.
        grad : ndarray
            ``d(grad_output * loss) / d input``, of ``input``'s shape and dtype.

        Raises
        ------
        IndexError, ValueError, TypeError
            As :func:`cross_entropy_with_grad`.

        Examples
        --------
        >>> import numpy as np
        >>> import fastxent as fx
        >>> loss_fn = fx.CrossEntropyLoss()
        >>> loss, grad = loss_fn.with_grad(np.array([[1., 2., 3.]]), np.array([2]), grad_output=0.5)
        >>> grad
        array([[ 0.04501529,  0.12236424, -0.16737952]])
        """
        problem = _torch_logits(input)
        options = self._options
        check.weight_classes(options.weight, problem.c)
        return _torch_call(problem, input, target, options.weight, options, n_threads,
                           with_grad=True, grad_output=grad_output, out=out)

    # The options read as the arguments: ``weight`` is the object's own float64 copy, ``softcap``
    # None or a float. Setting one parses the options again.
    weight = property(lambda self: self._options.weight)
    ignore_index = property(lambda self: self._options.ignore_index)
    reduction = property(lambda self: self._options.reduction)
    label_smoothing = property(lambda self: self._options.label_smoothing)
    z_loss = property(lambda self: self._options.z_loss)
    softcap = property(lambda self: self._options.softcap or None)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in LossOptions._fields:
            object.__setattr__(self, name, value)
            return
        arguments = {field: getattr(self, field) for field in LossOptions._fields}
        arguments[name] = value
        options = LossOptions.parse(**arguments, n_classes=None)
        object.__setattr__(self, "_options", options.with_own_weight())

    def __repr__(self) -> str:
        weight = "None" if self.weight is None else f"array(shape={self.weight.shape})"
        extra = ""
        if self.z_loss:
            extra += f", z_loss={self.z_loss}"
        if self.softcap is not None:
            extra += f", softcap={self.softcap}"
        return (f"CrossEntropyLoss(weight={weight}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}{extra})")
