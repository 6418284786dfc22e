/*
 * bench_cleanup.c - every bench deletes what it created, unless --keep.
 *
 * Before a run writes anything, the bench names the topics it will write
 * to and the consumer groups it will make (bench_cleanup_topic,
 * bench_cleanup_group). A topic the broker does not list at that moment is
 * the run's own; so is a group its topic does not have yet. At the end
 * (bench_cleanup_finish, also after a failed run) the run's own topics are
 * deleted with FERRY_DELETE_FORCE (their groups and dead letters go with
 * them) and its own groups on topics that existed before are deleted one
 * by one; a topic that existed before is never deleted. When the broker
 * cannot be asked beforehand, nothing is taken as the run's own, so
 * nothing is deleted.
 *
 * One line says where the run wrote and what became of it, on standard
 * output (standard error with --json, whose standard output is one JSON
 * object). What could not be deleted (a broker that predates DELETE, a
 * token without the admin right) is named in a warning on standard error;
 * the bench's exit status does not change.
 */
#include "bench_internal.h"

#include <ferry.h>
#include <stdio.h>
#include <string.h>

static ferry_conn *cleanup_connect(const struct bench_cleanup *cl, char *err, size_t err_len)
{
    ferry_options opts = FERRY_OPTIONS_INIT;
    opts.client_name = "ferry bench cleanup";
    ferry_conn *c = NULL;
    if (ferry_connect(cl->server, &opts, &c, err, err_len) < 0) {
        return NULL;
    }
    return c;
}

void bench_cleanup_init(struct bench_cleanup *cl, const char *server, int keep, int json)
{
    memset(cl, 0, sizeof *cl);
    cl->server = server;
    cl->keep = keep;
    cl->json = json;
}

void bench_cleanup_topics(struct bench_cleanup *cl, const char *const *names, size_t n)
{
    char err[512];
    ferry_conn *c = cleanup_connect(cl, err, sizeof err);
    ferry_topic_info *t = NULL;
    size_t nt = 0;
    int listed = c != NULL && ferry_topics(c, &t, &nt) == 0;
    for (size_t i = 0; i < n && cl->ntopics < BENCH_CLEANUP_MAX; i++) {
        struct bench_cleanup_topic *e = &cl->topics[cl->ntopics];
        int seen = 0;
        for (size_t k = 0; k < cl->ntopics && !seen; k++) {
            seen = strcmp(cl->topics[k].name, names[i]) == 0;
        }
        if (seen) {
            continue;
        }
        snprintf(e->name, sizeof e->name, "%s", names[i]);
        e->own = 0;
        if (listed) {
            e->own = 1;
            for (size_t k = 0; k < nt; k++) {
                if (strcmp(t[k].name, names[i]) == 0) {
                    e->own = 0;
                    break;
                }
            }
        }
        cl->ntopics++;
    }
    ferry_topics_free(t);
    ferry_close(c);
}

void bench_cleanup_topic(struct bench_cleanup *cl, const char *name)
{
    bench_cleanup_topics(cl, &name, 1);
}

void bench_cleanup_group(struct bench_cleanup *cl, const char *topic, const char *group)
{
    if (cl->ngroups >= BENCH_CLEANUP_MAX) {
        return;
    }
    struct bench_cleanup_group *e = &cl->groups[cl->ngroups++];
    snprintf(e->topic, sizeof e->topic, "%s", topic);
    snprintf(e->group, sizeof e->group, "%s", group);
    e->own = 0;
    char err[512];
    ferry_conn *c = cleanup_connect(cl, err, sizeof err);
    if (c == NULL) {
        return;
    }
    ferry_group_info *g = NULL;
    size_t n = 0;
    int rc = ferry_groups(c, topic, &g, &n);
    if (rc == FERRY_EUNKNOWN_TOPIC) {
        e->own = 1; /* no topic yet, so no such group */
    } else if (rc == 0) {
        e->own = 1;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(g[i].topic, topic) == 0 && strcmp(g[i].group, group) == 0) {
                e->own = 0;
                break;
            }
        }
    }
    ferry_groups_free(g);
    ferry_close(c);
}

/* Whether topic is one of the run's own (deleted with its groups). */
static int own_topic(const struct bench_cleanup *cl, const char *topic)
{
    for (size_t i = 0; i < cl->ntopics; i++) {
        if (cl->topics[i].own && strcmp(cl->topics[i].name, topic) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Appends to buf (of len, NUL-terminated). */
static void cat(char *buf, size_t len, const char *fmt, const char *a, const char *b)
{
    size_t used = strlen(buf);
    if (used + 1 < len) {
        snprintf(buf + used, len - used, fmt, a, b);
    }
}

/* "a, b, c" of the entries of kind (0: kept, existed before; 1: deleted; 2:
 * left behind), topics then groups. Returns how many. */
static size_t list_names(const struct bench_cleanup *cl, int topics, int state, char *buf,
                         size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    if (topics) {
        for (size_t i = 0; i < cl->ntopics; i++) {
            if (cl->topics[i].state == state) {
                cat(buf, len, "%s%s", n++ ? ", " : "", cl->topics[i].name);
            }
        }
    } else {
        for (size_t i = 0; i < cl->ngroups; i++) {
            if (cl->groups[i].state == state) {
                cat(buf, len, "%s%s", n++ ? ", " : "", cl->groups[i].group);
            }
        }
    }
    return n;
}

void bench_cleanup_finish(struct bench_cleanup *cl)
{
    if (cl->ntopics == 0) {
        return;
    }
    FILE *out = cl->json ? stderr : stdout;
    enum { KEPT = 0, DELETED = 1, LEFT = 2, SKIPPED = 3 };
    ferry_conn *c = NULL;
    char err[512] = "";
    int need = 0, old_broker = 0; /* it closed the connection at DELETE */
    for (size_t i = 0; i < cl->ntopics; i++) {
        cl->topics[i].state = KEPT;
        need |= cl->topics[i].own;
    }
    for (size_t i = 0; i < cl->ngroups; i++) {
        /* A group of one of its own topics goes with the topic. */
        cl->groups[i].state =
            own_topic(cl, cl->groups[i].topic) || !cl->groups[i].own ? SKIPPED : KEPT;
        need |= cl->groups[i].state == KEPT;
    }
    if (!cl->keep && need) {
        c = cleanup_connect(cl, err, sizeof err);
        for (size_t i = 0; i < cl->ntopics; i++) {
            struct bench_cleanup_topic *t = &cl->topics[i];
            if (!t->own) {
                continue;
            }
            ferry_delete_result r = {.size = sizeof r};
            int rc = c ? ferry_topic_delete(c, t->name, FERRY_DELETE_FORCE, &r) : FERRY_ECONNECT;
            if (rc == 0 || rc == FERRY_EUNKNOWN_TOPIC) {
                t->state = DELETED; /* unknown: it never came to be */
                continue;
            }
            t->state = LEFT;
            old_broker |= rc == FERRY_EUNKNOWN_TYPE;
            fprintf(stderr, "ferry bench: warning: could not delete topic %s on %s: %s: %s%s\n",
                    t->name, cl->server, ferry_strerror(rc), c ? ferry_errmsg(c) : err,
                    old_broker ? " (a broker older than DELETE)" : "");
        }
        for (size_t i = 0; i < cl->ngroups; i++) {
            struct bench_cleanup_group *g = &cl->groups[i];
            if (g->state != KEPT) {
                continue;
            }
            int rc = c ? ferry_group_delete(c, g->topic, g->group, NULL) : FERRY_ECONNECT;
            if (rc == 0 || rc == FERRY_EUNKNOWN_GROUP || rc == FERRY_EUNKNOWN_TOPIC) {
                g->state = DELETED;
                continue;
            }
            g->state = LEFT;
            old_broker |= rc == FERRY_EUNKNOWN_TYPE;
            fprintf(stderr,
                    "ferry bench: warning: could not delete group %s of topic %s on %s: %s: %s%s\n",
                    g->group, g->topic, cl->server, ferry_strerror(rc), c ? ferry_errmsg(c) : err,
                    old_broker ? " (a broker older than DELETE)" : "");
        }
        ferry_close(c);
    }

    char all[4096] = "", names[4096];
    for (size_t i = 0; i < cl->ntopics; i++) {
        cat(all, sizeof all, "%s%s", i ? ", " : "", cl->topics[i].name);
    }
    int many = cl->ntopics > 1;
    fprintf(out, "wrote to topic%s %s on %s; ", many ? "s" : "", all, cl->server);
    if (cl->keep) {
        fprintf(out, "kept %s (--keep)\n", many ? "them" : "it");
        return;
    }
    size_t ndel = list_names(cl, 1, DELETED, names, sizeof names);
    size_t ndel_groups = 0;
    for (size_t i = 0; i < cl->ngroups; i++) {
        ndel_groups += cl->groups[i].state == DELETED;
    }
    size_t nleft = 0;
    for (size_t i = 0; i < cl->ntopics; i++) {
        nleft += cl->topics[i].state == LEFT;
    }
    for (size_t i = 0; i < cl->ngroups; i++) {
        nleft += cl->groups[i].state == LEFT;
    }
    if (ndel == cl->ntopics && nleft == 0) {
        fprintf(out, "deleted %s (--keep to keep %s)\n", many ? "them" : "it",
                many ? "them" : "it");
        return;
    }
    const char *sep = "";
    if (ndel > 0) {
        fprintf(out, "deleted topic%s %s", ndel > 1 ? "s" : "", names);
        sep = "; ";
    }
    if (ndel_groups > 0) {
        list_names(cl, 0, DELETED, names, sizeof names);
        fprintf(out, "%sdeleted group%s %s", sep, ndel_groups > 1 ? "s" : "", names);
        sep = "; ";
    }
    if (ndel > 0 || ndel_groups > 0) {
        fprintf(out, " (--keep to keep %s)", ndel + ndel_groups > 1 ? "them" : "it");
    }
    size_t nkept = list_names(cl, 1, KEPT, names, sizeof names);
    if (nkept == cl->ntopics && ndel_groups == 0 && nleft == 0) {
        fprintf(out, "kept %s (%s before the run)\n", many ? "them" : "it",
                many ? "they existed" : "it existed");
        return;
    }
    if (nkept > 0) {
        fprintf(out, "%skept topic%s %s (%s before the run)", sep, nkept > 1 ? "s" : "", names,
                nkept > 1 ? "they existed" : "it existed");
        sep = "; ";
    }
    if (nleft > 0) {
        char groups[4096];
        size_t nt = list_names(cl, 1, LEFT, names, sizeof names);
        size_t ng = list_names(cl, 0, LEFT, groups, sizeof groups);
        fprintf(out, "%sleft %s%s%s%s%s%s (see the warning)", sep, nt ? "topic" : "",
                nt > 1 ? "s "
                : nt   ? " "
                       : "",
                names, nt && ng ? " and " : "", ng ? (ng > 1 ? "groups " : "group ") : "", groups);
    }
    fputc('\n', out);
}
