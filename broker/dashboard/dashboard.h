#ifndef FERRY_BROKER_DASHBOARD_H
#define FERRY_BROKER_DASHBOARD_H
#include <stddef.h>
extern const unsigned char ferry_dashboard_html[];
extern const size_t ferry_dashboard_html_len;
#endif
