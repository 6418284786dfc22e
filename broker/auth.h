/*
 * auth.h - tokens and per-topic permissions, read from the config file.
 *
 * A token grants three kinds of rights, each a list of topic patterns
 * (fnmatch(3) globs, e.g. "orders", "orders.*", "*"):
 *   publish   PUBLISH to a matching topic
 *   consume   SUBSCRIBE to (and so ack, nack, touch) a matching topic
 *   admin     TOPICS, GROUPS, SEEK and TOPIC_CONFIG (a flag, all topics)
 * With no token configured, every connection has every right and ferryd
 * only listens on loopback.
 */
#ifndef FERRY_BROKER_AUTH_H
#define FERRY_BROKER_AUTH_H

#include <stddef.h>
#include <stdint.h>

struct auth_token; /* one configured token; owned by struct auth */

struct auth {
    struct auth_token *tokens;
    size_t ntokens;
};

enum auth_right { AUTH_PUBLISH, AUTH_CONSUME };

/* Finds the token whose secret equals the given bytes, comparing every
 * configured secret in constant time. Returns NULL when none matches. */
const struct auth_token *auth_check(const struct auth *a, const void *secret, size_t len);

/* With tokens configured: may t use topic for right? (t NULL: no.) With
 * none configured, everything is allowed (a == NULL or no tokens). */
int auth_allows(const struct auth *a, const struct auth_token *t, enum auth_right right,
                const uint8_t *topic, size_t topic_len);
int auth_admin(const struct auth *a, const struct auth_token *t);
int auth_enabled(const struct auth *a);

/* The token's name (the config section's), for logs. Never the secret. */
const char *auth_token_name(const struct auth_token *t);

/* Adds a token section's settings. key is "secret", "publish", "consume"
 * or "admin". Returns 0, or -1 with a reason in err. */
int auth_set(struct auth *a, const char *token_name, const char *key, const char *value, char *err,
             size_t errlen);
/* Checks every token has a secret. Returns 0 or -1 with a reason. */
int auth_finish(struct auth *a, char *err, size_t errlen);
void auth_free(struct auth *a);

#endif
