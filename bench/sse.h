/*
 * The load client's stream parsing and latency bookkeeping (see loadclient.c).
 *
 * A response is read as HTTP/1.1 headers, then a chunked (or plain) body of SSE lines. Each
 * "data: " line carrying "\"reason\":\"t=<unix seconds>" is one delivery; its latency is
 * now - t on CLOCK_REALTIME, the clock the publisher stamped it with.
 */
#ifndef KEV_BENCH_SSE_H
#define KEV_BENCH_SSE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SSE_LINE_MAX 384
#define HIST_FINE 10000    /* 10 us buckets, up to 100 ms */
#define HIST_COARSE 59900  /* 1 ms buckets, 100 ms .. 60 s */
#define HIST_BUCKETS (HIST_FINE + HIST_COARSE + 1)

typedef struct {
    uint32_t buckets[HIST_BUCKETS];
    uint64_t max_us;
} latency_hist_t;

typedef struct {
    uint64_t chunks;        /* HTTP chunks read: one per write by the server */
    uint64_t server_closes; /* "event: server_close" lines */
} sse_counts_t;

typedef struct {
    int status; /* HTTP status once the status line is in, else 0 */
    uint32_t chunk_left;
    uint16_t line_len;
    uint8_t in_body, chunked, chunk_state, header_lines, ended;
    char line[SSE_LINE_MAX];
} sse_parser_t;

/* Feed bytes read from the socket. Returns the deliveries found in them (their latencies go
 * to hist); sets p->ended when the stream is over: the body ended, or the status was not
 * 200. */
int sse_feed(sse_parser_t *p, const char *buf, size_t n, double now, latency_hist_t *hist,
             sse_counts_t *counts);

void hist_record(latency_hist_t *h, double seconds);
/* The non-empty buckets as JSON: [[lo_us, hi_us, count], ...]. */
void hist_json(FILE *f, const latency_hist_t *h);

#endif
