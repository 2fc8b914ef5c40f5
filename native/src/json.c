/* A minimal strict JSON parser.  Nodes live in an array that grows with the values found (at most
 * 2^24), decoded strings in one arena of the input's length (every decoded string is shorter
 * than its quoted form), so memory is linear in the input. */
#include "json.h"

#include <stdio.h>

#include "internal.h"

typedef struct {
    const char *s;
    size_t n, pos;
    jdoc *doc;
    int cap;
    size_t sused;
    char *msg;
    size_t msgn;
} jp;

static int jerr(jp *p, const char *what) {
    snprintf(p->msg, p->msgn, "JSON header: %s at byte %zu", what, p->pos);
    return -1;
}

static void ws(jp *p) {
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int newnode(jp *p, int type) {
    if (p->doc->count >= p->cap) { /* grow by doubling: memory follows the values present */
        if (p->cap >= (1 << 24)) return -1;
        int cap = p->cap * 2;
        jnode *nn = vqc_alloc((size_t)cap * sizeof(jnode));
        if (!nn) return -1;
        memcpy(nn, p->doc->nodes, (size_t)p->doc->count * sizeof(jnode));
        vqc_free(p->doc->nodes);
        p->doc->nodes = nn;
        p->cap = cap;
    }
    int i = p->doc->count++;
    jnode *nd = &p->doc->nodes[i];
    memset(nd, 0, sizeof *nd);
    nd->type = type;
    nd->child = nd->next = -1;
    return i;
}

static int hexv(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(jp *p, unsigned *u) {
    if (p->n - p->pos < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv((unsigned char)p->s[p->pos + i]);
        if (h < 0) return -1;
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *u = v;
    return 0;
}

/* at a '"': decode the string into the string arena */
static int jstring(jp *p, const char **out, size_t *len) {
    p->pos++; /* opening quote */
    char *dst = p->doc->strings + p->sused, *start = dst;
    for (;;) {
        if (p->pos >= p->n) return jerr(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos++];
        if (c == '"') break;
        if (c < 0x20) return jerr(p, "control character in string");
        if (c != '\\') {
            *dst++ = (char)c;
            continue;
        }
        if (p->pos >= p->n) return jerr(p, "unterminated escape");
        c = (unsigned char)p->s[p->pos++];
        switch (c) {
        case '"': *dst++ = '"'; break;
        case '\\': *dst++ = '\\'; break;
        case '/': *dst++ = '/'; break;
        case 'b': *dst++ = '\b'; break;
        case 'f': *dst++ = '\f'; break;
        case 'n': *dst++ = '\n'; break;
        case 'r': *dst++ = '\r'; break;
        case 't': *dst++ = '\t'; break;
        case 'u': {
            unsigned u, u2;
            if (hex4(p, &u)) return jerr(p, "bad \\u escape");
            if (u >= 0xD800 && u < 0xDC00) {
                if (p->n - p->pos < 6 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') return jerr(p, "lone surrogate");
                p->pos += 2;
                if (hex4(p, &u2) || u2 < 0xDC00 || u2 >= 0xE000) return jerr(p, "bad surrogate pair");
                u = 0x10000 + ((u - 0xD800) << 10) + (u2 - 0xDC00);
            } else if (u >= 0xDC00 && u < 0xE000) {
                return jerr(p, "lone surrogate");
            }
            /* UTF-8: at most 4 bytes, from at least 6 (or 12) input bytes */
            if (u < 0x80) *dst++ = (char)u;
            else if (u < 0x800) { *dst++ = (char)(0xC0 | u >> 6); *dst++ = (char)(0x80 | (u & 0x3F)); }
            else if (u < 0x10000) {
                *dst++ = (char)(0xE0 | u >> 12); *dst++ = (char)(0x80 | ((u >> 6) & 0x3F)); *dst++ = (char)(0x80 | (u & 0x3F));
            } else {
                *dst++ = (char)(0xF0 | u >> 18); *dst++ = (char)(0x80 | ((u >> 12) & 0x3F));
                *dst++ = (char)(0x80 | ((u >> 6) & 0x3F)); *dst++ = (char)(0x80 | (u & 0x3F));
            }
            break;
        }
        default: return jerr(p, "bad escape");
        }
    }
    *dst++ = 0;
    *out = start;
    *len = (size_t)(dst - start - 1);
    p->sused += (size_t)(dst - start);
    return 0;
}

static int jvalue(jp *p, int depth);

static int jnumber(jp *p) {
    size_t st = p->pos;
    int isint = 1;
    if (p->pos < p->n && p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->n) return jerr(p, "bad number");
    if (p->s[p->pos] == '0') p->pos++;
    else if (p->s[p->pos] >= '1' && p->s[p->pos] <= '9')
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    else return jerr(p, "bad number");
    if (p->pos < p->n && p->s[p->pos] == '.') {
        isint = 0;
        p->pos++;
        if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9') return jerr(p, "bad number");
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        isint = 0;
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9') return jerr(p, "bad number");
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    int i = newnode(p, J_NUM);
    if (i < 0) return jerr(p, "too many values");
    if (isint) {
        int neg = p->s[st] == '-';
        uint64_t v = 0;
        for (size_t k = st + (size_t)neg; k < p->pos; k++) {
            unsigned d = (unsigned)(p->s[k] - '0');
            if (v > (UINT64_C(1) << 62) / 5) { isint = 0; break; } /* would exceed ~2^63 */
            v = v * 10 + d;
        }
        if (isint && v > (uint64_t)INT64_MAX) isint = 0;
        p->doc->nodes[i].num = isint ? (neg ? -(int64_t)v : (int64_t)v) : 0;
    }
    p->doc->nodes[i].isint = isint;
    return i;
}

static int jvalue(jp *p, int depth) {
    if (depth > 16) return jerr(p, "nested too deeply");
    ws(p);
    if (p->pos >= p->n) return jerr(p, "unexpected end");
    char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        int obj = c == '{';
        int i = newnode(p, obj ? J_OBJ : J_ARR), last = -1;
        if (i < 0) return jerr(p, "too many values");
        p->pos++;
        ws(p);
        if (p->pos < p->n && p->s[p->pos] == (obj ? '}' : ']')) {
            p->pos++;
            return i;
        }
        for (;;) {
            const char *key = NULL;
            size_t klen = 0;
            if (obj) {
                ws(p);
                if (p->pos >= p->n || p->s[p->pos] != '"') return jerr(p, "expected a key");
                if (jstring(p, &key, &klen)) return -1;
                ws(p);
                if (p->pos >= p->n || p->s[p->pos] != ':') return jerr(p, "expected ':'");
                p->pos++;
            }
            int v = jvalue(p, depth + 1);
            if (v < 0) return -1;
            p->doc->nodes[v].key = key;
            p->doc->nodes[v].klen = klen;
            if (last < 0) p->doc->nodes[i].child = v;
            else p->doc->nodes[last].next = v;
            last = v;
            ws(p);
            if (p->pos >= p->n) return jerr(p, "unexpected end");
            if (p->s[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if (p->s[p->pos] == (obj ? '}' : ']')) {
                p->pos++;
                return i;
            }
            return jerr(p, "expected ',' or a closing bracket");
        }
    }
    if (c == '"') {
        const char *s;
        size_t len;
        if (jstring(p, &s, &len)) return -1;
        int i = newnode(p, J_STR);
        if (i < 0) return jerr(p, "too many values");
        p->doc->nodes[i].str = s;
        p->doc->nodes[i].slen = len;
        return i;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return jnumber(p);
    static const char *lit[3] = {"null", "false", "true"};
    for (int t = 0; t < 3; t++) {
        size_t l = strlen(lit[t]);
        if (p->n - p->pos >= l && memcmp(p->s + p->pos, lit[t], l) == 0) {
            p->pos += l;
            int i = newnode(p, t == 0 ? J_NULL : t == 1 ? J_FALSE : J_TRUE);
            if (i < 0) return jerr(p, "too many values");
            return i;
        }
    }
    return jerr(p, "unexpected character");
}

int json_parse(const char *s, size_t n, jdoc *doc, char *msg, size_t msgn) {
    memset(doc, 0, sizeof *doc);
    jp p = {s, n, 0, doc, 256, 0, msg, msgn};
    if (n > (1u << 26)) {
        snprintf(msg, msgn, "JSON header of %zu bytes is too large", n);
        return -1;
    }
    doc->nodes = vqc_calloc((size_t)p.cap, sizeof(jnode));
    doc->strings = vqc_alloc(n + 1);
    if (!doc->nodes || !doc->strings) {
        json_free(doc);
        snprintf(msg, msgn, "out of memory");
        return -1;
    }
    int root = jvalue(&p, 0);
    if (root < 0) {
        json_free(doc);
        return -1;
    }
    ws(&p);
    if (p.pos != n) {
        jerr(&p, "trailing characters");
        json_free(doc);
        return -1;
    }
    return 0;
}

void json_free(jdoc *doc) {
    vqc_free(doc->nodes);
    vqc_free(doc->strings);
    memset(doc, 0, sizeof *doc);
}

int json_get(const jdoc *doc, int obj, const char *key) {
    if (obj < 0 || doc->nodes[obj].type != J_OBJ) return -1;
    size_t kl = strlen(key);
    int found = -1;
    for (int c = doc->nodes[obj].child; c >= 0; c = doc->nodes[c].next)
        if (doc->nodes[c].klen == kl && memcmp(doc->nodes[c].key, key, kl) == 0) found = c; /* last wins, as Python */
    return found;
}
