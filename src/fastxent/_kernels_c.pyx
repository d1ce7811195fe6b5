"""Compiled softmax / cross-entropy kernels.

Every kernel sees its data as 3-D strided views ``(A, C, B)``: ``C`` is the class axis and each
of the ``A * B`` positions ``(a, b)`` is one *row* (for a 2-D ``(N, C)`` array with classes last,
``A = N`` and ``B = 1``; for PyTorch's ``(N, C, d1, ...)``, ``A = N`` and ``B = d1 * ...``).
A class axis that is not last is therefore read through its stride, never transposed.

Kernels write into buffers they are given, never allocate per row, never validate and never
raise: the API layer (``_api.py``) checks arguments, allocates outputs and turns the counts these
kernels return into exceptions. ``_kernels_py.py`` mirrors every function here in NumPy.

This module unpacks arguments, runs the ``prange`` loops over rows (or tiles of rows), chooses
the tile or the row path and the float type; the numeric work of a row or a tile is C
(``_rows_template.h``, one function per job).

Numerics (docs/numerics.md): per row, ``m = max x`` (NaN ignored), then
``s_rest = sum_c exp(x_c - m) - 1`` summed *without* the one term ``exp(0) = 1`` of the maximum,
so that ``log s = log1p(s_rest)`` keeps tiny losses. Everything is accumulated in double, also
for float32 input. A row whose maximum is not finite (all -inf, or a +inf) is NaN.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.math cimport fabs, NAN, isinf
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
    enum: FX_TILE          # rows of a tile
    enum: FX_TILE_MAX_C    # classes a tile can hold
    enum: FX_IGNORED       # a tile's class index of an ignored label
    enum: FX_BAD_LABEL     # ... and of a label outside [0, C)
    enum: FX_ISA_BASELINE  # the instruction sets of the vector loops (run-time dispatch)
    enum: FX_ISA_AVX2
    enum: FX_ISA_AVX512
    int fx_select_isa(int max_isa)
    int fx_isa
    double fx_logsumexp_row_f32(const float* x, Py_ssize_t n, Py_ssize_t xs)
    double fx_logsumexp_row_f64(const double* x, Py_ssize_t n, Py_ssize_t xs)
    void fx_logsumexp_tile_f32(const float* x, Py_ssize_t rs, Py_ssize_t cs, int rows,
                               Py_ssize_t n, float* out, Py_ssize_t os)
    void fx_logsumexp_tile_f64(const double* x, Py_ssize_t rs, Py_ssize_t cs, int rows,
                               Py_ssize_t n, double* out, Py_ssize_t os)
    void fx_softmax_row_f32(const float* x, Py_ssize_t n, Py_ssize_t xs, float* out,
                            Py_ssize_t os, int log_output, float* scratch)
    void fx_softmax_row_f64(const double* x, Py_ssize_t n, Py_ssize_t xs, double* out,
                            Py_ssize_t os, int log_output, double* scratch)
    void fx_softmax_tile_f32(const float* x, Py_ssize_t rs, Py_ssize_t cs, int rows, Py_ssize_t n,
                             float* out, Py_ssize_t ors, Py_ssize_t ocs, int log_output)
    void fx_softmax_tile_f64(const double* x, Py_ssize_t rs, Py_ssize_t cs, int rows,
                             Py_ssize_t n, double* out, Py_ssize_t ors, Py_ssize_t ocs,
                             int log_output)
    void fx_sparse_row_f32(const float* x, Py_ssize_t n, Py_ssize_t xs, Py_ssize_t y,
                           const double* weight, double weight_sum, double smoothing,
                           double z_loss, double softcap, double* loss, float* g, Py_ssize_t gs,
                           double grad_coef, float* scratch)
    void fx_sparse_row_f64(const double* x, Py_ssize_t n, Py_ssize_t xs, Py_ssize_t y,
                           const double* weight, double weight_sum, double smoothing,
                           double z_loss, double softcap, double* loss, double* g,
                           Py_ssize_t gs, double grad_coef, double* scratch)
    void fx_sparse_tile_f32(const float* x, Py_ssize_t rs, Py_ssize_t cs, int rows, Py_ssize_t n,
                            const Py_ssize_t* y, const double* weight, double* loss,
                            Py_ssize_t loss_s, float* g, Py_ssize_t grs, Py_ssize_t gcs,
                            double grad_scale, const double* grad_rows, Py_ssize_t grad_rows_s,
                            double z_loss)
    void fx_sparse_tile_f64(const double* x, Py_ssize_t rs, Py_ssize_t cs, int rows,
                            Py_ssize_t n, const Py_ssize_t* y, const double* weight,
                            double* loss, Py_ssize_t loss_s, double* g, Py_ssize_t grs,
                            Py_ssize_t gcs, double grad_scale, const double* grad_rows,
                            Py_ssize_t grad_rows_s, double z_loss)
    void fx_dense_row_f32(const float* x, Py_ssize_t n, Py_ssize_t xs, const float* t,
                          Py_ssize_t ts, const double* weight, double smoothing, double z_loss,
                          double softcap, double* loss, float* g, Py_ssize_t gs,
                          double grad_coef)
    void fx_dense_row_f64(const double* x, Py_ssize_t n, Py_ssize_t xs, const double* t,
                          Py_ssize_t ts, const double* weight, double smoothing, double z_loss,
                          double softcap, double* loss, double* g, Py_ssize_t gs,
                          double grad_coef)
    void fx_dense_tile_f32(const float* x, Py_ssize_t rs, Py_ssize_t cs, int rows, Py_ssize_t n,
                           const float* t, Py_ssize_t trs, Py_ssize_t tcs, const double* weight,
                           double smoothing, double* loss, Py_ssize_t loss_s, float* g,
                           Py_ssize_t grs, Py_ssize_t gcs, double grad_scale,
                           const double* grad_rows, Py_ssize_t grad_rows_s)
    void fx_dense_tile_f64(const double* x, Py_ssize_t rs, Py_ssize_t cs, int rows,
                           Py_ssize_t n, const double* t, Py_ssize_t trs, Py_ssize_t tcs,
                           const double* weight, double smoothing, double* loss,
                           Py_ssize_t loss_s, double* g, Py_ssize_t grs, Py_ssize_t gcs,
                           double grad_scale, const double* grad_rows, Py_ssize_t grad_rows_s)

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


def max_threads():
    """The number of threads OpenMP would use now (1 without OpenMP)."""
    return omp_get_max_threads()


# The instruction sets of the vector loops, by FX_ISA_* value (_rows.h)
ISAS = ("baseline", "avx2", "avx512")
assert (FX_ISA_BASELINE, FX_ISA_AVX2, FX_ISA_AVX512) == (0, 1, 2)


def select_isa(max_isa):
    """Run the vector loops of the best instruction set of ``ISAS`` that the CPU has and that is
    not above ``max_isa``; returns its name. Not for use while a kernel runs."""
    return ISAS[fx_select_isa(ISAS.index(max_isa))]


def current_isa():
    """The instruction set whose vector loops the kernels run."""
    return ISAS[fx_isa]


select_isa("avx512")


# Note [streamed gradient] (_stream_simd.h): rows of at least STREAM_MIN_CLASSES classes of an
# output of at least STREAM_MIN_BYTES (beyond the caches) are written with non-temporal stores
# from a per-thread scratch row. Measured: rows of 8192 to 128256 float32 classes 7% to 30%
# faster fused, rows of 1000 no faster.
cdef Py_ssize_t STREAM_MIN_CLASSES = 4096
cdef Py_ssize_t STREAM_MIN_BYTES = 16 << 20


cdef inline bint _streams(Py_ssize_t n_rows, Py_ssize_t n_classes, Py_ssize_t itemsize,
                          Strides xs, Strides os, const void* xp, const void* op) noexcept nogil:
    """Whether an output (gradient or softmax) is streamed (Note [streamed gradient])."""
    return (n_classes >= STREAM_MIN_CLASSES and n_rows * n_classes * itemsize >= STREAM_MIN_BYTES
            and xs.sc == 1 and os.sc == 1 and op != xp)


cdef inline int _threads_for(int n_threads, Py_ssize_t n_rows, Py_ssize_t n_classes) noexcept nogil:
    """Thread count for a call: small problems stay on the calling thread."""
    cdef Py_ssize_t useful = (n_rows * n_classes) // MIN_ELEMENTS_PER_THREAD
    if useful < 1:
        return 1
    if useful < n_threads:
        return <int>useful
    return n_threads


# --------------------------------------------------------------------------------------------
# Views: rows, tiles and strides
# --------------------------------------------------------------------------------------------

cdef struct Strides:
    # element strides of an (A, C, B) view: sa between values of a, sc between classes (the
    # class stride of a row), sb between values of b
    Py_ssize_t sa, sc, sb


cdef inline Strides _strides3(Py_ssize_t* byte_strides, Py_ssize_t itemsize) noexcept nogil:
    cdef Strides s
    s.sa = byte_strides[0] // itemsize
    s.sc = byte_strides[1] // itemsize
    s.sb = byte_strides[2] // itemsize
    return s


cdef inline Strides _no_strides() noexcept nogil:
    """The strides of an absent array (never read)."""
    cdef Strides s
    s.sa = 0
    s.sc = 0
    s.sb = 0
    return s


cdef inline Strides _strides2(Py_ssize_t* byte_strides, Py_ssize_t itemsize) noexcept nogil:
    """The strides of an (A, B) per-row array (no class axis: sc = 0)."""
    cdef Strides s
    s.sa = byte_strides[0] // itemsize
    s.sc = 0
    s.sb = byte_strides[1] // itemsize
    return s


cdef inline Py_ssize_t _row_offset(Strides s, Py_ssize_t r, Py_ssize_t B) noexcept nogil:
    """The offset of row r (position (a, b) = divmod(r, B)) in a view of strides s."""
    if B == 1:
        return r * s.sa
    return (r // B) * s.sa + (r % B) * s.sb


cdef inline bint _use_tiles(Py_ssize_t n_classes) noexcept nogil:
    """Few classes: vectorise across rows (the C tiles) rather than along a row."""
    return n_classes <= FX_TILE_MAX_C


cdef inline Py_ssize_t _n_tiles(Py_ssize_t A, Py_ssize_t B) noexcept nogil:
    """Tiles of FX_TILE rows: along A when classes are last (B == 1), else along B, where the
    rows are contiguous (PyTorch's (N, C, d1, ...)); a tile never straddles two values of a."""
    if B == 1:
        return (A + FX_TILE - 1) // FX_TILE
    return A * ((B + FX_TILE - 1) // FX_TILE)


cdef inline (Py_ssize_t, int) _tile_start(Py_ssize_t t, Py_ssize_t A, Py_ssize_t B) noexcept nogil:
    """(first row, number of rows) of tile t; its rows step along axis 0 if B == 1, else axis 2."""
    cdef Py_ssize_t per_line, b
    if B == 1:
        return t * FX_TILE, <int>min(<Py_ssize_t>FX_TILE, A - t * FX_TILE)
    per_line = (B + FX_TILE - 1) // FX_TILE
    b = (t % per_line) * FX_TILE
    return (t // per_line) * B + b, <int>min(<Py_ssize_t>FX_TILE, B - b)


cdef inline Py_ssize_t _tile_row_step(Strides s, Py_ssize_t B) noexcept nogil:
    """The stride between the rows of a tile."""
    return s.sa if B == 1 else s.sb


# --------------------------------------------------------------------------------------------
# Normalisers
# --------------------------------------------------------------------------------------------

def logsumexp(const floating[:, :, :] x, floating[:, :] out, int n_threads):
    """out[a, b] = log sum_c exp(x[a, c, b])."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, first
    cdef Strides xs = _strides3(x.strides, sizeof(floating))
    cdef Strides os = _strides2(out.strides, sizeof(floating))
    cdef int rows
    cdef const floating* xp
    cdef floating* op
    if A * B == 0:
        return
    xp = &x[0, 0, 0]
    op = &out[0, 0]
    if _use_tiles(C):
        for r in prange(_n_tiles(A, B), nogil=True, schedule="static",
                        num_threads=_threads_for(n_threads, A * B, C)):
            first, rows = _tile_start(r, A, B)
            if floating is float:
                fx_logsumexp_tile_f32(xp + _row_offset(xs, first, B), _tile_row_step(xs, B),
                                      xs.sc, rows, C, op + _row_offset(os, first, B),
                                      _tile_row_step(os, B))
            else:
                fx_logsumexp_tile_f64(xp + _row_offset(xs, first, B), _tile_row_step(xs, B),
                                      xs.sc, rows, C, op + _row_offset(os, first, B),
                                      _tile_row_step(os, B))
        return
    for r in prange(A * B, nogil=True, schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        if floating is float:
            op[_row_offset(os, r, B)] = <floating>fx_logsumexp_row_f32(
                xp + _row_offset(xs, r, B), C, xs.sc)
        else:
            op[_row_offset(os, r, B)] = <floating>fx_logsumexp_row_f64(
                xp + _row_offset(xs, r, B), C, xs.sc)


cdef void _softmax_kernel(const floating[:, :, :] x, floating[:, :, :] out, int n_threads,
                          bint log_output) noexcept nogil:
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, first
    cdef Strides xs = _strides3(x.strides, sizeof(floating))
    cdef Strides os = _strides3(out.strides, sizeof(floating))
    cdef int rows
    cdef bint stream
    cdef const floating* xp
    cdef floating* op
    cdef floating* scratch
    if A * B == 0:
        return
    xp = &x[0, 0, 0]
    op = &out[0, 0, 0]
    if _use_tiles(C):
        for r in prange(_n_tiles(A, B), schedule="static",
                        num_threads=_threads_for(n_threads, A * B, C)):
            first, rows = _tile_start(r, A, B)
            if floating is float:
                fx_softmax_tile_f32(xp + _row_offset(xs, first, B), _tile_row_step(xs, B), xs.sc,
                                    rows, C, op + _row_offset(os, first, B),
                                    _tile_row_step(os, B), os.sc, log_output)
            else:
                fx_softmax_tile_f64(xp + _row_offset(xs, first, B), _tile_row_step(xs, B), xs.sc,
                                    rows, C, op + _row_offset(os, first, B),
                                    _tile_row_step(os, B), os.sc, log_output)
        return
    stream = not log_output and _streams(A * B, C, sizeof(floating), xs, os, xp, op)
    scratch = NULL
    with parallel(num_threads=_threads_for(n_threads, A * B, C)):
        # a scratch row per thread; without one (malloc failed) the row stores as usual
        scratch = <floating*>malloc(C * sizeof(floating)) if stream else NULL
        for r in prange(A * B, schedule="static"):
            if floating is float:
                fx_softmax_row_f32(xp + _row_offset(xs, r, B), C, xs.sc,
                                   op + _row_offset(os, r, B), os.sc, log_output, scratch)
            else:
                fx_softmax_row_f64(xp + _row_offset(xs, r, B), C, xs.sc,
                                   op + _row_offset(os, r, B), os.sc, log_output, scratch)
        free(scratch)


def softmax(const floating[:, :, :] x, floating[:, :, :] out, int n_threads):
    """out = exp(x - logsumexp(x)) along the class axis; ``out`` may be ``x`` itself."""
    with nogil:
        _softmax_kernel(x, out, n_threads, False)


def log_softmax(const floating[:, :, :] x, floating[:, :, :] out, int n_threads):
    """out = x - logsumexp(x) along the class axis; ``out`` may be ``x`` itself."""
    with nogil:
        _softmax_kernel(x, out, n_threads, True)


# --------------------------------------------------------------------------------------------
# Class-index labels
# --------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _class_index(label_t label, Py_ssize_t n_classes, int64_t ignore_index,
                                    bint has_ignore) noexcept nogil:
    """The class index of a label, FX_IGNORED, or FX_BAD_LABEL (negative or >= n_classes)."""
    cdef int64_t i
    if label_t is uint64_t:
        if label > <uint64_t>INT64_MAX:
            return FX_BAD_LABEL
    i = <int64_t>label
    if has_ignore and i == ignore_index:
        return FX_IGNORED
    if i < 0 or i >= n_classes:
        return FX_BAD_LABEL
    return <Py_ssize_t>i


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
    cdef Py_ssize_t n_bad = 0, blk, r, r_end, y
    cdef double block_total, block_c, total = 0.0, total_c = 0.0
    cdef Strides ls = _strides2(labels.strides, sizeof(label_t))
    cdef const label_t* lp
    if n_rows == 0:
        return 0, 0.0
    lp = &labels[0, 0]
    for blk in prange(n_blocks, nogil=True, schedule="static",
                      num_threads=_threads_for(n_threads, n_rows, 8)):
        block_total = 0.0
        block_c = 0.0
        r_end = min((blk + 1) * LABEL_BLOCK, n_rows)
        for r in range(blk * LABEL_BLOCK, r_end):
            y = _class_index(lp[_row_offset(ls, r, B)], n_classes, ignore_index, has_ignore)
            if y == FX_BAD_LABEL:
                n_bad += 1
            elif y != FX_IGNORED:
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


cdef inline void _fill_row(floating* g, Py_ssize_t n, Py_ssize_t stride,
                           double value) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        g[c * stride] = <floating>value


def sparse_xent(const floating[:, :, :] x, const label_t[:, :] labels, const double[::1] weight,
                int64_t ignore_index, bint has_ignore, double smoothing, double[:, :] loss_out,
                floating[:, :, :] grad_out, double grad_scale, const double[:, :] grad_rows,
                int n_threads, double z_loss=0.0, double softcap=0.0):
    """Cross-entropy of logits x (A, C, B) with class-index labels (A, B): loss, gradient or both.

    loss_out (A, B), float64: per-row losses (0 for ignored rows); always written.
    grad_out (A, C, B) or None: d(sum_r coef_r * loss_r)/dx with coef_r = grad_scale times
    grad_rows[a, b] when grad_rows is given. May be ``x`` itself (in-place). Ignored rows get 0.
    weight (C,) float64 or None; smoothing in [0, 1]. Returns the number of bad labels met
    (rows with a bad label get NaN; the API checks labels first, so this is normally 0).
    z_loss >= 0 adds z_loss * lse**2 to every row that is not ignored; softcap > 0 replaces each
    logit x by softcap * tanh(x / softcap) first (0: no cap). Without smoothing and softcap, few
    classes go through tiles of rows; softcap takes the capped rows.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, y, xo, go = 0
    cdef Strides xs = _strides3(x.strides, sizeof(floating))
    cdef Strides gs = _no_strides(), rs = _no_strides()
    cdef Strides ls = _strides2(labels.strides, sizeof(label_t))
    cdef Strides lo = _strides2(loss_out.strides, sizeof(double))
    cdef bint with_grad = grad_out is not None, with_rows = grad_rows is not None
    cdef const double* wp = NULL
    cdef double weight_sum = <double>C, coef
    cdef const floating* xp
    cdef const label_t* lp
    cdef double* loss_p
    cdef const double* rows_p = NULL
    cdef floating* gp = NULL
    cdef floating* scratch
    cdef bint stream
    cdef Py_ssize_t n_bad = 0
    if A * B == 0:
        return 0
    if weight is not None:
        wp = &weight[0]
        weight_sum = 0.0
        for y in range(C):
            weight_sum += wp[y]
    xp = &x[0, 0, 0]
    lp = &labels[0, 0]
    loss_p = &loss_out[0, 0]
    if with_grad:
        gp = &grad_out[0, 0, 0]
        gs = _strides3(grad_out.strides, sizeof(floating))
    if with_rows:
        rows_p = &grad_rows[0, 0]
        rs = _strides2(grad_rows.strides, sizeof(double))
    if smoothing == 0.0 and _use_tiles(C) and softcap == 0.0:
        return _sparse_tiles(xp, xs, lp, ls, A, C, B, ignore_index, has_ignore, wp, loss_p, lo,
                             gp, gs, grad_scale, rows_p, rs, n_threads, z_loss)
    stream = with_grad and _streams(A * B, C, sizeof(floating), xs, gs, xp, gp)
    scratch = NULL
    with nogil, parallel(num_threads=_threads_for(n_threads, A * B, C)):
        # a scratch row per thread; without one (malloc failed) the row stores as usual
        scratch = <floating*>malloc(C * sizeof(floating)) if stream else NULL
        for r in prange(A * B, schedule="static"):
            xo = _row_offset(xs, r, B)
            if with_grad:
                go = _row_offset(gs, r, B)
            y = _class_index(lp[_row_offset(ls, r, B)], C, ignore_index, has_ignore)
            if y < 0:
                if y == FX_BAD_LABEL:
                    n_bad += 1
                loss_p[_row_offset(lo, r, B)] = 0.0 if y == FX_IGNORED else NAN
                if with_grad:
                    _fill_row(gp + go, C, gs.sc, 0.0 if y == FX_IGNORED else NAN)
                continue
            coef = grad_scale * rows_p[_row_offset(rs, r, B)] if with_rows else grad_scale
            if floating is float:
                fx_sparse_row_f32(xp + xo, C, xs.sc, y, wp, weight_sum, smoothing, z_loss,
                                  softcap, loss_p + _row_offset(lo, r, B),
                                  gp + go if with_grad else NULL, gs.sc, coef, scratch)
            else:
                fx_sparse_row_f64(xp + xo, C, xs.sc, y, wp, weight_sum, smoothing, z_loss,
                                  softcap, loss_p + _row_offset(lo, r, B),
                                  gp + go if with_grad else NULL, gs.sc, coef, scratch)
        free(scratch)
    return n_bad


cdef Py_ssize_t _sparse_tiles(const floating* xp, Strides xs, const label_t* lp, Strides ls,
                              Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, int64_t ignore_index,
                              bint has_ignore, const double* wp, double* loss_p, Strides lo,
                              floating* gp, Strides gs, double grad_scale, const double* rows_p,
                              Strides rs, int n_threads, double z_loss) noexcept nogil:
    """sparse_xent for few classes, in tiles of FX_TILE rows (see _n_tiles)."""
    cdef Py_ssize_t t, first, n_bad = 0
    cdef int rows
    for t in prange(_n_tiles(A, B), schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        first, rows = _tile_start(t, A, B)
        n_bad += _sparse_tile(xp, xs, lp, ls, first, rows, C, B, ignore_index, has_ignore, wp,
                              loss_p, lo, gp, gs, grad_scale, rows_p, rs, z_loss)
    return n_bad


cdef inline Py_ssize_t _sparse_tile(const floating* xp, Strides xs, const label_t* lp,
                                    Strides ls, Py_ssize_t first, int rows, Py_ssize_t C,
                                    Py_ssize_t B, int64_t ignore_index, bint has_ignore,
                                    const double* wp, double* loss_p, Strides lo, floating* gp,
                                    Strides gs, double grad_scale, const double* rows_p,
                                    Strides rs, double z_loss) noexcept nogil:
    """One tile: its labels decoded here (a thread's own array), its rows done by the C tile.
    Returns the number of bad labels."""
    cdef Py_ssize_t y[FX_TILE]
    cdef Py_ssize_t n_bad = 0
    cdef int i
    cdef const floating* tx = xp + _row_offset(xs, first, B)
    cdef double* tl = loss_p + _row_offset(lo, first, B)
    cdef floating* tg = gp + _row_offset(gs, first, B) if gp != NULL else NULL
    cdef const double* tr = rows_p + _row_offset(rs, first, B) if rows_p != NULL else NULL
    cdef Py_ssize_t x_step = _tile_row_step(xs, B), loss_step = _tile_row_step(lo, B)
    cdef Py_ssize_t g_step = _tile_row_step(gs, B), rows_step = _tile_row_step(rs, B)
    for i in range(rows):
        y[i] = _class_index(lp[_row_offset(ls, first + i, B)], C, ignore_index, has_ignore)
        n_bad += y[i] == FX_BAD_LABEL
    if floating is float:
        fx_sparse_tile_f32(tx, x_step, xs.sc, rows, C, y, wp, tl, loss_step, tg, g_step, gs.sc,
                           grad_scale, tr, rows_step, z_loss)
    else:
        fx_sparse_tile_f64(tx, x_step, xs.sc, rows, C, y, wp, tl, loss_step, tg, g_step, gs.sc,
                           grad_scale, tr, rows_step, z_loss)
    return n_bad


# --------------------------------------------------------------------------------------------
# Class probabilities (a distribution, or any non-negative mass, per row)
# --------------------------------------------------------------------------------------------

def dense_xent(const floating[:, :, :] x, const floating[:, :, :] labels, const double[::1] weight,
               double smoothing, double[:, :] loss_out, floating[:, :, :] grad_out,
               double grad_scale, const double[:, :] grad_rows, int n_threads,
               double z_loss=0.0, double softcap=0.0):
    """Cross-entropy of logits x (A, C, B) with label mass of the same shape: forward/backward/both.

    Arguments as ``sparse_xent``; ``grad_out`` may be ``x`` itself but never ``labels``.
    z_loss and softcap as in ``sparse_xent`` (every row gets the z-loss: nothing is ignored).
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, t, first, go = 0
    cdef Strides xs = _strides3(x.strides, sizeof(floating))
    cdef Strides ts = _strides3(labels.strides, sizeof(floating))
    cdef Strides lo = _strides2(loss_out.strides, sizeof(double))
    cdef Strides gs = _no_strides(), rs = _no_strides()
    cdef bint with_grad = grad_out is not None, with_rows = grad_rows is not None
    cdef const double* wp = NULL
    cdef const double* rows_p = NULL
    cdef const double* tile_rows
    cdef double coef
    cdef const floating* xp
    cdef const floating* tp
    cdef Py_ssize_t x_step, t_step, loss_step, g_step, rows_step
    cdef const floating* tile_x
    cdef const floating* tile_t
    cdef double* tile_loss
    cdef floating* tile_g
    cdef double* loss_p
    cdef floating* gp = NULL
    cdef int rows
    if A * B == 0:
        return
    if weight is not None:
        wp = &weight[0]
    xp = &x[0, 0, 0]
    tp = &labels[0, 0, 0]
    loss_p = &loss_out[0, 0]
    if with_grad:
        gp = &grad_out[0, 0, 0]
        gs = _strides3(grad_out.strides, sizeof(floating))
    if with_rows:
        rows_p = &grad_rows[0, 0]
        rs = _strides2(grad_rows.strides, sizeof(double))
    if _use_tiles(C) and z_loss == 0.0 and softcap == 0.0:
        x_step, t_step = _tile_row_step(xs, B), _tile_row_step(ts, B)
        loss_step, g_step, rows_step = (_tile_row_step(lo, B), _tile_row_step(gs, B),
                                        _tile_row_step(rs, B))
        for t in prange(_n_tiles(A, B), nogil=True, schedule="static",
                        num_threads=_threads_for(n_threads, A * B, C)):
            first, rows = _tile_start(t, A, B)
            tile_x = xp + _row_offset(xs, first, B)
            tile_t = tp + _row_offset(ts, first, B)
            tile_loss = loss_p + _row_offset(lo, first, B)
            tile_g = gp + _row_offset(gs, first, B) if with_grad else NULL
            tile_rows = rows_p + _row_offset(rs, first, B) if with_rows else NULL
            if floating is float:
                fx_dense_tile_f32(tile_x, x_step, xs.sc, rows, C, tile_t, t_step, ts.sc, wp,
                                  smoothing, tile_loss, loss_step, tile_g, g_step, gs.sc,
                                  grad_scale, tile_rows, rows_step)
            else:
                fx_dense_tile_f64(tile_x, x_step, xs.sc, rows, C, tile_t, t_step, ts.sc, wp,
                                  smoothing, tile_loss, loss_step, tile_g, g_step, gs.sc,
                                  grad_scale, tile_rows, rows_step)
        return
    for r in prange(A * B, nogil=True, schedule="static",
                    num_threads=_threads_for(n_threads, A * B, C)):
        if with_grad:
            go = _row_offset(gs, r, B)
        coef = grad_scale * rows_p[_row_offset(rs, r, B)] if with_rows else grad_scale
        if floating is float:
            fx_dense_row_f32(xp + _row_offset(xs, r, B), C, xs.sc, tp + _row_offset(ts, r, B),
                             ts.sc, wp, smoothing, z_loss, softcap,
                             loss_p + _row_offset(lo, r, B), gp + go if with_grad else NULL,
                             gs.sc, coef)
        else:
            fx_dense_row_f64(xp + _row_offset(xs, r, B), C, xs.sc, tp + _row_offset(ts, r, B),
                             ts.sc, wp, smoothing, z_loss, softcap,
                             loss_p + _row_offset(lo, r, B), gp + go if with_grad else NULL,
                             gs.sc, coef)
