/* PMF from logits, cumulative table and range decoder: SPEC.md "PMF from logits", "Range coder". */
#include "internal.h"

/* scratch: K int64 */
CLONES void vqc_pmf_from_logits(const int32_t *restrict l, int K, uint32_t *restrict cdf, int64_t *restrict w) {
    int32_t lt = l[0];
    for (int k = 1; k < K; k++) lt = l[k] > lt ? l[k] : lt;
    int top = 0;
    while (l[top] != lt) top++; /* the first index of the largest logit */
    int64_t sum = 0;
    for (int k = 0; k < K; k++) {
        int32_t i = (lt - l[k]) >> 4; /* logits are in [-2^20, 2^20]: no overflow */
        w[k] = vqc_exp_lut[i > 511 ? 511 : i];
        sum += w[k];
    }
    /* p_k = 1 + floor(w_k (2^20 - K) / sum): the quotient from a binary64 reciprocal, then
       corrected by one either way (w_k (2^20 - K) < 2^50: the estimate is within 1) */
    const int64_t M = (1 << 20) - K;
    const double inv = 1.0 / (double)sum;
    int64_t total = 0;
    for (int k = 0; k < K; k++) {
        int64_t a = w[k] * M;
        int64_t q = (int64_t)((double)a * inv);
        int64_t rem = a - q * sum;
        q += (rem >= sum) - (rem < 0);
        cdf[k] = (uint32_t)(1 + q);
        total += 1 + q;
    }
    cdf[top] += (uint32_t)((1 << 20) - total);
    /* cumulative: c_k = floor(C_k (2^24 - K) / 2^20) + k, in place */
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
