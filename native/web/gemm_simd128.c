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

static inline void store4(int32_t *c, v128_t v, int count) {
    if (count >= 4) {
        wasm_v128_store(c, v);
        return;
    }
    int32_t t[4];
    wasm_v128_store(t, v);
    for (int i = 0; i < count; i++) c[i] = t[i];
}

/* rows r0..r0+R-1 (R <= 2) x outputs o..o+3, K in steps of 8 then a step of 4 */
#define ROWS 2
void vqc_gemm(int kernel, const vqc_qmat *m, const uint8_t *A, int lda, int n, int32_t *C, int ldc) {
    (void)kernel;
    const int O = m->O, Kp = m->Kp, K8 = Kp / 8 * 8;
    for (int r = 0; r < n; r += ROWS) {
        const int nr = n - r < ROWS ? n - r : ROWS;
        const uint8_t *a0 = A + (size_t)r * lda, *a1 = nr > 1 ? a0 + lda : a0;
        for (int o = 0; o < O; o += 4) { /* Op is a multiple of 32: rows o..o+3 of w exist */
            const int8_t *w0 = m->w + (size_t)o * Kp, *w1 = w0 + Kp, *w2 = w1 + Kp, *w3 = w2 + Kp;
            v128_t c00 = wasm_i32x4_splat(0), c01 = c00, c02 = c00, c03 = c00;
            v128_t c10 = c00, c11 = c00, c12 = c00, c13 = c00;
            int k = 0;
#define STEP(LOADA, LOADW)                                                                    \
    {                                                                                         \
        v128_t x0 = LOADA(a0 + k), x1 = LOADA(a1 + k);                                        \
        v128_t v0 = LOADW(w0 + k), v1 = LOADW(w1 + k), v2 = LOADW(w2 + k), v3 = LOADW(w3 + k); \
        c00 = wasm_i32x4_add(c00, wasm_i32x4_dot_i16x8(x0, v0));                              \
        c01 = wasm_i32x4_add(c01, wasm_i32x4_dot_i16x8(x0, v1));                              \
        c02 = wasm_i32x4_add(c02, wasm_i32x4_dot_i16x8(x0, v2));                              \
        c03 = wasm_i32x4_add(c03, wasm_i32x4_dot_i16x8(x0, v3));                              \
        c10 = wasm_i32x4_add(c10, wasm_i32x4_dot_i16x8(x1, v0));                              \
        c11 = wasm_i32x4_add(c11, wasm_i32x4_dot_i16x8(x1, v1));                              \
        c12 = wasm_i32x4_add(c12, wasm_i32x4_dot_i16x8(x1, v2));                              \
        c13 = wasm_i32x4_add(c13, wasm_i32x4_dot_i16x8(x1, v3));                              \
    }
#define LOADA8(p) wasm_u16x8_load8x8(p)
#define LOADW8(p) wasm_i16x8_load8x8(p)
#define LOADA4(p) wasm_u16x8_extend_low_u8x16(wasm_v128_load32_zero(p))
#define LOADW4(p) wasm_i16x8_extend_low_i8x16(wasm_v128_load32_zero(p))
            for (; k < K8; k += 8) STEP(LOADA8, LOADW8)
            if (k < Kp) STEP(LOADA4, LOADW4) /* Kp is a multiple of 4 */
            const int cnt = O - o < 4 ? O - o : 4;
            store4(C + (size_t)r * ldc + o, hsum4(c00, c01, c02, c03), cnt);
            if (nr > 1) store4(C + (size_t)(r + 1) * ldc + o, hsum4(c10, c11, c12, c13), cnt);
        }
    }
}
