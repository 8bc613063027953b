/*
 * tessera.h: a small C API for writing Tessera services.
 *
 * It wraps the bindings that wit-bindgen generated in bindings/ (the raw
 * component-model interfaces) with plain C types: a request struct, a
 * response you fill in, and functions for the key-value store, the SQL
 * database, configuration, publishing events and outgoing HTTP.
 *
 * You write one function:
 *
 *     void handle_request(const ts_request *req, ts_response *res);
 *
 * Memory: everything this API hands you (strings, bodies, rows, buckets,
 * HTTP responses) and everything you get from ts_alloc/ts_strdup/ts_sprintf
 * lives in a per-request arena that is released after handle_request
 * returns. You never free any of it; don't keep pointers to it in globals.
 * (Each request runs in a fresh instance anyway.) Memory you malloc yourself
 * is yours to free. Arguments you pass in are only read during the call:
 * the API copies what it keeps.
 *
 * Errors: functions that can fail return an int: TS_OK (0) on success,
 * TS_NOT_FOUND (1) when a key is absent, a negative TS_ERR_* code on
 * failure. ts_errmsg() describes the last failure.
 */
#ifndef TESSERA_H
#define TESSERA_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------ */

enum {
    TS_OK = 0,
    TS_NOT_FOUND = 1,               /* not an error: the key/value is absent */

    TS_ERR_NO_SUCH_STORE = -1,      /* kv: bucket neither `default` nor declared */
    TS_ERR_ACCESS_DENIED = -2,      /* kv */
    TS_ERR_OTHER = -3,              /* kv: anything else (size limits, I/O) */
    TS_ERR_INVALID_STATEMENT = -10, /* sql: bad SQL, unknown table/column, wrong param count */
    TS_ERR_CONSTRAINT = -11,        /* sql: UNIQUE, NOT NULL, CHECK, FOREIGN KEY */
    TS_ERR_NOT_PERMITTED = -12,     /* sql: ATTACH, BEGIN, _tessera tables, ... */
    TS_ERR_TOO_LARGE = -13,         /* sql, publish: over Tessera's limits */
    TS_ERR_TIMEOUT = -14,           /* sql: ran past the request's deadline */
    TS_ERR_IO = -15,                /* sql, config: disk or I/O error */
    TS_ERR_UPSTREAM = -20,          /* config: the configuration source failed */
    TS_ERR_INVALID_TOPIC = -30,     /* publish */
    TS_ERR_UNAVAILABLE = -31,       /* publish: this instance cannot publish */
    TS_ERR_HTTP = -40,              /* outgoing HTTP failed (no response) */
    TS_ERR_INVALID_ARG = -50        /* a bad argument (e.g. a malformed URL) */
};

/* The message of the last failed call ("" if none). Valid until the next
 * failing call. */
const char *ts_errmsg(void);

/* ---- the per-request arena --------------------------------------------- */

/* Zeroed memory released when the request ends. Never returns NULL (it
 * aborts the request if memory runs out). */
void *ts_alloc(size_t size);
char *ts_strdup(const char *s);
char *ts_strndup(const char *s, size_t n);
char *ts_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *ts_vsprintf(const char *fmt, va_list ap);

/* ---- incoming request -------------------------------------------------- */

typedef struct ts_header {
    const char *name;  /* lowercase */
    const char *value;
} ts_header;

typedef struct ts_request {
    const char *method;       /* "GET", "POST", ... */
    const char *path;         /* full path without the query: "/cart/c1/items" */
    const char *query;        /* after '?', undecoded; "" if none */
    const ts_header *headers; /* every header, in order */
    size_t header_count;
    const char *body;         /* whole body, NUL-terminated (also when binary) */
    size_t body_len;
} ts_request;

/* First value of a header (case-insensitive name), or NULL. */
const char *ts_req_header(const ts_request *req, const char *name);
/* A query parameter, percent-decoded ('+' = space), or NULL. */
const char *ts_req_query(const ts_request *req, const char *name);
/* Whether the path is `prefix` or `prefix/...`; if so and rest is not NULL,
 * *rest = what follows "prefix/" ("" for an exact match or a trailing '/'). */
bool ts_path_match(const ts_request *req, const char *prefix, const char **rest);

/* ---- response ---------------------------------------------------------- */

/* Filled in by your handler, sent after it returns. Defaults: status 200,
 * no headers, empty body. */
typedef struct ts_response ts_response;

void ts_set_status(ts_response *res, int status);
void ts_add_header(ts_response *res, const char *name, const char *value);
void ts_write(ts_response *res, const void *data, size_t len);   /* appends */
void ts_print(ts_response *res, const char *text);               /* appends */
void ts_printf(ts_response *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Status + content-type + formatted body, replacing any body so far. */
void ts_reply(ts_response *res, int status, const char *content_type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same with content-type application/json; fmt must produce JSON. */
void ts_reply_json(ts_response *res, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* {"error":"<formatted message>"} with the message JSON-escaped. */
void ts_reply_error(ts_response *res, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- JSON helpers -------------------------------------------------------- */

/* `s` as a quoted, escaped JSON string: ts_json_quote("a\"b") -> "\"a\\\"b\"".
 * Use with "%s" in ts_reply_json. */
const char *ts_json_quote(const char *s);
/* A top-level member of a JSON object: an integer, or a string (unescaped).
 * TS_OK, TS_NOT_FOUND (absent or of another type) or TS_ERR_INVALID_ARG
 * (not a JSON object). These scan; they do not validate the whole text. */
int ts_json_get_int(const char *json, size_t len, const char *key, int64_t *out);
int ts_json_get_string(const char *json, size_t len, const char *key, const char **out);

/* ---- key-value store (wasi:keyvalue) --------------------------------------- */

typedef struct ts_kv ts_kv; /* an open bucket; closed when the request ends */

typedef struct ts_bytes {
    const char *data; /* NUL-terminated for convenience (values are often text) */
    size_t len;
} ts_bytes;

/* `default` always opens; other names must be in the manifest's `buckets`. */
int ts_kv_open(const char *bucket, ts_kv **out);
/* TS_OK and *value, or TS_NOT_FOUND. */
int ts_kv_get(ts_kv *kv, const char *key, ts_bytes *value);
int ts_kv_set(ts_kv *kv, const char *key, const void *data, size_t len);
int ts_kv_set_str(ts_kv *kv, const char *key, const char *value);
int ts_kv_delete(ts_kv *kv, const char *key);       /* absent is not an error */
int ts_kv_exists(ts_kv *kv, const char *key, bool *exists);
/* Atomically adds delta (absent = 0); *value (may be NULL) = the new value.
 * Counters are stored as decimal text, so ts_kv_get reads e.g. "42". */
int ts_kv_increment(ts_kv *kv, const char *key, int64_t delta, int64_t *value);
/* One page of keys in ascending byte order. */
typedef struct ts_keys {
    const char **keys;
    size_t count;
    const char *next; /* pass as `cursor` for the next page; NULL on the last */
} ts_keys;
/* cursor: NULL for the first page, else the previous page's `next`. */
int ts_kv_keys(ts_kv *kv, const char *cursor, ts_keys *page);

/* ---- SQL (tessera:sql, SQLite dialect) ---------------------------------------- */

typedef enum { TS_NULL, TS_INT, TS_REAL, TS_TEXT, TS_BLOB } ts_type;

typedef struct ts_value {
    ts_type type;
    int64_t i;      /* TS_INT */
    double f;       /* TS_REAL */
    const char *s;  /* TS_TEXT (NUL-terminated) or TS_BLOB bytes */
    size_t len;     /* bytes in s */
} ts_value;

ts_value ts_null(void);
ts_value ts_int(int64_t i);
ts_value ts_real(double f);
ts_value ts_text(const char *s);           /* s may be NULL: gives TS_NULL */
ts_value ts_blob(const void *data, size_t len);

/* Parameters for ?, ?1, ?2...: TS_PARAMS(ts_text(id), ts_int(2)) expands to
 * "array, count"; write NULL, 0 for none. */
#define TS_PARAMS(...) \
    ((const ts_value[]){__VA_ARGS__}), (sizeof((ts_value[]){__VA_ARGS__}) / sizeof(ts_value))

typedef struct ts_rows {
    size_t column_count;
    const char **columns;
    size_t row_count;
    const ts_value *values; /* row-major: row r, column c = values[r * column_count + c] */
} ts_rows;

/* A cell by row and column name, or NULL if there is no such row/column. */
const ts_value *ts_cell(const ts_rows *rows, size_t row, const char *column);
/* Typed shortcuts: NULL/0 when the cell is absent, NULL or of another type. */
const char *ts_cell_text(const ts_rows *rows, size_t row, const char *column);
int64_t ts_cell_int(const ts_rows *rows, size_t row, const char *column);

typedef struct ts_changes {
    uint64_t rows_affected;
    bool has_last_insert_id;
    int64_t last_insert_id;
} ts_changes;

typedef struct ts_statement {
    const char *sql;
    const ts_value *params;
    size_t param_count;
} ts_statement;

int ts_sql_query(const char *sql, const ts_value *params, size_t param_count, ts_rows *out);
/* out may be NULL. */
int ts_sql_execute(const char *sql, const ts_value *params, size_t param_count, ts_changes *out);
/* All statements in one transaction; out (may be NULL) gets count entries. */
int ts_sql_batch(const ts_statement *statements, size_t count, ts_changes *out);

/* ---- configuration and secrets (wasi:config) --------------------------------- */

/* TS_OK and *value, or TS_NOT_FOUND. */
int ts_config_get(const char *key, const char **value);
/* The value, or `fallback` when it is unset or cannot be read. */
const char *ts_config_or(const char *key, const char *fallback);
/* Every key and value (name = key). */
int ts_config_all(const ts_header **pairs, size_t *count);

/* ---- events (tessera:messaging) -------------------------------------------- */

/* Queues data for topic; it is delivered only if this request succeeds
 * (status < 500). content_type and id (the message id, = subscribers'
 * ce-id) may be NULL. */
int ts_publish(const char *topic, const void *data, size_t len, const char *content_type,
               const char **id);

/* ---- outgoing HTTP (wasi:http/outgoing-handler) ---------------------------- */

typedef struct ts_http_response {
    int status;
    const ts_header *headers;
    size_t header_count;
    const char *body; /* NUL-terminated */
    size_t body_len;
} ts_http_response;

/* A whole request and response. url is http://host[:port]/path?query or
 * https://...; http://<service>.internal/... calls another service of this
 * app in-process. headers may be NULL; body may be NULL. A non-2xx status is
 * not an error: TS_ERR_HTTP means no response came. */
int ts_http(const char *method, const char *url, const ts_header *headers, size_t header_count,
            const void *body, size_t body_len, ts_http_response *out);
int ts_http_get(const char *url, ts_http_response *out);
const char *ts_http_header(const ts_http_response *resp, const char *name);

/* ---- your handler ---------------------------------------------------------- */

void handle_request(const ts_request *req, ts_response *res);

#ifdef __cplusplus
}
#endif

#endif /* TESSERA_H */
