/* vqcdec: decode a .vqc file to PNG with the native core (libvqc) and libpng.
 *
 *     vqcdec IN.vqc OUT.png [--models DIR] [--threads N] [--kernel auto|scalar|avx2|vnni|amx]
 *                           [--max-pixels N] [--png-level 0..9] [--raw]
 *
 * --raw writes the pixel samples (row-major, channels interleaved: L, LA, RGB or RGBA) instead
 * of a PNG: their SHA-256 is the pixels_sha256 of format/vectors/vectors.json.
 *
 * Models (<name>.safetensors) are looked up in: --models DIR; then each directory of
 * $VQC_MODEL_PATH (':'-separated); then the directory compiled in as VQC_DEFAULT_MODELS (the
 * repository's models/ by default); then ../../models next to the binary (native/build/vqcdec);
 * last, the models/ of an installed vqcodec package, asked of python3 (only when all else fails).
 * Exit status: 0 ok, 2 usage or I/O, 3 format error, 5 model error, 6 limit error, 1 other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../include/vqc.h"

#ifndef VQC_DEFAULT_MODELS
#define VQC_DEFAULT_MODELS ""
#endif

static int die(int code, const char *fmt, const char *a, const char *b) {
    const char *kind = code == 3 ? "format error: " : code == 5 ? "model error: " : code == 6 ? "limit error: " : "";
    fprintf(stderr, "vqcdec: %s", kind);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return code;
}

static uint8_t *read_file(const char *path, size_t *n, size_t limit, int *too_big) {
    *too_big = 0;
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        if (len == cap) {
            if (cap > limit) {
                *too_big = 1;
                free(buf);
                buf = NULL;
                break;
            }
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        if (r == 0) break;
        len += r;
        if (len > limit) {
            *too_big = 1;
            free(buf);
            buf = NULL;
            break;
        }
    }
    if (f != stdin) fclose(f);
    *n = len;
    return buf;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int find_model(const char *name, const char *dir_opt, const char *argv0, char *out, size_t outn) {
    char dirs[8][PATH_MAX];
    int nd = 0;
    if (dir_opt) snprintf(dirs[nd++], PATH_MAX, "%s", dir_opt);
    const char *env = getenv("VQC_MODEL_PATH");
    if (env && *env) {
        const char *p = env;
        while (*p && nd < 6) {
            const char *q = strchr(p, ':');
            size_t l = q ? (size_t)(q - p) : strlen(p);
            if (l && l < PATH_MAX) snprintf(dirs[nd++], PATH_MAX, "%.*s", (int)l, p);
            p = q ? q + 1 : p + l;
        }
    }
    if (VQC_DEFAULT_MODELS[0]) snprintf(dirs[nd++], PATH_MAX, "%s", VQC_DEFAULT_MODELS);
    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl > 0) {
        self[sl] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            snprintf(dirs[nd++], PATH_MAX, "%.*s/../../models", (int)(PATH_MAX - 20), self);
        }
    }
    (void)argv0;
    for (int i = 0; i < nd; i++) {
        snprintf(out, outn, "%s/%s.safetensors", dirs[i], name);
        if (file_exists(out)) return 0;
    }
    /* last: the models directory of an installed vqcodec wheel, if python3 has one */
    FILE *p = popen("python3 -c 'import vqcodec.registry as r; print(r.PACKAGE_MODELS_DIR)' 2>/dev/null", "r");
    if (p) {
        char dir[PATH_MAX];
        if (fgets(dir, sizeof dir, p)) {
            dir[strcspn(dir, "\n")] = 0;
            snprintf(out, outn, "%s/%s.safetensors", dir, name);
            pclose(p);
            return file_exists(out) ? 0 : -1;
        }
        pclose(p);
    }
    return -1;
}

/* ---------------------------------------------------------------- PNG */

typedef struct {
    const uint8_t *p;
    size_t n, pos;
} memsrc;

static void mem_read(png_structp png, png_bytep out, png_size_t len) {
    memsrc *s = png_get_io_ptr(png);
    if (len > s->n - s->pos) png_error(png, "truncated");
    memcpy(out, s->p + s->pos, len);
    s->pos += len;
}

static void quiet_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void err_handler(png_structp png, png_const_charp msg) {
    char *buf = png_get_error_ptr(png);
    snprintf(buf, 200, "%s", msg);
    png_longjmp(png, 1);
}

/* the alpha chunk: an 8-bit grey PNG of w x h -> 0 or a message in msg */
static int decode_alpha(const uint8_t *p, size_t n, uint32_t w, uint32_t h, uint8_t **out, char *msg) {
    /* a single frame: no acTL chunk (APNG) before IDAT */
    for (size_t pos = 8; pos + 8 <= n;) {
        uint32_t len = (uint32_t)p[pos] << 24 | (uint32_t)p[pos + 1] << 16 | (uint32_t)p[pos + 2] << 8 | p[pos + 3];
        if (!memcmp(p + pos + 4, "acTL", 4)) {
            snprintf(msg, 200, "alpha plane PNG is animated");
            return -1;
        }
        if (!memcmp(p + pos + 4, "IDAT", 4) || len > n) break;
        pos += 12 + (size_t)len;
    }
    char emsg[200] = "";
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, emsg, err_handler, quiet_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *volatile pix = NULL;
    png_bytep *volatile rows = NULL;
    memsrc src = {p, n, 0};
    if (!png || !info) {
        snprintf(msg, 200, "out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        free(pix);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        snprintf(msg, 200, "alpha plane is not a valid PNG (%s)", emsg);
        return -1;
    }
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_DEFAULT);
    png_set_read_fn(png, &src, mem_read);
    png_read_info(png, info);
    if (png_get_image_width(png, info) != w || png_get_image_height(png, info) != h || png_get_bit_depth(png, info) != 8 ||
        png_get_color_type(png, info) != PNG_COLOR_TYPE_GRAY)
        png_error(png, "not an 8-bit greyscale PNG of the image's size");
    png_set_strip_16(png); /* no-ops for this type, kept for safety */
    png_read_update_info(png, info);
    pix = malloc((size_t)w * h);
    rows = malloc(sizeof(png_bytep) * h);
    if (!pix || !rows) png_error(png, "out of memory");
    for (uint32_t y = 0; y < h; y++) rows[y] = pix + (size_t)y * w;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    *out = pix;
    return 0;
}

/* pix: w x h x nc colour samples; alpha (or NULL): w x h, interleaved row by row as written */
static int write_png(const char *path, const uint8_t *pix, const uint8_t *alpha, uint32_t w, uint32_t h, int nc,
                     const vqc_image *img, int level, char *msg) {
    FILE *f = strcmp(path, "-") ? fopen(path, "wb") : stdout;
    if (!f) {
        snprintf(msg, 200, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    char emsg[200] = "";
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, emsg, err_handler, quiet_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *volatile row = NULL;
    if (!png || !info) {
        snprintf(msg, 200, "out of memory");
        if (f != stdout) fclose(f);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        free(row);
        png_destroy_write_struct(&png, &info);
        if (f != stdout) fclose(f);
        snprintf(msg, 200, "cannot write %s: %s", path, emsg);
        return -1;
    }
    png_init_io(png, f);
    png_set_compression_level(png, level);
    const int no = nc + (alpha != NULL);
    int ct = no == 1 ? PNG_COLOR_TYPE_GRAY : no == 2 ? PNG_COLOR_TYPE_GRAY_ALPHA : no == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA;
    png_set_IHDR(png, info, w, h, 8, ct, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (img->icc) {
        png_set_benign_errors(png, 1);
        png_set_iCCP(png, info, "ICC profile", 0, img->icc, (png_uint_32)img->icc_size);
    }
#ifdef PNG_eXIf_SUPPORTED
    if (img->exif) {
        /* SPEC: the chunk starts at the TIFF header; files written by vqc 0.1 keep Pillow's
           "Exif\0\0" prefix, which an eXIf chunk must not have: drop it, as Pillow does */
        const uint8_t *x = img->exif;
        size_t xn = img->exif_size;
        if (xn >= 6 && !memcmp(x, "Exif\0\0", 6)) x += 6, xn -= 6;
        if (xn) png_set_eXIf_1(png, info, (png_uint_32)xn, (png_bytep)x);
    }
#endif
    png_write_info(png, info);
    if (alpha) {
        row = malloc((size_t)w * no);
        if (!row) png_error(png, "out of memory");
    }
    for (uint32_t y = 0; y < h; y++) {
        const uint8_t *src = pix + (size_t)y * w * nc;
        if (!alpha) {
            png_write_row(png, (png_const_bytep)src);
            continue;
        }
        const uint8_t *a = alpha + (size_t)y * w;
        for (uint32_t x = 0; x < w; x++) {
            memcpy(row + (size_t)x * no, src + (size_t)x * nc, (size_t)nc);
            row[(size_t)x * no + nc] = a[x];
        }
        png_write_row(png, row);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    if (f != stdout && fclose(f)) {
        snprintf(msg, 200, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

extern const int64_t vqc_exp_lut[512];        /* internal: for --dump-tables (static lib only) */
extern const int16_t vqc_upsample_taps[64][6];

static int write_raw(const char *path, const uint8_t *pix, size_t n, char *msg) {
    FILE *f = strcmp(path, "-") ? fopen(path, "wb") : stdout;
    if (!f || fwrite(pix, 1, n, f) != n || (f != stdout && fclose(f))) {
        snprintf(msg, 200, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int usage(void) {
    fprintf(stderr,
            "usage: vqcdec IN.vqc OUT.png [--models DIR] [--threads N] [--kernel auto|scalar|avx2|vnni|amx]\n"
            "                             [--max-pixels N] [--png-level 0..9] [--raw]\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *in = NULL, *outp = NULL, *models = NULL;
    int threads = 1, kernel = VQC_KERNEL_AUTO, level = 3, raw = 0;
    unsigned long long max_pixels = 1ull << 28;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--models") && i + 1 < argc) models = argv[++i];
        else if (!strcmp(a, "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--png-level") && i + 1 < argc) level = atoi(argv[++i]);
        else if (!strcmp(a, "--max-pixels") && i + 1 < argc) max_pixels = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--kernel") && i + 1 < argc) {
            const char *k = argv[++i];
            kernel = !strcmp(k, "scalar") ? VQC_KERNEL_SCALAR : !strcmp(k, "avx2") ? VQC_KERNEL_AVX2
                   : !strcmp(k, "vnni") ? VQC_KERNEL_VNNI : !strcmp(k, "amx") ? VQC_KERNEL_AMX : !strcmp(k, "auto") ? VQC_KERNEL_AUTO : -1;
            if (kernel < 0) return usage();
        } else if (!strcmp(a, "--raw")) {
            raw = 1;
        } else if (!strcmp(a, "--dump-tables")) {
            for (int k = 0; k < 512; k++) printf("%lld\n", (long long)vqc_exp_lut[k]);
            for (int k = 0; k < 64; k++)
                printf("%d %d %d %d %d %d\n", vqc_upsample_taps[k][0], vqc_upsample_taps[k][1], vqc_upsample_taps[k][2],
                       vqc_upsample_taps[k][3], vqc_upsample_taps[k][4], vqc_upsample_taps[k][5]);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("%s\n", vqc_version());
            return 0;
        } else if (a[0] == '-' && a[1] == '-') return usage();
        else if (!in) in = a;
        else if (!outp) outp = a;
        else return usage();
    }
    if (!in || !outp || threads < 1 || threads > 64 || level < 0 || level > 9 || max_pixels == 0 || max_pixels > (1ull << 40))
        return usage();
    size_t n;
    int too_big;
    /* a file written by vqc for an image of at most max_pixels has at most 2 * max_pixels + 4 MiB bytes */
    uint8_t *data = read_file(in, &n, (size_t)(2 * max_pixels + (4u << 20)), &too_big);
    if (too_big) return die(6, "%s is larger than any .vqc file of at most %s pixels", in, "max-pixels");
    if (!data) return die(2, "cannot read %s: %s", in, strerror(errno));
    vqc_error err;
    char name[33];
    uint8_t id[8];
    int e = vqc_peek_model(data, n, max_pixels, name, id, &err);
    if (e) return die(e, "%s%s", err.msg, "");
    char path[PATH_MAX + 64];
    int safe = name[0] != '.' && !strchr(name, '/') && !strchr(name, '\\');
    if (!safe || find_model(name, models, argv[0], path, sizeof path))
        return die(5, "unknown model '%s'%s", name, " (no <name>.safetensors in --models, $VQC_MODEL_PATH or the default models directory)");
    size_t mn;
    uint8_t *mdata = read_file(path, &mn, (size_t)1 << 34, &too_big);
    if (!mdata) return die(5, "cannot read model file %s: %s", path, strerror(errno));
    vqc_model *model;
    e = vqc_model_load(mdata, mn, &model, &err);
    free(mdata);
    if (e) return die(e, "%s%s", err.msg, "");
    vqc_options opts = {max_pixels, threads, kernel};
    vqc_image img;
    e = vqc_decode(data, n, &model, 1, &opts, &img, &err);
    if (e) return die(e, "%s%s", err.msg, "");
    uint8_t *alpha = NULL, *merged = NULL;
    int nc = img.channels;
    char msg[200];
    if (img.alpha_png && decode_alpha(img.alpha_png, img.alpha_png_size, img.width, img.height, &alpha, msg))
        return die(3, "%s%s", msg, "");
    if (raw) {
        const uint8_t *pix = img.pixels;
        if (alpha) { /* --raw: interleave (a test aid, small images) */
            size_t np = (size_t)img.width * img.height;
            merged = malloc(np * (size_t)(nc + 1));
            if (!merged) return die(1, "%s%s", "out of memory", "");
            for (size_t k = 0; k < np; k++) {
                memcpy(merged + k * (nc + 1), img.pixels + k * nc, (size_t)nc);
                merged[k * (nc + 1) + nc] = alpha[k];
            }
            pix = merged;
        }
        if (write_raw(outp, pix, (size_t)img.width * img.height * (size_t)(nc + (alpha != NULL)), msg))
            return die(2, "%s%s", msg, "");
    } else if (write_png(outp, img.pixels, alpha, img.width, img.height, nc, &img, level, msg)) {
        return die(2, "%s%s", msg, "");
    }
    free(merged);
    free(alpha);
    vqc_image_free(&img);
    vqc_model_free(model);
    free(data);
    return 0;
}
