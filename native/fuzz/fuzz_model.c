/* libFuzzer harness: the model file reader (safetensors header, the strict JSON parser, tensor
 * table, profile int8 / exact checks, arch vq / rvq) and, for a model that loads and is small, its
 * prior and pixel decoder on a fixed 3 x 5 tile with all of the model's stages.
 *
 *     make -C native fuzz
 *     native/build/fuzz_model -max_len=20000 -timeout=10 CORPUS_DIR native/fuzz/seed-models
 */
#include <stdlib.h>
#include <string.h>

#include "../include/vqc.h"
#include "../src/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vqc_model *m;
    vqc_error err;
    int e = vqc_model_load(data, size, &m, &err);
    if (e == 0) {
        if (m->K <= 4096 && m->C <= 64 && m->L <= 8 && m->c_hi <= 64 && m->c_lo <= 64 && m->D <= 64 && m->f <= 16 &&
            m->n_res <= 4) {
            static const uint8_t words[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                              17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
            vqc_slice payload = {words, sizeof words};
            const int S = m->stages; /* 1..8 */
            uint16_t idx[15 * 8];
            memset(idx, 0, sizeof idx);
            vqc_tile t = {0, 0, 3, 5, &payload, 0, idx};
            e = vqc_prior_decode(m, VQC_KERNEL_AUTO, S, &t, 1, &err);
            if (e != 0 && e != VQC_ERR_FORMAT) __builtin_trap();
            for (int k = 0; k < 15 * S; k++) idx[k] = (uint16_t)(k % m->K);
            uint16_t *tiles[1] = {idx};
            vqc_grid g = {3, 5, 3, 5, 1, S, tiles};
            size_t w = (size_t)5 * m->f, h = (size_t)3 * m->f;
            uint8_t *rgb = malloc(w * h * 3);
            if (vqc_pixdec_region(m, vqc_cpu_kernel(VQC_KERNEL_AUTO), &g, 3, 5, 0, 3, 0, 5, rgb, w, h, 0, &err))
                __builtin_trap();
            free(rgb);
        }
        vqc_model_free(m);
    } else if (e != VQC_ERR_MODEL) {
        __builtin_trap();
    }
    return 0;
}
