/*
 * Note [streamed gradient]: a gradient row that is written once and not read again before the
 * kernel ends is best written with non-temporal stores, which skip the read for ownership that
 * an ordinary store of a line not in cache costs (a third of a fused pass's memory traffic:
 * read x, read g for ownership, write g). So for long rows of a gradient larger than the cache
 * (the conditions are _kernels_c.pyx's, the threshold measured), exp(x - m) goes to a per-thread
 * scratch row that stays in L1 or L2, and the scaled gradient is streamed from it to g. Measured
 * (AVX-512, 1 and 2 threads): fused float32 rows of 8192 to 128256 classes 7% to 30% faster; rows
 * of 1000 classes no faster (their passes are compute-bound), so they keep ordinary stores.
 *
 * Included by _loops_template.h for the AVX2 and AVX-512 loops: fx_stream_scale_block stores
 * g[0..FX_STREAM_STEP) = (FX_T)(e * factor) to a g aligned to the vector size, with the bits of
 * fx_row_scale (a double product, rounded once to FX_T).
 */
#if FX_ISA_LEVEL == FX_ISA_AVX512
#define FX_STREAM_ALIGN 64
#if FX_IS_FLOAT
#define FX_STREAM_STEP 16
static inline void FX_LNAME(fx_stream_scale_block)(const float *e, float *g, double factor)
{
    __m512d f = _mm512_set1_pd(factor);
    __m512 v = _mm512_loadu_ps(e);
    __m512d lo = _mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), f);
    __m512d hi = _mm512_mul_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), f);
    _mm512_stream_ps(g, _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)),
                                           _mm512_cvtpd_ps(hi), 1));
}
#else
#define FX_STREAM_STEP 8
static inline void FX_LNAME(fx_stream_scale_block)(const double *e, double *g, double factor)
{
    _mm512_stream_pd(g, _mm512_mul_pd(_mm512_loadu_pd(e), _mm512_set1_pd(factor)));
}
#endif
#elif FX_ISA_LEVEL == FX_ISA_AVX2
#define FX_STREAM_ALIGN 32
#if FX_IS_FLOAT
#define FX_STREAM_STEP 8
static inline void FX_LNAME(fx_stream_scale_block)(const float *e, float *g, double factor)
{
    __m256d f = _mm256_set1_pd(factor);
    __m256 v = _mm256_loadu_ps(e);
    __m256d lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), f);
    __m256d hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), f);
    _mm256_stream_ps(g, _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)));
}
#else
#define FX_STREAM_STEP 4
static inline void FX_LNAME(fx_stream_scale_block)(const double *e, double *g, double factor)
{
    _mm256_stream_pd(g, _mm256_mul_pd(_mm256_loadu_pd(e), _mm256_set1_pd(factor)));
}
#endif
#endif
