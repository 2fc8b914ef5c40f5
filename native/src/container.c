/* The container: SPEC.md "Layout", "Tiling", "Chunks", "Reader rules". */
#include "internal.h"

#define MAX_DIM 0xFFFFFFFFull

typedef struct {
    const uint8_t *d;
    size_t n, pos;
    vqc_error *err;
} reader;

static int take(reader *r, size_t k, const char *what, const uint8_t **out) {
    if (k > r->n - r->pos)
        return vqc_fail(r->err, VQC_ERR_FORMAT, "truncated: %s needs %zu bytes, %zu left", what, k, r->n - r->pos);
    *out = r->d + r->pos;
    r->pos += k;
    return 0;
}

static int u8(reader *r, const char *what, int *v) {
    const uint8_t *p = NULL;
    int e = take(r, 1, what, &p);
    if (!e) *v = p[0];
    return e;
}

/* unsigned LEB128, at most 10 bytes, shortest form, value <= maximum */
static int varint(reader *r, const char *what, uint64_t maximum, uint64_t *out) {
    uint64_t v = 0;
    int big = 0, i, b = 0, e;
    for (i = 0; i < 10; i++) {
        if ((e = u8(r, what, &b))) return e;
        uint64_t bits = (uint64_t)(b & 0x7F);
        if (i >= 5) {
            if (bits) big = 1;
        } else {
            v |= bits << (7 * i);
        }
        if (!(b & 0x80)) {
            if (b == 0 && i > 0) return vqc_fail(r->err, VQC_ERR_FORMAT, "%s: over-long varint", what);
            break;
        }
    }
    if (i == 10) return vqc_fail(r->err, VQC_ERR_FORMAT, "%s: varint longer than 10 bytes", what);
    if (big || v > maximum)
        return vqc_fail(r->err, VQC_ERR_FORMAT, "%s is above the maximum %llu", what, (unsigned long long)maximum);
    *out = v;
    return 0;
}

static int parse_fixed(reader *r, vqc_header *h) {
    const uint8_t *p = NULL;
    int e, major, minor, n;
    if (r->n == 0) return vqc_fail(r->err, VQC_ERR_FORMAT, "empty input: not a .vqc file");
    if (r->n < 4 || memcmp(r->d, "\x89VQC", 4) != 0)
        return vqc_fail(r->err, VQC_ERR_FORMAT, "not a .vqc file (bad magic)");
    r->pos = 4;
    if ((e = u8(r, "version", &major)) || (e = u8(r, "version", &minor))) return e;
    if (major != 1) return vqc_fail(r->err, VQC_ERR_FORMAT, "unsupported .vqc version %d.%d", major, minor);
    h->minor = minor;
    if ((e = u8(r, "model name length", &n))) return e;
    if (n < 1 || n > 32) return vqc_fail(r->err, VQC_ERR_FORMAT, "model name length %d is not in 1..32", n);
    if ((e = take(r, (size_t)n, "model name", &p))) return e;
    for (int i = 0; i < n; i++)
        if (p[i] < 0x21 || p[i] > 0x7E)
            return vqc_fail(r->err, VQC_ERR_FORMAT, "model name is not printable ASCII without spaces");
    memcpy(h->model_name, p, (size_t)n);
    h->model_name[n] = 0;
    if ((e = take(r, 8, "model hash", &p))) return e;
    memcpy(h->model_hash, p, 8);
    return 0;
}

int vqc_peek_model(const uint8_t *file, size_t n, uint64_t max_pixels, char name[33], uint8_t id[8], vqc_error *err) {
    vqc_header h;
    int e = vqc_parse(file, n, max_pixels ? max_pixels : VQC_DEFAULT_MAX_PIXELS, &h, err);
    if (!e) {
        memcpy(name, h.model_name, 33);
        memcpy(id, h.model_hash, 8);
    }
    vqc_header_free(&h);
    return e;
}

int vqc_parse(const uint8_t *d, size_t n, uint64_t max_pixels, vqc_header *h, vqc_error *err);

static int coded_size(const vqc_slice *s, vqc_header *h, vqc_error *err) {
    reader r = {s->data, s->len, 0, err};
    uint64_t cw = 0, ch = 0;
    int e;
    if ((e = varint(&r, "coded width", MAX_DIM, &cw)) || (e = varint(&r, "coded height", MAX_DIM, &ch))) return e;
    if (r.pos != r.n)
        return vqc_fail(err, VQC_ERR_FORMAT, "coded-size chunk has %zu bytes after its two varints", r.n - r.pos);
    if (!(cw >= 1 && cw <= h->width && ch >= 1 && ch <= h->height))
        return vqc_fail(err, VQC_ERR_FORMAT, "coded size %llux%llu is not within 1x1..%llux%llu",
                        (unsigned long long)cw, (unsigned long long)ch, (unsigned long long)h->width,
                        (unsigned long long)h->height);
    if (h->width > 8 * cw || h->height > 8 * ch)
        return vqc_fail(err, VQC_ERR_FORMAT, "coded size %llux%llu needs more than 8x upsampling to %llux%llu",
                        (unsigned long long)cw, (unsigned long long)ch, (unsigned long long)h->width,
                        (unsigned long long)h->height);
    h->coded_w = cw;
    h->coded_h = ch;
    return 0;
}

int vqc_parse(const uint8_t *d, size_t n, uint64_t max_pixels, vqc_header *h, vqc_error *err) {
    reader r = {d, n, 0, err};
    int e, mode;
    const uint8_t *p = NULL;
    memset(h, 0, sizeof *h);
    if ((e = parse_fixed(&r, h))) return e;
    if ((e = varint(&r, "image width", MAX_DIM, &h->width)) || (e = varint(&r, "image height", MAX_DIM, &h->height)))
        return e;
    if ((e = u8(&r, "image mode", &mode))) return e;
    h->mode = mode;
    if ((e = varint(&r, "grid_h", MAX_DIM, &h->grid_h)) || (e = varint(&r, "grid_w", MAX_DIM, &h->grid_w)) ||
        (e = varint(&r, "tile_h", MAX_DIM, &h->tile_h)) || (e = varint(&r, "tile_w", MAX_DIM, &h->tile_w)))
        return e;
    if (h->width < 1 || h->height < 1) return vqc_fail(err, VQC_ERR_FORMAT, "image width and height must be at least 1");
    if (mode != 1 && mode != 3) return vqc_fail(err, VQC_ERR_FORMAT, "unknown image mode %d (1 = L, 3 = RGB)", mode);
    if (!(h->grid_h >= 1 && h->grid_h <= h->height && h->grid_w >= 1 && h->grid_w <= h->width))
        return vqc_fail(err, VQC_ERR_FORMAT, "latent grid must be 1..height x 1..width");
    if (h->grid_h * h->grid_w > (1ull << 28))
        return vqc_fail(err, VQC_ERR_FORMAT, "latent grid has more than 268435456 positions");
    if ((h->tile_h == 0) != (h->tile_w == 0))
        return vqc_fail(err, VQC_ERR_FORMAT, "tile size: either both or neither dimension may be 0");
    uint64_t count;
    if ((e = varint(&r, "chunk count", 64, &count))) return e;
    struct { uint32_t type; int critical; vqc_slice s; } chunks[64];
    for (uint64_t i = 0; i < count; i++) {
        uint64_t key, len;
        if ((e = varint(&r, "chunk type", 0xFFFFFFFFull, &key)) || (e = varint(&r, "chunk length", MAX_DIM, &len)))
            return e;
        if ((e = take(&r, (size_t)len, "chunk", &p))) return e;
        chunks[i].type = (uint32_t)(key >> 1);
        chunks[i].critical = (int)(key & 1);
        chunks[i].s.data = p;
        chunks[i].s.len = (uint32_t)len;
    }
    if (h->tile_h == 0) {
        h->tile_rows = h->tile_cols = 1;
    } else {
        h->tile_rows = (h->grid_h + h->tile_h - 1) / h->tile_h;
        h->tile_cols = (h->grid_w + h->tile_w - 1) / h->tile_w;
    }
    h->n_tiles = h->tile_rows * h->tile_cols; /* <= grid_h * grid_w <= 2^28 */
    if (h->n_tiles > r.n - r.pos)
        return vqc_fail(err, VQC_ERR_FORMAT, "truncated: %llu tiles need at least %llu bytes",
                        (unsigned long long)h->n_tiles, (unsigned long long)h->n_tiles);
    if (h->n_tiles > VQC_MAX_TILES)
        return vqc_fail(err, VQC_ERR_LIMIT, "file has %llu tiles, above the limit of %u", (unsigned long long)h->n_tiles,
                        VQC_MAX_TILES);
    h->payloads = vqc_calloc((size_t)h->n_tiles, sizeof *h->payloads); /* bounded by the bytes present */
    if (!h->payloads) return vqc_fail(err, VQC_ERR_INTERNAL, "out of memory");
    for (uint64_t i = 0; i < h->n_tiles; i++) {
        uint64_t len;
        if ((e = varint(&r, "payload length", MAX_DIM, &len))) return e;
        if (len % 4)
            return vqc_fail(err, VQC_ERR_FORMAT, "payload %llu is %llu bytes, not a whole number of 32-bit words",
                            (unsigned long long)i, (unsigned long long)len);
        if (len > r.n - r.pos)
            return vqc_fail(err, VQC_ERR_FORMAT, "truncated: payload %llu needs %llu bytes, %zu left",
                            (unsigned long long)i, (unsigned long long)len, r.n - r.pos);
        h->payloads[i].data = r.d + r.pos;
        h->payloads[i].len = (uint32_t)len;
        r.pos += (size_t)len;
    }
    size_t covered = r.pos;
    if ((e = take(&r, 4, "CRC-32", &p))) return e;
    uint32_t crc = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    if (crc != vqc_crc32(d, covered)) return vqc_fail(err, VQC_ERR_FORMAT, "CRC mismatch: file is corrupted");
    if (r.pos != r.n) return vqc_fail(err, VQC_ERR_FORMAT, "trailing garbage: %zu bytes after the CRC", r.n - r.pos);
    int has_quality = 0; /* informative (SPEC 1.1): checked for duplicates, never used */
    for (uint64_t i = 0; i < count; i++) {
        uint32_t t = chunks[i].type;
        if (t == 0) return vqc_fail(err, VQC_ERR_FORMAT, "chunk type 0 is reserved");
        if (t == 6) { /* stages (SPEC 1.3): one u8 S in 1..16, at most once; checked against the model in decode.c */
            if (h->stages) return vqc_fail(err, VQC_ERR_FORMAT, "duplicate chunk of type 6");
            if (chunks[i].s.len != 1) return vqc_fail(err, VQC_ERR_FORMAT, "bad stages chunk: %u bytes, expected exactly 1", (unsigned)chunks[i].s.len);
            h->stages = chunks[i].s.data[0];
            if (h->stages < 1 || h->stages > 16) return vqc_fail(err, VQC_ERR_FORMAT, "bad stages chunk: %d stages, expected 1..16", h->stages);
            continue;
        }
        if (t > 6) {
            if (chunks[i].critical) return vqc_fail(err, VQC_ERR_FORMAT, "unknown critical chunk type %u: this file needs a newer vqc reader", t);
            continue; /* unknown optional chunk: skipped */
        }
        int *has = t == 1 ? &h->has_alpha : t == 2 ? &h->has_icc : t == 3 ? &h->has_exif : t == 4 ? &has_quality : &h->has_coded;
        if (*has) return vqc_fail(err, VQC_ERR_FORMAT, "duplicate chunk of type %u", t);
        *has = 1;
        if (t == 1) h->alpha = chunks[i].s;
        if (t == 2) h->icc = chunks[i].s;
        if (t == 3) h->exif = chunks[i].s;
    }
    if (!h->stages) h->stages = 1;
    h->coded_w = h->width;
    h->coded_h = h->height;
    for (uint64_t i = 0; i < count; i++)
        if (chunks[i].type == 5 && (e = coded_size(&chunks[i].s, h, err))) return e;
    if (h->has_icc && h->icc.len > (1u << 20)) return vqc_fail(err, VQC_ERR_FORMAT, "ICC profile chunk above 1 MiB");
    if (h->has_exif && h->exif.len > (1u << 20)) return vqc_fail(err, VQC_ERR_FORMAT, "EXIF chunk above 1 MiB");
    if (h->width * h->height > max_pixels)
        return vqc_fail(err, VQC_ERR_LIMIT, "image is %llux%llu, above the limit of %llu pixels",
                        (unsigned long long)h->width, (unsigned long long)h->height, (unsigned long long)max_pixels);
    return 0;
}

void vqc_header_free(vqc_header *h) {
    vqc_free(h->payloads);
    h->payloads = NULL;
}
