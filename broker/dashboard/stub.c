#include "dashboard.h"
const unsigned char ferry_dashboard_html[] = "<!doctype html><title>ferryd</title><p>ferryd</p>\n";
const size_t ferry_dashboard_html_len = sizeof(ferry_dashboard_html) - 1;
