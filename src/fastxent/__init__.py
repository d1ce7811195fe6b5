"""fastxent: fast, exact, lean softmax cross-entropy for NumPy on the CPU.

The loss and its gradient, fused in one pass over the logits, for dense labels (as
``tf.nn.softmax_cross_entropy_with_logits``) and integer labels (as
``torch.nn.functional.cross_entropy``), plus softmax, log_softmax and logsumexp. See
``help(fastxent.cross_entropy)`` and the documentation in ``docs/``.
"""

from . import _backend
from ._api import (
    CrossEntropyLoss,
    cross_entropy,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    softmax,
    softmax_cross_entropy_with_logits,
    softmax_cross_entropy_with_logits_and_grad,
    sparse_softmax_cross_entropy_with_logits,
    sparse_softmax_cross_entropy_with_logits_and_grad,
)
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad

__version__ = "0.1.0"

#: "compiled" or "python": which kernel module this import chose (see FASTXENT_PURE_PYTHON).
backend: str = _backend.name
#: whether the compiled kernels were built with OpenMP (always False for the fallback).
openmp_enabled: bool = _backend.openmp_enabled

__all__ = [
    "CrossEntropyLoss",
    "backend",
    "cross_entropy",
    "cross_entropy_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "openmp_enabled",
    "softmax",
    "softmax_cross_entropy_with_logits",
    "softmax_cross_entropy_with_logits_and_grad",
    "sparse_softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits_and_grad",
]
