/*
 * The exp sums of float32 rows in float lanes (16 per AVX-512 vector, 8 per AVX2 one), for
 * _loops_template.h: fx_exp_sum_span (the contract of the portable one, which the baseline
 * runs) and the tiles' fx_tile_exp_sums (16 rows across the lanes), written once for both ISAs
 * over the few operations that differ (FX_V...). Included inside the ISA's target region, for
 * float data only.
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

/* The ISA's vectors: fx_vf holds FX_VW float lanes, fx_vd half as many doubles, fx_vm a mask of
 * float lanes; FX_V(op) names the ISA's intrinsic. FX_LANES is FX_PARTS vectors of floats. */
#if FX_ISA_LEVEL == FX_ISA_AVX512
#define FX_VW 16
#define fx_vf __m512
#define fx_vd __m512d
#define fx_vm __mmask16
#define FX_V(op) _mm512_##op
#define FX_V_BITS(v) _mm512_castps_si512(v)
#define FX_V_FLOATS(v) _mm512_castsi512_ps(v)
#define FX_V_EQ(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_EQ_OQ)
#define FX_V_ANY_BELOW(v, min) (_mm512_cmp_ps_mask((v), (min), _CMP_NGE_UQ) != 0) /* or NaN */
#define FX_V_ZERO_WHERE(mask, v) _mm512_maskz_mov_ps((__mmask16)~(mask), (v))
#define FX_V_ONE_WHERE(mask, v) _mm512_mask_mov_ps((v), (mask), _mm512_set1_ps(1.0f))
#define FX_V_COUNT(count, mask) _mm512_mask_add_ps((count), (mask), (count), _mm512_set1_ps(1.0f))
#define FX_V_LOW_PD(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))
#define FX_V_HIGH_PD(v) _mm512_cvtps_pd(_mm512_extractf32x8_ps((v), 1))
#define FX_V_FROM_PD(low, high) \
    _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(low)), _mm512_cvtpd_ps(high), 1)
#else
#define FX_VW 8
#define fx_vf __m256
#define fx_vd __m256d
#define fx_vm __m256
#define FX_V(op) _mm256_##op
#define FX_V_BITS(v) _mm256_castps_si256(v)
#define FX_V_FLOATS(v) _mm256_castsi256_ps(v)
#define FX_V_EQ(a, b) _mm256_cmp_ps((a), (b), _CMP_EQ_OQ)
#define FX_V_ANY_BELOW(v, min) (_mm256_movemask_ps(_mm256_cmp_ps((v), (min), _CMP_NGE_UQ)) != 0)
#define FX_V_ZERO_WHERE(mask, v) _mm256_andnot_ps((mask), (v))
#define FX_V_ONE_WHERE(mask, v) _mm256_blendv_ps((v), _mm256_set1_ps(1.0f), (mask))
#define FX_V_COUNT(count, mask) _mm256_add_ps((count), _mm256_and_ps((mask), _mm256_set1_ps(1.0f)))
#define FX_V_LOW_PD(v) _mm256_cvtps_pd(_mm256_castps256_ps128(v))
#define FX_V_HIGH_PD(v) _mm256_cvtps_pd(_mm256_extractf128_ps((v), 1))
#define FX_V_FROM_PD(low, high) _mm256_set_m128(_mm256_cvtpd_ps(high), _mm256_cvtpd_ps(low))
#endif
#define FX_PARTS (FX_LANES / FX_VW)
#if FX_TILE != FX_LANES
#error "fx_tile_exp_sums runs a tile's rows as the FX_LANES lanes of fx_exp_block"
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

/* The running sums of FX_LANES lanes: 2^k h in double (acc), 2^64 2^k l in float (l_sum), the
 * count of maxima in float (exact: a span or a tile has far fewer than 2^24 terms) */
typedef struct {
    fx_vd acc[2 * FX_PARTS];
    fx_vf l_sum[FX_PARTS], count[FX_PARTS];
} FX_LNAME(fx_exp_sums);

static inline void FX_LNAME(fx_exp_sums_start)(FX_LNAME(fx_exp_sums) *sums, const double *acc)
{
    int p;
    for (p = 0; p < 2 * FX_PARTS; p++) sums->acc[p] = FX_V(loadu_pd)(acc + p * FX_VW / 2);
    for (p = 0; p < FX_PARTS; p++) {
        sums->l_sum[p] = FX_V(setzero_ps)();
        sums->count[p] = FX_V(setzero_ps)();
    }
}

/* acc[j] = the lane's sum of 2^k h plus its sum of 2^k l, count[j] += the lane's count */
static inline void FX_LNAME(fx_exp_sums_finish)(FX_LNAME(fx_exp_sums) *sums, double *acc,
                                                double *count)
{
    float l_lanes[FX_LANES], count_lanes[FX_LANES];
    int p, j;
    for (p = 0; p < 2 * FX_PARTS; p++) FX_V(storeu_pd)(acc + p * FX_VW / 2, sums->acc[p]);
    for (p = 0; p < FX_PARTS; p++) {
        FX_V(storeu_ps)(l_lanes + p * FX_VW, sums->l_sum[p]);
        FX_V(storeu_ps)(count_lanes + p * FX_VW, sums->count[p]);
    }
    for (j = 0; j < FX_LANES; j++) {
        acc[j] += (double)l_lanes[j] * 0x1p-64;
        count[j] += count_lanes[j];
    }
}

/* FX_LANES terms exp(x[j] - m[j]) into the sums (the maxima, x == m, counted instead), and into
 * e[j] rounded to float when e is not NULL. A vector with a d_hi below -87 (a term below
 * 2^-125), -inf or NaN takes the double exp of the portable loop. */
static inline void FX_LNAME(fx_exp_block)(FX_LNAME(fx_exp_sums) *sums, const float *x,
                                          const float *m, float *e)
{
    const fx_vf fast_min = FX_V(set1_ps)(FX_F32_FAST_MIN);
    int p, j;
    for (p = 0; p < FX_PARTS; p++) {
        fx_vf xv = FX_V(loadu_ps)(x + p * FX_VW), mv = FX_V(loadu_ps)(m + p * FX_VW);
        fx_vf d_hi = FX_V(sub_ps)(xv, mv), h;
        fx_vm at_max = FX_V_EQ(xv, mv);
        if (!FX_V_ANY_BELOW(d_hi, fast_min)) {
            fx_vf l, counted;
            FX_LNAME(fx_exp_terms)(xv, FX_V(sub_ps)(FX_V(setzero_ps)(), mv), d_hi, &h, &l);
            sums->l_sum[p] = FX_V(add_ps)(sums->l_sum[p], l);
            counted = FX_V_ZERO_WHERE(at_max, h); /* the maxima's 1 is counted, not summed */
            sums->acc[2 * p] = FX_V(add_pd)(sums->acc[2 * p], FX_V_LOW_PD(counted));
            sums->acc[2 * p + 1] = FX_V(add_pd)(sums->acc[2 * p + 1], FX_V_HIGH_PD(counted));
        } else {
            double v[FX_VW];
            fx_vd low, high;
            for (j = 0; j < FX_VW; j++) {
                float xj = x[p * FX_VW + j], mj = m[p * FX_VW + j];
                v[j] = xj == mj ? 0.0 : fx_exp_shifted_f32(xj, mj);
            }
            low = FX_V(loadu_pd)(v);
            high = FX_V(loadu_pd)(v + FX_VW / 2);
            sums->acc[2 * p] = FX_V(add_pd)(sums->acc[2 * p], low);
            sums->acc[2 * p + 1] = FX_V(add_pd)(sums->acc[2 * p + 1], high);
            h = FX_V_ONE_WHERE(at_max, FX_V_FROM_PD(low, high)); /* the maxima's terms are 1 */
        }
        sums->count[p] = FX_V_COUNT(sums->count[p], at_max);
        if (e != NULL) FX_V(storeu_ps)(e + p * FX_VW, h);
    }
}

FX_SAME_BITS_FOR_EVERY_CALLER static void FX_LNAME(fx_exp_sum_span)(
    const float *x, ptrdiff_t n, double m, float *e, double *acc_io, double *comp_io,
    double *count_io, const char *pf_x, char *pf_e)
{
    FX_LNAME(fx_exp_sums) sums;
    float m_lanes[FX_LANES];
    ptrdiff_t i;
    int j;
    (void)comp_io;
    for (j = 0; j < FX_LANES; j++) m_lanes[j] = (float)m;
    FX_LNAME(fx_exp_sums_start)(&sums, acc_io);
    for (i = 0; i < n; i += FX_LANES) {
        if (pf_x != NULL) { /* as in the portable loop */
            __builtin_prefetch(pf_x + i * (ptrdiff_t)sizeof(float), 0, 2);
            if (pf_e != NULL) __builtin_prefetch(pf_e + i * (ptrdiff_t)sizeof(float), 1, 2);
        }
        FX_LNAME(fx_exp_block)(&sums, x + i, m_lanes, e != NULL ? e + i : NULL);
    }
    FX_LNAME(fx_exp_sums_finish)(&sums, acc_io, count_io);
}

/* fx_tile_stats' exp sums in float lanes, 16 rows across the lanes: for each class c <
 * n_classes, acc[r] += exp(xt[c][r] - mt[r]) where xt[c][r] != mt[r], count[r] += (xt[c][r] ==
 * mt[r]), and et[c][r] = exp(xt[c][r] - mt[r]) rounded to float */
static void FX_LNAME(fx_tile_exp_sums)(const float (*xt)[FX_TILE], ptrdiff_t n_classes,
                                       const float *mt, double *acc, double *count,
                                       float (*et)[FX_TILE])
{
    FX_LNAME(fx_exp_sums) sums;
    ptrdiff_t c;
    FX_LNAME(fx_exp_sums_start)(&sums, acc);
    for (c = 0; c < n_classes; c++) FX_LNAME(fx_exp_block)(&sums, xt[c], mt, et[c]);
    FX_LNAME(fx_exp_sums_finish)(&sums, acc, count);
}

/* mt[r] = max_c xt[c][r] over c < n_classes, NaN ignored (-inf for a row of NaN): the
 * portable loop's x > m ? x : m, which max_ps(x, m) is (it returns m when either is NaN) */
static void FX_LNAME(fx_tile_max)(const float (*xt)[FX_TILE], ptrdiff_t n_classes, float *mt)
{
    ptrdiff_t c;
    int p;
    for (p = 0; p < FX_PARTS; p++) {
        fx_vf m = FX_V(set1_ps)(-INFINITY);
        for (c = 0; c < n_classes; c++) m = FX_V(max_ps)(FX_V(loadu_ps)(xt[c] + p * FX_VW), m);
        FX_V(storeu_ps)(mt + p * FX_VW, m);
    }
}

#undef FX_VW
#undef fx_vf
#undef fx_vd
#undef fx_vm
#undef FX_V
#undef FX_V_BITS
#undef FX_V_FLOATS
#undef FX_V_EQ
#undef FX_V_ANY_BELOW
#undef FX_V_ZERO_WHERE
#undef FX_V_ONE_WHERE
#undef FX_V_COUNT
#undef FX_V_LOW_PD
#undef FX_V_HIGH_PD
#undef FX_V_FROM_PD
#undef FX_PARTS
