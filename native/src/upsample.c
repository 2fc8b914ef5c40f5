/* The normative upsampler (SPEC.md "Upsampling"): 6 taps at 64 phases, horizontally first
 * (kept exactly, units 1/128), then vertically (units 1/16384), int32 throughout. */
#include "internal.h"

static int64_t floordiv(int64_t a, int64_t b) { /* b > 0 */
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static void position(uint32_t x, uint32_t n_in, uint32_t n_out, int64_t *i, int *ph) {
    int64_t p = floordiv(((int64_t)2 * x + 1) * n_in * 64 - (int64_t)64 * n_out, (int64_t)2 * n_out);
    *i = floordiv(p, 64);
    *ph = (int)(p - 64 * *i);
}

static inline int64_t clampl(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* display rows [y0, y1) of all channels, in chunks of at most CHUNK display columns so that the
   temporaries (per-column taps, a ring of 8 horizontally filtered rows) stay small whatever the
   image's width; returns 0 or -1 (out of memory) */
#ifndef CHUNK
#define CHUNK 2048
#endif
int vqc_upsample(const uint8_t *src, uint32_t cw, uint32_t chh, int nc, uint8_t *dst, uint32_t w, uint32_t h, uint32_t y0,
                 uint32_t y1) {
    int32_t *xi = vqc_alloc((size_t)CHUNK * 6 * sizeof(int32_t));
    uint8_t *xph = vqc_alloc(CHUNK);
    int32_t *ring = vqc_alloc((size_t)8 * CHUNK * nc * sizeof(int32_t));
    if (!xi || !xph || !ring) {
        vqc_free(xi); vqc_free(xph); vqc_free(ring);
        return -1;
    }
    for (uint32_t x0 = 0; x0 < w; x0 += CHUNK) {
        const uint32_t cwid = w - x0 < CHUNK ? w - x0 : CHUNK;
        int64_t tag[8];
        for (int k = 0; k < 8; k++) tag[k] = -1;
        for (uint32_t x = 0; x < cwid; x++) {
            int64_t i;
            int ph;
            position(x0 + x, cw, w, &i, &ph);
            xph[x] = (uint8_t)ph;
            for (int t = 0; t < 6; t++) xi[(size_t)x * 6 + t] = (int32_t)clampl(i - 2 + t, 0, (int64_t)cw - 1);
        }
        for (uint32_t y = y0; y < y1; y++) {
            int64_t iy;
            int phy;
            position(y, chh, h, &iy, &phy);
            const int32_t *rows[6];
            for (int t = 0; t < 6; t++) {
                int64_t r = clampl(iy - 2 + t, 0, (int64_t)chh - 1);
                int slot = (int)(r & 7);
                int32_t *hr = ring + (size_t)slot * CHUNK * nc;
                if (tag[slot] != r) { /* horizontal pass of source row r over this chunk */
                    const uint8_t *s = src + (size_t)r * cw * nc;
                    for (uint32_t x = 0; x < cwid; x++) {
                        const int16_t *tp = vqc_upsample_taps[xph[x]];
                        const int32_t *ix = xi + (size_t)x * 6;
                        for (int c = 0; c < nc; c++) {
                            int32_t acc = 0;
                            for (int k = 0; k < 6; k++) acc += tp[k] * (int32_t)s[(size_t)ix[k] * nc + c];
                            hr[(size_t)x * nc + c] = acc;
                        }
                    }
                    tag[slot] = r;
                }
                rows[t] = hr;
            }
            const int16_t *tp = vqc_upsample_taps[phy];
            uint8_t *d = dst + ((size_t)y * w + x0) * nc;
            for (size_t k = 0; k < (size_t)cwid * nc; k++) {
                int32_t v = 0;
                for (int t = 0; t < 6; t++) v += tp[t] * rows[t][k];
                v = (v + 8192) >> 14;
                d[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    }
    vqc_free(xi);
    vqc_free(xph);
    vqc_free(ring);
    return 0;
}
