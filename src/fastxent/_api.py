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
    """Softmax along ``axis``: ``exp(x - logsumexp(x, axis))``, as ``scipy.special.softmax``.

    Rows whose maximum is not finite (all -inf, or a +inf) are NaN. ``out`` may be ``x`` itself.

    >>> softmax(np.array([1.0, 2.0, 3.0]))
    array([0.09003057, 0.24472847, 0.66524096])
    """
    return _normaliser("softmax", x, axis, out, n_threads)


def log_softmax(x: ArrayLike, axis: int = -1, *, out: FloatArray | None = None,
                n_threads: int | None = None) -> FloatArray:
    """Log-softmax along ``axis``: ``x - logsumexp(x, axis)``, as ``scipy.special.log_softmax``.

    >>> log_softmax(np.array([1.0, 2.0, 3.0]))
    array([-2.40760596, -1.40760596, -0.40760596])
    """
    return _normaliser("log_softmax", x, axis, out, n_threads)


def logsumexp(x: ArrayLike, axis: int = -1, *, out: FloatArray | None = None,
              n_threads: int | None = None) -> Loss:
    """``log(sum(exp(x), axis))`` computed stably, as ``scipy.special.logsumexp`` for one axis.

    A row of -inf gives -inf, a +inf gives +inf, a NaN gives NaN. The result has ``x.shape``
    without ``axis``.

    >>> logsumexp(np.array([1.0, 2.0, 3.0]))
    np.float64(3.40760596444438)
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
    """Per-example cross-entropy with dense labels, as ``tf.nn.softmax_cross_entropy_with_logits``.

    ``loss = sum_c labels_c * (logsumexp(logits) - logits_c)`` along ``axis``; ``labels`` has the
    shape of ``logits`` (a distribution per row); the result has ``logits.shape`` without ``axis``.

    >>> softmax_cross_entropy_with_logits([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]],
    ...                                   [[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    array([0.16984602, 0.82474489])
    """
    return _tf_call(labels, logits, axis, None, n_threads, with_grad=False, sparse=False)


def softmax_cross_entropy_with_logits_and_grad(labels: ArrayLike, logits: ArrayLike,
                                               axis: int = -1, *,
                                               out: FloatArray | None = None,
                                               n_threads: int | None = None
                                               ) -> tuple[Loss, FloatArray]:
    """``(loss, backprop)``: the per-example loss and its gradient w.r.t. ``logits``, fused.

    ``backprop = (sum labels) * softmax(logits) - labels``: the true gradient of the summed loss
    (TensorFlow's raw op returns ``softmax - labels``, which is only right when each row of
    labels sums to 1). ``out`` receives the gradient; ``out=logits`` computes it in place.
    """
    return _tf_call(labels, logits, axis, out, n_threads, with_grad=True, sparse=False)


def sparse_softmax_cross_entropy_with_logits(labels: ArrayLike, logits: ArrayLike, *,
                                             n_threads: int | None = None) -> Loss:
    """Per-example cross-entropy with class-index labels, as
    ``tf.nn.sparse_softmax_cross_entropy_with_logits``: ``logsumexp(logits) - logits[labels]``.

    ``labels`` are integers of any width with shape ``logits.shape[:-1]``; an index outside
    ``[0, C)`` raises IndexError.

    >>> sparse_softmax_cross_entropy_with_logits([0, 3, 1], [[2.0, -5.0, 0.5, -0.1],
    ...     [0.0, 0.0, 1.9, 1.4], [-100.0, 100.0, -100.0, -100.0]])
    array([2.97507497e-01, 1.14483255e+00, 4.15168958e-87])

    (TensorFlow's float32 op rounds the last loss to 0.)
    """
    return _tf_call(labels, logits, -1, None, n_threads, with_grad=False, sparse=True)


def sparse_softmax_cross_entropy_with_logits_and_grad(labels: ArrayLike, logits: ArrayLike, *,
                                                      out: FloatArray | None = None,
                                                      n_threads: int | None = None
                                                      ) -> tuple[Loss, FloatArray]:
    """``(loss, backprop)`` with ``backprop = softmax(logits) - one_hot(labels)``, fused in one pass
    over the logits, as ``tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits``."""
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

    ``input`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)`` (classes on axis 1, or 0 for 1-D).
    An integer ``target`` of shape ``(N, d1, ..., dK)`` holds class indices:
    ``l_n = w[y_n] * (logsumexp(x_n) - x_n[y_n])``, rows equal to ``ignore_index`` contribute
    nothing, and ``mean`` divides by the total weight of the other rows. A floating ``target`` of
    ``input``'s shape holds class probabilities (``mean`` divides by the number of rows; an
    ``ignore_index`` passed with them, even -100, is a ValueError: no target can be ignored).
    ``label_smoothing`` mixes the target with the uniform distribution, as PyTorch does.

    ``z_loss=lam`` adds ``lam * logsumexp(x_n)**2`` to every row's loss (PaLM's z-loss): per row,
    unweighted by ``weight`` and independent of the target kind and of ``label_smoothing``;
    ignored rows get nothing, and ``mean`` divides by the same denominator as the cross-entropy.
    ``softcap=s`` replaces every logit ``x`` by ``s * tanh(x / s)`` before everything else
    (Gemma 2), for every target kind; ``+-inf`` logits become ``+-s``.

    >>> cross_entropy(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]], np.float32), [0, 1, 2])
    np.float32(2.407606)
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
    """``(loss, grad)``: ``cross_entropy`` and ``d(grad_output * loss) / d input``, fused.

    ``grad_output`` is a scalar for ``mean``/``sum`` and an array of the loss's shape (or
    broadcastable to it) for ``none``. ``out`` receives the gradient; ``out=input`` computes it
    in place (opt-in: the logits are overwritten). With ``z_loss`` the gradient gains
    ``2 z lse * softmax``; with ``softcap`` it carries the factor ``1 - tanh(x / s)**2``.
    """
    problem = _torch_logits(input)
    options = LossOptions.parse(weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                                problem.c)
    return _torch_call(problem, input, target, weight, options, n_threads, with_grad=True,
                       grad_output=grad_output, out=out)


class CrossEntropyLoss:
    """The loss as an object, as ``torch.nn.CrossEntropyLoss``: arguments are checked once.

    >>> loss_fn = CrossEntropyLoss()
    >>> loss_fn(np.array([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]], np.float32),
    ...         np.array([0, 1, 2]))
    np.float32(2.407606)
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
        problem = _torch_logits(input)
        options = self._options
        check.weight_classes(options.weight, problem.c)
        return _torch_call(problem, input, target, options.weight, options, n_threads,
                           with_grad=False)

    def with_grad(self, input: ArrayLike, target: ArrayLike, grad_output: ArrayLike = 1.0, *,
                  out: FloatArray | None = None,
                  n_threads: int | None = None) -> tuple[Loss, FloatArray]:
        """``(loss, grad)`` as ``cross_entropy_with_grad``."""
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
