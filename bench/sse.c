/* Stream parsing and latency histogram for the load client; see sse.h. */
#define _GNU_SOURCE
#include "sse.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { C_SIZE, C_EXT, C_DATA, C_DATA_END, C_DONE };

void hist_record(latency_hist_t *h, double seconds) {
    uint64_t us = seconds <= 0 ? 0 : (uint64_t)(seconds * 1e6);
    size_t b;
    if (us < 100000)
        b = us / 10;
    else if (us < 60000000)
        b = HIST_FINE + (us - 100000) / 1000;
    else
        b = HIST_BUCKETS - 1;
    h->buckets[b]++;
    if (us > h->max_us)
        h->max_us = us;
}

void hist_json(FILE *f, const latency_hist_t *h) {
    int first = 1;
    fputc('[', f);
    for (int b = 0; b < HIST_BUCKETS; b++) {
        if (!h->buckets[b])
            continue;
        uint64_t lo, hi;
        if (b < HIST_FINE) {
            lo = (uint64_t)b * 10;
            hi = lo + 10;
        } else if (b < HIST_BUCKETS - 1) {
            lo = 100000 + (uint64_t)(b - HIST_FINE) * 1000;
            hi = lo + 1000;
        } else {
            lo = 60000000;
            hi = h->max_us + 1;
        }
        fprintf(f, "%s[%lu,%lu,%u]", first ? "" : ",", (unsigned long)lo, (unsigned long)hi,
                h->buckets[b]);
        first = 0;
    }
    fputc(']', f);
}

/* One complete SSE line; returns 1 when it was a delivery. */
static int sse_line(sse_parser_t *p, double now, latency_hist_t *hist, sse_counts_t *counts) {
    char *line = p->line;
    size_t n = p->line_len;
    if (n && line[n - 1] == '\r')
        n--;
    if (n >= 6 && memcmp(line, "data: ", 6) == 0) {
        static const char key[] = "\"reason\":\"t=";
        char *at = memmem(line, n, key, sizeof key - 1);
        if (at) {
            line[n] = 0;
            hist_record(hist, now - strtod(at + sizeof key - 1, NULL));
            return 1;
        }
    } else if (n == 19 && memcmp(line, "event: server_close", 19) == 0) {
        counts->server_closes++;
    }
    return 0;
}

static int sse_bytes(sse_parser_t *p, const char *buf, size_t n, double now,
                     latency_hist_t *hist, sse_counts_t *counts) {
    int events = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = buf[i];
        if (ch == '\n') {
            events += sse_line(p, now, hist, counts);
            p->line_len = 0;
        } else if (p->line_len < SSE_LINE_MAX - 1) {
            p->line[p->line_len++] = ch;
        }
    }
    return events;
}

/* One header line (without its LF); returns 1 when the headers are complete. */
static int header_line(sse_parser_t *p) {
    char *line = p->line;
    size_t n = p->line_len;
    if (n && line[n - 1] == '\r')
        n--;
    line[n] = 0;
    if (p->header_lines++ == 0) {
        p->status = (n >= 12) ? atoi(line + 9) : -1; /* "HTTP/1.1 200 OK" */
        return 0;
    }
    if (n == 0)
        return 1;
    if (strncasecmp(line, "transfer-encoding:", 18) == 0 && strcasestr(line, "chunked"))
        p->chunked = 1;
    return 0;
}

int sse_feed(sse_parser_t *p, const char *buf, size_t n, double now, latency_hist_t *hist,
             sse_counts_t *counts) {
    size_t i = 0;
    while (!p->in_body && i < n) {
        char ch = buf[i++];
        if (ch != '\n') {
            if (p->line_len < SSE_LINE_MAX - 1)
                p->line[p->line_len++] = ch;
            continue;
        }
        int done = header_line(p);
        p->line_len = 0;
        if (done) {
            if (p->status != 200) {
                p->ended = 1;
                return 0;
            }
            p->in_body = 1;
            p->chunk_state = C_SIZE;
            p->chunk_left = 0;
        }
    }
    if (!p->chunked)
        return sse_bytes(p, buf + i, n - i, now, hist, counts);
    int events = 0;
    while (i < n) {
        char ch = buf[i];
        switch (p->chunk_state) {
        case C_SIZE:
            i++;
            if (ch >= '0' && ch <= '9')
                p->chunk_left = p->chunk_left * 16 + (uint32_t)(ch - '0');
            else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
                p->chunk_left = p->chunk_left * 16 + (uint32_t)((ch | 0x20) - 'a' + 10);
            else if (ch == ';')
                p->chunk_state = C_EXT;
            else if (ch == '\n') {
                p->chunk_state = p->chunk_left ? C_DATA : C_DONE;
                counts->chunks++;
            }
            break;
        case C_EXT:
            i++;
            if (ch == '\n') {
                p->chunk_state = p->chunk_left ? C_DATA : C_DONE;
                counts->chunks++;
            }
            break;
        case C_DATA: {
            size_t take = n - i < p->chunk_left ? n - i : p->chunk_left;
            events += sse_bytes(p, buf + i, take, now, hist, counts);
            i += take;
            p->chunk_left -= (uint32_t)take;
            if (!p->chunk_left)
                p->chunk_state = C_DATA_END;
            break;
        }
        case C_DATA_END:
            i++;
            if (ch == '\n') {
                p->chunk_state = C_SIZE;
                p->chunk_left = 0;
            }
            break;
        default: /* C_DONE: nothing may follow the last chunk */
            i = n;
            break;
        }
    }
    p->ended = p->chunk_state == C_DONE;
    return events;
}
