"""A drop-in ``torch.nn.functional.cross_entropy`` and ``torch.nn.CrossEntropyLoss`` on fastxent.

``import fastxent.torch`` (needs PyTorch; ``pip install fastxent[torch]``)::

    import fastxent.torch as fxt
    loss = fxt.cross_entropy(logits, target)        # as F.cross_entropy, autograd-aware
    loss.backward()
    loss_fn = fxt.CrossEntropyLoss(label_smoothing=0.1)   # an nn.CrossEntropyLoss

The forward pass runs fastxent's fused kernel on the tensors' own memory (``.numpy()`` of a CPU
tensor is a strided view, never a copy) and computes the loss and the gradient together; the
gradient is saved, and the backward pass only scales it by ``grad_output`` (or hands it on as
it is when ``grad_output`` is 1, the usual ``loss.backward()``). Compared with PyTorch's
``log_softmax`` + ``nll_loss``, that is one pass over the logits instead of four, and one
``(N, C)`` buffer instead of three.

Anything fastxent does not cover goes to PyTorch's own ``F.cross_entropy``, with the same
result: tensors on another device than the CPU, dtypes other than float32/float64 (half,
bfloat16), sparse layouts, tensor subclasses, a ``weight`` or probability ``target`` that
requires grad (fastxent computes the gradient for the logits only), and every call with shapes
or dtypes that PyTorch rejects, so that the error is PyTorch's own (its type and message).
fastxent rejects more than PyTorch in three cases, with a ValueError: negative, NaN or
infinite class weights, and a negative or NaN ``label_smoothing``.

Double backward is not supported: a backward pass with ``create_graph=True`` through the loss
raises a RuntimeError (the saved gradient is numbers, not a graph). Use ``F.cross_entropy`` for
Hessian-vector products. The kernel is registered as the custom operator
``torch.ops.fastxent.cross_entropy``, so ``torch.compile`` traces through the loss without a
graph break.
"""

import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import _api
from . import _validation as check

__all__ = ["CrossEntropyLoss", "cross_entropy"]

_DTYPES = (torch.float32, torch.float64)
_PROBABILITY_DTYPES = (torch.float16, torch.float32, torch.float64)
_INDEX_DTYPES = (torch.int64, torch.uint8)  # PyTorch's: "expected target dtype to be Long or Byte"
# Raised eagerly, not when the second derivative is taken: a gradient without a graph would
# otherwise drop out of a gradient penalty silently.
_NO_DOUBLE_BACKWARD = (
    "fastxent.torch.cross_entropy does not support double backward (create_graph=True): its "
    "gradient is computed by a kernel, not recorded as a graph; use "
    "torch.nn.functional.cross_entropy for higher-order derivatives"
)


# ------------------------------------------------------------------------------------------
# The kernel as a PyTorch operator
# ------------------------------------------------------------------------------------------

def _numpy(t: Tensor) -> np.ndarray:
    # detach() so that .numpy() is allowed on tensors that require grad; a view either way
    return t.detach().numpy()


@torch.library.custom_op("fastxent::cross_entropy", mutates_args=())
def _cross_entropy_op(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                      reduction: str, label_smoothing: float,
                      with_grad: bool) -> tuple[Tensor, Tensor]:
    """``(loss, grad)`` of ``F.cross_entropy``; ``grad`` is empty unless ``with_grad``."""
    w = None if weight is None else _numpy(weight)
    if target.is_floating_point():  # PyTorch's rule was applied: a negative one is not an error
        ignore_index = check.IGNORE_INDEX_DEFAULT
    kwargs: dict[str, Any] = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
                                  label_smoothing=label_smoothing,
                                  n_threads=torch.get_num_threads())
    if with_grad:
        loss, grad = _api.cross_entropy_with_grad(_numpy(input), _numpy(target), **kwargs)
        grad_t = torch.from_numpy(grad)
    else:
        loss = _api.cross_entropy(_numpy(input), _numpy(target), **kwargs)
        grad_t = input.new_empty(0)
    # np.array, not asarray: a 0-d result must be a writeable array of its own for torch
    return torch.from_numpy(np.array(loss, copy=not isinstance(loss, np.ndarray))), grad_t


@_cross_entropy_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, with_grad):
    # shapes, dtypes and strides only, for torch.compile's tracing: the kernel's gradient is a
    # new C-contiguous array whatever the input's strides (not empty_like, which keeps them)
    loss_shape = (() if reduction != "none" or input.dim() == 1
                  else (input.shape[0], *input.shape[2:]))
    grad = input.new_empty(input.shape) if with_grad else input.new_empty(0)
    return input.new_empty(loss_shape), grad


# ------------------------------------------------------------------------------------------
# Autograd
# ------------------------------------------------------------------------------------------

class _CrossEntropy(torch.autograd.Function):
    """Forward: fused loss and gradient. Backward: the saved gradient times ``grad_output``."""

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing):
        loss, grad = _cross_entropy_op(input, target, weight, ignore_index, reduction,
                                       label_smoothing, True)
        ctx.save_for_backward(grad)
        ctx.per_row = reduction == "none" and input.dim() > 1
        ctx.handed_out = False
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():  # create_graph=True: the caller wants to differentiate again
            raise RuntimeError(_NO_DOUBLE_BACKWARD)
        (grad,) = ctx.saved_tensors
        if ctx.per_row:
            # loss (N, d1, ...), gradient (N, C, d1, ...): broadcast over the class axis
            return grad * grad_output.unsqueeze(1), None, None, None, None, None
        if not torch.compiler.is_compiling() and not ctx.handed_out and bool(grad_output == 1):
            # loss.backward(): the saved gradient is the answer. Without retain_graph autograd
            # frees its saved copy first and then adopts this buffer as .grad, no copy made.
            # With retain_graph a later backward through this loss gets a copy (two gradients
            # never share memory), and an in-place change of the one handed out here is caught
            # by autograd's version check on the saved tensor.
            ctx.handed_out = True
            return grad, None, None, None, None, None
        return grad * grad_output, None, None, None, None, None


def _plain_cpu(t: Tensor) -> bool:
    return (type(t) is torch.Tensor or type(t) is torch.nn.Parameter) and \
        t.device.type == "cpu" and t.layout == torch.strided


def _covered(input: Tensor, target: Tensor, weight: Tensor | None) -> bool:
    """Whether fastxent computes this call. Every other call is PyTorch's, which computes it or
    raises its own error: tensors fastxent does not read (another device or layout, half
    precision logits, a target or weight that requires grad), and every call whose shapes or
    dtypes PyTorch would reject, or read by a rule of its own (a target dtype other than int64
    and uint8, a weight of another dtype than the input's, no classes, a (1,) target for a (C,)
    input)."""
    if not (_plain_cpu(input) and input.dtype in _DTYPES and _plain_cpu(target)) \
            or input.dim() == 0:
        return False
    class_dim = 0 if input.dim() == 1 else 1
    n_classes = input.shape[class_dim]
    if n_classes == 0:
        return False
    if target.is_floating_point():  # (of a dtype that does not promote the loss's)
        covered = (target.dtype in _PROBABILITY_DTYPES and target.shape == input.shape
                   and torch.promote_types(input.dtype, target.dtype) == input.dtype
                   and not target.requires_grad)
    else:
        covered = (target.dtype in _INDEX_DTYPES
                   and target.shape == input.shape[:class_dim] + input.shape[class_dim + 1:])
    if weight is not None:
        covered = (covered and _plain_cpu(weight) and not weight.requires_grad
                   and weight.dtype == input.dtype and weight.shape == (n_classes,))
    return covered


def _label_smoothing(value: float) -> float:
    """PyTorch's reading: a bool is 0 or 1, above 1 is its RuntimeError; below 0 (and NaN),
    which PyTorch reads as 0 for class indices, is fastxent's ValueError (docs/coming-from.md)."""
    if isinstance(value, (bool, np.bool_)):
        value = float(value)
    if isinstance(value, numbers.Real) and value > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {float(value)}")
    return check.label_smoothing(value)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100,
                  reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits, as ``torch.nn.functional.cross_entropy`` (same signature, result).

    CPU float32 and float64 tensors run through fastxent's fused kernel with
    ``torch.get_num_threads()`` threads, and the loss carries the gradient computed with it;
    everything else (other devices and dtypes, a weight or probability target that requires grad,
    calls PyTorch rejects) runs through PyTorch's own ``F.cross_entropy``.

    Parameters
    ----------
    input : torch.Tensor
        The logits: ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``, classes on axis 1 (axis 0
        for 1-D input).
    target : torch.Tensor
        Class indices (int64 or uint8, shape ``(N, d1, ..., dK)``) or class probabilities
        (floating, ``input``'s shape).
    weight : torch.Tensor, optional
        Class weights, shape ``(C,)``.
    size_average : bool, optional
        PyTorch's deprecated form of ``reduction``, read as PyTorch reads it.
    ignore_index : int, default -100
        A class index whose rows contribute nothing (class indices only).
    reduce : bool, optional
        PyTorch's deprecated form of ``reduction``, read as PyTorch reads it.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As in ``torch.nn.functional.cross_entropy``.
    label_smoothing : float, default 0.0
        In ``[0, 1]``: the target mixed with the uniform distribution.

    Returns
    -------
    torch.Tensor
        The loss: 0-d for ``'mean'`` and ``'sum'``, shape ``(N, d1, ..., dK)`` for ``'none'``;
        autograd-aware (no double backward).

    Raises
    ------
    ValueError
        If ``weight`` is negative, NaN or infinite, or ``label_smoothing`` negative or NaN
        (PyTorch computes with them).
    RuntimeError
        PyTorch's own errors, for calls that PyTorch rejects; and a backward pass with
        ``create_graph=True`` through the loss.

    See Also
    --------
    CrossEntropyLoss : The module form.
    fastxent.cross_entropy : The same on NumPy arrays.

    Examples
    --------
    >>> import torch
    >>> import fastxent.torch as fxt
    >>> x = torch.tensor([[1., 2., 3.], [2., 1., 3.], [3., 2., 1.]], requires_grad=True)
    >>> loss = fxt.cross_entropy(x, torch.tensor([0, 1, 2]))
    >>> loss
    tensor(2.4076, grad_fn=<_CrossEntropyBackward>)
    >>> loss.backward()
    >>> x.grad[0]
    tensor([-0.3033,  0.0816,  0.2217])
    """
    if size_average is not None or reduce is not None:  # PyTorch's deprecated arguments
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if not _covered(input, target, weight):
        return F.cross_entropy(input, target, weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)
    ignore_index = check.ignore_index(ignore_index)  # PyTorch's TypeError for a float, not the op's
    if target.is_floating_point() and ignore_index >= 0:  # PyTorch's rule, and its error
        raise RuntimeError("ignore_index is not supported for floating point target")
    label_smoothing = _label_smoothing(label_smoothing)
    reduction = check.reduction(reduction)  # PyTorch's ValueError, not the operator's schema error
    if torch.is_grad_enabled() and input.requires_grad:
        return _CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing)
    loss, _ = _cross_entropy_op(input, target, weight, ignore_index, reduction, label_smoothing,
                                False)
    return loss


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by :func:`cross_entropy`.

    The same arguments, buffers and state dict as PyTorch's module, so it can replace it in a
    model or a checkpoint.

    Parameters
    ----------
    weight : torch.Tensor, optional
        Class weights, shape ``(C,)`` (a buffer of the module).
    size_average : bool, optional
        PyTorch's deprecated form of ``reduction``.
    ignore_index : int, default -100
        A class index whose rows contribute nothing.
    reduce : bool, optional
        PyTorch's deprecated form of ``reduction``.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As in ``torch.nn.CrossEntropyLoss``.
    label_smoothing : float, default 0.0
        In ``[0, 1]``.

    See Also
    --------
    cross_entropy

    Examples
    --------
    >>> import torch
    >>> import fastxent.torch as fxt
    >>> loss_fn = fxt.CrossEntropyLoss(label_smoothing=0.1)
    >>> loss_fn(torch.tensor([[1., 2., 3.]], dtype=torch.float64), torch.tensor([2]))
    tensor(0.5076, dtype=torch.float64)
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss: :func:`cross_entropy` with the module's arguments.

        Parameters
        ----------
        input : torch.Tensor
            The logits, ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target : torch.Tensor
            Class indices or class probabilities.

        Returns
        -------
        torch.Tensor
            As :func:`cross_entropy`.

        Examples
        --------
        >>> import torch
        >>> import fastxent.torch as fxt
        >>> loss_fn = fxt.CrossEntropyLoss(reduction="none")
        >>> loss_fn.forward(torch.tensor([[1., 2., 3.], [3., 2., 1.]]), torch.tensor([2, 2]))
        tensor([0.4076, 2.4076])
        """
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)
