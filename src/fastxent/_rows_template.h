/*
 * The per-row and per-tile work of one float type, included once per type by _rows.h
 * (FX_NAME(f) appends the type's suffix: fx_sparse_row_f32, ...). The vector loops it calls are
 * those of the ISA chosen at run time (FX_LOOP, _loops_template.h).
 */
/* fx_row_dense_dot (half the dot) for strided rows (x[i * xs], t[i * ts]), scalar, in the same
 * order */
static double FX_NAME(fx_strided_dense_dot)(const FX_T *x, ptrdiff_t xs, const FX_T *t,
                                            ptrdiff_t ts, ptrdiff_t n, double m, double keep,
                                            double spread, const double *w, double *mass)
{
    double acc[FX_LANES], tot[FX_LANES], acc_tail = 0.0, tot_tail = 0.0, half_m = 0.5 * m;
    ptrdiff_t i, n_full = n - n % FX_LANES;
    int j;
    for (j = 0; j < FX_LANES; j++) { acc[j] = 0.0; tot[j] = 0.0; }
    for (i = 0; i < n; i++) {
        double q = FX_NAME(fx_label_mass)(t[i * ts], keep, spread, w, i);
        double term = q != 0.0 ? q * (0.5 * (double)x[i * xs] - half_m) : 0.0;
        if (i < n_full) {
            tot[i % FX_LANES] += q;
            acc[i % FX_LANES] += term;
        } else {
            tot_tail += q;
            acc_tail += term;
        }
    }
    *mass = fx_combine(tot) + tot_tail;
    return fx_combine(acc) + acc_tail;
}

/* =======================================================================================
 * The per-row and per-tile work of every kernel of _kernels_c.pyx, which keeps the argument
 * unpacking, the prange loops and the choice of path. A row is n classes at class stride xs
 * (gradient gs, target ts); these functions call the vectorised loops of the ISA in use
 * (FX_LOOP) for contiguous rows. They are compiled once, for the baseline: their scalar
 * formulas compile to the same operations on every CPU (the loops they call do not).
 * Kernels never raise: a row's bad label or non-finite maximum gives NaN.
 * ======================================================================================= */

/* max_c x_c ignoring NaN; -inf for a row of -inf or NaN only */
static double FX_NAME(fx_max)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs)
{
    FX_T m = -INFINITY;
    ptrdiff_t c;
    if (xs == 1)
        return FX_LOOP(fx_row_max)(x, n);
    for (c = 0; c < n; c++) {
        FX_T v = x[c * xs];
        m = v > m ? v : m;
    }
    return m;
}

/* s_rest (Note [s_rest]); exp(x_c - m) into e[c * es] when e is not NULL (e may be x) */
static double FX_NAME(fx_sum_rest)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, double m, FX_T *e,
                                   ptrdiff_t es)
{
    if (xs == 1 && (e == NULL || es == 1))
        return FX_LOOP(fx_row_exp_sum)(x, n, m, e);
    return FX_LOOP(fx_strided_exp_sum)(x, n, xs, m, e, es);
}

static void FX_NAME(fx_fill)(FX_T *g, ptrdiff_t n, ptrdiff_t gs, double value)
{
    ptrdiff_t c;
    for (c = 0; c < n; c++) g[c * gs] = (FX_T)value;
}

static void FX_NAME(fx_scale)(FX_T *g, ptrdiff_t n, ptrdiff_t gs, double factor)
{
    ptrdiff_t c;
    if (gs == 1) {
        FX_LOOP(fx_row_scale)(g, n, factor);
        return;
    }
    for (c = 0; c < n; c++) g[c * gs] = (FX_T)((double)g[c * gs] * factor);
}

/* ---- normalisers ------------------------------------------------------------------------ */

/* log sum_c exp(x_c): -inf for a row of -inf, +inf for a +inf, NaN for a NaN */
static double FX_NAME(fx_logsumexp_row)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs)
{
    double m = FX_NAME(fx_max)(x, n, xs);
    ptrdiff_t c;
    if (m == INFINITY || m == -INFINITY) {
        for (c = 0; c < n; c++)
            if (isnan(x[c * xs])) return NAN;
        return m;
    }
    return m + log1p(FX_NAME(fx_sum_rest)(x, n, xs, m, NULL, 0));
}

static void FX_NAME(fx_logsumexp_tile)(const FX_T *x, ptrdiff_t rs, ptrdiff_t cs, int rows,
                                       ptrdiff_t n, FX_T *out, ptrdiff_t os)
{
    double m[FX_TILE], s_rest[FX_TILE], log_s[FX_TILE];
    int i;
    FX_LOOP(fx_tile_stats)(x, rs, cs, rows, n, NULL, 0, 0, NULL, NULL, m, s_rest, log_s);
    for (i = 0; i < rows; i++) {
        if (m[i] == INFINITY || m[i] == -INFINITY)
            out[i * os] = (FX_T)FX_NAME(fx_logsumexp_row)(x + i * rs, n, cs);
        else
            out[i * os] = (FX_T)(m[i] + log_s[i]);
    }
}

/* softmax, or log_softmax as (x - m) - log s (m + log s would round log s away near the
 * maximum); out may be x; scratch: a row of n elements for Note [streamed gradient], or NULL */
static void FX_NAME(fx_softmax_row)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, FX_T *out,
                                    ptrdiff_t os, int log_output, FX_T *scratch)
{
    double m = FX_NAME(fx_max)(x, n, xs), log_s;
    ptrdiff_t c;
    if (m == INFINITY || m == -INFINITY) {
        FX_NAME(fx_fill)(out, n, os, NAN);
        return;
    }
    if (log_output) {
        log_s = log1p(FX_NAME(fx_sum_rest)(x, n, xs, m, NULL, 0));
        for (c = 0; c < n; c++) out[c * os] = (FX_T)(((double)x[c * xs] - m) - log_s);
    } else if (scratch != NULL && xs == 1 && os == 1 && (const FX_T *)out != x) {
        /* Note [streamed gradient] */
        double s_rest = FX_NAME(fx_sum_rest)(x, n, xs, m, scratch, 1);
        FX_LOOP(fx_row_scale_stream)(scratch, out, n, 1.0 / (1.0 + s_rest));
    } else {
        double s_rest = FX_NAME(fx_sum_rest)(x, n, xs, m, out, os);
        FX_NAME(fx_scale)(out, n, os, 1.0 / (1.0 + s_rest));
    }
}

/* softmax written by the tile itself (coefficient 1); log_softmax row by row from its stats */
static void FX_NAME(fx_softmax_tile)(const FX_T *x, ptrdiff_t rs, ptrdiff_t cs, int rows,
                                     ptrdiff_t n, FX_T *out, ptrdiff_t ors, ptrdiff_t ocs,
                                     int log_output)
{
    double ones[FX_TILE], m[FX_TILE], s_rest[FX_TILE], log_s[FX_TILE];
    ptrdiff_t c;
    int i;
    for (i = 0; i < FX_TILE; i++) ones[i] = 1.0;
    FX_LOOP(fx_tile_stats)(x, rs, cs, rows, n, log_output ? NULL : out, ors, ocs, ones, NULL, m,
                           s_rest, log_s);
    for (i = 0; i < rows; i++) {
        if (m[i] == INFINITY || m[i] == -INFINITY)
            FX_NAME(fx_fill)(out + i * ors, n, ocs, NAN);
        else if (log_output)
            for (c = 0; c < n; c++)
                out[i * ors + c * ocs] = (FX_T)(((double)x[i * rs + c * cs] - m[i]) - log_s[i]);
    }
}

/* ---- class-index labels ---------------------------------------------------------------- */

/* Loss and gradient of one row with class index y (in range):
 *   loss = (1 - eps) w_y (lse - x_y) + (eps / C) sum_c w_c (lse - x_c) [+ z lse^2]
 * and g = grad_coef d loss / d x (g NULL for the loss alone; g may be x). The z-loss term
 * (gradient 2 z lse p) only changes coefficients, and only when z_loss != 0. scratch: a row of
 * n elements for Note [streamed gradient], or NULL. */
static void FX_NAME(fx_sparse_row_plain)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, ptrdiff_t y,
                                   const double *weight, double weight_sum, double smoothing,
                                   double *loss, FX_T *g, ptrdiff_t gs, double grad_coef,
                                   double z_loss, FX_T *scratch)
{
    double m = FX_NAME(fx_max)(x, n, xs);
    /* Note [streamed gradient]: exp(x - m) into the scratch row (n elements, or NULL), the
     * gradient streamed from it, where g is a contiguous row apart from x */
    int stream = scratch != NULL && g != NULL && smoothing == 0.0 && xs == 1 && gs == 1 &&
                 (const FX_T *)g != x;
    FX_T *e = stream ? scratch : g;
    FX_T x_y = x[y * xs]; /* read now: the gradient may overwrite x (in place) */
    double w_y = weight != NULL ? weight[y] : 1.0;
    double s_rest, log_s, inv_s, half_nll, p_y, p_y_minus_1, smooth_dot = 0.0;
    double a_coef, k_coef, w_c, lse, z_coef = 0.0;
    ptrdiff_t c;
    if (m == INFINITY || m == -INFINITY) {
        *loss = NAN;
        if (g != NULL) FX_NAME(fx_fill)(g, n, gs, NAN);
        return;
    }
    if (smoothing != 0.0) {
        /* Note [smoothing sum], read before the gradient buffer (possibly x) is written */
        if (xs == 1) {
            smooth_dot = FX_LOOP(fx_row_weighted_shift_sum)(x, n, m, weight, smoothing / n);
        } else {
            for (c = 0; c < n; c++) {
                w_c = weight != NULL ? weight[c] : 1.0;
                if (w_c != 0.0)
                    smooth_dot += ((smoothing / n) * w_c) * (0.5 * (double)x[c * xs] - 0.5 * m);
            }
        }
    }
    s_rest = FX_NAME(fx_sum_rest)(x, n, xs, m, e, gs);
    log_s = log1p(s_rest);
    /* Note [smoothing sum]: the label's term in halves, doubled (x_y - m overflows for logits
     * of both signs near the largest double, a small w_y times it need not) */
    half_nll = 0.5 * log_s - (0.5 * (double)x_y - 0.5 * m);
    if (smoothing != 0.0) {
        /* the label's term is left out when its factor is 0, unless the label's logit is -inf
         * (0 * inf: NaN, as PyTorch): an nll that overflowed from finite logits counts nothing */
        if ((1.0 - smoothing) * w_y != 0.0 || x_y == -INFINITY)
            *loss = 2.0 * ((1.0 - smoothing) * w_y * half_nll);
        else
            *loss = 0.0;
        *loss += (smoothing / n) * weight_sum * log_s - 2.0 * smooth_dot;
    } else {
        *loss = 2.0 * (w_y * half_nll);
    }
    if (z_loss != 0.0) {
        lse = m + log_s;
        *loss += z_loss * lse * lse;
        z_coef = 2.0 * z_loss * lse; /* d(z lse^2)/dx_c = z_coef p_c */
    }
    if (g == NULL) return;
    inv_s = 1.0 / (1.0 + s_rest);
    /* Note [sparse label at maximum] */
    if ((double)x_y == m) {
        p_y = inv_s;
        p_y_minus_1 = -s_rest * inv_s;
    } else {
        p_y = (double)e[y * gs] * inv_s;
        p_y_minus_1 = p_y - 1.0;
    }
    /* g_c = coef (A p_c - k w_c) for c != y, with A = (1 - eps) w_y + (eps / C) W, k = eps / C */
    k_coef = smoothing / n;
    a_coef = (1.0 - smoothing) * w_y + k_coef * weight_sum;
    if (z_loss != 0.0) a_coef = a_coef + z_coef;
    if (stream) {
        FX_LOOP(fx_row_scale_stream)(e, g, n,
                                     grad_coef * (z_loss != 0.0 ? w_y + z_coef : w_y) * inv_s);
    } else if (smoothing == 0.0) {
        FX_NAME(fx_scale)(g, n, gs, grad_coef * (z_loss != 0.0 ? w_y + z_coef : w_y) * inv_s);
    } else if (gs == 1) {
        FX_LOOP(fx_row_smooth_grad)(g, n, grad_coef * a_coef * inv_s, grad_coef * k_coef, weight);
    } else {
        for (c = 0; c < n; c++) {
            w_c = weight != NULL ? weight[c] : 1.0;
            g[c * gs] = (FX_T)(grad_coef * (a_coef * ((double)g[c * gs] * inv_s) - k_coef * w_c));
        }
    }
    if (z_loss != 0.0)
        g[y * gs] = (FX_T)(grad_coef * ((1.0 - smoothing) * w_y * p_y_minus_1
                                        + k_coef * (weight_sum * p_y - w_y) + z_coef * p_y));
    else if (smoothing != 0.0)
        g[y * gs] = (FX_T)(grad_coef * ((1.0 - smoothing) * w_y * p_y_minus_1
                                        + k_coef * (weight_sum * p_y - w_y)));
    else /* not 0 * (W p_y - w_y): W, the sum of the weights, may overflow where w_y does not */
        g[y * gs] = (FX_T)(grad_coef * (w_y * p_y_minus_1));
}

/* Up to FX_TILE rows of class indices without label smoothing (tile element (i, c) at
 * x[i * rs + c * cs]): the statistics and the scaled softmax vectorised across the rows by
 * fx_tile_stats, the label's class per row. y[i] is the class index, or negative for an ignored
 * (FX_IGNORED) or bad (FX_BAD_LABEL) label; a row's gradient coefficient is grad_scale, times
 * grad_rows[i * grad_rows_s] when grad_rows is not NULL. z_loss != 0 adds z lse^2 to each
 * counted row and 2 z lse p to its gradient. */
static void FX_NAME(fx_sparse_tile)(const FX_T *x, ptrdiff_t rs, ptrdiff_t cs, int rows,
                                    ptrdiff_t n, const ptrdiff_t *y, const double *weight,
                                    double *loss, ptrdiff_t loss_s, FX_T *g, ptrdiff_t grs,
                                    ptrdiff_t gcs, double grad_scale, const double *grad_rows,
                                    ptrdiff_t grad_rows_s, double z_loss)
{
    double coef[FX_TILE], zcoef[FX_TILE], m[FX_TILE], s_rest[FX_TILE], log_s[FX_TILE];
    double w_y[FX_TILE], lse, p_y;
    FX_T x_y[FX_TILE];
    FX_T *grow;
    int i;
    for (i = rows; i < FX_TILE; i++) { coef[i] = 0.0; zcoef[i] = 0.0; } /* (never read) */
    for (i = 0; i < rows; i++) {
        coef[i] = 0.0;
        if (y[i] >= 0) {
            w_y[i] = weight != NULL ? weight[y[i]] : 1.0;
            x_y[i] = x[i * rs + y[i] * cs]; /* read now: the gradient may overwrite x */
            coef[i] = grad_scale * w_y[i];
            zcoef[i] = 2.0 * z_loss * grad_scale;
            if (grad_rows != NULL) {
                coef[i] = coef[i] * grad_rows[i * grad_rows_s];
                zcoef[i] = zcoef[i] * grad_rows[i * grad_rows_s];
            }
        } else {
            zcoef[i] = 0.0;
        }
    }
    FX_LOOP(fx_tile_stats)(x, rs, cs, rows, n, g, grs, gcs, coef,
                           z_loss != 0.0 ? zcoef : NULL, m, s_rest, log_s);
    for (i = 0; i < rows; i++) {
        grow = g != NULL ? g + i * grs : NULL;
        if (y[i] < 0) {
            loss[i * loss_s] = y[i] == FX_IGNORED ? 0.0 : NAN;
            if (grow != NULL) FX_NAME(fx_fill)(grow, n, gcs, y[i] == FX_IGNORED ? 0.0 : NAN);
        } else if (m[i] == INFINITY || m[i] == -INFINITY) {
            loss[i * loss_s] = NAN;
            if (grow != NULL) FX_NAME(fx_fill)(grow, n, gcs, NAN);
        } else {
            /* in halves, doubled, as fx_sparse_row_plain */
            loss[i * loss_s] = 2.0 * (w_y[i] * (0.5 * log_s[i]
                                                - (0.5 * (double)x_y[i] - 0.5 * m[i])));
            lse = m[i] + log_s[i];
            if (z_loss != 0.0) loss[i * loss_s] += z_loss * lse * lse;
            if (grow == NULL) continue;
            /* coef (p_y - 1): from -s_rest / s when the label is the maximum (Note [sparse
             * label at maximum]), else from coef p_y, already in the buffer (p_y <= 1/2 there);
             * the z-loss term zcoef lse p_y is in the buffer too, and added here when the
             * label is the maximum. (s_rest / s first: coef s_rest may overflow where the entry
             * does not.) */
            if ((double)x_y[i] == m[i] && z_loss != 0.0) {
                grow[y[i] * gcs] = (FX_T)(-coef[i] * (s_rest[i] / (1.0 + s_rest[i]))
                                          + zcoef[i] * lse / (1.0 + s_rest[i]));
            } else if ((double)x_y[i] == m[i]) {
                grow[y[i] * gcs] = (FX_T)(-coef[i] * (s_rest[i] / (1.0 + s_rest[i])));
            } else if (isinf(grow[y[i] * gcs])) {
                /* coef p_y overflowed the buffer's type (a class weight beyond float32's
                 * range): inf - coef would keep the wrong sign; the entry in double */
                p_y = FX_NAME(fx_exp_shifted)(x_y[i], m[i]) / (1.0 + s_rest[i]);
                grow[y[i] * gcs] = (FX_T)(coef[i] * (p_y - 1.0) + zcoef[i] * lse * p_y);
            } else {
                grow[y[i] * gcs] = (FX_T)((double)grow[y[i] * gcs] - coef[i]);
            }
        }
    }
}

/* ---- class probabilities (any non-negative label mass) ---------------------------------- */

/* Loss and gradient of one row with label mass q_c = ((1 - eps) t_c + eps / C) w_c:
 * loss = Q log s - sum_c q_c (x_c - m), Q = sum q (the true gradient grad_coef (Q p - q) also
 * when Q != 1); terms with q_c = 0 are skipped, so a -inf logit with no label mass costs nothing
 * and gets gradient 0. With z_loss != 0, loss += z lse^2 and Q becomes Q + 2 z lse in the
 * softmax's coefficient. g may be x, never t. */
static void FX_NAME(fx_dense_row_plain)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, const FX_T *t,
                                  ptrdiff_t ts, const double *weight, double smoothing,
                                  double *loss, FX_T *g, ptrdiff_t gs, double grad_coef,
                                  double z_loss)
{
    double m = FX_NAME(fx_max)(x, n, xs);
    double mass = 0.0, half_dot, q, s_rest, log_s, inv_s, lse, p_coef;
    double keep = 1.0 - smoothing, spread = smoothing / n;
    ptrdiff_t c;
    if (m == INFINITY || m == -INFINITY) {
        *loss = NAN;
        if (g != NULL) FX_NAME(fx_fill)(g, n, gs, NAN);
        return;
    }
    if (xs == 1 && ts == 1)
        half_dot = FX_LOOP(fx_row_dense_dot)(x, t, n, m, keep, spread, weight, &mass);
    else /* the same sums in the same order, element by element */
        half_dot = FX_NAME(fx_strided_dense_dot)(x, xs, t, ts, n, m, keep, spread, weight, &mass);
    s_rest = FX_NAME(fx_sum_rest)(x, n, xs, m, g, gs);
    log_s = log1p(s_rest);
    *loss = mass * log_s - 2.0 * half_dot;
    p_coef = mass;
    if (z_loss != 0.0) {
        lse = m + log_s;
        *loss += z_loss * lse * lse;
        p_coef = mass + 2.0 * z_loss * lse;
    }
    if (g == NULL) return;
    inv_s = 1.0 / (1.0 + s_rest);
    if (gs == 1 && ts == 1) {
        FX_LOOP(fx_row_dense_grad)(g, t, n, grad_coef * p_coef * inv_s, grad_coef, keep, spread,
                                   weight, p_coef, s_rest, inv_s);
        return;
    }
    for (c = 0; c < n; c++) { /* the formula of fx_row_dense_grad, the maximum's entry included */
        q = FX_NAME(fx_label_mass)(t[c * ts], keep, spread, weight, c);
        g[c * gs] = (FX_T)FX_NAME(fx_dense_grad_one)((double)g[c * gs], q,
                                                     grad_coef * p_coef * inv_s, grad_coef,
                                                     p_coef, s_rest * inv_s);
    }
}

/* fx_dense_row_plain for up to FX_TILE rows of few classes (no z-loss): the softmax, scaled by
 * coef * mass, is written by fx_tile_stats; the label terms are done per row. g may alias x:
 * the label terms then read a copy of the tile's logits, taken before the gradient overwrites
 * them, so that in place and out of place give the same bits. */
static void FX_NAME(fx_dense_tile)(const FX_T *x, ptrdiff_t rs, ptrdiff_t cs, int rows,
                                   ptrdiff_t n, const FX_T *t, ptrdiff_t trs, ptrdiff_t tcs,
                                   const double *weight, double smoothing, double *loss,
                                   ptrdiff_t loss_s, FX_T *g, ptrdiff_t grs, ptrdiff_t gcs,
                                   double grad_scale, const double *grad_rows,
                                   ptrdiff_t grad_rows_s)
{
    FX_T x_copy[FX_TILE * FX_TILE_MAX_C];
    double coef[FX_TILE], scaled[FX_TILE], mass[FX_TILE], m[FX_TILE], s_rest[FX_TILE];
    double log_s[FX_TILE];
    double keep = 1.0 - smoothing, spread = smoothing / n, q, half_dot, rest_frac;
    ptrdiff_t c, arg_max;
    int i;
    for (i = rows; i < FX_TILE; i++) scaled[i] = 0.0; /* (never read) */
    for (i = 0; i < rows; i++) {
        mass[i] = 0.0;
        for (c = 0; c < n; c++)
            mass[i] += FX_NAME(fx_label_mass)(t[i * trs + c * tcs], keep, spread, weight, c);
        coef[i] = grad_rows != NULL ? grad_scale * grad_rows[i * grad_rows_s] : grad_scale;
        scaled[i] = coef[i] * mass[i];
    }
    if (g != NULL && (const void *)g == (const void *)x) {
        for (i = 0; i < rows; i++)
            for (c = 0; c < n; c++) x_copy[i * n + c] = x[i * rs + c * cs];
        x = x_copy;
        rs = n;
        cs = 1;
    }
    FX_LOOP(fx_tile_stats)(x, rs, cs, rows, n, g, grs, gcs, scaled, NULL, m, s_rest, log_s);
    for (i = 0; i < rows; i++) {
        if (m[i] == INFINITY || m[i] == -INFINITY) {
            loss[i * loss_s] = NAN;
            if (g != NULL) FX_NAME(fx_fill)(g + i * grs, n, gcs, NAN);
            continue;
        }
        half_dot = 0.0; /* half of sum q (x - m), as fx_row_dense_dot */
        arg_max = -1;
        rest_frac = s_rest[i] * (1.0 / (1.0 + s_rest[i]));
        for (c = 0; c < n; c++) {
            q = FX_NAME(fx_label_mass)(t[i * trs + c * tcs], keep, spread, weight, c);
            if (q != 0.0) /* so that a -inf logit without label mass costs nothing */
                half_dot += q * (0.5 * (double)x[i * rs + c * cs] - 0.5 * m[i]);
            if (g != NULL)
                g[i * grs + c * gcs] = (FX_T)((double)g[i * grs + c * gcs] - coef[i] * q);
            arg_max = (double)x[i * rs + c * cs] == m[i] ? c : arg_max;
        }
        loss[i * loss_s] = mass[i] * log_s[i] - 2.0 * half_dot;
        if (g != NULL && arg_max >= 0) {
            /* the maximum's entry again, in double from the row's statistics (the buffer's
             * softmax is rounded to the data's type): Note [dense maximum entry] (one of tied
             * maxima is enough: with ties p <= 1/2, nothing cancels) */
            q = FX_NAME(fx_label_mass)(t[i * trs + arg_max * tcs], keep, spread, weight, arg_max);
            if (rest_frac < 0.5)
                g[i * grs + arg_max * gcs] = (FX_T)(coef[i] * ((mass[i] - q) - mass[i] * rest_frac));
            else
                g[i * grs + arg_max * gcs] = (FX_T)(coef[i] * mass[i] * (1.0 / (1.0 + s_rest[i]))
                                                    - coef[i] * q);
        }
    }
}

/* ---- logit softcap (Note [softcap expm1]): the rows of both label kinds when softcap > 0 --
 * Each logit x is read as v = s tanh(x / s), in double on the fly (never stored), and the
 * gradient w.r.t. x carries dv/dx = 1 - tanh^2(x / s) (fx_cap). tanh is monotone, so the capped
 * row maximum m is the cap of the raw maximum, and "x is the maximum" is decided on the raw x.
 * z-loss is folded into the coefficients as in the plain rows. Rows take three passes: max,
 * sums (read only), gradient (exp recomputed), which reads x_c before it writes g_c, so g may be
 * x itself. Contiguous rows use the vectorised loops above; strided ones the scalar loops here
 * (the same formulas). */

/* The raw row maximum into *m_raw, the capped one into *m_out, log s into *log_s_out; returns
 * s_rest, summed without the 1 of the maximum */
static double FX_NAME(fx_capped_stats)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, double softcap,
                                       double *m_raw, double *m_out, double *log_s_out)
{
    double acc = 0.0, m;
    ptrdiff_t c, n_max = 0;
    *m_raw = FX_NAME(fx_max)(x, n, xs);
    if (xs == 1) {
        acc = FX_LOOP(fx_row_cap_exp_sum)(x, n, softcap, *m_raw, m_out);
    } else {
        m = FX_NAME(fx_cap_one)(*m_raw, softcap, NULL);
        for (c = 0; c < n; c++) {
            if ((double)x[c * xs] == *m_raw)
                n_max += 1;
            else
                acc += FX_NAME(fx_exp_shifted)(FX_NAME(fx_cap_one)((double)x[c * xs], softcap, NULL), m);
        }
        acc = acc + (double)(n_max - 1);
        *m_out = m;
    }
    *log_s_out = log1p(acc);
    return acc;
}

/* fx_sparse_row_plain with a softcap. With v the capped row:
 * loss = (1 - eps) w_y (lse - v_y) + (eps / C) sum_c w_c (lse - v_c) + z lse^2;
 * d loss / d v_c = (A + 2 z lse) p_c - k w_c - (1 - eps) w_y [c == y], A = (1 - eps) w_y + k W,
 * k = eps / C; times dv_c / dx_c. */
static void FX_NAME(fx_sparse_row_capped)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, ptrdiff_t y,
                                          const double *weight, double weight_sum,
                                          double smoothing, double z_loss, double softcap,
                                          double *loss, FX_T *g, ptrdiff_t gs, double grad_coef)
{
    double m, m_raw, log_s, s_rest, lse, inv_s, v, p, w_c, smooth_dot = 0.0;
    double w_y = weight != NULL ? weight[y] : 1.0;
    double k_coef = smoothing / n, a_coef, g_c, z_coef;
    double x_y = x[y * xs]; /* read now: the gradient may overwrite x (in place) */
    double slope, slope_y;
    double v_y = FX_NAME(fx_cap_one)(x_y, softcap, &slope_y);
    ptrdiff_t c;
    s_rest = FX_NAME(fx_capped_stats)(x, n, xs, softcap, &m_raw, &m, &log_s);
    if (x_y == m_raw)
        /* the label is the maximum: v_y - m is 0 exactly (m may come from a vectorised loop
         * whose FMA contraction rounds the cap differently in the last bit; a tiny loss is all
         * in log_s, and must not go negative) */
        v_y = m;
    if (smoothing != 0.0) {
        for (c = 0; c < n; c++) {
            w_c = weight != NULL ? weight[c] : 1.0;
            if (w_c != 0.0 && (double)x[c * xs] != m_raw) /* the maximum's term is 0 exactly */
                smooth_dot += w_c * (FX_NAME(fx_cap_one)((double)x[c * xs], softcap, NULL) - m);
        }
    }
    lse = m + log_s;
    z_coef = 2.0 * z_loss * lse;
    *loss = (1.0 - smoothing) * w_y * (log_s - (v_y - m)) + z_loss * lse * lse;
    if (smoothing != 0.0) *loss += k_coef * (weight_sum * log_s - smooth_dot);
    if (g == NULL) return;
    inv_s = 1.0 / (1.0 + s_rest);
    a_coef = (1.0 - smoothing) * w_y + k_coef * weight_sum + z_coef;
    if (xs == 1 && gs == 1) {
        FX_LOOP(fx_row_cap_grad)(x, g, n, softcap, m, grad_coef * a_coef * inv_s,
                                 grad_coef * k_coef, NULL, 0.0, 0.0, weight);
    } else {
        for (c = 0; c < n; c++) {
            v = FX_NAME(fx_cap_one)((double)x[c * xs], softcap, &slope);
            w_c = weight != NULL ? weight[c] : 1.0;
            g[c * gs] = (FX_T)(grad_coef * (a_coef * FX_NAME(fx_exp_shifted)(v, m) * inv_s
                                            - k_coef * w_c) * slope);
        }
    }
    /* the label's class: - (1 - eps) w_y, without cancellation when y is the maximum */
    if (x_y == m_raw) {
        p = inv_s;
        g_c = (1.0 - smoothing) * w_y * (-s_rest * inv_s);
    } else {
        p = FX_NAME(fx_exp_shifted)(v_y, m) * inv_s;
        g_c = (1.0 - smoothing) * w_y * (p - 1.0);
    }
    g_c = g_c + k_coef * (weight_sum * p - w_y) + z_coef * p;
    g[y * gs] = (FX_T)(grad_coef * g_c * slope_y);
}

/* fx_dense_row_plain with a softcap: with q_c the label mass, Q = sum q,
 * loss = Q log s - sum_c q_c (v_c - m) + z lse^2, d loss / d v_c = (Q + 2 z lse) p_c - q_c,
 * times dv_c / dx_c. g may alias x, never t. */
static void FX_NAME(fx_dense_row_capped)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, const FX_T *t,
                                         ptrdiff_t ts, const double *weight, double smoothing,
                                         double z_loss, double softcap, double *loss, FX_T *g,
                                         ptrdiff_t gs, double grad_coef)
{
    double m, m_raw, log_s, s_rest, lse, q, v, slope, mass = 0.0, dot = 0.0, a_coef;
    double keep = 1.0 - smoothing, spread = smoothing / n;
    ptrdiff_t c;
    s_rest = FX_NAME(fx_capped_stats)(x, n, xs, softcap, &m_raw, &m, &log_s);
    for (c = 0; c < n; c++) {
        q = FX_NAME(fx_label_mass)(t[c * ts], keep, spread, weight, c);
        mass += q;
        /* the maximum's term is 0 exactly: m may come from a vectorised loop whose FMA
         * contraction rounds the cap differently in the last bit (a one-hot target on the
         * maximum would turn a tiny loss negative) */
        if (q != 0.0 && (double)x[c * xs] != m_raw)
            dot += q * (FX_NAME(fx_cap_one)((double)x[c * xs], softcap, NULL) - m);
    }
    lse = m + log_s;
    *loss = mass * log_s - dot + z_loss * lse * lse;
    if (g == NULL) return;
    a_coef = (mass + 2.0 * z_loss * lse) * (1.0 / (1.0 + s_rest));
    if (xs == 1 && gs == 1 && ts == 1) {
        FX_LOOP(fx_row_cap_grad)(x, g, n, softcap, m, grad_coef * a_coef, grad_coef, t, keep,
                                 spread, weight);
        return;
    }
    for (c = 0; c < n; c++) {
        q = FX_NAME(fx_label_mass)(t[c * ts], keep, spread, weight, c);
        v = FX_NAME(fx_cap_one)((double)x[c * xs], softcap, &slope);
        g[c * gs] = (FX_T)(grad_coef * (a_coef * FX_NAME(fx_exp_shifted)(v, m) - q) * slope);
    }
}

/* ---- the rows of sparse_xent and dense_xent ----------------------------------------------- */

/* One row with class index y: the plain row, or the capped one when softcap > 0 (scratch: see
 * fx_sparse_row_plain) */
static void FX_NAME(fx_sparse_row)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, ptrdiff_t y,
                                   const double *weight, double weight_sum, double smoothing,
                                   double z_loss, double softcap, double *loss, FX_T *g,
                                   ptrdiff_t gs, double grad_coef, FX_T *scratch)
{
    if (softcap != 0.0)
        FX_NAME(fx_sparse_row_capped)(x, n, xs, y, weight, weight_sum, smoothing, z_loss, softcap,
                                      loss, g, gs, grad_coef);
    else
        FX_NAME(fx_sparse_row_plain)(x, n, xs, y, weight, weight_sum, smoothing, loss, g, gs,
                                     grad_coef, z_loss, scratch);
}

/* One row with label mass t: the plain row, or the capped one when softcap > 0 */
static void FX_NAME(fx_dense_row)(const FX_T *x, ptrdiff_t n, ptrdiff_t xs, const FX_T *t,
                                  ptrdiff_t ts, const double *weight, double smoothing,
                                  double z_loss, double softcap, double *loss, FX_T *g,
                                  ptrdiff_t gs, double grad_coef)
{
    if (softcap != 0.0)
        FX_NAME(fx_dense_row_capped)(x, n, xs, t, ts, weight, smoothing, z_loss, softcap, loss, g,
                                     gs, grad_coef);
    else
        FX_NAME(fx_dense_row_plain)(x, n, xs, t, ts, weight, smoothing, loss, g, gs, grad_coef,
                                    z_loss);
}
