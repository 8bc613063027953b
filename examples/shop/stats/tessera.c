/*
 * tessera.c: the implementation of tessera.h over the generated bindings
 * (bindings/service.h). See tessera.h for the API and its memory rules.
 *
 * Rule used throughout: whatever the bindings return is copied into the
 * request arena and the bindings' own allocation is freed right away with
 * its *_free function; resources (handles) are dropped as soon as they are
 * no longer needed, children before parents.
 */
#include "tessera.h"

#include "bindings/service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== arena and errors ================================================= */

typedef union block {
    union block *next;
    max_align_t align;
} block;

typedef struct cleanup {
    struct cleanup *next;
    void (*fn)(void *);
    void *arg;
} cleanup;

static block *g_blocks;     /* every ts_alloc, newest first */
static cleanup *g_cleanups; /* run (newest first) when the request ends */
static char g_err[1024];

static void out_of_memory(void) {
    fputs("tessera: out of memory\n", stderr);
    abort();
}

void *ts_alloc(size_t size) {
    block *b = calloc(1, sizeof(block) + size + 1);
    if (!b) out_of_memory();
    b->next = g_blocks;
    g_blocks = b;
    return b + 1;
}

/* Runs fn(arg) when the request ends. */
static void defer(void (*fn)(void *), void *arg) {
    cleanup *c = ts_alloc(sizeof *c);
    c->fn = fn;
    c->arg = arg;
    c->next = g_cleanups;
    g_cleanups = c;
}

static void arena_release(void) {
    while (g_cleanups) {
        cleanup *c = g_cleanups;
        g_cleanups = c->next;
        c->fn(c->arg);
    }
    while (g_blocks) {
        block *b = g_blocks;
        g_blocks = b->next;
        free(b);
    }
}

char *ts_strndup(const char *s, size_t n) {
    char *p = ts_alloc(n + 1);
    if (n) memcpy(p, s, n);
    return p;
}

char *ts_strdup(const char *s) { return ts_strndup(s, strlen(s)); }

char *ts_vsprintf(const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return ts_strdup("");
    char *p = ts_alloc((size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *ts_sprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *p = ts_vsprintf(fmt, ap);
    va_end(ap);
    return p;
}

const char *ts_errmsg(void) { return g_err; }

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

/* A bindings string (not NUL-terminated) copied into the arena. */
static char *copy_str(const service_string_t *s) { return ts_strndup((const char *)s->ptr, s->len); }

static service_string_t str_arg(const char *s) {
    service_string_t r = {(uint8_t *)s, s ? strlen(s) : 0};
    return r;
}

/* A growable heap buffer. */
typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void buf_add(buf *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) out_of_memory();
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
}

/* Hands the buffer to the arena: freed when the request ends. */
static const char *buf_keep(buf *b) {
    if (!b->p) return ts_alloc(1);
    defer(free, b->p);
    return b->p;
}

static int streq_nocase(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return 0;
    }
    return *a == *b;
}

/* ==== streams and HTTP plumbing ======================================== */

/* Reads a stream to its end into *out (arena). */
static int read_stream(wasi_io_streams_borrow_input_stream_t in, const char **out, size_t *len) {
    buf b = {0};
    for (;;) {
        service_list_u8_t chunk;
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_input_stream_blocking_read(in, 64 * 1024, &chunk, &err)) {
            if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED) break;
            wasi_io_error_error_drop_own(err.val.last_operation_failed);
            free(b.p);
            return fail(TS_ERR_HTTP, "reading a body failed");
        }
        buf_add(&b, chunk.ptr, chunk.len);
        service_list_u8_free(&chunk);
    }
    *out = buf_keep(&b);
    *len = b.len;
    return TS_OK;
}

/* Reads a whole incoming body (consumes it) into *out. */
static int read_body(wasi_http_types_own_incoming_body_t body, const char **out, size_t *len) {
    wasi_http_types_own_input_stream_t stream;
    int rc = TS_OK;
    if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream)) {
        rc = read_stream(wasi_io_streams_borrow_input_stream(stream), out, len);
        wasi_io_streams_input_stream_drop_own(stream);
    } else {
        *out = ts_alloc(1);
        *len = 0;
    }
    wasi_http_types_future_trailers_drop_own(wasi_http_types_static_incoming_body_finish(body));
    return rc;
}

/* Writes data to an outgoing body and finishes it (consumes it). */
static int write_body(wasi_http_types_own_outgoing_body_t body, const char *data, size_t len) {
    wasi_http_types_own_output_stream_t stream;
    int rc = TS_OK;
    if (wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &stream)) {
        wasi_io_streams_borrow_output_stream_t s = wasi_io_streams_borrow_output_stream(stream);
        while (len > 0) {
            size_t n = len > 4096 ? 4096 : len; /* the most one blocking write may take */
            service_list_u8_t chunk = {(uint8_t *)data, n};
            wasi_io_streams_stream_error_t err;
            if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(s, &chunk, &err)) {
                if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
                    wasi_io_error_error_drop_own(err.val.last_operation_failed);
                rc = fail(TS_ERR_HTTP, "writing a body failed");
                break;
            }
            data += n;
            len -= n;
        }
        wasi_io_streams_output_stream_drop_own(stream);
    }
    wasi_http_types_error_code_t err;
    if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &err)) {
        wasi_http_types_error_code_free(&err);
        if (rc == TS_OK) rc = fail(TS_ERR_HTTP, "finishing a body failed");
    }
    return rc;
}

/* Copies a fields resource's entries into the arena and drops it. */
static void take_headers(wasi_http_types_own_fields_t fields, const ts_header **out, size_t *count) {
    wasi_http_types_list_tuple2_field_name_field_value_t list;
    wasi_http_types_method_fields_entries(wasi_http_types_borrow_fields(fields), &list);
    ts_header *h = ts_alloc(sizeof(ts_header) * (list.len + 1));
    for (size_t i = 0; i < list.len; i++) {
        char *name = copy_str(&list.ptr[i].f0);
        for (char *c = name; *c; c++)
            if (*c >= 'A' && *c <= 'Z') *c += 32;
        h[i].name = name;
        h[i].value = ts_strndup((const char *)list.ptr[i].f1.ptr, list.ptr[i].f1.len);
    }
    *out = h;
    *count = list.len;
    wasi_http_types_list_tuple2_field_name_field_value_free(&list);
    wasi_http_types_fields_drop_own(fields);
}

/* A new fields resource holding the given headers. */
static bool make_fields(const ts_header *h, size_t n, wasi_http_types_own_fields_t *out) {
    wasi_http_types_tuple2_field_name_field_value_t *t = ts_alloc(sizeof *t * (n + 1));
    for (size_t i = 0; i < n; i++) {
        t[i].f0 = str_arg(h[i].name);
        t[i].f1.ptr = (uint8_t *)h[i].value;
        t[i].f1.len = strlen(h[i].value);
    }
    wasi_http_types_list_tuple2_field_name_field_value_t list = {t, n};
    wasi_http_types_header_error_t err;
    return wasi_http_types_static_fields_from_list(&list, out, &err);
}

static const char *header_in(const ts_header *h, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (streq_nocase(h[i].name, name)) return h[i].value;
    return NULL;
}

static const char *const METHODS[] = {"GET", "HEAD", "POST", "PUT", "DELETE",
                                      "CONNECT", "OPTIONS", "TRACE", "PATCH"};

static const char *const HTTP_ERRORS[] = {
    "DNS timeout", "DNS error", "destination not found", "destination unavailable",
    "destination IP prohibited", "destination IP unroutable", "connection refused",
    "connection terminated", "connection timeout", "connection read timeout",
    "connection write timeout", "connection limit reached", "TLS protocol error",
    "TLS certificate error", "TLS alert received", "HTTP request denied",
    "HTTP request length required", "HTTP request body size", "HTTP request method invalid",
    "HTTP request URI invalid", "HTTP request URI too long", "HTTP request header section size",
    "HTTP request header size", "HTTP request trailer section size",
    "HTTP request trailer size", "HTTP response incomplete", "HTTP response header section size",
    "HTTP response header size", "HTTP response body size", "HTTP response trailer section size",
    "HTTP response trailer size", "HTTP response transfer coding", "HTTP response content coding",
    "HTTP response timeout", "HTTP upgrade failed", "HTTP protocol error", "loop detected",
    "configuration error", "internal error"};

/* Records an HTTP error code as the last error and frees it. */
static int http_fail(const char *url, wasi_http_types_error_code_t *e) {
    const char *what = e->tag < sizeof HTTP_ERRORS / sizeof *HTTP_ERRORS ? HTTP_ERRORS[e->tag] : "error";
    if (e->tag == WASI_HTTP_TYPES_ERROR_CODE_INTERNAL_ERROR && e->val.internal_error.is_some)
        fail(TS_ERR_HTTP, "%s: %s: %.*s", url, what, (int)e->val.internal_error.val.len,
             (const char *)e->val.internal_error.val.ptr);
    else
        fail(TS_ERR_HTTP, "%s: %s", url, what);
    wasi_http_types_error_code_free(e);
    return TS_ERR_HTTP;
}

/* ==== incoming request and response ===================================== */

struct ts_response {
    int status;
    ts_header *headers;
    size_t header_count, header_cap;
    buf body;
};

const char *ts_req_header(const ts_request *req, const char *name) {
    return header_in(req->headers, req->header_count, name);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into the arena ('+' = space). */
static char *url_decode(const char *s, size_t n) {
    char *out = ts_alloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            *o++ = ' ';
        } else if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = 0;
    return out;
}

const char *ts_req_query(const ts_request *req, const char *name) {
    const char *p = req->query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        size_t klen = eq ? (size_t)(eq - p) : n;
        if (strcmp(url_decode(p, klen), name) == 0)
            return eq ? url_decode(eq + 1, n - klen - 1) : ts_strdup("");
        p += n;
        if (*p) p++;
    }
    return NULL;
}

bool ts_path_match(const ts_request *req, const char *prefix, const char **rest) {
    size_t n = strlen(prefix);
    if (strncmp(req->path, prefix, n) != 0) return false;
    if (req->path[n] == 0) {
        if (rest) *rest = req->path + n;
        return true;
    }
    if (req->path[n] != '/') return false;
    if (rest) *rest = req->path + n + 1;
    return true;
}

void ts_set_status(ts_response *res, int status) { res->status = status; }

void ts_add_header(ts_response *res, const char *name, const char *value) {
    if (res->header_count == res->header_cap) {
        size_t cap = res->header_cap ? res->header_cap * 2 : 8;
        ts_header *h = ts_alloc(sizeof *h * cap);
        if (res->header_count) memcpy(h, res->headers, sizeof *h * res->header_count);
        res->headers = h;
        res->header_cap = cap;
    }
    res->headers[res->header_count].name = ts_strdup(name);
    res->headers[res->header_count].value = ts_strdup(value);
    res->header_count++;
}

void ts_write(ts_response *res, const void *data, size_t len) { buf_add(&res->body, data, len); }

void ts_print(ts_response *res, const char *text) { buf_add(&res->body, text, strlen(text)); }

void ts_printf(ts_response *res, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ts_print(res, ts_vsprintf(fmt, ap));
    va_end(ap);
}

static void reply_v(ts_response *res, int status, const char *content_type, const char *fmt, va_list ap) {
    res->status = status;
    if (content_type) {
        /* replace an earlier content-type */
        for (size_t i = 0; i < res->header_count; i++)
            if (streq_nocase(res->headers[i].name, "content-type")) res->headers[i].value = "";
        size_t j = 0;
        for (size_t i = 0; i < res->header_count; i++)
            if (*res->headers[i].value || !streq_nocase(res->headers[i].name, "content-type"))
                res->headers[j++] = res->headers[i];
        res->header_count = j;
        ts_add_header(res, "content-type", content_type);
    }
    res->body.len = 0;
    ts_print(res, ts_vsprintf(fmt, ap));
}

void ts_reply(ts_response *res, int status, const char *content_type, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_v(res, status, content_type, fmt, ap);
    va_end(ap);
}

void ts_reply_json(ts_response *res, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_v(res, status, "application/json", fmt, ap);
    va_end(ap);
}

void ts_reply_error(ts_response *res, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const char *msg = ts_vsprintf(fmt, ap);
    va_end(ap);
    ts_reply_json(res, status, "{\"error\":%s}", ts_json_quote(msg));
}

static void send_response(wasi_http_types_own_response_outparam_t out, ts_response *res) {
    wasi_http_types_own_fields_t fields;
    if (!make_fields(res->headers, res->header_count, &fields)) {
        fprintf(stderr, "tessera: invalid response header, sending none\n");
        fields = wasi_http_types_constructor_fields();
    }
    wasi_http_types_own_outgoing_response_t resp = wasi_http_types_constructor_outgoing_response(fields);
    wasi_http_types_borrow_outgoing_response_t r = wasi_http_types_borrow_outgoing_response(resp);
    if (!wasi_http_types_method_outgoing_response_set_status_code(r, (uint16_t)res->status)) {
        fprintf(stderr, "tessera: invalid status %d, sending 500\n", res->status);
        wasi_http_types_method_outgoing_response_set_status_code(r, 500);
    }
    wasi_http_types_own_outgoing_body_t body;
    bool has_body = wasi_http_types_method_outgoing_response_body(r, &body);
    wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false};
    result.val.ok = resp;
    wasi_http_types_static_response_outparam_set(out, &result);
    if (has_body) write_body(body, res->body.p, res->body.len);
}

void exports_wasi_http_incoming_handler_handle(exports_wasi_http_incoming_handler_own_incoming_request_t request,
                                               exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
    wasi_http_types_borrow_incoming_request_t r = wasi_http_types_borrow_incoming_request(request);
    ts_request req = {0};

    wasi_http_types_method_t method;
    wasi_http_types_method_incoming_request_method(r, &method);
    if (method.tag == WASI_HTTP_TYPES_METHOD_OTHER) {
        req.method = copy_str(&method.val.other);
        wasi_http_types_method_free(&method);
    } else {
        req.method = METHODS[method.tag];
    }

    service_string_t pq;
    const char *path_query = "/";
    if (wasi_http_types_method_incoming_request_path_with_query(r, &pq)) {
        path_query = copy_str(&pq);
        service_string_free(&pq);
    }
    const char *q = strchr(path_query, '?');
    req.path = q ? ts_strndup(path_query, (size_t)(q - path_query)) : path_query;
    req.query = q ? q + 1 : "";

    take_headers(wasi_http_types_method_incoming_request_headers(r), &req.headers, &req.header_count);

    wasi_http_types_own_incoming_body_t body;
    req.body = ts_alloc(1);
    if (wasi_http_types_method_incoming_request_consume(r, &body)) read_body(body, &req.body, &req.body_len);
    wasi_http_types_incoming_request_drop_own(request);

    ts_response res = {.status = 200};
    handle_request(&req, &res);
    send_response(response_out, &res);

    fflush(stdout);
    fflush(stderr);
    free(res.body.p);
    arena_release();
}

/* ==== JSON ============================================================== */

const char *ts_json_quote(const char *s) {
    buf b = {0};
    buf_add(&b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': buf_add(&b, "\\\"", 2); break;
        case '\\': buf_add(&b, "\\\\", 2); break;
        case '\n': buf_add(&b, "\\n", 2); break;
        case '\r': buf_add(&b, "\\r", 2); break;
        case '\t': buf_add(&b, "\\t", 2); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                buf_add(&b, esc, 6);
            } else {
                buf_add(&b, p, 1);
            }
        }
    }
    buf_add(&b, "\"", 1);
    return buf_keep(&b);
}

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at '"': returns just past the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

/* Skips one value (string, number, literal, object or array). */
static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') {
                p = skip_string(p, end);
                if (!p) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            else if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' && *p != '\n' &&
           *p != '\r')
        p++;
    return p;
}

static void put_utf8(buf *b, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    buf_add(b, u, n);
}

static int hex4(const char *p, const char *end, unsigned *out) {
    if (end - p < 4) return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return 0;
        v = v * 16 + (unsigned)h;
    }
    *out = v;
    return 1;
}

/* Decodes the JSON string at p ('"') into the arena; NULL if malformed. */
static const char *decode_string(const char *p, const char *end) {
    buf b = {0};
    buf_add(&b, "", 0);
    for (p++; p < end; p++) {
        if (*p == '"') return buf_keep(&b);
        if (*p != '\\') {
            buf_add(&b, p, 1);
            continue;
        }
        if (++p >= end) break;
        char c = *p;
        switch (c) {
        case 'n': buf_add(&b, "\n", 1); break;
        case 't': buf_add(&b, "\t", 1); break;
        case 'r': buf_add(&b, "\r", 1); break;
        case 'b': buf_add(&b, "\b", 1); break;
        case 'f': buf_add(&b, "\f", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(p + 1, end, &cp)) goto bad;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && end - p > 6 && p[1] == '\\' && p[2] == 'u' &&
                hex4(p + 3, end, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            put_utf8(&b, cp);
            break;
        }
        default: buf_add(&b, &c, 1); /* \" \\ \/ */
        }
    }
bad:
    free(b.p);
    return NULL;
}

/* Finds a top-level member of an object; *value = the start of its value. */
static int find_member(const char *json, size_t len, const char *key, const char **value, const char **end) {
    const char *p = json, *e = json + len;
    size_t klen = strlen(key);
    *end = e;
    p = skip_ws(p, e);
    if (p >= e || *p != '{') return fail(TS_ERR_INVALID_ARG, "not a JSON object");
    p++;
    for (;;) {
        p = skip_ws(p, e);
        if (p < e && *p == '}') return TS_NOT_FOUND;
        if (p >= e || *p != '"') return fail(TS_ERR_INVALID_ARG, "malformed JSON object");
        const char *kstart = p + 1, *kend = skip_string(p, e);
        if (!kend) return fail(TS_ERR_INVALID_ARG, "malformed JSON object");
        bool match = (size_t)(kend - 1 - kstart) == klen && memcmp(kstart, key, klen) == 0;
        if (!match && memchr(kstart, '\\', (size_t)(kend - 1 - kstart))) {
            const char *k = decode_string(p, e);
            match = k && strcmp(k, key) == 0;
        }
        p = skip_ws(kend, e);
        if (p >= e || *p != ':') return fail(TS_ERR_INVALID_ARG, "malformed JSON object");
        p = skip_ws(p + 1, e);
        if (match) {
            *value = p;
            return TS_OK;
        }
        p = skip_value(p, e);
        if (!p) return fail(TS_ERR_INVALID_ARG, "malformed JSON object");
        p = skip_ws(p, e);
        if (p < e && *p == ',') { p++; continue; }
        if (p < e && *p == '}') return TS_NOT_FOUND;
        return fail(TS_ERR_INVALID_ARG, "malformed JSON object");
    }
}

int ts_json_get_int(const char *json, size_t len, const char *key, int64_t *out) {
    const char *p, *e;
    int rc = find_member(json, len, key, &p, &e);
    if (rc != TS_OK) return rc;
    bool neg = p < e && *p == '-';
    if (neg) p++;
    if (p >= e || *p < '0' || *p > '9') return TS_NOT_FOUND;
    uint64_t v = 0;
    for (; p < e && *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10) return fail(TS_ERR_INVALID_ARG, "%s: number too large", key);
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (p < e && (*p == '.' || *p == 'e' || *p == 'E')) return TS_NOT_FOUND; /* not an integer */
    if (v > (uint64_t)INT64_MAX + neg) return fail(TS_ERR_INVALID_ARG, "%s: number too large", key);
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return TS_OK;
}

int ts_json_get_string(const char *json, size_t len, const char *key, const char **out) {
    const char *p, *e;
    int rc = find_member(json, len, key, &p, &e);
    if (rc != TS_OK) return rc;
    if (p >= e || *p != '"') return TS_NOT_FOUND;
    const char *s = decode_string(p, e);
    if (!s) return fail(TS_ERR_INVALID_ARG, "%s: malformed JSON string", key);
    *out = s;
    return TS_OK;
}

/* ==== key-value ========================================================= */

struct ts_kv {
    wasi_keyvalue_store_own_bucket_t handle;
    const char *name;
};

static void kv_close(void *arg) { wasi_keyvalue_store_bucket_drop_own(((ts_kv *)arg)->handle); }

static int kv_fail(ts_kv *kv, const char *bucket, const char *key, wasi_keyvalue_store_error_t *e) {
    const char *where = kv ? kv->name : bucket;
    int rc;
    switch (e->tag) {
    case WASI_KEYVALUE_STORE_ERROR_NO_SUCH_STORE:
        rc = fail(TS_ERR_NO_SUCH_STORE, "no such bucket: %s (declare it in the manifest's buckets)", where);
        break;
    case WASI_KEYVALUE_STORE_ERROR_ACCESS_DENIED:
        rc = fail(TS_ERR_ACCESS_DENIED, "access denied to bucket %s", where);
        break;
    default:
        rc = fail(TS_ERR_OTHER, "bucket %s, key %s: %.*s", where, key ? key : "-", (int)e->val.other.len,
                  (const char *)e->val.other.ptr);
    }
    wasi_keyvalue_store_error_free(e);
    return rc;
}

#define BUCKET(kv) wasi_keyvalue_store_borrow_bucket((kv)->handle)

int ts_kv_open(const char *bucket, ts_kv **out) {
    service_string_t name = str_arg(bucket);
    wasi_keyvalue_store_own_bucket_t h;
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_open(&name, &h, &err)) return kv_fail(NULL, bucket, NULL, &err);
    ts_kv *kv = ts_alloc(sizeof *kv);
    kv->handle = h;
    kv->name = ts_strdup(bucket);
    defer(kv_close, kv);
    *out = kv;
    return TS_OK;
}

int ts_kv_get(ts_kv *kv, const char *key, ts_bytes *value) {
    service_string_t k = str_arg(key);
    service_option_list_u8_t v;
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_get(BUCKET(kv), &k, &v, &err)) return kv_fail(kv, NULL, key, &err);
    if (!v.is_some) return TS_NOT_FOUND;
    value->data = ts_strndup((const char *)v.val.ptr, v.val.len);
    value->len = v.val.len;
    service_list_u8_free(&v.val);
    return TS_OK;
}

int ts_kv_set(ts_kv *kv, const char *key, const void *data, size_t len) {
    service_string_t k = str_arg(key);
    service_list_u8_t v = {(uint8_t *)data, len};
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_set(BUCKET(kv), &k, &v, &err)) return kv_fail(kv, NULL, key, &err);
    return TS_OK;
}

int ts_kv_set_str(ts_kv *kv, const char *key, const char *value) {
    return ts_kv_set(kv, key, value, strlen(value));
}

int ts_kv_delete(ts_kv *kv, const char *key) {
    service_string_t k = str_arg(key);
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_delete(BUCKET(kv), &k, &err)) return kv_fail(kv, NULL, key, &err);
    return TS_OK;
}

int ts_kv_exists(ts_kv *kv, const char *key, bool *exists) {
    service_string_t k = str_arg(key);
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_exists(BUCKET(kv), &k, exists, &err)) return kv_fail(kv, NULL, key, &err);
    return TS_OK;
}

int ts_kv_increment(ts_kv *kv, const char *key, int64_t delta, int64_t *value) {
    service_string_t k = str_arg(key);
    int64_t v;
    wasi_keyvalue_atomics_error_t err;
    if (!wasi_keyvalue_atomics_increment(BUCKET(kv), &k, delta, &v, &err)) return kv_fail(kv, NULL, key, &err);
    if (value) *value = v;
    return TS_OK;
}

int ts_kv_keys(ts_kv *kv, const char *cursor, ts_keys *page) {
    service_string_t c = str_arg(cursor);
    wasi_keyvalue_store_key_response_t resp;
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_list_keys(BUCKET(kv), cursor ? &c : NULL, &resp, &err))
        return kv_fail(kv, NULL, NULL, &err);
    const char **keys = ts_alloc(sizeof(char *) * (resp.keys.len + 1));
    for (size_t i = 0; i < resp.keys.len; i++) keys[i] = copy_str(&resp.keys.ptr[i]);
    page->keys = keys;
    page->count = resp.keys.len;
    page->next = resp.cursor.is_some ? copy_str(&resp.cursor.val) : NULL;
    wasi_keyvalue_store_key_response_free(&resp);
    return TS_OK;
}

/* ==== SQL =============================================================== */

ts_value ts_null(void) { return (ts_value){.type = TS_NULL}; }
ts_value ts_int(int64_t i) { return (ts_value){.type = TS_INT, .i = i}; }
ts_value ts_real(double f) { return (ts_value){.type = TS_REAL, .f = f}; }
ts_value ts_text(const char *s) {
    return s ? (ts_value){.type = TS_TEXT, .s = s, .len = strlen(s)} : ts_null();
}
ts_value ts_blob(const void *data, size_t len) { return (ts_value){.type = TS_BLOB, .s = data, .len = len}; }

static tessera_sql_sql_list_value_t to_params(const ts_value *params, size_t n) {
    tessera_sql_sql_value_t *v = ts_alloc(sizeof *v * (n + 1));
    for (size_t i = 0; i < n; i++) {
        const ts_value *p = &params[i];
        switch (p->type) {
        case TS_INT: v[i].tag = TESSERA_SQL_SQL_VALUE_INTEGER; v[i].val.integer = p->i; break;
        case TS_REAL: v[i].tag = TESSERA_SQL_SQL_VALUE_REAL; v[i].val.real = p->f; break;
        case TS_TEXT:
            v[i].tag = TESSERA_SQL_SQL_VALUE_TEXT;
            v[i].val.text.ptr = (uint8_t *)p->s;
            v[i].val.text.len = p->s ? (p->len ? p->len : strlen(p->s)) : 0;
            break;
        case TS_BLOB:
            v[i].tag = TESSERA_SQL_SQL_VALUE_BLOB;
            v[i].val.blob.ptr = (uint8_t *)p->s;
            v[i].val.blob.len = p->len;
            break;
        default: v[i].tag = TESSERA_SQL_SQL_VALUE_NULL;
        }
    }
    return (tessera_sql_sql_list_value_t){v, n};
}

static int sql_fail(tessera_sql_sql_error_t *e) {
    static const int codes[] = {TS_ERR_INVALID_STATEMENT, TS_ERR_CONSTRAINT, TS_ERR_NOT_PERMITTED,
                                TS_ERR_TOO_LARGE, TS_ERR_TIMEOUT, TS_ERR_IO};
    /* every case carries a message, at the same place in the union */
    int rc = fail(e->tag < 6 ? codes[e->tag] : TS_ERR_IO, "%.*s", (int)e->val.io.len, (const char *)e->val.io.ptr);
    tessera_sql_sql_error_free(e);
    return rc;
}

static void copy_changes(const tessera_sql_sql_changes_t *c, ts_changes *out) {
    out->rows_affected = c->rows_affected;
    out->has_last_insert_id = c->last_insert_id.is_some;
    out->last_insert_id = c->last_insert_id.is_some ? c->last_insert_id.val : 0;
}

int ts_sql_query(const char *sql, const ts_value *params, size_t param_count, ts_rows *out) {
    service_string_t s = str_arg(sql);
    tessera_sql_sql_list_value_t p = to_params(params, param_count);
    tessera_sql_sql_rows_t rows;
    tessera_sql_sql_error_t err;
    if (!tessera_sql_sql_query(&s, &p, &rows, &err)) return sql_fail(&err);
    size_t ncol = rows.columns.len, nrow = rows.rows.len;
    const char **cols = ts_alloc(sizeof(char *) * (ncol + 1));
    for (size_t c = 0; c < ncol; c++) cols[c] = copy_str(&rows.columns.ptr[c]);
    ts_value *vals = ts_alloc(sizeof(ts_value) * (ncol * nrow + 1));
    for (size_t r = 0; r < nrow; r++) {
        for (size_t c = 0; c < ncol && c < rows.rows.ptr[r].len; c++) {
            const tessera_sql_sql_value_t *v = &rows.rows.ptr[r].ptr[c];
            ts_value *o = &vals[r * ncol + c];
            switch (v->tag) {
            case TESSERA_SQL_SQL_VALUE_INTEGER: *o = ts_int(v->val.integer); break;
            case TESSERA_SQL_SQL_VALUE_REAL: *o = ts_real(v->val.real); break;
            case TESSERA_SQL_SQL_VALUE_TEXT:
                o->type = TS_TEXT;
                o->s = copy_str(&v->val.text);
                o->len = v->val.text.len;
                break;
            case TESSERA_SQL_SQL_VALUE_BLOB:
                o->type = TS_BLOB;
                o->s = ts_strndup((const char *)v->val.blob.ptr, v->val.blob.len);
                o->len = v->val.blob.len;
                break;
            default: *o = ts_null();
            }
        }
    }
    tessera_sql_sql_rows_free(&rows);
    out->column_count = ncol;
    out->columns = cols;
    out->row_count = nrow;
    out->values = vals;
    return TS_OK;
}

int ts_sql_execute(const char *sql, const ts_value *params, size_t param_count, ts_changes *out) {
    service_string_t s = str_arg(sql);
    tessera_sql_sql_list_value_t p = to_params(params, param_count);
    tessera_sql_sql_changes_t changes;
    tessera_sql_sql_error_t err;
    if (!tessera_sql_sql_execute(&s, &p, &changes, &err)) return sql_fail(&err);
    if (out) copy_changes(&changes, out);
    return TS_OK;
}

int ts_sql_batch(const ts_statement *statements, size_t count, ts_changes *out) {
    tessera_sql_sql_statement_t *st = ts_alloc(sizeof *st * (count + 1));
    for (size_t i = 0; i < count; i++) {
        st[i].sql = str_arg(statements[i].sql);
        st[i].params = to_params(statements[i].params, statements[i].param_count);
    }
    tessera_sql_sql_list_statement_t list = {st, count};
    tessera_sql_sql_list_changes_t changes;
    tessera_sql_sql_error_t err;
    if (!tessera_sql_sql_batch(&list, &changes, &err)) return sql_fail(&err);
    for (size_t i = 0; out && i < changes.len && i < count; i++) copy_changes(&changes.ptr[i], &out[i]);
    tessera_sql_sql_list_changes_free(&changes);
    return TS_OK;
}

const ts_value *ts_cell(const ts_rows *rows, size_t row, const char *column) {
    if (row >= rows->row_count) return NULL;
    for (size_t c = 0; c < rows->column_count; c++)
        if (strcmp(rows->columns[c], column) == 0) return &rows->values[row * rows->column_count + c];
    return NULL;
}

const char *ts_cell_text(const ts_rows *rows, size_t row, const char *column) {
    const ts_value *v = ts_cell(rows, row, column);
    return v && v->type == TS_TEXT ? v->s : NULL;
}

int64_t ts_cell_int(const ts_rows *rows, size_t row, const char *column) {
    const ts_value *v = ts_cell(rows, row, column);
    return v && v->type == TS_INT ? v->i : 0;
}

/* ==== config ============================================================ */

static int config_fail(wasi_config_store_error_t *e) {
    int code = e->tag == WASI_CONFIG_STORE_ERROR_UPSTREAM ? TS_ERR_UPSTREAM : TS_ERR_IO;
    /* both cases carry a message at the same place */
    int rc = fail(code, "config: %.*s", (int)e->val.io.len, (const char *)e->val.io.ptr);
    wasi_config_store_error_free(e);
    return rc;
}

int ts_config_get(const char *key, const char **value) {
    service_string_t k = str_arg(key);
    service_option_string_t v;
    wasi_config_store_error_t err;
    if (!wasi_config_store_get(&k, &v, &err)) return config_fail(&err);
    if (!v.is_some) return TS_NOT_FOUND;
    *value = copy_str(&v.val);
    service_string_free(&v.val);
    return TS_OK;
}

const char *ts_config_or(const char *key, const char *fallback) {
    const char *v;
    return ts_config_get(key, &v) == TS_OK ? v : fallback;
}

int ts_config_all(const ts_header **pairs, size_t *count) {
    service_list_tuple2_string_string_t list;
    wasi_config_store_error_t err;
    if (!wasi_config_store_get_all(&list, &err)) return config_fail(&err);
    ts_header *h = ts_alloc(sizeof *h * (list.len + 1));
    for (size_t i = 0; i < list.len; i++) {
        h[i].name = copy_str(&list.ptr[i].f0);
        h[i].value = copy_str(&list.ptr[i].f1);
    }
    *pairs = h;
    *count = list.len;
    service_list_tuple2_string_string_free(&list);
    return TS_OK;
}

/* ==== publish =========================================================== */

int ts_publish(const char *topic, const void *data, size_t len, const char *content_type, const char **id) {
    service_string_t t = str_arg(topic), ct = str_arg(content_type), msg_id;
    service_list_u8_t d = {(uint8_t *)data, len};
    tessera_messaging_producer_error_t err;
    if (!tessera_messaging_producer_publish(&t, &d, content_type ? &ct : NULL, &msg_id, &err)) {
        static const int codes[] = {TS_ERR_INVALID_TOPIC, TS_ERR_TOO_LARGE, TS_ERR_UNAVAILABLE};
        int rc = fail(err.tag < 3 ? codes[err.tag] : TS_ERR_UNAVAILABLE, "publish to %s: %.*s", topic,
                      (int)err.val.unavailable.len, (const char *)err.val.unavailable.ptr);
        tessera_messaging_producer_error_free(&err);
        return rc;
    }
    if (id) *id = copy_str(&msg_id);
    service_string_free(&msg_id);
    return TS_OK;
}

/* ==== outgoing HTTP ===================================================== */

int ts_http(const char *method, const char *url, const ts_header *headers, size_t header_count, const void *body,
            size_t body_len, ts_http_response *out) {
    /* scheme://authority/path?query */
    const char *sep = strstr(url, "://");
    if (!sep) return fail(TS_ERR_INVALID_ARG, "not an absolute URL: %s", url);
    const char *scheme = ts_strndup(url, (size_t)(sep - url));
    const char *auth = sep + 3;
    size_t auth_len = strcspn(auth, "/?#");
    if (auth_len == 0) return fail(TS_ERR_INVALID_ARG, "no host in URL: %s", url);
    const char *rest = auth + auth_len;
    size_t rest_len = strcspn(rest, "#");
    const char *path = rest_len == 0 ? "/" : *rest == '?' ? ts_sprintf("/%.*s", (int)rest_len, rest)
                                                       : ts_strndup(rest, rest_len);

    wasi_http_types_own_fields_t fields;
    if (!make_fields(headers, header_count, &fields)) return fail(TS_ERR_INVALID_ARG, "invalid or forbidden header");
    wasi_http_types_own_outgoing_request_t req = wasi_http_types_constructor_outgoing_request(fields);
    wasi_http_types_borrow_outgoing_request_t r = wasi_http_types_borrow_outgoing_request(req);

    wasi_http_types_method_t m = {.tag = WASI_HTTP_TYPES_METHOD_OTHER};
    m.val.other = str_arg(method);
    for (uint8_t i = 0; i < sizeof METHODS / sizeof *METHODS; i++)
        if (strcmp(method, METHODS[i]) == 0) m.tag = i;
    wasi_http_types_scheme_t sch = {.tag = WASI_HTTP_TYPES_SCHEME_OTHER};
    if (strcmp(scheme, "http") == 0) sch.tag = WASI_HTTP_TYPES_SCHEME_HTTP;
    else if (strcmp(scheme, "https") == 0) sch.tag = WASI_HTTP_TYPES_SCHEME_HTTPS;
    else sch.val.other = str_arg(scheme);
    service_string_t a = {(uint8_t *)auth, auth_len}, p = str_arg(path);
    if (!wasi_http_types_method_outgoing_request_set_method(r, &m) ||
        !wasi_http_types_method_outgoing_request_set_scheme(r, &sch) ||
        !wasi_http_types_method_outgoing_request_set_authority(r, &a) ||
        !wasi_http_types_method_outgoing_request_set_path_with_query(r, &p)) {
        wasi_http_types_outgoing_request_drop_own(req);
        return fail(TS_ERR_INVALID_ARG, "invalid method or URL: %s %s", method, url);
    }

    wasi_http_types_own_outgoing_body_t obody;
    bool has_body = wasi_http_types_method_outgoing_request_body(r, &obody);
    wasi_http_types_own_future_incoming_response_t future;
    wasi_http_types_error_code_t herr;
    if (!wasi_http_outgoing_handler_handle(req, NULL, &future, &herr)) {
        if (has_body) wasi_http_types_outgoing_body_drop_own(obody);
        return http_fail(url, &herr);
    }
    int rc = has_body ? write_body(obody, body, body ? body_len : 0) : TS_OK;

    wasi_http_types_borrow_future_incoming_response_t f = wasi_http_types_borrow_future_incoming_response(future);
    wasi_io_poll_own_pollable_t pollable = wasi_http_types_method_future_incoming_response_subscribe(f);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(pollable));
    wasi_io_poll_pollable_drop_own(pollable);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t got;
    bool ready = wasi_http_types_method_future_incoming_response_get(f, &got);
    wasi_http_types_future_incoming_response_drop_own(future);
    if (!ready || got.is_err) return fail(TS_ERR_HTTP, "%s: no response", url);
    if (got.val.ok.is_err) return http_fail(url, &got.val.ok.val.err);
    if (rc != TS_OK) fprintf(stderr, "tessera: %s: the request body was not sent whole\n", url);

    wasi_http_types_own_incoming_response_t resp = got.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t ir = wasi_http_types_borrow_incoming_response(resp);
    out->status = wasi_http_types_method_incoming_response_status(ir);
    take_headers(wasi_http_types_method_incoming_response_headers(ir), &out->headers, &out->header_count);
    wasi_http_types_own_incoming_body_t ibody;
    out->body = ts_alloc(1);
    out->body_len = 0;
    rc = TS_OK;
    if (wasi_http_types_method_incoming_response_consume(ir, &ibody)) rc = read_body(ibody, &out->body, &out->body_len);
    wasi_http_types_incoming_response_drop_own(resp);
    return rc;
}

int ts_http_get(const char *url, ts_http_response *out) { return ts_http("GET", url, NULL, 0, NULL, 0, out); }

const char *ts_http_header(const ts_http_response *resp, const char *name) {
    return header_in(resp->headers, resp->header_count, name);
}
