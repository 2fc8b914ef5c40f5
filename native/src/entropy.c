/* PMF from logits, cumulative table and range decoder: SPEC.md "PMF from logits", "Range coder". */
#include "internal.h"

/* floor(a / s) for 0 <= a < 2^51, 1 <= s < 2^52, with a reciprocal computed once */
static inline int64_t divfloor(int64_t a, int64_t s, double inv) {
    int64_t q = (int64_t)((double)a * inv);
    int64_t r = a - q * s;
    if (r < 0) q--;
    else if (r >= s) q++;
    return q;
}

void vqc_pmf_from_logits(const int32_t *l, int K, uint32_t *cdf) {
    int top = 0;
    for (int k = 1; k < K; k++)
        if (l[k] > l[top]) top = k;
    const int32_t lt = l[top];
    int64_t sum = 0;
    /* reuse cdf as scratch for the LUT indices (K + 1 entries available) */
    for (int k = 0; k < K; k++) {
        int64_t d = (int64_t)lt - l[k];
        int64_t i = d >> 4;
        if (i > 511) i = 511;
        cdf[k] = (uint32_t)i;
        sum += vqc_exp_lut[i];
    }
    const int64_t M = (1 << 20) - K;
    const double inv = 1.0 / (double)sum;
    int64_t total = 0;
    /* p_k into cdf[k] (fits: p_k <= 2^20) */
    for (int k = 0; k < K; k++) {
        int64_t w = vqc_exp_lut[cdf[k]];
        int64_t p = 1 + (w ? divfloor(w * M, sum, inv) : 0);
        cdf[k] = (uint32_t)p;
        total += p;
    }
    cdf[top] += (uint32_t)((1 << 20) - total);
    /* cumulative: c_k = floor(C_k (2^24 - K) / 2^20) + k, in place, from the left */
    uint64_t C = 0;
    const uint64_t scale = (1u << 24) - (uint64_t)K;
    for (int k = 0; k < K; k++) {
        uint32_t p = cdf[k];
        cdf[k] = (uint32_t)(((C * scale) >> 20) + (uint64_t)k);
        C += p;
    }
    cdf[K] = 1u << 24;
}

static inline uint32_t word_at(const vqc_rdec *d, uint32_t i) {
    const uint8_t *p = d->words + 4 * (size_t)i;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* the next word: index n reads as 0; index > n is an error */
static inline int next_word(vqc_rdec *d, uint32_t *w) {
    if (d->pos > d->n) return -2;
    *w = d->pos < d->n ? word_at(d, d->pos) : 0;
    d->pos++;
    return 0;
}

int vqc_rdec_init(vqc_rdec *d, const uint8_t *payload, uint32_t bytes) {
    uint32_t a, b;
    d->words = payload;
    d->n = bytes / 4;
    d->pos = 0;
    d->low = 0;
    d->range = ~(uint64_t)0;
    if (next_word(d, &a) || next_word(d, &b)) return -2;
    d->point = (uint64_t)a << 32 | b;
    return 0;
}

int vqc_rdec_decode(vqc_rdec *d, const uint32_t *cdf, int K) {
    uint64_t scale = d->range >> 24;
    uint64_t q = (d->point - d->low) / scale;
    if (q >= (1u << 24)) return -1;
    int lo = 0, hi = K - 1; /* largest k with cdf[k] <= q */
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (cdf[mid] <= q) lo = mid;
        else hi = mid - 1;
    }
    d->low += scale * cdf[lo];
    d->range = scale * (uint64_t)(cdf[lo + 1] - cdf[lo]);
    if (d->range < (1ull << 32)) {
        uint32_t w;
        d->low <<= 32;
        d->range <<= 32;
        if (next_word(d, &w)) return -2;
        d->point = (d->point << 32) | w;
    }
    return lo;
}
