/*
 * auth.c - tokens and per-topic permissions; see auth.h.
 *
 * Secrets are compared in constant time (every byte of every configured
 * secret is looked at, whatever matches), so the time a wrong token takes
 * says nothing about how close it was. Secrets are never logged.
 */
#include "auth.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define AUTH_MAX_PATTERNS 64
#define AUTH_MAX_TOKENS 1024

struct patterns {
    char *items[AUTH_MAX_PATTERNS];
    size_t n;
};

struct auth_token {
    char *name;
    char *secret;
    size_t secret_len;
    struct patterns publish, consume;
    int admin;
};

static struct auth_token *find_or_add(struct auth *a, const char *name)
{
    for (size_t i = 0; i < a->ntokens; i++)
        if (strcmp(a->tokens[i].name, name) == 0)
            return &a->tokens[i];
    if (a->ntokens == AUTH_MAX_TOKENS)
        return NULL;
    struct auth_token *nt = realloc(a->tokens, (a->ntokens + 1) * sizeof(*nt));
    if (!nt)
        return NULL;
    a->tokens = nt;
    struct auth_token *t = &a->tokens[a->ntokens];
    memset(t, 0, sizeof(*t));
    t->name = strdup(name);
    if (!t->name)
        return NULL;
    a->ntokens++;
    return t;
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = 0;
    size_t i = 0;
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    memmove(s, s + i, strlen(s + i) + 1);
}

/* "a, b.*, c" -> patterns; an empty value grants nothing. */
static int set_patterns(struct patterns *p, const char *value, char *err, size_t errlen)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->items[i]);
    p->n = 0;
    char *copy = strdup(value);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        trim(tok);
        if (!*tok)
            continue;
        if (p->n == AUTH_MAX_PATTERNS) {
            snprintf(err, errlen, "more than %d topic patterns", AUTH_MAX_PATTERNS);
            free(copy);
            return -1;
        }
        p->items[p->n] = strdup(tok);
        if (!p->items[p->n]) {
            free(copy);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        p->n++;
    }
    free(copy);
    return 0;
}

int auth_set(struct auth *a, const char *token_name, const char *key, const char *value, char *err,
             size_t errlen)
{
    struct auth_token *t = find_or_add(a, token_name);
    if (!t) {
        snprintf(err, errlen, "too many tokens or out of memory");
        return -1;
    }
    if (strcmp(key, "secret") == 0) {
        size_t n = strlen(value);
        if (n < 16 || n > 1024) {
            snprintf(err, errlen, "token %s: the secret must be 16 to 1024 bytes", token_name);
            return -1;
        }
        free(t->secret);
        t->secret = strdup(value);
        if (!t->secret) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        t->secret_len = n;
        return 0;
    }
    if (strcmp(key, "publish") == 0)
        return set_patterns(&t->publish, value, err, errlen);
    if (strcmp(key, "consume") == 0)
        return set_patterns(&t->consume, value, err, errlen);
    if (strcmp(key, "admin") == 0) {
        if (!strcasecmp(value, "true") || !strcasecmp(value, "yes") || !strcmp(value, "1"))
            t->admin = 1;
        else if (!strcasecmp(value, "false") || !strcasecmp(value, "no") || !strcmp(value, "0"))
            t->admin = 0;
        else {
            snprintf(err, errlen, "token %s: admin must be true or false", token_name);
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "token %s: unknown setting \"%s\"", token_name, key);
    return -1;
}

int auth_finish(struct auth *a, char *err, size_t errlen)
{
    for (size_t i = 0; i < a->ntokens; i++) {
        if (!a->tokens[i].secret) {
            snprintf(err, errlen, "token %s has no secret", a->tokens[i].name);
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            if (a->tokens[j].secret_len == a->tokens[i].secret_len &&
                memcmp(a->tokens[j].secret, a->tokens[i].secret, a->tokens[i].secret_len) == 0) {
                snprintf(err, errlen, "tokens %s and %s have the same secret", a->tokens[j].name,
                         a->tokens[i].name);
                return -1;
            }
        }
    }
    return 0;
}

void auth_free(struct auth *a)
{
    for (size_t i = 0; i < a->ntokens; i++) {
        struct auth_token *t = &a->tokens[i];
        free(t->name);
        if (t->secret) {
            memset(t->secret, 0, t->secret_len);
            free(t->secret);
        }
        for (size_t k = 0; k < t->publish.n; k++)
            free(t->publish.items[k]);
        for (size_t k = 0; k < t->consume.n; k++)
            free(t->consume.items[k]);
    }
    free(a->tokens);
    a->tokens = NULL;
    a->ntokens = 0;
}

int auth_enabled(const struct auth *a)
{
    return a && a->ntokens > 0;
}

/* Equal in constant time for a given secret length; the length itself is
 * compared without branching on content. */
static int ct_equal(const char *secret, size_t secret_len, const uint8_t *given, size_t len)
{
    unsigned diff = (unsigned)(secret_len ^ len);
    for (size_t i = 0; i < secret_len; i++)
        diff |= (unsigned)((uint8_t)secret[i] ^ (i < len ? given[i] : 0));
    return diff == 0;
}

const struct auth_token *auth_check(const struct auth *a, const void *secret, size_t len)
{
    const struct auth_token *found = NULL;
    for (size_t i = 0; i < a->ntokens; i++) {
        int eq = ct_equal(a->tokens[i].secret, a->tokens[i].secret_len, secret, len);
        if (eq && !found)
            found = &a->tokens[i];
    }
    return found;
}

static int matches(const struct patterns *p, const uint8_t *topic, size_t len)
{
    char name[256];
    if (len >= sizeof(name))
        return 0;
    memcpy(name, topic, len);
    name[len] = 0;
    for (size_t i = 0; i < p->n; i++)
        if (fnmatch(p->items[i], name, 0) == 0)
            return 1;
    return 0;
}

int auth_allows(const struct auth *a, const struct auth_token *t, enum auth_right right,
                const uint8_t *topic, size_t topic_len)
{
    if (!auth_enabled(a))
        return 1;
    if (!t)
        return 0;
    return matches(right == AUTH_PUBLISH ? &t->publish : &t->consume, topic, topic_len);
}

int auth_admin(const struct auth *a, const struct auth_token *t)
{
    if (!auth_enabled(a))
        return 1;
    return t && t->admin;
}

const char *auth_token_name(const struct auth_token *t)
{
    return t ? t->name : "-";
}
