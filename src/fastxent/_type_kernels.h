/*
 * The kernels of one float type (FX_T, FX_NAME, ... set by _rows.h): its per-element formulas,
 * its vector loops once per instruction set (FX_LNAME names them, FX_LOOP picks one at run
 * time), and its rows and tiles. Included by _rows.h once per type.
 */
#include "_elements_template.h"

#define FX_ISA_SUFFIX baseline
#define FX_ISA_LEVEL FX_ISA_BASELINE
#include "_loops_template.h"
#undef FX_ISA_SUFFIX
#undef FX_ISA_LEVEL

#if FX_DISPATCH
#define FX_ISA_SUFFIX avx2
#define FX_ISA_LEVEL FX_ISA_AVX2
FX_TARGET_BEGIN("arch=x86-64-v3", "avx2,fma,bmi,bmi2,f16c,lzcnt,movbe,popcnt")
#include "_loops_template.h"
FX_TARGET_END
#undef FX_ISA_SUFFIX
#undef FX_ISA_LEVEL

#define FX_ISA_SUFFIX avx512
#define FX_ISA_LEVEL FX_ISA_AVX512
FX_TARGET_BEGIN("arch=x86-64-v4", "avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,bmi,bmi2,"
                                  "f16c,lzcnt,movbe,popcnt")
#include "_loops_template.h"
FX_TARGET_END
#undef FX_ISA_SUFFIX
#undef FX_ISA_LEVEL
#endif

#include "_rows_template.h"
