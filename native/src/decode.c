/* The decoding procedure (SPEC.md "Decoding procedure"), optionally on several threads. */
#include "internal.h"

#ifdef VQC_WITH_THREADS
#include <pthread.h>
#endif

const char *vqc_version(void) { return "vqc native decoder 0.1 (format 1.3)"; }

typedef struct job job;
struct job {
    /* shared, read-only */
    const vqc_model *m;
    const vqc_header *h;
    int kernel;
    vqc_tile *tiles;
    int (*groups)[2]; /* [start, count] into tiles */
    int n_groups;
    vqc_grid grid;
    int regions_r, regions_c, region; /* pixel decoder regions, in latent positions */
    uint8_t *coded;
    int grey;
    uint8_t *up_dst;
    int nc;
    /* work counters and the first error */
    int next;
    int failed;
    vqc_error err;
#ifdef VQC_WITH_THREADS
    pthread_mutex_t mu;
#endif
    int phase; /* 0 prior, 1 pixels, 2 upsample */
};

static int take_work(job *j, int limit) {
    int k;
#ifdef VQC_WITH_THREADS
    pthread_mutex_lock(&j->mu);
#endif
    k = j->failed || j->next >= limit ? -1 : j->next++;
#ifdef VQC_WITH_THREADS
    pthread_mutex_unlock(&j->mu);
#endif
    return k;
}

static void set_error(job *j, const vqc_error *e) {
#ifdef VQC_WITH_THREADS
    pthread_mutex_lock(&j->mu);
#endif
    if (!j->failed) {
        j->failed = 1;
        j->err = *e;
    }
#ifdef VQC_WITH_THREADS
    pthread_mutex_unlock(&j->mu);
#endif
}

static void *worker(void *arg) {
    job *j = arg;
    vqc_error e;
    int k;
    if (j->phase == 0) {
        while ((k = take_work(j, j->n_groups)) >= 0) {
            vqc_tile *t = j->tiles + j->groups[k][0];
            int cnt = j->groups[k][1];
            int bad = 0;
            for (int i = 0; i < cnt && !bad; i++) {
                t[i].out = vqc_calloc((size_t)t[i].h * t[i].w * (size_t)j->grid.stages, sizeof(uint16_t));
                if (!t[i].out) bad = vqc_fail(&e, VQC_ERR_INTERNAL, "out of memory");
                else j->grid.tiles[t[i].number] = t[i].out;
            }
            if (!bad) bad = vqc_prior_decode(j->m, j->kernel, j->grid.stages, t, cnt, &e);
            if (bad) set_error(j, &e);
        }
    } else if (j->phase == 1) {
        const vqc_header *h = j->h;
        while ((k = take_work(j, j->regions_r * j->regions_c)) >= 0) {
            int rr = k / j->regions_c, rc = k % j->regions_c;
            int r0 = rr * j->region, c0 = rc * j->region;
            int r1 = r0 + j->region > (int)h->grid_h ? (int)h->grid_h : r0 + j->region;
            int c1 = c0 + j->region > (int)h->grid_w ? (int)h->grid_w : c0 + j->region;
            if (vqc_pixdec_region(j->m, j->kernel, &j->grid, (int)h->grid_h, (int)h->grid_w, r0, r1, c0, c1, j->coded,
                                  (size_t)h->coded_w, (size_t)h->coded_h, j->grey, &e))
                set_error(j, &e);
        }
    } else {
        const vqc_header *h = j->h;
        const int strip = 256;
        int nstrips = (int)((h->height + strip - 1) / strip);
        while ((k = take_work(j, nstrips)) >= 0) {
            uint32_t y0 = (uint32_t)k * strip, y1 = y0 + strip > h->height ? (uint32_t)h->height : y0 + strip;
            if (vqc_upsample(j->coded, (uint32_t)h->coded_w, (uint32_t)h->coded_h, j->nc, j->up_dst, (uint32_t)h->width,
                             (uint32_t)h->height, y0, y1)) {
                vqc_fail(&e, VQC_ERR_INTERNAL, "out of memory");
                set_error(j, &e);
            }
        }
    }
    return NULL;
}

static int run(job *j, int phase, int threads) {
    j->phase = phase;
    j->next = 0;
#ifdef VQC_WITH_THREADS
    if (threads > 1) {
        pthread_t tid[64];
        int n = threads > 64 ? 64 : threads, started = 0;
        for (int i = 1; i < n; i++)
            if (pthread_create(&tid[started], NULL, worker, j) == 0) started++;
        worker(j);
        for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
        return j->failed;
    }
#else
    (void)threads;
#endif
    worker(j);
    return j->failed;
}

static int check_alpha(const vqc_slice *a, const vqc_header *h, vqc_error *err) {
    const uint8_t *b = a->data;
    if (a->len < 33 || memcmp(b, "\x89PNG\r\n\x1a\n", 8) != 0 || memcmp(b + 12, "IHDR", 4) != 0)
        return vqc_fail(err, VQC_ERR_FORMAT, "alpha chunk is not a PNG");
    uint32_t w = (uint32_t)b[16] << 24 | (uint32_t)b[17] << 16 | (uint32_t)b[18] << 8 | b[19];
    uint32_t hh = (uint32_t)b[20] << 24 | (uint32_t)b[21] << 16 | (uint32_t)b[22] << 8 | b[23];
    if (w != h->width || hh != h->height)
        return vqc_fail(err, VQC_ERR_FORMAT, "alpha plane is not %llux%llu", (unsigned long long)h->width,
                        (unsigned long long)h->height);
    if (b[24] != 8 || b[25] != 0) return vqc_fail(err, VQC_ERR_FORMAT, "alpha plane is not an 8-bit greyscale PNG");
    return 0;
}

static void hex8(const uint8_t *id, char *out) {
    for (int i = 0; i < 8; i++) {
        out[2 * i] = "0123456789abcdef"[id[i] >> 4];
        out[2 * i + 1] = "0123456789abcdef"[id[i] & 15];
    }
    out[16] = 0;
}

int vqc_decode(const uint8_t *file, size_t n, vqc_model *const *models, size_t n_models, const vqc_options *opts,
               vqc_image *out, vqc_error *err) {
    vqc_error dummy;
    if (!err) err = &dummy;
    err->code = 0;
    err->msg[0] = 0;
    memset(out, 0, sizeof *out);
    vqc_options o = {0, 1, VQC_KERNEL_AUTO};
    if (opts) o = *opts;
    if (!o.max_pixels) o.max_pixels = VQC_DEFAULT_MAX_PIXELS;
    vqc_header h;
    job j;
    memset(&j, 0, sizeof j);
#ifdef VQC_WITH_THREADS
    pthread_mutex_init(&j.mu, NULL);
#endif
    int e = vqc_parse(file, n, o.max_pixels, &h, err);
    uint8_t *coded = NULL, *pixels = NULL;
    if (e) goto fail;
    /* the model, by id */
    const vqc_model *m = NULL;
    for (size_t i = 0; i < n_models; i++)
        if (models[i] && memcmp(models[i]->id, h.model_hash, 8) == 0) m = models[i];
    if (!m) {
        char want[17], got[17];
        hex8(h.model_hash, want);
        for (size_t i = 0; i < n_models; i++)
            if (models[i] && strcmp(models[i]->name, h.model_name) == 0) {
                hex8(models[i]->id, got);
                e = vqc_fail(err, VQC_ERR_MODEL, "file needs model %s with id %s, found id %s", h.model_name, want, got);
                goto fail;
            }
        if (n_models == 1 && models[0]) {
            hex8(models[0]->id, got);
            e = vqc_fail(err, VQC_ERR_MODEL, "file needs model %s with id %s, the model given has id %s", h.model_name, want, got);
        } else {
            e = vqc_fail(err, VQC_ERR_MODEL, "unknown model '%s' (id %s)", h.model_name, want);
        }
        goto fail;
    }
    if (h.stages > m->stages) { /* S_max: 1 for arch vq (SPEC "Chunks", type 6) */
        e = vqc_fail(err, VQC_ERR_FORMAT, "file codes %d stages, model %s has %d", h.stages, h.model_name, m->stages);
        goto fail;
    }
    const uint64_t f = (uint64_t)m->f;
    if (h.grid_h != (h.coded_h + f - 1) / f || h.grid_w != (h.coded_w + f - 1) / f) {
        e = vqc_fail(err, VQC_ERR_FORMAT, "latent grid %llux%llu does not fit the %llux%llu coded image at f=%d",
                     (unsigned long long)h.grid_h, (unsigned long long)h.grid_w, (unsigned long long)h.coded_w,
                     (unsigned long long)h.coded_h, m->f);
        goto fail;
    }
    uint64_t th = h.tile_h ? (h.tile_h < h.grid_h ? h.tile_h : h.grid_h) : h.grid_h;
    uint64_t tw = h.tile_w ? (h.tile_w < h.grid_w ? h.tile_w : h.grid_w) : h.grid_w;
    if (th > VQC_MAX_TILE_SIDE || tw > VQC_MAX_TILE_SIDE || th * tw > VQC_MAX_TILE_POSITIONS) {
        e = vqc_fail(err, VQC_ERR_LIMIT, "prior tiles of %llux%llu are above the limit (256 a side, 16384 positions)",
                     (unsigned long long)th, (unsigned long long)tw);
        goto fail;
    }
    if (h.has_alpha && (e = check_alpha(&h.alpha, &h, err))) goto fail;

    /* prior: tiles in raster order, grouped by equal shape, lock-step within a group */
    int threads = o.threads < 1 ? 1 : o.threads;
    j.m = m;
    j.h = &h;
    j.kernel = vqc_cpu_kernel(o.kernel);
    j.tiles = vqc_calloc((size_t)h.n_tiles, sizeof(vqc_tile));
    j.groups = vqc_calloc((size_t)h.n_tiles, sizeof *j.groups);
    j.grid.grid_h = (int)h.grid_h;
    j.grid.grid_w = (int)h.grid_w;
    j.grid.tile_h = (int)th;
    j.grid.tile_w = (int)tw;
    j.grid.tile_cols = (int)h.tile_cols;
    j.grid.stages = h.stages;
    j.grid.tiles = vqc_calloc((size_t)h.n_tiles, sizeof(uint16_t *));
    if (!j.tiles || !j.groups || !j.grid.tiles) {
        e = vqc_fail(err, VQC_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    for (uint64_t k = 0; k < h.n_tiles; k++) {
        vqc_tile *t = &j.tiles[k];
        uint64_t r = k / h.tile_cols, c = k % h.tile_cols;
        t->r0 = (int)(r * th);
        t->c0 = (int)(c * tw);
        t->h = (int)((r + 1) * th > h.grid_h ? h.grid_h - r * th : th);
        t->w = (int)((c + 1) * tw > h.grid_w ? h.grid_w - c * tw : tw);
        t->payload = &h.payloads[k];
        t->number = (int)k;
        if (t->payload->len == 0) { /* rejected before any work */
            e = vqc_fail(err, VQC_ERR_FORMAT, "payload of tile %d is not a conforming range-coder stream: it is empty", (int)k);
            goto fail;
        }
    }
    {
        /* tiles per group: the equal-shaped tiles of one tile row (all but the last column), then the last
           column; split so that every thread gets work and a group's state stays within 64 MiB */
        size_t es = m->int8 ? 1 : 4;
        size_t state = es * (size_t)m->C *
                       ((size_t)(th + 1) * (tw + 2) * (1 + m->L) + (size_t)th * tw * 2 * m->L + (size_t)th * (tw + 1) * m->L);
        int cap = (int)((64u << 20) / (state ? state : 1));
        if (cap < 1) cap = 1;
        if (cap > 16) cap = 16;
        /* collect runs of equal shape in raster order */
        uint64_t k = 0;
        int ng = 0;
        while (k < h.n_tiles) {
            uint64_t end = k + 1;
            while (end < h.n_tiles && j.tiles[end].h == j.tiles[k].h && j.tiles[end].w == j.tiles[k].w) end++;
            /* reorder nothing: a run is contiguous only within a row; fine for lock-step */
            uint64_t len = end - k;
            int per = (int)((len + (uint64_t)threads - 1) / (uint64_t)threads);
            if (per > cap) per = cap;
            if (per < 1) per = 1;
            for (uint64_t s = k; s < end; s += (uint64_t)per) {
                j.groups[ng][0] = (int)s;
                j.groups[ng][1] = (int)(end - s < (uint64_t)per ? end - s : (uint64_t)per);
                ng++;
            }
            k = end;
        }
        j.n_groups = ng;
    }
    if (run(&j, 0, threads)) {
        *err = j.err;
        e = err->code;
        goto fail;
    }
    /* pixels at the coded size, then (if needed) upsampled to the display size */
    int nc = h.mode == 1 ? 1 : 3;
    size_t npix = (size_t)h.width * h.height;
    pixels = vqc_alloc(npix * (size_t)nc);
    int upsample = h.coded_w != h.width || h.coded_h != h.height;
    coded = upsample ? vqc_alloc((size_t)h.coded_w * h.coded_h * (size_t)nc) : pixels;
    if (!pixels || !coded) {
        e = vqc_fail(err, VQC_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    j.coded = coded;
    j.grey = h.mode == 1;
    j.nc = nc;
    j.region = 256 / m->f < 1 ? 1 : 256 / m->f;
    j.regions_r = (int)((h.grid_h + (uint64_t)j.region - 1) / (uint64_t)j.region);
    j.regions_c = (int)((h.grid_w + (uint64_t)j.region - 1) / (uint64_t)j.region);
    if (run(&j, 1, threads)) {
        *err = j.err;
        e = err->code;
        goto fail;
    }
    if (upsample) {
        j.up_dst = pixels;
        if (run(&j, 2, threads)) {
            *err = j.err;
            e = err->code;
            goto fail;
        }
        vqc_free(coded);
        coded = NULL;
    }
    out->width = (uint32_t)h.width;
    out->height = (uint32_t)h.height;
    out->channels = nc;
    out->pixels = pixels;
    if (h.has_alpha) out->alpha_png = h.alpha.data, out->alpha_png_size = h.alpha.len;
    if (h.has_icc) out->icc = h.icc.data, out->icc_size = h.icc.len;
    if (h.has_exif) out->exif = h.exif.data, out->exif_size = h.exif.len;
    memcpy(out->model_name, h.model_name, 33);
    out->minor_version = h.minor;
    if (!upsample) coded = NULL;
    pixels = NULL;
    e = 0;
fail:
    if (coded != pixels) vqc_free(coded);
    vqc_free(pixels);
    if (j.grid.tiles)
        for (uint64_t k = 0; k < h.n_tiles; k++) vqc_free(j.grid.tiles[k]);
    vqc_free(j.grid.tiles);
    vqc_free(j.tiles);
    vqc_free(j.groups);
#ifdef VQC_WITH_THREADS
    pthread_mutex_destroy(&j.mu);
#endif
    vqc_header_free(&h);
    return e;
}

void vqc_image_free(vqc_image *img) {
    if (!img) return;
    vqc_free(img->pixels);
    memset(img, 0, sizeof *img);
}
