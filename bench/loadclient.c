/*
 * SSE load client for the fan-out bench: N real connections on one epoll loop.
 *
 *   loadclient REQUESTS OUT.json [--max-seconds S] [--inflight K] [--stall-rcvbuf B]
 *
 * REQUESTS: "<count>\n", then per connection "<port> <stall 0|1> <length>\n<raw request>".
 * The requests are signed by the Python driver; this program only sends them and reads the
 * responses (parsing: sse.c, built together with this file).
 *
 * Commands on stdin, one per line (answers on stdout, one line each):
 *   stat   -> "stat <events since reset> <streaming> <ended>"
 *   reset  -> zero counters, histograms and the CPU baseline -> "reset"
 *   stall  -> connections marked stall stop reading -> "stalled <n>"
 *   dump   -> write OUT.json -> "dumped"
 *   quit   -> dump and exit
 * After connecting it prints "ready <ok> <failed>". SIGTERM, SIGINT, end of stdin or
 * --max-seconds: dump and exit (every run is bounded).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sse.h"

#define STDIN_TAG UINT64_MAX

enum { S_IDLE, S_CONNECTING, S_HEADERS, S_STREAM, S_ENDED, S_FAILED };

typedef struct {
    char *req;
    uint32_t req_len, req_off;
    uint64_t events; /* since the last reset */
    int fd, status;
    uint16_t port;
    uint8_t state, stall, stalled;
    sse_parser_t parser;
} conn_t;

static conn_t *conns;
static int nconns, epfd;
static volatile sig_atomic_t stop_flag;
static latency_hist_t hist[2]; /* [0] healthy connections, [1] those marked stall */
static sse_counts_t counts;
static uint64_t events_group[2], bytes_read;
static double reset_time, stall_time, *stall_closed;
static int nstall_closed, nstalled;
static struct rusage reset_usage;
static char *out_path;
static char readbuf[1 << 16];

static double now_real(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void end_conn(conn_t *c, int state) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->stalled && stall_closed)
        stall_closed[nstall_closed++] = now_mono() - stall_time;
    c->state = (uint8_t)state;
}

static int start_conn(conn_t *c, int rcvbuf) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(c->port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->status = -errno;
        c->state = S_FAILED;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c->stall && rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        c->status = -errno;
        end_conn(c, S_FAILED);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->state = S_CONNECTING;
    return 0;
}

static void dump(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user = (double)(ru.ru_utime.tv_sec - reset_usage.ru_utime.tv_sec) +
                  (double)(ru.ru_utime.tv_usec - reset_usage.ru_utime.tv_usec) * 1e-6;
    double sys = (double)(ru.ru_stime.tv_sec - reset_usage.ru_stime.tv_sec) +
                 (double)(ru.ru_stime.tv_usec - reset_usage.ru_stime.tv_usec) * 1e-6;
    int ok = 0, failed = 0, streaming = 0, ended = 0;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->state == S_FAILED)
            failed++;
        else if (c->state == S_STREAM || c->state == S_ENDED)
            ok++;
        streaming += c->state == S_STREAM;
        ended += c->state == S_ENDED;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        perror("loadclient: dump");
        return;
    }
    fprintf(f, "{\"connections\":%d,\"connected\":%d,\"failed\":%d,\"streaming\":%d,", nconns, ok,
            failed, streaming);
    fprintf(f, "\"ended\":%d,\"window_s\":%.6f,\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f,", ended,
            now_mono() - reset_time, user, sys);
    fprintf(f, "\"events_healthy\":%lu,\"events_stalled\":%lu,\"bytes\":%lu,",
            (unsigned long)events_group[0], (unsigned long)events_group[1],
            (unsigned long)bytes_read);
    fprintf(f, "\"server_close\":%lu,\"stalled\":%d,\"max_rss_kb\":%ld,\"chunks\":%lu,",
            (unsigned long)counts.server_closes, nstalled, ru.ru_maxrss,
            (unsigned long)counts.chunks);
    fprintf(f, "\"lat_max_us\":[%lu,%lu],\"hist_healthy\":", (unsigned long)hist[0].max_us,
            (unsigned long)hist[1].max_us);
    hist_json(f, &hist[0]);
    fputs(",\"hist_stalled\":", f);
    hist_json(f, &hist[1]);
    fputs(",\"stall_closed_s\":[", f);
    for (int i = 0; i < nstall_closed; i++)
        fprintf(f, "%s%.4f", i ? "," : "", stall_closed[i]);
    fputs("],\"status\":[", f);
    for (int i = 0; i < nconns; i++)
        fprintf(f, "%s%d", i ? "," : "", conns[i].status);
    fputs("],\"counts\":[", f);
    for (int i = 0; i < nconns; i++)
        fprintf(f, "%s%lu", i ? "," : "", (unsigned long)conns[i].events);
    fputs("],\"stall\":[", f);
    for (int i = 0; i < nconns; i++)
        fprintf(f, "%s%d", i ? "," : "", conns[i].stall);
    fputs("]}\n", f);
    fclose(f);
    rename(tmp, out_path);
}

static void reset(void) {
    memset(hist, 0, sizeof hist);
    memset(&counts, 0, sizeof counts);
    memset(events_group, 0, sizeof events_group);
    bytes_read = 0;
    for (int i = 0; i < nconns; i++)
        conns[i].events = 0;
    getrusage(RUSAGE_SELF, &reset_usage);
    reset_time = now_mono();
}

static void stall(void) {
    stall_time = now_mono();
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (!c->stall || c->state != S_STREAM)
            continue;
        /* No more EPOLLIN: the kernel buffers fill and the server's writes stall. A hangup
         * (the gateway's eviction) is still noticed, when the kernel can deliver it. */
        struct epoll_event ev = {.events = EPOLLRDHUP, .data.u64 = (uint64_t)i};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->stalled = 1;
        nstalled++;
    }
}

static int load_requests(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f || fscanf(f, "%d\n", &nconns) != 1 || nconns <= 0)
        return -1;
    conns = calloc((size_t)nconns, sizeof *conns);
    stall_closed = calloc((size_t)nconns, sizeof *stall_closed);
    if (!conns || !stall_closed)
        return -1;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        unsigned port, st, len;
        if (fscanf(f, "%u %u %u", &port, &st, &len) != 3 || fgetc(f) != '\n')
            return -1;
        c->port = (uint16_t)port;
        c->stall = st ? 1 : 0;
        c->req_len = len;
        c->req = malloc(len);
        if (!c->req || fread(c->req, 1, len, f) != len)
            return -1;
        c->fd = -1;
    }
    fclose(f);
    return 0;
}

static void handle_command(char *cmd) {
    if (strcmp(cmd, "stat") == 0) {
        uint64_t ev = events_group[0] + events_group[1];
        int streaming = 0, ended = 0;
        for (int i = 0; i < nconns; i++) {
            streaming += conns[i].state == S_STREAM;
            ended += conns[i].state == S_ENDED;
        }
        printf("stat %lu %d %d\n", (unsigned long)ev, streaming, ended);
    } else if (strcmp(cmd, "reset") == 0) {
        reset();
        printf("reset\n");
    } else if (strcmp(cmd, "stall") == 0) {
        stall();
        printf("stalled %d\n", nstalled);
    } else if (strcmp(cmd, "dump") == 0) {
        dump();
        printf("dumped\n");
    } else if (strcmp(cmd, "quit") == 0) {
        stop_flag = 1;
    } else {
        printf("error unknown command %s\n", cmd);
    }
    fflush(stdout);
}

static void on_readable(conn_t *c) {
    ssize_t r = read(c->fd, readbuf, sizeof readbuf);
    if (r > 0) {
        bytes_read += (uint64_t)r;
        sse_parser_t *p = &c->parser;
        int events = sse_feed(p, readbuf, (size_t)r, now_real(), &hist[c->stall], &counts);
        c->events += (uint64_t)events;
        events_group[c->stall] += (uint64_t)events;
        c->status = p->status;
        if (c->state == S_HEADERS && p->in_body)
            c->state = S_STREAM;
        if (p->ended)
            end_conn(c, c->status == 200 ? S_ENDED : S_FAILED);
    } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        if (c->state != S_STREAM && c->status == 0)
            c->status = r == 0 ? -1 : -errno;
        end_conn(c, c->state == S_STREAM ? S_ENDED : S_FAILED);
    }
}

static void on_writable(conn_t *c) {
    ssize_t w = write(c->fd, c->req + c->req_off, c->req_len - c->req_off);
    if (w < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        c->status = -errno;
        end_conn(c, S_FAILED);
        return;
    }
    c->req_off += (uint32_t)w;
    if (c->req_off == c->req_len) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(c - conns)};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->state = S_HEADERS;
    }
}

int main(int argc, char **argv) {
    double max_seconds = 600;
    int inflight = 256, rcvbuf = 4096;
    if (argc < 3) {
        fprintf(stderr, "usage: %s REQUESTS OUT.json [--max-seconds S] [--inflight K] "
                        "[--stall-rcvbuf B]\n", argv[0]);
        return 2;
    }
    out_path = argv[2];
    for (int i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--max-seconds") == 0)
            max_seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--inflight") == 0)
            inflight = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--stall-rcvbuf") == 0)
            rcvbuf = atoi(argv[i + 1]);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    if (load_requests(argv[1]) < 0) {
        fprintf(stderr, "loadclient: cannot read requests from %s\n", argv[1]);
        return 2;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);
    reset();
    double deadline = now_mono() + max_seconds;
    int next = 0, pending = 0, ready_said = 0, streaming_seen = 0;
    char cmdbuf[256];
    size_t cmdlen = 0;
    struct epoll_event events[1024];
    while (!stop_flag && now_mono() < deadline) {
        /* One stream first: its success warms the gateway's identity cache, so the burst
         * that follows does not send every request to Redis at once. */
        int limit = streaming_seen ? inflight : 1;
        while (next < nconns && pending < limit)
            if (start_conn(&conns[next++], rcvbuf) == 0)
                pending++;
        int n = epoll_wait(epfd, events, 1024, 100);
        for (int k = 0; k < n; k++) {
            uint64_t tag = events[k].data.u64;
            if (tag == STDIN_TAG) {
                ssize_t r = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
                if (r == 0) {
                    stop_flag = 1; /* the driver is gone */
                    break;
                }
                if (r < 0)
                    continue;
                cmdlen += (size_t)r;
                char *nl;
                while ((nl = memchr(cmdbuf, '\n', cmdlen))) {
                    *nl = 0;
                    handle_command(cmdbuf);
                    cmdlen -= (size_t)(nl + 1 - cmdbuf);
                    memmove(cmdbuf, nl + 1, cmdlen);
                }
                if (cmdlen == sizeof cmdbuf - 1)
                    cmdlen = 0;
                continue;
            }
            conn_t *c = &conns[tag];
            uint8_t before = c->state;
            if (c->stalled) {
                end_conn(c, S_ENDED); /* hangup while stalled: the gateway let go of it */
            } else if (c->state == S_CONNECTING && (events[k].events & EPOLLOUT)) {
                on_writable(c);
            } else if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                on_readable(c);
            }
            if ((before == S_CONNECTING || before == S_HEADERS) && c->state >= S_STREAM) {
                pending--;
                streaming_seen |= c->state == S_STREAM;
            }
        }
        if (!ready_said && next == nconns && pending == 0) {
            int ok = 0, failed = 0;
            for (int i = 0; i < nconns; i++) {
                ok += conns[i].state == S_STREAM;
                failed += conns[i].state == S_FAILED;
            }
            printf("ready %d %d\n", ok, failed);
            fflush(stdout);
            ready_said = 1;
        }
    }
    dump();
    printf("dumped\n");
    fflush(stdout);
    return 0;
}
