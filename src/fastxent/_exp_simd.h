/*
 * The exp sums of float32 rows in float lanes (16 per AVX-512 vector, 8 per AVX2 one), for
 * _loops_template.h: fx_exp_sum_span_f32_avx512 and _avx2, with the contract of the portable
 * fx_exp_sum_span (which the baseline runs), and the tiles' fx_tile_exp_sums_f32_avx512 and
 * _avx2 (16 rows across the lanes). Included inside the ISA's target region, for float data
 * only.
 *
 * Note [f32 exp in float lanes]: each term e = exp(x - m) is computed in float arithmetic to
 * within 0.6 * 2^-24 of its value (the float32 loss bound, 0.5 ulp + 2^24 times the terms'
 * relative error, stays below 1.1 ulp), and is never rounded to float before it is summed:
 *  - d = x - m exactly, as d_hi + d_lo (TwoSum). A block with a d_hi below -87 (or NaN) goes
 *    through the double exp of the portable loop instead: above it 2^k is a normal float.
 *  - k = round(d_hi / ln 2); r = d_hi - k LN2_HI is exact (one FMA: both are multiples of 2^-25
 *    and |r| < 1/2), and c = d_lo - k LN2_LO (|c| < 4.2e-6) is carried: exp(d) =
 *    2^k e^r (1 + c), to within c^2 / 2 < 1.5e-4 * 2^-24.
 *  - e^r = 1 + r + p with p = r^2 Q(r) (Q the Taylor polynomial of (e^r - 1 - r) / r^2 to
 *    degree 6: truncation below 1e-3 * 2^-24); with y = r + p, exp(d) / 2^k = (1 + r) +
 *    (p + c (1 + y)). 1 + r is split exactly (s + s_err, Fast2Sum), v = s_err + tail rounds once
 *    (|v| < 0.07), and s + v is split exactly into h + l (Fast2Sum). p is within 3.2 * 2^-24 of
 *    its value (relative; |p| < 0.068), the two roundings of tail and v within 0.07 * 2^-24 each,
 *    so h + l is within 0.41 * 2^-24 of e^r (1 + c) >= 0.707: 0.58 * 2^-24 relative.
 *  - 2^k h (a float times a normal power of two: exact) is summed in double; 2^64 2^k l in a
 *    float sum per lane (its terms are below 2^-24 of h's: the float rounding of their sum is
 *    far below 2^-48 of the row's sum), and added to the double sums, times 2^-64, at the end
 *    of the span. The 2^64 keeps 2^k l normal (no subnormal slowdown, no lost bits).
 * The gradient's e is 2^k h, the term rounded once more (to float), as the output is.
 * Measured: at most 0.127 * 2^-24 on 2e7 random terms (docs/numerics.md).
 */
#define FX_F32_LOG2E 1.44269502f
#define FX_F32_SHIFTER 12582912.0f           /* 1.5 * 2^23: adding it rounds to an integer */
#define FX_F32_LN2_HI 0.693147182464599609375f /* ln 2 rounded to float */
#define FX_F32_LN2_LO (-1.904654323148236e-09f) /* ln 2 - FX_F32_LN2_HI */
#define FX_F32_FAST_MIN (-87.0f)             /* d_hi below: the portable block */

#if FX_ISA_LEVEL == FX_ISA_AVX512
/* 2^k h and 2^(k + 64) l (Note [f32 exp in float lanes]) of 16 terms with d_hi >= -87 */
static inline void fx_exp_terms_avx512(__m512 d_hi, __m512 d_lo, __m512 *h_out, __m512 *l_out)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 shifted = _mm512_fmadd_ps(d_hi, _mm512_set1_ps(FX_F32_LOG2E),
                                     _mm512_set1_ps(FX_F32_SHIFTER));
    __m512 kf = _mm512_sub_ps(shifted, _mm512_set1_ps(FX_F32_SHIFTER));
    __m512 r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(FX_F32_LN2_HI), d_hi);
    __m512 c = _mm512_fnmadd_ps(kf, _mm512_set1_ps(FX_F32_LN2_LO), d_lo);
    __m512 q = _mm512_set1_ps(1.0f / 40320.0f);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 5040.0f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 720.0f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 120.0f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 24.0f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 6.0f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.5f));
    __m512 p = _mm512_mul_ps(_mm512_mul_ps(r, r), q);
    __m512 y = _mm512_add_ps(r, p);
    __m512 tail = _mm512_add_ps(p, _mm512_fmadd_ps(c, y, c));
    __m512 s = _mm512_add_ps(one, r);
    __m512 s_err = _mm512_add_ps(_mm512_sub_ps(one, s), r);
    __m512 v = _mm512_add_ps(s_err, tail);
    __m512 h = _mm512_add_ps(s, v);
    __m512 l = _mm512_sub_ps(v, _mm512_sub_ps(h, s));
    /* 2^k from k + FX_F32_SHIFTER: its bits are bits(1.5 * 2^23) + k, and << 23 drops the
     * constant */
    __m512i bits = _mm512_castps_si512(shifted);
    __m512 p2k = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_add_epi32(bits, _mm512_set1_epi32(127)), 23));
    *h_out = _mm512_mul_ps(h, p2k);
    *l_out = _mm512_mul_ps(l, _mm512_mul_ps(p2k, _mm512_set1_ps(0x1p64f)));
}

FX_SAME_BITS_FOR_EVERY_CALLER static void FX_LNAME(fx_exp_sum_span)(
    const float *x, ptrdiff_t n, double m, float *e, double *acc_io, double *comp_io,
    double *count_io, const char *pf_x, char *pf_e)
{
    const __m512 mf = _mm512_set1_ps((float)m), neg_m = _mm512_set1_ps(-(float)m);
    const __m512 ones = _mm512_set1_ps(1.0f), fast_min = _mm512_set1_ps(FX_F32_FAST_MIN);
    __m512d acc0 = _mm512_loadu_pd(acc_io), acc1 = _mm512_loadu_pd(acc_io + 8);
    __m512 l_sum = _mm512_setzero_ps(), count = _mm512_setzero_ps();
    float l_lanes[FX_LANES], count_lanes[FX_LANES];
    ptrdiff_t i;
    int j;
    (void)comp_io;
    for (i = 0; i < n; i += FX_LANES) {
        __m512 xv, d_hi, h, counted;
        __mmask16 at_max;
        if (pf_x != NULL) { /* as in the portable loop */
            __builtin_prefetch(pf_x + i * (ptrdiff_t)sizeof(float), 0, 2);
            if (pf_e != NULL) __builtin_prefetch(pf_e + i * (ptrdiff_t)sizeof(float), 1, 2);
        }
        xv = _mm512_loadu_ps(x + i);
        at_max = _mm512_cmp_ps_mask(xv, mf, _CMP_EQ_OQ);
        d_hi = _mm512_sub_ps(xv, mf);
        if (_mm512_cmp_ps_mask(d_hi, fast_min, _CMP_NGE_UQ) == 0) {
            __m512 b_part = _mm512_sub_ps(d_hi, xv); /* TwoSum(x, -m) */
            __m512 d_lo = _mm512_add_ps(_mm512_sub_ps(xv, _mm512_sub_ps(d_hi, b_part)),
                                        _mm512_sub_ps(neg_m, b_part));
            __m512 l;
            fx_exp_terms_avx512(d_hi, d_lo, &h, &l);
            l_sum = _mm512_add_ps(l_sum, l);
            counted = _mm512_maskz_mov_ps((__mmask16)~at_max, h); /* the maxima's 1 is not */
            acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(counted)));
            acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(counted, 1)));
        } else { /* a term below 2^-125, -inf or NaN: the double exp */
            double v[FX_LANES];
            for (j = 0; j < FX_LANES; j++)
                v[j] = (double)x[i + j] == m ? 0.0 : fx_exp_shifted_f32(x[i + j], m);
            acc0 = _mm512_add_pd(acc0, _mm512_loadu_pd(v));
            acc1 = _mm512_add_pd(acc1, _mm512_loadu_pd(v + 8));
            h = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_loadu_pd(v))),
                                   _mm512_cvtpd_ps(_mm512_loadu_pd(v + 8)), 1);
            h = _mm512_mask_mov_ps(h, at_max, ones); /* the maxima's terms are 1 */
        }
        count = _mm512_mask_add_ps(count, at_max, count, ones);
        if (e != NULL) _mm512_storeu_ps(e + i, h);
    }
    _mm512_storeu_pd(acc_io, acc0);
    _mm512_storeu_pd(acc_io + 8, acc1);
    _mm512_storeu_ps(l_lanes, l_sum);
    _mm512_storeu_ps(count_lanes, count);
    for (j = 0; j < FX_LANES; j++) {
        acc_io[j] += (double)l_lanes[j] * 0x1p-64;
        count_io[j] += count_lanes[j];
    }
}
/* fx_tile_stats' exp sums in float lanes, 16 rows per vector: for each class c < n_classes,
 * acc[r] += exp(xt[c][r] - mt[r]) where xt[c][r] != mt[r], count[r] += (xt[c][r] == mt[r]), and
 * et[c][r] = exp(xt[c][r] - mt[r]) rounded to float; acc and count as the span's */
static void FX_LNAME(fx_tile_exp_sums)(const float (*xt)[FX_TILE], ptrdiff_t n_classes,
                                       const float *mt, double *acc, double *count,
                                       float (*et)[FX_TILE])
{
    const __m512 mf = _mm512_loadu_ps(mt), neg_m = _mm512_sub_ps(_mm512_setzero_ps(), mf);
    const __m512 ones = _mm512_set1_ps(1.0f), fast_min = _mm512_set1_ps(FX_F32_FAST_MIN);
    __m512d acc0 = _mm512_loadu_pd(acc), acc1 = _mm512_loadu_pd(acc + 8);
    __m512 l_sum = _mm512_setzero_ps(), cnt = _mm512_setzero_ps();
    float l_lanes[FX_TILE], count_lanes[FX_TILE];
    ptrdiff_t c;
    int r;
    for (c = 0; c < n_classes; c++) {
        __m512 xv = _mm512_loadu_ps(xt[c]), d_hi = _mm512_sub_ps(xv, mf), h, counted;
        __mmask16 at_max = _mm512_cmp_ps_mask(xv, mf, _CMP_EQ_OQ);
        if (_mm512_cmp_ps_mask(d_hi, fast_min, _CMP_NGE_UQ) == 0) {
            __m512 b_part = _mm512_sub_ps(d_hi, xv); /* TwoSum(x, -m) */
            __m512 d_lo = _mm512_add_ps(_mm512_sub_ps(xv, _mm512_sub_ps(d_hi, b_part)),
                                        _mm512_sub_ps(neg_m, b_part));
            __m512 l;
            fx_exp_terms_avx512(d_hi, d_lo, &h, &l);
            l_sum = _mm512_add_ps(l_sum, l);
            counted = _mm512_maskz_mov_ps((__mmask16)~at_max, h);
            acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(counted)));
            acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(counted, 1)));
        } else { /* a term below 2^-125, -inf or NaN: the double exp */
            double v[FX_TILE];
            for (r = 0; r < FX_TILE; r++)
                v[r] = (double)xt[c][r] == (double)mt[r]
                           ? 0.0 : fx_exp_shifted_f32(xt[c][r], mt[r]);
            acc0 = _mm512_add_pd(acc0, _mm512_loadu_pd(v));
            acc1 = _mm512_add_pd(acc1, _mm512_loadu_pd(v + 8));
            h = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_loadu_pd(v))),
                                   _mm512_cvtpd_ps(_mm512_loadu_pd(v + 8)), 1);
            h = _mm512_mask_mov_ps(h, at_max, ones);
        }
        cnt = _mm512_mask_add_ps(cnt, at_max, cnt, ones);
        _mm512_storeu_ps(et[c], h);
    }
    _mm512_storeu_pd(acc, acc0);
    _mm512_storeu_pd(acc + 8, acc1);
    _mm512_storeu_ps(l_lanes, l_sum);
    _mm512_storeu_ps(count_lanes, cnt);
    for (r = 0; r < FX_TILE; r++) {
        acc[r] += (double)l_lanes[r] * 0x1p-64;
        count[r] += count_lanes[r];
    }
}
#endif

#if FX_ISA_LEVEL == FX_ISA_AVX2
/* fx_exp_terms_avx512 for 8 terms */
static inline void fx_exp_terms_avx2(__m256 d_hi, __m256 d_lo, __m256 *h_out, __m256 *l_out)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 shifted = _mm256_fmadd_ps(d_hi, _mm256_set1_ps(FX_F32_LOG2E),
                                     _mm256_set1_ps(FX_F32_SHIFTER));
    __m256 kf = _mm256_sub_ps(shifted, _mm256_set1_ps(FX_F32_SHIFTER));
    __m256 r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(FX_F32_LN2_HI), d_hi);
    __m256 c = _mm256_fnmadd_ps(kf, _mm256_set1_ps(FX_F32_LN2_LO), d_lo);
    __m256 q = _mm256_set1_ps(1.0f / 40320.0f);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 5040.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 720.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 120.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 24.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 6.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.5f));
    __m256 p = _mm256_mul_ps(_mm256_mul_ps(r, r), q);
    __m256 y = _mm256_add_ps(r, p);
    __m256 tail = _mm256_add_ps(p, _mm256_fmadd_ps(c, y, c));
    __m256 s = _mm256_add_ps(one, r);
    __m256 s_err = _mm256_add_ps(_mm256_sub_ps(one, s), r);
    __m256 v = _mm256_add_ps(s_err, tail);
    __m256 h = _mm256_add_ps(s, v);
    __m256 l = _mm256_sub_ps(v, _mm256_sub_ps(h, s));
    __m256i bits = _mm256_castps_si256(shifted);
    __m256 p2k = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(bits, _mm256_set1_epi32(127)), 23));
    *h_out = _mm256_mul_ps(h, p2k);
    *l_out = _mm256_mul_ps(l, _mm256_mul_ps(p2k, _mm256_set1_ps(0x1p64f)));
}

/* fx_exp_sum_span_f32_avx512 in two halves of 8 lanes: lanes 0-7 and 8-15 of a block */
FX_SAME_BITS_FOR_EVERY_CALLER static void FX_LNAME(fx_exp_sum_span)(
    const float *x, ptrdiff_t n, double m, float *e, double *acc_io, double *comp_io,
    double *count_io, const char *pf_x, char *pf_e)
{
    const __m256 mf = _mm256_set1_ps((float)m), neg_m = _mm256_set1_ps(-(float)m);
    const __m256 ones = _mm256_set1_ps(1.0f), fast_min = _mm256_set1_ps(FX_F32_FAST_MIN);
    __m256d acc[4];
    __m256 l_sum[2], count[2];
    float l_lanes[FX_LANES], count_lanes[FX_LANES];
    ptrdiff_t i;
    int j, half;
    (void)comp_io;
    for (j = 0; j < 4; j++) acc[j] = _mm256_loadu_pd(acc_io + 4 * j);
    for (half = 0; half < 2; half++) {
        l_sum[half] = _mm256_setzero_ps();
        count[half] = _mm256_setzero_ps();
    }
    for (i = 0; i < n; i += FX_LANES) {
        __m256 xv[2], d_hi[2], at_max[2], h[2];
        if (pf_x != NULL) { /* as in the portable loop */
            __builtin_prefetch(pf_x + i * (ptrdiff_t)sizeof(float), 0, 2);
            if (pf_e != NULL) __builtin_prefetch(pf_e + i * (ptrdiff_t)sizeof(float), 1, 2);
        }
        for (half = 0; half < 2; half++) {
            xv[half] = _mm256_loadu_ps(x + i + 8 * half);
            at_max[half] = _mm256_cmp_ps(xv[half], mf, _CMP_EQ_OQ);
            d_hi[half] = _mm256_sub_ps(xv[half], mf);
        }
        if (_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(d_hi[0], fast_min, _CMP_NGE_UQ),
                                            _mm256_cmp_ps(d_hi[1], fast_min, _CMP_NGE_UQ)))
            == 0) {
            for (half = 0; half < 2; half++) {
                __m256 b_part = _mm256_sub_ps(d_hi[half], xv[half]); /* TwoSum(x, -m) */
                __m256 d_lo = _mm256_add_ps(
                    _mm256_sub_ps(xv[half], _mm256_sub_ps(d_hi[half], b_part)),
                    _mm256_sub_ps(neg_m, b_part));
                __m256 l, counted;
                fx_exp_terms_avx2(d_hi[half], d_lo, &h[half], &l);
                l_sum[half] = _mm256_add_ps(l_sum[half], l);
                counted = _mm256_andnot_ps(at_max[half], h[half]);
                acc[2 * half] = _mm256_add_pd(acc[2 * half],
                                              _mm256_cvtps_pd(_mm256_castps256_ps128(counted)));
                acc[2 * half + 1] = _mm256_add_pd(
                    acc[2 * half + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(counted, 1)));
            }
        } else { /* a term below 2^-125, -inf or NaN: the double exp */
            double v[FX_LANES];
            for (j = 0; j < FX_LANES; j++)
                v[j] = (double)x[i + j] == m ? 0.0 : fx_exp_shifted_f32(x[i + j], m);
            for (j = 0; j < 4; j++) acc[j] = _mm256_add_pd(acc[j], _mm256_loadu_pd(v + 4 * j));
            for (half = 0; half < 2; half++)
                h[half] = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(v + 8 * half + 4)),
                                          _mm256_cvtpd_ps(_mm256_loadu_pd(v + 8 * half)));
            for (half = 0; half < 2; half++) /* the maxima's terms are 1 */
                h[half] = _mm256_blendv_ps(h[half], ones, at_max[half]);
        }
        for (half = 0; half < 2; half++) {
            count[half] = _mm256_add_ps(count[half], _mm256_and_ps(at_max[half], ones));
            if (e != NULL) _mm256_storeu_ps(e + i + 8 * half, h[half]);
        }
    }
    for (j = 0; j < 4; j++) _mm256_storeu_pd(acc_io + 4 * j, acc[j]);
    for (half = 0; half < 2; half++) {
        _mm256_storeu_ps(l_lanes + 8 * half, l_sum[half]);
        _mm256_storeu_ps(count_lanes + 8 * half, count[half]);
    }
    for (j = 0; j < FX_LANES; j++) {
        acc_io[j] += (double)l_lanes[j] * 0x1p-64;
        count_io[j] += count_lanes[j];
    }
}
/* fx_tile_exp_sums_f32_avx512 in two halves of 8 rows */
static void FX_LNAME(fx_tile_exp_sums)(const float (*xt)[FX_TILE], ptrdiff_t n_classes,
                                       const float *mt, double *acc, double *count,
                                       float (*et)[FX_TILE])
{
    const __m256 ones = _mm256_set1_ps(1.0f), fast_min = _mm256_set1_ps(FX_F32_FAST_MIN);
    float l_lanes[FX_TILE], count_lanes[FX_TILE];
    ptrdiff_t c;
    int r, half;
    for (half = 0; half < 2; half++) {
        const __m256 mf = _mm256_loadu_ps(mt + 8 * half);
        const __m256 neg_m = _mm256_sub_ps(_mm256_setzero_ps(), mf);
        __m256d acc_lo = _mm256_loadu_pd(acc + 8 * half);
        __m256d acc_hi = _mm256_loadu_pd(acc + 8 * half + 4);
        __m256 l_sum = _mm256_setzero_ps(), cnt = _mm256_setzero_ps();
        for (c = 0; c < n_classes; c++) {
            __m256 xv = _mm256_loadu_ps(xt[c] + 8 * half), d_hi = _mm256_sub_ps(xv, mf), h;
            __m256 at_max = _mm256_cmp_ps(xv, mf, _CMP_EQ_OQ);
            if (_mm256_movemask_ps(_mm256_cmp_ps(d_hi, fast_min, _CMP_NGE_UQ)) == 0) {
                __m256 b_part = _mm256_sub_ps(d_hi, xv); /* TwoSum(x, -m) */
                __m256 d_lo = _mm256_add_ps(_mm256_sub_ps(xv, _mm256_sub_ps(d_hi, b_part)),
                                            _mm256_sub_ps(neg_m, b_part));
                __m256 l, counted;
                fx_exp_terms_avx2(d_hi, d_lo, &h, &l);
                l_sum = _mm256_add_ps(l_sum, l);
                counted = _mm256_andnot_ps(at_max, h);
                acc_lo = _mm256_add_pd(acc_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(counted)));
                acc_hi = _mm256_add_pd(acc_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(counted, 1)));
            } else { /* a term below 2^-125, -inf or NaN: the double exp */
                double v[8];
                for (r = 0; r < 8; r++) {
                    float xr = xt[c][8 * half + r], mr = mt[8 * half + r];
                    v[r] = xr == mr ? 0.0 : fx_exp_shifted_f32(xr, mr);
                }
                acc_lo = _mm256_add_pd(acc_lo, _mm256_loadu_pd(v));
                acc_hi = _mm256_add_pd(acc_hi, _mm256_loadu_pd(v + 4));
                h = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(v + 4)),
                                    _mm256_cvtpd_ps(_mm256_loadu_pd(v)));
                h = _mm256_blendv_ps(h, ones, at_max);
            }
            cnt = _mm256_add_ps(cnt, _mm256_and_ps(at_max, ones));
            _mm256_storeu_ps(et[c] + 8 * half, h);
        }
        _mm256_storeu_pd(acc + 8 * half, acc_lo);
        _mm256_storeu_pd(acc + 8 * half + 4, acc_hi);
        _mm256_storeu_ps(l_lanes + 8 * half, l_sum);
        _mm256_storeu_ps(count_lanes + 8 * half, cnt);
    }
    for (r = 0; r < FX_TILE; r++) {
        acc[r] += (double)l_lanes[r] * 0x1p-64;
        count[r] += count_lanes[r];
    }
}
#endif
