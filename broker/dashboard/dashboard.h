/*
 * dashboard.h - the live dashboard page (broker/dashboard/index.html),
 * compiled into ferryd by the build (embed.c, meson custom_target
 * dashboard_asset.c). The HTTP listener serves it at "/" as
 * "text/html; charset=utf-8".
 */
#ifndef FERRY_DASHBOARD_H
#define FERRY_DASHBOARD_H

#include <stddef.h>

/* The page's bytes, followed by one NUL that ferry_dashboard_html_len does
 * not count. */
extern const unsigned char ferry_dashboard_html[];
extern const size_t ferry_dashboard_html_len;

#endif /* FERRY_DASHBOARD_H */
