/* The prior (SPEC.md "Prior network", "Prior network, int8", "Coding order"), decoding a group of
 * tiles of equal shape in lock-step along the wavefront: at step s the positions of step s are
 * decoded, then the vertical stack of layer l at the positions of step s + L - l (as the
 * reference decoder).  Maps are zero outside the tile: emb and vg carry one padding row on top
 * and one padding column on each side, hs one padding column on the left. */
#include "internal.h"

typedef struct {
    void *emb;      /* (h+1) x (w+2) x C */
    void **vg;      /* L maps (h+1) x (w+2) x C */
    void **vp;      /* L maps h x w x 2C: int8: vp_l; exact: v2h(vp_l) */
    void **hs;      /* L maps h x (w+1) x C */
    vqc_rdec dec;
} tstate;

typedef struct {
    int t, i, j; /* tile in group, row, column */
} pos;

static inline int clampi(int64_t v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : (int)v; }

/* ---------------------------------------------------------------- int8 helpers */

static inline void requant_row(int kernel, const vqc_qlayer *L, const int32_t *acc, int8_t *out_s8, uint8_t *out_u8, int32_t *out_i32,
                               const int8_t *resid_in) {
    vqc_requant(kernel, acc, L->bias, L->mult, L->shift, L->lo, L->hi, L->m.O, resid_in ? L->resid : NULL, resid_in,
                out_s8 ? out_s8 : (int8_t *)out_u8, out_i32);
}

static inline void copy_x80(uint8_t *dst, const int8_t *src, int n) { vqc_x80(dst, src, n); }

/* ---------------------------------------------------------------- exact helpers */

void vqc_xapply(const vqc_xconv *X, const double *P, int n, double *acc, int32_t *out) {
    const int O = X->O, K = X->K;
    for (int r = 0; r < n; r++) {
        double *a = acc + (size_t)r * O;
        for (int o = 0; o < O; o++) a[o] = 0;
        const double *p = P + (size_t)r * K;
        for (int k = 0; k < K; k++) {
            double v = p[k];
            if (v == 0) continue;
            const double *w = X->w + (size_t)k * O;
            for (int o = 0; o < O; o++) a[o] += v * w[o];
        }
        for (int o = 0; o < O; o++) {
            int64_t s = (int64_t)a[o] + X->bias[o];
            if (X->shift > 0) s = (s + ((int64_t)1 << (X->shift - 1))) >> X->shift;
            else if (X->shift < 0) {
                /* |s| < 2^46 and -shift <= a few: clamp before shifting to stay in range */
                int sh = -X->shift;
                if (sh > 20 || s > ((int64_t)VQC_ACT_MAX << 1) || s < -((int64_t)VQC_ACT_MAX << 1))
                    s = s > 0 ? VQC_ACT_MAX : s < 0 ? -VQC_ACT_MAX : 0;
                else s = s * ((int64_t)1 << sh);
            }
            out[(size_t)r * O + o] = clampi(s, -VQC_ACT_MAX, VQC_ACT_MAX);
        }
    }
}

static inline int32_t gatex(int32_t a, int32_t b) {
    int64_t t = a < -256 ? -256 : a > 256 ? 256 : a;
    int64_t g = (int64_t)b + 256;
    g = g < 0 ? 0 : g > 512 ? 512 : g;
    return (int32_t)((t * g + 256) >> 9);
}

/* ---------------------------------------------------------------- driver */

typedef struct {
    const vqc_model *m;
    int kernel, h, w, es; /* es: element size of the maps (1 or 4) */
    int S;                /* stages coded per position */
    const vqc_tile *tiles;
    tstate *ts;
    int ntiles;
    /* scratch for up to maxn positions */
    int maxn;
    uint8_t *A;      /* int8: patches maxn4 x maxK */
    int32_t *acc;    /* int8: maxn4 x maxOp; exact: int32 outputs */
    double *P, *D;   /* exact: patches, double accumulators */
    int8_t *t8a, *t8b; /* int8 temporaries: maxn x 2C */
    int32_t *t32a, *t32b, *t32c;
    uint32_t *cdf;
    int64_t *pmfw;
    int32_t *logits;
    int lda, ldc;
} pctx;

static void vertical(pctx *c, int l, const pos *ps, int n) {
    const vqc_model *m = c->m;
    const int C = m->C, kh = l == 0 ? 1 : 2, W2 = c->w + 2;
    if (m->int8) {
        const vqc_qlayer *V = &m->layers[l].v;
        for (int r = 0; r < n; r++) {
            tstate *s = &c->ts[ps[r].t];
            const int8_t *src = l == 0 ? s->emb : s->vg[l - 1];
            uint8_t *row = c->A + (size_t)r * c->lda;
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < 3; kx++)
                    copy_x80(row + (ky * 3 + kx) * C, src + ((size_t)(ps[r].i + ky) * W2 + ps[r].j + kx) * C, C);
        }
        vqc_gemm(c->kernel, &V->m, c->A, c->lda, n, c->acc, c->ldc);
        const int tv = m->layers[l].tv;
        for (int r = 0; r < n; r++) {
            tstate *s = &c->ts[ps[r].t];
            int8_t *vp = (int8_t *)s->vp[l] + ((size_t)ps[r].i * c->w + ps[r].j) * 2 * C;
            requant_row(c->kernel, V, c->acc + (size_t)r * c->ldc, vp, NULL, NULL, NULL);
            int8_t *vg = (int8_t *)s->vg[l] + ((size_t)(ps[r].i + 1) * W2 + ps[r].j + 1) * C;
            vqc_gate_row(vp, vp + C, tv, C, 0, (uint8_t *)vg);
        }
    } else {
        const vqc_player *P = &m->layers[l];
        const int K = kh * 3 * C;
        for (int r = 0; r < n; r++) {
            tstate *s = &c->ts[ps[r].t];
            const int32_t *src = l == 0 ? s->emb : s->vg[l - 1];
            double *row = c->P + (size_t)r * K;
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    const int32_t *q = src + ((size_t)(ps[r].i + ky) * W2 + ps[r].j + kx) * C;
                    for (int k = 0; k < C; k++) row[(ky * 3 + kx) * C + k] = q[k];
                }
        }
        vqc_xapply(&P->xv, c->P, n, c->D, c->t32a); /* vp: n x 2C */
        for (int r = 0; r < n; r++) {
            tstate *s = &c->ts[ps[r].t];
            const int32_t *vp = c->t32a + (size_t)r * 2 * C;
            int32_t *vg = (int32_t *)s->vg[l] + ((size_t)(ps[r].i + 1) * W2 + ps[r].j + 1) * C;
            for (int k = 0; k < C; k++) vg[k] = gatex(vp[k], vp[C + k]);
            for (int k = 0; k < 2 * C; k++) c->P[(size_t)r * 2 * C + k] = vp[k];
        }
        vqc_xapply(&P->xv2h, c->P, n, c->D, c->t32b);
        for (int r = 0; r < n; r++) {
            tstate *s = &c->ts[ps[r].t];
            memcpy((int32_t *)s->vp[l] + ((size_t)ps[r].i * c->w + ps[r].j) * 2 * C, c->t32b + (size_t)r * 2 * C,
                   (size_t)2 * C * 4);
        }
    }
}

/* int8: the logits of stage s at n positions into c->logits (n x K), from relu(H_{L-1}) (trunk
   already run) and, for s >= 1, the stages 0..s-1 decoded at these positions */
static void head(pctx *c, int s, const pos *ps, int n) {
    const vqc_model *m = c->m;
    const vqc_head *hd = &m->heads[s];
    const int C = m->C, W1 = c->w + 1, K = m->K, S = c->S;
    for (int r = 0; r < n; r++) {
        tstate *st = &c->ts[ps[r].t];
        const int8_t *hl = (int8_t *)st->hs[m->L - 1] + ((size_t)ps[r].i * W1 + ps[r].j + 1) * C;
        vqc_relu_x80(c->A + (size_t)r * c->lda, hl, C);
    }
    vqc_gemm(c->kernel, &hd->out1.m, c->A, c->lda, n, c->acc, c->ldc);
    for (int r = 0; r < n; r++) {
        int32_t *acc = c->acc + (size_t)r * c->ldc;
        if (s > 0) {
            const uint16_t *idx = c->tiles[ps[r].t].out + ((size_t)ps[r].i * c->w + ps[r].j) * S;
            for (int t = 0; t < s; t++) {
                const int32_t *row = hd->cond + ((size_t)t * K + idx[t]) * C;
                for (int o = 0; o < C; o++) acc[o] += row[o];
            }
        }
        requant_row(c->kernel, &hd->out1, acc, NULL, c->A + (size_t)r * c->lda, NULL, NULL);
    }
    vqc_gemm(c->kernel, &hd->out2.m, c->A, c->lda, n, c->acc, c->ldc);
    for (int r = 0; r < n; r++)
        requant_row(c->kernel, &hd->out2, c->acc + (size_t)r * c->ldc, NULL, NULL, c->logits + (size_t)r * K, NULL);
}

/* the trunk (int8: layers 0..L-1, giving H_{L-1}) or, for profile exact, the whole network:
   the logits of n positions into c->logits (n x K) */
static void logits(pctx *c, const pos *ps, int n) {
    const vqc_model *m = c->m;
    const int C = m->C, W2 = c->w + 2, W1 = c->w + 1;
    if (m->int8) {
        for (int l = 0; l < m->L; l++) {
            const vqc_player *P = &m->layers[l];
            const int kin = l == 0 ? C : 2 * C;
            for (int r = 0; r < n; r++) {
                tstate *s = &c->ts[ps[r].t];
                uint8_t *row = c->A + (size_t)r * c->lda;
                const int i = ps[r].i, j = ps[r].j;
                if (l == 0) copy_x80(row, (int8_t *)s->emb + ((size_t)(i + 1) * W2 + j) * C, C);
                else copy_x80(row, (int8_t *)s->hs[l - 1] + ((size_t)i * W1 + j) * C, 2 * C);
                copy_x80(row + kin, (int8_t *)s->vp[l] + ((size_t)i * c->w + j) * 2 * C, 2 * C);
            }
            vqc_gemm(c->kernel, &P->h.m, c->A, c->lda, n, c->acc, c->ldc);
            for (int r = 0; r < n; r++) {
                int8_t *hp = c->t8a + (size_t)r * 2 * C;
                requant_row(c->kernel, &P->h, c->acc + (size_t)r * c->ldc, hp, NULL, NULL, NULL);
                uint8_t *row = c->A + (size_t)r * c->lda;
                vqc_gate_row(hp, hp + C, P->th, C, 1, row);
            }
            vqc_gemm(c->kernel, &P->res.m, c->A, c->lda, n, c->acc, c->ldc);
            for (int r = 0; r < n; r++) {
                tstate *s = &c->ts[ps[r].t];
                const int i = ps[r].i, j = ps[r].j;
                int8_t *hout = (int8_t *)s->hs[l] + ((size_t)i * W1 + j + 1) * C;
                const int8_t *hprev = l == 0 ? NULL : (int8_t *)s->hs[l - 1] + ((size_t)i * W1 + j + 1) * C;
                requant_row(c->kernel, &P->res, c->acc + (size_t)r * c->ldc, hout, NULL, NULL, hprev);
            }
        }
    } else {
        for (int l = 0; l < m->L; l++) {
            const vqc_player *P = &m->layers[l];
            const int kin = l == 0 ? C : 2 * C;
            for (int r = 0; r < n; r++) {
                tstate *s = &c->ts[ps[r].t];
                const int i = ps[r].i, j = ps[r].j;
                const int32_t *src = l == 0 ? (int32_t *)s->emb + ((size_t)(i + 1) * W2 + j) * C
                                            : (int32_t *)s->hs[l - 1] + ((size_t)i * W1 + j) * C;
                for (int k = 0; k < kin; k++) c->P[(size_t)r * kin + k] = src[k];
            }
            vqc_xapply(&P->xh, c->P, n, c->D, c->t32a); /* hc: n x 2C */
            for (int r = 0; r < n; r++) {
                tstate *s = &c->ts[ps[r].t];
                const int32_t *vh = (int32_t *)s->vp[l] + ((size_t)ps[r].i * c->w + ps[r].j) * 2 * C;
                const int32_t *hc = c->t32a + (size_t)r * 2 * C;
                for (int k = 0; k < C; k++) c->P[(size_t)r * C + k] = gatex(hc[k] + vh[k], hc[C + k] + vh[C + k]);
            }
            vqc_xapply(&P->xres, c->P, n, c->D, c->t32b);
            for (int r = 0; r < n; r++) {
                tstate *s = &c->ts[ps[r].t];
                const int i = ps[r].i, j = ps[r].j;
                int32_t *hout = (int32_t *)s->hs[l] + ((size_t)i * W1 + j + 1) * C;
                const int32_t *o = c->t32b + (size_t)r * C;
                if (l == 0) memcpy(hout, o, (size_t)C * 4);
                else {
                    const int32_t *hp = (int32_t *)s->hs[l - 1] + ((size_t)i * W1 + j + 1) * C;
                    for (int k = 0; k < C; k++) hout[k] = clampi((int64_t)hp[k] + o[k], -VQC_ACT_MAX, VQC_ACT_MAX);
                }
            }
        }
        for (int r = 0; r < n; r++) {
            tstate *s = &c->ts[ps[r].t];
            const int32_t *hl = (int32_t *)s->hs[m->L - 1] + ((size_t)ps[r].i * W1 + ps[r].j + 1) * C;
            for (int k = 0; k < C; k++) c->P[(size_t)r * C + k] = hl[k] < 0 ? 0 : hl[k];
        }
        vqc_xapply(&m->xout1, c->P, n, c->D, c->t32a);
        for (size_t k = 0; k < (size_t)n * C; k++) c->P[k] = c->t32a[k] < 0 ? 0 : c->t32a[k];
        vqc_xapply(&m->xout2, c->P, n, c->D, c->logits);
    }
}

static void free_states(pctx *c) {
    if (!c->ts) return;
    for (int t = 0; t < c->ntiles; t++) {
        tstate *s = &c->ts[t];
        vqc_free(s->emb);
        for (int l = 0; l < c->m->L; l++) {
            if (s->vg) vqc_free(s->vg[l]);
            if (s->vp) vqc_free(s->vp[l]);
            if (s->hs) vqc_free(s->hs[l]);
        }
        vqc_free(s->vg);
        vqc_free(s->vp);
        vqc_free(s->hs);
    }
    vqc_free(c->ts);
}

int vqc_prior_decode(const vqc_model *m, int kernel, int S, const vqc_tile *tiles, int ntiles, vqc_error *err) {
    pctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.kernel = kernel;
    c.S = S;
    c.tiles = tiles;
    c.h = tiles[0].h;
    c.w = tiles[0].w;
    c.es = m->int8 ? 1 : 4;
    c.ntiles = ntiles;
    const int C = m->C, L = m->L, h = c.h, w = c.w, es = c.es;
    int e = 0;
    pos *ps = NULL;
    c.ts = vqc_calloc((size_t)ntiles, sizeof(tstate));
    if (!c.ts) return vqc_fail(err, VQC_ERR_INTERNAL, "out of memory");
    for (int t = 0; t < ntiles && !e; t++) {
        tstate *s = &c.ts[t];
        s->vg = vqc_calloc((size_t)L, sizeof(void *));
        s->vp = vqc_calloc((size_t)L, sizeof(void *));
        s->hs = vqc_calloc((size_t)L, sizeof(void *));
        s->emb = vqc_calloc((size_t)(h + 1) * (w + 2) * C, (size_t)es);
        if (!s->vg || !s->vp || !s->hs || !s->emb) e = 1;
        for (int l = 0; l < L && !e; l++) {
            s->vg[l] = vqc_calloc((size_t)(h + 1) * (w + 2) * C, (size_t)es);
            s->vp[l] = vqc_calloc((size_t)h * w * 2 * C, (size_t)es);
            s->hs[l] = vqc_calloc((size_t)h * (w + 1) * C, (size_t)es);
            if (!s->vg[l] || !s->vp[l] || !s->hs[l]) e = 1;
        }
    }
    /* positions per step: at most min(h, ceil(w / (L+1)) + 1) per tile */
    int per = h < w / (L + 1) + 2 ? h : w / (L + 1) + 2;
    c.maxn = per * ntiles;
    int n4 = (c.maxn + 31) / 32 * 32; /* whole row blocks of the SIMD kernels */
    int maxK = 6 * C, maxO = 2 * C > m->K ? 2 * C : m->K;
    c.lda = (maxK + 63) / 64 * 64;
    c.ldc = (maxO + 31) / 32 * 32;
    ps = vqc_calloc((size_t)c.maxn, sizeof(pos));
    c.cdf = vqc_calloc((size_t)m->K + 1, 4);
    c.pmfw = vqc_calloc((size_t)m->K, 8);
    c.logits = vqc_calloc((size_t)c.maxn * m->K, 4);
    if (!ps || !c.cdf || !c.pmfw || !c.logits) e = 1;
    if (m->int8) {
        c.A = vqc_calloc((size_t)n4, (size_t)c.lda);
        c.acc = vqc_calloc((size_t)n4 * c.ldc, 4);
        c.t8a = vqc_calloc((size_t)c.maxn, (size_t)2 * C);
        if (!c.A || !c.acc || !c.t8a) e = 1;
    } else {
        c.P = vqc_calloc((size_t)c.maxn * maxK, sizeof(double));
        c.D = vqc_calloc((size_t)c.maxn * maxO, sizeof(double));
        c.t32a = vqc_calloc((size_t)c.maxn * 2 * C, 4);
        c.t32b = vqc_calloc((size_t)c.maxn * 2 * C, 4);
        if (!c.P || !c.D || !c.t32a || !c.t32b) e = 1;
    }
    if (e) {
        e = vqc_fail(err, VQC_ERR_INTERNAL, "out of memory");
        goto done;
    }
    for (int t = 0; t < ntiles; t++) {
        const vqc_slice *p = tiles[t].payload;
        if (vqc_rdec_init(&c.ts[t].dec, p->data, p->len)) {
            e = vqc_fail(err, VQC_ERR_FORMAT, "payload of tile %d is not a conforming range-coder stream: %s", tiles[t].number,
                         p->len == 0 ? "it is empty" : "its words end before the tile's indices do");
            goto done;
        }
    }
    const int steps = w + (L + 1) * (h - 1);
    for (int s = -L; s < steps; s++) {
        if (s >= 0) {
            int n = 0;
            for (int t = 0; t < ntiles; t++)
                for (int i = 0; i < h; i++) {
                    int j = s - (L + 1) * i;
                    if (j < 0) break;
                    if (j < w) ps[n++] = (pos){t, i, j};
                }
            if (n) {
                logits(&c, ps, n); /* int8: the trunk, once per step */
                for (int sg = 0; sg < S; sg++) { /* "Coding order", with stages */
                    if (m->int8) head(&c, sg, ps, n);
                    for (int r = 0; r < n; r++) {
                        tstate *st = &c.ts[ps[r].t];
                        vqc_pmf_from_logits(c.logits + (size_t)r * m->K, m->K, c.cdf, c.pmfw);
                        int k = vqc_rdec_decode(&st->dec, c.cdf, m->K);
                        if (k < 0) {
                            e = vqc_fail(err, VQC_ERR_FORMAT, "payload of tile %d is not a conforming range-coder stream: %s",
                                         tiles[ps[r].t].number,
                                         k == -1 ? "its value lies outside the coding interval"
                                                 : "its words end before the tile's indices do");
                            goto done;
                        }
                        tiles[ps[r].t].out[((size_t)ps[r].i * w + ps[r].j) * S + sg] = (uint16_t)k;
                    }
                }
                for (int r = 0; r < n; r++) { /* the trunk input E, once every stage of the position is known */
                    tstate *st = &c.ts[ps[r].t];
                    const int i = ps[r].i, j = ps[r].j;
                    const uint16_t *idx = tiles[ps[r].t].out + ((size_t)i * w + j) * S;
                    size_t off = ((size_t)(i + 1) * (w + 2) + j + 1) * C;
                    if (!m->int8) memcpy((int32_t *)st->emb + off, m->embed_x + (size_t)idx[0] * C, (size_t)C * 4);
                    else if (S == 1) memcpy((int8_t *)st->emb + off, m->embed_q + (size_t)idx[0] * C, (size_t)C);
                    else {
                        int8_t *E = (int8_t *)st->emb + off;
                        for (int k = 0; k < C; k++) {
                            int32_t v = 0;
                            for (int sg = 0; sg < S; sg++) v += m->embed_q[((size_t)sg * m->K + idx[sg]) * C + k];
                            E[k] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
                        }
                    }
                }
            }
        }
        for (int l = 0; l < L; l++) {
            int t = s + L - l;
            if (t < 0 || t >= steps) continue;
            int n = 0;
            for (int tt = 0; tt < ntiles; tt++)
                for (int i = 0; i < h; i++) {
                    int j = t - (L + 1) * i;
                    if (j < 0) break;
                    if (j < w) ps[n++] = (pos){tt, i, j};
                }
            if (n) vertical(&c, l, ps, n);
        }
    }
    for (int t = 0; t < ntiles; t++) {
        vqc_rdec *d = &c.ts[t].dec;
        if (d->pos < d->n) {
            e = vqc_fail(err, VQC_ERR_FORMAT,
                         "payload of tile %d is not a conforming range-coder stream: %u of its %u words are left over after the tile's last index",
                         tiles[t].number, d->n - d->pos, d->n);
            goto done;
        }
    }
done:
    free_states(&c);
    vqc_free(ps);
    vqc_free(c.cdf);
    vqc_free(c.pmfw);
    vqc_free(c.logits);
    vqc_free(c.A);
    vqc_free(c.acc);
    vqc_free(c.t8a);
    vqc_free(c.P);
    vqc_free(c.D);
    vqc_free(c.t32a);
    vqc_free(c.t32b);
    return e;
}
