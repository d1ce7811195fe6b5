# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True, cpow=True, autotestdict=False
"""Compiled softmax / cross-entropy kernels.

Every kernel sees its data as 3-D strided views ``(A, C, B)``: ``C`` is the class axis and each
of the ``A * B`` positions ``(a, b)`` is one *row* (for a 2-D ``(N, C)`` array with classes last,
``A = N`` and ``B = 1``; for PyTorch's ``(N, C, d1, ...)``, ``A = N`` and ``B = d1 * ...``).
A class axis that is not last is therefore read through its stride, never transposed.

Kernels write into buffers they are given, never allocate per row, never validate and never
raise: the API layer (``_api.py``) checks arguments, allocates outputs and turns the counts these
kernels return into exceptions. ``_kernels_py.py`` mirrors every function here in NumPy.

Numerics (docs/numerics.md): per row, ``m = max x`` (NaN ignored), then
``s_rest = sum_c exp(x_c - m) - 1`` summed *without* the one term ``exp(0) = 1`` of the maximum,
so that ``log s = log1p(s_rest)`` keeps tiny losses. Everything is accumulated in double, also
for float32 input. A row whose maximum is not finite (all -inf, or a +inf) is NaN.
"""

from cython.parallel cimport prange
from libc.math cimport fabs, log1p, INFINITY, NAN, isinf, isnan
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t,
                          uint64_t, INT64_MAX)

from cython cimport floating

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTXENT_OPENMP 1
    #else
    #define FASTXENT_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    int FASTXENT_OPENMP
    int omp_get_max_threads() noexcept nogil

cdef extern from "_rows.h" nogil:
    # Contiguous-row loops in C: vectorised, with AVX2 / AVX-512 clones chosen at run time.
    double fx_exp_shifted_f32(float x, double m)
    double fx_exp_shifted_f64(double x, double m)
    double fx_exp_neg_f64(double d, double lo)
    double fx_row_max_f32(const float* x, Py_ssize_t n)
    double fx_row_max_f64(const double* x, Py_ssize_t n)
    double fx_row_exp_sum_f32(const float* x, Py_ssize_t n, double m, float* e)
    double fx_row_exp_sum_f64(const double* x, Py_ssize_t n, double m, double* e)
    double fx_strided_exp_sum_f32(const float* x, Py_ssize_t n, Py_ssize_t xs, double m, float* e,
                                  Py_ssize_t es)
    double fx_strided_exp_sum_f64(const double* x, Py_ssize_t n, Py_ssize_t xs, double m,
                                  double* e, Py_ssize_t es)
    void fx_row_scale_f32(float* g, Py_ssize_t n, double factor)
    void fx_row_scale_f64(double* g, Py_ssize_t n, double factor)
    double fx_row_weighted_shift_sum_f32(const float* x, Py_ssize_t n, double m, const double* w,
                                         double k)
    double fx_row_weighted_shift_sum_f64(const double* x, Py_ssize_t n, double m, const double* w,
                                         double k)
    void fx_row_smooth_grad_f32(float* g, Py_ssize_t n, double coef_a, double coef_k, const double* w)
    void fx_row_smooth_grad_f64(double* g, Py_ssize_t n, double coef_a, double coef_k, const double* w)
    double fx_row_dense_dot_f32(const float* x, const float* t, Py_ssize_t n, double m, double keep,
                                double spread, const double* w, double* mass)
    double fx_strided_dense_dot_f32(const float* x, Py_ssize_t xs, const float* t, Py_ssize_t ts,
                                    Py_ssize_t n, double m, double keep, double spread,
                                    const double* w, double* mass)
    double fx_strided_dense_dot_f64(const double* x, Py_ssize_t xs, const double* t, Py_ssize_t ts,
                                    Py_ssize_t n, double m, double keep, double spread,
                                    const double* w, double* mass)
    double fx_row_dense_dot_f64(const double* x, const double* t, Py_ssize_t n, double m, double keep,
                                double spread, const double* w, double* mass)
    void fx_row_dense_grad_f32(float* g, const float* t, Py_ssize_t n, double a, double b, double keep,
                               double spread, const double* w, double p, double s_rest, double inv_s)
    void fx_row_dense_grad_f64(double* g, const double* t, Py_ssize_t n, double a, double b, double keep,
                               double spread, const double* w, double p, double s_rest, double inv_s)
    double fx_dense_grad_one_f64(double e, double q, double a, double b, double p,
                                 double rest_frac)
    # Logit softcap on contiguous rows (the z-loss/softcap section at the end).
    double fx_cap_one_f32(double x, double s, double* slope)
    double fx_cap_one_f64(double x, double s, double* slope)
    double fx_exp_capped_f32(double v, double m)
    double fx_exp_capped_f64(double v, double m)
    double fx_row_cap_exp_sum_f32(const float* x, Py_ssize_t n, double s, double m_raw, double* m_out)
    double fx_row_cap_exp_sum_f64(const double* x, Py_ssize_t n, double s, double m_raw, double* m_out)
    void fx_row_cap_grad_f32(const float* x, float* g, Py_ssize_t n, double s, double m, double a,
                             double b, const float* t, double keep, double spread, const double* w)
    void fx_row_cap_grad_f64(const double* x, double* g, Py_ssize_t n, double s, double m, double a,
                             double b, const double* t, double keep, double spread, const double* w)
    # Tiles of FX_TILE rows with at most FX_TILE_MAX_C classes, vectorised across the rows.
    enum: FX_TILE
    enum: FX_TILE_MAX_C
    void fx_tile_stats_f32(const float* x, Py_ssize_t rs, Py_ssize_t cs, int rows, Py_ssize_t n_classes,
                           float* g, Py_ssize_t grs, Py_ssize_t gcs, const double* coef,
                           const double* zcoef, double* m_out, double* s_rest_out,
                           double* log_s_out)
    void fx_tile_stats_f64(const double* x, Py_ssize_t rs, Py_ssize_t cs, int rows, Py_ssize_t n_classes,
                           double* g, Py_ssize_t grs, Py_ssize_t gcs, const double* coef,
                           const double* zcoef, double* m_out, double* s_rest_out,
                           double* log_s_out)

openmp_enabled = bool(FASTXENT_OPENMP)

ctypedef fused label_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t

# Below this many elements a parallel region costs more than it saves.
cdef Py_ssize_t MIN_ELEMENTS_PER_THREAD = 32768
# Rows per block of the label check's weight sum: a fixed partition, so the sum of the per-block
# partial sums has the same bits for every thread count.
cdef Py_ssize_t LABEL_BLOCK = 4096

cdef enum:
    IGNORED = -1
    BAD_LABEL = -2


def max_threads():
    """The number of threads OpenMP would use now (1 without OpenMP)."""
    return omp_get_max_threads()


cdef inline int _threads_for(int n_threads, Py_ssize_t n_rows, Py_ssize_t n_classes) noexcept nogil:
    """Thread count for a call: small problems stay on the calling thread."""
    cdef Py_ssize_t useful = (n_rows * n_classes) // MIN_ELEMENTS_PER_THREAD
    if useful < 1:
        return 1
    if useful < n_threads:
        return <int>useful
    return n_threads


# --------------------------------------------------------------------------------------------
# Scalar helpers: one per formula, shared by every kernel.
# --------------------------------------------------------------------------------------------

cdef inline double _exp_shifted(floating x, double m) noexcept nogil:
    """exp(x - m) for x <= m: the polynomial of the contiguous C loops, subtraction made exact."""
    if floating is float:
        return fx_exp_shifted_f32(x, m)
    else:
        return fx_exp_shifted_f64(x, m)


cdef inline double _row_max(const floating* x, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """max_c x_c ignoring NaN; -inf for a row of -inf or NaN only."""
    cdef floating m = -INFINITY
    cdef floating v
    cdef Py_ssize_t c
    if stride == 1:
        if floating is float:
            return fx_row_max_f32(x, n)
        else:
            return fx_row_max_f64(x, n)
    for c in range(n):
        v = x[c * stride]
        m = v if v > m else m
    return m


cdef inline double _row_sum_rest(const floating* x, Py_ssize_t n, Py_ssize_t stride, double m,
                                 floating* e_out, Py_ssize_t e_stride) noexcept nogil:
    """sum_c exp(x_c - m) - 1, without ever adding the 1 of the maximum.

    The terms equal to exp(0) are counted instead of summed, so the small terms are not absorbed
    by a 1. When ``e_out`` is not NULL, exp(x_c - m) is stored there (the gradient buffer: exp is
    computed once per element). ``e_out`` may be ``x`` itself (in-place): each element is read
    before it is written.
    """
    if stride == 1 and (e_out == NULL or e_stride == 1):
        if floating is float:
            return fx_row_exp_sum_f32(x, n, m, e_out)
        else:
            return fx_row_exp_sum_f64(x, n, m, e_out)
    if floating is float:  # the same summation order, element by element
        return fx_strided_exp_sum_f32(x, n, stride, m, e_out, e_stride)
    else:
        return fx_strided_exp_sum_f64(x, n, stride, m, e_out, e_stride)


cdef inline Py_ssize_t _class_index(label_t label, Py_ssize_t n_classes, int64_t ignore_index,
                                    bint has_ignore) noexcept nogil:
    """The class index of a label, IGNORED, or BAD_LABEL (negative or >= n_classes)."""
    cdef int64_t i
    if label_t is uint64_t:
        if label > <uint64_t>INT64_MAX:
            return BAD_LABEL
    i = <int64_t>label
    if has_ignore and i == ignore_index:
        return IGNORED
    if i < 0 or i >= n_classes:
        return BAD_LABEL
    return <Py_ssize_t>i


cdef inline (Py_ssize_t, Py_ssize_t) _row_position(Py_ssize_t r, Py_ssize_t B) noexcept nogil:
    """(a, b) of row r in an (A, C, B) view; B == 1 (classes last) needs no division."""
    if B == 1:
        return r, 0
    return r // B, r % B


cdef inline void _fill_row(floating* g, Py_ssize_t n, Py_ssize_t stride, double value) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        g[c * stride] = <floating>value


cdef inline void _scale_row(floating* g, Py_ssize_t n, Py_ssize_t stride, double factor) noexcept nogil:
    cdef Py_ssize_t c
    if stride == 1:
        if floating is float:
            fx_row_scale_f32(g, n, factor)
        else:
            fx_row_scale_f64(g, n, factor)
        return
    for c in range(n):
        g[c * stride] = <floating>(g[c * stride] * factor)


cdef inline bint _use_tiles(Py_ssize_t n_classes) noexcept nogil:
    """Few classes: vectorise across rows (fx_tile_stats) rather than along a row."""
    return n_classes <= FX_TILE_MAX_C


cdef inline Py_ssize_t _n_tiles(Py_ssize_t A, Py_ssize_t B) noexcept nogil:
    """Tiles of FX_TILE rows: along A when classes are last (B == 1), else along B, where the
    rows are contiguous (PyTorch's (N, C, d1, ...)); a tile never straddles two values of a."""
    if B == 1:
        return (A + FX_TILE - 1) // FX_TILE
    return A * ((B + FX_TILE - 1) // FX_TILE)


cdef inline (Py_ssize_t, Py_ssize_t, int) _tile_start(Py_ssize_t t, Py_ssize_t A,
                                                       Py_ssize_t B) noexcept nogil:
    """(a, b, number of rows) of tile t; its rows step along axis 0 if B == 1, else axis 2."""
    cdef Py_ssize_t per_line
    if B == 1:
        return t * FX_TILE, 0, <int>min(<Py_ssize_t>FX_TILE, A - t * FX_TILE)
    per_line = (B + FX_TILE - 1) // FX_TILE
    return t // per_line, (t % per_line) * FX_TILE, <int>min(<Py_ssize_t>FX_TILE, B - (t % per_line) * FX_TILE)


cdef inline void _tile_stats(const floating* x, Py_ssize_t rs, Py_ssize_t cs, int rows,
                             Py_ssize_t n, floating* g, Py_ssize_t grs, Py_ssize_t gcs,
                             const double* coef, double* m, double* s_rest,
                             double* log_s, const double* zcoef=NULL) noexcept nogil:
    if floating is float:
        fx_tile_stats_f32(x, rs, cs, rows, n, g, grs, gcs, coef, zcoef, m, s_rest, log_s)
    else:
        fx_tile_stats_f64(x, rs, cs, rows, n, g, grs, gcs, coef, zcoef, m, s_rest, log_s)


# --------------------------------------------------------------------------------------------
# Normalisers
# --------------------------------------------------------------------------------------------

cdef inline double _row_logsumexp(const floating* x, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    cdef double m = _row_max(x, n, stride)
    cdef Py_ssize_t c
    if m == INFINITY or m == -INFINITY:
        # All -inf gives -inf and a +inf gives +inf (as scipy and torch), unless a NaN is there.
        for c in range(n):
            if isnan(x[c * stride]):
                return NAN
        return m
    return m + log1p(_row_sum_rest(x, n, stride, m, <floating*>NULL, 0))


def logsumexp(const floating[:, :, :] x, floating[:, :] out, int n_threads):
    """out[a, b] = log sum_c exp(x[a, c, b])."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, a, b
    cdef Py_ssize_t xs0 = x.strides[0] // sizeof(floating), xs1 = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t xs2 = x.strides[2] // sizeof(floating)
    cdef Py_ssize_t os0 = out.strides[0] // sizeof(floating), os1 = out.strides[1] // sizeof(floating)
    cdef const floating* xp
    cdef floating* op
    if A * B == 0:
        return
    xp = &x[0, 0, 0]
    op = &out[0, 0]
    if _use_tiles(C):
        for r in prange(_n_tiles(A, B), nogil=True, schedule="static",
                        num_threads=_threads_for(n_threads, A * B, C)):
            _logsumexp_tile(x, out, r)
        return
    for r in prange(A * B, nogil=True, schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        a, b = _row_position(r, B)
        op[a * os0 + b * os1] = <floating>_row_logsumexp(xp + a * xs0 + b * xs2, C, xs1)


cdef void _logsumexp_tile(const floating[:, :, :] x, floating[:, :] out, Py_ssize_t t) noexcept nogil:
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], a, b
    cdef int d = 0 if B == 1 else 2, i, rows
    cdef Py_ssize_t rs = x.strides[d] // sizeof(floating), cs = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t os = out.strides[d // 2] // sizeof(floating)
    cdef double m[FX_TILE]
    cdef double s_rest[FX_TILE]
    cdef double log_s[FX_TILE]
    cdef const floating* xt
    cdef floating* ot
    a, b, rows = _tile_start(t, A, B)
    xt = &x[a, 0, b]
    ot = &out[a, b]
    _tile_stats(xt, rs, cs, rows, C, <floating*>NULL, 0, 0, NULL, m, s_rest, log_s)
    for i in range(rows):
        if m[i] == INFINITY or m[i] == -INFINITY:
            ot[i * os] = <floating>_row_logsumexp(xt + i * rs, C, cs)
        else:
            ot[i * os] = <floating>(m[i] + log_s[i])


cdef void _softmax_row(const floating* x, Py_ssize_t n, Py_ssize_t xs, floating* out,
                       Py_ssize_t os, bint log_output) noexcept nogil:
    cdef double m = _row_max(x, n, xs)
    cdef double s_rest, log_s
    cdef Py_ssize_t c
    if m == INFINITY or m == -INFINITY:
        _fill_row(out, n, os, NAN)
        return
    if log_output:
        # (x - m) - log s, not x - (m + log s): m + log s would round log s away near the max
        log_s = log1p(_row_sum_rest(x, n, xs, m, <floating*>NULL, 0))
        for c in range(n):
            out[c * os] = <floating>((x[c * xs] - m) - log_s)
    else:
        s_rest = _row_sum_rest(x, n, xs, m, out, os)
        _scale_row(out, n, os, 1.0 / (1.0 + s_rest))


cdef void _softmax_kernel(const floating[:, :, :] x, floating[:, :, :] out, int n_threads,
                          bint log_output) noexcept nogil:
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, a, b
    cdef Py_ssize_t xs0 = x.strides[0] // sizeof(floating), xs1 = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t xs2 = x.strides[2] // sizeof(floating)
    cdef Py_ssize_t os0 = out.strides[0] // sizeof(floating), os1 = out.strides[1] // sizeof(floating)
    cdef Py_ssize_t os2 = out.strides[2] // sizeof(floating)
    cdef const floating* xp
    cdef floating* op
    if A * B == 0:
        return
    xp = &x[0, 0, 0]
    op = &out[0, 0, 0]
    if _use_tiles(C):
        for r in prange(_n_tiles(A, B), schedule="static",
                        num_threads=_threads_for(n_threads, A * B, C)):
            _softmax_tile(x, out, r, log_output)
        return
    for r in prange(A * B, schedule="static", num_threads=_threads_for(n_threads, A * B, C)):
        a, b = _row_position(r, B)
        _softmax_row(xp + a * xs0 + b * xs2, C, xs1, op + a * os0 + b * os2, os1, log_output)


cdef void _softmax_tile(const floating[:, :, :] x, floating[:, :, :] out, Py_ssize_t t,
                        bint log_output) noexcept nogil:
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], a, b, c
    cdef int d = 0 if B == 1 else 2, i, rows
    cdef Py_ssize_t rs = x.strides[d] // sizeof(floating), cs = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t ors = out.strides[d] // sizeof(floating), ocs = out.strides[1] // sizeof(floating)
    cdef double ones[FX_TILE]
    cdef double m[FX_TILE]
    cdef double s_rest[FX_TILE]
    cdef double log_s[FX_TILE]
    cdef const floating* xt
    cdef floating* ot
    a, b, rows = _tile_start(t, A, B)
    xt = &x[a, 0, b]
    ot = &out[a, 0, b]
    for i in range(FX_TILE):
        ones[i] = 1.0
    # softmax is written by the tile itself (coef 1); log_softmax row by row from its stats.
    _tile_stats(xt, rs, cs, rows, C, <floating*>NULL if log_output else ot, ors, ocs, ones,
                m, s_rest, log_s)
    for i in range(rows):
        if m[i] == INFINITY or m[i] == -INFINITY:
            _fill_row(ot + i * ors, C, ocs, NAN)
        elif log_output:
            for c in range(C):
                ot[i * ors + c * ocs] = <floating>((xt[i * rs + c * cs] - m[i]) - log_s[i])


def softmax(const floating[:, :, :] x, floating[:, :, :] out, int n_threads):
    """out = exp(x - logsumexp(x)) along the class axis; ``out`` may be ``x`` itself."""
    with nogil:
        _softmax_kernel(x, out, n_threads, False)


def log_softmax(const floating[:, :, :] x, floating[:, :, :] out, int n_threads):
    """out = x - logsumexp(x) along the class axis; ``out`` may be ``x`` itself."""
    with nogil:
        _softmax_kernel(x, out, n_threads, True)


# --------------------------------------------------------------------------------------------
# Sparse (integer) labels
# --------------------------------------------------------------------------------------------

def sparse_label_check(const label_t[:, :] labels, Py_ssize_t n_classes, int64_t ignore_index,
                       bint has_ignore, const double[::1] weight, int n_threads):
    """Validate labels (A, B) and sum the weights of the rows that are not ignored.

    Returns ``(n_bad, weight_total)``: the number of labels outside [0, n_classes) that are not
    ``ignore_index``, and sum_n weight[y_n] over non-ignored rows (their count when ``weight`` is
    None). The sum runs over fixed blocks of rows, so its bits do not depend on ``n_threads``;
    weights are added with Neumaier's compensation (the mean's denominator: a plain running sum
    of thousands of weights drifts by tens of ulps), the count is exact anyway.
    """
    cdef Py_ssize_t A = labels.shape[0], B = labels.shape[1]
    cdef Py_ssize_t n_rows = A * B
    cdef Py_ssize_t n_blocks = (n_rows + LABEL_BLOCK - 1) // LABEL_BLOCK
    cdef bint weighted = weight is not None
    cdef double[::1] partial = np.zeros(max(n_blocks, 1), dtype=np.float64)
    cdef double[::1] partial_c = np.zeros(max(n_blocks, 1), dtype=np.float64)
    cdef Py_ssize_t n_bad = 0, blk, r, r_end, y, a, b
    cdef double block_total, block_c, total = 0.0, total_c = 0.0
    for blk in prange(n_blocks, nogil=True, schedule="static",
                      num_threads=_threads_for(n_threads, n_rows, 8)):
        block_total = 0.0
        block_c = 0.0
        r_end = min((blk + 1) * LABEL_BLOCK, n_rows)
        for r in range(blk * LABEL_BLOCK, r_end):
            a, b = _row_position(r, B)
            y = _class_index(labels[a, b], n_classes, ignore_index, has_ignore)
            if y == BAD_LABEL:
                n_bad += 1
            elif y != IGNORED:
                if weighted:
                    _add_compensated(&block_total, &block_c, weight[y])
                else:
                    block_total = block_total + 1.0
        partial[blk] = block_total
        partial_c[blk] = block_c
    for blk in range(n_blocks):
        _add_compensated(&total, &total_c, partial[blk])
        total_c += partial_c[blk]
    # an overflowing total is inf (the API rescales the weights then); its compensation is not
    return n_bad, total if isinf(total) else total + total_c


cdef inline void _add_compensated(double* total, double* c, double v) noexcept nogil:
    """total + c += v, Neumaier's compensated summation (c collects the rounding errors)."""
    cdef double t = total[0] + v
    if fabs(total[0]) >= fabs(v):
        c[0] += (total[0] - t) + v
    else:
        c[0] += (v - t) + total[0]
    total[0] = t


cdef void _sparse_row(const floating* x, Py_ssize_t n, Py_ssize_t xs, Py_ssize_t y,
                      const double* weight, double weight_sum, double smoothing,
                      double* loss, floating* g, Py_ssize_t gs, double grad_coef,
                      double z_loss) noexcept nogil:
    """Loss and gradient of one row with class index y (already checked to be in range).

    loss = (1 - eps) w_y (lse - x_y) + (eps / C) sum_c w_c (lse - x_c) [+ z_loss lse^2]
    grad = grad_coef * d loss / d x; ``g`` is NULL for the loss alone, and may alias ``x``.
    The z-loss term (gradient 2 z lse p) only changes coefficients, and only when z_loss != 0:
    with z_loss == 0 every operation is the one of the plain path.
    """
    cdef double m = _row_max(x, n, xs)
    cdef floating x_y = x[y * xs]  # read now: the gradient may overwrite x (in place)
    cdef double w_y = weight[y] if weight != NULL else 1.0
    cdef double s_rest, log_s, inv_s, nll, p_y, p_y_minus_1, smooth_dot = 0.0
    cdef double a_coef, k_coef, w_c, lse, z_coef = 0.0
    cdef Py_ssize_t c
    if m == INFINITY or m == -INFINITY:
        loss[0] = NAN
        if g != NULL:
            _fill_row(g, n, gs, NAN)
        return
    if smoothing != 0.0:
        # (eps / C) sum_c w_c (x_c - m) / 2, term by term (see fx_row_weighted_shift_sum), read
        # before the gradient buffer (possibly x itself) is written.
        if xs == 1:
            if floating is float:
                smooth_dot = fx_row_weighted_shift_sum_f32(x, n, m, weight, smoothing / n)
            else:
                smooth_dot = fx_row_weighted_shift_sum_f64(x, n, m, weight, smoothing / n)
        else:
            for c in range(n):
                w_c = weight[c] if weight != NULL else 1.0
                if w_c != 0.0:
                    smooth_dot += ((smoothing / n) * w_c) * (0.5 * x[c * xs] - 0.5 * m)
    s_rest = _row_sum_rest(x, n, xs, m, g, gs)
    log_s = log1p(s_rest)
    nll = log_s - (x_y - m)
    if smoothing != 0.0:
        # the label's term is left out when its factor is 0, unless the label's logit is -inf
        # (0 * inf: NaN, as PyTorch): an nll that overflowed from finite logits counts nothing
        if (1.0 - smoothing) * w_y != 0.0 or x_y == -INFINITY:
            loss[0] = (1.0 - smoothing) * w_y * nll
        else:
            loss[0] = 0.0
        loss[0] += (smoothing / n) * weight_sum * log_s - 2.0 * smooth_dot
    else:
        loss[0] = w_y * nll
    if z_loss != 0.0:
        lse = m + log_s
        loss[0] += z_loss * lse * lse
        z_coef = 2.0 * z_loss * lse  # d(z lse^2)/dx_c = z_coef p_c
    if g == NULL:
        return
    inv_s = 1.0 / (1.0 + s_rest)
    # p_y - 1 without cancellation: when x_y is the maximum, exp(x_y - m) = 1 and
    # p_y - 1 = -s_rest / s exactly; otherwise p_y <= 1/2 and the buffer's exp(x_y - m) is ample.
    if x_y == m:
        p_y = inv_s
        p_y_minus_1 = -s_rest * inv_s
    else:
        p_y = g[y * gs] * inv_s
        p_y_minus_1 = p_y - 1.0
    # g_c = coef * (A p_c - k w_c) for c != y, with A = (1 - eps) w_y + (eps / C) W, k = eps / C
    k_coef = smoothing / n
    a_coef = (1.0 - smoothing) * w_y + k_coef * weight_sum
    if z_loss != 0.0:
        a_coef = a_coef + z_coef
    if smoothing == 0.0:
        _scale_row(g, n, gs, grad_coef * (w_y + z_coef if z_loss != 0.0 else w_y) * inv_s)
    elif gs == 1:
        if floating is float:
            fx_row_smooth_grad_f32(g, n, grad_coef * a_coef * inv_s, grad_coef * k_coef, weight)
        else:
            fx_row_smooth_grad_f64(g, n, grad_coef * a_coef * inv_s, grad_coef * k_coef, weight)
    else:
        for c in range(n):
            w_c = weight[c] if weight != NULL else 1.0
            g[c * gs] = <floating>(grad_coef * (a_coef * (g[c * gs] * inv_s) - k_coef * w_c))
    if z_loss != 0.0:
        g[y * gs] = <floating>(grad_coef * ((1.0 - smoothing) * w_y * p_y_minus_1
                                            + k_coef * (weight_sum * p_y - w_y) + z_coef * p_y))
    elif smoothing != 0.0:
        g[y * gs] = <floating>(grad_coef * ((1.0 - smoothing) * w_y * p_y_minus_1
                                            + k_coef * (weight_sum * p_y - w_y)))
    else:  # not 0 * (W p_y - w_y): W, the sum of the weights, may overflow where w_y does not
        g[y * gs] = <floating>(grad_coef * (w_y * p_y_minus_1))


cdef Py_ssize_t _sparse_tile(const floating* x, Py_ssize_t rs, Py_ssize_t cs, int rows,
                             Py_ssize_t n, const label_t* labels, Py_ssize_t ls,
                             int64_t ignore_index, bint has_ignore, const double* weight,
                             double* loss, Py_ssize_t loss_s, floating* g, Py_ssize_t grs,
                             Py_ssize_t gcs, double grad_scale, const double* grad_rows,
                             Py_ssize_t grad_rows_s, double z_loss) noexcept nogil:
    """Loss (and gradient) of up to FX_TILE rows at stride ``rs`` (class stride ``cs``), without
    label smoothing: the statistics and the softmax are vectorised across the rows by
    fx_tile_stats, only the label's class is done per row. Returns the number of bad labels.
    z_loss != 0 adds z lse^2 to each counted row, and 2 z lse p (times the row's coefficient
    without its class weight: zcoef) to its gradient."""
    cdef double coef[FX_TILE]
    cdef double zcoef[FX_TILE]
    cdef double lse, p_y
    cdef double m[FX_TILE]
    cdef double s_rest[FX_TILE]
    cdef double log_s[FX_TILE]
    cdef double w_y[FX_TILE]
    cdef floating x_y[FX_TILE]
    cdef Py_ssize_t y[FX_TILE]
    cdef Py_ssize_t n_bad = 0
    cdef floating* grow
    cdef int i
    for i in range(rows):
        y[i] = _class_index(labels[i * ls], n, ignore_index, has_ignore)
        coef[i] = 0.0
        if y[i] >= 0:
            w_y[i] = weight[y[i]] if weight != NULL else 1.0
            x_y[i] = x[i * rs + y[i] * cs]  # read now: the gradient may overwrite x (in place)
            coef[i] = grad_scale * w_y[i]
            zcoef[i] = 2.0 * z_loss * grad_scale
            if grad_rows != NULL:
                coef[i] = coef[i] * grad_rows[i * grad_rows_s]
                zcoef[i] = zcoef[i] * grad_rows[i * grad_rows_s]
        else:
            zcoef[i] = 0.0
    _tile_stats(x, rs, cs, rows, n, g, grs, gcs, coef, m, s_rest, log_s,
                zcoef if z_loss != 0.0 else NULL)
    for i in range(rows):
        grow = g + i * grs if g != NULL else NULL
        if y[i] < 0:
            n_bad += y[i] == BAD_LABEL
            loss[i * loss_s] = 0.0 if y[i] == IGNORED else NAN
            if grow != NULL:
                _fill_row(grow, n, gcs, 0.0 if y[i] == IGNORED else NAN)
        elif m[i] == INFINITY or m[i] == -INFINITY:
            loss[i * loss_s] = NAN
            if grow != NULL:
                _fill_row(grow, n, gcs, NAN)
        else:
            loss[i * loss_s] = w_y[i] * (log_s[i] - (x_y[i] - m[i]))
            lse = m[i] + log_s[i]
            if z_loss != 0.0:
                loss[i * loss_s] += z_loss * lse * lse
            if grow != NULL:
                # coef (p_y - 1): from -s_rest / s when the label is the maximum (no cancellation),
                # else from coef * p_y, already in the buffer (p_y <= 1/2 there); the z-loss term
                # zcoef lse p_y is in the buffer too, and added here when the label is the max.
                # (s_rest / s first: coef s_rest may overflow where the entry does not)
                if x_y[i] == m[i] and z_loss != 0.0:
                    grow[y[i] * gcs] = <floating>(-coef[i] * (s_rest[i] / (1.0 + s_rest[i]))
                                                  + zcoef[i] * lse / (1.0 + s_rest[i]))
                elif x_y[i] == m[i]:
                    grow[y[i] * gcs] = <floating>(-coef[i] * (s_rest[i] / (1.0 + s_rest[i])))
                elif isinf(grow[y[i] * gcs]):
                    # coef p_y overflowed the buffer's type (a class weight beyond float32's
                    # range): inf - coef kept the wrong sign; recompute the entry in double
                    p_y = _exp_shifted(x_y[i], m[i]) / (1.0 + s_rest[i])
                    grow[y[i] * gcs] = <floating>(coef[i] * (p_y - 1.0) + zcoef[i] * lse * p_y)
                else:
                    grow[y[i] * gcs] = <floating>(grow[y[i] * gcs] - coef[i])
    return n_bad


def sparse_xent(const floating[:, :, :] x, const label_t[:, :] labels, const double[::1] weight,
                int64_t ignore_index, bint has_ignore, double smoothing, double[:, :] loss_out,
                floating[:, :, :] grad_out, double grad_scale, const double[:, :] grad_rows,
                int n_threads, double z_loss=0.0, double softcap=0.0):
    """Cross-entropy of logits x (A, C, B) with class-index labels (A, B): forward, backward or both.

    loss_out (A, B), float64: per-row losses (0 for ignored rows); always written.
    grad_out (A, C, B) or None: d(sum_r coef_r * loss_r)/dx with coef_r = grad_scale times
    grad_rows[a, b] when grad_rows is given. May be ``x`` itself (in-place). Ignored rows get 0.
    weight (C,) float64 or None; smoothing in [0, 1]. Returns the number of bad labels met
    (rows with a bad label get NaN; the API checks labels first, so this is normally 0).
    z_loss >= 0 adds z_loss * lse**2 to every row that is not ignored; softcap > 0 replaces each
    logit x by softcap * tanh(x / softcap) first (0: no cap). z-loss is folded into the
    coefficients of the tiles and of _sparse_row; softcap routes rows through
    _sparse_row_extra. With both off, every operation is the one of the plain paths.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, a, b, y
    cdef Py_ssize_t xs0 = x.strides[0] // sizeof(floating), xs1 = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t xs2 = x.strides[2] // sizeof(floating)
    cdef Py_ssize_t gs0 = 0, gs1 = 0, gs2 = 0
    cdef bint with_grad = grad_out is not None, with_rows = grad_rows is not None
    cdef const double* wp = NULL
    cdef double weight_sum = <double>C, coef
    cdef const floating* xp
    cdef floating* gp = NULL
    cdef floating* grow
    cdef Py_ssize_t n_bad = 0
    if A * B == 0:
        return 0
    if weight is not None:
        wp = &weight[0]
        weight_sum = 0.0
        for y in range(C):
            weight_sum += wp[y]
    xp = &x[0, 0, 0]
    if with_grad:
        gp = &grad_out[0, 0, 0]
        gs0 = grad_out.strides[0] // sizeof(floating)
        gs1 = grad_out.strides[1] // sizeof(floating)
        gs2 = grad_out.strides[2] // sizeof(floating)
    if smoothing == 0.0 and _use_tiles(C) and softcap == 0.0:  # tiles: with z-loss, no cap
        return _sparse_tiles(x, labels, wp, ignore_index, has_ignore, loss_out, grad_out,
                             grad_scale, grad_rows, n_threads, z_loss)
    for r in prange(A * B, nogil=True, schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        a, b = _row_position(r, B)
        grow = gp + a * gs0 + b * gs2 if with_grad else NULL
        y = _class_index(labels[a, b], C, ignore_index, has_ignore)
        if y < 0:
            if y == BAD_LABEL:
                n_bad += 1
            loss_out[a, b] = 0.0 if y == IGNORED else NAN
            if with_grad:
                _fill_row(grow, C, gs1, 0.0 if y == IGNORED else NAN)
            continue
        coef = grad_scale * grad_rows[a, b] if with_rows else grad_scale
        if softcap != 0.0:
            _sparse_row_extra(xp + a * xs0 + b * xs2, C, xs1, y, wp, weight_sum, smoothing,
                              z_loss, softcap, &loss_out[a, b], grow, gs1, coef)
        else:  # the vectorised row, z-loss folded into its coefficients
            _sparse_row(xp + a * xs0 + b * xs2, C, xs1, y, wp, weight_sum, smoothing,
                        &loss_out[a, b], grow, gs1, coef, z_loss)
    return n_bad


cdef Py_ssize_t _sparse_tiles(const floating[:, :, :] x, const label_t[:, :] labels,
                              const double* weight, int64_t ignore_index, bint has_ignore,
                              double[:, :] loss_out, floating[:, :, :] grad_out, double grad_scale,
                              const double[:, :] grad_rows, int n_threads, double z_loss):
    """sparse_xent for few classes, in tiles of FX_TILE rows (see _n_tiles)."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef int d = 0 if B == 1 else 2  # the axis the rows of a tile step along
    cdef Py_ssize_t rs = x.strides[d] // sizeof(floating), cs = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t ls = labels.strides[d // 2] // sizeof(label_t)
    cdef Py_ssize_t loss_s = loss_out.strides[d // 2] // sizeof(double)
    cdef bint with_grad = grad_out is not None, with_rows = grad_rows is not None
    cdef Py_ssize_t grs = 0, gcs = 0, rows_s = 0, t, a, b, n_bad = 0
    cdef int rows
    if with_grad:
        grs = grad_out.strides[d] // sizeof(floating)
        gcs = grad_out.strides[1] // sizeof(floating)
    if with_rows:
        rows_s = grad_rows.strides[d // 2] // sizeof(double)
    for t in prange(_n_tiles(A, B), nogil=True, schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        a, b, rows = _tile_start(t, A, B)
        n_bad += _sparse_tile(
            &x[a, 0, b], rs, cs, rows, C, &labels[a, b], ls, ignore_index, has_ignore, weight,
            &loss_out[a, b], loss_s, &grad_out[a, 0, b] if with_grad else NULL, grs, gcs,
            grad_scale, &grad_rows[a, b] if with_rows else NULL, rows_s, z_loss)
    return n_bad


# --------------------------------------------------------------------------------------------
# Dense labels (a distribution, or any non-negative mass, per row)
# --------------------------------------------------------------------------------------------

cdef void _dense_row(const floating* x, Py_ssize_t n, Py_ssize_t xs, const floating* t,
                     Py_ssize_t ts, const double* weight, double smoothing, double* loss,
                     floating* g, Py_ssize_t gs, double grad_coef, double z_loss) noexcept nogil:
    """Loss and gradient of one row with label mass t (smoothed to (1 - eps) t + eps / C).

    With q_c = w_c t_c: loss = sum_c q_c (lse - x_c) = Q log s - sum_c q_c (x_c - m), Q = sum q;
    grad = grad_coef (Q p - q), the true gradient also when Q != 1. Terms with q_c = 0 are skipped,
    so a -inf logit with no label mass costs nothing and gets gradient 0. With z_loss != 0,
    loss += z lse^2 and the softmax's coefficient Q becomes Q + 2 z lse (nothing changes at 0).
    """
    cdef double m = _row_max(x, n, xs)
    cdef double mass = 0.0, dot = 0.0, q, s_rest, log_s, inv_s, lse, p_coef
    cdef double keep = 1.0 - smoothing, spread = smoothing / n
    cdef Py_ssize_t c
    if m == INFINITY or m == -INFINITY:
        loss[0] = NAN
        if g != NULL:
            _fill_row(g, n, gs, NAN)
        return
    if xs == 1 and ts == 1:
        if floating is float:
            dot = fx_row_dense_dot_f32(x, t, n, m, keep, spread, weight, &mass)
        else:
            dot = fx_row_dense_dot_f64(x, t, n, m, keep, spread, weight, &mass)
    elif floating is float:  # the same sums in the same order, element by element
        dot = fx_strided_dense_dot_f32(x, xs, t, ts, n, m, keep, spread, weight, &mass)
    else:
        dot = fx_strided_dense_dot_f64(x, xs, t, ts, n, m, keep, spread, weight, &mass)
    s_rest = _row_sum_rest(x, n, xs, m, g, gs)
    log_s = log1p(s_rest)
    loss[0] = mass * log_s - dot
    p_coef = mass
    if z_loss != 0.0:
        lse = m + log_s
        loss[0] += z_loss * lse * lse
        p_coef = mass + 2.0 * z_loss * lse
    if g == NULL:
        return
    inv_s = 1.0 / (1.0 + s_rest)
    if gs == 1 and ts == 1:
        if floating is float:
            fx_row_dense_grad_f32(g, t, n, grad_coef * p_coef * inv_s, grad_coef, keep, spread,
                                  weight, p_coef, s_rest, inv_s)
        else:
            fx_row_dense_grad_f64(g, t, n, grad_coef * p_coef * inv_s, grad_coef, keep, spread,
                                  weight, p_coef, s_rest, inv_s)
        return
    for c in range(n):  # the formula of fx_row_dense_grad, the maximum's entry included
        q = keep * t[c * ts] + spread
        if weight != NULL:
            q = q * weight[c]
        g[c * gs] = <floating>fx_dense_grad_one_f64(g[c * gs], q, grad_coef * p_coef * inv_s,
                                                    grad_coef, p_coef, s_rest * inv_s)


def dense_xent(const floating[:, :, :] x, const floating[:, :, :] labels, const double[::1] weight,
               double smoothing, double[:, :] loss_out, floating[:, :, :] grad_out,
               double grad_scale, const double[:, :] grad_rows, int n_threads,
               double z_loss=0.0, double softcap=0.0):
    """Cross-entropy of logits x (A, C, B) with label mass of the same shape: forward/backward/both.

    Arguments as ``sparse_xent``; ``grad_out`` may be ``x`` itself but never ``labels``.
    z_loss and softcap as in ``sparse_xent`` (every row gets the z-loss: nothing is ignored).
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, a, b
    cdef Py_ssize_t xs0 = x.strides[0] // sizeof(floating), xs1 = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t xs2 = x.strides[2] // sizeof(floating)
    cdef Py_ssize_t ts0 = labels.strides[0] // sizeof(floating)
    cdef Py_ssize_t ts1 = labels.strides[1] // sizeof(floating)
    cdef Py_ssize_t ts2 = labels.strides[2] // sizeof(floating)
    cdef Py_ssize_t gs0 = 0, gs1 = 0, gs2 = 0
    cdef bint with_grad = grad_out is not None, with_rows = grad_rows is not None
    cdef const double* wp = NULL
    cdef double coef
    cdef const floating* xp
    cdef const floating* tp
    cdef floating* gp = NULL
    cdef floating* grow
    if A * B == 0:
        return
    if weight is not None:
        wp = &weight[0]
    xp = &x[0, 0, 0]
    tp = &labels[0, 0, 0]
    if with_grad:
        gp = &grad_out[0, 0, 0]
        gs0 = grad_out.strides[0] // sizeof(floating)
        gs1 = grad_out.strides[1] // sizeof(floating)
        gs2 = grad_out.strides[2] // sizeof(floating)
    cdef bint extra = z_loss != 0.0 or softcap != 0.0
    if _use_tiles(C) and not extra:
        _dense_tiles(x, labels, wp, smoothing, loss_out, grad_out, grad_scale, grad_rows, n_threads)
        return
    for r in prange(A * B, nogil=True, schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        a, b = _row_position(r, B)
        grow = gp + a * gs0 + b * gs2 if with_grad else NULL
        coef = grad_scale * grad_rows[a, b] if with_rows else grad_scale
        if softcap != 0.0:
            _dense_row_extra(xp + a * xs0 + b * xs2, C, xs1, tp + a * ts0 + b * ts2, ts1, wp,
                             smoothing, z_loss, softcap, &loss_out[a, b], grow, gs1, coef)
        else:  # the vectorised row, z-loss folded into its coefficients
            _dense_row(xp + a * xs0 + b * xs2, C, xs1, tp + a * ts0 + b * ts2, ts1, wp, smoothing,
                       &loss_out[a, b], grow, gs1, coef, z_loss)


cdef void _dense_tile(const floating* x, Py_ssize_t rs, Py_ssize_t cs, int rows, Py_ssize_t n,
                      const floating* t, Py_ssize_t trs, Py_ssize_t tcs, const double* weight,
                      double smoothing, double* loss, Py_ssize_t loss_s, floating* g,
                      Py_ssize_t grs, Py_ssize_t gcs, double grad_scale, const double* grad_rows,
                      Py_ssize_t grad_rows_s) noexcept nogil:
    """_dense_row for up to FX_TILE rows of few classes: the softmax, scaled by coef * mass, is
    written by fx_tile_stats; the label terms are done per row. ``g`` may alias ``x``: the
    label terms then read a copy of the tile's logits, taken before the gradient overwrites them,
    so that in place and out of place give the same bits."""
    cdef floating x_copy[FX_TILE * FX_TILE_MAX_C]
    cdef double coef[FX_TILE]
    cdef double scaled[FX_TILE]
    cdef double mass[FX_TILE]
    cdef double m[FX_TILE]
    cdef double s_rest[FX_TILE]
    cdef double log_s[FX_TILE]
    cdef double keep = 1.0 - smoothing, spread = smoothing / n, q, dot, rest_frac
    cdef Py_ssize_t c, arg_max
    cdef int i
    for i in range(rows):
        mass[i] = 0.0
        for c in range(n):
            q = keep * t[i * trs + c * tcs] + spread
            if weight != NULL:
                q = q * weight[c]
            mass[i] += q
        coef[i] = grad_scale * grad_rows[i * grad_rows_s] if grad_rows != NULL else grad_scale
        scaled[i] = coef[i] * mass[i]
    if g != NULL and <const void*>g == <const void*>x:
        for i in range(rows):
            for c in range(n):
                x_copy[i * n + c] = x[i * rs + c * cs]
        x, rs, cs = x_copy, n, 1
    _tile_stats(x, rs, cs, rows, n, g, grs, gcs, scaled, m, s_rest, log_s)
    for i in range(rows):
        if m[i] == INFINITY or m[i] == -INFINITY:
            loss[i * loss_s] = NAN
            if g != NULL:
                _fill_row(g + i * grs, n, gcs, NAN)
            continue
        dot = 0.0
        arg_max = -1
        rest_frac = s_rest[i] * (1.0 / (1.0 + s_rest[i]))
        for c in range(n):
            q = keep * t[i * trs + c * tcs] + spread
            if weight != NULL:
                q = q * weight[c]
            if q != 0.0:  # so that a -inf logit without label mass costs nothing
                dot += q * (x[i * rs + c * cs] - m[i])
            if g != NULL:
                g[i * grs + c * gcs] = <floating>(g[i * grs + c * gcs] - coef[i] * q)
            arg_max = c if x[i * rs + c * cs] == m[i] else arg_max
        loss[i * loss_s] = mass[i] * log_s[i] - dot
        if g != NULL and arg_max >= 0:
            # the maximum's entry again, in double from the row's statistics (the buffer's
            # softmax is rounded to the data's type): Note [dense maximum entry] (one of tied
            # maxima is enough: with ties p <= 1/2, nothing cancels)
            q = keep * t[i * trs + arg_max * tcs] + spread
            if weight != NULL:
                q = q * weight[arg_max]
            if rest_frac < 0.5:
                g[i * grs + arg_max * gcs] = <floating>(coef[i] * ((mass[i] - q)
                                                                   - mass[i] * rest_frac))
            else:
                g[i * grs + arg_max * gcs] = <floating>(
                    coef[i] * mass[i] * (1.0 / (1.0 + s_rest[i])) - coef[i] * q)


cdef void _dense_tiles(const floating[:, :, :] x, const floating[:, :, :] labels,
                       const double* weight, double smoothing, double[:, :] loss_out,
                       floating[:, :, :] grad_out, double grad_scale,
                       const double[:, :] grad_rows, int n_threads) noexcept nogil:
    """dense_xent for few classes, in tiles of FX_TILE rows (see _n_tiles)."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef int d = 0 if B == 1 else 2  # the axis the rows of a tile step along
    cdef Py_ssize_t rs = x.strides[d] // sizeof(floating), cs = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t trs = labels.strides[d] // sizeof(floating)
    cdef Py_ssize_t tcs = labels.strides[1] // sizeof(floating)
    cdef Py_ssize_t loss_s = loss_out.strides[d // 2] // sizeof(double)
    cdef bint with_grad = grad_out is not None, with_rows = grad_rows is not None
    cdef Py_ssize_t grs = 0, gcs = 0, rows_s = 0, t, a, b
    cdef int rows
    if with_grad:
        grs = grad_out.strides[d] // sizeof(floating)
        gcs = grad_out.strides[1] // sizeof(floating)
    if with_rows:
        rows_s = grad_rows.strides[d // 2] // sizeof(double)
    for t in prange(_n_tiles(A, B), schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        a, b, rows = _tile_start(t, A, B)
        _dense_tile(&x[a, 0, b], rs, cs, rows, C, &labels[a, 0, b], trs, tcs, weight, smoothing,
                    &loss_out[a, b], loss_s, &grad_out[a, 0, b] if with_grad else NULL, grs, gcs,
                    grad_scale, &grad_rows[a, b] if with_rows else NULL, rows_s)


# --------------------------------------------------------------------------------------------
# Logit softcap (both label kinds): the rows of sparse_xent / dense_xent when softcap > 0
# --------------------------------------------------------------------------------------------
#
# Each logit x is read as v = s tanh(x / s) (Gemma 2), computed in double on the fly (never
# stored), and the gradient w.r.t. x carries dv/dx = 1 - tanh^2(x / s). Both come from one
# e = exp(-2|x / s|) (fx_cap_f32 / fx_cap_f64): tanh = sign (1 - e) / (1 + e) and
# 1 - tanh^2 = 4 e / (1 + e)^2, exactly 0 at x = +-inf, with one reciprocal (a float one refined
# in double: no double division). 1 - e is -expm1(-2|x / s|) from the exp's own polynomial, so
# tanh keeps its relative accuracy for |x| << s too (1 - e itself would cancel: a softcap of 1e20
# once turned every logit into 0). v has a relative error of a few 1e-16 for double data; for
# float data e and e - 1 come from the float32-grade exp (relative error below 2e-8), below the
# float32 rounding of v that PyTorch's float32 tanh makes. tanh is monotone, so the capped row maximum
# m is the cap of the raw maximum, and "x is the maximum" is decided on the raw x. A +-inf
# logit is capped to +-s; NaN stays NaN.
# z-loss (z lse^2 per row, gradient 2 z lse p) is folded into the coefficients here as in the
# plain rows. Rows take three passes: max, sums (read only), gradient (exp recomputed), which
# reads x_c before it writes g_c, so g may be x itself (in place). Contiguous rows use the
# vectorised loops of _rows_template.h; strided ones the scalar loops below (same formulas).

cdef inline double _cap(const floating* like, double v, double softcap) noexcept nogil:
    """s tanh(v / s) with the exp of ``like``'s type (see the section comment)."""
    if floating is float:
        return fx_cap_one_f32(v, softcap, NULL)
    else:
        return fx_cap_one_f64(v, softcap, NULL)


cdef inline double _cap_slope(const floating* like, double v, double softcap,
                              double* slope) noexcept nogil:
    """_cap, and its derivative 1 - tanh^2(v / s) = 4 e / (1 + e)^2 into ``slope`` (one exp)."""
    if floating is float:
        return fx_cap_one_f32(v, softcap, slope)
    else:
        return fx_cap_one_f64(v, softcap, slope)


cdef inline double _exp_capped(const floating* like, double v, double m) noexcept nogil:
    """exp(v - m) for a capped logit v <= m, with the exp of the contiguous loops."""
    if floating is float:
        return fx_exp_capped_f32(v, m)
    else:
        return fx_exp_capped_f64(v, m)


cdef inline double _cap_row_stats(const floating* x, Py_ssize_t n, Py_ssize_t xs,
                                  double softcap, double* m_raw, double* m_out,
                                  double* log_s_out) noexcept nogil:
    """The raw row max into m_raw, the capped one into m_out, log s into log_s_out; returns
    s_rest = s - 1, summed without the 1 of the maximum."""
    cdef double acc = 0.0, m
    cdef Py_ssize_t c, n_max = 0
    m_raw[0] = _row_max(x, n, xs)
    if xs == 1:
        if floating is float:
            acc = fx_row_cap_exp_sum_f32(x, n, softcap, m_raw[0], m_out)
        else:
            acc = fx_row_cap_exp_sum_f64(x, n, softcap, m_raw[0], m_out)
    else:
        m = _cap(x, m_raw[0], softcap)
        for c in range(n):
            if x[c * xs] == m_raw[0]:
                n_max += 1
            else:
                acc += _exp_capped(x, _cap(x, <double>x[c * xs], softcap), m)
        acc = acc + <double>(n_max - 1)
        m_out[0] = m
    log_s_out[0] = log1p(acc)
    return acc


cdef void _sparse_row_extra(const floating* x, Py_ssize_t n, Py_ssize_t xs, Py_ssize_t y,
                            const double* weight, double weight_sum, double smoothing,
                            double z_loss, double softcap, double* loss, floating* g,
                            Py_ssize_t gs, double grad_coef) noexcept nogil:
    """_sparse_row with a softcap (see the section comment). With v the capped row:
    loss = (1 - eps) w_y (lse - v_y) + (eps / C) sum_c w_c (lse - v_c) + z lse^2;
    d loss / d v_c = (A + 2 z lse) p_c - k w_c - (1 - eps) w_y [c == y], A = (1 - eps) w_y + k W,
    k = eps / C; times dv_c / dx_c."""
    cdef double m, m_raw, log_s, s_rest, lse, inv_s, v, p, w_c, smooth_dot = 0.0
    cdef double w_y = weight[y] if weight != NULL else 1.0
    cdef double k_coef = smoothing / n, a_coef, g_c, z_coef
    cdef double x_y = x[y * xs]  # read now: the gradient may overwrite x (in place)
    cdef double slope, slope_y
    cdef double v_y = _cap_slope(x, x_y, softcap, &slope_y)
    cdef Py_ssize_t c
    s_rest = _cap_row_stats(x, n, xs, softcap, &m_raw, &m, &log_s)
    if x_y == m_raw:
        # the label is the maximum: v_y - m is 0 exactly (m may come from a vectorised clone
        # whose FMA contraction rounds the cap differently in the last bit; a tiny loss is
        # all in log_s, and must not go negative)
        v_y = m
    if smoothing != 0.0:
        for c in range(n):
            w_c = weight[c] if weight != NULL else 1.0
            if w_c != 0.0 and x[c * xs] != m_raw:  # the maximum's term is 0 exactly (above)
                smooth_dot += w_c * (_cap(x, <double>x[c * xs], softcap) - m)
    lse = m + log_s
    z_coef = 2.0 * z_loss * lse
    loss[0] = (1.0 - smoothing) * w_y * (log_s - (v_y - m)) + z_loss * lse * lse
    if smoothing != 0.0:
        loss[0] += k_coef * (weight_sum * log_s - smooth_dot)
    if g == NULL:
        return
    inv_s = 1.0 / (1.0 + s_rest)
    a_coef = (1.0 - smoothing) * w_y + k_coef * weight_sum + z_coef
    if xs == 1 and gs == 1:
        if floating is float:
            fx_row_cap_grad_f32(x, g, n, softcap, m, grad_coef * a_coef * inv_s,
                                grad_coef * k_coef, NULL, 0.0, 0.0, weight)
        else:
            fx_row_cap_grad_f64(x, g, n, softcap, m, grad_coef * a_coef * inv_s,
                                grad_coef * k_coef, NULL, 0.0, 0.0, weight)
    else:
        for c in range(n):
            v = _cap_slope(x, <double>x[c * xs], softcap, &slope)
            w_c = weight[c] if weight != NULL else 1.0
            g[c * gs] = <floating>(grad_coef * (a_coef * _exp_capped(x, v, m) * inv_s
                                                - k_coef * w_c) * slope)
    # the label's class: - (1 - eps) w_y, without cancellation when y is the maximum
    # (p_y - 1 = -s_rest / s there)
    if x_y == m_raw:
        p = inv_s
        g_c = (1.0 - smoothing) * w_y * (-s_rest * inv_s)
    else:
        p = _exp_capped(x, v_y, m) * inv_s
        g_c = (1.0 - smoothing) * w_y * (p - 1.0)
    g_c = g_c + k_coef * (weight_sum * p - w_y) + z_coef * p
    g[y * gs] = <floating>(grad_coef * g_c * slope_y)


cdef void _dense_row_extra(const floating* x, Py_ssize_t n, Py_ssize_t xs, const floating* t,
                           Py_ssize_t ts, const double* weight, double smoothing, double z_loss,
                           double softcap, double* loss, floating* g, Py_ssize_t gs,
                           double grad_coef) noexcept nogil:
    """_dense_row with a softcap: with q_c = w_c ((1 - eps) t_c + eps / C), Q = sum q,
    loss = Q log s - sum_c q_c (v_c - m) + z lse^2, d loss / d v_c = (Q + 2 z lse) p_c - q_c,
    times dv_c / dx_c. ``g`` may alias ``x``, never ``t``."""
    cdef double m, m_raw, log_s, s_rest, lse, inv_s, q, v, slope, mass = 0.0, dot = 0.0, a_coef
    cdef double keep = 1.0 - smoothing, spread = smoothing / n
    cdef Py_ssize_t c
    s_rest = _cap_row_stats(x, n, xs, softcap, &m_raw, &m, &log_s)
    for c in range(n):
        q = keep * t[c * ts] + spread
        if weight != NULL:
            q = q * weight[c]
        mass += q
        # the maximum's term is 0 exactly: m may come from a vectorised clone whose FMA
        # contraction rounds the cap differently in the last bit (a one-hot target on the
        # maximum would turn a tiny loss negative)
        if q != 0.0 and x[c * xs] != m_raw:
            dot += q * (_cap(x, <double>x[c * xs], softcap) - m)
    lse = m + log_s
    loss[0] = mass * log_s - dot + z_loss * lse * lse
    if g == NULL:
        return
    inv_s = 1.0 / (1.0 + s_rest)
    a_coef = (mass + 2.0 * z_loss * lse) * inv_s
    if xs == 1 and gs == 1 and ts == 1:
        if floating is float:
            fx_row_cap_grad_f32(x, g, n, softcap, m, grad_coef * a_coef, grad_coef, t, keep,
                                spread, weight)
        else:
            fx_row_cap_grad_f64(x, g, n, softcap, m, grad_coef * a_coef, grad_coef, t, keep,
                                spread, weight)
        return
    for c in range(n):
        q = keep * t[c * ts] + spread
        if weight != NULL:
            q = q * weight[c]
        v = _cap_slope(x, <double>x[c * xs], softcap, &slope)
        g[c * gs] = <floating>(grad_coef * (a_coef * _exp_capped(x, v, m) - q) * slope)
