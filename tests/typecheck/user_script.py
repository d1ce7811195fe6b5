"""A user's script: every public function of fastxent, with the types a user writes down.

`.ci/run` checks it with ``mypy --strict`` against the installed package, then runs it (so the
stated types are the ones returned). The annotated assignments are what a user's code states;
``assert_type`` pins each public result's type exactly, so that a result a type checker sees
as ``Any`` fails the check (an annotated assignment alone accepts ``Any``; and
``--disallow-any-expr`` cannot be used: NumPy's own types, ``np.floating[Any]`` and
``NDArray``'s shape, contain ``Any``). tests/test_typing.py checks that every public name of
fastxent is called here.
"""

from typing import Any, Literal, assert_type

import numpy as np
import numpy.typing as npt

import fastxent as fx

FloatArray = npt.NDArray[np.floating[Any]]
Loss = FloatArray | np.floating[Any]

logits = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [3.0, 2.0, 1.0]], dtype=np.float32)
labels = np.array([0, 1, 2])
dense = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2], [0.0, 0.0, 1.0]], dtype=np.float32)
hidden = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
weight = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
bias = np.array([0.1, 0.0, -0.1])

# The module's facts.
version: str = assert_type(fx.__version__, str)
backend: str = assert_type(fx.backend, str)
openmp: bool = assert_type(fx.openmp_enabled, bool)

# Normalisers: nested lists are array-likes too.
probs: FloatArray = assert_type(fx.softmax(logits), FloatArray)
log_probs: FloatArray = assert_type(fx.log_softmax([[1.0, 2.0], [0.0, 0.0]], axis=0), FloatArray)
into: FloatArray = assert_type(fx.softmax(logits, out=np.empty_like(logits), n_threads=1),
                               FloatArray)
lse_rows: Loss = assert_type(fx.logsumexp(logits), Loss)

# The TensorFlow family: per-example losses (a scalar for one row of logits).
tf_loss: Loss = assert_type(fx.softmax_cross_entropy_with_logits(dense, logits), Loss)
tf_loss_g, backprop = assert_type(
    fx.softmax_cross_entropy_with_logits_and_grad(dense, logits, axis=-1), tuple[Loss, FloatArray])
sparse_loss: Loss = assert_type(fx.sparse_softmax_cross_entropy_with_logits([0, 2, 1], logits),
                                Loss)
sparse_loss_g, sparse_backprop = assert_type(
    fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels, logits, out=np.empty_like(logits)),
    tuple[Loss, FloatArray])

# The PyTorch family: a reduction gives a NumPy scalar, reduction="none" a loss of any shape.
mean: np.floating[Any] = assert_type(fx.cross_entropy(logits, labels), np.floating[Any])
total: np.floating[Any] = assert_type(
    fx.cross_entropy(logits, labels, reduction="sum", weight=[1.0, 2.0, 3.0], ignore_index=-1,
                     label_smoothing=0.1, z_loss=1e-4, softcap=30.0, n_threads=2),
    np.floating[Any])
per_row: Loss = assert_type(fx.cross_entropy(logits, labels, reduction="none"), Loss)
chosen: Literal["mean", "sum", "none"] = "mean" if len(labels) > 1 else "none"
either: Loss = assert_type(fx.cross_entropy(logits, dense, reduction=chosen), Loss)
loss, grad = assert_type(fx.cross_entropy_with_grad(logits, labels, grad_output=0.5),
                         tuple[np.floating[Any], FloatArray])
rows_loss, rows_grad = assert_type(
    fx.cross_entropy_with_grad(logits, labels, reduction="none", grad_output=np.ones(3)),
    tuple[Loss, FloatArray])

loss_fn = fx.CrossEntropyLoss(weight=[1.0, 2.0, 3.0], ignore_index=-100, reduction="mean",
                              label_smoothing=0.0, z_loss=0.0, softcap=None)
obj_loss: Loss = assert_type(loss_fn(logits, labels), Loss)
obj_loss_g, obj_grad = assert_type(loss_fn.with_grad(logits, labels, 0.5, n_threads=1),
                                   tuple[Loss, FloatArray])
shown: str = assert_type(repr(loss_fn), str)

# Large vocabularies: three results without a bias, four with one.
lin_mean: np.floating[Any] = assert_type(fx.linear_cross_entropy(hidden, weight, labels),
                                         np.floating[Any])
lin_rows: FloatArray = assert_type(
    fx.linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="none", chunk_size=2),
    FloatArray)
lin_loss, grad_hidden, grad_weight = assert_type(
    fx.linear_cross_entropy_with_grad(hidden, weight, labels),
    tuple[Loss, FloatArray, FloatArray])
lin_loss_b, grad_hidden_b, grad_weight_b, grad_bias = assert_type(
    fx.linear_cross_entropy_with_grad(hidden, weight, labels, bias=bias, grad_output=2.0),
    tuple[Loss, FloatArray, FloatArray, FloatArray])

# What a user does next: plain floats and array arithmetic.
print(f"fastxent {version} ({backend}, OpenMP {openmp}): loss {float(mean):.6f}, "
      f"grad norm {float(np.linalg.norm(grad)):.6f}, linear {float(lin_mean):.6f}")

# The stated types are the returned ones (an array-or-scalar Loss is the one its call gives).
for scalar in (mean, total, loss, lin_mean, obj_loss, either, lin_loss, lin_loss_b, obj_loss_g):
    assert isinstance(scalar, np.floating), type(scalar)
for array in (probs, log_probs, into, lse_rows, tf_loss, tf_loss_g, backprop, sparse_loss,
              sparse_loss_g, sparse_backprop, per_row, grad, rows_loss, rows_grad, obj_grad,
              lin_rows, grad_hidden, grad_weight, grad_hidden_b, grad_weight_b, grad_bias):
    assert isinstance(array, np.ndarray) and array.dtype.kind == "f", type(array)
assert shown.startswith("CrossEntropyLoss(")
