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

/* One vector of float lanes: 16 on AVX-512, 8 on AVX2; FX_V(op) names the ISA's intrinsic */
#if FX_ISA_LEVEL == FX_ISA_AVX512
#define fx_vf __m512
#define FX_V(op) _mm512_##op
#define FX_V_BITS(v) _mm512_castps_si512(v)
#define FX_V_FLOATS(v) _mm512_castsi512_ps(v)
#else
#define fx_vf __m256
#define FX_V(op) _mm256_##op
#define FX_V_BITS(v) _mm256_castps_si256(v)
#define FX_V_FLOATS(v) _mm256_castsi256_ps(v)
#endif

/* 2^k h and 2^64 2^k l (Note [f32 exp in float lanes]) of the terms exp(x - m), d_hi = x - m
 * rounded, every d_hi >= -87 */
static inline void FX_LNAME(fx_exp_terms)(fx_vf x, fx_vf neg_m, fx_vf d_hi, fx_vf *h_out,
                                          fx_vf *l_out)
{
    const fx_vf one = FX_V(set1_ps)(1.0f);
    fx_vf b_part = FX_V(sub_ps)(d_hi, x); /* TwoSum(x, -m): d_hi + d_lo = x - m exactly */
    fx_vf d_lo = FX_V(add_ps)(FX_V(sub_ps)(x, FX_V(sub_ps)(d_hi, b_part)),
                              FX_V(sub_ps)(neg_m, b_part));
    fx_vf shifted = FX_V(fmadd_ps)(d_hi, FX_V(set1_ps)(FX_F32_LOG2E),
                                   FX_V(set1_ps)(FX_F32_SHIFTER));
    fx_vf kf = FX_V(sub_ps)(shifted, FX_V(set1_ps)(FX_F32_SHIFTER));
    fx_vf r = FX_V(fnmadd_ps)(kf, FX_V(set1_ps)(FX_F32_LN2_HI), d_hi);
    fx_vf c = FX_V(fnmadd_ps)(kf, FX_V(set1_ps)(FX_F32_LN2_LO), d_lo);
    fx_vf q = FX_V(set1_ps)(1.0f / 40320.0f);
    q = FX_V(fmadd_ps)(q, r, FX_V(set1_ps)(1.0f / 5040.0f));
    q = FX_V(fmadd_ps)(q, r, FX_V(set1_ps)(1.0f / 720.0f));
    q = FX_V(fmadd_ps)(q, r, FX_V(set1_ps)(1.0f / 120.0f));
    q = FX_V(fmadd_ps)(q, r, FX_V(set1_ps)(1.0f / 24.0f));
    q = FX_V(fmadd_ps)(q, r, FX_V(set1_ps)(1.0f / 6.0f));
    q = FX_V(fmadd_ps)(q, r, FX_V(set1_ps)(0.5f));
    fx_vf p = FX_V(mul_ps)(FX_V(mul_ps)(r, r), q);
    fx_vf y = FX_V(add_ps)(r, p);
    fx_vf tail = FX_V(add_ps)(p, FX_V(fmadd_ps)(c, y, c));
    fx_vf s = FX_V(add_ps)(one, r);
    fx_vf s_err = FX_V(add_ps)(FX_V(sub_ps)(one, s), r);
    fx_vf v = FX_V(add_ps)(s_err, tail);
    fx_vf h = FX_V(add_ps)(s, v);
    fx_vf l = FX_V(sub_ps)(v, FX_V(sub_ps)(h, s));
    /* 2^k from k + FX_F32_SHIFTER: its bits are bits(1.5 * 2^23) + k, and << 23 drops the
     * constant */
    fx_vf p2k = FX_V_FLOATS(FX_V(slli_epi32)(
        FX_V(add_epi32)(FX_V_BITS(shifted), FX_V(set1_epi32)(127)), 23));
    *h_out = FX_V(mul_ps)(h, p2k);
    *l_out = FX_V(mul_ps)(l, FX_V(mul_ps)(p2k, FX_V(set1_ps)(0x1p64f)));
}

#if FX_ISA_LEVEL == FX_ISA_AVX512
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
            __m512 l;
            FX_LNAME(fx_exp_terms)(xv, neg_m, d_hi, &h, &l);
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
            __m512 l;
            FX_LNAME(fx_exp_terms)(xv, neg_m, d_hi, &h, &l);
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
                __m256 l, counted;
                FX_LNAME(fx_exp_terms)(xv[half], neg_m, d_hi[half], &h[half], &l);
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
                __m256 l, counted;
                FX_LNAME(fx_exp_terms)(xv, neg_m, d_hi, &h, &l);
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
#undef fx_vf
#undef FX_V
#undef FX_V_BITS
#undef FX_V_FLOATS
