/*
 * opts.c - the option structs' size rule (ferry.h, "The ABI").
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

int ferry__copy_options(void *dst, size_t dst_size, const void *src, size_t min_size,
                        const char *what, char *why, size_t why_len)
{
    size_t size;
    memcpy(&size, src, sizeof size);
    if (size < min_size) {
        snprintf(why, why_len, "%s.size is %zu: start from the struct's _INIT initialiser", what,
                 size);
        return FERRY_EINVALID;
    }
    size_t n = size < dst_size ? size : dst_size;
    for (size_t i = n; i < size; i++) {
        if (((const unsigned char *)src)[i]) {
            snprintf(why, why_len,
                     "%s sets an option this libferry (" FERRY_VERSION_STRING
                     ") does not know: byte %zu of %zu",
                     what, i, size);
            return FERRY_EUNSUPPORTED;
        }
    }
    memset(dst, 0, dst_size);
    memcpy(dst, src, n);
    memcpy(dst, &dst_size, sizeof dst_size);
    return 0;
}
