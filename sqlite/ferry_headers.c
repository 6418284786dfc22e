/*
 * ferry_headers.c - the `headers` blob of ferry.db as JSON and by name
 * (ferry_headers.h). Every length is checked against what remains of the
 * blob before it is used.
 */
#include "ferry_headers.h"

#include <stdlib.h>
#include <string.h>

struct fh_str {
    const uint8_t *p;
    size_t n;
};

struct fh_iter {
    const uint8_t *p, *end;
    unsigned left;
};

static unsigned rd16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static int iter_init(struct fh_iter *it, const uint8_t *blob, size_t len)
{
    if (!blob || len < 2)
        return FH_MALFORMED;
    it->p = blob + 2;
    it->end = blob + len;
    it->left = rd16(blob);
    return FH_OK;
}

static int iter_str(struct fh_iter *it, struct fh_str *s)
{
    if ((size_t)(it->end - it->p) < 2)
        return FH_MALFORMED;
    s->n = rd16(it->p);
    it->p += 2;
    if ((size_t)(it->end - it->p) < s->n)
        return FH_MALFORMED;
    s->p = it->p;
    it->p += s->n;
    return FH_OK;
}

/* 1: a header in *name / *value; 0: the end, exactly at the blob's end;
 * FH_MALFORMED otherwise. */
static int iter_next(struct fh_iter *it, struct fh_str *name, struct fh_str *value)
{
    if (it->left == 0)
        return it->p == it->end ? 0 : FH_MALFORMED;
    if (iter_str(it, name) < 0 || iter_str(it, value) < 0)
        return FH_MALFORMED;
    it->left--;
    return 1;
}

int fh_validate(const uint8_t *blob, size_t len, unsigned *count)
{
    struct fh_iter it;
    struct fh_str n, v;
    int rc;
    if (iter_init(&it, blob, len) < 0)
        return FH_MALFORMED;
    if (count)
        *count = it.left;
    while ((rc = iter_next(&it, &n, &v)) == 1) {
    }
    return rc == 0 ? FH_OK : FH_MALFORMED;
}

int fh_find(const uint8_t *blob, size_t len, const uint8_t *name, size_t name_len,
            const uint8_t **value, size_t *value_len)
{
    struct fh_iter it;
    struct fh_str n, v;
    int rc, found = 0;
    if (iter_init(&it, blob, len) < 0)
        return FH_MALFORMED;
    while ((rc = iter_next(&it, &n, &v)) == 1) {
        if (!found && n.n == name_len && (name_len == 0 || memcmp(n.p, name, name_len) == 0)) {
            found = 1;
            *value = v.p;
            *value_len = v.n;
        }
    }
    return rc < 0 ? FH_MALFORMED : found;
}

/* The length of the valid UTF-8 sequence at s[0..len), or 0 when s does
 * not begin one. */
static size_t utf8_seq(const uint8_t *s, size_t len)
{
    uint8_t c = s[0];
    size_t n;
    uint8_t lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* no overlong forms */
        else if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

int fh_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq(s + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

/* ---- JSON --------------------------------------------------------------- */

struct sb {
    char *d;
    size_t len, cap;
    int oom;
};

static void sb_put(struct sb *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->len < n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->oom = 1;
                return;
            }
            cap *= 2;
        }
        char *d = realloc(b->d, cap);
        if (!d) {
            b->oom = 1;
            return;
        }
        b->d = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->d + b->len, p, n);
    b->len += n;
    b->d[b->len] = '\0';
}

static void sb_str(struct sb *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* s[0..n) escaped for the inside of a JSON string (no quotes). */
static void sb_escaped(struct sb *b, const uint8_t *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, run = 0; /* s[run..i) is copied as it is */
    while (i < n) {
        uint8_t c = s[i];
        size_t k = utf8_seq(s + i, n - i);
        if (k > 1 || (k == 1 && c >= 0x20 && c != '"' && c != '\\')) {
            i += k;
            continue;
        }
        sb_put(b, s + run, i - run);
        if (k == 0) {
            sb_put(b, "\xEF\xBF\xBD", 3); /* U+FFFD */
        } else if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            sb_put(b, e, 6);
        }
        run = ++i;
    }
    sb_put(b, s + run, i - run);
}

struct ent {
    size_t koff, klen; /* the escaped name in keys */
    const char *k;     /* keys.d + koff, once keys is complete */
    struct fh_str v;
    unsigned idx; /* position in the blob */
};

struct grp {
    size_t start, cnt; /* ents[start..start + cnt), sorted */
    unsigned first;    /* idx of the name's first occurrence */
};

static int cmp_ent(const void *a, const void *b)
{
    const struct ent *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = n ? memcmp(x->k, y->k, n) : 0;
    if (c)
        return c;
    if (x->klen != y->klen)
        return x->klen < y->klen ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int cmp_grp(const void *a, const void *b)
{
    const struct grp *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

static int same_key(const struct ent *x, const struct ent *y)
{
    return x->klen == y->klen && (x->klen == 0 || memcmp(x->k, y->k, x->klen) == 0);
}

static void sb_value(struct sb *b, const struct fh_str *v)
{
    sb_put(b, "\"", 1);
    sb_escaped(b, v->p, v->n);
    sb_put(b, "\"", 1);
}

int fh_json(const uint8_t *blob, size_t len, char **out, size_t *out_len)
{
    unsigned count;
    *out = NULL;
    *out_len = 0;
    if (fh_validate(blob, len, &count) < 0)
        return FH_MALFORMED;

    struct sb res = {0}, keys = {0};
    struct ent *ents = count ? calloc(count, sizeof *ents) : NULL;
    struct grp *grps = count ? calloc(count, sizeof *grps) : NULL;
    int rc = FH_NOMEM;
    if (count && (!ents || !grps))
        goto done;

    /* The headers, each name escaped as it will be printed. */
    struct fh_iter it = {0};
    struct fh_str n = {0};
    iter_init(&it, blob, len);
    for (unsigned i = 0; i < count; i++) {
        iter_next(&it, &n, &ents[i].v); /* cannot fail: validated */
        ents[i].idx = i;
        ents[i].koff = keys.len;
        sb_escaped(&keys, n.p, n.n);
        ents[i].klen = keys.len - ents[i].koff;
    }
    if (keys.oom)
        goto done;
    for (unsigned i = 0; i < count; i++)
        ents[i].k = keys.d ? keys.d + ents[i].koff : "";

    /* Grouped by name (and by position within a name), the groups in the
     * order of their first occurrence. */
    if (count)
        qsort(ents, count, sizeof *ents, cmp_ent);
    size_t ng = 0;
    for (size_t i = 0; i < count;) {
        size_t j = i + 1;
        while (j < count && same_key(&ents[i], &ents[j]))
            j++;
        grps[ng++] = (struct grp){.start = i, .cnt = j - i, .first = ents[i].idx};
        i = j;
    }
    if (ng)
        qsort(grps, ng, sizeof *grps, cmp_grp);

    sb_str(&res, "{");
    for (size_t g = 0; g < ng; g++) {
        const struct ent *e = &ents[grps[g].start];
        if (g)
            sb_str(&res, ",");
        sb_str(&res, "\"");
        sb_put(&res, e->k, e->klen);
        sb_str(&res, "\":");
        if (grps[g].cnt == 1) {
            sb_value(&res, &e->v);
            continue;
        }
        sb_str(&res, "[");
        for (size_t i = 0; i < grps[g].cnt; i++) {
            if (i)
                sb_str(&res, ",");
            sb_value(&res, &e[i].v);
        }
        sb_str(&res, "]");
    }
    sb_str(&res, "}");
    if (res.oom)
        goto done;
    *out = res.d;
    *out_len = res.len;
    res.d = NULL;
    rc = FH_OK;
done:
    free(res.d);
    free(keys.d);
    free(ents);
    free(grps);
    return rc;
}
