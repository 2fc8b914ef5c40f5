/* libFuzzer harness: the container reader and a whole decode with the released models.
 *
 *     make -C native fuzz
 *     native/build/fuzz_decode -max_len=4096 -timeout=10 -rss_limit_mb=2048 CORPUS_DIR native/fuzz/seed-files SEEDS
 *   (SEEDS: a directory holding copies of the .vqc files of format/vectors and format/vectors/broken)
 *
 * Each input is decoded twice: as it is (so the CRC check guards the rest, as in real use), and
 * with its last 4 bytes replaced by the CRC-32 of the bytes before them, so that mutations reach
 * the chunk rules, the model checks, the range decoder, the prior and the pixel decoder.  The
 * models are read once from VQC_FUZZ_MODELS (the repository's models/, or $VQC_MODEL_PATH), and
 * the tiny models of fuzz/seed-models/ whose files (fuzz/seed-files/, made by make_tiny_files.py)
 * decode in microseconds, so mutations of them reach the networks and coder quickly.
 * Only the int8 models are used unless VQC_FUZZ_EXACT is set (profile exact's float64 products
 * are too slow under the sanitizers for a useful rate).
 * max_pixels is 2^22 so that a well-formed large image stays within the fuzzer's memory limit.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../include/vqc.h"
#include "../src/internal.h"

#ifndef VQC_FUZZ_MODELS
#define VQC_FUZZ_MODELS "models"
#endif

static vqc_model *models[16];
static size_t n_models;

static void load_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "fuzz_decode: no model directory %s\n", dir);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) && n_models < 16) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors")) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc((size_t)n);
        if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
            vqc_error err;
            if (vqc_model_load(buf, (size_t)n, &models[n_models], &err) == 0) {
                /* profile exact (float64 GEMMs) is ~50x slower under the sanitizers: opt-in */
                if (strcmp(vqc_model_profile(models[n_models]), "int8") == 0 || getenv("VQC_FUZZ_EXACT")) n_models++;
                else vqc_model_free(models[n_models]);
            }
            else fprintf(stderr, "fuzz_decode: %s: %s\n", path, err.msg);
        }
        free(buf);
        fclose(f);
    }
    closedir(d);
    fprintf(stderr, "fuzz_decode: %zu models after %s\n", n_models, dir);
}

static void load_models(void) {
    const char *dir = getenv("VQC_MODEL_PATH");
    load_dir(dir && *dir ? dir : VQC_FUZZ_MODELS);
#ifdef VQC_FUZZ_TINY
    load_dir(VQC_FUZZ_TINY); /* the tiny models of fuzz/seed-files (arch vq and rvq): fast decodes */
#endif
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    load_models();
    return 0;
}

static void decode_once(const uint8_t *data, size_t size) {
    vqc_options o = {1u << 22, 1, VQC_KERNEL_AUTO};
    vqc_image img;
    vqc_error err;
    char name[33];
    uint8_t id[8];
    int e1 = vqc_peek_model(data, size, o.max_pixels, name, id, &err);
    int e = vqc_decode(data, size, models, n_models, &o, &img, &err);
    if (e == 0) {
        if (e1 != 0) __builtin_trap(); /* peek and decode must agree on a valid container */
        volatile uint8_t sink = 0;
        size_t np = (size_t)img.width * img.height * (size_t)img.channels;
        for (size_t i = 0; i < np; i += 4096) sink ^= img.pixels[i];
        (void)sink;
        vqc_image_free(&img);
    } else if (e != VQC_ERR_FORMAT && e != VQC_ERR_MODEL && e != VQC_ERR_LIMIT) {
        __builtin_trap(); /* out of memory or an internal error: a bug for inputs this small */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    decode_once(data, size);
    if (size >= 8) {
        uint8_t *copy = malloc(size);
        memcpy(copy, data, size);
        uint32_t crc = vqc_crc32(copy, size - 4);
        for (int k = 0; k < 4; k++) copy[size - 4 + k] = (uint8_t)(crc >> (8 * k));
        decode_once(copy, size);
        free(copy);
    }
    return 0;
}
