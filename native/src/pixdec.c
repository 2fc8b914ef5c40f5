/* The VQ-VAE decoder (SPEC.md "VQ-VAE decoder", "VQ-VAE decoder, int8") on one region of the
 * index grid plus a margin that covers the receptive field (one latent position per 3x3
 * convolution and per residual block, plus one), so tiled decoding gives the pixels of a
 * whole-grid decode. */
#include "internal.h"

static inline int clampi(int64_t v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : (int)v; }

static inline void requant_row(int kernel, const vqc_qlayer *L, const int32_t *acc, int8_t *out, const int8_t *resid_in) {
    vqc_requant(kernel, acc, L->bias, L->mult, L->shift, L->lo, L->hi, L->m.O, resid_in ? L->resid : NULL, resid_in, out, NULL);
}

typedef struct {
    int kernel;
    uint8_t *A;   /* patches: rows x lda */
    int32_t *acc; /* rows x ldc */
    double *P, *D;
    int lda, ldc;
} scratch;

/* int8 'same' convolution of X [H][W][Ci] into Y [H][W][Co]; input kind s8 (in_u8 = 0, relu_in
 * applies max(x, 0) first) or u8; resid: the s8 map added with the layer's R (or NULL) */
static void qconv(scratch *s, const vqc_qlayer *L, int k, const int8_t *X, int H, int W, int Ci, int in_u8, int relu_in,
                  int8_t *Y, const int8_t *resid) {
    const int p = k / 2, Co = L->m.O;
    const uint8_t pad = in_u8 ? 0 : 0x80;
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            uint8_t *row = s->A + (size_t)x * s->lda;
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    uint8_t *d = row + (ky * k + kx) * Ci;
                    int sy = y + ky - p, sx = x + kx - p;
                    if (sy < 0 || sy >= H || sx < 0 || sx >= W) {
                        memset(d, pad, (size_t)Ci);
                        continue;
                    }
                    const int8_t *src = X + ((size_t)sy * W + sx) * Ci;
                    if (in_u8) memcpy(d, src, (size_t)Ci);
                    else if (relu_in) vqc_relu_x80(d, src, Ci);
                    else vqc_x80(d, src, Ci);
                }
        }
        vqc_gemm(s->kernel, &L->m, s->A, s->lda, W, s->acc, s->ldc);
        for (int x = 0; x < W; x++) {
            size_t o = ((size_t)y * W + x) * Co;
            requant_row(s->kernel, L, s->acc + (size_t)x * s->ldc, Y + o, resid ? resid + o : NULL);
        }
    }
}

/* profile exact: 'same' convolution of X [H][W][Ci] into Y, input rectified when relu_in */
static void xconv(scratch *s, const vqc_xconv *X_, const int32_t *X, int H, int W, int Ci, int relu_in, int32_t *Y) {
    const int k = X_->kh, p = k / 2, K = X_->K;
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            double *row = s->P + (size_t)x * K;
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    double *d = row + (ky * k + kx) * Ci;
                    int sy = y + ky - p, sx = x + kx - p;
                    if (sy < 0 || sy >= H || sx < 0 || sx >= W) {
                        for (int i = 0; i < Ci; i++) d[i] = 0;
                        continue;
                    }
                    const int32_t *src = X + ((size_t)sy * W + sx) * Ci;
                    for (int i = 0; i < Ci; i++) d[i] = relu_in && src[i] < 0 ? 0 : src[i];
                }
        }
        vqc_xapply(X_, s->P, W, s->D, Y + (size_t)y * W * X_->O);
    }
}

static void shuffle(const void *X, int H, int W, int C4, void *Y, int es) {
    const int c = C4 / 4;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++)
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++)
                    for (int ch = 0; ch < c; ch++)
                        memcpy((char *)Y + (((size_t)(2 * i + dy) * 2 * W + 2 * j + dx) * c + ch) * es,
                               (const char *)X + (((size_t)i * W + j) * C4 + 4 * ch + 2 * dy + dx) * es, (size_t)es);
}

int vqc_pixdec_region(const vqc_model *m, int kernel, const vqc_grid *grid, int grid_h, int grid_w, int tr0, int tr1,
                      int tc0, int tc1, uint8_t *dst, size_t coded_w, size_t coded_h, int grey, vqc_error *err) {
    int nres = 0, n3 = 0;
    for (int i = 0; i < m->n_ops; i++) {
        if (m->ops[i].kind == OP_RES) nres++;
        if (m->ops[i].kind == OP_CONV && m->ops[i].k == 3) n3++;
    }
    const int M = n3 + nres + 1;
    const int a0 = tr0 - M < 0 ? 0 : tr0 - M, a1 = tr1 + M > grid_h ? grid_h : tr1 + M;
    const int b0 = tc0 - M < 0 ? 0 : tc0 - M, b1 = tc1 + M > grid_w ? grid_w : tc1 + M;
    const int es = m->int8 ? 1 : 4;
    /* sizes: simulate the op list */
    size_t maxmap = (size_t)(a1 - a0) * (b1 - b0) * m->D;
    int H = a1 - a0, W = b1 - b0, ch = m->D, maxW = W, maxK = 9 * m->D, maxO = 12;
    for (int i = 0; i < m->n_ops; i++) {
        const vqc_dop *op = &m->ops[i];
        if (op->kind == OP_CONV || op->kind == OP_RES) {
            ch = op->cout;
            if (op->k * op->k * op->cin > maxK) maxK = op->k * op->k * op->cin;
            if (op->cout > maxO) maxO = op->cout;
        } else if (op->kind == OP_SHUFFLE) {
            H *= 2; W *= 2; ch /= 4;
        }
        if ((size_t)H * W * ch > maxmap) maxmap = (size_t)H * W * ch;
        if (W > maxW) maxW = W;
    }
    scratch s;
    memset(&s, 0, sizeof s);
    s.kernel = kernel;
    s.lda = (maxK + 63) / 64 * 64;
    s.ldc = (maxO + 31) / 32 * 32;
    int W4 = (maxW + 31) / 32 * 32; /* whole row blocks of the SIMD kernels */
    void *x = vqc_calloc(maxmap, (size_t)es), *y = vqc_calloc(maxmap, (size_t)es), *z = vqc_calloc(maxmap, (size_t)es);
    int e = 0;
    if (m->int8) {
        s.A = vqc_calloc((size_t)W4, (size_t)s.lda);
        s.acc = vqc_calloc((size_t)W4 * s.ldc, 4);
        if (!s.A || !s.acc) e = 1;
    } else {
        s.P = vqc_calloc((size_t)maxW * maxK, sizeof(double));
        s.D = vqc_calloc((size_t)maxW * maxO, sizeof(double));
        if (!s.P || !s.D) e = 1;
    }
    if (!x || !y || !z || e) {
        e = vqc_fail(err, VQC_ERR_INTERNAL, "out of memory");
        goto done;
    }
    H = a1 - a0;
    W = b1 - b0;
    ch = m->D;
    for (int r = a0; r < a1; r++)
        for (int c = b0; c < b1; c++) {
            const uint16_t *idx = vqc_grid_at(grid, r, c);
            size_t o = ((size_t)(r - a0) * W + (c - b0)) * ch;
            if (!m->int8) memcpy((int32_t *)x + o, m->codebook_x + (size_t)idx[0] * ch, (size_t)ch * 4);
            else if (grid->stages == 1) memcpy((int8_t *)x + o, m->codebook_q + (size_t)idx[0] * ch, (size_t)ch);
            else /* arch rvq: clamp of the summed stage codewords */
                for (int d = 0; d < ch; d++) {
                    int32_t v = 0;
                    for (int sg = 0; sg < grid->stages; sg++) v += m->codebook_q[((size_t)sg * m->K + idx[sg]) * ch + d];
                    ((int8_t *)x)[o + d] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
                }
        }
    for (int i = 0; i < m->n_ops; i++) {
        const vqc_dop *op = &m->ops[i];
        void *t;
        switch (op->kind) {
        case OP_CONV:
            if (m->int8) qconv(&s, &op->q, op->k, x, H, W, ch, 0, 0, y, NULL);
            else xconv(&s, &op->x, x, H, W, ch, 0, y);
            ch = op->cout;
            t = x; x = y; y = t;
            break;
        case OP_RES:
            if (m->int8) {
                qconv(&s, &op->q, 3, x, H, W, ch, 0, 1, z, NULL);     /* u8 */
                qconv(&s, &op->q2, 1, z, H, W, ch, 1, 0, y, x);       /* s8, + R x */
                t = x; x = y; y = t;
            } else {
                xconv(&s, &op->x, x, H, W, ch, 1, z);
                xconv(&s, &op->x2, z, H, W, ch, 1, y);
                int32_t *xi = x, *yi = y;
                for (size_t k = 0; k < (size_t)H * W * ch; k++)
                    xi[k] = clampi((int64_t)xi[k] + yi[k], -VQC_ACT_MAX, VQC_ACT_MAX);
            }
            break;
        case OP_SHUFFLE:
            shuffle(x, H, W, ch, y, es);
            H *= 2; W *= 2; ch /= 4;
            t = x; x = y; y = t;
            break;
        case OP_RELU:
            if (m->int8) {
                int8_t *xi = x;
                for (size_t k = 0; k < (size_t)H * W * ch; k++) xi[k] = xi[k] < 0 ? 0 : xi[k];
            } else {
                int32_t *xi = x;
                for (size_t k = 0; k < (size_t)H * W * ch; k++) xi[k] = xi[k] < 0 ? 0 : xi[k];
            }
            break;
        }
    }
    /* x: H x W x 3 pixels of latent rows a0..a1, cols b0..b1 */
    {
        const int f = m->f;
        size_t y0 = (size_t)tr0 * f, y1 = (size_t)tr1 * f, x0 = (size_t)tc0 * f, x1 = (size_t)tc1 * f;
        if (y1 > coded_h) y1 = coded_h;
        if (x1 > coded_w) x1 = coded_w;
        const int chn = grey ? 1 : 3;
        for (size_t py = y0; py < y1; py++)
            for (size_t px = x0; px < x1; px++) {
                size_t o = ((py - (size_t)a0 * f) * W + (px - (size_t)b0 * f)) * 3;
                int rgb[3];
                for (int k = 0; k < 3; k++) {
                    if (m->int8) rgb[k] = ((uint8_t *)x)[o + k];
                    else rgb[k] = clampi((255 * (int64_t)((int32_t *)x)[o + k] + 32768) >> 8, 0, 255);
                }
                uint8_t *d = dst + (py * coded_w + px) * chn;
                if (grey) d[0] = (uint8_t)((rgb[0] + rgb[1] + rgb[2] + 1) / 3);
                else d[0] = (uint8_t)rgb[0], d[1] = (uint8_t)rgb[1], d[2] = (uint8_t)rgb[2];
            }
    }
done:
    vqc_free(x);
    vqc_free(y);
    vqc_free(z);
    vqc_free(s.A);
    vqc_free(s.acc);
    vqc_free(s.P);
    vqc_free(s.D);
    return e;
}
