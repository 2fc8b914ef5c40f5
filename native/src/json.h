/* A minimal, strict, bounded JSON parser (RFC 8259 grammar) for the safetensors header. */
#ifndef VQC_JSON_H
#define VQC_JSON_H
#include <stddef.h>
#include <stdint.h>

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct {
    int type;
    int isint;      /* J_NUM: an integer literal (no fraction, no exponent) that fits int64 */
    int64_t num;    /* J_NUM with isint */
    const char *str; size_t slen; /* J_STR: decoded, NUL-terminated */
    const char *key; size_t klen; /* member of an object: its key */
    int child, next; /* first child, next sibling: node indices, -1 = none */
} jnode;

typedef struct {
    jnode *nodes;
    int count;
    char *strings;
} jdoc;

/* 0 on success; on failure a message in msg.  Depth <= 16. */
int json_parse(const char *s, size_t n, jdoc *doc, char *msg, size_t msgn);
void json_free(jdoc *doc);
/* member of object node obj by key, or -1 */
int json_get(const jdoc *doc, int obj, const char *key);

#endif
