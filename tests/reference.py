"""The loss contract of fastxent written out plainly, once, for every test.

``cross_entropy`` gives (loss, gradient of ``grad_output * loss``) of PyTorch-layout inputs
(classes on axis 1, or 0 for 1-D logits) for every option: weights, ``ignore_index``, label
smoothing, probability targets, z-loss, softcap, the three reductions and the
"Non-finite input" table of docs/semantics.md. ``rows`` is the per-row part of it on (R, C)
rows, ``logsumexp`` / ``softmax`` / ``log_softmax`` the normalisers. Everything is computed in
``dtype``: long double by default (64-bit mantissa on x86-64), the exact value of the given
inputs for the ulp tests; a test that wants an independent computation in another precision
passes ``dtype=np.float64``.

Invariants of the formulas:

- ``s_rest = sum_c exp(v_c - m) - 1`` is summed without the 1 of one maximum (every further
  maximum adds exactly 1), and ``log s = log1p(s_rest)``: tiny losses keep their precision.
- a row's loss is ``sum_c q_c (log s - d_c) + z_loss * lse**2`` over the classes with label mass
  ``q_c != 0`` (a ``-inf`` logit without label mass costs nothing); its gradient is
  ``(Q p - q + 2 z_loss lse p) * dv/dx`` with ``Q = sum_c q_c``, and at a maximum ``Q p - q`` is
  ``((Q - q_c) - q_c s_rest) / s``, which does not cancel when p is close to 1.
- class-index targets: ``q = (1 - eps) w_y onehot(y) + eps w / C``, the mean divides by the sum
  of ``w_y`` over the rows not ignored; probability targets: ``q = w ((1 - eps) t + eps / C)``,
  the mean divides by the number of rows.
"""

from typing import NamedTuple

import numpy as np


class Rows(NamedTuple):
    """Per-row results of (R, C) rows."""

    loss: np.ndarray        # (R,) the loss of each row
    grad: np.ndarray        # (R, C) d loss_r / d x_r
    mean_weight: np.ndarray  # (R,) the row's share of the mean's denominator
    counted: np.ndarray     # (R,) bool: not ignored
    loss_size: np.ndarray   # (R,) sum of |terms| of the loss (inf if a term is not finite)
    grad_size: np.ndarray   # (R,) Q + max q: the size of the gradient's terms
    # (both sizes are 0 in a NaN row and an ignored row, which have no terms to round)


def _row_maximum(v):
    """The maximum of each row, NaN left out; -inf for a row without a number."""
    return np.max(np.where(np.isnan(v), -np.inf, v), axis=1, initial=-np.inf)


def _shifted(v):
    """(m, d, at_max, s_rest) of rows ``v``: d = v - m; see the module's first invariant."""
    m = _row_maximum(v)
    d = v - m[:, None]
    at_max = d == 0
    s_rest = np.where(at_max, 0, np.exp(d)).sum(axis=1) + (at_max.sum(axis=1) - 1)
    return m, d, at_max, s_rest


def _unnormalised_rows(x, axis):
    """(R, C) rows of ``x`` with the classes on ``axis``, in the order of the per-row results."""
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def _normalised(x, axis, dtype):
    x = np.asarray(x, dtype=dtype)
    axis = axis % x.ndim
    v = _unnormalised_rows(x, axis)
    with np.errstate(all="ignore"):
        m, d, _, s_rest = _shifted(v)
        log_s = np.log1p(s_rest)
        no_number = np.isnan(v).any(axis=1)
        lse = np.where(no_number, np.nan, np.where(np.isfinite(m), m + log_s, m))
        nan_row = (no_number | ~np.isfinite(m))[:, None]
        soft = np.where(nan_row, np.nan, np.exp(d) / (1 + s_rest)[:, None])
        log_soft = np.where(nan_row, np.nan, d - log_s[:, None])
    moved = np.moveaxis(x, axis, -1).shape
    return (lse.reshape(moved[:-1]), np.moveaxis(soft.reshape(moved), -1, axis),
            np.moveaxis(log_soft.reshape(moved), -1, axis))


def logsumexp(x, axis=-1, dtype=np.longdouble):
    """logsumexp along ``axis``: -inf for a row of -inf, +inf with a +inf, NaN with a NaN."""
    return _normalised(x, axis, dtype)[0]


def softmax(x, axis=-1, dtype=np.longdouble):
    """softmax along ``axis``: a NaN row for a NaN, a +inf or a row of -inf."""
    return _normalised(x, axis, dtype)[1]


def log_softmax(x, axis=-1, dtype=np.longdouble):
    """log_softmax along ``axis``: a NaN row where softmax has one."""
    return _normalised(x, axis, dtype)[2]


def rows(x, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
         softcap=None, dtype=np.longdouble):
    """``Rows`` of logits ``x`` (R, C) with class indices (R,) or probabilities (R, C).

    ``ignore_index=None``: no row is ignored. Non-finite input as docs/semantics.md's table, on the
    logits after the softcap (which bounds +-inf): a row with a NaN or +inf logit, only -inf
    logits, or a NaN in its label mass is NaN in loss and gradient; an ignored row is 0; with
    class indices, ``(1 - eps) w_y * inf`` is NaN where that factor is 0 and the label's logit
    is -inf (as PyTorch).
    """
    x = np.asarray(x, dtype=dtype)
    n_rows, n_classes = x.shape
    w = np.ones(n_classes, dtype) if weight is None else np.asarray(weight, dtype=dtype)
    eps = dtype(label_smoothing)
    target = np.asarray(target)
    with np.errstate(all="ignore"):
        if target.dtype.kind in "iub":
            labels = target.astype(np.int64).reshape(n_rows)
            ignored = (np.zeros(n_rows, bool) if ignore_index is None
                       else labels == ignore_index)
            safe = np.where(ignored, 0, labels)
            w_y = w[safe]
            mass = np.broadcast_to(w * eps / n_classes, x.shape).copy()
            mass[np.arange(n_rows), safe] += (1 - eps) * w_y
            mean_weight = np.where(ignored, 0, w_y)
            label_mass_zero = (1 - eps) * w_y == 0
        else:
            ignored = np.zeros(n_rows, bool)
            mass = w * ((1 - eps) * target.astype(dtype) + eps / n_classes)
            mean_weight = np.ones(n_rows, dtype)
            safe, label_mass_zero = np.zeros(n_rows, np.int64), np.zeros(n_rows, bool)
        if softcap is None:
            v, slope = x, dtype(1)
        else:
            cap = dtype(softcap)
            v, slope = cap * np.tanh(x / cap), 1 / np.cosh(x / cap) ** 2
        zero_times_inf = label_mass_zero & np.isneginf(v[np.arange(n_rows), safe])
        m, d, at_max, s_rest = _shifted(v)
        s = 1 + s_rest
        log_s = np.log1p(s_rest)
        lse = m + log_s
        # q_c (log s - d_c) in halves, doubled: d_c alone overflows for logits of both signs
        # near the largest float where the term does not (the same value otherwise: halving
        # and doubling are exact)
        half_d = v / 2 - m[:, None] / 2
        terms = np.where(mass != 0, 2 * (mass * (log_s[:, None] / 2 - half_d)), 0)
        loss = terms.sum(axis=1)
        p = np.exp(d) / s[:, None]
        total = mass.sum(axis=1)[:, None]
        grad = np.where(at_max, ((total - mass) - mass * s_rest[:, None]) / s[:, None],
                        total * p - mass)
        if z_loss:  # (lse**2 may overflow where lse does not: no 0 * inf without a z-loss)
            loss = loss + dtype(z_loss) * lse ** 2
            grad = grad + 2 * dtype(z_loss) * lse[:, None] * p
        grad = grad * slope
        nan_row = np.isnan(v).any(axis=1) | ~np.isfinite(m) | np.isnan(mass).any(axis=1)
        no_terms = nan_row | ignored
        loss_size = np.where(no_terms, 0, np.where(np.isfinite(terms).all(axis=1),
                                                     np.abs(terms).sum(axis=1), np.inf))
        grad_size = np.where(no_terms, 0, total[:, 0] + mass.max(axis=1, initial=0))
        loss = np.where(nan_row | zero_times_inf, np.nan, loss)
        grad = np.where(nan_row[:, None], np.nan, grad)
        loss = np.where(ignored, 0, loss)
        grad = np.where(ignored[:, None], 0, grad)
    return Rows(loss, grad, mean_weight, ~ignored, loss_size, grad_size)


def gradient_scale(per_row, reduction, grad_output=1.0, loss_shape=None, dtype=np.longdouble):
    """(d reduced / d loss_r per row, the mean's denominator) of ``Rows``: ``grad_output``
    broadcast to the losses' shape for ``none``, ``grad_output`` for ``sum``,
    ``grad_output / sum(mean_weight)`` for ``mean``; a mean of 0 / 0 scales by NaN (some row
    counted) or 0 (every row ignored). Ignored rows have gradient 0 whatever the scale."""
    n_rows = len(per_row.mean_weight)
    if reduction == "none":
        shape = (n_rows,) if loss_shape is None else loss_shape
        scale = np.broadcast_to(np.asarray(grad_output, dtype), shape).reshape(-1)
        return scale, dtype(1)
    if reduction == "sum":
        return np.full(n_rows, dtype(grad_output)), dtype(1)
    denominator = np.sum(per_row.mean_weight, dtype=dtype)
    if denominator != 0:
        return np.full(n_rows, dtype(grad_output) / denominator), denominator
    return np.full(n_rows, dtype(np.nan) if per_row.counted.any() else dtype(0)), denominator


def cross_entropy(x, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=1.0,
                  dtype=np.longdouble):
    """(loss, gradient of ``grad_output * loss``) of ``fastxent.cross_entropy_with_grad``'s
    arguments; a mean over no counted row is NaN (0 / 0)."""
    x = np.asarray(x, dtype=dtype)
    target = np.asarray(target)
    one_d = x.ndim == 1
    if one_d:
        x, target = x[None], target[None]
    dense = target.dtype.kind == "f"
    per_row = rows(_unnormalised_rows(x, 1),
                   _unnormalised_rows(target, 1) if dense else target.reshape(-1),
                   weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                   z_loss=z_loss, softcap=softcap, dtype=dtype)
    loss_shape = (x.shape[0],) + x.shape[2:]
    scale, denominator = gradient_scale(per_row, reduction, grad_output, loss_shape, dtype)
    with np.errstate(all="ignore"):
        if reduction == "none":
            loss = per_row.loss.reshape(loss_shape)
        elif reduction == "sum":
            loss = per_row.loss.sum()
        else:
            loss = per_row.loss.sum() / denominator if denominator else dtype(np.nan)
        grad = np.where(per_row.counted[:, None], per_row.grad * scale[:, None], 0)
    grad = np.moveaxis(grad.reshape(loss_shape + (x.shape[1],)), -1, 1)
    if one_d:
        grad, loss = grad[0], (loss[0] if reduction == "none" else loss)
    return loss, grad
