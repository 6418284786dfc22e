/*
 * js.c - libferry over NATS JetStream: the same connection, publish and
 * consumer API on a `nats://` address (docs/SCALING.md), through Debian's
 * NATS C client (libnats).
 *
 * A ferry_conn whose address starts with nats:// has c->js set and no
 * socket of its own; every public call that has a JetStream meaning checks
 * c->js first and comes here. The names and the mapping:
 *
 *   stream        one per address (?stream=, default FERRY) holding the
 *                 subjects "<prefix>.>" (?prefix=, default ferry); created
 *                 at connect when missing (?replicas=, ?dedupe_ms=)
 *   topic T       subject "<prefix>.T"; its dead letters "_dead.T" are
 *                 "<prefix>._dead.T"
 *   group G of T  a durable pull consumer (js_durable_name), filtered on
 *                 T's subject, explicit acks, AckWait = the lease,
 *                 MaxDeliver unlimited: libferry counts attempts and
 *                 dead-letters itself, as ferryd does
 *   message       Nats-Msg-Id = the id, Ferry-Key / Ferry-Key-Hex = the
 *                 key, user headers as NATS headers, Ferry-Deliver-At,
 *                 Ferry-Producer and Ferry-Producer-Seq (the relay)
 *
 * Consuming: every subscription has a fetch thread that pulls (a long-poll
 * pull request, answered by the server as messages arrive) at most as many
 * messages as the subscription has free window slots, and queues them on
 * the connection under js->mu; ferry_receive waits on js->cv. A slot is
 * taken by each delivery handed out and freed by its ack, nack or
 * dead-lettering, or when its lease runs out (JetStream then redelivers
 * it). The natsMsg of each outstanding delivery stays in its
 * subscription's table (struct js_out) so that acks by sequence
 * (ferry_sub_ack) find it.
 *
 * Publishing: ferry_publish waits for the PubAck (the stream's durable
 * ack); ferry_publish_async hands the message to libnats' asynchronous
 * publish and the PubAck handler (a libnats thread) moves the outcome to a
 * list that ferry_poll / ferry_flush run the callbacks of, on the caller's
 * thread. ferry__js_publish_window is the relay's: a window of publishes,
 * the stored prefix reported.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <nats/nats.h>

#include "internal.h"
#include "js_internal.h"

#define JS_DEFAULT_STREAM "FERRY"
#define JS_DEFAULT_PREFIX "ferry"
#define JS_MAX_SERVERS 16
/* Longest wait of one pull request: the thread also wakes for a stop or a
 * window change. */
#define JS_FETCH_WAIT_MS 2000
/* Most messages one pull asks for. */
#define JS_FETCH_MAX 256
/* How long a subscription keeps trying to bind to its consumer again after
 * it vanished (ferry_seek deletes and creates it) before it is ended. */
#define JS_REBIND_MS 10000
#define JS_MAX_ACK_PENDING 65536
#define JS_DEFAULT_MAX_DELIVERIES 5
#define JS_DEFAULT_ACK_WAIT_MS 30000u

/* One delivery handed out and not yet settled. */
struct js_out {
    uint64_t seq;
    int64_t deadline_us; /* its lease; 0 once expired (no slot) */
    natsMsg *msg;
};

struct ferry__js_sub {
    struct ferry__js *js;
    struct ferry_sub *s;
    natsSubscription *nsub;
    char durable[96];
    char subject[PROTO_MAX_TOPIC + 80];
    char dead_subject[PROTO_MAX_TOPIC + 90];
    pthread_t th;
    int th_started;
    int stop;
    pthread_cond_t wake; /* a slot freed, the window changed, stop */
    struct js_out *out;
    size_t nout, outcap;
    size_t live; /* entries with a running lease: slots in use */
    int64_t ack_wait_us;
};

/* A pipelined publish awaiting its PubAck. */
struct js_pub {
    natsMsg *msg; /* the key: the handler gets this pointer back */
    ferry_publish_cb cb;
    void *userdata;
    int done;
    int status;
    ferry_ack ack;
    char err[160];
    struct js_pub *next;
};

struct ferry__js {
    natsConnection *nc;
    jsCtx *jsc;
    char stream[64];
    char prefix[64];
    int replicas;
    int64_t dedupe_ms;
    int request_timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* the queue or a publish outcome changed */
    /* Pipelined publishes in the order sent; done ones wait for their
     * callback (run on the caller's thread). */
    struct js_pub *pub_head, *pub_tail;
    size_t pub_in_flight;
    int nats_closed; /* the closed callback ran: no libnats thread uses js */
};

/* ------------------------------------------------------------------------
 * Small things.
 */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A FERRY_E* for a libnats status (and JetStream error code). */
static int map_status(natsStatus s, jsErrCode jerr)
{
    switch (s) {
    case NATS_OK:
        return 0;
    case NATS_TIMEOUT:
        return FERRY_ETIMEOUT;
    case NATS_NO_MEMORY:
        return FERRY_ENOMEM;
    case NATS_NO_SERVER:
    case NATS_NO_RESPONDERS:
        return FERRY_ECONNECT;
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_STALE_CONNECTION:
        return FERRY_ECLOSED;
    case NATS_IO_ERROR:
        return FERRY_EIO;
    case NATS_NOT_PERMITTED:
    case NATS_CONNECTION_AUTH_FAILED:
        return FERRY_EAUTH;
    case NATS_MAX_PAYLOAD:
        return FERRY_EMESSAGE_TOO_LARGE;
    case NATS_NOT_FOUND:
        return FERRY_EUNKNOWN_GROUP;
    case NATS_INVALID_ARG:
        return FERRY_EINVALID;
    default:
        break;
    }
    switch ((int)jerr) {
    case 10077: /* JSStreamStoreFailedF */
    case 10047: /* JSStorageResourcesExceededErr */
    case 10028: /* JSMaximumMessagesExceeded */
    case 10054: /* JSStreamMessageExceedsMaximumErr */
        return jerr == 10054 ? FERRY_EMESSAGE_TOO_LARGE : FERRY_ESTORAGE_FULL;
    case 10008: /* JSClusterNotAvailErr */
    case 10023: /* JSInsufficientResourcesErr */
        return FERRY_ECONNECT;
    default:
        return FERRY_EINTERNAL;
    }
}

static int js_fail(ferry_conn *c, natsStatus s, jsErrCode jerr, const char *what)
{
    const char *last = nats_GetLastError(NULL);
    int code = map_status(s, jerr);
    if (jerr)
        return ferry__seterr(c, code, "%s: %s (JetStream error %d%s%s)", what,
                             natsStatus_GetText(s), (int)jerr, last && *last ? ": " : "",
                             last ? last : "");
    return ferry__seterr(c, code, "%s: %s%s%s", what, natsStatus_GetText(s),
                         last && *last && strcmp(last, natsStatus_GetText(s)) ? ": " : "",
                         last && strcmp(last, natsStatus_GetText(s)) ? last : "");
}

/* FNV-1a over a, NUL, b. */
static uint32_t fnv1a(const char *a, const char *b)
{
    uint32_t h = 2166136261u;
    for (const char *p = a; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    h = (h ^ 0) * 16777619u;
    for (const char *p = b; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h;
}

/* The durable consumer of group g on topic t: "<g>_<t>_<hash>" with the
 * dots JetStream names cannot hold replaced, cut short enough for any
 * name, the hash keeping two groups apart whatever the cut. */
static void js_durable_name(char *out, size_t cap, const char *topic, const char *group)
{
    char base[64];
    snprintf(base, sizeof base, "%.30s_%.30s", group, topic);
    for (char *p = base; *p; p++)
        if (*p == '.')
            *p = '_';
    snprintf(out, cap, "%s_%08" PRIx32, base, fnv1a(topic, group));
}

static void subject_of(const struct ferry__js *js, const char *topic, char *out, size_t cap)
{
    snprintf(out, cap, "%s.%s", js->prefix, topic);
}

/* ------------------------------------------------------------------------
 * The address.
 */

/* Parses "nats://h:p[,h:p...][?k=v&...]" into servers (each given the
 * nats:// scheme) and options. Returns 0 or -1 with why. */
static int parse_address(const char *addr, char servers[][300], int *nservers, struct ferry__js *js,
                         char *why, size_t why_len)
{
    const char *p = addr + strlen("nats://");
    const char *q = strchr(p, '?');
    size_t hosts_len = q ? (size_t)(q - p) : strlen(p);
    if (hosts_len && p[hosts_len - 1] == '/')
        hosts_len--;
    *nservers = 0;
    size_t i = 0;
    while (i < hosts_len) {
        size_t j = i;
        while (j < hosts_len && p[j] != ',')
            j++;
        size_t n = j - i;
        const char *h = p + i;
        if (n > 7 && !strncmp(h, "nats://", 7)) {
            h += 7;
            n -= 7;
        }
        if (n == 0 || n > 280 || *nservers == JS_MAX_SERVERS) {
            snprintf(why, why_len, "address \"%.300s\": bad server list", addr);
            return -1;
        }
        snprintf(servers[*nservers], 300, "nats://%.*s", (int)n, h);
        (*nservers)++;
        i = j + 1;
    }
    if (*nservers == 0) {
        snprintf(why, why_len, "address \"%.300s\" names no server", addr);
        return -1;
    }
    snprintf(js->stream, sizeof js->stream, "%s", JS_DEFAULT_STREAM);
    snprintf(js->prefix, sizeof js->prefix, "%s", JS_DEFAULT_PREFIX);
    js->replicas = 1;
    js->dedupe_ms = 0;
    while (q && *q) {
        q++; /* past ? or & */
        const char *end = strchr(q, '&');
        size_t n = end ? (size_t)(end - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        if (!eq) {
            snprintf(why, why_len, "address option \"%.*s\" has no value", (int)n, q);
            return -1;
        }
        size_t kl = (size_t)(eq - q), vl = n - kl - 1;
        const char *v = eq + 1;
        char val[64];
        if (vl == 0 || vl >= sizeof val) {
            snprintf(why, why_len, "address option \"%.*s\": bad value", (int)kl, q);
            return -1;
        }
        memcpy(val, v, vl);
        val[vl] = '\0';
        int name_ok = 1;
        for (size_t k = 0; k < vl; k++)
            if (!((val[k] >= 'A' && val[k] <= 'Z') || (val[k] >= 'a' && val[k] <= 'z') ||
                  (val[k] >= '0' && val[k] <= '9') || val[k] == '_' || val[k] == '-'))
                name_ok = 0;
        char *num_end;
        if (kl == 6 && !strncmp(q, "stream", 6) && name_ok) {
            snprintf(js->stream, sizeof js->stream, "%s", val);
        } else if (kl == 6 && !strncmp(q, "prefix", 6) && name_ok) {
            snprintf(js->prefix, sizeof js->prefix, "%s", val);
        } else if (kl == 8 && !strncmp(q, "replicas", 8)) {
            long r = strtol(val, &num_end, 10);
            if (*num_end || r < 1 || r > 5) {
                snprintf(why, why_len, "replicas=%s: use 1-5", val);
                return -1;
            }
            js->replicas = (int)r;
        } else if (kl == 9 && !strncmp(q, "dedupe_ms", 9)) {
            long long d = strtoll(val, &num_end, 10);
            if (*num_end || d < 1 || d > 7LL * 24 * 3600 * 1000) {
                snprintf(why, why_len, "dedupe_ms=%s: use 1 ms to 7 days", val);
                return -1;
            }
            js->dedupe_ms = d;
        } else {
            snprintf(why, why_len,
                     "address option \"%.*s\" unknown or invalid (stream, prefix, replicas, "
                     "dedupe_ms)",
                     (int)n, q);
            return -1;
        }
        q = end;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Connecting.
 */

static void on_puback(jsCtx *jsc, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);

/* libnats' last callback on a connection: after it none of its threads
 * touches js, which ferry__js_free waits for before freeing it. */
static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    struct ferry__js *js = closure;
    pthread_mutex_lock(&js->mu);
    js->nats_closed = 1;
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
}

/* The stream: used as it is when it exists, else created. */
static int ensure_stream(ferry_conn *c, struct ferry__js *js)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js->jsc, js->stream, NULL, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (s != NATS_NOT_FOUND)
        return js_fail(c, s, jerr, "JetStream is not available");
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    char subj[80];
    snprintf(subj, sizeof subj, "%s.>", js->prefix);
    const char *subjects[1] = {subj};
    cfg.Name = js->stream;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.Replicas = js->replicas;
    if (js->dedupe_ms)
        cfg.Duplicates = js->dedupe_ms * 1000000;
    jerr = 0;
    s = js_AddStream(&si, js->jsc, &cfg, NULL, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    /* Another client created it meanwhile. */
    if (js_GetStreamInfo(&si, js->jsc, js->stream, NULL, NULL) == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    return js_fail(c, s, jerr, "cannot create the stream");
}

int ferry__js_connect(ferry_conn *c, const char *addr, const ferry_options *o, char *why,
                      size_t why_len)
{
    struct ferry__js *js = calloc(1, sizeof *js);
    if (!js) {
        snprintf(why, why_len, "out of memory");
        return FERRY_ENOMEM;
    }
    pthread_mutex_init(&js->mu, NULL);
    pthread_cond_init(&js->cv, NULL);
    c->js = js;
    char servers[JS_MAX_SERVERS][300];
    int n = 0;
    if (parse_address(addr, servers, &n, js, why, why_len) < 0)
        return FERRY_EINVALID;
    const char *urls[JS_MAX_SERVERS];
    for (int i = 0; i < n; i++)
        urls[i] = servers[i];

    js->request_timeout_ms =
        o->request_timeout_ms ? o->request_timeout_ms : FERRY__DEFAULT_REQUEST_TIMEOUT_MS;
    int connect_ms =
        o->connect_timeout_ms > 0 ? o->connect_timeout_ms : FERRY__DEFAULT_CONNECT_TIMEOUT_MS;

    natsOptions *no = NULL;
    natsStatus s = natsOptions_Create(&no);
    if (s == NATS_OK)
        s = natsOptions_SetServers(no, urls, n);
    if (s == NATS_OK)
        s = natsOptions_SetName(no, o->client_name ? o->client_name : "libferry");
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(no, connect_ms);
    /* Reconnect for as long as the application keeps the connection: a
     * restarted server or a cluster failover is ridden through, and the
     * calls meanwhile time out. */
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(no, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(no, 100);
    if (s == NATS_OK && o->token)
        s = natsOptions_SetToken(no, o->token);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(no, on_closed, js);
    if (s == NATS_OK)
        s = natsConnection_Connect(&js->nc, no);
    natsOptions_Destroy(no);
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        snprintf(why, why_len, "%s%s%s", natsStatus_GetText(s), last && *last ? ": " : "",
                 last ? last : "");
        return s == NATS_CONNECTION_AUTH_FAILED || s == NATS_NOT_PERMITTED ? FERRY_EAUTH
               : s == NATS_NO_MEMORY                                       ? FERRY_ENOMEM
                                                                           : FERRY_ECONNECT;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = js->request_timeout_ms > 0 ? js->request_timeout_ms : 30000;
    jo.PublishAsync.MaxPending = o->max_in_flight ? o->max_in_flight : FERRY__DEFAULT_MAX_IN_FLIGHT;
    jo.PublishAsync.AckHandler = on_puback;
    jo.PublishAsync.AckHandlerClosure = js;
    /* ferry_publish_async waits for room up to the request timeout. */
    jo.PublishAsync.StallWait = js->request_timeout_ms > 0 ? js->request_timeout_ms : 30000;
    s = natsConnection_JetStream(&js->jsc, js->nc, &jo);
    if (s != NATS_OK) {
        snprintf(why, why_len, "no JetStream context: %s", natsStatus_GetText(s));
        return FERRY_ECONNECT;
    }
    int rc = ensure_stream(c, js);
    if (rc < 0) {
        snprintf(why, why_len, "%s", c->errmsg);
        return rc == FERRY_EUNKNOWN_GROUP ? FERRY_ECONNECT : rc;
    }
    /* What ferry_server_info_get reports: JetStream's own limits. */
    int64_t maxp = natsConnection_GetMaxPayload(js->nc);
    c->info.max_frame_bytes = maxp > 0 ? (uint32_t)maxp : 1048576u;
    c->info.max_message_bytes = c->info.max_frame_bytes;
    c->info.max_batch = 1;
    c->info.dedupe_window_ms = (uint64_t)(js->dedupe_ms ? js->dedupe_ms : 120000);
    snprintf(c->info.server_name, sizeof c->info.server_name, "nats-jetstream");
    return 0;
}

static void js_sub_stop(struct ferry__js_sub *j);
static void abs_time(struct timespec *ts, int64_t in_us);

void ferry__js_close(ferry_conn *c)
{
    struct ferry__js *js = c->js;
    if (!js)
        return;
    /* Subscriptions: their threads stop before the connection goes. */
    for (struct ferry_sub *s = c->subs; s; s = s->next)
        if (s->js)
            js_sub_stop(s->js);
    if (js->nc) {
        /* Acks and pipelined publishes already handed to libnats go out
         * first (bounded). */
        natsConnection_FlushTimeout(js->nc, 1000);
    }
    if (js->jsc)
        jsCtx_Destroy(js->jsc);
    js->jsc = NULL;
    /* Publishes still without an outcome: ECLOSED. */
    pthread_mutex_lock(&js->mu);
    struct js_pub *list = js->pub_head;
    js->pub_head = js->pub_tail = NULL;
    pthread_mutex_unlock(&js->mu);
    while (list) {
        struct js_pub *p = list;
        list = p->next;
        if (p->cb)
            p->cb(p->userdata, p->done ? p->status : FERRY_ECLOSED,
                  p->done && p->status == 0 ? &p->ack : NULL);
        free(p);
    }
}

void ferry__js_free(ferry_conn *c)
{
    struct ferry__js *js = c->js;
    if (!js)
        return;
    if (js->nc) {
        /* Drained, not just closed: the PubAck handler of a late ack must
         * have returned before js goes. Bounded; a connection that never
         * reports closed keeps js (never freed) rather than risk it. */
        if (natsConnection_DrainTimeout(js->nc, 2000) != NATS_OK)
            natsConnection_Close(js->nc);
        int closed;
        pthread_mutex_lock(&js->mu);
        int64_t deadline = ferry__now_us() + 5000000;
        while (!js->nats_closed && ferry__now_us() < deadline) {
            struct timespec ts;
            abs_time(&ts, 100000);
            pthread_cond_timedwait(&js->cv, &js->mu, &ts);
        }
        closed = js->nats_closed;
        pthread_mutex_unlock(&js->mu);
        natsConnection_Destroy(js->nc);
        js->nc = NULL;
        if (!closed) {
            c->js = NULL;
            return;
        }
    }
    pthread_cond_destroy(&js->cv);
    pthread_mutex_destroy(&js->mu);
    free(js);
    c->js = NULL;
}

/* ------------------------------------------------------------------------
 * Publishing.
 */

static int printable(const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    return n > 0;
}

static int header_value_ok(const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}

static void random_id(char *out)
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        static _Atomic uint64_t ctr;
        uint64_t v = atomic_fetch_add(&ctr, 1) ^ (uint64_t)wall_ms() << 20;
        memcpy(b, &v, 8);
        memcpy(b + 8, &v, 8);
    }
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

/* Builds the natsMsg of m (id: its id, or a fresh one written to id_out). */
static int build_msg(ferry_conn *c, const ferry_msg *m, natsMsg **out, char id_out[129])
{
    struct ferry__js *js = c->js;
    *out = NULL;
    if (!m || !m->topic)
        return ferry__seterr(c, FERRY_EINVALID, "no message or no topic");
    int rc = ferry__check_names(c, m->topic, NULL);
    if (rc < 0)
        return rc;
    if (m->id) {
        size_t n = strlen(m->id);
        if (n == 0 || n > PROTO_MAX_ID || !printable(m->id, n))
            return ferry__seterr(c, FERRY_EINVALID_ID, "message id must be 1-%u printable ASCII",
                                 (unsigned)PROTO_MAX_ID);
        memcpy(id_out, m->id, n + 1);
    } else {
        random_id(id_out);
    }
    if (m->payload_len > c->info.max_message_bytes)
        return ferry__seterr(c, FERRY_EMESSAGE_TOO_LARGE,
                             "payload of %zu bytes; this JetStream server takes at most %u",
                             m->payload_len, (unsigned)c->info.max_message_bytes);
    if (m->key_len > PROTO_MAX_KEY)
        return ferry__seterr(c, FERRY_EINVALID, "key of %zu bytes; at most %u", m->key_len,
                             (unsigned)PROTO_MAX_KEY);
    if (m->header_count > PROTO_MAX_HEADERS)
        return ferry__seterr(c, FERRY_EINVALID, "%zu headers; at most %u", m->header_count,
                             (unsigned)PROTO_MAX_HEADERS);
    for (size_t i = 0; i < m->header_count; i++) {
        const ferry_header *h = &m->headers[i];
        if (!h->name || !printable(h->name, strlen(h->name)) || strchr(h->name, ':') ||
            !strncasecmp(h->name, "Nats-", 5) || !strncasecmp(h->name, "Ferry-", 6))
            return ferry__seterr(c, FERRY_EINVALID,
                                 "header %zu: over JetStream a name is printable ASCII without "
                                 "':' and not Nats-* or Ferry-*",
                                 i);
        if (!header_value_ok(h->value, h->value_len))
            return ferry__seterr(c, FERRY_EINVALID,
                                 "header %s: over JetStream a value cannot hold CR, LF or NUL",
                                 h->name);
    }

    char subject[PROTO_MAX_TOPIC + 80];
    subject_of(js, m->topic, subject, sizeof subject);
    natsMsg *msg = NULL;
    natsStatus s =
        natsMsg_Create(&msg, subject, NULL, m->payload_len ? m->payload : "", (int)m->payload_len);
    if (s != NATS_OK)
        return js_fail(c, s, 0, "cannot build the message");
    s = natsMsgHeader_Set(msg, "Nats-Msg-Id", id_out);
    char buf[2 * PROTO_MAX_KEY + 1];
    if (s == NATS_OK && m->key_len) {
        if (printable(m->key, m->key_len)) {
            memcpy(buf, m->key, m->key_len);
            buf[m->key_len] = '\0';
            s = natsMsgHeader_Set(msg, "Ferry-Key", buf);
        } else {
            for (size_t i = 0; i < m->key_len; i++)
                sprintf(buf + 2 * i, "%02x", ((const unsigned char *)m->key)[i]);
            s = natsMsgHeader_Set(msg, "Ferry-Key-Hex", buf);
        }
    }
    for (size_t i = 0; s == NATS_OK && i < m->header_count; i++) {
        const ferry_header *h = &m->headers[i];
        char *v = malloc(h->value_len + 1);
        if (!v) {
            s = NATS_NO_MEMORY;
            break;
        }
        if (h->value_len)
            memcpy(v, h->value, h->value_len);
        v[h->value_len] = '\0';
        s = natsMsgHeader_Add(msg, h->name, v);
        free(v);
    }
    if (s == NATS_OK && m->deliver_at_ms > 0) {
        snprintf(buf, sizeof buf, "%" PRId64, m->deliver_at_ms);
        s = natsMsgHeader_Set(msg, "Ferry-Deliver-At", buf);
    }
    if (s == NATS_OK && c->producer_id[0] && m->producer_seq) {
        s = natsMsgHeader_Set(msg, "Ferry-Producer", c->producer_id);
        snprintf(buf, sizeof buf, "%" PRIu64, m->producer_seq);
        if (s == NATS_OK)
            s = natsMsgHeader_Set(msg, "Ferry-Producer-Seq", buf);
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(msg);
        return js_fail(c, s, 0, "cannot build the message");
    }
    *out = msg;
    return 0;
}

int ferry__js_publish(ferry_conn *c, const ferry_msg *m, ferry_ack *ack)
{
    struct ferry__js *js = c->js;
    /* Ordering on the connection: pipelined publishes first. */
    int rc = ferry__js_flush(c, js->request_timeout_ms);
    if (rc < 0 && rc != FERRY_ETIMEOUT)
        return rc;
    char id[PROTO_MAX_ID + 1];
    natsMsg *msg;
    if ((rc = build_msg(c, m, &msg, id)) < 0)
        return rc;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = js->request_timeout_ms > 0 ? js->request_timeout_ms : 0;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_PublishMsg(&pa, js->jsc, msg, &po, &jerr);
    natsMsg_Destroy(msg);
    if (s != NATS_OK)
        return js_fail(c, s, jerr, "publish");
    if (ack) {
        memset(ack, 0, sizeof *ack);
        ack->seq = pa->Sequence;
        ack->duplicate = pa->Duplicate;
        snprintf(ack->id, sizeof ack->id, "%s", id);
    }
    jsPubAck_Destroy(pa);
    return 0;
}

/* The PubAck handler, on a libnats thread: the outcome goes to the
 * publish's record; callbacks run on the caller's thread later. */
static void on_puback(jsCtx *jsc, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)jsc;
    struct ferry__js *js = closure;
    pthread_mutex_lock(&js->mu);
    struct js_pub *p = js->pub_head;
    while (p && (p->done || p->msg != msg))
        p = p->next;
    if (p) {
        p->done = 1;
        p->msg = NULL;
        js->pub_in_flight--;
        if (pa) {
            p->status = 0;
            p->ack.seq = pa->Sequence;
            p->ack.duplicate = pa->Duplicate;
        } else {
            p->status = pae ? map_status(pae->Err, pae->ErrCode) : FERRY_EINTERNAL;
            if (p->status == 0)
                p->status = FERRY_EINTERNAL;
            snprintf(p->err, sizeof p->err, "%s",
                     pae && pae->ErrText ? pae->ErrText
                     : pae               ? natsStatus_GetText(pae->Err)
                                         : "no PubAck");
        }
        pthread_cond_broadcast(&js->cv);
    }
    pthread_mutex_unlock(&js->mu);
    natsMsg_Destroy(msg);
}

/* Queues m as a pipelined publish; *rec (when not NULL) gets its record. */
static int publish_async(ferry_conn *c, const ferry_msg *m, ferry_publish_cb cb, void *userdata,
                         struct js_pub **rec)
{
    struct ferry__js *js = c->js;
    char id[PROTO_MAX_ID + 1];
    natsMsg *msg;
    int rc = build_msg(c, m, &msg, id);
    if (rc < 0)
        return rc;
    struct js_pub *p = calloc(1, sizeof *p);
    if (!p) {
        natsMsg_Destroy(msg);
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    }
    p->msg = msg;
    p->cb = cb;
    p->userdata = userdata;
    snprintf(p->ack.id, sizeof p->ack.id, "%s", id);
    pthread_mutex_lock(&js->mu);
    if (js->pub_tail)
        js->pub_tail->next = p;
    else
        js->pub_head = p;
    js->pub_tail = p;
    js->pub_in_flight++;
    pthread_mutex_unlock(&js->mu);
    natsMsg *owned = msg;
    natsStatus s = js_PublishMsgAsync(js->jsc, &owned, NULL);
    if (s != NATS_OK) {
        /* Not sent: its record is failed here (the handler never runs). */
        pthread_mutex_lock(&js->mu);
        if (!p->done) {
            p->done = 1;
            p->msg = NULL;
            p->status = map_status(s, 0);
            p->cb = NULL; /* an error return means no callback */
            js->pub_in_flight--;
        }
        pthread_mutex_unlock(&js->mu);
        if (owned)
            natsMsg_Destroy(owned);
        return js_fail(c, s, 0, "publish");
    }
    if (rec)
        *rec = p;
    return 0;
}

int ferry__js_publish_async(ferry_conn *c, const ferry_msg *m, ferry_publish_cb cb, void *ud)
{
    ferry__js_poll(c);
    return publish_async(c, m, cb, ud, NULL);
}

/* Runs the callbacks of the completed publishes at the front, in order. */
static void run_pub_callbacks(ferry_conn *c)
{
    struct ferry__js *js = c->js;
    for (;;) {
        pthread_mutex_lock(&js->mu);
        struct js_pub *p = js->pub_head;
        if (!p || !p->done) {
            pthread_mutex_unlock(&js->mu);
            return;
        }
        js->pub_head = p->next;
        if (!js->pub_head)
            js->pub_tail = NULL;
        pthread_mutex_unlock(&js->mu);
        if (p->cb)
            p->cb(p->userdata, p->status, p->status == 0 ? &p->ack : NULL);
        free(p);
    }
}

size_t ferry__js_in_flight(const ferry_conn *c)
{
    struct ferry__js *js = c->js;
    pthread_mutex_lock(&js->mu);
    size_t n = js->pub_in_flight;
    pthread_mutex_unlock(&js->mu);
    return n;
}

/* Waits until no publish is in flight or the deadline (-1: none). 0 or
 * FERRY_ETIMEOUT. */
static int wait_publishes(struct ferry__js *js, int64_t deadline_us)
{
    pthread_mutex_lock(&js->mu);
    int rc = 0;
    while (js->pub_in_flight > 0) {
        if (deadline_us >= 0 && ferry__now_us() >= deadline_us) {
            rc = FERRY_ETIMEOUT;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&js->cv, &js->mu, &ts);
    }
    pthread_mutex_unlock(&js->mu);
    return rc;
}

/* Publishes still without a PubAck after the wait: taken back from libnats
 * and failed with FERRY_ETIMEOUT (the message may yet be stored; its id
 * makes a retry a duplicate). */
static void expire_publishes(struct ferry__js *js)
{
    natsMsgList list = {0};
    if (js_PublishAsyncGetPendingList(&list, js->jsc) != NATS_OK)
        return;
    pthread_mutex_lock(&js->mu);
    for (int i = 0; i < list.Count; i++) {
        for (struct js_pub *p = js->pub_head; p; p = p->next) {
            if (!p->done && p->msg == list.Msgs[i]) {
                p->done = 1;
                p->msg = NULL;
                p->status = FERRY_ETIMEOUT;
                snprintf(p->err, sizeof p->err, "no PubAck in time");
                js->pub_in_flight--;
                break;
            }
        }
    }
    pthread_mutex_unlock(&js->mu);
    natsMsgList_Destroy(&list);
}

int ferry__js_flush(ferry_conn *c, int timeout_ms)
{
    struct ferry__js *js = c->js;
    natsConnection_Flush(js->nc);
    int rc = wait_publishes(js, ferry__deadline(timeout_ms));
    run_pub_callbacks(c);
    if (rc < 0)
        return ferry__seterr(c, rc, "pipelined publishes without a PubAck after %d ms", timeout_ms);
    return 0;
}

int ferry__js_poll(ferry_conn *c)
{
    run_pub_callbacks(c);
    ferry__js_run_callbacks(c);
    if (natsConnection_IsClosed(c->js->nc))
        return ferry__seterr(c, FERRY_ECLOSED, "the NATS connection is closed");
    return 0;
}

int ferry__js_ping(ferry_conn *c, uint64_t *rtt_us)
{
    int64_t rtt = 0;
    natsStatus s = natsConnection_GetRTT(c->js->nc, &rtt);
    if (s != NATS_OK)
        return js_fail(c, s, 0, "ping");
    if (rtt_us)
        *rtt_us = (uint64_t)(rtt / 1000);
    return 0;
}

int ferry__js_publish_window(ferry_conn *c, const ferry_msg *msgs, size_t n, ferry_ack *acks,
                             size_t *stored)
{
    struct ferry__js *js = c->js;
    *stored = 0;
    int rc = ferry__js_flush(c, js->request_timeout_ms);
    if (rc < 0)
        return rc;
    struct js_pub **recs = calloc(n, sizeof *recs);
    if (!recs)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    size_t sent = 0;
    int first_err = 0;
    char first_msg[FERRY__ERRMSG_BYTES] = "";
    for (; sent < n; sent++) {
        rc = publish_async(c, &msgs[sent], NULL, NULL, &recs[sent]);
        if (rc < 0) {
            first_err = rc;
            snprintf(first_msg, sizeof first_msg, "message %zu: %.900s", sent, c->errmsg);
            break;
        }
    }
    natsConnection_Flush(js->nc);
    if (wait_publishes(js, ferry__deadline(js->request_timeout_ms)) < 0)
        expire_publishes(js);
    /* The stored prefix, and the first failure. */
    pthread_mutex_lock(&js->mu);
    size_t k = 0;
    while (k < sent && recs[k]->done && recs[k]->status == 0) {
        acks[k] = recs[k]->ack;
        k++;
    }
    int err = 0;
    char msg[FERRY__ERRMSG_BYTES] = "";
    if (k < sent) {
        err = recs[k]->status ? recs[k]->status : FERRY_ETIMEOUT;
        snprintf(msg, sizeof msg, "message %zu: %s", k, recs[k]->err);
        /* Later ones that were stored anyway: reported to the relay's log. */
        size_t later = 0;
        for (size_t i = k + 1; i < sent; i++)
            later += recs[i]->done && recs[i]->status == 0;
        if (later)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg),
                     "; %zu later message%s of the window %s stored before it", later,
                     later == 1 ? " was" : "s were", later == 1 ? "" : "");
    }
    pthread_mutex_unlock(&js->mu);
    run_pub_callbacks(c);
    free(recs);
    *stored = k;
    if (err)
        return ferry__seterr(c, err, "%s", msg);
    if (first_err)
        return ferry__seterr(c, first_err, "%s", first_msg);
    return 0;
}

/* ------------------------------------------------------------------------
 * The relay's recovery: which of a producer's messages are already stored.
 */

int ferry__js_last_seq(ferry_conn *c, uint64_t *last)
{
    struct ferry__js *js = c->js;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js->jsc, js->stream, NULL, &jerr);
    if (s != NATS_OK)
        return js_fail(c, s, jerr, "stream info");
    *last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return 0;
}

const char *ferry__js_stream(const ferry_conn *c)
{
    return c->js->stream;
}

int ferry__js_scan(ferry_conn *c, uint64_t after, const char *producer,
                   void (*found)(void *ud, uint64_t stream_seq, uint64_t producer_seq), void *ud,
                   uint64_t *last_out)
{
    struct ferry__js *js = c->js;
    uint64_t last;
    int rc = ferry__js_last_seq(c, &last);
    if (rc < 0)
        return rc;
    *last_out = last;
    if (last <= after)
        return 0;
    char subj[80];
    snprintf(subj, sizeof subj, "%s.>", js->prefix);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = js->stream;
    so.Ordered = true;
    so.Config.HeadersOnly = true;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = after + 1;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_SubscribeSync(&sub, js->jsc, subj, NULL, &so, &jerr);
    if (s != NATS_OK)
        return js_fail(c, s, jerr, "reading the stream back");
    uint64_t seen = after;
    while (seen < last) {
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, sub, 5000);
        if (s != NATS_OK)
            break;
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            seen = meta->Sequence.Stream;
            const char *p = NULL, *ps = NULL;
            if (natsMsgHeader_Get(m, "Ferry-Producer", &p) == NATS_OK && !strcmp(p, producer) &&
                natsMsgHeader_Get(m, "Ferry-Producer-Seq", &ps) == NATS_OK)
                found(ud, seen, strtoull(ps, NULL, 10));
            jsMsgMetaData_Destroy(meta);
        }
        natsMsg_Destroy(m);
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    if (seen < last)
        return js_fail(c, s, 0, "reading the stream back");
    return 0;
}

/* ------------------------------------------------------------------------
 * Consuming.
 */

static void abs_time(struct timespec *ts, int64_t in_us)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += in_us / 1000000;
    ts->tv_nsec += (in_us % 1000000) * 1000;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Expires leases that ran out (their slots free; JetStream redelivers). With
 * js->mu held. Returns the earliest lease still running (0: none). */
static int64_t expire_leases(struct ferry__js_sub *j, int64_t now)
{
    int64_t next = 0;
    for (size_t i = 0; i < j->nout; i++) {
        struct js_out *o = &j->out[i];
        if (!o->deadline_us)
            continue;
        if (o->deadline_us <= now) {
            o->deadline_us = 0;
            j->live--;
        } else if (!next || o->deadline_us < next) {
            next = o->deadline_us;
        }
    }
    return next;
}

/* Drops entry i (its natsMsg destroyed). With js->mu held. */
static void out_drop(struct ferry__js_sub *j, size_t i)
{
    if (j->out[i].deadline_us)
        j->live--;
    natsMsg_Destroy(j->out[i].msg);
    j->out[i] = j->out[--j->nout];
    pthread_cond_signal(&j->wake);
}

static ssize_t out_find(struct ferry__js_sub *j, uint64_t seq)
{
    for (size_t i = j->nout; i-- > 0;)
        if (j->out[i].seq == seq)
            return (ssize_t)i;
    return -1;
}

/* Records msg as handed out (an older entry of the same seq goes). With
 * js->mu held. Returns 0 or -1 (out of memory: the message is left to its
 * lease). */
static int out_add(struct ferry__js_sub *j, uint64_t seq, natsMsg *msg)
{
    ssize_t old = out_find(j, seq);
    if (old >= 0)
        out_drop(j, (size_t)old);
    /* Expired entries are kept for late acks, at most 4 windows of them. */
    size_t cap_expired = 4 * (size_t)j->s->window + 64;
    if (j->nout - j->live > cap_expired) {
        for (size_t i = 0; i < j->nout; i++)
            if (!j->out[i].deadline_us) {
                out_drop(j, i);
                break;
            }
    }
    if (j->nout == j->outcap) {
        size_t ncap = j->outcap ? j->outcap * 2 : 64;
        struct js_out *n = realloc(j->out, ncap * sizeof *n);
        if (!n)
            return -1;
        j->out = n;
        j->outcap = ncap;
    }
    j->out[j->nout++] = (struct js_out){seq, ferry__now_us() + j->ack_wait_us, msg};
    j->live++;
    return 0;
}

/* The delivery of msg in one allocation, as consume.c lays one out. */
static struct ferry__delivery *delivery_of(struct ferry_sub *s, natsMsg *m,
                                           const jsMsgMetaData *meta)
{
    const char **keys = NULL;
    int nkeys = 0;
    natsMsgHeader_Keys(m, &keys, &nkeys);
    const char *id = "", *key = NULL;
    char keybuf[PROTO_MAX_KEY + 1];
    size_t key_len = 0;
    size_t nh = 0, bytes = 0;
    for (int i = 0; i < nkeys; i++) {
        const char *v = NULL;
        if (natsMsgHeader_Get(m, keys[i], &v) != NATS_OK || !v)
            continue;
        if (!strcmp(keys[i], "Nats-Msg-Id")) {
            id = v;
        } else if (!strcmp(keys[i], "Ferry-Key")) {
            key_len = strlen(v) > PROTO_MAX_KEY ? PROTO_MAX_KEY : strlen(v);
            memcpy(keybuf, v, key_len);
            key = keybuf;
        } else if (!strcmp(keys[i], "Ferry-Key-Hex")) {
            size_t n = strlen(v) / 2;
            if (n > PROTO_MAX_KEY)
                n = PROTO_MAX_KEY;
            for (size_t k = 0; k < n; k++) {
                unsigned x = 0;
                sscanf(v + 2 * k, "%2x", &x);
                keybuf[k] = (char)x;
            }
            key_len = n;
            key = keybuf;
        } else if (!strncmp(keys[i], "Nats-", 5) || !strcmp(keys[i], "Ferry-Producer") ||
                   !strcmp(keys[i], "Ferry-Producer-Seq") || !strcmp(keys[i], "Ferry-Deliver-At")) {
            continue;
        } else {
            const char **vals = NULL;
            int nv = 0;
            if (natsMsgHeader_Values(m, keys[i], &vals, &nv) == NATS_OK) {
                for (int k = 0; k < nv; k++)
                    bytes += strlen(keys[i]) + 1 + strlen(vals[k]) + 1;
                nh += (size_t)nv;
                free((void *)vals);
            }
        }
    }
    size_t id_len = strlen(id);
    int plen = natsMsg_GetDataLength(m);
    size_t payload_len = plen > 0 ? (size_t)plen : 0;
    size_t hdr_off = sizeof(struct ferry__delivery);
    hdr_off =
        (hdr_off + _Alignof(ferry_header) - 1) / _Alignof(ferry_header) * _Alignof(ferry_header);
    size_t bytes_off = hdr_off + nh * sizeof(ferry_header);
    size_t total = bytes_off + id_len + 1 + key_len + 1 + payload_len + 1 + bytes;
    unsigned char *block = malloc(total);
    if (!block) {
        free((void *)keys);
        return NULL;
    }
    struct ferry__delivery *dl = (struct ferry__delivery *)block;
    memset(dl, 0, sizeof *dl);
    ferry_header *hdrs = (ferry_header *)(block + hdr_off);
    unsigned char *p = block + bytes_off;
    ferry_delivery *d = &dl->pub;
    memcpy(p, id, id_len + 1);
    d->id = (const char *)p;
    p += id_len + 1;
    if (key_len)
        memcpy(p, key, key_len);
    p[key_len] = '\0';
    d->key = p;
    d->key_len = key_len;
    p += key_len + 1;
    size_t hi = 0;
    for (int i = 0; i < nkeys && hi < nh; i++) {
        if (!strncmp(keys[i], "Nats-", 5) || !strncmp(keys[i], "Ferry-Key", 9) ||
            !strcmp(keys[i], "Ferry-Producer") || !strcmp(keys[i], "Ferry-Producer-Seq") ||
            !strcmp(keys[i], "Ferry-Deliver-At"))
            continue;
        const char **vals = NULL;
        int nv = 0;
        if (natsMsgHeader_Values(m, keys[i], &vals, &nv) != NATS_OK)
            continue;
        for (int k = 0; k < nv && hi < nh; k++) {
            size_t kn = strlen(keys[i]), vn = strlen(vals[k]);
            memcpy(p, keys[i], kn + 1);
            hdrs[hi].name = (const char *)p;
            p += kn + 1;
            memcpy(p, vals[k], vn + 1);
            hdrs[hi].value = p;
            hdrs[hi].value_len = vn;
            p += vn + 1;
            hi++;
        }
        free((void *)vals);
    }
    free((void *)keys);
    if (payload_len)
        memcpy(p, natsMsg_GetData(m), payload_len);
    p[payload_len] = '\0';
    d->payload = p;
    d->payload_len = payload_len;
    d->headers = hi ? hdrs : NULL;
    d->header_count = hi;
    d->sub = s;
    d->topic = s->topic;
    d->group = s->group;
    d->seq = meta->Sequence.Stream;
    d->attempt = (uint32_t)meta->NumDelivered;
    d->redelivered = meta->NumDelivered > 1;
    d->ts_ms = meta->Timestamp / 1000000;
    dl->sub = s;
    dl->sub_id = s->sub_id;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return dl;
}

/* Publishes msg's copy to the dead-letter subject, then terminates msg.
 * Returns 0, or a FERRY_E* (msg is then left to its lease, to be tried
 * again at its next delivery). */
static int dead_letter(struct ferry__js_sub *j, natsMsg *msg, uint64_t seq, uint64_t attempts,
                       const char *reason)
{
    struct ferry__js *js = j->js;
    natsMsg *dm = NULL;
    int len = natsMsg_GetDataLength(msg);
    natsStatus s = natsMsg_Create(&dm, j->dead_subject, NULL, len ? natsMsg_GetData(msg) : "", len);
    const char **keys = NULL;
    int nkeys = 0;
    if (s == NATS_OK && natsMsgHeader_Keys(msg, &keys, &nkeys) == NATS_OK) {
        for (int i = 0; s == NATS_OK && i < nkeys; i++) {
            if (!strncmp(keys[i], "Nats-", 5) || !strcmp(keys[i], "Ferry-Producer") ||
                !strcmp(keys[i], "Ferry-Producer-Seq") || !strcmp(keys[i], "Ferry-Deliver-At"))
                continue;
            const char **vals = NULL;
            int nv = 0;
            if (natsMsgHeader_Values(msg, keys[i], &vals, &nv) == NATS_OK) {
                for (int k = 0; s == NATS_OK && k < nv; k++)
                    s = natsMsgHeader_Add(dm, keys[i], vals[k]);
                free((void *)vals);
            }
        }
        free((void *)keys);
    }
    /* The headers ferryd gives a dead letter (docs/PROTOCOL.md §9.6), in
     * names (NATS keeps no header order); the copy's own Nats-Msg-Id makes a repeat after a crash
     * (published, not yet terminated) a duplicate. */
    const char *orig_id = "";
    natsMsgHeader_Get(msg, "Nats-Msg-Id", &orig_id);
    char buf[PROTO_MAX_GROUP + PROTO_MAX_REASON + 160];
    if (s == NATS_OK)
        s = natsMsgHeader_Set(dm, "ferry-dead-topic", j->s->topic);
    snprintf(buf, sizeof buf, "%" PRIu64, seq);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(dm, "ferry-dead-seq", buf);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(dm, "ferry-dead-group", j->s->group);
    snprintf(buf, sizeof buf, "%" PRIu64, attempts);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(dm, "ferry-dead-attempts", buf);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(dm, "ferry-dead-reason", reason);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(dm, "ferry-dead-id", orig_id ? orig_id : "");
    snprintf(buf, sizeof buf, "dead.%s.%" PRIu64, j->durable, seq);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(dm, "Nats-Msg-Id", buf);
    jsPubAck *pa = NULL;
    if (s == NATS_OK)
        s = js_PublishMsg(&pa, js->jsc, dm, NULL, NULL);
    natsMsg_Destroy(dm);
    if (s != NATS_OK)
        return map_status(s, 0);
    jsPubAck_Destroy(pa);
    s = natsMsg_Term(msg, NULL);
    return map_status(s, 0);
}

/* Binds j to its durable consumer. j->nsub changes only under js->mu, so
 * that js_sub_stop may unsubscribe it (ending a Fetch) at any time. */
static natsStatus bind(struct ferry__js_sub *j, jsErrCode *jerr)
{
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = j->js->stream;
    so.Consumer = j->durable;
    natsSubscription *ns = NULL;
    natsStatus st = js_PullSubscribe(&ns, j->js->jsc, j->subject, j->durable, NULL, &so, jerr);
    if (st != NATS_OK)
        return st;
    pthread_mutex_lock(&j->js->mu);
    if (j->stop) {
        natsSubscription_Unsubscribe(ns);
        natsSubscription_Destroy(ns);
        st = NATS_INVALID_SUBSCRIPTION;
    } else {
        j->nsub = ns;
    }
    pthread_mutex_unlock(&j->js->mu);
    return st;
}

static void unbind(struct ferry__js_sub *j)
{
    pthread_mutex_lock(&j->js->mu);
    natsSubscription *ns = j->nsub;
    j->nsub = NULL;
    pthread_mutex_unlock(&j->js->mu);
    if (ns)
        natsSubscription_Destroy(ns);
}

/* Handles one fetched message on the fetch thread: handed out, held back
 * (deliver_at), or dead-lettered. */
static void take(struct ferry__js_sub *j, natsMsg *m)
{
    struct ferry__js *js = j->js;
    ferry_conn *c = j->s->c;
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, m) != NATS_OK) {
        natsMsg_Destroy(m); /* a status message */
        return;
    }
    const char *at = NULL;
    if (natsMsgHeader_Get(m, "Ferry-Deliver-At", &at) == NATS_OK && at) {
        int64_t when = strtoll(at, NULL, 10), now = wall_ms();
        if (when > now) {
            natsMsg_NakWithDelay(m, when - now, NULL);
            natsMsg_Destroy(m);
            jsMsgMetaData_Destroy(meta);
            return;
        }
    }
    uint16_t maxd = j->s->max_deliveries;
    if (maxd && meta->NumDelivered > maxd && j->s->topic[0] != '_') {
        /* Its lease ran out at the last attempt: it goes to the dead
         * letters, not to the application. */
        dead_letter(j, m, meta->Sequence.Stream, meta->NumDelivered - 1, "lease expired");
        natsMsg_Destroy(m);
        jsMsgMetaData_Destroy(meta);
        return;
    }
    struct ferry__delivery *d = delivery_of(j->s, m, meta);
    uint64_t seq = meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
    if (!d) {
        natsMsg_Destroy(m); /* left to its lease */
        return;
    }
    pthread_mutex_lock(&js->mu);
    if (j->stop || out_add(j, seq, m) < 0) {
        pthread_mutex_unlock(&js->mu);
        ferry_delivery_free(&d->pub);
        natsMsg_Destroy(m);
        return;
    }
    d->next = NULL;
    if (c->dq_tail)
        c->dq_tail->next = d;
    else
        c->dq_head = d;
    c->dq_tail = d;
    c->dq_len++;
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
}

static void *fetch_thread(void *arg)
{
    struct ferry__js_sub *j = arg;
    struct ferry__js *js = j->js;
    int64_t lost_since = 0;
    for (;;) {
        pthread_mutex_lock(&js->mu);
        int64_t next;
        while (!j->stop) {
            next = expire_leases(j, ferry__now_us());
            if (j->live < j->s->window)
                break;
            struct timespec ts;
            int64_t wait = next ? next - ferry__now_us() : 1000000;
            abs_time(&ts, wait > 0 ? wait : 1000);
            pthread_cond_timedwait(&j->wake, &js->mu, &ts);
        }
        if (j->stop) {
            pthread_mutex_unlock(&js->mu);
            return NULL;
        }
        size_t room = j->s->window - j->live;
        pthread_mutex_unlock(&js->mu);
        int batch = room > JS_FETCH_MAX ? JS_FETCH_MAX : (int)room;

        if (!j->nsub) {
            jsErrCode jerr = 0;
            natsStatus bs = bind(j, &jerr);
            if (bs != NATS_OK) {
                if (j->stop)
                    return NULL;
                /* Only a consumer that stays missing ends the subscription;
                 * a server that is away (restarting, failing over) is
                 * waited for as long as it takes. */
                int missing = bs == NATS_NOT_FOUND || jerr == 10014;
                if (!missing)
                    lost_since = 0;
                else if (!lost_since)
                    lost_since = ferry__now_us();
                if (missing && ferry__now_us() - lost_since > JS_REBIND_MS * 1000LL) {
                    pthread_mutex_lock(&js->mu);
                    j->s->end_code = FERRY_EUNKNOWN_GROUP;
                    snprintf(j->s->end_msg, sizeof j->s->end_msg,
                             "the JetStream consumer %s is gone", j->durable);
                    pthread_cond_broadcast(&js->cv);
                    pthread_mutex_unlock(&js->mu);
                    return NULL;
                }
                struct timespec ts = {0, 100 * 1000000L};
                nanosleep(&ts, NULL);
                continue;
            }
            lost_since = 0;
        }
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        natsStatus s = natsSubscription_Fetch(&list, j->nsub, batch, JS_FETCH_WAIT_MS, &jerr);
        if (s == NATS_OK) {
            for (int i = 0; i < list.Count; i++) {
                natsMsg *m = list.Msgs[i];
                list.Msgs[i] = NULL;
                take(j, m);
            }
            natsMsgList_Destroy(&list);
            continue;
        }
        natsMsgList_Destroy(&list);
        if (s == NATS_TIMEOUT)
            continue;
        if (j->stop)
            return NULL;
        /* The consumer was deleted (ferry_seek makes it again) or is
         * failing over, the server is away (libnats reconnects) or busy:
         * bind again after a pause, which also finds out which. */
        if (s != NATS_CONNECTION_DISCONNECTED)
            unbind(j);
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void js_sub_stop(struct ferry__js_sub *j)
{
    struct ferry__js *js = j->js;
    pthread_mutex_lock(&js->mu);
    int started = j->th_started;
    j->stop = 1;
    j->th_started = 0;
    pthread_cond_broadcast(&j->wake);
    if (j->nsub)
        natsSubscription_Unsubscribe(j->nsub); /* ends a Fetch in progress */
    pthread_mutex_unlock(&js->mu);
    if (started)
        pthread_join(j->th, NULL);
    /* What is still outstanding goes back to the group at once, as ferryd
     * gives a leaving consumer's messages back. */
    pthread_mutex_lock(&js->mu);
    for (size_t i = 0; i < j->nout; i++) {
        if (j->out[i].deadline_us)
            natsMsg_Nak(j->out[i].msg, NULL);
        natsMsg_Destroy(j->out[i].msg);
    }
    j->nout = j->live = 0;
    pthread_mutex_unlock(&js->mu);
    unbind(j);
}

void ferry__js_sub_free(struct ferry__js_sub *j)
{
    if (!j)
        return;
    /* Unsettled deliveries: their messages go back by lease. */
    for (size_t i = 0; i < j->nout; i++)
        natsMsg_Destroy(j->out[i].msg);
    free(j->out);
    if (j->nsub) /* never started: subscribe failed before its thread */
        natsSubscription_Destroy(j->nsub);
    pthread_cond_destroy(&j->wake);
    free(j);
}

/* Parses "max_deliveries=N" out of a consumer's description. */
static uint16_t desc_max_deliveries(const char *desc)
{
    const char *p = desc ? strstr(desc, "max_deliveries=") : NULL;
    if (!p)
        return JS_DEFAULT_MAX_DELIVERIES;
    long v = strtol(p + strlen("max_deliveries="), NULL, 10);
    return v < 0 || v > 65535 ? JS_DEFAULT_MAX_DELIVERIES : (uint16_t)v;
}

/* The consumer config of a new group from o. */
static void group_config(jsConsumerConfig *cc, struct ferry__js_sub *j, const ferry_sub_options *o,
                         char *desc, size_t desc_cap, uint16_t maxd)
{
    jsConsumerConfig_Init(cc);
    snprintf(desc, desc_cap, "ferry group %s of topic %s max_deliveries=%u", j->s->group,
             j->s->topic, (unsigned)maxd);
    cc->Durable = j->durable;
    cc->Description = desc;
    cc->FilterSubject = j->subject;
    cc->AckPolicy = js_AckExplicit;
    cc->AckWait = (int64_t)(o->ack_wait_ms ? o->ack_wait_ms : JS_DEFAULT_ACK_WAIT_MS) * 1000000;
    cc->MaxDeliver = -1;
    cc->MaxAckPending = JS_MAX_ACK_PENDING;
    switch (o->start) {
    case FERRY_START_LATEST:
        cc->DeliverPolicy = js_DeliverNew;
        break;
    case FERRY_START_SEQ:
        cc->DeliverPolicy = js_DeliverByStartSequence;
        cc->OptStartSeq = o->start_value ? o->start_value : 1;
        break;
    case FERRY_START_TIME:
        cc->DeliverPolicy = js_DeliverByStartTime;
        cc->OptStartTime = (int64_t)o->start_value * 1000000;
        break;
    default:
        cc->DeliverPolicy = js_DeliverAll;
        break;
    }
}

int ferry__js_subscribe(ferry_conn *c, struct ferry_sub *s, const ferry_sub_options *o)
{
    struct ferry__js *js = c->js;
    struct ferry__js_sub *j = calloc(1, sizeof *j);
    if (!j)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    j->js = js;
    j->s = s;
    pthread_cond_init(&j->wake, NULL);
    js_durable_name(j->durable, sizeof j->durable, s->topic, s->group);
    subject_of(js, s->topic, j->subject, sizeof j->subject);
    char dead_topic[PROTO_MAX_TOPIC + 8];
    snprintf(dead_topic, sizeof dead_topic, "_dead.%s", s->topic);
    subject_of(js, dead_topic, j->dead_subject, sizeof j->dead_subject);
    s->js = j;

    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetConsumerInfo(&ci, js->jsc, js->stream, j->durable, NULL, &jerr);
    if (st == NATS_NOT_FOUND) {
        if (o->topic_must_exist) {
            /* A topic exists over JetStream once a message was stored on it. */
            jsStreamInfo *si = NULL;
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Stream.Info.SubjectsFilter = j->subject;
            int found = 0;
            if (js_GetStreamInfo(&si, js->jsc, js->stream, &jo, NULL) == NATS_OK) {
                found = si->State.Subjects && si->State.Subjects->Count > 0;
                jsStreamInfo_Destroy(si);
            }
            if (!found)
                return ferry__seterr(c, FERRY_EUNKNOWN_TOPIC, "no message on %s yet", j->subject);
        }
        uint16_t maxd = o->max_deliveries ? o->max_deliveries : JS_DEFAULT_MAX_DELIVERIES;
        char desc[PROTO_MAX_TOPIC + PROTO_MAX_GROUP + 80];
        jsConsumerConfig cc;
        group_config(&cc, j, o, desc, sizeof desc, maxd);
        jerr = 0;
        st = js_AddConsumer(&ci, js->jsc, js->stream, &cc, NULL, &jerr);
        if (st != NATS_OK) /* created by another consumer meanwhile? */
            st = js_GetConsumerInfo(&ci, js->jsc, js->stream, j->durable, NULL, &jerr);
    }
    if (st != NATS_OK)
        return js_fail(c, st, jerr, "cannot create or find the group's consumer");
    s->max_deliveries = desc_max_deliveries(ci->Config->Description);
    s->ack_wait_ms = (uint32_t)(ci->Config->AckWait / 1000000);
    jsConsumerInfo_Destroy(ci);
    if (o->ack_wait_ms)
        s->ack_wait_ms = o->ack_wait_ms;
    j->ack_wait_us = (int64_t)s->ack_wait_ms * 1000;
    /* A delivery can come back only within its lease, nack delay or
     * touches: unbounded here as with ferryd's nacks (the inbox window is
     * sized by ferry_inbox_window_ms from the lease and attempts). */
    s->horizon_ms = 0;

    st = bind(j, &jerr);
    if (st != NATS_OK)
        return js_fail(c, st, jerr, "cannot bind to the group's consumer");
    if (pthread_create(&j->th, NULL, fetch_thread, j) != 0)
        return ferry__seterr(c, FERRY_ENOMEM, "cannot start the fetch thread");
    j->th_started = 1;
    return 0;
}

void ferry__js_unsubscribe(struct ferry_sub *s)
{
    if (s->js)
        js_sub_stop(s->js);
}

/* Removes and frees every queued delivery of s (NULL: all). */
void ferry__js_queue_purge(ferry_conn *c, const struct ferry_sub *s)
{
    struct ferry__js *js = c->js;
    struct ferry__delivery *drop = NULL;
    pthread_mutex_lock(&js->mu);
    struct ferry__delivery **pp = &c->dq_head;
    c->dq_tail = NULL;
    while (*pp) {
        struct ferry__delivery *d = *pp;
        if (!s || d->sub == s) {
            *pp = d->next;
            c->dq_len--;
            d->next = drop;
            drop = d;
        } else {
            c->dq_tail = d;
            pp = &d->next;
        }
    }
    pthread_mutex_unlock(&js->mu);
    while (drop) {
        struct ferry__delivery *d = drop;
        drop = d->next;
        ferry_delivery_free(&d->pub);
    }
}

/* Takes the oldest queued delivery for which want(sub) holds, or NULL. */
static struct ferry__delivery *queue_take(ferry_conn *c, int with_callback)
{
    struct ferry__delivery **pp = &c->dq_head, *prev = NULL;
    while (*pp && ((*pp)->sub->cb != NULL) != with_callback) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    struct ferry__delivery *d = *pp;
    if (!d)
        return NULL;
    *pp = d->next;
    if (c->dq_tail == d)
        c->dq_tail = prev;
    c->dq_len--;
    d->next = NULL;
    return d;
}

int ferry__js_run_callbacks(ferry_conn *c)
{
    struct ferry__js *js = c->js;
    if (c->cb_depth > 0)
        return 0;
    int ran = 0;
    for (;;) {
        pthread_mutex_lock(&js->mu);
        struct ferry__delivery *d = queue_take(c, 1);
        pthread_mutex_unlock(&js->mu);
        if (!d)
            return ran;
        ferry_delivery_cb cb = d->sub->cb;
        c->cb_depth++;
        c->cb_deliveries++;
        cb(d->sub->userdata, &d->pub);
        c->cb_depth--;
        ran++;
    }
}

/* A subscription the fetch thread ended (its consumer is gone), not yet
 * reported. With js->mu held. */
static struct ferry_sub *ended_sub(ferry_conn *c)
{
    for (struct ferry_sub *s = c->subs; s; s = s->next)
        if (s->end_code && !s->end_reported)
            return s;
    return NULL;
}

int ferry__js_receive(ferry_conn *c, int timeout_ms, ferry_delivery **out)
{
    struct ferry__js *js = c->js;
    int64_t deadline = ferry__deadline(timeout_ms);
    uint64_t cb_before = c->cb_deliveries;
    run_pub_callbacks(c);
    for (;;) {
        ferry__js_run_callbacks(c);
        if (!out && c->cb_deliveries != cb_before)
            return 0;
        pthread_mutex_lock(&js->mu);
        struct ferry__delivery *d = out ? queue_take(c, 0) : NULL;
        struct ferry_sub *ended = d ? NULL : ended_sub(c);
        if (d || ended) {
            if (ended)
                ended->end_reported = 1;
            pthread_mutex_unlock(&js->mu);
            if (ended)
                return ferry__seterr(c, ended->end_code, "%s", ended->end_msg);
            *out = &d->pub;
            return 0;
        }
        int64_t now = ferry__now_us();
        if (timeout_ms == 0 || (deadline >= 0 && now >= deadline)) {
            pthread_mutex_unlock(&js->mu);
            return ferry__seterr(c, FERRY_ETIMEOUT, "no delivery within %d ms", timeout_ms);
        }
        struct timespec ts;
        int64_t wait = deadline >= 0 ? deadline - now : 1000000;
        abs_time(&ts, wait > 200000 ? 200000 : wait);
        pthread_cond_timedwait(&js->cv, &js->mu, &ts);
        pthread_mutex_unlock(&js->mu);
        run_pub_callbacks(c);
    }
}

/* Settles seq of s: the message is acked (sync: waited for), nacked,
 * touched or dead-lettered. */
enum js_settle { JS_ACK, JS_ACK_SYNC, JS_NACK, JS_TOUCH };

static int settle(struct ferry_sub *s, uint64_t seq, enum js_settle how, uint32_t delay_ms,
                  const char *reason)
{
    ferry_conn *c = s->c;
    struct ferry__js *js = c->js;
    struct ferry__js_sub *j = s->js;
    pthread_mutex_lock(&js->mu);
    ssize_t i = out_find(j, seq);
    if (i < 0) {
        pthread_mutex_unlock(&js->mu);
        if (how == JS_ACK || how == JS_ACK_SYNC)
            return 0; /* settled already: acks are idempotent */
        return ferry__seterr(c, FERRY_ENOT_DELIVERED,
                             "seq %" PRIu64 " is not outstanding on this subscription", seq);
    }
    natsMsg *m = j->out[i].msg;
    natsStatus st = NATS_OK;
    int rc = 0;
    if (how == JS_TOUCH) {
        if (!j->out[i].deadline_us)
            j->live++;
        j->out[i].deadline_us = ferry__now_us() + j->ack_wait_us;
        pthread_mutex_unlock(&js->mu);
        st = natsMsg_InProgress(m, NULL);
        return st == NATS_OK ? 0 : js_fail(c, st, 0, "touch");
    }
    /* Off the table first: the message is ours alone from here. */
    j->out[i].msg = NULL;
    if (j->out[i].deadline_us)
        j->live--;
    j->out[i] = j->out[--j->nout];
    pthread_cond_signal(&j->wake);
    pthread_mutex_unlock(&js->mu);
    if (how == JS_NACK) {
        jsMsgMetaData *meta = NULL;
        uint64_t attempt = 0;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            attempt = meta->NumDelivered;
            jsMsgMetaData_Destroy(meta);
        }
        if (s->max_deliveries && attempt >= s->max_deliveries && s->topic[0] != '_') {
            char why[PROTO_MAX_REASON + 16];
            snprintf(why, sizeof why, "nacked%s%s", reason && *reason ? ": " : "",
                     reason ? reason : "");
            rc = dead_letter(j, m, seq, attempt, why);
            if (rc < 0)
                rc = ferry__seterr(c, rc, "cannot dead-letter seq %" PRIu64, seq);
        } else {
            st = delay_ms ? natsMsg_NakWithDelay(m, delay_ms, NULL) : natsMsg_Nak(m, NULL);
            if (st != NATS_OK)
                rc = js_fail(c, st, 0, "nack");
        }
    } else if (how == JS_ACK_SYNC) {
        jsErrCode jerr = 0;
        st = natsMsg_AckSync(m, NULL, &jerr);
        if (st != NATS_OK)
            rc = js_fail(c, st, jerr, "ack");
    } else {
        st = natsMsg_Ack(m, NULL);
        if (st != NATS_OK)
            rc = js_fail(c, st, 0, "ack");
    }
    natsMsg_Destroy(m);
    return rc;
}

int ferry__js_ack(struct ferry_sub *s, const uint64_t *seqs, size_t n, int sync)
{
    int first = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = settle(s, seqs[i], sync ? JS_ACK_SYNC : JS_ACK, 0, NULL);
        if (rc < 0 && !first)
            first = rc;
    }
    return first;
}

int ferry__js_nack(struct ferry_sub *s, uint64_t seq, uint32_t delay_ms, const char *reason)
{
    return settle(s, seq, JS_NACK, delay_ms, reason);
}

int ferry__js_touch(struct ferry_sub *s, uint64_t seq)
{
    return settle(s, seq, JS_TOUCH, 0, NULL);
}

int ferry__js_set_window(struct ferry_sub *s, uint32_t window)
{
    struct ferry__js *js = s->c->js;
    pthread_mutex_lock(&js->mu);
    s->window = window;
    pthread_cond_signal(&s->js->wake);
    pthread_mutex_unlock(&js->mu);
    return 0;
}

int ferry__js_floor(struct ferry_sub *s, uint64_t *floor)
{
    ferry_conn *c = s->c;
    struct ferry__js *js = c->js;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetConsumerInfo(&ci, js->jsc, js->stream, s->js->durable, NULL, &jerr);
    if (st != NATS_OK)
        return js_fail(c, st, jerr, "consumer info");
    *floor = ci->AckFloor.Stream + 1;
    jsConsumerInfo_Destroy(ci);
    return 0;
}

int ferry__js_seek(ferry_conn *c, const char *topic, const char *group, ferry_start start,
                   uint64_t value)
{
    struct ferry__js *js = c->js;
    char durable[96];
    js_durable_name(durable, sizeof durable, topic, group);
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetConsumerInfo(&ci, js->jsc, js->stream, durable, NULL, &jerr);
    if (st == NATS_NOT_FOUND)
        return ferry__seterr(c, FERRY_EUNKNOWN_GROUP, "no group %s on topic %s", group, topic);
    if (st != NATS_OK)
        return js_fail(c, st, jerr, "seek");
    /* The same settings at a new start. */
    struct ferry_sub tmp;
    memset(&tmp, 0, sizeof tmp);
    snprintf(tmp.topic, sizeof tmp.topic, "%s", topic);
    snprintf(tmp.group, sizeof tmp.group, "%s", group);
    tmp.window = 1;
    struct ferry__js_sub j = {.js = js, .s = &tmp};
    snprintf(j.durable, sizeof j.durable, "%s", durable);
    subject_of(js, topic, j.subject, sizeof j.subject);
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = start;
    o.start_value = value;
    o.ack_wait_ms = (uint32_t)(ci->Config->AckWait / 1000000);
    uint16_t maxd = desc_max_deliveries(ci->Config->Description);
    jsConsumerInfo_Destroy(ci);
    char desc[PROTO_MAX_TOPIC + PROTO_MAX_GROUP + 80];
    jsConsumerConfig cc;
    group_config(&cc, &j, &o, desc, sizeof desc, maxd);
    st = js_DeleteConsumer(js->jsc, js->stream, durable, NULL, &jerr);
    if (st != NATS_OK && st != NATS_NOT_FOUND)
        return js_fail(c, st, jerr, "seek (delete the consumer)");
    st = js_AddConsumer(&ci, js->jsc, js->stream, &cc, NULL, &jerr);
    if (st != NATS_OK)
        return js_fail(c, st, jerr, "seek (create the consumer)");
    jsConsumerInfo_Destroy(ci);
    return 0;
}

/* ------------------------------------------------------------------------
 * The decoders, for tests/fuzz/fuzz_js.c.
 */

int ferry__js_parse_address_test(const char *addr, char *why, size_t why_len)
{
    struct ferry__js js;
    char servers[JS_MAX_SERVERS][300];
    int n = 0;
    memset(&js, 0, sizeof js);
    if (!ferry__is_js_address(addr)) {
        snprintf(why, why_len, "not nats://");
        return -1;
    }
    return parse_address(addr, servers, &n, &js, why, why_len);
}

int ferry__js_decode_test(void *nats_msg, uint64_t stream_seq, uint64_t delivered,
                          ferry_delivery **out)
{
    struct ferry_sub *s = calloc(1, sizeof *s);
    if (!s)
        return FERRY_ENOMEM;
    snprintf(s->topic, sizeof s->topic, "fuzz");
    snprintf(s->group, sizeof s->group, "fuzz");
    atomic_init(&s->refs, 1);
    jsMsgMetaData meta;
    memset(&meta, 0, sizeof meta);
    meta.Sequence.Stream = stream_seq;
    meta.NumDelivered = delivered;
    struct ferry__delivery *d = delivery_of(s, nats_msg, &meta);
    /* The delivery holds the only other reference: freed with it. */
    atomic_fetch_sub(&s->refs, 1);
    if (!d) {
        free(s);
        return FERRY_ENOMEM;
    }
    *out = &d->pub;
    return 0;
}
