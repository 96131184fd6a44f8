/*
 * wsclient.c: benchmark WebSocket clients, one process holding many counting
 * connections. A C drop-in for the process side of bench/wsclient.py (its
 * Worker class and main()), which costs a Python process 50-100% of a core on
 * a busy run; this one costs a small fraction of that, so the generator does
 * not compete with the servers being measured.
 *
 * Build:  cc -O2 -Wall -Wextra -std=gnu11 -o wsclient wsclient.c
 *
 * bench/run.py starts several of these processes and drives each with one JSON
 * command per line on stdin; each command gets one JSON line on stdout
 * (except exit):
 *
 *   connect  {"cmd": "connect", "host", "port", "ours", "phoenix"?, "clients":
 *            [[index, table_id, sampled, join?], ...], "sequential"?, "concurrency"?
 *            (50), "timeout"? (30 s)}: open the connections, at most
 *            `concurrency` of them connecting at once (sequential: one at a
 *            time), and answer once each is ready or failed:
 *            {"ready", "errors" (up to 5), "error_count", "seconds"}
 *   reset    zero every connection's counters and the latency samples
 *   total    {"received", "frames"} summed over this process's connections
 *   report   {"clients": [[index, received, frames, closed], ...],
 *            "latencies": [ms, ...]}
 *   close    send each connection a close frame (1000), close, forget them
 *   exit     close, then exit without answering; so does EOF on stdin
 *
 * A connection speaks just enough RFC 6455 to be cheap: it sends the upgrade
 * request, then splits incoming frames by their headers and counts them
 * without parsing JSON:
 *   - against our server ("ours": true) it sends {"type": "subscribe", ...},
 *     is ready at the frame carrying "type":"synced", and counts the
 *     {"type":"change" messages in each frame (a frame may be an array);
 *   - against our server's Supabase endpoint ("phoenix": true as well) it
 *     joins realtime:<table_id> (vsn 2.0.0) with one postgres_changes binding
 *     filtered on table_id=eq.<table_id>, or, when its spec has a `join`
 *     (the JSON text of a phx_join payload: realtime-js's, with a binding and
 *     an access_token of its own), with that payload as it is; it is ready at
 *     "Subscribed to PostgreSQL", fails at a "status":"error" before then (a
 *     refused join), and counts the "postgres_changes" messages (one per
 *     frame);
 *   - against a peer it subscribes by URL (/ws?table_id=...), is ready at
 *     "type":"subscribed", and each frame is one change.
 * A sampled connection also records, for every change after ready, its arrival
 * time minus the number after "t": (the commit time the writers stamp in
 * row.data.t, epoch milliseconds): the commit-to-client latency. A change that
 * carries the old row as well has two; the newer is the change's own.
 *
 * One thread, one level-triggered epoll loop over stdin and every socket: a
 * command runs when its line is complete, and a connect answers only once all
 * its connections have settled, while the loop keeps reading the others.
 * Commands run one after the other, as in the Python version.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024) /* one read() into the shared buffer */
#define BIG_FRAME (64 * 1024)  /* larger partial frames are read in place */
#define MAX_HEADER (64 * 1024) /* of the HTTP response */
#define MAX_FRAME ((uint64_t)1 << 30)
#define MAX_EVENTS 1024
#define MAX_ERRORS 5 /* error strings kept per connect answer */

static const char CHANGE[] = "{\"type\":\"change\"";
static const char SYNCED[] = "\"type\":\"synced\"";
static const char SUBSCRIBED[] = "\"type\":\"subscribed\"";
static const char PHX_CHANGE[] = "\"postgres_changes\",{\"ids\"";
static const char PHX_SUBSCRIBED[] = "Subscribed to PostgreSQL";
static const char PHX_ERROR[] = "\"status\":\"error\"";
static const char STAMP[] = "\"t\":";

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

static void die(const char *what)
{
    fprintf(stderr, "wsclient: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

static double mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A growable byte string: command output, queued socket output, stdin. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_reserve(struct sbuf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void sb_add(struct sbuf *b, const void *s, size_t n)
{
    if (n == 0)
        return;
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_puts(struct sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* printf onto the end; formats in place, and again only if it did not fit. */
static void sb_vprintf(struct sbuf *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    sb_reserve(b, 64);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    if (n >= 0 && (size_t)n >= b->cap - b->len) {
        sb_reserve(b, (size_t)n + 1);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, again);
    }
    va_end(again);
    if (n > 0)
        b->len += (size_t)n;
}

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(b, fmt, ap);
    va_end(ap);
}

/* A JSON string literal. Bytes outside ASCII become U+FFFD so the output is
 * valid JSON whatever a server put in its status line. */
static void sb_json_string(struct sbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            sb_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            sb_printf(b, "\\u%04x", *p);
        else if (*p >= 0x80)
            sb_puts(b, "\\ufffd");
        else
            sb_add(b, p, 1);
    }
    sb_add(b, "\"", 1);
}

/* splitmix64, seeded from getrandom(): WebSocket keys and masks need to be
 * unpredictable to proxies, not cryptographically strong. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void base64_16(const unsigned char in[16], char out[25])
{
    static const char digits[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < 16; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < 16)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < 16)
            v |= in[i + 2];
        out[o++] = digits[(v >> 18) & 63];
        out[o++] = digits[(v >> 12) & 63];
        out[o++] = i + 1 < 16 ? digits[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < 16 ? digits[v & 63] : '=';
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Commands: a small JSON reader for exactly the shapes run.py sends         */

struct spec {
    long index;
    char *table_id;
    bool sampled;
    char *join; /* a phx_join payload's JSON text, or NULL */
};

struct command {
    char *cmd, *host;
    long port;
    bool ours, phoenix, sequential;
    long concurrency;
    double timeout;
    struct spec *specs;
    size_t nspecs;
};

struct jp {
    const char *p, *end;
    bool bad;
};

static void jp_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* Consume `ch` (after whitespace) if it is next. */
static bool jp_eat(struct jp *j, char ch)
{
    jp_ws(j);
    if (j->p < j->end && *j->p == ch) {
        j->p++;
        return true;
    }
    return false;
}

static bool jp_word(struct jp *j, const char *word)
{
    size_t n = strlen(word);
    jp_ws(j);
    if ((size_t)(j->end - j->p) >= n && memcmp(j->p, word, n) == 0) {
        j->p += n;
        return true;
    }
    return false;
}

static void utf8_put(struct sbuf *b, uint32_t cp)
{
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | cp >> 18);
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    sb_add(b, u, n);
}

static long jp_hex4(struct jp *j)
{
    if (j->end - j->p < 4)
        return -1;
    char hex[5];
    memcpy(hex, j->p, 4);
    hex[4] = '\0';
    char *e;
    long v = strtol(hex, &e, 16);
    if (e != hex + 4)
        return -1;
    j->p += 4;
    return v;
}

/* A string literal, decoded into a new NUL-terminated string (NULL if bad). */
static char *jp_string(struct jp *j)
{
    struct sbuf b = {0};
    if (!jp_eat(j, '"'))
        goto bad;
    while (j->p < j->end && *j->p != '"') {
        char ch = *j->p++;
        if (ch != '\\') {
            sb_add(&b, &ch, 1);
            continue;
        }
        if (j->p >= j->end)
            goto bad;
        ch = *j->p++;
        const char *plain = strchr("\"\\/bfnrt", ch);
        if (ch && plain) {
            sb_add(&b, &"\"\\/\b\f\n\r\t"[plain - "\"\\/bfnrt"], 1);
        } else if (ch == 'u') {
            long cp = jp_hex4(j);
            if (cp < 0)
                goto bad;
            if (cp >= 0xD800 && cp < 0xDC00 && j->end - j->p >= 6 && j->p[0] == '\\' &&
                j->p[1] == 'u') {
                j->p += 2;
                long low = jp_hex4(j);
                if (low < 0xDC00 || low >= 0xE000)
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            utf8_put(&b, (uint32_t)cp);
        } else {
            goto bad;
        }
    }
    if (!jp_eat(j, '"'))
        goto bad;
    sb_add(&b, "", 1);
    return b.p;
bad:
    free(b.p);
    j->bad = true;
    return NULL;
}

static double jp_number(struct jp *j)
{
    jp_ws(j);
    char text[64];
    size_t n = 0;
    while (j->p < j->end && n < sizeof text - 1 && strchr("+-0123456789.eE", *j->p) && *j->p)
        text[n++] = *j->p++;
    text[n] = '\0';
    char *e;
    double v = strtod(text, &e);
    if (n == 0 || *e)
        j->bad = true;
    return v;
}

/* Python's bool() of what json.loads gives: true/false/null, numbers, strings. */
static bool jp_bool(struct jp *j)
{
    if (jp_word(j, "true"))
        return true;
    if (jp_word(j, "false") || jp_word(j, "null"))
        return false;
    jp_ws(j);
    if (j->p < j->end && *j->p == '"') {
        char *s = jp_string(j);
        bool v = s && *s;
        free(s);
        return v;
    }
    return jp_number(j) != 0;
}

/* Any value, ignored (keys this program does not know). */
static void jp_skip(struct jp *j)
{
    jp_ws(j);
    if (j->p >= j->end) {
        j->bad = true;
    } else if (*j->p == '"') {
        free(jp_string(j));
    } else if (jp_eat(j, '[')) {
        if (jp_eat(j, ']'))
            return;
        do
            jp_skip(j);
        while (!j->bad && jp_eat(j, ','));
        if (!jp_eat(j, ']'))
            j->bad = true;
    } else if (jp_eat(j, '{')) {
        if (jp_eat(j, '}'))
            return;
        do {
            free(jp_string(j));
            if (!jp_eat(j, ':'))
                j->bad = true;
            else
                jp_skip(j);
        } while (!j->bad && jp_eat(j, ','));
        if (!jp_eat(j, '}'))
            j->bad = true;
    } else if (!jp_word(j, "true") && !jp_word(j, "false") && !jp_word(j, "null")) {
        jp_number(j);
    }
}

/* One client spec: [index, table_id, sampled]. */
static void jp_spec(struct jp *j, struct spec *s)
{
    if (!jp_eat(j, '['))
        goto bad;
    s->index = (long)jp_number(j);
    if (!jp_eat(j, ','))
        goto bad;
    jp_ws(j);
    if (j->p < j->end && *j->p == '"') {
        s->table_id = jp_string(j);
    } else { /* str() of a number, as Python would */
        char text[32];
        snprintf(text, sizeof text, "%.17g", jp_number(j));
        s->table_id = xstrdup(text);
    }
    if (!jp_eat(j, ','))
        goto bad;
    s->sampled = jp_bool(j);
    if (jp_eat(j, ',') && !(s->join = jp_string(j)))
        goto bad;
    if (!jp_eat(j, ']'))
        goto bad;
    return;
bad:
    j->bad = true;
}

static void jp_specs(struct jp *j, struct command *c)
{
    if (!jp_eat(j, '[')) {
        j->bad = true;
        return;
    }
    if (jp_eat(j, ']'))
        return;
    size_t cap = 0;
    do {
        if (c->nspecs == cap) {
            cap = cap ? cap * 2 : 64;
            c->specs = xrealloc(c->specs, cap * sizeof *c->specs);
        }
        struct spec *s = &c->specs[c->nspecs++];
        *s = (struct spec){0};
        jp_spec(j, s);
    } while (!j->bad && jp_eat(j, ','));
    if (!jp_eat(j, ']'))
        j->bad = true;
}

static void command_free(struct command *c)
{
    for (size_t i = 0; i < c->nspecs; i++) {
        free(c->specs[i].table_id);
        free(c->specs[i].join);
    }
    free(c->specs);
    free(c->cmd);
    free(c->host);
    *c = (struct command){0};
}

static void jp_field(struct jp *j, const char *key, struct command *c)
{
    if (!strcmp(key, "cmd")) {
        free(c->cmd);
        c->cmd = jp_string(j);
    } else if (!strcmp(key, "host")) {
        free(c->host);
        c->host = jp_string(j);
    } else if (!strcmp(key, "port")) {
        c->port = (long)jp_number(j);
    } else if (!strcmp(key, "ours")) {
        c->ours = jp_bool(j);
    } else if (!strcmp(key, "phoenix")) {
        c->phoenix = jp_bool(j);
    } else if (!strcmp(key, "sequential")) {
        c->sequential = jp_bool(j);
    } else if (!strcmp(key, "concurrency")) {
        c->concurrency = (long)jp_number(j);
    } else if (!strcmp(key, "timeout")) {
        c->timeout = jp_number(j);
    } else if (!strcmp(key, "clients")) {
        jp_specs(j, c);
    } else {
        jp_skip(j);
    }
}

/* Parse one command line; false (and nothing to free) if it is not one. */
static bool parse_command(const char *line, size_t n, struct command *c)
{
    struct jp j = {line, line + n, false};
    *c = (struct command){.concurrency = 50, .timeout = 30.0};
    if (!jp_eat(&j, '{'))
        goto bad;
    if (!jp_eat(&j, '}')) {
        do {
            char *key = jp_string(&j);
            if (key && jp_eat(&j, ':'))
                jp_field(&j, key, c);
            else
                j.bad = true;
            free(key);
        } while (!j.bad && jp_eat(&j, ','));
        if (j.bad || !jp_eat(&j, '}'))
            goto bad;
    }
    jp_ws(&j);
    if (j.p != j.end)
        goto bad;
    return true;
bad:
    command_free(c);
    return false;
}

/* ------------------------------------------------------------------------ */
/* Connections                                                               */

enum state { CONNECTING, HANDSHAKE, SUBSCRIBING, READY, CLOSED };

struct conn {
    int fd; /* -1 once closed */
    enum state state;
    bool ours, phoenix, sampled;
    uint32_t events; /* what epoll watches for it */
    long index;
    char *table_id;
    char *join; /* phoenix: the phx_join payload to send, or NULL */
    uint64_t received, frames;
    uint64_t catch_up;  /* changes before synced: not reported */
    char *tail;         /* an incomplete frame (or HTTP header) kept between reads */
    size_t tail_len, tail_cap;
    size_t want;        /* >0: a big frame of this size is read straight into tail */
    struct sbuf out;    /* output the socket did not take at once (rare) */
    double deadline;    /* monotonic; until connect settles */
    struct conn *prev, *next; /* the connect job's pending list, in start order */
};

/* The connect command being served (commands run one at a time). */
struct job {
    bool active;
    struct command cmd;
    size_t next, in_flight, ready, errors, concurrency;
    char *error[MAX_ERRORS];
    int gai_error; /* host did not resolve: every connection fails with it */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char addr_text[NI_MAXHOST];
    double started;
    struct conn *head, *last; /* connecting, earliest deadline first */
};

static struct {
    int ep;
    char *buf; /* READ_SIZE bytes shared by every read() */
    struct conn **clients; /* every connection that became ready */
    size_t nclients, clients_cap;
    double *lat; /* latency samples, ms */
    size_t nlat, lat_cap;
    struct job job;
    struct sbuf in; /* stdin bytes not yet run as commands */
    bool in_eof, in_polled;
} g;

static void watch(struct conn *c, uint32_t events)
{
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->events = events;
}

/* Write to the socket, queueing what it does not take. A write error is
 * ignored: the peer is gone, and the read side reports it. */
static void conn_send(struct conn *c, const void *data, size_t n)
{
    if (c->fd < 0)
        return;
    if (c->out.len == 0) {
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return;
        if (w > 0) {
            data = (const char *)data + w;
            n -= (size_t)w;
        }
        if (n == 0)
            return;
    }
    sb_add(&c->out, data, n);
    watch(c, EPOLLIN | EPOLLOUT);
}

static void conn_flush(struct conn *c)
{
    ssize_t w = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (w < 0)
        c->out.len = 0; /* peer gone: drop it, the read side reports it */
    else {
        memmove(c->out.p, c->out.p + w, c->out.len - (size_t)w);
        c->out.len -= (size_t)w;
    }
    if (c->out.len == 0)
        watch(c, EPOLLIN);
}

/* A final, masked frame (RFC 6455 requires clients to mask). */
static void send_frame(struct conn *c, int opcode, const char *payload, size_t n)
{
    unsigned char stack[512], *f = stack;
    size_t head = n < 126 ? 2 : n < 65536 ? 4 : 10;
    size_t total = head + 4 + n;
    if (total > sizeof stack)
        f = xrealloc(NULL, total);
    f[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        f[1] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        f[1] = 0x80 | 126;
        f[2] = (unsigned char)(n >> 8);
        f[3] = (unsigned char)n;
    } else {
        f[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            f[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    }
    uint32_t key = (uint32_t)rng_next();
    unsigned char *mask = f + head;
    memcpy(mask, &key, 4);
    for (size_t i = 0; i < n; i++)
        f[head + 4 + i] = (unsigned char)payload[i] ^ mask[i & 3];
    conn_send(c, f, total);
    if (f != stack)
        free(f);
}

static void conn_free(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    free(c->table_id);
    free(c->join);
    free(c->tail);
    free(c->out.p);
    free(c);
}

static void pending_unlink(struct conn *c)
{
    struct job *j = &g.job;
    if (c->prev)
        c->prev->next = c->next;
    else
        j->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        j->last = c->prev;
    c->prev = c->next = NULL;
    j->in_flight--;
}

/* A connection that never became ready: one error of the connect answer. */
static void conn_fail(struct conn *c, const char *fmt, ...)
{
    struct job *j = &g.job;
    if (j->errors < MAX_ERRORS) {
        struct sbuf b = {0};
        va_list ap;
        va_start(ap, fmt);
        sb_vprintf(&b, fmt, ap);
        va_end(ap);
        sb_add(&b, "", 1);
        j->error[j->errors] = b.p;
    }
    j->errors++;
    pending_unlink(c);
    conn_free(c);
}

/* The server closed it or the socket failed: before ready that is an error
 * (worded as Python's connection_lost), after ready the connection stays in
 * the report, marked closed. */
static void conn_lost(struct conn *c, int err)
{
    if (c->state != READY) {
        if (err)
            conn_fail(c, "ConnectionError: connection lost: [Errno %d] %s", err, strerror(err));
        else
            conn_fail(c, "ConnectionError: connection lost: None");
        return;
    }
    close(c->fd);
    c->fd = -1;
    c->state = CLOSED;
    free(c->tail);
    free(c->out.p);
    c->tail = NULL;
    c->out = (struct sbuf){0};
    c->tail_len = c->tail_cap = c->want = 0;
}

static void conn_ready(struct conn *c)
{
    c->state = READY;
    pending_unlink(c);
    g.job.ready++;
    if (g.nclients == g.clients_cap) {
        g.clients_cap = g.clients_cap ? g.clients_cap * 2 : 1024;
        g.clients = xrealloc(g.clients, g.clients_cap * sizeof *g.clients);
    }
    g.clients[g.nclients++] = c;
}

/* ------------------------------------------------------------------------ */
/* Frames                                                                    */

static uint64_t count(const char *p, size_t n, const char *needle, size_t len)
{
    uint64_t found = 0;
    const char *end = p + n, *hit;
    while ((hit = memmem(p, (size_t)(end - p), needle, len))) {
        found++;
        p = hit + len;
    }
    return found;
}

static void add_sample(double ms)
{
    if (g.nlat == g.lat_cap) {
        g.lat_cap = g.lat_cap ? g.lat_cap * 2 : 4096;
        g.lat = xrealloc(g.lat, g.lat_cap * sizeof *g.lat);
    }
    g.lat[g.nlat++] = ms;
}

/*
 * The newest number after a "t": in one change's text, into *newest: its
 * commit stamp (row.data.t). An UPDATE or DELETE may also carry the whole old
 * row, whose stamp is an earlier write's, older than the change's own.
 */
static bool newest_stamp(const char *p, size_t n, double *newest)
{
    const char *end = p + n, *hit;
    bool found = false;
    while ((hit = memmem(p, (size_t)(end - p), STAMP, sizeof STAMP - 1))) {
        p = hit + sizeof STAMP - 1;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        /* strtod needs a terminated string; the payload is not one */
        char text[48];
        size_t len = (size_t)(end - p) < sizeof text - 1 ? (size_t)(end - p) : sizeof text - 1;
        memcpy(text, p, len);
        text[len] = '\0';
        char *e;
        double t = strtod(text, &e);
        if (e != text && (!found || t > *newest)) { /* null, or not a number: no stamp */
            *newest = t;
            found = true;
        }
    }
    return found;
}

/*
 * One latency sample per change in a frame: each change starts at `marker`,
 * the text the frame's changes are counted by (NULL: the frame is one change).
 */
static void sample(const char *p, size_t n, const char *marker, size_t len, double now)
{
    const char *end = p + n;
    if (marker) {
        p = memmem(p, n, marker, len);
        if (!p)
            return;
    }
    while (p < end) {
        const char *next = marker ? memmem(p + len, (size_t)(end - p) - len, marker, len) : NULL;
        const char *stop = next ? next : end;
        double t;
        if (newest_stamp(p, (size_t)(stop - p), &t))
            add_sample(now - t);
        p = stop;
    }
}

/* A text or continuation frame; false if it failed the connection (freed). */
static bool on_data(struct conn *c, const char *p, size_t n, double now)
{
    if (c->state == READY) {
        /* Each change message is one event: a frame of ours may hold several. */
        const char *marker = c->phoenix ? PHX_CHANGE : c->ours ? CHANGE : NULL;
        size_t len = c->phoenix ? sizeof PHX_CHANGE - 1 : sizeof CHANGE - 1;
        c->frames++;
        c->received += marker ? count(p, n, marker, len) : 1;
        if (c->sampled)
            sample(p, n, marker, len, now);
    } else if (c->phoenix) {
        if (memmem(p, n, PHX_SUBSCRIBED, sizeof PHX_SUBSCRIBED - 1))
            conn_ready(c);
        else if (memmem(p, n, PHX_ERROR, sizeof PHX_ERROR - 1)) {
            conn_fail(c, "refused: %.*s", (int)(n < 300 ? n : 300), p);
            return false;
        }
    } else if (c->ours) {
        c->catch_up += count(p, n, CHANGE, sizeof CHANGE - 1);
        if (memmem(p, n, SYNCED, sizeof SYNCED - 1))
            conn_ready(c);
    } else if (memmem(p, n, SUBSCRIBED, sizeof SUBSCRIBED - 1)) {
        conn_ready(c);
    }
    return true;
}

/* Parse a frame header: 0 if incomplete, else its size and payload length. */
static int frame_header(const unsigned char *h, size_t avail, size_t *head, uint64_t *len)
{
    if (avail < 2)
        return 0;
    *len = h[1] & 0x7F;
    *head = 2;
    if (*len == 126) {
        if (avail < 4)
            return 0;
        *len = (uint64_t)h[2] << 8 | h[3];
        *head = 4;
    } else if (*len == 127) {
        if (avail < 10)
            return 0;
        *len = 0;
        for (int i = 0; i < 8; i++)
            *len = *len << 8 | h[2 + i];
        *head = 10;
    }
    if (h[1] & 0x80) /* servers never mask, but keep the framing right if one did */
        *head += 4;
    return avail >= *head;
}

/* The HTTP response: returns where the frames start, 0 if the header is still
 * incomplete, -1 if the connection failed. */
static ssize_t upgrade(struct conn *c, const char *buf, size_t size)
{
    const char *end = memmem(buf, size, "\r\n\r\n", 4);
    if (!end) {
        if (size <= MAX_HEADER)
            return 0;
        conn_fail(c, "ConnectionError: response header too large");
        return -1;
    }
    const char *eol = memmem(buf, size, "\r\n", 2);
    size_t len = (size_t)(eol - buf);
    /* ' 101 ' anywhere in the status line, or ' 101' at its end */
    bool ok = memmem(buf, len, " 101 ", 5) || (len >= 4 && !memcmp(eol - 4, " 101", 4));
    if (!ok) {
        conn_fail(c, "ConnectionError: %.*s", (int)(len < 200 ? len : 200), buf);
        return -1;
    }
    c->state = SUBSCRIBING;
    if (c->phoenix) {
        struct sbuf m = {0}, topic = {0}, filter = {0};
        /* sb_printf leaves them NUL-terminated, for sb_json_string */
        sb_printf(&topic, "realtime:%s", c->table_id);
        sb_printf(&filter, "table_id=eq.%s", c->table_id);
        sb_puts(&m, "[\"1\",\"1\",");
        sb_json_string(&m, topic.p);
        if (c->join) {
            sb_puts(&m, ",\"phx_join\",");
            sb_puts(&m, c->join);
            sb_puts(&m, "]");
        } else {
            sb_puts(&m, ",\"phx_join\",{\"config\":{\"postgres_changes\":[{\"event\":"
                        "\"*\",\"schema\":\"public\",\"table\":\"rows\",\"filter\":");
            sb_json_string(&m, filter.p);
            sb_puts(&m, "}]}}]");
        }
        send_frame(c, 0x1, m.p, m.len);
        free(m.p);
        free(topic.p);
        free(filter.p);
    } else if (c->ours) {
        struct sbuf m = {0};
        sb_puts(&m, "{\"type\": \"subscribe\", \"table_id\": ");
        sb_json_string(&m, c->table_id);
        sb_puts(&m, "}");
        send_frame(c, 0x1, m.p, m.len);
        free(m.p);
    }
    return end - buf + 4;
}

/* Handle every complete frame in buf; returns the bytes used, or -1 if the
 * connection was closed or freed meanwhile. */
static ssize_t consume(struct conn *c, const char *buf, size_t size, double now)
{
    size_t start = 0;
    if (c->state == HANDSHAKE) {
        ssize_t body = upgrade(c, buf, size);
        if (body <= 0)
            return body;
        start = (size_t)body;
    }
    size_t head;
    uint64_t len;
    while (frame_header((const unsigned char *)buf + start, size - start, &head, &len)) {
        if (len > MAX_FRAME) {
            conn_lost(c, EMSGSIZE);
            return -1;
        }
        if (size - start - head < len)
            break;
        const char *payload = buf + start + head;
        switch (buf[start] & 0x0F) {
        case 0x0: /* continuation */
        case 0x1: /* text */
            if (!on_data(c, payload, (size_t)len, now))
                return -1;
            break;
        case 0x9: /* ping */
            send_frame(c, 0xA, payload, (size_t)len);
            break;
        case 0x8: /* close */
            conn_lost(c, 0);
            return -1;
        default:
            break;
        }
        start += head + (size_t)len;
    }
    return (ssize_t)start;
}

/* Keep the unparsed end of a read for the next one. A big incomplete frame is
 * then read straight into the tail (want), so it is never copied again. */
static void keep_tail(struct conn *c, const char *p, size_t n)
{
    size_t need = n;
    c->want = 0;
    if (n && c->state != HANDSHAKE) {
        size_t head;
        uint64_t len;
        if (frame_header((const unsigned char *)p, n, &head, &len) && head + len > BIG_FRAME)
            need = c->want = head + (size_t)len;
    }
    if (need > c->tail_cap) {
        c->tail_cap = need < 512 ? 512 : need;
        c->tail = xrealloc(c->tail, c->tail_cap);
    } else if (n == 0 && c->tail_cap > BIG_FRAME) {
        free(c->tail); /* don't hold a big frame's buffer */
        c->tail = NULL;
        c->tail_cap = 0;
    }
    if (n)
        memmove(c->tail, p, n);
    c->tail_len = n;
}

/* One read(), one parse. Level-triggered epoll brings us back if more is
 * waiting, which keeps every connection served in turn. */
static void conn_read(struct conn *c)
{
    char *buf;
    size_t room;
    if (c->want) {
        buf = c->tail;
        room = c->want - c->tail_len;
    } else {
        buf = g.buf;
        if (c->tail_len)
            memcpy(buf, c->tail, c->tail_len);
        room = READ_SIZE - c->tail_len;
    }
    ssize_t n = read(c->fd, buf + c->tail_len, room);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        conn_lost(c, n == 0 ? 0 : errno);
        return;
    }
    if (n < 0)
        return;
    double now = c->sampled ? wall_ms() : 0.0; /* when the bytes arrived */
    size_t size = c->tail_len + (size_t)n;
    if (c->want && size < c->want) {
        c->tail_len = size;
        return;
    }
    ssize_t used = consume(c, buf, size, now);
    if (used >= 0)
        keep_tail(c, buf + used, size - (size_t)used);
}

/* ------------------------------------------------------------------------ */
/* The connect command                                                       */

static const char *connect_error_name(int err)
{
    switch (err) {
    case ECONNREFUSED:
        return "ConnectionRefusedError";
    case ECONNRESET:
        return "ConnectionResetError";
    case ECONNABORTED:
        return "ConnectionAbortedError";
    case ETIMEDOUT:
        return "TimeoutError";
    default:
        return "OSError";
    }
}

/* Worded as asyncio's create_connection. */
static void connect_failed(struct conn *c, int err)
{
    struct job *j = &g.job;
    conn_fail(c, "%s: [Errno %d] Connect call failed ('%s', %ld)", connect_error_name(err), err,
              j->addr_text, j->cmd.port);
}

/* TCP is up: send the upgrade request. */
static void connected(struct conn *c)
{
    struct job *j = &g.job;
    unsigned char nonce[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rng_next();
        memcpy(nonce + i, &r, 8);
    }
    char key[25];
    base64_16(nonce, key);
    struct sbuf req = {0};
    if (c->phoenix)
        sb_printf(&req, "GET /realtime/v1/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: %s:%ld\r\n",
                  j->cmd.host, j->cmd.port);
    else
        sb_printf(&req, "GET /ws%s%s HTTP/1.1\r\nHost: %s:%ld\r\n", c->ours ? "" : "?table_id=",
                  c->ours ? "" : c->table_id, j->cmd.host, j->cmd.port);
    sb_printf(&req,
              "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n",
              key);
    c->state = HANDSHAKE;
    watch(c, EPOLLIN);
    conn_send(c, req.p, req.len);
    free(req.p);
}

static void finish_connect(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        connect_failed(c, err);
    else
        connected(c);
}

static void conn_start(const struct spec *s)
{
    struct job *j = &g.job;
    struct conn *c = xrealloc(NULL, sizeof *c);
    *c = (struct conn){
        .fd = -1,
        .state = CONNECTING,
        .ours = j->cmd.ours,
        .phoenix = j->cmd.phoenix,
        .sampled = s->sampled,
        .index = s->index,
        .table_id = xstrdup(s->table_id),
        .join = s->join ? xstrdup(s->join) : NULL,
        .deadline = mono_seconds() + j->cmd.timeout,
        .prev = j->last,
    };
    if (j->last)
        j->last->next = c;
    else
        j->head = c;
    j->last = c;
    j->in_flight++;

    if (j->gai_error) {
        conn_fail(c, "gaierror: [Errno %d] %s", j->gai_error, gai_strerror(j->gai_error));
        return;
    }
    c->fd = socket(j->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_fail(c, "OSError: [Errno %d] %s", errno, strerror(errno));
        return;
    }
    int rc = connect(c->fd, (const struct sockaddr *)&j->addr, j->addrlen);
    if (rc < 0 && errno != EINPROGRESS) {
        connect_failed(c, errno);
        return;
    }
    c->events = rc == 0 ? EPOLLIN : EPOLLOUT;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        conn_fail(c, "OSError: [Errno %d] %s", errno, strerror(errno));
        return;
    }
    if (rc == 0)
        connected(c);
}

static void job_begin(struct command *cmd)
{
    struct job *j = &g.job;
    *j = (struct job){.active = true, .cmd = *cmd, .started = mono_seconds()};
    *cmd = (struct command){0}; /* the job owns it now */
    j->concurrency = 1;
    if (!j->cmd.sequential && j->cmd.concurrency > 1)
        j->concurrency = (size_t)j->cmd.concurrency;
    if (!j->cmd.host)
        j->cmd.host = xstrdup("");

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    char port[16];
    snprintf(port, sizeof port, "%ld", j->cmd.port);
    j->gai_error = getaddrinfo(j->cmd.host, port, &hints, &res);
    if (!j->gai_error) {
        memcpy(&j->addr, res->ai_addr, res->ai_addrlen);
        j->addrlen = res->ai_addrlen;
        if (getnameinfo(res->ai_addr, res->ai_addrlen, j->addr_text, sizeof j->addr_text, NULL, 0,
                        NI_NUMERICHOST))
            snprintf(j->addr_text, sizeof j->addr_text, "%s", j->cmd.host);
        freeaddrinfo(res);
    }
}

static void write_answer(struct sbuf *b)
{
    sb_add(b, "\n", 1);
    for (size_t off = 0; off < b->len;) {
        ssize_t w = write(STDOUT_FILENO, b->p + off, b->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("write stdout"); /* run.py is gone */
        off += (size_t)w;
    }
    free(b->p);
}

static void job_finish(void)
{
    struct job *j = &g.job;
    struct sbuf b = {0};
    sb_printf(&b, "{\"ready\": %zu, \"errors\": [", j->ready);
    for (size_t i = 0; i < j->errors && i < MAX_ERRORS; i++) {
        if (i)
            sb_puts(&b, ", ");
        sb_json_string(&b, j->error[i]);
        free(j->error[i]);
    }
    sb_printf(&b, "], \"error_count\": %zu, \"seconds\": %.6f}", j->errors,
              mono_seconds() - j->started);
    write_answer(&b);
    command_free(&j->cmd);
    *j = (struct job){0};
}

/* After each round of events: time out, start more, answer when all settled. */
static void job_pump(void)
{
    struct job *j = &g.job;
    double now = mono_seconds();
    while (j->head && j->head->deadline <= now) /* same timeout for all: in order */
        conn_fail(j->head, "TimeoutError: ");
    while (j->in_flight < j->concurrency && j->next < j->cmd.nspecs)
        conn_start(&j->cmd.specs[j->next++]);
    if (j->in_flight == 0 && j->next == j->cmd.nspecs)
        job_finish();
}

/* epoll_wait's timeout: until the oldest pending connection times out. */
static int job_wait_ms(void)
{
    if (!g.job.active || !g.job.head)
        return -1;
    double ms = (g.job.head->deadline - mono_seconds()) * 1e3;
    return ms <= 0 ? 0 : ms > 1e9 ? 1000000000 : (int)ms + 1;
}

/* ------------------------------------------------------------------------ */
/* The other commands                                                        */

static void answer_ok(void)
{
    struct sbuf b = {0};
    sb_puts(&b, "{\"ok\": true}");
    write_answer(&b);
}

static void cmd_reset(void)
{
    for (size_t i = 0; i < g.nclients; i++)
        g.clients[i]->received = g.clients[i]->frames = 0;
    g.nlat = 0;
    answer_ok();
}

static void cmd_total(void)
{
    uint64_t received = 0, frames = 0;
    for (size_t i = 0; i < g.nclients; i++) {
        received += g.clients[i]->received;
        frames += g.clients[i]->frames;
    }
    struct sbuf b = {0};
    sb_printf(&b, "{\"received\": %" PRIu64 ", \"frames\": %" PRIu64 "}", received, frames);
    write_answer(&b);
}

static void cmd_report(void)
{
    struct sbuf b = {0};
    sb_reserve(&b, 32 * g.nclients + 12 * g.nlat + 64);
    sb_puts(&b, "{\"clients\": [");
    for (size_t i = 0; i < g.nclients; i++) {
        struct conn *c = g.clients[i];
        sb_printf(&b, "%s[%ld, %" PRIu64 ", %" PRIu64 ", %s]", i ? ", " : "", c->index,
                  c->received, c->frames, c->state == CLOSED ? "true" : "false");
    }
    sb_puts(&b, "], \"latencies\": [");
    for (size_t i = 0; i < g.nlat; i++)
        sb_printf(&b, "%s%.3f", i ? ", " : "", g.lat[i]);
    sb_puts(&b, "]}");
    write_answer(&b);
}

/* Close frame (1000) to every open connection, close them all, forget them;
 * then give the servers the same 50 ms the Python version does. */
static void close_all(void)
{
    static const char normal[2] = {1000 >> 8, (char)(1000 & 0xFF)};
    for (size_t i = 0; i < g.nclients; i++) {
        struct conn *c = g.clients[i];
        if (c->fd >= 0)
            send_frame(c, 0x8, normal, sizeof normal);
        conn_free(c);
    }
    g.nclients = 0;
    g.nlat = 0;
    nanosleep(&(struct timespec){.tv_nsec = 50 * 1000 * 1000}, NULL);
}

static void run_line(const char *line, size_t n)
{
    struct command cmd;
    struct sbuf b = {0};
    if (!parse_command(line, n, &cmd)) {
        sb_puts(&b, "{\"error\": \"bad command line\"}");
        write_answer(&b);
        return;
    }
    const char *name = cmd.cmd ? cmd.cmd : "";
    if (!strcmp(name, "connect")) {
        job_begin(&cmd);
        job_pump(); /* answers at once if there are no clients */
    } else if (!strcmp(name, "reset")) {
        cmd_reset();
    } else if (!strcmp(name, "total")) {
        cmd_total();
    } else if (!strcmp(name, "report")) {
        cmd_report();
    } else if (!strcmp(name, "close")) {
        close_all();
        answer_ok();
    } else if (!strcmp(name, "exit")) {
        close_all();
        exit(0);
    } else {
        struct sbuf msg = {0};
        sb_printf(&msg, "unknown command '%s'", name);
        sb_add(&msg, "", 1);
        sb_puts(&b, "{\"error\": ");
        sb_json_string(&b, msg.p);
        sb_puts(&b, "}");
        free(msg.p);
        write_answer(&b);
    }
    command_free(&cmd);
}

/* Run the complete lines read so far, unless a connect is still settling. */
static void run_lines(void)
{
    size_t off = 0;
    while (!g.job.active && off < g.in.len) {
        char *start = g.in.p + off;
        char *nl = memchr(start, '\n', g.in.len - off);
        if (!nl && !g.in_eof)
            break;
        size_t len = nl ? (size_t)(nl - start) : g.in.len - off; /* last line may lack \n */
        off += len + (nl != NULL);
        struct jp blank = {start, start + len, false};
        jp_ws(&blank);
        if (blank.p != blank.end)
            run_line(start, len);
    }
    if (off) {
        memmove(g.in.p, g.in.p + off, g.in.len - off);
        g.in.len -= off;
    }
}

static void read_stdin(void)
{
    sb_reserve(&g.in, 64 * 1024);
    ssize_t n = read(STDIN_FILENO, g.in.p + g.in.len, g.in.cap - g.in.len);
    if (n > 0) {
        g.in.len += (size_t)n;
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        g.in_eof = true;
        if (g.in_polled)
            epoll_ctl(g.ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
    }
}

static void conn_event(struct conn *c, uint32_t events)
{
    if (c->state == CONNECTING) {
        finish_connect(c);
        return;
    }
    if ((events & EPOLLOUT) && c->out.len)
        conn_flush(c);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        conn_read(c);
}

static void setup(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max; /* thousands of sockets per process */
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state)
        rng_state = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    g.buf = xrealloc(NULL, READ_SIZE);
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0)
        die("epoll_create1");
    /* stdin stays blocking (it may share its file with stdout); level-triggered
     * epoll only reads it when a read won't block. A regular file can't be
     * polled: it is then read directly whenever more commands are wanted. */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    g.in_polled = epoll_ctl(g.ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) == 0;
    if (!g.in_polled && errno != EPERM)
        die("epoll_ctl stdin");
}

int main(void)
{
    setup();
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        run_lines();
        if (g.in_eof && !g.job.active && g.in.len == 0)
            break;
        if (!g.in_polled && !g.in_eof && !g.job.active) {
            read_stdin();
            continue;
        }
        int n = epoll_wait(g.ep, events, MAX_EVENTS, job_wait_ms());
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        /* Commands run only after the batch, so no connection is freed while
         * an event for it may still be pending in this batch. */
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr)
                conn_event(events[i].data.ptr, events[i].events);
            else
                read_stdin();
        }
        if (g.job.active)
            job_pump();
    }
    close_all();
    return 0;
}
