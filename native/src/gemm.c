#define _GNU_SOURCE /* syscall() for the AMX permission request */
/* u8 x s8 -> int32 matrix products: scalar, AVX2 (vpmaddubsw: exact because |W| <= 63, SPEC
 * "Profile int8") and AVX512-VNNI (vpdpbusd), chosen at run time.  All give identical integers:
 * every partial sum is an integer far below 2^31. */
#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define VQC_X86 1
#include <immintrin.h>
#endif

int vqc_qmat_init(vqc_qmat *m, int O, int K) {
    memset(m, 0, sizeof *m);
    m->O = O;
    m->K = K;
    m->Op = (O + 31) / 32 * 32;
    m->Kp = (K + 63) / 64 * 64; /* whole 64-byte rows of an AMX tile */
    m->w = vqc_calloc((size_t)m->Op, (size_t)m->Kp);
    return m->w ? 0 : -1;
}

int vqc_qmat_pack(vqc_qmat *m) {
#ifdef VQC_X86
    /* one layout for the AVX2, VNNI and AMX kernels: [Op/16][Kp/4][16][4], i.e. per block of 16
       outputs, rows of 4 consecutive k for each of the 16 outputs (a VNNI register, an AMX B-tile
       row, two AVX2 registers) */
    const int K4 = m->Kp / 4;
    m->w_vnni = vqc_alloc((size_t)m->Op * m->Kp);
    if (!m->w_vnni) return -1;
    for (int o = 0; o < m->Op; o++)
        for (int k = 0; k < m->Kp; k++)
            m->w_vnni[(((size_t)(o / 16) * K4 + k / 4) * 16 + o % 16) * 4 + k % 4] = m->w[(size_t)o * m->Kp + k];
#endif
    return 0;
}

void vqc_qmat_free(vqc_qmat *m) {
    vqc_free(m->w);
    vqc_free(m->w_vnni);
    memset(m, 0, sizeof *m);
}

static void gemm_scalar(const vqc_qmat *m, const uint8_t *A, int lda, int n, int32_t *C, int ldc) {
    for (int r = 0; r < n; r++) {
        const uint8_t *a = A + (size_t)r * lda;
        int32_t *c = C + (size_t)r * ldc;
        for (int o = 0; o < m->O; o++) {
            const int8_t *w = m->w + (size_t)o * m->Kp;
            int32_t s = 0;
            for (int k = 0; k < m->K; k++) s += (int32_t)a[k] * w[k];
            c[o] = s;
        }
    }
}

#ifdef VQC_X86
static inline int32_t load4(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* rows in blocks of 4 (callers leave room for ceil(n/4)*4 rows in A and C), outputs in blocks of 16 */
__attribute__((target("avx2"))) static void gemm_avx2(const vqc_qmat *m, const uint8_t *A, int lda, int n,
                                                      int32_t *C, int ldc) {
    const int K4 = m->Kp / 4;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int ob = 0; ob < m->Op / 16; ob++) {
        const int8_t *w0 = m->w_vnni + (size_t)ob * K4 * 64, *w1 = w0 + 32;
        for (int r = 0; r < n; r += 4) {
            const uint8_t *a0 = A + (size_t)r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
                    c31 = c00;
            for (int k = 0; k < K4; k++) {
                __m256i wa = _mm256_loadu_si256((const __m256i *)(w0 + 64 * k));
                __m256i wb = _mm256_loadu_si256((const __m256i *)(w1 + 64 * k));
                __m256i x;
#define STEP(ap, ca, cb)                                                              \
    x = _mm256_set1_epi32(load4(ap + 4 * k));                                         \
    ca = _mm256_add_epi32(ca, _mm256_madd_epi16(_mm256_maddubs_epi16(x, wa), ones)); \
    cb = _mm256_add_epi32(cb, _mm256_madd_epi16(_mm256_maddubs_epi16(x, wb), ones));
                STEP(a0, c00, c01) STEP(a1, c10, c11) STEP(a2, c20, c21) STEP(a3, c30, c31)
#undef STEP
            }
            int32_t *c = C + (size_t)r * ldc + ob * 16;
            _mm256_storeu_si256((__m256i *)c, c00);
            _mm256_storeu_si256((__m256i *)(c + 8), c01);
            _mm256_storeu_si256((__m256i *)(c + ldc), c10);
            _mm256_storeu_si256((__m256i *)(c + ldc + 8), c11);
            _mm256_storeu_si256((__m256i *)(c + 2 * ldc), c20);
            _mm256_storeu_si256((__m256i *)(c + 2 * ldc + 8), c21);
            _mm256_storeu_si256((__m256i *)(c + 3 * ldc), c30);
            _mm256_storeu_si256((__m256i *)(c + 3 * ldc + 8), c31);
        }
    }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void gemm_vnni(const vqc_qmat *m, const uint8_t *A,
                                                                            int lda, int n, int32_t *C, int ldc) {
    const int K4 = m->Kp / 4;
    for (int ob = 0; ob < m->Op / 16; ob += 2) {
        const int8_t *w0 = m->w_vnni + (size_t)ob * K4 * 64, *w1 = w0 + (size_t)K4 * 64;
        for (int r = 0; r < n; r += 4) {
            const uint8_t *a0 = A + (size_t)r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
                    c31 = c00;
            for (int k = 0; k < K4; k++) {
                __m512i wa = _mm512_loadu_si512((const void *)(w0 + 64 * k));
                __m512i wb = _mm512_loadu_si512((const void *)(w1 + 64 * k));
                __m512i x;
#define STEP(ap, ca, cb)                              \
    x = _mm512_set1_epi32(load4(ap + 4 * k));         \
    ca = _mm512_dpbusd_epi32(ca, x, wa);              \
    cb = _mm512_dpbusd_epi32(cb, x, wb);
                STEP(a0, c00, c01) STEP(a1, c10, c11) STEP(a2, c20, c21) STEP(a3, c30, c31)
#undef STEP
            }
            int32_t *c = C + (size_t)r * ldc + ob * 16;
            _mm512_storeu_si512((void *)c, c00);
            _mm512_storeu_si512((void *)(c + 16), c01);
            _mm512_storeu_si512((void *)(c + ldc), c10);
            _mm512_storeu_si512((void *)(c + ldc + 16), c11);
            _mm512_storeu_si512((void *)(c + 2 * ldc), c20);
            _mm512_storeu_si512((void *)(c + 2 * ldc + 16), c21);
            _mm512_storeu_si512((void *)(c + 3 * ldc), c30);
            _mm512_storeu_si512((void *)(c + 3 * ldc + 16), c31);
        }
    }
}

/* ---- AMX (tdpbusd): 16 x 64 u8 tiles of A times 16 x (16 x 4) s8 tiles of B, int32 16 x 16
   accumulators; rows in blocks of 32, outputs in blocks of 32 (callers leave room for
   ceil(n/32)*32 rows in A and C, and lda >= Kp); a last block of <= 16 rows uses one A tile. */
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static int amx_usable(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    unsigned a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    if (!((d >> 24) & 1) || !((d >> 25) & 1)) return 0; /* AMX-TILE, AMX-INT8 */
    /* ask the kernel for the tile data state (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 0;
    return 1;
#else
    return 0;
#endif
}

__attribute__((target("amx-tile,amx-int8"))) static void gemm_amx(const vqc_qmat *m, const uint8_t *A, int lda, int n,
                                                                  int32_t *C, int ldc) {
    /* the tile configuration is per thread; it stays loaded (no _tile_release per call: releasing
       and reloading costs more than the products of a small matrix) */
    static _Thread_local int configured;
    if (!configured) {
        tilecfg cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        _tile_loadconfig(&cfg);
        configured = 1;
    }
    const int K4 = m->Kp / 4, kc = m->Kp / 64;
    for (int ob = 0; ob < m->Op / 16; ob += 2) {
        const int8_t *b0 = m->w_vnni + (size_t)ob * K4 * 64, *b1 = b0 + (size_t)K4 * 64;
        for (int r = 0; r < n; r += 32) {
            const uint8_t *a0 = A + (size_t)r * lda, *a1 = a0 + (size_t)16 * lda;
            int32_t *c = C + (size_t)r * ldc + ob * 16;
            if (n - r <= 16) { /* a last block of at most 16 rows: one A tile */
                _tile_zero(0);
                _tile_zero(1);
                for (int k = 0; k < kc; k++) {
                    _tile_loadd(4, a0 + 64 * k, lda);
                    _tile_loadd(6, b0 + (size_t)k * 1024, 64);
                    _tile_loadd(7, b1 + (size_t)k * 1024, 64);
                    _tile_dpbusd(0, 4, 6);
                    _tile_dpbusd(1, 4, 7);
                }
                _tile_stored(0, c, ldc * 4);
                _tile_stored(1, c + 16, ldc * 4);
                continue;
            }
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int k = 0; k < kc; k++) {
                _tile_loadd(4, a0 + 64 * k, lda);
                _tile_loadd(5, a1 + 64 * k, lda);
                _tile_loadd(6, b0 + (size_t)k * 1024, 64);
                _tile_loadd(7, b1 + (size_t)k * 1024, 64);
                _tile_dpbusd(0, 4, 6);
                _tile_dpbusd(1, 4, 7);
                _tile_dpbusd(2, 5, 6);
                _tile_dpbusd(3, 5, 7);
            }
            _tile_stored(0, c, ldc * 4);
            _tile_stored(1, c + 16, ldc * 4);
            _tile_stored(2, c + (size_t)16 * ldc, ldc * 4);
            _tile_stored(3, c + (size_t)16 * ldc + 16, ldc * 4);
        }
    }
}
#endif

int vqc_cpu_kernel(int requested) {
#ifdef VQC_X86
    static int cached = -1; /* atomic: decodes may run on several threads */
    int best = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (best < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && amx_usable()) best = VQC_KERNEL_AMX;
        else if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) best = VQC_KERNEL_VNNI;
        else if (__builtin_cpu_supports("avx2")) best = VQC_KERNEL_AVX2;
        else best = VQC_KERNEL_SCALAR;
        __atomic_store_n(&cached, best, __ATOMIC_RELAXED);
    }
    if (requested == VQC_KERNEL_AUTO || requested > best) return best;
    return requested < VQC_KERNEL_SCALAR ? VQC_KERNEL_SCALAR : requested;
#else
    (void)requested;
    return VQC_KERNEL_SCALAR;
#endif
}

int vqc_kernel_resolve(int kernel) { return vqc_cpu_kernel(kernel); }

void vqc_gemm(int kernel, const vqc_qmat *m, const uint8_t *A, int lda, int n, int32_t *C, int ldc) {
#ifdef VQC_X86
    if (kernel == VQC_KERNEL_AMX && m->w_vnni) {
        gemm_amx(m, A, lda, n, C, ldc);
        return;
    }
    if (kernel == VQC_KERNEL_VNNI && m->w_vnni) {
        gemm_vnni(m, A, lda, n, C, ldc);
        return;
    }
    if (kernel == VQC_KERNEL_AVX2 && m->w_vnni) {
        gemm_avx2(m, A, lda, n, C, ldc);
        return;
    }
#else
    (void)kernel;
#endif
    gemm_scalar(m, A, lda, n, C, ldc);
}
