/*
 * fastxent's elementary functions in double precision, written to vectorise (no branches, no
 * library calls): exp and exp - 1 of non-positive arguments, log1p of non-negative ones, a
 * reciprocal without division, TwoSum. The row loops of _rows.h are built on them.
 */
#ifndef FASTXENT_MATH_H
#define FASTXENT_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * exp(d) for d <= 0 (or NaN), vectorisable: d = k ln2 + r with |r| <= ln2 / 2, exp(r) by a
 * Taylor polynomial in Horner form, 2^k built from exponent bits. Every operation is done
 * unconditionally and the special cases are selected at the end, so that the compiler can
 * vectorise it (with -fno-trapping-math) even without AVX-512 masks.
 *  - fx_exp_neg_f64: degree 13 (truncation below 5e-18 relative), the reduced argument's
 *    rounding error carried and 1 + r kept exact (Note [f64 exp]: within 0.71 ulp), and 2^k in
 *    two halves so that subnormal results are right too; takes a low-order correction of its
 *    argument (see fx_exp_shifted_f64).
 *  - fx_exp_neg_f32: for float32 data, degree 7 (truncation 6e-9 relative, a tenth of a
 *    float32 ulp, still accumulated in double) and results below 2^-1022 flushed to 0: they
 *    are below anything a float32 result can hold, next to the 1 of the row maximum.
 *  - fx_exp_em1_neg_f64 / _f32: the same exp, and exp(d) - 1 beside it from the same
 *    polynomial (for softcap's tanh, where 1 - exp(d) would cancel for d near 0).
 * --------------------------------------------------------------------------------------- */
static inline double fx_bits_to_double(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
static inline uint64_t fx_double_to_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

#define FX_SHIFTER 6755399441055744.0 /* 1.5 * 2^52: adding it rounds to an integer */
#define FX_LOG2E 1.4426950408889634
#define FX_LN2_HI 0.693147180369123816490    /* 0x1.62e42fee00000p-1: k * LN2_HI is exact */
#define FX_LN2_LO 1.90821492927058770002e-10 /* 0x1.a39ef35793c76p-33 */
#define FX_EXP_MIN (-745.2)   /* exp(d) rounds to 0 below this */
#define FX_EXP_NORMAL (-708.3) /* exp(d) is a normal double above this */

/* 2^k from k + FX_SHIFTER: its bits are bits(1.5 * 2^52) + k, and << 52 drops the constant. */
static inline double fx_pow2_from_shifted(double shifted)
{
    return fx_bits_to_double((fx_double_to_bits(shifted) + 1023u) << 52);
}

/* k = round(t / ln 2) (returned plus FX_SHIFTER) and r = t - k ln 2, Cody-Waite */
static inline double fx_exp_reduce(double t, double *r)
{
    double shifted = t * FX_LOG2E + FX_SHIFTER;
    double kf = shifted - FX_SHIFTER;
    *r = (t - kf * FX_LN2_HI) - kf * FX_LN2_LO;
    return shifted;
}

/* (exp(r) - 1 - r) / r^2 for |r| <= ln2 / 2: the Taylor polynomial of exp from its quadratic
 * term on (truncated at r^13 / 13!, below 5e-18 relative), so that exp(r) = 1 + r + r^2 Q:
 * Note [f64 exp], below, adds the three parts without rounding 1 + r. */
static inline double fx_exp_quad_f64(double r)
{
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    return p * r + 0.5;
}

/* exp(d + lo), where lo is a correction far below an ulp of d; and, when em1 is not NULL,
 * exp(d + lo) - 1 = 2^k y + (2^k - 1) into *em1 (d not NaN), y = exp(r) - 1.
 *
 * Note [f64 exp]: within 0.71 ulp for normal results and 0.78 ulp for subnormal ones (the worst
 * of 5e7 random arguments in [-745, 0], with and without FMA), which the float64 loss bound rests
 * on. The reduction keeps its rounding error: r_hi = t - k ln2_hi is exact, r = r_hi + c rounds
 * (c = lo - k ln2_lo, below 2e-7), and r_err = (r_hi - r) + c is that rounding (Fast2Sum: exact
 * when |r_hi| >= |c|; otherwise |r| < 4e-7 and the error is far below an ulp of exp(r)).
 * exp(r + r_err) = 1 + r + (r^2 Q(r) + r_err), with 1 + r split exactly into s + s_err, so that
 * only the last addition rounds by more than a sixth of an ulp (a rounded r and 1 + r P(r) give
 * 1.7 ulp). 2^k is multiplied in two halves, exactly unless the result is subnormal. */
static inline double fx_exp_em1_neg_f64(double d, double lo, double *em1)
{
    double t = d >= FX_EXP_MIN ? d : FX_EXP_MIN; /* NaN and -inf are fixed up at the end */
    double shifted = t * FX_LOG2E + FX_SHIFTER, kf = shifted - FX_SHIFTER;
    double r_hi = t - kf * FX_LN2_HI;
    double c = lo - kf * FX_LN2_LO;
    double r = r_hi + c;
    double r_err = (r_hi - r) + c;
    double tail = (r * r) * fx_exp_quad_f64(r) + r_err; /* exp(r + r_err) - 1 - r */
    /* 2^k = 2^k1 * 2^k2 with k1 = round(k / 2): both halves are normal for k >= -1075 */
    double k1 = (kf * 0.5 + FX_SHIFTER) - FX_SHIFTER;
    double h1 = fx_pow2_from_shifted(k1 + FX_SHIFTER);
    double h2 = fx_pow2_from_shifted((kf - k1) + FX_SHIFTER);
    double result;
    if (em1 == NULL) {
        double s = 1.0 + r, s_err = (1.0 - s) + r; /* s + s_err = 1 + r exactly */
        result = ((s + (tail + s_err)) * h1) * h2;
    } else { /* y = exp(r) - 1 is needed alone: h1 y + h1 is h1 (1 + y), one FMA */
        double y = r + tail, p2k = h1 * h2; /* p2k: 0 below 2^-1074, where expm1 is -1 */
        result = (h1 * y + h1) * h2;
        *em1 = p2k * y + (p2k - 1.0);
    }
    result = d >= FX_EXP_MIN ? result : 0.0;
    return d == d ? result : d;
}

static inline double fx_exp_neg_f64(double d, double lo) { return fx_exp_em1_neg_f64(d, lo, NULL); }

/* (exp(r) - 1) / r for |r| <= ln2 / 2, for float32 data: degree 7, so that exp(r) = P r + 1
 * (the last Horner step, one FMA where there is one) and exp(r) - 1 = P r, which keeps a small
 * relative error however small r is (where 1 - exp(r) cancels) */
static inline double fx_exp_poly_f32(double r)
{
    double p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    return p * r + 1.0;
}

/* fx_exp_em1_neg_f64 for float32 data, with the plain reduction (its rounding error is far
 * below float32's precision; no lo; results below 2^-1022 flushed to 0) */
static inline double fx_exp_em1_neg_f32(double d, double *em1)
{
    double t = d >= FX_EXP_NORMAL ? d : FX_EXP_NORMAL;
    double r, shifted = fx_exp_reduce(t, &r);
    double poly = fx_exp_poly_f32(r), p2k = fx_pow2_from_shifted(shifted);
    double result;
    if (em1 == NULL) {
        result = (poly * r + 1.0) * p2k;
    } else { /* as in fx_exp_em1_neg_f64 */
        double q = poly * r;
        result = p2k * q + p2k;
        *em1 = p2k * q + (p2k - 1.0);
    }
    result = d >= FX_EXP_NORMAL ? result : 0.0;
    return d == d ? result : d;
}

static inline double fx_exp_neg_f32(double d) { return fx_exp_em1_neg_f32(d, NULL); }

/* exp(x - m) for x <= m, with the subtraction exact: for float data (double)x - m is exact;
 * for double data x - m is rounded, and exp turns an absolute error of half an ulp of 30 into
 * 16 ulps of relative error, so the rounding error of the subtraction (TwoSum) goes into the
 * reduced argument of exp. */
static inline double fx_exp_shifted_f32(double v, double m) { return fx_exp_neg_f32(v - m); }

static inline double fx_exp_shifted_f64(double x, double m)
{
    double d = x - m;
    double x_part = d + m;     /* TwoSum(x, -m): d + lo == x - m exactly */
    double m_part = x_part - d;
    double lo = (x - x_part) + (m_part - m);
    return fx_exp_neg_f64(d, lo);
}

/* log1p(s) for s >= 0 (NaN and +inf pass through), vectorisable: fdlibm's log, u = 1 + s =
 * 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)), log(1 + f) = f - hfsq + t (hfsq + R(t^2)),
 * plus the rounding error of 1 + s, (s - (u - 1)) / u. Below 1 ulp, like libm's. */
static inline double fx_log1p_pos(double s)
{
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                 Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                 Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                 Lg7 = 1.479819860511658591e-01;
    double u = 1.0 + s;
    double c = (s - (u - 1.0)) / u;
    /* shift the exponent boundary to sqrt(2)/2 (0x3fe6a09e...), as fdlibm and musl do */
    uint64_t bits = fx_double_to_bits(u) + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull);
    double k = fx_bits_to_double((bits >> 52) | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0);
    double f = fx_bits_to_double((bits & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull) - 1.0;
    double hfsq = 0.5 * f * f;
    double t = f / (2.0 + f);
    double z = t * t, w = z * z;
    double t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
    double t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
    double R = t2 + t1;
    double result = k * ln2_hi - ((hfsq - (t * (hfsq + R) + (k * ln2_lo + c))) - f);
    return s < INFINITY ? result : s;
}

/* 1 / a for a in [1, 2], without a double division (vdivpd has a quarter of the throughput of
 * vdivps): a float reciprocal refined by two Newton steps, to within an ulp or two of double. */
static inline double fx_recip_1_2(double a)
{
    double y = (double)(1.0f / (float)a);
    double r = 1.0 - a * y;
    y = y + y * r;
    r = 1.0 - a * y;
    return y + y * r;
}

/* Softcap's x / s as (x * pre) * inv_s (a multiplication, not a division, per element): pre is
 * 1 unless 1 / s would overflow (s below 2^-512), then 2^512, with inv_s = 1 / (s * pre). */
static inline double fx_cap_prescale(double s, double *inv_s)
{
    double pre = s < 0x1p-512 ? 0x1p512 : 1.0;
    *inv_s = 1.0 / (s * pre);
    return pre;
}

/* acc + v, with its rounding error added to *comp (TwoSum: exact whatever the magnitudes) */
static inline double fx_two_sum(double acc, double v, double *comp)
{
    double s = acc + v;
    double v_part = s - acc;
    double acc_part = s - v_part;
    *comp += (acc - acc_part) + (v - v_part);
    return s;
}

#endif /* FASTXENT_MATH_H */
