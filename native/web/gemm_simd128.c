/* gemm_simd128.c - the core's u8 x s8 -> int32 matrix product (native/src/gemm.c, vqc_gemm) with
 * WebAssembly SIMD128, for the wasm build only.
 *
 * The wasm build compiles native/src/gemm.c with -Dvqc_gemm=vqc_gemm_core, so this vqc_gemm is the
 * one the prior and the pixel decoder call.  It reads the plain zero-padded weights m->w
 * ([Op][Kp], which vqc_qmat_init/pack always fill) and gives the same integers as gemm_scalar:
 * u8 activations and s8 weights widen to i16 and i32x4.dot_i16x8_s sums pairs of products
 * exactly (|a * w| <= 255 * 128), every partial sum staying far below 2^31 as in the core. */
#include <wasm_simd128.h>

#include "../src/internal.h"

void vqc_gemm_core(int kernel, const vqc_qmat *m, const uint8_t *A, int lda, int n, int32_t *C, int ldc);

/* [a, b, c, d] = horizontal sums of the four vectors */
static inline v128_t hsum4(v128_t a, v128_t b, v128_t c, v128_t d) {
    v128_t ab = wasm_i32x4_add(wasm_i32x4_shuffle(a, b, 0, 4, 1, 5), wasm_i32x4_shuffle(a, b, 2, 6, 3, 7));
    v128_t cd = wasm_i32x4_add(wasm_i32x4_shuffle(c, d, 0, 4, 1, 5), wasm_i32x4_shuffle(c, d, 2, 6, 3, 7));
    return wasm_i32x4_add(wasm_i32x4_shuffle(ab, cd, 0, 1, 4, 5), wasm_i32x4_shuffle(ab, cd, 2, 3, 6, 7));
}

/* rows r..r+3 x outputs o, o+1 */
#define LOADA8(p) wasm_u16x8_load8x8(p)
#define LOADW8(p) wasm_i16x8_load8x8(p)
#define LOADA4(p) wasm_u16x8_extend_low_u8x16(wasm_v128_load32_zero(p))
#define LOADW4(p) wasm_i16x8_extend_low_i8x16(wasm_v128_load32_zero(p))
#define DOT(c, x, v) c = wasm_i32x4_add(c, wasm_i32x4_dot_i16x8(x, v))

void vqc_gemm(int kernel, const vqc_qmat *m, const uint8_t *A, int lda, int n, int32_t *C, int ldc) {
    (void)kernel;
    const int O = m->O, Kp = m->Kp;
    /* weights past K are zero: stop at K rounded up to 4 (<= Kp), in steps of 8 then one of 4 */
    const int Ke = (m->K + 3) / 4 * 4, K8 = Ke / 8 * 8;
    for (int r = 0; r < n; r += 4) {
        const int nr = n - r < 4 ? n - r : 4;
        /* rows past n repeat row r (their sums are not stored) */
        const uint8_t *a0 = A + (size_t)r * lda;
        const uint8_t *a1 = nr > 1 ? a0 + lda : a0, *a2 = nr > 2 ? a0 + 2 * (size_t)lda : a0,
                      *a3 = nr > 3 ? a0 + 3 * (size_t)lda : a0;
        int32_t *cr = C + (size_t)r * ldc;
        for (int o = 0; o < O; o += 2) { /* Op is a multiple of 32: rows o, o+1 of w exist */
            const int8_t *w0 = m->w + (size_t)o * Kp, *w1 = w0 + Kp;
            v128_t c00 = wasm_i32x4_splat(0), c01 = c00, c10 = c00, c11 = c00;
            v128_t c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            int k = 0;
#define STEP(LOADA, LOADW)                                                  \
    {                                                                       \
        v128_t v0 = LOADW(w0 + k), v1 = LOADW(w1 + k), x;                   \
        x = LOADA(a0 + k); DOT(c00, x, v0); DOT(c01, x, v1);                \
        x = LOADA(a1 + k); DOT(c10, x, v0); DOT(c11, x, v1);                \
        x = LOADA(a2 + k); DOT(c20, x, v0); DOT(c21, x, v1);                \
        x = LOADA(a3 + k); DOT(c30, x, v0); DOT(c31, x, v1);                \
    }
            for (; k < K8; k += 8) STEP(LOADA8, LOADW8)
            if (k < Ke) STEP(LOADA4, LOADW4)
#undef STEP
            /* [r0o0 r0o1 r1o0 r1o1] and [r2o0 r2o1 r3o0 r3o1] */
            v128_t s01 = hsum4(c00, c01, c10, c11), s23 = hsum4(c20, c21, c30, c31);
            int32_t t[8];
            wasm_v128_store(t, s01);
            wasm_v128_store(t + 4, s23);
            const int two = O - o > 1;
            for (int i = 0; i < nr; i++) {
                cr[(size_t)i * ldc + o] = t[2 * i];
                if (two) cr[(size_t)i * ldc + o + 1] = t[2 * i + 1];
            }
        }
    }
}
