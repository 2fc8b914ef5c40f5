/* api.c - the WebAssembly face of the vqc decoder core (native/include/vqc.h).
 *
 * Exports a handful of functions with integer/pointer arguments only, so that vqc-worker.js can
 * drive the core without any generated glue.  Errors go to one static vqc_error (class + one-line
 * message) that JS reads with vqcw_err_code / vqcw_err_msg after a call returns non-zero. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vqc.h"

#define EXPORT(name) __attribute__((export_name(#name))) name

static vqc_error g_err;

/* buffers owned by JS (file bytes, model bytes, the model pointer list) */
void *EXPORT(vqcw_alloc)(size_t n) { return malloc(n ? n : 1); }
void EXPORT(vqcw_free)(void *p) { free(p); }

int EXPORT(vqcw_err_code)(void) { return g_err.code; }
const char *EXPORT(vqcw_err_msg)(void) { return g_err.msg; }
const char *EXPORT(vqcw_version)(void) { return vqc_version(); }

/* name: 33 bytes, id: 8 bytes, both in wasm memory */
int EXPORT(vqcw_peek)(const uint8_t *file, size_t n, double max_pixels, char *name, uint8_t *id) {
    memset(&g_err, 0, sizeof g_err);
    return vqc_peek_model(file, n, (uint64_t)max_pixels, name, id, &g_err);
}

/* returns the model or NULL (error in g_err) */
vqc_model *EXPORT(vqcw_model_load)(const uint8_t *data, size_t n) {
    vqc_model *m = NULL;
    memset(&g_err, 0, sizeof g_err);
    if (vqc_model_load(data, n, &m, &g_err)) return NULL;
    return m;
}
void EXPORT(vqcw_model_free)(vqc_model *m) { vqc_model_free(m); }
const uint8_t *EXPORT(vqcw_model_id)(const vqc_model *m) { return vqc_model_id(m); }

/* The decoded image, laid out for JS as 32-bit words:
 *   [0] width [1] height [2] channels [3] pixels ptr [4] alpha_png ptr [5] alpha_png size */
typedef struct {
    uint32_t width, height, channels;
    uint8_t *pixels;
    const uint8_t *alpha_png;
    uint32_t alpha_png_size;
    vqc_image img;
} vqcw_image;

vqcw_image *EXPORT(vqcw_decode)(const uint8_t *file, size_t n, vqc_model *const *models, size_t n_models,
                                double max_pixels, int kernel) {
    memset(&g_err, 0, sizeof g_err);
    vqcw_image *r = calloc(1, sizeof *r);
    if (!r) {
        g_err.code = VQC_ERR_INTERNAL;
        strcpy(g_err.msg, "out of memory");
        return NULL;
    }
    vqc_options o = {(uint64_t)max_pixels, 1, kernel};
    if (vqc_decode(file, n, models, n_models, &o, &r->img, &g_err)) {
        free(r);
        return NULL;
    }
    r->width = r->img.width;
    r->height = r->img.height;
    r->channels = (uint32_t)r->img.channels;
    r->pixels = r->img.pixels;
    r->alpha_png = r->img.alpha_png;
    r->alpha_png_size = (uint32_t)r->img.alpha_png_size;
    return r;
}

void EXPORT(vqcw_image_free)(vqcw_image *r) {
    if (!r) return;
    vqc_image_free(&r->img);
    free(r);
}
