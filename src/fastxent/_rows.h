/*
 * fastxent's inner loops over one contiguous row of logits, in C so that the compiler can
 * vectorise them and so that GCC and clang can clone them for AVX2 and AVX-512 with run-time
 * dispatch (target_clones). The baseline build stays portable: no -march=native, no -ffast-math.
 *
 * Every reduction keeps FX_LANES partial results in an array and combines them in a fixed
 * order at the end: the compiler vectorises the lanes without being allowed to reassociate,
 * and the result has the same bits for any thread count (and any clone, up to FMA
 * contraction, which GCC applies where the CPU has FMA).
 *
 * Called from _kernels_c.pyx, which keeps the strided (non-contiguous) paths.
 */
#ifndef FASTXENT_ROWS_H
#define FASTXENT_ROWS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !defined(__GNUC__)
#define __builtin_prefetch(...) ((void)0)
#endif

/* Run-time dispatch: target_clones resolves through an IFUNC, which glibc's loader runs and
 * musl's does not (musl defines no macro of its own: __GLIBC__, set by <math.h> above through
 * <features.h>, is the test; setup.py also defines FASTXENT_NO_CLONES for musl targets).
 * GCC takes x86-64 levels; clang (14 and later) gets feature names: it compiles "arch=x86-64-v4"
 * into a test of the CPU's vendor, never of its features. */
#if defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && !defined(FASTXENT_NO_CLONES)
#if defined(__clang__) && __clang_major__ >= 14
#define FX_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#elif defined(__GNUC__) && !defined(__clang__)
#define FX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef FX_CLONES
#define FX_CLONES
#endif

#define FX_LANES 16     /* partial sums per reduction */
#define FX_SUM_BLOCK 32 /* terms a lane sums before adding them to an outer partial sum */
#define FX_MAX_LANES 64 /* partial maxima: several vectors in flight hide the latency */
/* bytes of x (and gradient) row up to which the next row is prefetched: the current and the
 * next rows of both must sit in L2 together */
#define FX_PREFETCH_MAX_ROW (256 * 1024)
#define FX_TILE 16      /* rows of a tile (fx_tile_stats) */
#define FX_TILE_MAX_C 32 /* classes a tile can hold */

/* ---------------------------------------------------------------------------------------
 * exp(d) for d <= 0 (or NaN), vectorisable: d = k ln2 + r with |r| <= ln2 / 2, exp(r) by a
 * Taylor polynomial in Horner form, 2^k built from exponent bits. Every operation is done
 * unconditionally and the special cases are selected at the end, so that the compiler can
 * vectorise it (with -fno-trapping-math) even without AVX-512 masks.
 *  - fx_exp_neg_f64: degree 13 (truncation below 5e-18 relative; measured <= 1.7 ulp), and
 *    2^k in two halves so that subnormal results are right too; takes a low-order correction
 *    of its argument (see fx_exp_shifted_f64).
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

/* (exp(r) - 1) / r for |r| <= ln2 / 2: the Taylor polynomial of exp without its constant term,
 * so that exp(r) = P r + 1 (the last Horner step, one FMA where there is one) and exp(r) - 1 =
 * P r, which has a small relative error however small r is (where 1 - exp(r) cancels) */
static inline double fx_exp_poly_f64(double r)
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
    p = p * r + 0.5;
    return p * r + 1.0;
}

/* exp(d + lo), where lo is a correction far below an ulp of d; and, when em1 is not NULL,
 * exp(d + lo) - 1 = 2^k P r + (2^k - 1) into *em1 (d not NaN): P r itself when k = 0 */
static inline double fx_exp_em1_neg_f64(double d, double lo, double *em1)
{
    double t = d >= FX_EXP_MIN ? d : FX_EXP_MIN; /* NaN and -inf are fixed up at the end */
    double r, shifted = fx_exp_reduce(t, &r), kf = shifted - FX_SHIFTER;
    r += lo;
    double poly = fx_exp_poly_f64(r);
    /* 2^k = 2^k1 * 2^k2 with k1 = round(k / 2): both halves are normal for k >= -1075 */
    double k1 = (kf * 0.5 + FX_SHIFTER) - FX_SHIFTER;
    double h1 = fx_pow2_from_shifted(k1 + FX_SHIFTER);
    double h2 = fx_pow2_from_shifted((kf - k1) + FX_SHIFTER);
    double result;
    if (em1 == NULL) {
        result = ((poly * r + 1.0) * h1) * h2;
    } else { /* P r is needed alone: h1 (P r) + h1 is h1 (1 + P r), one FMA */
        double q = poly * r, p2k = h1 * h2; /* p2k: 0 below 2^-1074, where expm1 is -1 */
        result = (h1 * q + h1) * h2;
        *em1 = p2k * q + (p2k - 1.0);
    }
    result = d >= FX_EXP_MIN ? result : 0.0;
    return d == d ? result : d;
}

static inline double fx_exp_neg_f64(double d, double lo) { return fx_exp_em1_neg_f64(d, lo, NULL); }

/* fx_exp_poly_f64 for float32 data: degree 7 */
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

/* fx_exp_em1_neg_f64 for float32 data (no lo; results below 2^-1022 flushed to 0) */
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
static inline double fx_exp_shifted_f32(float x, double m) { return fx_exp_neg_f32((double)x - m); }

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

/* ---------------------------------------------------------------------------------------
 * Row kernels, generated for float and double from _rows_template.h.
 * --------------------------------------------------------------------------------------- */

/* Combine lane partial sums in a fixed (pairwise) order. */
static inline double fx_combine(const double *lanes)
{
    double a[FX_LANES];
    int n, i;
    for (i = 0; i < FX_LANES; i++) a[i] = lanes[i];
    for (n = FX_LANES / 2; n >= 1; n /= 2)
        for (i = 0; i < n; i++) a[i] = a[i] + a[i + n];
    return a[0];
}

#define FX_NAME_(base, suffix) base##_##suffix
#define FX_NAME2(base, suffix) FX_NAME_(base, suffix)

#define FX_T float
#define FX_SUFFIX f32
#define FX_NAME(base) FX_NAME2(base, FX_SUFFIX)
#define FX_EXP_NEG(d) fx_exp_neg_f32(d)
#define FX_EXP_EM1_NEG(d, em1) fx_exp_em1_neg_f32((d), (em1))
#define FX_EXP_SHIFTED(v, m) fx_exp_neg_f32((v) - (m))
#include "_rows_template.h"
#undef FX_T
#undef FX_SUFFIX
#undef FX_EXP_NEG
#undef FX_EXP_EM1_NEG
#undef FX_EXP_SHIFTED

#define FX_T double
#define FX_SUFFIX f64
#define FX_EXP_NEG(d) fx_exp_neg_f64((d), 0.0)
#define FX_EXP_EM1_NEG(d, em1) fx_exp_em1_neg_f64((d), 0.0, (em1))
#define FX_EXP_SHIFTED(v, m) fx_exp_shifted_f64((v), (m))
#include "_rows_template.h"
#undef FX_T
#undef FX_SUFFIX
#undef FX_EXP_NEG
#undef FX_EXP_EM1_NEG
#undef FX_EXP_SHIFTED
#undef FX_NAME

#endif /* FASTXENT_ROWS_H */
