/*
 * The per-element formulas of one float type (label mass, the exp sums' blocks, softcap), inline,
 * shared by the vector loops (_loops_template.h) and the rows (_rows_template.h). Included by
 * _rows.h once per type, FX_NAME(f) appending the type's suffix (fx_label_mass_f32, ...).
 */
/* q_c = ((1 - eps) t_c + eps / C) w_c: the label mass of class c (w_c = 1 without weights) */
static inline double FX_NAME(fx_label_mass)(FX_T t, double keep, double spread, const double *w,
                                            ptrdiff_t c)
{
    double q = keep * (double)t + spread;
    return w != NULL ? q * w[c] : q;
}


/* One block of FX_LANES elements of fx_row_exp_sum: acc += exp(x - m) for x != m (for double
 * data with its rounding error into comp: Note [compensated exp sums]), count the x == m, and
 * store exp(x - m) into e when e is not NULL. */
static inline void FX_NAME(fx_exp_sum_block)(const FX_T *x, double m, FX_T *e, double *acc,
                                             double *comp, double *count)
{
    int j;
    double v[FX_LANES];
    for (j = 0; j < FX_LANES; j++) {
        int at_max = (double)x[j] == m;
        v[j] = FX_NAME(fx_exp_shifted)(x[j], m);
#if FX_COMPENSATED
        acc[j] = fx_two_sum(acc[j], at_max ? 0.0 : v[j], &comp[j]);
#else
        (void)comp;
        acc[j] += at_max ? 0.0 : v[j];
#endif
        count[j] += at_max ? 1.0 : 0.0;
    }
    if (e != NULL)
        for (j = 0; j < FX_LANES; j++) e[j] = (FX_T)v[j];
}


/* The exp sums' two-level accumulation: the FX_LANES sums of a span (at most FX_SUM_BLOCK terms
 * each) go into the outer sums, which keeps the rounding error of long rows (C = 32000) small. */
static inline void FX_NAME(fx_exp_sum_outer)(double *outer, double *outer_comp, const double *acc,
                                             const double *comp)
{
    int j;
    for (j = 0; j < FX_LANES; j++) {
#if FX_COMPENSATED
        outer[j] = fx_two_sum(outer[j], acc[j], &outer_comp[j]);
        outer_comp[j] += comp[j];
#else
        (void)outer_comp;
        (void)comp;
        outer[j] += acc[j];
#endif
    }
}

/* s_rest from the outer sums and the count of maxima */
static inline double FX_NAME(fx_exp_sum_total)(const double *outer, const double *outer_comp,
                                               const double *count)
{
#if FX_COMPENSATED
    return fx_combine_compensated(outer, outer_comp, fx_combine(count) - 1.0);
#else
    (void)outer_comp;
    return fx_combine(outer) + (fx_combine(count) - 1.0);
#endif
}

/* Dense labels' gradient: g_i = a * g_i - b * q_i, with g_i = exp(x_i - m) on entry and
 * a = b p inv_s (p the softmax's coefficient, inv_s = 1 / (1 + s_rest)).
 * Note [dense maximum entry]: where g_i is 1 (the row maximum) and s_rest < 1, the entry is
 * b ((p - q_i) - p rest_frac) with rest_frac = s_rest inv_s < 1/2: the value of b (p inv_s - q_i)
 * without the rounding of 1 + s_rest, which loses the digits of s_rest below an ulp of 1 (and
 * with them the last digits of a result that does not cancel, or every digit of one that
 * does). A one-hot target on the maximum (p = q_i) keeps its tiny gradient -b p rest_frac, and a
 * soft one its last digit (TensorFlow's [[0.5, 0.5]] on logits [[37.43, 0]]:
 * 0.49999999999999994, not 0.5). For s_rest >= 1 the plain formula is the more exact: its
 * terms are the smaller. Nothing overflows before the result does: p, q_i >= 0. */
static inline double FX_NAME(fx_dense_grad_one)(double e, double q, double a, double b,
                                                double p, double rest_frac)
{
    double plain = a * e - b * q;
    double near_one = b * ((p - q) - p * rest_frac);
    return e == 1.0 && rest_frac < 0.5 ? near_one : plain;
}

/* ---------------------------------------------------------------------------------------
 * Logit softcap (v = s tanh(x / s)): see the z-loss/softcap section of _kernels_c.pyx.
 * tanh(u) = sign(u) (1 - e) / (1 + e) and 1 - tanh^2(u) = 4 e / (1 + e)^2 with e = exp(-2|u|):
 * one exp and one reciprocal per element for both, vectorisable. 1 - e is taken as -expm1(-2|u|)
 * from the exp's own polynomial (FX_EXP_EM1_NEG): for |u| far below 1 (a softcap far above the
 * logits) 1 - e would cancel, and with it every digit of tanh(u) ~ u. The exp is the type's
 * (the float32-grade one for float data, relative error below 2e-8 on e and e - 1, so on v; the
 * double one for double data), and so is exp(v - m) (fx_exp_shifted).
 * --------------------------------------------------------------------------------------- */

/* s tanh(x / s) (pre and inv_s from fx_cap_prescale(s); NaN stays NaN, +-inf gives +-s), and
 * 1 - tanh^2(x / s) into *slope when slope is not NULL */
static inline double FX_NAME(fx_cap)(double x, double s, double pre, double inv_s, double *slope)
{
    double u = (x * pre) * inv_s;
    double em1, e = FX_EXP_EM1_NEG(-2.0 * fabs(u), &em1);
    double inv = fx_recip_1_2(1.0 + e);
    if (slope != NULL) *slope = (4.0 * e) * (inv * inv);
    return u == u ? copysign(s * (-em1 * inv), u) : u;
}

/* fx_cap for one value (the scalar loops of _kernels_c.pyx) */
static inline double FX_NAME(fx_cap_one)(double x, double s, double *slope)
{
    double inv_s, pre = fx_cap_prescale(s, &inv_s);
    return FX_NAME(fx_cap)(x, s, pre, inv_s, slope);
}

/* One block of FX_LANES elements of fx_row_cap_exp_sum: acc += exp(cap(x) - m) for x != m_raw,
 * count the x == m_raw */
static inline void FX_NAME(fx_cap_exp_sum_block)(const FX_T *x, double s, double pre,
                                                 double inv_s, double m_raw, double m,
                                                 double *acc, double *count)
{
    int j;
    for (j = 0; j < FX_LANES; j++) {
        double e = FX_NAME(fx_exp_shifted)(FX_NAME(fx_cap)((double)x[j], s, pre, inv_s, NULL), m);
        int at_max = (double)x[j] == m_raw;
        acc[j] += at_max ? 0.0 : e;
        count[j] += at_max ? 1.0 : 0.0;
    }
}

/* One element of fx_row_cap_grad */
static inline FX_T FX_NAME(fx_cap_grad_one)(FX_T x, double s, double pre, double inv_s, double m,
                                            double a, double b, double q)
{
    double slope;
    double v = FX_NAME(fx_cap)((double)x, s, pre, inv_s, &slope);
    return (FX_T)((a * FX_NAME(fx_exp_shifted)(v, m) - b * q) * slope);
}
