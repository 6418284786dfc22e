/*
 * _ferry.c - the C extension under the `ferry` Python package: thin types
 * over libferry (ferry.h), with the Python conventions layered on top in
 * ferry/__init__.py.
 *
 * Conn wraps one ferry_conn, Sub one ferry_sub, Delivery one ferry_delivery.
 * Every call that may wait on the network releases the GIL; libferry calls
 * its callbacks on the calling thread during such a call, so the publish
 * callback only writes into a C array (AckBuf) and Python objects are made
 * once the GIL is held again. A ferry_conn is used by one thread at a time:
 * each Conn holds a mutex across its libferry calls, so Python threads
 * sharing a Conn take turns instead of corrupting it.
 *
 * Errors: every negative FERRY_E* becomes an exception of the class mapped
 * to its code (ferry.Error and its subclasses, made here), carrying .code
 * (the negative number), .name ("STORAGE_FULL") and .detail (the broker's
 * or the library's message).
 *
 * Ownership: a Delivery keeps its Conn alive (libferry's delivery stays
 * valid after ferry_close, acking it then fails with CLOSED); a Sub keeps
 * its Conn alive and is ended with the Conn or by unsubscribe().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <ferry.h>
#include <sqlite3.h>

/* How long a blocking receive waits between looks at pending signals, so
 * that Ctrl-C interrupts it. */
#define RECEIVE_SLICE_MS 100

/* ---- errors -------------------------------------------------------------- */

static PyObject *Error; /* ferry.Error */

static const struct {
    int code;
    const char *cls;
} error_classes[] = {
    {FERRY_ECONNECT, "ConnectError"},
    {FERRY_ETIMEOUT, "Timeout"},
    {FERRY_ECLOSED, "ConnectionLost"},
    {FERRY_EIO, "ConnectionLost"},
    {FERRY_ESHUTTING_DOWN, "ConnectionLost"},
    {FERRY_ETIMEOUT_IDLE, "ConnectionLost"},
    {FERRY_EAUTH, "AuthError"},
    {FERRY_EDENIED, "Denied"},
    {FERRY_ESTORAGE_FULL, "StorageFull"},
    {FERRY_ESTORAGE, "StorageError"},
    {FERRY_EMESSAGE_TOO_LARGE, "MessageTooLarge"},
    {FERRY_EINVALID_TOPIC, "InvalidArgument"},
    {FERRY_EINVALID_GROUP, "InvalidArgument"},
    {FERRY_EINVALID_ID, "InvalidArgument"},
    {FERRY_EINVALID, "InvalidArgument"},
    {FERRY_EUNKNOWN_TOPIC, "NotFound"},
    {FERRY_EUNKNOWN_GROUP, "NotFound"},
    {FERRY_ENOT_DELIVERED, "NotDelivered"},
    {FERRY_EUNSUPPORTED, "Unsupported"},
};
#define N_CLASSES (sizeof(error_classes) / sizeof(error_classes[0]))
static PyObject *error_class_objs[N_CLASSES];

static const char *code_name(int code)
{
    switch (code) {
#define NAME_CASE(name, num, text)                                                                 \
    case -(num):                                                                                   \
        return #name;
        FERRY_ERRNO_MAP(NAME_CASE)
#undef NAME_CASE
    default:
        return "UNKNOWN";
    }
}

/* Makes the exception for code with detail (may be NULL or ""), without
 * raising it. */
static PyObject *make_error(int code, const char *detail)
{
    PyObject *cls = Error;
    for (size_t i = 0; i < N_CLASSES; i++)
        if (error_classes[i].code == code)
            cls = error_class_objs[i];
    PyObject *exc;
    if (detail && *detail)
        exc = PyObject_CallFunction(cls, "s", detail);
    else
        exc = PyObject_CallFunction(cls, "s", ferry_strerror(code));
    if (!exc)
        return NULL;
    PyObject *c = PyLong_FromLong(code);
    PyObject *n = PyUnicode_FromString(code_name(code));
    PyObject *d = PyUnicode_FromString(detail && *detail ? detail : ferry_strerror(code));
    if (!c || !n || !d || PyObject_SetAttrString(exc, "code", c) < 0 ||
        PyObject_SetAttrString(exc, "name", n) < 0 ||
        PyObject_SetAttrString(exc, "detail", d) < 0) {
        Py_XDECREF(c);
        Py_XDECREF(n);
        Py_XDECREF(d);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(c);
    Py_DECREF(n);
    Py_DECREF(d);
    return exc;
}

static PyObject *raise_error(int code, const char *detail)
{
    PyObject *exc = make_error(code, detail);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* ---- Conn ---------------------------------------------------------------- */

struct ack_rec {
    int status;
    uint64_t seq;
    int duplicate;
    char id[129];
    char detail[256];
};

typedef struct {
    PyObject_HEAD ferry_conn *c;
    pthread_mutex_t mu;
    /* Results of pipelined publishes, in publish order, until flush(). */
    struct ack_rec *acks;
    size_t nacks, cap_acks;
    int oom; /* a result could not be recorded */
} ConnObject;

static PyTypeObject ConnType, SubType, DeliveryType;

typedef struct {
    PyObject_HEAD ConnObject *conn;
    ferry_sub *s;
} SubObject;

typedef struct {
    PyObject_HEAD ConnObject *conn;
    ferry_delivery *d;
} DeliveryObject;

static int conn_ok(ConnObject *self)
{
    if (!self->c) {
        raise_error(FERRY_ECLOSED, "the connection is closed");
        return 0;
    }
    return 1;
}

#define LOCKED(self, stmt)                                                                         \
    do {                                                                                           \
        Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&(self)->mu);                                    \
        stmt;                                                                                      \
        pthread_mutex_unlock(&(self)->mu);                                                         \
        Py_END_ALLOW_THREADS                                                                       \
    } while (0)

static PyObject *conn_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {
        "server",        "token", "client_name", "connect_timeout_ms", "request_timeout_ms",
        "max_in_flight", NULL};
    const char *server = NULL, *token = NULL, *name = NULL;
    int connect_timeout = 0, request_timeout = 0;
    unsigned int max_in_flight = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|zzziiI", kwlist, &server, &token, &name,
                                     &connect_timeout, &request_timeout, &max_in_flight))
        return NULL;
    ConnObject *self = (ConnObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->mu, NULL);
    ferry_options o = FERRY_OPTIONS_INIT;
    o.token = token;
    o.client_name = name ? name : "python";
    o.connect_timeout_ms = connect_timeout;
    o.request_timeout_ms = request_timeout;
    o.max_in_flight = max_in_flight;
    char err[256] = "";
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ferry_connect(server, &o, &self->c, err, sizeof err);
    Py_END_ALLOW_THREADS if (rc < 0)
    {
        Py_DECREF(self);
        char detail[400];
        snprintf(detail, sizeof detail, "%s %s: %s", ferry_strerror(rc),
                 server ? server : FERRY_DEFAULT_SERVER, err[0] ? err : ferry_strerror(rc));
        return raise_error(rc, detail);
    }
    return (PyObject *)self;
}

static void conn_close_now(ConnObject *self)
{
    if (self->c) {
        ferry_conn *c = self->c;
        self->c = NULL;
        Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->mu);
        ferry_close(c);
        pthread_mutex_unlock(&self->mu);
        Py_END_ALLOW_THREADS
    }
}

static void conn_dealloc(ConnObject *self)
{
    conn_close_now(self);
    free(self->acks);
    pthread_mutex_destroy(&self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *conn_close(ConnObject *self, PyObject *unused)
{
    (void)unused;
    conn_close_now(self);
    Py_RETURN_NONE;
}

/* Borrowed views of a message's parts, valid while the Python objects are. */
struct msg_view {
    ferry_msg m;
    Py_buffer payload, key;
    int has_payload, has_key;
    ferry_header headers[64];
    Py_buffer hvals[64];
    size_t nh;
};

static void msg_view_release(struct msg_view *v)
{
    if (v->has_payload)
        PyBuffer_Release(&v->payload);
    if (v->has_key)
        PyBuffer_Release(&v->key);
    for (size_t i = 0; i < v->nh; i++)
        PyBuffer_Release(&v->hvals[i]);
    v->has_payload = v->has_key = 0;
    v->nh = 0;
}

/* Fills v from Python values. headers: a dict of str -> bytes|str, or a
 * sequence of (str, bytes|str) pairs (repeated names allowed). A str value
 * or key is taken as UTF-8. Returns 0, or -1 with an exception set (and
 * nothing held). */
static int msg_view_fill(struct msg_view *v, const char *topic, PyObject *payload, const char *id,
                         PyObject *key, PyObject *headers, long long deliver_at_ms)
{
    /* Only what msg_view_release reads: the header arrays (several KiB)
     * are filled as far as nh says, and a sync publish should not touch
     * more memory than it uses. */
    v->m = (ferry_msg){0};
    v->has_payload = v->has_key = 0;
    v->nh = 0;
    v->m.topic = topic;
    v->m.id = id;
    v->m.deliver_at_ms = deliver_at_ms;
    if (PyUnicode_Check(payload)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(payload, &n);
        if (!s)
            return -1;
        v->m.payload = s;
        v->m.payload_len = (size_t)n;
    } else {
        if (PyObject_GetBuffer(payload, &v->payload, PyBUF_SIMPLE) < 0) {
            PyErr_SetString(PyExc_TypeError, "payload must be bytes-like or str");
            return -1;
        }
        v->has_payload = 1;
        v->m.payload = v->payload.buf;
        v->m.payload_len = (size_t)v->payload.len;
    }
    if (key && key != Py_None) {
        if (PyUnicode_Check(key)) {
            Py_ssize_t n;
            const char *s = PyUnicode_AsUTF8AndSize(key, &n);
            if (!s)
                goto fail;
            v->m.key = s;
            v->m.key_len = (size_t)n;
        } else if (PyObject_GetBuffer(key, &v->key, PyBUF_SIMPLE) == 0) {
            v->has_key = 1;
            v->m.key = v->key.buf;
            v->m.key_len = (size_t)v->key.len;
        } else {
            PyErr_SetString(PyExc_TypeError, "key must be bytes-like or str");
            goto fail;
        }
    }
    if (headers && headers != Py_None) {
        PyObject *items = PyDict_Check(headers) ? PyDict_Items(headers) : PySequence_List(headers);
        if (!items) {
            PyErr_SetString(PyExc_TypeError, "headers must be a dict or a list of (name, value)");
            goto fail;
        }
        Py_ssize_t n = PyList_GET_SIZE(items);
        if (n > 64) {
            Py_DECREF(items);
            PyErr_SetString(PyExc_ValueError, "at most 64 headers");
            goto fail;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PyList_GET_ITEM(items, i);
            PyObject *name, *val;
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
                !PyUnicode_Check(name = PyTuple_GET_ITEM(pair, 0))) {
                Py_DECREF(items);
                PyErr_SetString(PyExc_TypeError, "a header is a (str name, bytes|str value) pair");
                goto fail;
            }
            val = PyTuple_GET_ITEM(pair, 1);
            /* The tuple (held by items, itself held until the call ends in
             * the caller's objects) keeps name and val alive; items is
             * released at once, so take our own references through buffers
             * and the UTF-8 cache of str, which lives as long as the str. */
            const char *nm = PyUnicode_AsUTF8(name);
            if (!nm) {
                Py_DECREF(items);
                goto fail;
            }
            PyObject *vb =
                PyUnicode_Check(val) ? PyUnicode_AsUTF8String(val) : (Py_INCREF(val), val);
            if (!vb || PyObject_GetBuffer(vb, &v->hvals[v->nh], PyBUF_SIMPLE) < 0) {
                Py_XDECREF(vb);
                Py_DECREF(items);
                PyErr_SetString(PyExc_TypeError, "a header value must be bytes-like or str");
                goto fail;
            }
            Py_DECREF(vb); /* the buffer holds its own reference */
            v->headers[v->nh].name = nm;
            v->headers[v->nh].value = v->hvals[v->nh].buf;
            v->headers[v->nh].value_len = (size_t)v->hvals[v->nh].len;
            v->nh++;
        }
        Py_DECREF(items);
        v->m.headers = v->headers;
        v->m.header_count = v->nh;
    }
    return 0;
fail:
    msg_view_release(v);
    return -1;
}

/* ferry.Ack (a NamedTuple, so a tuple subclass without a __dict__), handed
 * over by ferry/__init__.py through _set_ack_type() as it is imported. */
static PyTypeObject *ack_type;

/* An Ack(seq, duplicate, id), made here rather than by calling the class:
 * NamedTuple's __new__ is Python code, a cost every synchronous publish
 * would pay. Allocated and filled as tuple.__new__(Ack, ...) does it
 * (tuple_subtype_new); a plain tuple before _set_ack_type(). */
static PyObject *ack_tuple(uint64_t seq, int dup, const char *id)
{
    PyObject *s = PyLong_FromUnsignedLongLong(seq);
    PyObject *i = PyUnicode_FromString(id);
    PyObject *t = NULL;
    if (s && i)
        t = ack_type ? ack_type->tp_alloc(ack_type, 3) : PyTuple_New(3);
    if (!t) {
        Py_XDECREF(s);
        Py_XDECREF(i);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, s);
    PyTuple_SET_ITEM(t, 1, Py_NewRef(dup ? Py_True : Py_False));
    PyTuple_SET_ITEM(t, 2, i);
    return t;
}

static PyObject *mod_set_ack_type(PyObject *m, PyObject *cls)
{
    (void)m;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) ||
        ((PyTypeObject *)cls)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "_set_ack_type takes a NamedTuple class");
        return NULL;
    }
    Py_XSETREF(ack_type, (PyTypeObject *)Py_NewRef(cls));
    Py_RETURN_NONE;
}

static char *pub_kwlist[] = {"topic", "payload", "id", "key", "headers", "deliver_at_ms", NULL};

/* publish's and publish_async's arguments into v (released by the caller
 * with msg_view_release). Returns 0, or -1 with an exception set. */
static int msg_view_parse(PyObject *args, PyObject *kw, struct msg_view *v)
{
    const char *topic, *id = NULL;
    PyObject *payload, *key = NULL, *headers = NULL;
    long long deliver_at = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|zOOL", pub_kwlist, &topic, &payload, &id, &key,
                                     &headers, &deliver_at))
        return -1;
    return msg_view_fill(v, topic, payload, id, key, headers, deliver_at);
}

static PyObject *conn_publish(ConnObject *self, PyObject *args, PyObject *kw)
{
    struct msg_view v;
    if (!conn_ok(self) || msg_view_parse(args, kw, &v) < 0)
        return NULL;
    ferry_ack ack;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_publish(self->c, &v.m, &ack);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    msg_view_release(&v);
    if (rc < 0)
        return raise_error(rc, detail);
    return ack_tuple(ack.seq, ack.duplicate, ack.id);
}

/* publish_batch(list of (topic, payload, id, key, headers, deliver_at_ms)
 * tuples, shorter tuples allowed) -> list of ack tuples; atomic. */
static PyObject *conn_publish_batch(ConnObject *self, PyObject *arg)
{
    if (!conn_ok(self))
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "publish_batch takes a list of messages");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct msg_view *vs = n ? calloc((size_t)n, sizeof *vs) : NULL;
    ferry_msg *msgs = n ? calloc((size_t)n, sizeof *msgs) : NULL;
    ferry_ack *acks = n ? calloc((size_t)n, sizeof *acks) : NULL;
    PyObject *result = NULL;
    Py_ssize_t filled = 0;
    if (n && (!vs || !msgs || !acks)) {
        PyErr_NoMemory();
        goto out;
    }
    for (; filled < n; filled++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, filled);
        const char *topic, *id = NULL;
        PyObject *payload, *key = NULL, *headers = NULL;
        long long deliver_at = 0;
        if (!PyTuple_Check(t) ||
            !PyArg_ParseTuple(t, "sO|zOOL", &topic, &payload, &id, &key, &headers, &deliver_at)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "each message is a tuple");
            goto out;
        }
        if (msg_view_fill(&vs[filled], topic, payload, id, key, headers, deliver_at) < 0)
            goto out;
        msgs[filled] = vs[filled].m;
    }
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_publish_batch(self->c, msgs, (size_t)n, acks);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0) {
        raise_error(rc, detail);
        goto out;
    }
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        PyObject *a = ack_tuple(acks[i].seq, acks[i].duplicate, acks[i].id);
        if (!a) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, a);
    }
out:
    for (Py_ssize_t i = 0; i < filled; i++)
        msg_view_release(&vs[i]);
    free(vs);
    free(msgs);
    free(acks);
    Py_DECREF(seq);
    return result;
}

/* Runs without the GIL, during a libferry call on self. */
static void on_async_ack(void *ud, int status, const ferry_ack *ack)
{
    ConnObject *self = ud;
    if (self->nacks == self->cap_acks) {
        size_t cap = self->cap_acks ? self->cap_acks * 2 : 1024;
        struct ack_rec *a = realloc(self->acks, cap * sizeof *a);
        if (!a) {
            self->oom = 1;
            return;
        }
        self->acks = a;
        self->cap_acks = cap;
    }
    struct ack_rec *r = &self->acks[self->nacks++];
    r->status = status;
    r->seq = ack ? ack->seq : 0;
    r->duplicate = ack ? ack->duplicate : 0;
    snprintf(r->id, sizeof r->id, "%s", ack ? ack->id : "");
    snprintf(r->detail, sizeof r->detail, "%s", status < 0 && self->c ? ferry_errmsg(self->c) : "");
}

static PyObject *conn_publish_async(ConnObject *self, PyObject *args, PyObject *kw)
{
    struct msg_view v;
    if (!conn_ok(self) || msg_view_parse(args, kw, &v) < 0)
        return NULL;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_publish_async(self->c, &v.m, on_async_ack, self);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    msg_view_release(&v);
    if (rc < 0)
        return raise_error(rc, detail);
    Py_RETURN_NONE;
}

/* flush(timeout_ms=-1) -> list of ack tuples or exceptions, one per
 * pipelined publish since the last flush, in publish order. */
static PyObject *conn_flush(ConnObject *self, PyObject *args)
{
    int timeout = -1;
    if (!PyArg_ParseTuple(args, "|i", &timeout) || !conn_ok(self))
        return NULL;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_flush(self->c, timeout);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (self->oom) {
        self->oom = 0;
        self->nacks = 0;
        return PyErr_NoMemory();
    }
    PyObject *list = PyList_New((Py_ssize_t)self->nacks);
    for (size_t i = 0; list && i < self->nacks; i++) {
        struct ack_rec *r = &self->acks[i];
        PyObject *item = r->status < 0 ? make_error(r->status, r->detail)
                                       : ack_tuple(r->seq, r->duplicate, r->id);
        if (!item) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    self->nacks = 0;
    if (rc < 0) {
        Py_XDECREF(list);
        return raise_error(rc, detail);
    }
    return list;
}

static PyObject *conn_in_flight(ConnObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_ok(self))
        return NULL;
    return PyLong_FromSize_t(ferry_in_flight(self->c));
}

static PyObject *conn_ping(ConnObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_ok(self))
        return NULL;
    uint64_t rtt = 0;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_ping(self->c, &rtt);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    return PyLong_FromUnsignedLongLong(rtt);
}

static PyObject *conn_subscribe(ConnObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"topic",         "group",       "start",          "start_value",
                             "max_in_flight", "ack_wait_ms", "max_deliveries", NULL};
    const char *topic, *group;
    int start = FERRY_START_EARLIEST;
    unsigned long long start_value = 0;
    unsigned int max_in_flight = 0, ack_wait = 0, max_deliveries = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ss|iKIII", kwlist, &topic, &group, &start,
                                     &start_value, &max_in_flight, &ack_wait, &max_deliveries) ||
        !conn_ok(self))
        return NULL;
    if (max_deliveries > 65535) {
        PyErr_SetString(PyExc_ValueError, "max_deliveries is at most 65535");
        return NULL;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = (ferry_start)start;
    so.start_value = start_value;
    so.max_in_flight = max_in_flight;
    so.ack_wait_ms = ack_wait;
    so.max_deliveries = (uint16_t)max_deliveries;
    ferry_sub *s = NULL;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_subscribe(self->c, topic, group, &so, &s);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    SubObject *so_obj = PyObject_New(SubObject, &SubType);
    if (!so_obj)
        return NULL;
    Py_INCREF(self);
    so_obj->conn = self;
    so_obj->s = s;
    return (PyObject *)so_obj;
}

/* receive(timeout_ms=-1) -> Delivery or None on timeout. Waits in slices
 * so that a signal (Ctrl-C) interrupts it with KeyboardInterrupt. */
static PyObject *conn_receive(ConnObject *self, PyObject *args)
{
    int timeout = -1;
    if (!PyArg_ParseTuple(args, "|i", &timeout) || !conn_ok(self))
        return NULL;
    ferry_delivery *d = NULL;
    int rc = FERRY_ETIMEOUT;
    char detail[256] = "";
    for (int left = timeout;;) {
        int slice = left < 0 || left > RECEIVE_SLICE_MS ? RECEIVE_SLICE_MS : left;
        LOCKED(self, rc = ferry_receive(self->c, slice, &d); if (rc < 0 && rc != FERRY_ETIMEOUT)
                   snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
        if (rc != FERRY_ETIMEOUT)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
        if (left >= 0) {
            left -= slice;
            if (left <= 0)
                break;
        }
    }
    if (rc == FERRY_ETIMEOUT)
        Py_RETURN_NONE;
    if (rc < 0)
        return raise_error(rc, detail);
    DeliveryObject *o = PyObject_New(DeliveryObject, &DeliveryType);
    if (!o) {
        ferry_delivery_free(d);
        return NULL;
    }
    Py_INCREF(self);
    o->conn = self;
    o->d = d;
    return (PyObject *)o;
}

static PyObject *conn_seek(ConnObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"topic", "group", "start", "value", NULL};
    const char *topic, *group;
    int start;
    unsigned long long value = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ssi|K", kwlist, &topic, &group, &start, &value) ||
        !conn_ok(self))
        return NULL;
    uint64_t cursor = 0;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_seek(self->c, topic, group, (ferry_start)start, value, &cursor);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    return PyLong_FromUnsignedLongLong(cursor);
}

static PyObject *conn_group_floor(ConnObject *self, PyObject *args)
{
    const char *topic, *group;
    if (!PyArg_ParseTuple(args, "ss", &topic, &group) || !conn_ok(self))
        return NULL;
    uint64_t floor = 0, *keep = PyMem_Malloc(FERRY_FLOOR_KEEP_MAX * sizeof *keep);
    if (!keep)
        return PyErr_NoMemory();
    size_t n = 0;
    int rc;
    char detail[256] = "";
    LOCKED(self,
           rc = ferry_group_floor(self->c, topic, group, &floor, keep, FERRY_FLOOR_KEEP_MAX, &n);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    PyObject *list = rc < 0 ? NULL : PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(keep[i]);
        if (!v) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    PyMem_Free(keep);
    if (rc < 0)
        return raise_error(rc, detail);
    if (!list)
        return NULL;
    return Py_BuildValue("(KN)", (unsigned long long)floor, list);
}

static PyObject *conn_topics(ConnObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_ok(self))
        return NULL;
    ferry_topic_info *t = NULL;
    size_t n = 0;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_topics(self->c, &t, &n);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *d = Py_BuildValue(
            "{s:s,s:K,s:K,s:K,s:K,s:L,s:K,s:K,s:K,s:O,s:K}", "name", t[i].name, "head_seq",
            (unsigned long long)t[i].head_seq, "first_seq", (unsigned long long)t[i].first_seq,
            "messages", (unsigned long long)t[i].message_count, "bytes",
            (unsigned long long)t[i].bytes, "created_ms", (long long)t[i].created_ms, "max_age_ms",
            (unsigned long long)t[i].max_age_ms, "max_count", (unsigned long long)t[i].max_count,
            "max_bytes", (unsigned long long)t[i].max_bytes, "delete_acked",
            t[i].delete_acked ? Py_True : Py_False, "publish_rate",
            (unsigned long long)t[i].publish_rate);
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, d);
    }
    ferry_topics_free(t);
    return list;
}

static PyObject *conn_groups(ConnObject *self, PyObject *args)
{
    const char *topic = NULL;
    if (!PyArg_ParseTuple(args, "|z", &topic) || !conn_ok(self))
        return NULL;
    ferry_group_info *g = NULL;
    size_t n = 0;
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_groups(self->c, topic, &g, &n);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *d = Py_BuildValue(
            "{s:s,s:s,s:K,s:K,s:K,s:I,s:I,s:K,s:K,s:K,s:I,s:I}", "topic", g[i].topic, "group",
            g[i].group, "cursor", (unsigned long long)g[i].cursor, "ack_floor",
            (unsigned long long)g[i].ack_floor, "lag", (unsigned long long)g[i].lag, "in_flight",
            g[i].in_flight, "consumers", g[i].consumers, "redelivered",
            (unsigned long long)g[i].redelivered, "dead_lettered",
            (unsigned long long)g[i].dead_lettered, "oldest_unacked_ms",
            (unsigned long long)g[i].oldest_unacked_ms, "ack_wait_ms", g[i].ack_wait_ms,
            "max_deliveries", (unsigned int)g[i].max_deliveries);
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, d);
    }
    ferry_groups_free(g);
    return list;
}

static PyObject *conn_topic_config(ConnObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"topic", "max_age_ms", "max_count", "max_bytes", "delete_acked", NULL};
    const char *topic;
    unsigned long long age = 0, count = 0, bytes = 0;
    int delete_acked = FERRY_DELETE_ACKED_DEFAULT;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|KKKi", kwlist, &topic, &age, &count, &bytes,
                                     &delete_acked) ||
        !conn_ok(self))
        return NULL;
    ferry_retention r = {age, count, bytes, delete_acked};
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_topic_config(self->c, topic, &r);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    Py_RETURN_NONE;
}

static PyObject *conn_topic_delete(ConnObject *self, PyObject *args)
{
    const char *topic;
    int force = 0;
    if (!PyArg_ParseTuple(args, "s|p", &topic, &force) || !conn_ok(self))
        return NULL;
    ferry_delete_result r = {.size = sizeof r};
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_topic_delete(self->c, topic, force ? FERRY_DELETE_FORCE : 0, &r);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    return Py_BuildValue("{s:K,s:I}", "messages", (unsigned long long)r.messages, "groups",
                         (unsigned)r.groups);
}

static PyObject *conn_group_delete(ConnObject *self, PyObject *args)
{
    const char *topic, *group;
    if (!PyArg_ParseTuple(args, "ss", &topic, &group) || !conn_ok(self))
        return NULL;
    ferry_delete_result r = {.size = sizeof r};
    int rc;
    char detail[256] = "";
    LOCKED(self, rc = ferry_group_delete(self->c, topic, group, &r);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(self->c)));
    if (rc < 0)
        return raise_error(rc, detail);
    return Py_BuildValue("{s:I}", "groups", (unsigned)r.groups);
}

static PyObject *conn_server_info(ConnObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_ok(self))
        return NULL;
    ferry_server_info si;
    ferry_server_info_get(self->c, &si);
    return Py_BuildValue("{s:I,s:I,s:I,s:I,s:K,s:s}", "version", (unsigned)si.version,
                         "max_frame_bytes", si.max_frame_bytes, "max_message_bytes",
                         si.max_message_bytes, "max_batch", si.max_batch, "dedupe_window_ms",
                         (unsigned long long)si.dedupe_window_ms, "server_name", si.server_name);
}

static PyMethodDef conn_methods[] = {
    {"close", (PyCFunction)conn_close, METH_NOARGS, "Closes the connection."},
    {"publish", (PyCFunction)(void (*)(void))conn_publish, METH_VARARGS | METH_KEYWORDS,
     "publish(topic, payload, id=None, key=None, headers=None, deliver_at_ms=0) -> (seq, "
     "duplicate, id)"},
    {"publish_batch", (PyCFunction)conn_publish_batch, METH_O,
     "publish_batch([(topic, payload, id, key, headers, deliver_at_ms), ...]) -> [(seq, "
     "duplicate, id), ...]"},
    {"publish_async", (PyCFunction)(void (*)(void))conn_publish_async, METH_VARARGS | METH_KEYWORDS,
     "publish_async(topic, payload, ...): pipelined"},
    {"flush", (PyCFunction)conn_flush, METH_VARARGS,
     "flush(timeout_ms=-1) -> results of the pipelined publishes since the last flush"},
    {"in_flight", (PyCFunction)conn_in_flight, METH_NOARGS, "pipelined publishes awaiting acks"},
    {"ping", (PyCFunction)conn_ping, METH_NOARGS, "ping() -> round trip in microseconds"},
    {"subscribe", (PyCFunction)(void (*)(void))conn_subscribe, METH_VARARGS | METH_KEYWORDS,
     "subscribe(topic, group, start, start_value, max_in_flight, ack_wait_ms, max_deliveries)"},
    {"receive", (PyCFunction)conn_receive, METH_VARARGS,
     "receive(timeout_ms=-1) -> Delivery or None"},
    {"seek", (PyCFunction)(void (*)(void))conn_seek, METH_VARARGS | METH_KEYWORDS,
     "seek(topic, group, start, value=0) -> the new cursor"},
    {"group_floor", (PyCFunction)conn_group_floor, METH_VARARGS,
     "group_floor(topic, group) -> (floor, [redrivable seq, ...]): what can no longer be "
     "delivered to the group (every sequence below floor but those listed)"},
    {"topics", (PyCFunction)conn_topics, METH_NOARGS, "topics() -> list of dicts"},
    {"groups", (PyCFunction)conn_groups, METH_VARARGS, "groups(topic=None) -> list of dicts"},
    {"topic_config", (PyCFunction)(void (*)(void))conn_topic_config, METH_VARARGS | METH_KEYWORDS,
     "topic_config(topic, max_age_ms, max_count, max_bytes, delete_acked)"},
    {"topic_delete", (PyCFunction)conn_topic_delete, METH_VARARGS, "topic_delete(topic, force)"},
    {"group_delete", (PyCFunction)conn_group_delete, METH_VARARGS, "group_delete(topic, group)"},
    {"server_info", (PyCFunction)conn_server_info, METH_NOARGS, "the handshake's limits"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ferry._ferry.Conn",
    .tp_basicsize = sizeof(ConnObject),
    .tp_dealloc = (destructor)conn_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One connection to ferryd (use ferry.connect).",
    .tp_methods = conn_methods,
    .tp_new = conn_new,
};

/* ---- Sub ----------------------------------------------------------------- */

static void sub_dealloc(SubObject *self)
{
    /* The subscription ends with its connection; nothing to send here. */
    Py_XDECREF(self->conn);
    PyObject_Free(self);
}

static PyObject *sub_unsubscribe(SubObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->s)
        Py_RETURN_NONE;
    if (!conn_ok(self->conn))
        return NULL;
    int rc;
    char detail[256] = "";
    ConnObject *c = self->conn;
    LOCKED(c, rc = ferry_unsubscribe(self->s);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", ferry_errmsg(c->c)));
    self->s = NULL;
    if (rc < 0)
        return raise_error(rc, detail);
    Py_RETURN_NONE;
}

static PyObject *sub_handle(SubObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromVoidPtr(self->s);
}

static PyMethodDef sub_methods[] = {
    {"unsubscribe", (PyCFunction)sub_unsubscribe, METH_NOARGS,
     "Ends the subscription; its unacked messages go back to the group."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sub_getset[] = {
    {"handle", (getter)sub_handle, NULL, "identifies the subscription", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SubType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ferry._ferry.Sub",
    .tp_basicsize = sizeof(SubObject),
    .tp_dealloc = (destructor)sub_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = sub_methods,
    .tp_getset = sub_getset,
};

/* ---- Delivery -------------------------------------------------------------- */

static void delivery_dealloc(DeliveryObject *self)
{
    ferry_delivery_free(self->d);
    Py_XDECREF(self->conn);
    PyObject_Free(self);
}

static PyObject *delivery_call(DeliveryObject *self, int what, uint32_t delay, const char *reason)
{
    ConnObject *c = self->conn;
    int rc;
    char detail[256] = "";
    LOCKED(c, rc = what == 0   ? ferry_delivery_ack(self->d)
                   : what == 1 ? ferry_delivery_ack_async(self->d)
                   : what == 2 ? ferry_delivery_nack(self->d, delay, reason)
                               : ferry_delivery_touch(self->d);
           if (rc < 0) snprintf(detail, sizeof detail, "%s", c->c ? ferry_errmsg(c->c) : ""));
    if (rc < 0)
        return raise_error(rc, detail);
    Py_RETURN_NONE;
}

static PyObject *delivery_ack(DeliveryObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"wait", NULL};
    int wait = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &wait))
        return NULL;
    return delivery_call(self, wait ? 0 : 1, 0, NULL);
}

static PyObject *delivery_nack(DeliveryObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"delay_ms", "reason", NULL};
    unsigned int delay = 0;
    const char *reason = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Iz", kwlist, &delay, &reason))
        return NULL;
    return delivery_call(self, 2, delay, reason);
}

static PyObject *delivery_touch(DeliveryObject *self, PyObject *unused)
{
    (void)unused;
    return delivery_call(self, 3, 0, NULL);
}

#define D_GET(name, expr)                                                                          \
    static PyObject *delivery_get_##name(DeliveryObject *self, void *closure)                      \
    {                                                                                              \
        (void)closure;                                                                             \
        const ferry_delivery *d = self->d;                                                         \
        return expr;                                                                               \
    }
D_GET(topic, PyUnicode_FromString(d->topic))
D_GET(group, PyUnicode_FromString(d->group))
D_GET(seq, PyLong_FromUnsignedLongLong(d->seq))
D_GET(attempt, PyLong_FromUnsignedLong(d->attempt))
D_GET(redelivered, PyBool_FromLong(d->redelivered))
D_GET(ts_ms, PyLong_FromLongLong(d->ts_ms))
D_GET(id, PyUnicode_FromString(d->id))
D_GET(key, d->key_len ? PyBytes_FromStringAndSize(d->key, (Py_ssize_t)d->key_len)
                      : (Py_INCREF(Py_None), Py_None))
D_GET(payload, PyBytes_FromStringAndSize(d->payload, (Py_ssize_t)d->payload_len))
D_GET(sub_handle, PyLong_FromVoidPtr(d->sub))

static PyObject *delivery_get_headers(DeliveryObject *self, void *closure)
{
    (void)closure;
    const ferry_delivery *d = self->d;
    PyObject *list = PyList_New((Py_ssize_t)d->header_count);
    for (size_t i = 0; list && i < d->header_count; i++) {
        PyObject *t = Py_BuildValue("(sy#)", d->headers[i].name, d->headers[i].value,
                                    (Py_ssize_t)d->headers[i].value_len);
        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

static PyMethodDef delivery_methods[] = {
    {"ack", (PyCFunction)(void (*)(void))delivery_ack, METH_VARARGS | METH_KEYWORDS,
     "ack(wait=True): done; idempotent. wait=False pipelines it (see flush)."},
    {"nack", (PyCFunction)(void (*)(void))delivery_nack, METH_VARARGS | METH_KEYWORDS,
     "nack(delay_ms=0, reason=None): deliver again, after delay_ms"},
    {"touch", (PyCFunction)delivery_touch, METH_NOARGS, "extend the lease"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef delivery_getset[] = {
    {"topic", (getter)delivery_get_topic, NULL, "the topic", NULL},
    {"group", (getter)delivery_get_group, NULL, "the consumer group", NULL},
    {"seq", (getter)delivery_get_seq, NULL, "the sequence number in the topic", NULL},
    {"attempt", (getter)delivery_get_attempt, NULL, "1 for the first delivery", NULL},
    {"redelivered", (getter)delivery_get_redelivered, NULL, "attempt > 1", NULL},
    {"ts_ms", (getter)delivery_get_ts_ms, NULL, "when the broker stored it, Unix ms", NULL},
    {"id", (getter)delivery_get_id, NULL, "the message id", NULL},
    {"key", (getter)delivery_get_key, NULL, "the key (bytes) or None", NULL},
    {"payload", (getter)delivery_get_payload, NULL, "the payload (bytes)", NULL},
    {"headers", (getter)delivery_get_headers, NULL, "list of (name, bytes value)", NULL},
    {"sub_handle", (getter)delivery_get_sub_handle, NULL, "the subscription it came to", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DeliveryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ferry.Delivery",
    .tp_basicsize = sizeof(DeliveryObject),
    .tp_dealloc = (destructor)delivery_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One delivered message: ack(), nack(), touch() and its fields.",
    .tp_methods = delivery_methods,
    .tp_getset = delivery_getset,
};

/* ---- module ---------------------------------------------------------------- */

static PyObject *mod_version(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyUnicode_FromString(ferry_version());
}

/* Opens the SQLite database at path for one libferry call on it. */
static PyObject *with_db(PyObject *args, int outbox)
{
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path))
        return NULL;
    sqlite3 *db = NULL;
    int rc;
    char detail[512] = "";
    ferry_outbox_stats st;
    memset(&st, 0, sizeof st);
    Py_BEGIN_ALLOW_THREADS;
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        snprintf(detail, sizeof detail, "open %s: %s", path, db ? sqlite3_errmsg(db) : "");
        rc = FERRY_ESTORAGE;
    } else {
        sqlite3_busy_timeout(db, 5000);
        rc = outbox ? ferry_outbox_install(db) : ferry_inbox_install(db);
        if (rc == 0 && outbox)
            rc = ferry_outbox_stats_get(db, &st);
        if (rc < 0)
            snprintf(detail, sizeof detail, "%s: %s", path, sqlite3_errmsg(db));
    }
    sqlite3_close(db);
    Py_END_ALLOW_THREADS;
    if (rc < 0)
        return raise_error(rc, detail);
    if (outbox)
        return PyUnicode_FromString(st.producer_id);
    Py_RETURN_NONE;
}

static PyObject *mod_outbox_install(PyObject *m, PyObject *args)
{
    (void)m;
    return with_db(args, 1);
}

static PyObject *mod_inbox_install(PyObject *m, PyObject *args)
{
    (void)m;
    return with_db(args, 0);
}

/*
 * pg_install(kind, pgconn_ptr, schema): ferry_pg_outbox_install or
 * ferry_pg_inbox_install on the libpq connection of a psycopg 3
 * connection (its pgconn.pgconn_ptr). Looked up at run time in the
 * libferry this module is linked with: one built without PostgreSQL has
 * neither function, and the module must still load.
 */
typedef int (*pg_install_fn)(void *pg, const char *schema);

static pg_install_fn find_pg_install(const char *name)
{
    Dl_info info;
    void *self;
    const char *(*strerr)(int) = ferry_strerror;
    memcpy(&self, &strerr, sizeof self);
    if (!dladdr(self, &info) || !info.dli_fname)
        return NULL;
    void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return NULL;
    void *sym = dlsym(h, name);
    dlclose(h);
    pg_install_fn fn = NULL;
    if (sym)
        memcpy(&fn, &sym, sizeof fn);
    return fn;
}

static PyObject *mod_pg_install(PyObject *m, PyObject *args)
{
    (void)m;
    const char *kind, *schema = NULL;
    unsigned long long ptr;
    if (!PyArg_ParseTuple(args, "sK|z", &kind, &ptr, &schema))
        return NULL;
    const char *name = strcmp(kind, "outbox") == 0  ? "ferry_pg_outbox_install"
                       : strcmp(kind, "inbox") == 0 ? "ferry_pg_inbox_install"
                                                    : NULL;
    if (!name || !ptr) {
        PyErr_SetString(PyExc_ValueError, "pg_install(\"outbox\" | \"inbox\", pgconn_ptr, schema)");
        return NULL;
    }
    pg_install_fn fn = find_pg_install(name);
    if (!fn)
        return raise_error(FERRY_EUNSUPPORTED,
                           "this libferry was built without PostgreSQL support (libpq)");
    int rc;
    Py_BEGIN_ALLOW_THREADS;
    rc = fn((void *)(uintptr_t)ptr, schema);
    Py_END_ALLOW_THREADS;
    if (rc < 0)
        return raise_error(rc, rc == FERRY_EINVALID
                                   ? "a bad schema name, or a transaction open on the connection"
                                   : "installing in PostgreSQL failed (see the server's log)");
    Py_RETURN_NONE;
}

static PyMethodDef mod_methods[] = {
    {"version", mod_version, METH_NOARGS, "libferry's version"},
    {"_set_ack_type", mod_set_ack_type, METH_O,
     "_set_ack_type(Ack): the class publish, publish_batch and flush return acks as"},
    {"outbox_install", mod_outbox_install, METH_VARARGS,
     "outbox_install(path) -> producer id: creates the outbox tables if missing"},
    {"inbox_install", mod_inbox_install, METH_VARARGS,
     "inbox_install(path): creates the inbox tables if missing"},
    {"pg_install", mod_pg_install, METH_VARARGS,
     "pg_install(kind, pgconn_ptr, schema): the Postgres outbox or inbox tables, if missing"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "_ferry", "libferry for Python (use the ferry package)", -1, mod_methods,
};

PyMODINIT_FUNC PyInit__ferry(void);
PyMODINIT_FUNC PyInit__ferry(void)
{
    if (PyType_Ready(&ConnType) < 0 || PyType_Ready(&SubType) < 0 ||
        PyType_Ready(&DeliveryType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    Error = PyErr_NewExceptionWithDoc(
        "ferry.Error", "A libferry or broker error: .code, .name and .detail.", NULL, NULL);
    if (!Error || PyModule_AddObjectRef(m, "Error", Error) < 0)
        goto fail;
    for (size_t i = 0; i < N_CLASSES; i++) {
        PyObject *existing = PyObject_GetAttrString(m, error_classes[i].cls);
        if (existing) {
            error_class_objs[i] = existing;
            continue;
        }
        PyErr_Clear();
        char qual[64];
        snprintf(qual, sizeof qual, "ferry.%s", error_classes[i].cls);
        PyObject *cls = PyErr_NewException(qual, Error, NULL);
        if (!cls || PyModule_AddObjectRef(m, error_classes[i].cls, cls) < 0)
            goto fail;
        error_class_objs[i] = cls;
    }
    if (PyModule_AddObjectRef(m, "Conn", (PyObject *)&ConnType) < 0 ||
        PyModule_AddObjectRef(m, "Delivery", (PyObject *)&DeliveryType) < 0 ||
        PyModule_AddIntConstant(m, "START_EARLIEST", FERRY_START_EARLIEST) < 0 ||
        PyModule_AddIntConstant(m, "START_LATEST", FERRY_START_LATEST) < 0 ||
        PyModule_AddIntConstant(m, "START_SEQ", FERRY_START_SEQ) < 0 ||
        PyModule_AddIntConstant(m, "START_TIME", FERRY_START_TIME) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
