/*
 * fuzz_js.c - the decoders of libferry's JetStream side (client/js.c): the
 * nats:// address (user input) and a received message's headers (any NATS
 * client may publish to a Ferry subject, with any headers) turned into a
 * ferry_delivery.
 *
 * Input: byte 0 chooses. 'a': the rest is an address. Otherwise the rest is
 * lines "Name: value" (header fields, up to an empty line) then the
 * payload; the message is decoded and its delivery checked: every pointer
 * NUL-terminated at its length, the key at most 1024 bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "internal.h"

static void check(const ferry_delivery *d)
{
    if (!d->id || d->id[strlen(d->id)] != '\0')
        abort();
    if (d->key_len > PROTO_MAX_KEY || ((const char *)d->key)[d->key_len] != '\0')
        abort();
    if (((const char *)d->payload)[d->payload_len] != '\0')
        abort();
    for (size_t i = 0; i < d->header_count; i++) {
        const ferry_header *h = &d->headers[i];
        if (!h->name || ((const char *)h->value)[h->value_len] != '\0')
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int opened;
    if (!opened) {
        nats_Open(-1); /* what natsConnection_Connect does in libferry */
        opened = 1;
    }
    if (size < 1 || size > 65536)
        return 0;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    if (data[0] == 'a') {
        char why[512];
        ferry__js_parse_address_test(text, why, sizeof why);
        free(text);
        return 0;
    }
    /* Headers up to the first empty line, then the payload. */
    char *body = strstr(text, "\n\n");
    size_t hdr_len = body ? (size_t)(body - text) : strlen(text);
    const char *payload = body ? body + 2 : "";
    natsMsg *m = NULL;
    if (natsMsg_Create(&m, "ferry.fuzz", NULL, payload, (int)strlen(payload)) != NATS_OK) {
        free(text);
        return 0;
    }
    text[hdr_len] = '\0';
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *colon = strchr(line, ':');
        if (!colon || colon == line)
            continue;
        *colon = '\0';
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        natsMsgHeader_Add(m, line, v);
    }
    ferry_delivery *d = NULL;
    if (ferry__js_decode_test(m, 7, 1 + (size & 3), &d) == 0) {
        check(d);
        ferry_delivery_free(d);
    }
    natsMsg_Destroy(m);
    free(text);
    return 0;
}
