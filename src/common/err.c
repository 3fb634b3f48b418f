/* Filling a mimeo_err (see err.h). */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

void err_set(mimeo_err *err, int code, const char *error, const char *fmt, ...) {
    if (!err) return;
    err->code = code;
    snprintf(err->error, sizeof err->error, "%s", error);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->reason, sizeof err->reason, fmt, ap);
    va_end(ap);
}
