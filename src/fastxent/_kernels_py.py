"""Pure-NumPy kernels: the same functions, arguments and results as the compiled ``_kernels_c``.

Used where the extension could not be built, or when ``FASTXENT_PURE_PYTHON=1``. Data arrive as
3-D ``(A, C, B)`` views with the class axis in the middle (see ``_kernels_c.pyx``). The rows are
processed in blocks of about ``BLOCK_ELEMENTS`` logits, so the float64 temporaries stay small
and cache-resident whatever the size of the input (never more than two of them per block).

The formulas are those of the compiled kernels, term for term (max ignoring NaN, the sum of
exponentials without the 1 of the maximum, ``log1p``), so both backends agree within a few ulps;
only the order of summation differs (NumPy sums pairwise). z-loss and softcap use the formulas
of ``_kernels_c.pyx`` (its "Logit softcap" section), with NumPy's ``tanh`` and ``1 / cosh**2``
for the cap and its slope; with softcap, the capped logits are one more float64 temporary per
block.
"""

from __future__ import annotations

import numpy as np

openmp_enabled = False

# Logits per block: 64 Ki float64 temporaries are 512 KiB, which stays in a core's L2 cache.
BLOCK_ELEMENTS = 1 << 16
# Rows per block of the label check's weight sum (as in the compiled module).
LABEL_BLOCK = 4096


def max_threads() -> int:
    """The fallback runs on the calling thread only."""
    return 1


# The compiled module's instruction sets; NumPy's own dispatch is not the fallback's to choose.
ISAS = ("baseline", "avx2", "avx512")


def select_isa(max_isa: str) -> str:
    """As the compiled module's (it checks the name); the fallback runs NumPy: "numpy"."""
    ISAS.index(max_isa)
    return "numpy"


def current_isa() -> str:
    """"numpy": the fallback's loops are NumPy's."""
    return "numpy"


def _blocks(shape: tuple[int, int, int]):
    """Yield (a-slice, b-slice) pairs covering the rows of an (A, C, B) array in small blocks."""
    n_a, n_classes, n_b = shape
    per_a = n_b * n_classes
    if per_a <= BLOCK_ELEMENTS:
        step = max(1, BLOCK_ELEMENTS // max(per_a, 1))
        for a0 in range(0, n_a, step):
            yield slice(a0, a0 + step), slice(None)
    else:
        step = max(1, BLOCK_ELEMENTS // n_classes)
        for a in range(n_a):
            for b0 in range(0, n_b, step):
                yield slice(a, a + 1), slice(b0, b0 + step)


def _rows(arr: np.ndarray, sa: slice, sb: slice) -> np.ndarray:
    """The block of an (A, C, B) array as an (a, b, C) view: one row per (a, b), classes last."""
    return np.moveaxis(arr[sa, :, sb], 1, -1)


# long double with more digits than double (x86's 80-bit format; not where it is double itself)
_WIDE_LONG_DOUBLE = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


class _RowStats:
    """Per-row max and exponential sums of a block, the quantities every kernel starts from.

    ``shifted`` holds x - m in float64 and ``exps`` exp(x - m); ``s_rest`` = sum exp(x - m) - 1
    summed without the 1 of the maximum (the first maximum's term is zeroed for the sum; other
    maxima add exact 1s, and then s_rest >= 1 so nothing small is lost), ``log_s`` its log1p,
    ``inv_s`` = 1 / (1 + s_rest); ``finite`` marks rows with a finite maximum. The two float64
    arrays are the block's only full-size temporaries; work is done in place.
    """

    def __init__(self, x: np.ndarray) -> None:
        # argmax finds a NaN first: m is then NaN, and the row NaN, as it must be
        first_max = x.argmax(axis=-1)[..., None]
        self.m = np.take_along_axis(x, first_max, axis=-1).astype(np.float64)
        self.finite = np.isfinite(self.m[..., 0])
        # C order: the sums over the class axis below are then NumPy's pairwise sums (along a
        # strided axis NumPy adds one term after another: 19 ulp off at C = 1000 in float64)
        self.shifted = np.subtract(x, self.m, dtype=np.float64, order="C")
        self.exps = np.exp(self.shifted)
        if x.dtype == np.float64:
            # x - m is rounded in float64 and exp magnifies that error (half an ulp of 30 is 16
            # ulps of exp(-30)): correct by the exact rounding error of the subtraction (TwoSum),
            # exp(d + low) = exp(d) (1 + low).
            x_part = self.shifted + self.m
            low = np.subtract(x, x_part)
            x_part -= self.shifted
            x_part -= self.m
            low += x_part
            np.fmax(low, -1.0, out=low)  # NaN from a -inf logit: exp is 0 there, keep it 0
            low += 1.0
            self.exps *= low
        np.put_along_axis(self.exps, first_max, 0.0, axis=-1)
        if x.dtype == np.float64 and _WIDE_LONG_DOUBLE:
            # Note [compensated exp sums]: the compiled kernels keep each addition's rounding
            # error; here the sum is taken in long double and rounded once
            self.s_rest = self.exps.sum(axis=-1, dtype=np.longdouble).astype(np.float64)
        else:
            self.s_rest = self.exps.sum(axis=-1)
        np.put_along_axis(self.exps, first_max, 1.0, axis=-1)
        self.log_s = np.log1p(self.s_rest)
        self.inv_s = 1.0 / (1.0 + self.s_rest)


def logsumexp(x: np.ndarray, out: np.ndarray, n_threads: int) -> None:
    with np.errstate(all="ignore"):
        for sa, sb in _blocks(x.shape):
            xb = _rows(x, sa, sb)
            st = _RowStats(xb)
            lse = st.m[..., 0] + st.log_s
            # All -inf gives -inf and a +inf gives +inf (as scipy and torch), unless a NaN is there.
            infinite = ~st.finite & ~np.isnan(xb).any(axis=-1)
            lse[infinite] = st.m[..., 0][infinite]
            out[sa, sb] = lse


def _normalise(x: np.ndarray, out: np.ndarray, log_output: bool) -> None:
    with np.errstate(all="ignore"):
        for sa, sb in _blocks(x.shape):
            st = _RowStats(_rows(x, sa, sb))
            if log_output:
                result = st.shifted - st.log_s[..., None]
            else:
                result = st.exps / (1.0 + st.s_rest)[..., None]  # one rounding fewer than * inv_s
            result[~st.finite] = np.nan
            _rows(out, sa, sb)[...] = result


def softmax(x: np.ndarray, out: np.ndarray, n_threads: int) -> None:
    _normalise(x, out, log_output=False)


def log_softmax(x: np.ndarray, out: np.ndarray, n_threads: int) -> None:
    _normalise(x, out, log_output=True)


def _class_indices(labels: np.ndarray, n_classes: int, ignore_index: int, has_ignore: bool):
    """(index as int64 with 0 where not a class, ignored mask, bad mask) of a label block."""
    idx = labels.astype(np.int64)
    if labels.dtype == np.uint64:
        # A uint64 label above int64's maximum is no class: the cast wrapped it to a negative
        # value, which is replaced by -1 in the int64 array (never written into the uint64 one,
        # where NumPy >= 2.5 rejects a negative Python int), and it is marked bad below.
        too_big = labels > np.iinfo(np.int64).max
        idx[too_big] = -1
    ignored = (idx == ignore_index) if has_ignore else np.zeros(idx.shape, dtype=bool)
    bad = ~ignored & ((idx < 0) | (idx >= n_classes))
    if labels.dtype == np.uint64:
        bad |= too_big
    return np.where(ignored | bad, 0, idx), ignored, bad


def sparse_label_check(labels, n_classes, ignore_index, has_ignore, weight, n_threads):
    flat = labels.reshape(-1)
    n_bad = 0
    total = 0.0
    for start in range(0, flat.size, LABEL_BLOCK):
        idx, ignored, bad = _class_indices(flat[start:start + LABEL_BLOCK], n_classes,
                                           ignore_index, has_ignore)
        n_bad += int(np.count_nonzero(bad))
        counted = ~(ignored | bad)
        if weight is None:
            total += float(counted.sum())
        else:
            with np.errstate(over="ignore"):  # an infinite total is rescaled by the caller
                total += float(weight[idx[counted]].sum())
    return n_bad, total


def _capped(xb: np.ndarray, softcap: float):
    """(logits read by the loss, tanh argument or None): ``softcap * tanh(x / softcap)`` in
    float64 when ``softcap`` is not 0, else ``xb`` itself (the plain path, untouched)."""
    if softcap == 0.0:
        return xb, None
    u = np.divide(xb, softcap, dtype=np.float64)
    return softcap * np.tanh(u), u


def _times_cap_slope(grad: np.ndarray, u: np.ndarray | None) -> None:
    """grad *= d(s tanh(x / s))/dx = 1 / cosh^2(x / s), in place (no cancellation near |tanh| = 1,
    exactly 0 for x = +-inf); nothing without a cap."""
    if u is not None:
        ch = np.cosh(u)
        grad /= ch
        grad /= ch


def _label_mass(t: np.ndarray, smoothing: float, weight: np.ndarray | None) -> np.ndarray:
    """q_c = ((1 - eps) t_c + eps / C) w_c in float64 (fx_label_mass of the compiled rows)."""
    q = t.astype(np.float64)
    if smoothing != 0.0:
        q *= 1.0 - smoothing
        q += smoothing / t.shape[-1]
    if weight is not None:
        q *= weight
    return q


def _grad_coefs(grad_scale, grad_rows, sa, sb):
    if grad_rows is None:
        return grad_scale
    return grad_scale * np.asarray(grad_rows[sa, sb], dtype=np.float64)


def sparse_xent(x, labels, weight, ignore_index, has_ignore, smoothing, loss_out, grad_out,
                grad_scale, grad_rows, n_threads, z_loss=0.0, softcap=0.0):
    n_classes = x.shape[1]
    w_all = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    with np.errstate(over="ignore"):  # an infinite W is used only with label smoothing
        weight_sum = float(n_classes) if weight is None else float(weight.sum())
    k = smoothing / n_classes
    n_bad = 0
    with np.errstate(all="ignore"):
        for sa, sb in _blocks(x.shape):
            xb, u = _capped(_rows(x, sa, sb), softcap)
            idx, ignored, bad = _class_indices(np.asarray(labels[sa, sb]), n_classes,
                                               ignore_index, has_ignore)
            n_bad += int(np.count_nonzero(bad))
            st = _RowStats(xb)
            # z-loss: z lse^2 per row, gradient 2 z lse p (zero when z_loss is 0: plain path)
            z_grad = 0.0
            if z_loss != 0.0:
                lse = st.m[..., 0] + st.log_s
                z_grad = 2.0 * z_loss * lse
            shifted_y = np.take_along_axis(st.shifted, idx[..., None], axis=-1)[..., 0]
            w_y = w_all[idx]
            # the label's term in halves, doubled (Note [smoothing sum]: x_y - m overflows for
            # logits of both signs near the largest double, a small w_y times it need not)
            x_y = np.take_along_axis(xb, idx[..., None], axis=-1)[..., 0].astype(np.float64)
            half_nll = 0.5 * st.log_s - (0.5 * x_y - 0.5 * st.m[..., 0])
            if smoothing != 0.0:
                # k sum_c w_c (x_c - m) / 2, term by term so that it overflows only where the loss
                # does (x - m alone can), and 0 * -inf = 0 for classes of weight 0
                half_shifted = np.multiply(xb, 0.5, dtype=np.float64) - 0.5 * st.m
                dot = np.where(w_all != 0.0, (k * w_all) * half_shifted, 0.0).sum(axis=-1)
                # the label's term is left out when its factor is 0, unless the label's logit
                # is -inf (0 * inf: NaN, as PyTorch): an nll that overflowed counts nothing
                label_coef = (1.0 - smoothing) * w_y
                keep = (label_coef != 0.0) | (x_y == -np.inf)
                loss = (np.where(keep, 2.0 * (label_coef * half_nll), 0.0)
                        + (k * weight_sum * st.log_s - 2.0 * dot))
            else:
                loss = 2.0 * (w_y * half_nll)
            if z_loss != 0.0:
                loss += z_loss * lse * lse
            loss[~st.finite] = np.nan
            loss[ignored] = 0.0
            loss[bad] = np.nan
            loss_out[sa, sb] = loss
            if grad_out is None:
                continue
            coef = _grad_coefs(grad_scale, grad_rows, sa, sb) * np.ones(idx.shape)
            # p_y - 1 without cancellation when x_y is the maximum: -s_rest / s
            p_y = np.take_along_axis(st.exps, idx[..., None], axis=-1)[..., 0] * st.inv_s
            p_y_minus_1 = np.where(shifted_y == 0.0, -st.s_rest * st.inv_s, p_y - 1.0)
            # k W only with smoothing: W, the sum of the weights, may overflow where w_y does not
            a_coef = ((1.0 - smoothing) * w_y + (k * weight_sum if smoothing != 0.0 else 0.0)
                      + z_grad)
            grad = st.exps  # reused in place: grad = coef (A p - k w), then the label's class
            grad *= (coef * a_coef * st.inv_s)[..., None]
            if smoothing != 0.0:
                grad -= (coef[..., None] * k) * w_all
            g_y = (1.0 - smoothing) * w_y * p_y_minus_1 + z_grad * p_y
            if smoothing != 0.0:
                g_y = g_y + k * (weight_sum * p_y - w_y)
            g_y = coef * g_y
            np.put_along_axis(grad, idx[..., None], g_y[..., None], axis=-1)
            _times_cap_slope(grad, u)
            grad[~st.finite] = np.nan
            grad[ignored] = 0.0
            grad[bad] = np.nan
            _rows(grad_out, sa, sb)[...] = grad
    return n_bad


def dense_xent(x, labels, weight, smoothing, loss_out, grad_out, grad_scale, grad_rows, n_threads,
               z_loss=0.0, softcap=0.0):
    n_classes = x.shape[1]
    with np.errstate(all="ignore"):
        for sa, sb in _blocks(x.shape):
            xb, u = _capped(_rows(x, sa, sb), softcap)
            q = _label_mass(_rows(labels, sa, sb), smoothing, weight)
            st = _RowStats(xb)
            mass = q.sum(axis=-1)
            # sum_c q_c (x_c - m), where q_c = 0 contributes 0 (also for x_c = -inf), in halves
            # and doubled (Note [smoothing sum]: x_c - m overflows for logits of both signs near
            # the largest double where q_c (x_c - m) need not; halving is exact otherwise)
            q_half_shifted = np.multiply(xb, 0.5, dtype=np.float64, order="C")  # (see _RowStats)
            q_half_shifted -= 0.5 * st.m
            q_half_shifted *= q
            np.copyto(q_half_shifted, 0.0, where=q == 0.0)
            loss = mass * st.log_s - 2.0 * q_half_shifted.sum(axis=-1)
            del q_half_shifted
            z_grad = 0.0
            if z_loss != 0.0:  # z lse^2 per row, gradient 2 z lse p
                lse = st.m[..., 0] + st.log_s
                loss += z_loss * lse * lse
                z_grad = 2.0 * z_loss * lse
            loss[~st.finite] = np.nan
            loss_out[sa, sb] = loss
            if grad_out is None:
                continue
            coef = _grad_coefs(grad_scale, grad_rows, sa, sb) * np.ones(mass.shape)
            p_coef = mass + z_grad
            grad = st.exps  # reused in place: grad = coef (mass p - q)
            # where exp(x - m) is 1 (the maximum) and s_rest < 1: coef ((P - q) - P s_rest inv_s),
            # without the rounding of 1 + s_rest (Note [dense maximum entry]; not with a
            # softcap). grad is C-contiguous (see _RowStats), so flat indices address it.
            near_one = (grad == 1.0) & (st.s_rest * st.inv_s < 0.5)[..., None]
            at_max = np.flatnonzero(near_one) if u is None else np.zeros(0, dtype=np.intp)
            q_max = q.reshape(-1)[at_max]
            grad *= (coef * p_coef * st.inv_s)[..., None]
            q *= coef[..., None]
            grad -= q
            if at_max.size:
                rows = at_max // n_classes
                p_r = p_coef.reshape(-1)[rows]
                rest_frac = st.s_rest.reshape(-1)[rows] * st.inv_s.reshape(-1)[rows]
                grad.reshape(-1)[at_max] = (coef.reshape(-1)[rows]
                                            * ((p_r - q_max) - p_r * rest_frac))
            _times_cap_slope(grad, u)
            grad[~st.finite] = np.nan
            _rows(grad_out, sa, sb)[...] = grad
