"""The options of a loss and the rules that turn per-row losses into the loss and its gradient.

One owner for every caller: the in-memory API (``_api``), the fused linear layer (``_linear``)
and the Dask bridge (``dask``) parse their options into one ``LossOptions`` and take the mean's
denominator, its weight rescaling, the gradient's scale and the final reduction from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import _validation as check


class LossOptions(NamedTuple):
    """The validated options of a cross-entropy call, in the form the kernels take them.
    Immutable (a tuple: built in a third of a frozen dataclass's time, which a tiny call
    would notice)."""

    #: None, or finite non-negative float64 class weights, C-contiguous, of shape (C,)
    weight: np.ndarray | None
    #: an int64 class index; ``IGNORE_INDEX_DEFAULT`` itself when the caller gave none
    ignore_index: int
    #: "mean", "sum" or "none"
    reduction: str
    #: in [0, 1]
    label_smoothing: float
    #: finite, >= 0 (0.0: no z-loss)
    z_loss: float
    #: finite, > 0, or 0.0 for no softcap
    softcap: float

    @classmethod
    def parse(cls, weight: Any, ignore_index: Any, reduction: Any, label_smoothing: Any,
              z_loss: Any, softcap: Any, n_classes: int | None) -> LossOptions:
        """Every option checked once, in this order: reduction, label_smoothing, z_loss,
        softcap, ignore_index, weight (of ``n_classes`` entries; None: any length)."""
        reduction = check.reduction(reduction)
        label_smoothing = check.label_smoothing(label_smoothing)
        z_loss = check.z_loss(z_loss)
        softcap = check.softcap(softcap)
        ignore_index = check.ignore_index(ignore_index)
        weight = check.class_weight(weight, n_classes)
        # tuple.__new__: the checked fields without the namedtuple's argument parsing
        return tuple.__new__(cls, (weight, ignore_index, reduction, label_smoothing, z_loss,
                                   softcap))

    def with_own_weight(self) -> LossOptions:
        """These options with a weight array of their own (the caller's may change later)."""
        return self if self.weight is None else self._replace(weight=self.weight.copy())


#: the options of the TensorFlow family: per-row losses of the plain cross-entropy
PLAIN = LossOptions(None, check.IGNORE_INDEX_DEFAULT, "none", 0.0, 0.0, 0.0)


def kernel_terms(z_loss: float, softcap: float) -> dict[str, float]:
    """The keyword arguments of a loss kernel's optional per-row terms: none when both are off,
    so that the kernels run their plain loops."""
    return {"z_loss": z_loss, "softcap": softcap} if (z_loss or softcap) else {}


# ------------------------------------------------------------------------------------------
# The mean's denominator and its rescaling
# ------------------------------------------------------------------------------------------

def denominator(reduction: str, total: float) -> float:
    """What the summed loss is divided by: ``total`` (the targets' total weight, or the number
    of rows for probability targets) for ``mean``, 1 otherwise."""
    return total if reduction == "mean" else 1.0


def mean_weight_shift(weight: np.ndarray, total: float, n_rows: int) -> int:
    """A power of two that brings ``total``, a sum over ``n_rows`` of ``weight``'s values, near 1
    (``total=inf``: an overflowing or unknown sum; the largest possible one is brought below 1).
    No weight overflows on the way."""
    top = int(np.frexp(weight.max())[1])  # weight.max() < 2**top
    if total == np.inf:  # at most n_rows times the largest weight: bring that below 1
        return -(top + int(n_rows).bit_length())
    return min(-int(np.frexp(total)[1]), 1023 - top)  # and no weight may overflow


def weights_for_mean(weight: np.ndarray, total: float, n_rows: int, z_loss: float,
                     recount: Callable[..., float], *args: Any) -> tuple[np.ndarray, float, float]:
    """``(weight, total, z_loss)`` rescaled for a mean over class indices with the known weight
    ``total`` (not 0) of ``n_rows`` targets.

    The mean divides by the targets' total weight, so it does not depend on the weights' scale:
    the total is brought near 1 by a power of two (exact: the same bits, unless huge or tiny
    weights would overflow or underflow on the way). The z-loss term is not weighted: it is
    scaled alike, so that the mean is unchanged. An infinite total is summed again from the
    rescaled weights by ``recount(weight, *args)``."""
    shift = mean_weight_shift(weight, total, n_rows)
    if not shift:
        return weight, total, z_loss
    weight = np.ldexp(weight, shift)
    z_loss = float(np.ldexp(z_loss, shift))
    total = recount(weight, *args) if total == np.inf else float(np.ldexp(total, shift))
    return weight, total, z_loss


def weights_for_lazy_mean(weight: np.ndarray | None, n_rows: int) -> np.ndarray | None:
    """``weight`` rescaled for a mean over up to ``n_rows`` class-index targets whose total
    weight is not known yet (the Dask bridge sums it lazily): unchanged unless that total could
    overflow, else by ``mean_weight_shift`` for an overflowing total. A power of two: the mean
    and its gradient keep their bits."""
    if weight is None or n_rows == 0 or not weight.max() > 0.0:
        return weight
    if int(np.frexp(weight.max())[1]) + int(n_rows).bit_length() <= 1000:  # max < 2**exponent
        return weight
    return np.ldexp(weight, mean_weight_shift(weight, math.inf, n_rows))


# ------------------------------------------------------------------------------------------
# The gradient's scale and the final reduction
# ------------------------------------------------------------------------------------------

def gradient_scale(grad_output: float, denominator: float, any_counted: Callable[..., bool],
                   *args: Any) -> float:
    """The factor of every row's gradient: ``grad_output / denominator``. A mean over nothing
    (every target ignored, or no rows) has an all-zero gradient; a mean over targets whose
    classes all weigh 0 has PyTorch's ``grad_output / 0`` = NaN. ``any_counted(*args)``
    (whether any target is not ignored) is asked only when the denominator is 0."""
    if denominator != 0.0:
        return grad_output / denominator
    return math.nan if any_counted(*args) else 0.0


def reduce(loss_rows: np.ndarray, reduction: str, denominator: float, result: np.dtype,
           loss_shape: tuple[int, ...]) -> np.ndarray | np.generic:
    """The loss of float64 per-row losses: an array of ``loss_shape`` (a scalar for no axes)
    for ``none``, else a scalar, all in the ``result`` dtype. A mean over nothing (0 / 0) is
    NaN, without a warning."""
    if reduction == "none":
        with np.errstate(over="ignore"):  # a float32 loss beyond 3.4e38 is inf, as documented
            losses = loss_rows.reshape(loss_shape).astype(result, copy=False)
        return losses if losses.ndim else losses[()]
    # pairwise, in a fixed order: the same bits for any n_threads (np.add.reduce: ndarray.sum
    # without its Python wrapper, which is a tenth of a tiny call)
    total = float(np.add.reduce(loss_rows, axis=None))
    if reduction == "sum":
        return scalar(total, result)
    return scalar(total / denominator if denominator != 0.0 else math.nan, result)


def scalar(value: float, dtype: np.dtype) -> np.generic:
    """``value`` as a NumPy scalar of ``dtype``; beyond float32's range, inf without a warning
    (as the rows)."""
    if dtype.itemsize > 4 or (dtype.itemsize == 4 and abs(value) <= _FLOAT32_MAX):  # no errstate
        return dtype.type(value)
    with np.errstate(over="ignore"):
        return dtype.type(value)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
