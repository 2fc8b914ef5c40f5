/* vqc.h - the portable .vqc decoder core (format/SPEC.md).
 *
 * C11, no dependency.  Plain pointers and integers only, so it is usable from ctypes and from
 * WebAssembly.  The core reads no files and starts no threads unless built with
 * VQC_WITH_THREADS and asked for them (vqc_options.threads > 1).
 *
 * Typical use:
 *     char name[33]; uint8_t id[8];
 *     vqc_peek_model(file, n, 0, name, id, &err);          // which model does the file need?
 *     vqc_model_load(model_bytes, model_n, &model, &err);  // parse + check the model file
 *     vqc_decode(file, n, &model, 1, NULL, &img, &err);  // decode
 *     ... img.pixels ...; vqc_image_free(&img); vqc_model_free(model);
 */
#ifndef VQC_H
#define VQC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && !defined(VQC_STATIC)
#define VQC_API __attribute__((visibility("default")))
#else
#define VQC_API
#endif

/* Status codes: the error classes of SPEC.md "Error classes", numbered like vqc's exit codes. */
enum {
    VQC_OK = 0,
    VQC_ERR_INTERNAL = 1, /* out of memory or a bad argument: not a property of the file */
    VQC_ERR_FORMAT = 3,
    VQC_ERR_MODEL = 5,
    VQC_ERR_LIMIT = 6
};

typedef struct vqc_error {
    int code;        /* one of the codes above */
    char msg[256];   /* one line, no newline */
} vqc_error;

/* Which matrix-product kernels to use (all give identical integers). */
enum { VQC_KERNEL_AUTO = 0, VQC_KERNEL_SCALAR = 1, VQC_KERNEL_AVX2 = 2, VQC_KERNEL_VNNI = 3, VQC_KERNEL_AMX = 4 };

typedef struct vqc_options {
    uint64_t max_pixels; /* display pixels, 0 = default 2^28 */
    int threads;         /* <= 1: the calling thread only; > 1 needs VQC_WITH_THREADS */
    int kernel;          /* VQC_KERNEL_*; a kernel the CPU lacks falls back to the best it has */
} vqc_options;

typedef struct vqc_image {
    uint32_t width, height; /* display size */
    int channels;           /* 1 (grey) or 3 (RGB): the coded samples, without alpha */
    uint8_t *pixels;        /* width*height*channels bytes, row-major, channels interleaved */
    /* Slices of the input file (valid while it is), NULL/0 when absent.  The alpha chunk is a PNG
       of width x height 8-bit grey pixels whose header the core has checked; decoding it needs
       inflate, which the core leaves to the caller (vqcdec uses libpng). */
    const uint8_t *alpha_png; size_t alpha_png_size;
    const uint8_t *icc; size_t icc_size;
    const uint8_t *exif; size_t exif_size;
    char model_name[33];
    int minor_version;
} vqc_image;

typedef struct vqc_model vqc_model;

/* Swap the allocator (e.g. for WebAssembly); call before anything else.  NULL restores malloc. */
VQC_API void vqc_set_allocator(void *(*alloc_fn)(size_t), void (*free_fn)(void *));

/* Check the whole container (every rule of SPEC.md "Reader rules": format and limit errors, CRC)
   and give the model it names: name (NUL-terminated, <= 32 chars) and 8-byte id.  max_pixels:
   0 = default 2^28.  Cheap (no model, no decoding). */
VQC_API int vqc_peek_model(const uint8_t *file, size_t n, uint64_t max_pixels, char name[33], uint8_t id[8],
                   vqc_error *err);

/* Parse and check a model file (SPEC.md "Model file", profiles exact and int8).  The bytes are
   copied where needed: they may be freed after the call. */
VQC_API int vqc_model_load(const uint8_t *data, size_t n, vqc_model **out, vqc_error *err);
VQC_API void vqc_model_free(vqc_model *model);
/* The model's id (first 8 bytes of the SHA-256 of the file) and its metadata name. */
VQC_API const uint8_t *vqc_model_id(const vqc_model *model);
VQC_API const char *vqc_model_name(const vqc_model *model);
VQC_API const char *vqc_model_profile(const vqc_model *model); /* "exact" or "int8" */

/* Decode a whole .vqc file with one of the given models (matched by id).  opts may be NULL. */
VQC_API int vqc_decode(const uint8_t *file, size_t n, vqc_model *const *models, size_t n_models,
               const vqc_options *opts, vqc_image *out, vqc_error *err);
VQC_API void vqc_image_free(vqc_image *img);

/* The kernel vqc_decode would use for opts->kernel on this CPU (VQC_KERNEL_*). */
VQC_API int vqc_kernel_resolve(int kernel);
VQC_API const char *vqc_version(void);

#ifdef __cplusplus
}
#endif
#endif
