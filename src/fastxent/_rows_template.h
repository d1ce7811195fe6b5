/*
 * Row kernels of _rows.h for one float type: included once with FX_T = float and once with
 * FX_T = double. FX_NAME(f) appends the type's suffix (fx_row_max_f32, fx_exp_neg_f64, ...).
 */
/* max of x[0..n) ignoring NaN; -inf for a row of -inf and NaN only. Max is idempotent, so the
 * last partial block is done by re-reading the last FX_MAX_LANES elements, all vectorised. */
FX_CLONES static double FX_NAME(fx_row_max)(const FX_T *x, ptrdiff_t n)
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

/* One block of FX_LANES elements of fx_row_exp_sum: acc += exp(x - m) for x != m, count the
 * x == m, and store exp(x - m) into e when e is not NULL. */
static inline void FX_NAME(fx_exp_sum_block)(const FX_T *x, double m, FX_T *e, double *acc,
                                             double *count)
{
    int j;
    double v[FX_LANES];
    for (j = 0; j < FX_LANES; j++) {
        int at_max = (double)x[j] == m;
        v[j] = FX_NAME(fx_exp_shifted)(x[j], m);
        acc[j] += at_max ? 0.0 : v[j];
        count[j] += at_max ? 1.0 : 0.0;
    }
    if (e != NULL)
        for (j = 0; j < FX_LANES; j++) e[j] = (FX_T)v[j];
}

/* sum exp(x_i - m) - 1 without adding the 1 of the maximum (terms with x_i == m are counted,
 * not summed); stores exp(x_i - m) into e[i] when e is not NULL (e may be x: read first).
 * The last partial block goes through a buffer padded with -inf (exp gives 0), so that every
 * element takes the vectorised path. */
FX_CLONES static double FX_NAME(fx_row_exp_sum)(const FX_T *x, ptrdiff_t n, double m, FX_T *e)
{
    double acc[FX_LANES], count[FX_LANES];
    FX_T pad_x[FX_LANES], pad_e[FX_LANES];
    ptrdiff_t i, rest;
    int j;
    for (j = 0; j < FX_LANES; j++) { acc[j] = 0.0; count[j] = 0.0; }
    for (i = 0; i + FX_LANES <= n; i += FX_LANES)
        FX_NAME(fx_exp_sum_block)(x + i, m, e != NULL ? e + i : NULL, acc, count);
    rest = n - i;
    if (rest > 0) {
        for (j = 0; j < FX_LANES; j++) pad_x[j] = j < rest ? x[i + j] : -INFINITY;
        FX_NAME(fx_exp_sum_block)(pad_x, m, pad_e, acc, count);
        if (e != NULL)
            for (j = 0; j < rest; j++) e[i + j] = pad_e[j];
    }
    return fx_combine(acc) + (fx_combine(count) - 1.0);
}

/* g[i] *= factor */
FX_CLONES static void FX_NAME(fx_row_scale)(FX_T *g, ptrdiff_t n, double factor)
{
    ptrdiff_t i;
    for (i = 0; i < n; i++) g[i] = (FX_T)((double)g[i] * factor);
}

/* sum w_i (x_i - m) over i with w_i != 0 (all w_i = 1 when w is NULL): label smoothing */
FX_CLONES static double FX_NAME(fx_row_weighted_shift_sum)(const FX_T *x, ptrdiff_t n, double m,
                                                           const double *w)
{
    double acc[FX_LANES], tail = 0.0;
    ptrdiff_t i = 0;
    int j;
    for (j = 0; j < FX_LANES; j++) acc[j] = 0.0;
    if (w == NULL) {
        for (; i + FX_LANES <= n; i += FX_LANES)
            for (j = 0; j < FX_LANES; j++) acc[j] += (double)x[i + j] - m;
        for (; i < n; i++) tail += (double)x[i] - m;
    } else {
        for (; i + FX_LANES <= n; i += FX_LANES)
            for (j = 0; j < FX_LANES; j++)
                acc[j] += w[i + j] != 0.0 ? w[i + j] * ((double)x[i + j] - m) : 0.0;
        for (; i < n; i++) tail += w[i] != 0.0 ? w[i] * ((double)x[i] - m) : 0.0;
    }
    return fx_combine(acc) + tail;
}

/* g[i] = coef * (a * g[i] - k * w_i): the label-smoothing gradient (w_i = 1 when w is NULL) */
FX_CLONES static void FX_NAME(fx_row_smooth_grad)(FX_T *g, ptrdiff_t n, double coef_a,
                                                  double coef_k, const double *w)
{
    ptrdiff_t i;
    if (w == NULL)
        for (i = 0; i < n; i++) g[i] = (FX_T)(coef_a * (double)g[i] - coef_k);
    else
        for (i = 0; i < n; i++) g[i] = (FX_T)(coef_a * (double)g[i] - coef_k * w[i]);
}
