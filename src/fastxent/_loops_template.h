/*
 * The vector loops over a contiguous row (and the tiles) of one float type, compiled once per
 * instruction set: _rows.h includes this file per type and per ISA, FX_LNAME(f) appending the
 * type's and the ISA's suffixes (fx_row_max_f32_avx512, ...), and the rows call the loops of the
 * ISA chosen at run time through FX_LOOP(f).
 */
/* max of x[0..n) ignoring NaN; -inf for a row of -inf and NaN only. Max is idempotent, so the
 * last partial block is done by re-reading the last FX_MAX_LANES elements, all vectorised. */
static double FX_LNAME(fx_row_max)(const FX_T *x, ptrdiff_t n)
{
    FX_T lanes[FX_MAX_LANES];
    ptrdiff_t i;
    int j, w;
    if (n < FX_MAX_LANES) {
        FX_T m = -INFINITY;
        for (i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
        return m;
    }
    for (j = 0; j < FX_MAX_LANES; j++) lanes[j] = x[j];
    for (i = FX_MAX_LANES; i + FX_MAX_LANES <= n; i += FX_MAX_LANES)
        for (j = 0; j < FX_MAX_LANES; j++) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
    if (i < n)
        for (j = 0; j < FX_MAX_LANES; j++) {
            FX_T v = x[n - FX_MAX_LANES + j];
            lanes[j] = v > lanes[j] ? v : lanes[j];
        }
    for (w = FX_MAX_LANES / 2; w >= 1; w /= 2) /* a tree of vector maxima */
        for (j = 0; j < w; j++) lanes[j] = lanes[j + w] > lanes[j] ? lanes[j + w] : lanes[j];
    /* a NaN first lane survives the tree (NaN > y is false); the other lanes ignore NaN */
    return lanes[0] == lanes[0] ? lanes[0] : -INFINITY;
}

#if FX_IS_FLOAT && FX_ISA_LEVEL != FX_ISA_BASELINE
#include "_exp_simd.h" /* fx_exp_sum_span and fx_tile_exp_sums in float lanes */
#else
/* Every exp sum runs this one body, on a contiguous row or on a block gathered from a strided
 * one: acc[j] (+ comp[j]) += exp(x - m) and count[j] += (x == m) over x[0..n) (n a multiple of
 * FX_LANES), and e = exp(x - m) when e is not NULL (e may be x); pf_x, pf_e (or NULL) are
 * prefetched alongside. It computes the same bits for every caller (FX_SAME_BITS_FOR_EVERY_CALLER):
 * a strided row must give the bits of a contiguous one (Note [strided bits]). The sums are local
 * (acc may alias e for double data). */
FX_SAME_BITS_FOR_EVERY_CALLER static void FX_LNAME(fx_exp_sum_span)(
    const FX_T *x, ptrdiff_t n, double m, FX_T *e, double *acc_io, double *comp_io,
    double *count_io, const char *pf_x, char *pf_e)
{
    double acc[FX_LANES], comp[FX_LANES], count[FX_LANES];
    ptrdiff_t i;
    int j;
    for (j = 0; j < FX_LANES; j++) {
        acc[j] = acc_io[j];
        comp[j] = comp_io[j];
        count[j] = count_io[j];
    }
    for (i = 0; i < n; i += FX_LANES) {
        /* The loop is compute-bound: meanwhile, fetch what follows the row (the next row, for
         * contiguous rows) into L2, so that its max pass does not wait on memory. Prefetches
         * never fault, so reading past the end of the array is harmless. */
        if (pf_x != NULL) {
            __builtin_prefetch(pf_x + i * (ptrdiff_t)sizeof(FX_T), 0, 2);
            if (pf_e != NULL) __builtin_prefetch(pf_e + i * (ptrdiff_t)sizeof(FX_T), 1, 2);
        }
        FX_NAME(fx_exp_sum_block)(x + i, m, e != NULL ? e + i : NULL, acc, comp, count);
    }
    for (j = 0; j < FX_LANES; j++) {
        acc_io[j] = acc[j];
        comp_io[j] = comp[j];
        count_io[j] = count[j];
    }
}
#endif

/* sum exp(x_i - m) - 1 without adding the 1 of the maximum (terms with x_i == m are counted,
 * not summed); stores exp(x_i - m) into e[i] when e is not NULL (e may be x: read first).
 * The last partial block goes through a buffer padded with the maximum m (counted, then
 * discounted: the sums do not change), so that every element takes the vectorised path (the
 * float lanes' fast one too, which -inf would leave). */
static double FX_LNAME(fx_row_exp_sum)(const FX_T *x, ptrdiff_t n, double m, FX_T *e)
{
    double acc[FX_LANES], comp[FX_LANES], outer[FX_LANES], outer_comp[FX_LANES];
    double count[FX_LANES];
    FX_T pad_x[FX_LANES], pad_e[FX_LANES];
    int prefetch = (size_t)n * sizeof(FX_T) * (e != NULL ? 2 : 1) <= FX_PREFETCH_MAX_ROW;
    ptrdiff_t i = 0, rest, n_full = n - n % FX_LANES;
    int j;
    for (j = 0; j < FX_LANES; j++) { outer[j] = 0.0; outer_comp[j] = 0.0; count[j] = 0.0; }
    while (i < n_full) {
        ptrdiff_t span = n_full - i > FX_SUM_BLOCK * FX_LANES ? FX_SUM_BLOCK * FX_LANES
                                                             : n_full - i;
        for (j = 0; j < FX_LANES; j++) { acc[j] = 0.0; comp[j] = 0.0; }
        FX_LNAME(fx_exp_sum_span)(x + i, span, m, e != NULL ? e + i : NULL, acc, comp, count,
                                 prefetch ? (const char *)(x + n + i) : NULL,
                                 prefetch && e != NULL ? (char *)(e + n + i) : NULL);
        FX_NAME(fx_exp_sum_outer)(outer, outer_comp, acc, comp);
        i += span;
    }
    rest = n - i;
    if (rest > 0) {
        for (j = 0; j < FX_LANES; j++) { acc[j] = 0.0; comp[j] = 0.0; }
        for (j = 0; j < FX_LANES; j++) pad_x[j] = j < rest ? x[i + j] : (FX_T)m;
        FX_LNAME(fx_exp_sum_span)(pad_x, FX_LANES, m, e != NULL ? pad_e : NULL, acc, comp, count,
                                 NULL, NULL);
        for (j = (int)rest; j < FX_LANES; j++) count[j] -= 1.0;
        if (e != NULL)
            for (j = 0; j < rest; j++) e[i + j] = pad_e[j];
        FX_NAME(fx_exp_sum_outer)(outer, outer_comp, acc, comp);
    }
    return FX_NAME(fx_exp_sum_total)(outer, outer_comp, count);
}

/* fx_row_exp_sum for a strided row (x[i * xs], e[i * es]; the class axis of an (N, C, H, W)
 * array, or of a Fortran-order one). Note [strided bits]: each span of the contiguous loop is
 * gathered into a buffer and goes through the same fx_exp_sum_span, in the same order, so that a
 * strided row has the accuracy and the bits of a contiguous one (a running sum of 1000 terms is
 * 19 ulp off in float64). */
static double FX_LNAME(fx_strided_exp_sum)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs,
                                           double m, FX_T *e, ptrdiff_t es)
{
    double acc[FX_LANES], comp[FX_LANES], outer[FX_LANES], outer_comp[FX_LANES];
    double count[FX_LANES];
    FX_T buf_x[FX_SUM_BLOCK * FX_LANES], buf_e[FX_SUM_BLOCK * FX_LANES];
    ptrdiff_t i = 0, k, n_full = n - n % FX_LANES;
    int j;
    for (j = 0; j < FX_LANES; j++) { outer[j] = 0.0; outer_comp[j] = 0.0; count[j] = 0.0; }
    while (i < n) {
        /* a span of full blocks, or the partial last block padded as fx_row_exp_sum's */
        ptrdiff_t span = i < n_full ? (n_full - i > FX_SUM_BLOCK * FX_LANES
                                       ? FX_SUM_BLOCK * FX_LANES : n_full - i)
                                    : FX_LANES;
        for (j = 0; j < FX_LANES; j++) { acc[j] = 0.0; comp[j] = 0.0; }
        for (k = 0; k < span; k++) buf_x[k] = i + k < n ? x[(i + k) * xs] : (FX_T)m;
        FX_LNAME(fx_exp_sum_span)(buf_x, span, m, e != NULL ? buf_e : NULL, acc, comp, count,
                                 NULL, NULL);
        for (k = n - i; k < span; k++) count[k] -= 1.0; /* the padding */
        if (e != NULL)
            for (k = 0; k < span && i + k < n; k++) e[(i + k) * es] = buf_e[k];
        FX_NAME(fx_exp_sum_outer)(outer, outer_comp, acc, comp);
        i += span;
    }
    return FX_NAME(fx_exp_sum_total)(outer, outer_comp, count);
}

/* g[i] *= factor */
static void FX_LNAME(fx_row_scale)(FX_T *g, ptrdiff_t n, double factor)
{
    ptrdiff_t i;
    for (i = 0; i < n; i++) g[i] = (FX_T)((double)g[i] * factor);
}

/* g[i] = e[i] * factor (g does not overlap e), with non-temporal stores on AVX2 and AVX-512
 * (Note [streamed gradient]): the bits of fx_row_scale */
#if FX_ISA_LEVEL != FX_ISA_BASELINE
#include "_stream_simd.h"
#endif
static void FX_LNAME(fx_row_scale_stream)(const FX_T *e, FX_T *g, ptrdiff_t n, double factor)
{
    ptrdiff_t i = 0;
#ifdef FX_STREAM_STEP
    for (; i < n && (size_t)(g + i) % FX_STREAM_ALIGN != 0; i++)
        g[i] = (FX_T)((double)e[i] * factor);
    for (; i + FX_STREAM_STEP <= n; i += FX_STREAM_STEP)
        FX_LNAME(fx_stream_scale_block)(e + i, g + i, factor);
#endif
    for (; i < n; i++) g[i] = (FX_T)((double)e[i] * factor);
#ifdef FX_STREAM_STEP
    _mm_sfence(); /* the streamed stores are weakly ordered: visible before the row is done */
#undef FX_STREAM_STEP
#undef FX_STREAM_ALIGN
#endif
}

/* sum k w_i (x_i / 2 - m / 2) over i with w_i != 0 (all w_i = 1 when w is NULL): half the
 * label-smoothing term k sum w_i (x_i - m), scaled term by term, so that it overflows only where
 * the loss does (x_i - m alone overflows for logits of both signs near the largest double) */
static double FX_LNAME(fx_row_weighted_shift_sum)(const FX_T *x, ptrdiff_t n, double m,
                                                  const double *w, double k)
{
    double acc[FX_LANES], tail = 0.0, half_m = 0.5 * m;
    ptrdiff_t i = 0;
    int j;
    for (j = 0; j < FX_LANES; j++) acc[j] = 0.0;
    if (w == NULL) {
        for (; i + FX_LANES <= n; i += FX_LANES)
            for (j = 0; j < FX_LANES; j++) acc[j] += k * (0.5 * (double)x[i + j] - half_m);
        for (; i < n; i++) tail += k * (0.5 * (double)x[i] - half_m);
    } else {
        for (; i + FX_LANES <= n; i += FX_LANES)
            for (j = 0; j < FX_LANES; j++) {
                /* the product first, then the select: GCC 12 vectorises the conditional
                 * product (a masked reduction) wrongly for AVX2 and AVX-512 */
                double term = (k * w[i + j]) * (0.5 * (double)x[i + j] - half_m);
                acc[j] += w[i + j] != 0.0 ? term : 0.0;
            }
        for (; i < n; i++)
            tail += w[i] != 0.0 ? (k * w[i]) * (0.5 * (double)x[i] - half_m) : 0.0;
    }
    return fx_combine(acc) + tail;
}

/* g[i] = coef * (a * g[i] - k * w_i): the label-smoothing gradient (w_i = 1 when w is NULL) */
static void FX_LNAME(fx_row_smooth_grad)(FX_T *g, ptrdiff_t n, double coef_a,
                                         double coef_k, const double *w)
{
    ptrdiff_t i;
    if (w == NULL)
        for (i = 0; i < n; i++) g[i] = (FX_T)(coef_a * (double)g[i] - coef_k);
    else
        for (i = 0; i < n; i++) g[i] = (FX_T)(coef_a * (double)g[i] - coef_k * w[i]);
}

/* A tile of up to FX_TILE rows with at most FX_TILE_MAX_C classes, vectorised across the rows:
 * the layout that suits few classes (a row of 10 classes fills no vector) and a class axis that
 * is not last (rows are then contiguous: PyTorch's (N, C, H, W)). Element (r, c) of the tile is
 * x[r * rs + c * cs]. Per row r < rows: m_out[r] = max (NaN ignored), s_rest_out[r] = sum of
 * exp(x - m) without the 1 of the maximum, log_s_out[r] = log1p(s_rest). When g is not NULL,
 * g[r * grs + c * gcs] = exp(x - m) * coef[r] / (1 + s_rest): the scaled softmax, written once
 * (g may be x: the whole tile is read first); with zcoef (not NULL), coef[r] + zcoef[r] * lse_r
 * instead of coef[r]. */
static void FX_LNAME(fx_tile_stats)(const FX_T *x, ptrdiff_t rs, ptrdiff_t cs, int rows,
                                    ptrdiff_t n_classes, FX_T *g, ptrdiff_t grs,
                                    ptrdiff_t gcs, const double *coef,
                                    const double *zcoef, double *m_out,
                                    double *s_rest_out, double *log_s_out)
{
    FX_T xt[FX_TILE_MAX_C][FX_TILE];
#if FX_IS_FLOAT && FX_ISA_LEVEL != FX_ISA_BASELINE
    float et[FX_TILE_MAX_C][FX_TILE]; /* Note [f32 exp in float lanes]: rounded to float */
#else
    double et[FX_TILE_MAX_C][FX_TILE];
#endif
    FX_T mt[FX_TILE];
    double m[FX_TILE], acc[FX_TILE], comp[FX_TILE], count[FX_TILE], factor[FX_TILE];
    ptrdiff_t c;
    int r;
    /* the tile into xt[class][row]; a full tile whose rows are adjacent (rs == 1: the
     * (N, C, H, W) layout) by vector loads (gathers for rs == C were measured slower than
     * these scalar loads) */
    if (rows == FX_TILE && rs == 1)
        for (c = 0; c < n_classes; c++)
            for (r = 0; r < FX_TILE; r++) xt[c][r] = x[c * cs + r];
    else
        for (c = 0; c < n_classes; c++)
            for (r = 0; r < FX_TILE; r++)
                xt[c][r] = r < rows ? x[r * rs + c * cs] : (FX_T)0;
    for (r = 0; r < FX_TILE; r++) { mt[r] = -INFINITY; acc[r] = 0.0; comp[r] = 0.0; count[r] = 0.0; }
#if FX_IS_FLOAT && FX_ISA_LEVEL != FX_ISA_BASELINE
    (void)comp;
    FX_LNAME(fx_tile_max)((const float (*)[FX_TILE])xt, n_classes, mt);
    for (r = 0; r < FX_TILE; r++) m[r] = mt[r];
    FX_LNAME(fx_tile_exp_sums)((const float (*)[FX_TILE])xt, n_classes, mt, acc, count, et);
#else
    for (c = 0; c < n_classes; c++)
        for (r = 0; r < FX_TILE; r++)
            mt[r] = xt[c][r] > mt[r] ? xt[c][r] : mt[r];
    for (r = 0; r < FX_TILE; r++) m[r] = mt[r];
    for (c = 0; c < n_classes; c++)
        for (r = 0; r < FX_TILE; r++) {
            int at_max = (double)xt[c][r] == m[r];
            double v = FX_NAME(fx_exp_shifted)(xt[c][r], m[r]);
#if FX_COMPENSATED
            acc[r] = fx_two_sum(acc[r], at_max ? 0.0 : v, &comp[r]);
#else
            (void)comp;
            acc[r] += at_max ? 0.0 : v;
#endif
            count[r] += at_max ? 1.0 : 0.0;
            et[c][r] = v;
        }
#endif
    for (r = 0; r < FX_TILE; r++) {
#if FX_COMPENSATED
        double s_rest = acc[r] + (comp[r] + (count[r] - 1.0));
#else
        double s_rest = acc[r] + (count[r] - 1.0);
#endif
        s_rest_out[r] = s_rest;
        log_s_out[r] = fx_log1p_pos(s_rest);
        m_out[r] = m[r];
        factor[r] = (g != NULL && r < rows ? coef[r] : 0.0) / (1.0 + s_rest);
    }
    /* z-loss: its gradient 2 z lse p adds zcoef * lse to the softmax's coefficient (a loop of
     * its own: GCC vectorised a zcoef[r] in the loop above as a load even when zcoef is NULL) */
    if (g != NULL && zcoef != NULL)
        for (r = 0; r < rows; r++)
            factor[r] += zcoef[r] * (m[r] + log_s_out[r]) / (1.0 + s_rest_out[r]);
    if (g != NULL && rows == FX_TILE && grs == 1)
        for (c = 0; c < n_classes; c++)
            for (r = 0; r < FX_TILE; r++) g[c * gcs + r] = (FX_T)(et[c][r] * factor[r]);
    else if (g != NULL)
        for (c = 0; c < n_classes; c++)
            for (r = 0; r < rows; r++)
                g[r * grs + c * gcs] = (FX_T)(et[c][r] * factor[r]);
}

/* Dense labels: with q_i the label mass (fx_label_mass), returns HALF of sum q_i (x_i - m) over
 * the q_i != 0 (so 0 * -inf is 0), summed as sum q_i (x_i / 2 - m / 2), and stores sum q_i in
 * *mass. Note [smoothing sum]: x_i - m alone overflows for logits of both signs near the
 * largest double, where a term with a small q_i does not; halving is exact, so the doubled
 * result has the bits of the plain sum wherever that does not overflow. */
static double FX_LNAME(fx_row_dense_dot)(const FX_T *x, const FX_T *t, ptrdiff_t n,
                                         double m, double keep, double spread,
                                         const double *w, double *mass)
{
    double acc[FX_LANES], tot[FX_LANES], acc_tail = 0.0, tot_tail = 0.0, half_m = 0.5 * m;
    ptrdiff_t i = 0;
    int j;
    for (j = 0; j < FX_LANES; j++) { acc[j] = 0.0; tot[j] = 0.0; }
    for (; i + FX_LANES <= n; i += FX_LANES)
        for (j = 0; j < FX_LANES; j++) {
            double q = FX_NAME(fx_label_mass)(t[i + j], keep, spread, w, i + j);
            tot[j] += q;
            double term = q * (0.5 * (double)x[i + j] - half_m); /* then the select: above */
            acc[j] += q != 0.0 ? term : 0.0;
        }
    for (; i < n; i++) {
        double q = FX_NAME(fx_label_mass)(t[i], keep, spread, w, i);
        tot_tail += q;
        acc_tail += q != 0.0 ? q * (0.5 * (double)x[i] - half_m) : 0.0;
    }
    *mass = fx_combine(tot) + tot_tail;
    return fx_combine(acc) + acc_tail;
}

static void FX_LNAME(fx_row_dense_grad)(FX_T *g, const FX_T *t, ptrdiff_t n, double a,
                                        double b, double keep, double spread,
                                        const double *w, double p, double s_rest,
                                        double inv_s)
{
    ptrdiff_t i;
    double rest_frac = s_rest * inv_s;
    for (i = 0; i < n; i++)
        g[i] = (FX_T)FX_NAME(fx_dense_grad_one)((double)g[i],
                                                FX_NAME(fx_label_mass)(t[i], keep, spread, w, i),
                                                a, b, p, rest_frac);
}

/* sum_i exp(v_i - m) - 1 without the 1 of the maximum, m = cap(m_raw) (stored in *m_out),
 * m_raw the row's raw maximum: the terms with x_i == m_raw are counted, not summed (compared
 * raw, so the count does not depend on how the cap rounds). The last partial block goes through
 * a buffer padded with m_raw (counted, then discounted), so every element is vectorised. */
static double FX_LNAME(fx_row_cap_exp_sum)(const FX_T *x, ptrdiff_t n, double s,
                                           double m_raw, double *m_out)
{
    double acc[FX_LANES], count[FX_LANES], inv_s, pre = fx_cap_prescale(s, &inv_s);
    double m = FX_NAME(fx_cap)(m_raw, s, pre, inv_s, NULL);
    FX_T pad[FX_LANES];
    ptrdiff_t i = 0, rest;
    int j;
    for (j = 0; j < FX_LANES; j++) { acc[j] = 0.0; count[j] = 0.0; }
    for (; i + FX_LANES <= n; i += FX_LANES)
        FX_NAME(fx_cap_exp_sum_block)(x + i, s, pre, inv_s, m_raw, m, acc, count);
    rest = n - i;
    if (rest > 0) {
        for (j = 0; j < FX_LANES; j++) pad[j] = j < rest ? x[i + j] : (FX_T)m_raw;
        FX_NAME(fx_cap_exp_sum_block)(pad, s, pre, inv_s, m_raw, m, acc, count);
    }
    *m_out = m;
    return fx_combine(acc) + ((fx_combine(count) - (double)(rest > 0 ? FX_LANES - rest : 0))
                              - 1.0);
}

/* g_i = (a exp(v_i - m) - b q_i) * dv_i/dx_i, q_i = (t ? keep t_i + spread : 1) * (w ? w_i : 1);
 * g may be x (each element is read before it is written). Rows shorter than a vector go through
 * a buffer, so that they are vectorised too. */
static void FX_LNAME(fx_row_cap_grad)(const FX_T *x, FX_T *g, ptrdiff_t n, double s,
                                      double m, double a, double b, const FX_T *t,
                                      double keep, double spread, const double *w)
{
    double inv_s, pre = fx_cap_prescale(s, &inv_s);
    ptrdiff_t i;
    if (n < FX_LANES && t == NULL && w == NULL) {
        FX_T buf[FX_LANES];
        int j;
        for (j = 0; j < FX_LANES; j++) buf[j] = j < n ? x[j] : (FX_T)0;
        for (j = 0; j < FX_LANES; j++)
            buf[j] = FX_NAME(fx_cap_grad_one)(buf[j], s, pre, inv_s, m, a, b, 1.0);
        for (j = 0; j < n; j++) g[j] = buf[j];
        return;
    }
    if (t == NULL && w == NULL)
        for (i = 0; i < n; i++) g[i] = FX_NAME(fx_cap_grad_one)(x[i], s, pre, inv_s, m, a, b, 1.0);
    else
        for (i = 0; i < n; i++) {
            double q = t != NULL ? FX_NAME(fx_label_mass)(t[i], keep, spread, w, i)
                                 : (w != NULL ? w[i] : 1.0);
            g[i] = FX_NAME(fx_cap_grad_one)(x[i], s, pre, inv_s, m, a, b, q);
        }
}
