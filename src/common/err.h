/* Filling a mimeo_err: one helper for every module, so CouchDB-shaped errors are built the
 * same way everywhere. */
#ifndef MIMEO_ERR_H
#define MIMEO_ERR_H

#include "mimeo.h"

/* Sets err (when not NULL) to code, CouchDB's error name and a formatted reason (truncated
 * to fit). Pass "%s" and the text when the reason holds user input. */
void err_set(mimeo_err *err, int code, const char *error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
