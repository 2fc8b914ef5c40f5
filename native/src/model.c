/* Model file (SPEC.md "Model file"): safetensors header, tensors, profile exact ("Integer
 * arithmetic") and profile int8 ("Profile int8"), with every check of the spec. */
#include <math.h>
#include <stdio.h>

#include "internal.h"
#include "json.h"

enum { DT_F16, DT_I8, DT_I32 };

typedef struct {
    const char *name;
    int dtype, ndim;
    int64_t shape[8];
    const uint8_t *data;
    size_t numel;
    int read;
} tensor;

typedef struct {
    tensor *t;
    int n;
    vqc_error *err;
    vqc_model *m;
    const int64_t *extra_bound; /* [O] added to the next qlayer's accumulator bound (rvq out1_s's conditioning), or NULL */
} mctx;

static tensor *find(mctx *c, const char *name) {
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->t[i].name, name) == 0) {
            c->t[i].read = 1;
            return &c->t[i];
        }
    return NULL;
}

static const char *dtname(int d) { return d == DT_F16 ? "F16" : d == DT_I8 ? "I8" : "I32"; }

/* tensor of that dtype and shape, else a model error */
static tensor *need(mctx *c, const char *name, int dtype, int ndim, const int64_t *shape) {
    tensor *t = find(c, name);
    int ok = t && t->dtype == dtype && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[96];
        int k = snprintf(want, sizeof want, "%s [", dtname(dtype));
        for (int i = 0; i < ndim && k < 80; i++) k += snprintf(want + k, sizeof want - (size_t)k, i ? ", %lld" : "%lld", (long long)shape[i]);
        vqc_fail(c->err, VQC_ERR_MODEL, "tensor %s: expected %s], got %s", name, want, t ? "another dtype or shape" : "missing");
        return NULL;
    }
    return t;
}

static int32_t i32at(const tensor *t, size_t i) {
    const uint8_t *p = t->data + 4 * i;
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

static double f16at(const tensor *t, size_t i) {
    uint16_t h = (uint16_t)(t->data[2 * i] | t->data[2 * i + 1] << 8);
    int s = h >> 15, e = (h >> 10) & 31, f = h & 1023;
    double v;
    if (e == 0) v = ldexp((double)f, -24);
    else if (e == 31) v = f ? NAN : INFINITY;
    else v = ldexp((double)(f + 1024), e - 25);
    return s ? -v : v;
}

/* ------------------------------------------------------------------ profile int8 */

/* I32 tensor [n] with values in [lo, hi] -> out (may be NULL to only check) */
static int i32vec(mctx *c, const char *name, int64_t n, int64_t lo, int64_t hi, int32_t **out) {
    int64_t shape[1] = {n};
    tensor *t = need(c, name, DT_I32, 1, shape);
    if (!t) return VQC_ERR_MODEL;
    int32_t *v = vqc_alloc((size_t)n * 4);
    if (!v) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        v[i] = i32at(t, (size_t)i);
        if (v[i] < lo || v[i] > hi) {
            vqc_free(v);
            return vqc_fail(c->err, VQC_ERR_MODEL, "tensor %s has values outside [%lld, %lld]", name, (long long)lo, (long long)hi);
        }
    }
    *out = v;
    return 0;
}

static int i32scalar(mctx *c, const char *name, int lo, int hi, int *out) {
    int32_t *v;
    int e = i32vec(c, name, 1, lo, hi, &v);
    if (e) return e;
    *out = v[0];
    vqc_free(v);
    return 0;
}

typedef struct {
    const char *name;
    int I, kh, kw, in_u8;
} qpart;

/* an int8 layer: its own weight part (and at most one weight-only part added into it) */
static int qlayer(mctx *c, vqc_qlayer *L, const char *name, int O, const qpart *parts, int nparts, int lo, int hi,
                  int resid) {
    char buf[160];
    int e, K = 0;
    memset(L, 0, sizeof *L);
    for (int p = 0; p < nparts; p++) K += parts[p].I * parts[p].kh * parts[p].kw;
    if (vqc_qmat_init(&L->m, O, K)) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    snprintf(buf, sizeof buf, "%s.bias", name);
    if ((e = i32vec(c, buf, O, INT32_MIN, INT32_MAX, &L->bias))) return e;
    snprintf(buf, sizeof buf, "%s.mult", name);
    if ((e = i32vec(c, buf, O, 0, 65535, &L->mult))) return e;
    snprintf(buf, sizeof buf, "%s.shift", name);
    if ((e = i32scalar(c, buf, 1, 40, &L->shift))) return e;
    if (resid) {
        snprintf(buf, sizeof buf, "%s.resid", name);
        if ((e = i32vec(c, buf, O, INT32_MIN, INT32_MAX, &L->resid))) return e;
    }
    L->lo = lo;
    L->hi = hi;
    int64_t *bound = vqc_calloc((size_t)O, sizeof(int64_t));
    int64_t *fold = vqc_calloc((size_t)O, sizeof(int64_t));
    if (!bound || !fold) {
        vqc_free(bound);
        vqc_free(fold);
        return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    }
    int off = 0;
    for (int p = 0; p < nparts && !e; p++) {
        const qpart *q = &parts[p];
        int64_t shape[4] = {O, q->I, q->kh, q->kw};
        snprintf(buf, sizeof buf, "%s.weight", q->name);
        tensor *t = need(c, buf, DT_I8, 4, shape);
        if (!t) {
            e = VQC_ERR_MODEL;
            break;
        }
        {
            const int8_t *src = (const int8_t *)t->data;
            int8_t *W = L->m.w;
            const int Kp = L->m.Kp, I = q->I, khw = q->kh * q->kw, amax = q->in_u8 ? 255 : 127, s8in = !q->in_u8;
            int bad = 0;
            for (int o = 0; o < O; o++) {
                int8_t *dst = W + (size_t)o * Kp + off; /* patch order (ky, kx, i) from [i][ky][kx] */
                const int8_t *so = src + (size_t)o * I * khw;
                int64_t sabs = 0, sum = 0;
                for (int i = 0; i < I; i++)
                    for (int kk = 0; kk < khw; kk++) {
                        int v = so[i * khw + kk];
                        bad |= (v < -63) | (v > 63);
                        dst[kk * I + i] = (int8_t)v;
                        sabs += v < 0 ? -v : v;
                        sum += v;
                    }
                bound[o] += amax * sabs;
                if (s8in) fold[o] += sum;
            }
            if (bad) e = vqc_fail(c->err, VQC_ERR_MODEL, "tensor %s has values outside [-63, 63]", buf);
        }
        off += q->I * q->kh * q->kw;
    }
    for (int o = 0; o < O && !e; o++) {
        int64_t b = bound[o] + (L->bias[o] < 0 ? -(int64_t)L->bias[o] : L->bias[o]);
        if (resid) b += 127 * (L->resid[o] < 0 ? -(int64_t)L->resid[o] : L->resid[o]);
        if (c->extra_bound) b += c->extra_bound[o];
        if (b >= (1 << 24))
            e = vqc_fail(c->err, VQC_ERR_MODEL, "%s: an accumulator can reach %lld, not below 2**24 (SPEC.md, profile int8, accumulator bound)",
                         name, (long long)b);
        else /* |fold| < 2^17 and |B| < 2^24: the folded bias fits int32 */
            L->bias[o] = (int32_t)(L->bias[o] - 128 * fold[o]);
    }
    vqc_free(bound);
    vqc_free(fold);
    if (!e && vqc_qmat_pack(&L->m)) e = vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    return e;
}

static void qlayer_free(vqc_qlayer *L) {
    vqc_qmat_free(&L->m);
    vqc_free(L->bias);
    vqc_free(L->mult);
    vqc_free(L->resid);
}

/* s8 table I8 [S, K, D] (rvq) or [K, D] (S = 0: arch vq) */
static int s8table(mctx *c, const char *name, int S, int K, int D, int8_t **out) {
    int64_t shape[3] = {S, K, D};
    tensor *t = S ? need(c, name, DT_I8, 3, shape) : need(c, name, DT_I8, 2, shape + 1);
    if (!t) return VQC_ERR_MODEL;
    size_t numel = (size_t)(S ? S : 1) * K * D;
    int8_t *v = vqc_alloc(numel);
    if (!v) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    for (size_t i = 0; i < numel; i++) {
        v[i] = (int8_t)t->data[i];
        if (v[i] == -128) {
            vqc_free(v);
            return vqc_fail(c->err, VQC_ERR_MODEL, "tensor %s has values outside [-127, 127]", name);
        }
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ profile exact */

static int xconv(mctx *c, vqc_xconv *X, const char *name, int O, int I, int kh, int kw) {
    char buf[160];
    int64_t ws[4] = {O, I, kh, kw}, bs[1] = {O};
    memset(X, 0, sizeof *X);
    snprintf(buf, sizeof buf, "%s.weight", name);
    tensor *tw = need(c, buf, DT_F16, 4, ws);
    if (!tw) return VQC_ERR_MODEL;
    snprintf(buf, sizeof buf, "%s.bias", name);
    tensor *tb = need(c, buf, DT_F16, 1, bs);
    if (!tb) return VQC_ERR_MODEL;
    int K = I * kh * kw;
    if (K > (1 << 14)) return vqc_fail(c->err, VQC_ERR_MODEL, "%s: fan-in %d is above 16384", name, K);
    double peak = 0;
    for (size_t i = 0; i < tw->numel; i++) {
        double v = f16at(tw, i);
        if (!isfinite(v)) return vqc_fail(c->err, VQC_ERR_MODEL, "%s: weights are not finite", name);
        if (fabs(v) > peak) peak = fabs(v);
    }
    for (size_t i = 0; i < tb->numel; i++)
        if (!isfinite(f16at(tb, i))) return vqc_fail(c->err, VQC_ERR_MODEL, "%s: weights are not finite", name);
    int ex = 0;
    if (peak > 0) frexp(peak, &ex);
    X->shift = peak == 0 ? 0 : 11 - ex;
    X->O = O; X->K = K; X->kh = kh; X->kw = kw;
    X->w = vqc_alloc((size_t)K * O * sizeof(double));
    X->bias = vqc_alloc((size_t)O * sizeof(int64_t));
    if (!X->w || !X->bias) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++) {
                    double v = f16at(tw, (((size_t)o * I + i) * kh + ky) * kw + kx);
                    X->w[((size_t)(ky * kw + kx) * I + i) * O + o] = nearbyint(ldexp(v, X->shift));
                }
    for (int o = 0; o < O; o++) {
        double b = nearbyint(ldexp(f16at(tb, (size_t)o), X->shift + 8));
        if (fabs(b) >= 35184372088832.0) return vqc_fail(c->err, VQC_ERR_MODEL, "%s: integer bias is not below 2**45", name);
        X->bias[o] = (int64_t)b;
    }
    return 0;
}

static void xconv_free(vqc_xconv *X) {
    vqc_free(X->w);
    vqc_free(X->bias);
}

static int xtable(mctx *c, const char *name, int K, int D, int32_t **out) {
    int64_t shape[2] = {K, D};
    tensor *t = need(c, name, DT_F16, 2, shape);
    if (!t) return VQC_ERR_MODEL;
    int32_t *v = vqc_alloc((size_t)K * D * 4);
    if (!v) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    for (size_t i = 0; i < (size_t)K * D; i++) {
        double x = f16at(t, i);
        if (isnan(x)) {
            vqc_free(v);
            return vqc_fail(c->err, VQC_ERR_MODEL, "%s: values are not finite", name);
        }
        x = nearbyint(x * 256.0);
        if (x > VQC_ACT_MAX) x = VQC_ACT_MAX;
        if (x < -VQC_ACT_MAX) x = -VQC_ACT_MAX;
        v[i] = (int32_t)x;
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ networks */

/* arch rvq: the head of stage s (SPEC "Model file, arch rvq", "Prior network, arch rvq, int8") */
static int rvq_head(mctx *c, int s) {
    vqc_model *m = c->m;
    vqc_head *hd = &m->heads[s];
    const int C = m->C, K = m->K;
    char n1[128], n2[128];
    int e = 0;
    int64_t *extra = NULL;
    if (s > 0) {
        int64_t cs[3] = {s, K, C}, ms[2] = {s, C};
        snprintf(n1, sizeof n1, "int8.prior.heads.%d.cond", s);
        tensor *tc = need(c, n1, DT_I8, 3, cs);
        if (!tc) return VQC_ERR_MODEL;
        snprintf(n2, sizeof n2, "int8.prior.heads.%d.cond_mult", s);
        tensor *tm = need(c, n2, DT_I32, 2, ms);
        if (!tm) return VQC_ERR_MODEL;
        for (size_t i = 0; i < (size_t)s * K * C; i++)
            if ((int8_t)tc->data[i] == -128) return vqc_fail(c->err, VQC_ERR_MODEL, "tensor %s has values outside [-127, 127]", n1);
        extra = vqc_calloc((size_t)C, sizeof(int64_t));
        hd->cond = vqc_alloc((size_t)s * K * C * 4);
        if (!extra || !hd->cond) {
            vqc_free(extra);
            return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
        }
        for (int t = 0; t < s && !e; t++)
            for (int o = 0; o < C; o++) {
                int32_t mu = i32at(tm, (size_t)t * C + o);
                if (mu < 0 || mu > 65535) {
                    e = vqc_fail(c->err, VQC_ERR_MODEL, "tensor %s has values outside [0, 65535]", n2);
                    break;
                }
                extra[o] += 127 * (int64_t)mu;
                for (int k = 0; k < K; k++) {
                    size_t i = ((size_t)t * K + k) * C + o;
                    hd->cond[i] = mu * (int32_t)(int8_t)tc->data[i]; /* |.| <= 127 * 65535 */
                }
            }
    }
    snprintf(n1, sizeof n1, "int8.prior.heads.%d.out1", s);
    snprintf(n2, sizeof n2, "int8.prior.heads.%d.out2", s);
    qpart o1[1] = {{n1, C, 1, 1, 0}}, o2[1] = {{n2, C, 1, 1, 1}};
    c->extra_bound = extra;
    if (!e) e = qlayer(c, &hd->out1, n1, C, o1, 1, 0, 255, 0);
    c->extra_bound = NULL;
    vqc_free(extra);
    if (!e) e = qlayer(c, &hd->out2, n2, K, o2, 1, -VQC_ACT_MAX, VQC_ACT_MAX, 0);
    return e;
}

static int build_prior(mctx *c) {
    vqc_model *m = c->m;
    int C = m->C, L = m->L, e;
    char p[96], n1[128], n2[128];
    m->layers = vqc_calloc((size_t)L, sizeof *m->layers);
    if (!m->layers) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    if (m->int8) {
        if ((e = s8table(c, "int8.prior.embed", m->rvq ? m->stages : 0, m->K, C, &m->embed_q))) return e;
        for (int l = 0; l < L; l++) {
            vqc_player *P = &m->layers[l];
            int k = l == 0 ? 1 : 2;
            snprintf(p, sizeof p, "int8.prior.layers.%d", l);
            snprintf(n1, sizeof n1, "%s.v", p);
            qpart pv[1] = {{n1, C, k, 3, 0}};
            if ((e = qlayer(c, &P->v, n1, 2 * C, pv, 1, -127, 127, 0))) return e;
            snprintf(n1, sizeof n1, "%s.v_gate", p);
            if ((e = i32scalar(c, n1, 1, 127, &P->tv))) return e;
            snprintf(n1, sizeof n1, "%s.h", p);
            snprintf(n2, sizeof n2, "%s.v2h", p);
            qpart ph[2] = {{n1, C, 1, k, 0}, {n2, 2 * C, 1, 1, 0}};
            if ((e = qlayer(c, &P->h, n1, 2 * C, ph, 2, -127, 127, 0))) return e;
            snprintf(n1, sizeof n1, "%s.h_gate", p);
            if ((e = i32scalar(c, n1, 1, 127, &P->th))) return e;
            snprintf(n1, sizeof n1, "%s.res", p);
            qpart pr[1] = {{n1, C, 1, 1, 0}};
            if ((e = qlayer(c, &P->res, n1, C, pr, 1, -127, 127, l > 0))) return e;
        }
        m->heads = vqc_calloc((size_t)m->stages, sizeof *m->heads);
        if (!m->heads) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
        if (!m->rvq) {
            qpart o1[1] = {{"int8.prior.out1", C, 1, 1, 0}}, o2[1] = {{"int8.prior.out2", C, 1, 1, 1}};
            if ((e = qlayer(c, &m->heads[0].out1, "int8.prior.out1", C, o1, 1, 0, 255, 0))) return e;
            if ((e = qlayer(c, &m->heads[0].out2, "int8.prior.out2", m->K, o2, 1, -VQC_ACT_MAX, VQC_ACT_MAX, 0))) return e;
        } else
            for (int s = 0; s < m->stages; s++)
                if ((e = rvq_head(c, s))) return e;
    } else {
        if ((e = xtable(c, "prior.embed.weight", m->K, C, &m->embed_x))) return e;
        for (int l = 0; l < L; l++) {
            vqc_player *P = &m->layers[l];
            int k = l == 0 ? 1 : 2;
            snprintf(p, sizeof p, "prior.layers.%d", l);
            snprintf(n1, sizeof n1, "%s.v", p);
            if ((e = xconv(c, &P->xv, n1, 2 * C, C, k, 3))) return e;
            snprintf(n1, sizeof n1, "%s.v2h", p);
            if ((e = xconv(c, &P->xv2h, n1, 2 * C, 2 * C, 1, 1))) return e;
            snprintf(n1, sizeof n1, "%s.h", p);
            if ((e = xconv(c, &P->xh, n1, 2 * C, C, 1, k))) return e;
            snprintf(n1, sizeof n1, "%s.res", p);
            if ((e = xconv(c, &P->xres, n1, C, C, 1, 1))) return e;
        }
        if ((e = xconv(c, &m->xout1, "prior.out1", C, C, 1, 1))) return e;
        if ((e = xconv(c, &m->xout2, "prior.out2", m->K, C, 1, 1))) return e;
    }
    return 0;
}

static int build_decoder(mctx *c) {
    vqc_model *m = c->m;
    int e, slot = 0, log2f = 0;
    while ((1 << log2f) < m->f) log2f++;
    int nops = 1 + m->n_res + 3 * (log2f - 2) + 6;
    m->ops = vqc_calloc((size_t)nops, sizeof *m->ops);
    if (!m->ops) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    const char *pre = m->int8 ? "int8.decoder.net" : "vqvae.decoder.net";
    char n1[128], n2[128];
#define CONV(ci, co, kk, u8out)                                                                          \
    do {                                                                                                 \
        vqc_dop *op = &m->ops[m->n_ops++];                                                              \
        op->kind = OP_CONV; op->cin = ci; op->cout = co; op->k = kk;                                   \
        snprintf(n1, sizeof n1, "%s.%d", pre, slot++);                                                  \
        if (m->int8) {                                                                                   \
            qpart q[1] = {{n1, ci, kk, kk, 0}};                                                          \
            e = qlayer(c, &op->q, n1, co, q, 1, (u8out) ? 0 : -127, (u8out) ? 255 : 127, 0);            \
        } else e = xconv(c, &op->x, n1, co, ci, kk, kk);                                                \
        if (e) return e;                                                                                 \
    } while (0)
#define RES(ch)                                                                                          \
    do {                                                                                                 \
        vqc_dop *op = &m->ops[m->n_ops++];                                                              \
        op->kind = OP_RES; op->cin = op->cout = ch; op->k = 3;                                          \
        snprintf(n1, sizeof n1, "%s.%d.conv3", pre, slot);                                              \
        snprintf(n2, sizeof n2, "%s.%d.conv1", pre, slot++);                                            \
        if (m->int8) {                                                                                   \
            qpart q3[1] = {{n1, ch, 3, 3, 0}}, q1[1] = {{n2, ch, 1, 1, 1}};                              \
            if ((e = qlayer(c, &op->q, n1, ch, q3, 1, 0, 255, 0))) return e;                            \
            e = qlayer(c, &op->q2, n2, ch, q1, 1, -127, 127, 1);                                         \
        } else if (!(e = xconv(c, &op->x, n1, ch, ch, 3, 3))) e = xconv(c, &op->x2, n2, ch, ch, 1, 1); \
        if (e) return e;                                                                                 \
    } while (0)
#define OTHER(kd)                                      \
    do {                                               \
        m->ops[m->n_ops++].kind = kd;                  \
        slot++;                                        \
    } while (0)
    CONV(m->D, m->c_hi, 3, 0);
    for (int i = 0; i < m->n_res; i++) RES(m->c_hi);
    for (int i = 0; i < log2f - 2; i++) {
        CONV(m->c_hi, 4 * m->c_hi, 1, 0);
        OTHER(OP_SHUFFLE);
        RES(m->c_hi);
    }
    CONV(m->c_hi, 4 * m->c_lo, 1, 0);
    OTHER(OP_SHUFFLE);
    RES(m->c_lo);
    OTHER(OP_RELU);
    CONV(m->c_lo, 12, 3, 1);
    OTHER(OP_SHUFFLE);
#undef CONV
#undef RES
#undef OTHER
    if (m->int8) return s8table(c, "int8.decoder.codebook", m->rvq ? m->stages : 0, m->K, m->D, &m->codebook_q);
    return xtable(c, "vqvae.quantizer.codebook", m->K, m->D, &m->codebook_x);
}

/* ------------------------------------------------------------------ file */

static int int_field(mctx *c, const jdoc *doc, int obj, const char *cfg, const char *key, int64_t lo, int64_t hi, int *out) {
    int i = json_get(doc, obj, key);
    if (i < 0 || doc->nodes[i].type != J_NUM || !doc->nodes[i].isint || doc->nodes[i].num < lo || doc->nodes[i].num > hi)
        return vqc_fail(c->err, VQC_ERR_MODEL, "model config %s.%s is not an integer in %lld..%lld", cfg, key, (long long)lo,
                        (long long)hi);
    *out = (int)doc->nodes[i].num;
    return 0;
}

static int parse_config(mctx *c, const jdoc *doc, int meta, const char *key, jdoc *cfg) {
    char msg[200];
    int i = json_get(doc, meta, key);
    if (i < 0 || doc->nodes[i].type != J_STR) return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (no metadata %s)", key);
    if (json_parse(doc->nodes[i].str, doc->nodes[i].slen, cfg, msg, sizeof msg))
        return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (%s: %s)", key, msg);
    if (cfg->nodes[0].type != J_OBJ) {
        json_free(cfg);
        return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (%s is not an object)", key);
    }
    return 0;
}

static int load(mctx *c, const uint8_t *data, size_t n, jdoc *doc) {
    vqc_model *m = c->m;
    int e;
    char msg[200];
    if (n < 8) return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (shorter than 8 bytes)");
    uint64_t hn = 0;
    for (int i = 0; i < 8; i++) hn |= (uint64_t)data[i] << (8 * i);
    if (hn > n - 8) return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (header of %llu bytes)", (unsigned long long)hn);
    if (json_parse((const char *)data + 8, (size_t)hn, doc, msg, sizeof msg))
        return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (%s)", msg);
    const uint8_t *base = data + 8 + hn;
    size_t dsize = n - 8 - (size_t)hn;
    if (doc->nodes[0].type != J_OBJ) return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (header is not an object)");
    int count = 0;
    for (int k = doc->nodes[0].child; k >= 0; k = doc->nodes[k].next) count++;
    c->t = vqc_calloc((size_t)count + 1, sizeof(tensor));
    if (!c->t) return vqc_fail(c->err, VQC_ERR_INTERNAL, "out of memory");
    int meta = -1;
    for (int k = doc->nodes[0].child; k >= 0; k = doc->nodes[k].next) {
        const jnode *nd = &doc->nodes[k];
        if (strcmp(nd->key, "__metadata__") == 0) {
            if (nd->type != J_OBJ) return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (__metadata__)");
            for (int v = nd->child; v >= 0; v = doc->nodes[v].next)
                if (doc->nodes[v].type != J_STR) return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (metadata value is not a string)");
            meta = k;
            continue;
        }
        for (int i = 0; i < c->n; i++)
            if (strcmp(c->t[i].name, nd->key) == 0)
                return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (tensor %s twice)", nd->key);
        tensor *t = &c->t[c->n++];
        t->name = nd->key;
        int dt = json_get(doc, k, "dtype"), sh = json_get(doc, k, "shape"), off = json_get(doc, k, "data_offsets");
        if (nd->type != J_OBJ || dt < 0 || sh < 0 || off < 0 || doc->nodes[dt].type != J_STR || doc->nodes[sh].type != J_ARR ||
            doc->nodes[off].type != J_ARR)
            return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (tensor %s)", nd->key);
        const char *ds = doc->nodes[dt].str;
        int size;
        if (!strcmp(ds, "F16")) t->dtype = DT_F16, size = 2;
        else if (!strcmp(ds, "I8")) t->dtype = DT_I8, size = 1;
        else if (!strcmp(ds, "I32")) t->dtype = DT_I32, size = 4;
        else t->dtype = -1, size = 1; /* another dtype: fine unless the decoder reads this tensor */
        uint64_t numel = 1;
        for (int s = doc->nodes[sh].child; s >= 0; s = doc->nodes[s].next) {
            const jnode *d = &doc->nodes[s];
            if (d->type != J_NUM || !d->isint || d->num < 0 || t->ndim >= 8)
                return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (shape of %s)", nd->key);
            t->shape[t->ndim++] = d->num;
            if (d->num && numel > (UINT64_C(1) << 40) / (uint64_t)d->num)
                return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (shape of %s)", nd->key);
            numel *= (uint64_t)d->num;
        }
        int b = doc->nodes[off].child, en = b >= 0 ? doc->nodes[b].next : -1;
        if (b < 0 || en < 0 || doc->nodes[en].next >= 0 || doc->nodes[b].type != J_NUM || !doc->nodes[b].isint ||
            doc->nodes[en].type != J_NUM || !doc->nodes[en].isint)
            return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (data_offsets of %s)", nd->key);
        int64_t bo = doc->nodes[b].num, eo = doc->nodes[en].num;
        if (bo < 0 || eo < bo || (uint64_t)eo > dsize || (uint64_t)(eo - bo) != numel * (uint64_t)size)
            return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (data_offsets of %s)", nd->key);
        t->data = base + bo;
        t->numel = (size_t)numel;
    }
    if (meta < 0) return vqc_fail(c->err, VQC_ERR_MODEL, "model file is malformed (no __metadata__)");
    int arch = json_get(doc, meta, "arch"); /* absent or "vq"; "rvq" (SPEC 1.3, profile int8 only) */
    m->rvq = arch >= 0 && !strcmp(doc->nodes[arch].str, "rvq");
    m->stages = 1;
    if (arch >= 0 && strcmp(doc->nodes[arch].str, "vq") && !m->rvq)
        return vqc_fail(c->err, VQC_ERR_MODEL, "model file has the architecture '%.40s', which this decoder does not know",
                        doc->nodes[arch].str);
    int prof = json_get(doc, meta, "profile");
    m->int8 = 0;
    if (prof >= 0) {
        const char *ps = doc->nodes[prof].str;
        if (!strcmp(ps, "int8")) m->int8 = 1;
        else if (strcmp(ps, "exact"))
            return vqc_fail(c->err, VQC_ERR_MODEL, "model file has the arithmetic profile '%.40s', which this decoder does not know", ps);
    }
    if (m->rvq && !m->int8)
        return vqc_fail(c->err, VQC_ERR_MODEL, "model file has the architecture 'rvq' with profile '%s' (SPEC.md: rvq is int8 only)",
                        m->int8 ? "int8" : "exact");
    int nm = json_get(doc, meta, "name");
    if (nm >= 0) snprintf(m->name, sizeof m->name, "%s", doc->nodes[nm].str);
    jdoc vc, pc;
    if ((e = parse_config(c, doc, meta, "vqvae_config", &vc))) return e;
    if ((e = parse_config(c, doc, meta, "prior_config", &pc))) {
        json_free(&vc);
        return e;
    }
    int pk = 0;
    if (!(e = int_field(c, &pc, 0, "prior_config", "K", 2, 1 << 16, &pk)) &&
        !(e = int_field(c, &pc, 0, "prior_config", "channels", 1, 1 << 12, &m->C)) &&
        !(e = int_field(c, &pc, 0, "prior_config", "layers", 1, 64, &m->L)) &&
        !(e = int_field(c, &vc, 0, "vqvae_config", "f", 4, 1 << 10, &m->f)) &&
        !(e = int_field(c, &vc, 0, "vqvae_config", "K", 2, 1 << 16, &m->K)) &&
        !(e = int_field(c, &vc, 0, "vqvae_config", "D", 1, 1 << 12, &m->D)) &&
        !(e = int_field(c, &vc, 0, "vqvae_config", "c_lo", 1, 1 << 12, &m->c_lo)) &&
        !(e = int_field(c, &vc, 0, "vqvae_config", "c_hi", 1, 1 << 12, &m->c_hi)) &&
        !(e = int_field(c, &vc, 0, "vqvae_config", "n_res", 0, 64, &m->n_res))) {
        if (m->f & (m->f - 1)) e = vqc_fail(c->err, VQC_ERR_MODEL, "model config f=%d is not a power of two", m->f);
    }
    if (!e && m->rvq) {
        int vs = 0;
        if (!(e = int_field(c, &vc, 0, "vqvae_config", "stages", 1, 8, &vs)) &&
            !(e = int_field(c, &pc, 0, "prior_config", "stages", 1, 8, &m->stages)) && vs != m->stages)
            e = vqc_fail(c->err, VQC_ERR_MODEL, "model config stages differ: vqvae_config %d, prior_config %d", vs, m->stages);
    }
    json_free(&vc);
    json_free(&pc);
    if (e) return e;
    if ((e = build_prior(c))) return e;
    if ((e = build_decoder(c))) return e;
    if (pk != m->K) return vqc_fail(c->err, VQC_ERR_MODEL, "prior K=%d differs from codebook K=%d", pk, m->K);
    if (m->int8)
        for (int i = 0; i < c->n; i++)
            if (!c->t[i].read && (!strncmp(c->t[i].name, "int8.prior.", 11) || !strncmp(c->t[i].name, "int8.decoder.", 13)))
                return vqc_fail(c->err, VQC_ERR_MODEL, "unexpected tensor %s (SPEC.md, profile int8)", c->t[i].name);
    return 0;
}

int vqc_model_load(const uint8_t *data, size_t n, vqc_model **out, vqc_error *err) {
    vqc_error dummy;
    if (!err) err = &dummy;
    *out = NULL;
    vqc_model *m = vqc_calloc(1, sizeof *m);
    if (!m) return vqc_fail(err, VQC_ERR_INTERNAL, "out of memory");
    uint8_t h[32];
    vqc_sha256(data, n, h);
    memcpy(m->id, h, 8);
    mctx c = {NULL, 0, err, m, NULL};
    jdoc doc;
    memset(&doc, 0, sizeof doc);
    int e = load(&c, data, n, &doc);
    json_free(&doc);
    vqc_free(c.t);
    if (e) {
        vqc_model_free(m);
        return e;
    }
    *out = m;
    return 0;
}

void vqc_model_free(vqc_model *m) {
    if (!m) return;
    vqc_free(m->embed_q);
    vqc_free(m->embed_x);
    vqc_free(m->codebook_q);
    vqc_free(m->codebook_x);
    if (m->layers)
        for (int l = 0; l < m->L; l++) {
            vqc_player *P = &m->layers[l];
            qlayer_free(&P->v); qlayer_free(&P->h); qlayer_free(&P->res);
            xconv_free(&P->xv); xconv_free(&P->xv2h); xconv_free(&P->xh); xconv_free(&P->xres);
        }
    vqc_free(m->layers);
    if (m->heads)
        for (int s = 0; s < m->stages; s++) {
            qlayer_free(&m->heads[s].out1); qlayer_free(&m->heads[s].out2);
            vqc_free(m->heads[s].cond);
        }
    vqc_free(m->heads);
    xconv_free(&m->xout1); xconv_free(&m->xout2);
    for (int i = 0; i < m->n_ops; i++) {
        qlayer_free(&m->ops[i].q); qlayer_free(&m->ops[i].q2);
        xconv_free(&m->ops[i].x); xconv_free(&m->ops[i].x2);
    }
    vqc_free(m->ops);
    vqc_free(m);
}

const uint8_t *vqc_model_id(const vqc_model *m) { return m->id; }
const char *vqc_model_name(const vqc_model *m) { return m->name; }
const char *vqc_model_profile(const vqc_model *m) { return m->int8 ? "int8" : "exact"; }
