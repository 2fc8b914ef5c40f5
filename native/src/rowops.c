/* Per-row element operations of the int8 networks (requantisation, gates, input gathering),
 * written as plain loops the compiler vectorises; on x86 with GCC/clang each is cloned for
 * AVX-512 and AVX2 and picked at load time (target_clones), elsewhere it is plain C. */
#include "internal.h"

CLONES void vqc_requant(const int32_t *restrict acc, const int32_t *restrict bias, const int32_t *restrict mult, int S, int lo,
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
