/* Internal declarations of the vqc decoder core. */
#ifndef VQC_INTERNAL_H
#define VQC_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../include/vqc.h"

/* plain loops cloned for AVX-512 / AVX2 / baseline and picked at load time (GCC, clang on x86) */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones) && !defined(VQC_NO_CLONES) && !defined(__SANITIZE_ADDRESS__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif

#define VQC_ACT_MAX (1 << 20)
#define VQC_MAX_TILES (1u << 20)
#define VQC_MAX_TILE_SIDE 256
#define VQC_MAX_TILE_POSITIONS (1 << 14)
#define VQC_DEFAULT_MAX_PIXELS (1ull << 28)

extern const int64_t vqc_exp_lut[512];
extern const int16_t vqc_upsample_taps[64][6];

/* ---- util.c */
void *vqc_alloc(size_t n);          /* NULL on failure or n == 0 overflow */
void *vqc_calloc(size_t a, size_t b); /* zeroed, NULL on overflow / failure */
void vqc_free(void *p);
int vqc_fail(vqc_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
uint32_t vqc_crc32(const uint8_t *p, size_t n);
void vqc_sha256(const uint8_t *p, size_t n, uint8_t out[32]);

/* ---- container.c */
typedef struct {
    const uint8_t *data;
    uint32_t len;
} vqc_slice;

typedef struct {
    int minor;
    char model_name[33];
    uint8_t model_hash[8];
    uint64_t width, height, coded_w, coded_h;
    int mode;
    uint64_t grid_h, grid_w, tile_h, tile_w;
    uint64_t tile_rows, tile_cols, n_tiles;
    vqc_slice alpha, icc, exif;
    int has_alpha, has_icc, has_exif, has_coded;
    int stages; /* S of the stages chunk (SPEC 1.3), 1 without one; 0 while parsing until one is read */
    vqc_slice *payloads; /* n_tiles, owned */
} vqc_header;

int vqc_parse(const uint8_t *d, size_t n, uint64_t max_pixels, vqc_header *h, vqc_error *err);
void vqc_header_free(vqc_header *h);

/* ---- gemm.c: C[r][o] = sum_k A[r][k] * W[o][k] (A u8, W s8 in [-63, 63]), int32 */
typedef struct {
    int O, K;       /* real outputs and patch length */
    int Op, Kp;     /* padded: Op multiple of 32, Kp multiple of 64 */
    int8_t *w;      /* [Op][Kp] plain, zero padded (scalar) */
    int8_t *w_vnni; /* [Op/16][Kp/4][16][4]: the AVX2, VNNI and AMX kernels */
} vqc_qmat;

int vqc_qmat_init(vqc_qmat *m, int O, int K); /* allocates zeroed plain weights */
int vqc_qmat_pack(vqc_qmat *m);
void vqc_qmat_free(vqc_qmat *m);
/* A: n rows of lda bytes (lda >= Kp; bytes K.. any value); C: n rows of ldc int32 (ldc >= Op);
   A and C must have room for ceil(n/32)*32 rows (the SIMD kernels compute whole row blocks) */
void vqc_gemm(int kernel, const vqc_qmat *m, const uint8_t *A, int lda, int n, int32_t *C, int ldc);
int vqc_cpu_kernel(int requested);

/* ---- rowops.c */
/* kernel: VQC_KERNEL_SCALAR keeps to the portable loop (so the tests compare it too) */
void vqc_requant(int kernel, const int32_t *acc, const int32_t *bias, const int32_t *mult, int S, int lo, int hi, int n,
                 const int32_t *R, const int8_t *r, int8_t *out8, int32_t *out32);
void vqc_gate_row(const int8_t *a, const int8_t *b, int T, int n, int flip, uint8_t *out);
void vqc_x80(uint8_t *dst, const int8_t *src, int n);
void vqc_relu_x80(uint8_t *dst, const int8_t *src, int n);

/* ---- model.c */
typedef struct { /* an int8 layer (SPEC "Profile int8") */
    vqc_qmat m;
    int32_t *bias;  /* [O], folded: B - 128 * sum over s8-input parts of W */
    int32_t *mult;  /* [O] */
    int32_t *resid; /* [O] or NULL */
    int shift, lo, hi;
} vqc_qlayer;

typedef struct { /* a profile exact convolution */
    int O, K, kh, kw;
    double *w;     /* [K][O] */
    int64_t *bias; /* [O] */
    int shift;
} vqc_xconv;

enum { OP_CONV, OP_RES, OP_SHUFFLE, OP_RELU };
typedef struct {
    int kind, cin, cout, k; /* conv: k = kernel side; res: cin = cout = channels */
    vqc_qlayer q, q2;       /* int8: conv (q) or res (q = conv3, q2 = conv1) */
    vqc_xconv x, x2;        /* exact */
} vqc_dop;

typedef struct {
    vqc_qlayer v, h, res; /* h includes v2h: its patch is [h-input | vp] */
    int tv, th;
    vqc_xconv xv, xv2h, xh, xres;
} vqc_player;

typedef struct { /* the int8 head of one stage (arch vq: the one head, int8.prior.out1/out2) */
    vqc_qlayer out1, out2;
    int32_t *cond; /* arch rvq, stage s >= 1: [s][K][C] products cond_mult[t][o] * cond[t][k][o]; else NULL */
} vqc_head;

struct vqc_model {
    uint8_t id[8];
    char name[64];
    int int8; /* 1: profile int8, 0: profile exact */
    int rvq;  /* 1: arch rvq (SPEC 1.3, int8 only) */
    int stages; /* S_max: the stages of arch rvq, 1 for arch vq */
    int f, K, D, c_lo, c_hi, n_res, C, L;
    /* prior */
    int8_t *embed_q;  /* [stages][K][C] */
    int32_t *embed_x; /* [K][C] */
    vqc_player *layers;
    vqc_head *heads; /* int8: [stages] */
    vqc_xconv xout1, xout2;
    /* decoder */
    int8_t *codebook_q;  /* [stages][K][D] */
    int32_t *codebook_x; /* [K][D] */
    vqc_dop *ops;
    int n_ops;
};

/* ---- entropy.c */
typedef struct {
    const uint8_t *words; /* payload bytes */
    uint32_t n;           /* words */
    uint32_t pos;         /* words read */
    uint64_t low, range, point;
} vqc_rdec;

void vqc_pmf_from_logits(const int32_t *logits, int K, uint32_t *cdf /* K+1, 24-bit */, int64_t *scratch /* K */);
int vqc_rdec_init(vqc_rdec *d, const uint8_t *payload, uint32_t bytes);
/* returns symbol >= 0, -1: value outside the interval, -2: payload ran out */
int vqc_rdec_decode(vqc_rdec *d, const uint32_t *cdf, int K);

/* ---- prior.c */
/* profile exact layer: P [n][K] doubles -> out [n][O], rescaled and clamped (acc: n*O doubles) */
void vqc_xapply(const vqc_xconv *X, const double *P, int n, double *acc, int32_t *out);

typedef struct {
    int r0, c0, h, w;       /* place in the grid and size */
    const vqc_slice *payload;
    int number;
    uint16_t *out;          /* h x w x S indices (the stages of a position together) */
} vqc_tile;
/* Decode a group of tiles of equal shape in lock-step into their out arrays; S stages
   (1 <= S <= m->stages) per position. */
int vqc_prior_decode(const vqc_model *m, int kernel, int S, const vqc_tile *tiles, int n_tiles, vqc_error *err);

/* The decoded index grid, kept per tile (allocated as each tile decodes). */
typedef struct {
    int grid_h, grid_w, tile_h, tile_w, tile_cols, stages;
    uint16_t **tiles;
} vqc_grid;
/* the S = g->stages indices of position (r, c) */
static inline const uint16_t *vqc_grid_at(const vqc_grid *g, int r, int c) {
    int tr = r / g->tile_h, tc = c / g->tile_w;
    int tw = (tc + 1) * g->tile_w > g->grid_w ? g->grid_w - tc * g->tile_w : g->tile_w;
    return g->tiles[(size_t)tr * g->tile_cols + tc] + ((size_t)(r - tr * g->tile_h) * tw + (c - tc * g->tile_w)) * g->stages;
}

/* ---- pixdec.c: decode the pixels of grid rows/cols into out (coded size, 3 channels RGB) */
int vqc_pixdec_region(const vqc_model *m, int kernel, const vqc_grid *grid, int grid_h, int grid_w,
                      int tr0, int tr1, int tc0, int tc1, uint8_t *rgb, size_t coded_w,
                      size_t coded_h, int grey, vqc_error *err);

/* ---- upsample.c */
int vqc_upsample(const uint8_t *src, uint32_t cw, uint32_t ch, int channels, uint8_t *dst,
                 uint32_t w, uint32_t h, uint32_t y0, uint32_t y1);

#endif
