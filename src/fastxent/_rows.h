/*
 * fastxent's inner loops over one contiguous row of logits, in C so that the compiler can
 * vectorise them and so that GCC and clang can compile them for AVX2 and AVX-512 beside the
 * baseline, one chosen at run time. The build stays portable: no -march=native, no -ffast-math.
 *
 * Every reduction keeps FX_LANES partial results in an array and combines them in a fixed
 * order at the end: the compiler vectorises the lanes without being allowed to reassociate,
 * and the result has the same bits for any thread count (and any ISA, up to FMA
 * contraction, which GCC applies where the CPU has FMA).
 *
 * The elementary functions are in _math.h; for each float type (_type_kernels.h), the
 * per-element formulas in _elements_template.h, the loops in _loops_template.h, the rows and
 * tiles in _rows_template.h, whose row and tile functions _kernels_c.pyx calls.
 */
#ifndef FASTXENT_ROWS_H
#define FASTXENT_ROWS_H

#include <math.h>
#include <stddef.h>

#if !defined(__GNUC__)
#define __builtin_prefetch(...) ((void)0)
#endif

/* Run-time dispatch. The vector loops (_loops_template.h) are compiled once per instruction
 * set: AVX-512 (x86-64-v4), AVX2 with FMA (x86-64-v3) and the baseline of the build; the rows
 * call those of fx_isa, chosen once at import by fx_select_isa (the best the CPU has, or lower
 * when the FASTXENT_MAX_ISA environment variable says so). The ISA is given per function (GCC's
 * target pragma, clang's attribute pragma), so no loader support is needed (IFUNC is not:
 * musl and macOS dispatch too). MSVC, other compilers and other architectures build the
 * baseline only. */
#define FX_ISA_BASELINE 0
#define FX_ISA_AVX2 1
#define FX_ISA_AVX512 2
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(FASTXENT_NO_DISPATCH) && (!defined(__clang__) || __clang_major__ >= 9)
#define FX_DISPATCH 1
#include <immintrin.h>
#else
#define FX_DISPATCH 0
#endif

static int fx_isa = FX_ISA_BASELINE;

/* FX_TARGET_BEGIN(gcc_target, clang_target) ... FX_TARGET_END: the functions between are
 * compiled for that target (GCC's target pragma, clang's attribute pragma) */
#define FX_PRAGMA(text) _Pragma(#text)
#if defined(__clang__)
#define FX_TARGET_BEGIN(gcc_target, clang_target)                                             \
    FX_PRAGMA(clang attribute push(__attribute__((target(clang_target))), apply_to = function))
#define FX_TARGET_END FX_PRAGMA(clang attribute pop)
#else
#define FX_TARGET_BEGIN(gcc_target, clang_target)                                             \
    FX_PRAGMA(GCC push_options) FX_PRAGMA(GCC target(gcc_target))
#define FX_TARGET_END FX_PRAGMA(GCC pop_options)
#endif

/* The best ISA this CPU (and its operating system, which must save the vector registers: the
 * compilers' cpu_supports checks XCR0) can run, as FX_ISA_*. x86-64-v3's F16C, LZCNT and MOVBE
 * are not asked (clang 14 cannot): every CPU with AVX2, FMA and BMI2 has them. */
static int fx_cpu_isa(void)
{
#if FX_DISPATCH
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
          __builtin_cpu_supports("popcnt")))
        return FX_ISA_BASELINE;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd"))
        return FX_ISA_AVX512;
    return FX_ISA_AVX2;
#else
    return FX_ISA_BASELINE;
#endif
}

/* Select the best ISA the CPU has, at most max_isa; returns it */
static int fx_select_isa(int max_isa)
{
    int cpu = fx_cpu_isa();
    fx_isa = cpu < max_isa ? cpu : max_isa;
    return fx_isa;
}

/* the loop `base` of the current type, for the ISA in use */
#if FX_DISPATCH
#define FX_LOOP(base)                                                                        \
    (fx_isa == FX_ISA_AVX512 ? FX_NAME2(FX_NAME(base), avx512)                               \
     : fx_isa == FX_ISA_AVX2 ? FX_NAME2(FX_NAME(base), avx2)                                 \
                             : FX_NAME2(FX_NAME(base), baseline))
#else
#define FX_LOOP(base) FX_NAME2(FX_NAME(base), baseline)
#endif
#define FX_LNAME(base) FX_NAME2(FX_NAME(base), FX_ISA_SUFFIX)

/* Note [strided bits]: GCC contracts multiplies and adds into FMAs across statements
 * (-ffp-contract=fast) after inlining, so where it does depends on the context a function is
 * inlined into: a function that must compute the same bits for every caller is kept out of
 * line. clang contracts within one expression only (-ffp-contract=on), the same in every
 * context; MSVC does not contract. */
#if defined(__GNUC__) && !defined(__clang__)
#define FX_SAME_BITS_FOR_EVERY_CALLER __attribute__((noinline))
#else
#define FX_SAME_BITS_FOR_EVERY_CALLER
#endif

#define FX_LANES 16     /* partial sums per reduction */
#define FX_SUM_BLOCK 32 /* terms a lane sums before adding them to an outer partial sum */
#define FX_MAX_LANES 64 /* partial maxima: several vectors in flight hide the latency */
/* bytes of x (and gradient) row up to which the next row is prefetched: the current and the
 * next rows of both must sit in L2 together */
#define FX_PREFETCH_MAX_ROW (256 * 1024)
#define FX_TILE 16      /* rows of a tile (fx_tile_stats) */
#define FX_TILE_MAX_C 32 /* classes a tile can hold */
#define FX_IGNORED (-1)    /* a tile's class index of an ignored label */
#define FX_BAD_LABEL (-2)  /* ... and of a label outside [0, C) */

#include "_math.h"

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

/* The sum of hi[] + lo[] + extra: hi combined pairwise as fx_combine, the rounding error of each
 * addition kept (TwoSum) and added to the low parts at the end */
static inline double fx_combine_compensated(const double *hi, const double *lo, double extra)
{
    double a[FX_LANES], c = fx_combine(lo);
    int n, i;
    for (i = 0; i < FX_LANES; i++) a[i] = hi[i];
    for (n = FX_LANES / 2; n >= 1; n /= 2)
        for (i = 0; i < n; i++) a[i] = fx_two_sum(a[i], a[i + n], &c);
    return a[0] + (c + extra);
}

#define FX_NAME_(base, suffix) base##_##suffix
#define FX_NAME2(base, suffix) FX_NAME_(base, suffix)

/* Note [compensated exp sums]: the exp sums of double data keep the rounding error of every
 * addition (TwoSum) and add it at the end, so that s_rest is within about half an ulp plus the
 * terms' own error. A loss near s_rest (a label at the maximum) can lie in the binade below
 * s_rest, where each ulp of s_rest is two of the loss: running sums of 9 terms were 4.2 ulp
 * off. For float data the double sums are 2^29 times finer than the result: summed plainly. */
#define FX_T float
#define FX_SUFFIX f32
#define FX_COMPENSATED 0
#define FX_IS_FLOAT 1
#define FX_NAME(base) FX_NAME2(base, FX_SUFFIX)
#define FX_EXP_EM1_NEG(d, em1) fx_exp_em1_neg_f32((d), (em1))
#include "_type_kernels.h"
#undef FX_T
#undef FX_SUFFIX
#undef FX_COMPENSATED
#undef FX_IS_FLOAT
#undef FX_EXP_EM1_NEG

#define FX_T double
#define FX_SUFFIX f64
#define FX_COMPENSATED 1
#define FX_IS_FLOAT 0
#define FX_EXP_EM1_NEG(d, em1) fx_exp_em1_neg_f64((d), 0.0, (em1))
#include "_type_kernels.h"
#undef FX_T
#undef FX_SUFFIX
#undef FX_COMPENSATED
#undef FX_IS_FLOAT
#undef FX_EXP_EM1_NEG
#undef FX_NAME

#endif /* FASTXENT_ROWS_H */
