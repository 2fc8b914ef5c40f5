/* Per-row element operations of the int8 networks (requantisation, gates, input gathering),
 * written as plain loops the compiler vectorises; on x86 with GCC/clang each is cloned for
 * AVX-512 and AVX2 and picked at load time (target_clones), elsewhere it is plain C. */
#include "internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VQC_REQUANT_AVX512 1
#endif

static CLONES void requant_generic(const int32_t *restrict acc, const int32_t *restrict bias, const int32_t *restrict mult, int S, int lo,
                        int hi, int n, const int32_t *restrict R, const int8_t *restrict r, int8_t *restrict out8,
                        int32_t *restrict out32) {
    const int64_t half = (int64_t)1 << (S - 1);
    if (out32) {
        for (int o = 0; o < n; o++) {
            int64_t y = (((int64_t)acc[o] + bias[o]) * mult[o] + half) >> S;
            out32[o] = (int32_t)(y < lo ? lo : y > hi ? hi : y);
        }
    } else if (R) {
        for (int o = 0; o < n; o++) {
            int64_t a = (int64_t)acc[o] + bias[o] + (int64_t)R[o] * r[o];
            int64_t y = (a * mult[o] + half) >> S;
            out8[o] = (int8_t)(y < lo ? lo : y > hi ? hi : y);
        }
    } else {
        for (int o = 0; o < n; o++) {
            int64_t y = (((int64_t)acc[o] + bias[o]) * mult[o] + half) >> S;
            out8[o] = (int8_t)(uint8_t)(y < lo ? lo : y > hi ? hi : y);
        }
    }
}

/* out[k] = G_T(a[k], b[k]) (^ 0x80 when flip) */
CLONES void vqc_gate_row(const int8_t *restrict a, const int8_t *restrict b, int T, int n, int flip, uint8_t *restrict out) {
    const int32_t Mg = (int32_t)((127ll * (1 << 24) + (int64_t)T * T) / (2ll * T * T)); /* |t g Mg| + 2^23 < 2^31 */
    const int fx = flip ? 0x80 : 0;
    for (int k = 0; k < n; k++) {
        int t = a[k] < -T ? -T : a[k] > T ? T : a[k];
        int g = b[k] + T;
        g = g < 0 ? 0 : g > 2 * T ? 2 * T : g;
        int32_t y = (t * g * Mg + (1 << 23)) >> 24;
        y = y < -127 ? -127 : y > 127 ? 127 : y;
        out[k] = (uint8_t)((int)(int8_t)y ^ fx);
    }
}

CLONES void vqc_x80(uint8_t *restrict dst, const int8_t *restrict src, int n) {
    for (int k = 0; k < n; k++) dst[k] = (uint8_t)src[k] ^ 0x80;
}

CLONES void vqc_relu_x80(uint8_t *restrict dst, const int8_t *restrict src, int n) {
    for (int k = 0; k < n; k++) dst[k] = (uint8_t)(src[k] < 0 ? 0 : src[k]) ^ 0x80;
}

#ifdef VQC_REQUANT_AVX512
/* 16 outputs at a time: 32 x 32 -> 64-bit products of the even and odd lanes (vpmuldq),
   arithmetic shift (vpsraq), clamp, back to 32 bits, and to 8 bits (vpmovdb) */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void
requant_avx512(const int32_t *acc, const int32_t *bias, const int32_t *mult, int S, int lo, int hi, int n, const int32_t *R,
               const int8_t *r, int8_t *out8, int32_t *out32) {
    const __m512i half = _mm512_set1_epi64((int64_t)1 << (S - 1));
    const __m128i sh = _mm_cvtsi32_si128(S);
    const __m512i lo64 = _mm512_set1_epi64(lo), hi64 = _mm512_set1_epi64(hi);
    for (int o = 0; o < n; o += 16) {
        __mmask16 m = n - o >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - o)) - 1);
        __m512i a = _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, acc + o), _mm512_maskz_loadu_epi32(m, bias + o));
        if (R)
            a = _mm512_add_epi32(a, _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(m, R + o),
                                                       _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, r + o))));
        __m512i M = _mm512_maskz_loadu_epi32(m, mult + o);
        __m512i ev = _mm512_mul_epi32(a, M);
        __m512i od = _mm512_mul_epi32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(M, 32));
        ev = _mm512_max_epi64(_mm512_min_epi64(_mm512_sra_epi64(_mm512_add_epi64(ev, half), sh), hi64), lo64);
        od = _mm512_max_epi64(_mm512_min_epi64(_mm512_sra_epi64(_mm512_add_epi64(od, half), sh), hi64), lo64);
        __m512i y = _mm512_mask_blend_epi32((__mmask16)0xAAAA, ev, _mm512_slli_epi64(od, 32));
        if (out32) _mm512_mask_storeu_epi32(out32 + o, m, y);
        else _mm512_mask_cvtepi32_storeu_epi8(out8 + o, m, y);
    }
}
#endif

void vqc_requant(int kernel, const int32_t *acc, const int32_t *bias, const int32_t *mult, int S, int lo, int hi, int n, const int32_t *R,
                 const int8_t *r, int8_t *out8, int32_t *out32) {
#ifdef VQC_REQUANT_AVX512
    static int cached = -1; /* atomic: decodes may run on several threads */
    int have = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl");
        __atomic_store_n(&cached, have, __ATOMIC_RELAXED);
    }
    if (have && kernel != VQC_KERNEL_SCALAR) {
        requant_avx512(acc, bias, mult, S, lo, hi, n, R, r, out8, out32);
        return;
    }
#endif
    requant_generic(acc, bias, mult, S, lo, hi, n, R, r, out8, out32);
}
