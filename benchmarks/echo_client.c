/* echo_client.c - load generator for the 1 KiB echo benchmark.
 *
 *   echo_client -a ADDR -p PORT [-c CONNS] [-s BYTES] [-d SECS] [-w WARMUP_SECS] [-r RATE]
 *
 * Closed loop (default): CONNS connections; each sends BYTES, waits until the whole echo
 * is back, records the latency and sends the next request at once.
 * Open loop (-r RATE): requests are offered at a fixed total RATE per second (evenly
 * spaced), each to an idle connection; when every connection is busy the request waits
 * in a queue. Latency is measured from the request's *scheduled* time, so queueing
 * delay counts (no coordinated omission).
 *
 * One thread, epoll. Statistics cover the DURATION after the warm-up; `total` counts
 * every request completed during the whole run (warm-up included), for per-request
 * server-side figures measured over the whole run. Output: one line of key=value:
 *   rps= p50_us= p99_us= p999_us= max_us= requests= total= offered= errors=
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#define HMAX 2000000 /* histogram: 1 us buckets up to 2 s; beyond: last bucket */

struct conn {
    int fd;
    int busy;
    size_t sent, got;
    uint64_t t0; /* start of the current request (scheduled time in open loop) */
};

static uint64_t *hist;
static uint64_t hcount, errors;
static size_t reqsz = 1024;
static char *sbuf, rbuf[65536];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t pct(double q) {
    if (!hcount) return 0;
    uint64_t want = (uint64_t)(q * (double)hcount);
    if (want >= hcount) want = hcount - 1;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < HMAX; i++) {
        acc += hist[i];
        if (acc > want) return i;
    }
    return HMAX - 1;
}

static int send_req(struct conn *c) {
    while (c->sent < reqsz) {
        ssize_t w = write(c->fd, sbuf + c->sent, reqsz - c->sent);
        if (w < 0) {
            if (errno == EAGAIN) return 0; /* rest goes on EPOLLOUT */
            if (errno == EINTR) continue;
            return -1;
        }
        c->sent += (size_t)w;
    }
    return 0;
}

static void usage(const char *p) {
    fprintf(stderr, "usage: %s -a ADDR -p PORT [-c CONNS] [-s BYTES] [-d SECS] [-w SECS] [-r RATE]\n", p);
    exit(2);
}

int main(int argc, char **argv) {
    const char *addr = NULL;
    int port = 0, nconn = 100, opt;
    double dur = 5, warm = 0.5, rate = 0;
    while ((opt = getopt(argc, argv, "a:p:c:s:d:w:r:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconn = atoi(optarg); break;
        case 's': reqsz = (size_t)atol(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'r': rate = atof(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (!addr || !port || nconn < 1 || reqsz < 1 || reqsz > sizeof rbuf) usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    hist = calloc(HMAX, sizeof *hist);
    sbuf = malloc(reqsz);
    for (size_t i = 0; i < reqsz; i++) sbuf[i] = (char)('a' + i % 26);

    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) usage(argv[0]);

    int ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)nconn, sizeof *cs);
    int one = 1;
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { perror("socket"); return 1; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        cs[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }

    /* open loop: idle connections (stack) and queued scheduled times (ring buffer) */
    int *idle = malloc(sizeof(int) * (size_t)nconn), nidle = 0;
    size_t qcap = 1 << 22, qh = 0, qt = 0;
    uint64_t *q = rate > 0 ? malloc(sizeof(uint64_t) * qcap) : NULL;
    uint64_t offered = 0;

    uint64_t start = now_ns();
    uint64_t mstart = start + (uint64_t)(warm * 1e9);
    uint64_t end = mstart + (uint64_t)(dur * 1e9);
    uint64_t measured = 0, total = 0;
    double interval = rate > 0 ? 1e9 / rate : 0;
    double next = (double)start;

    for (int i = 0; i < nconn; i++) {
        if (rate > 0) { idle[nidle++] = i; continue; }
        cs[i].busy = 1; cs[i].sent = cs[i].got = 0; cs[i].t0 = now_ns();
        if (send_req(&cs[i]) < 0) errors++;
    }

    struct epoll_event evs[1024];
    int outstanding = rate > 0 ? 0 : nconn;
    for (;;) {
        uint64_t t = now_ns();
        int done = t >= end;
        if (rate > 0) {
            /* schedule every request that is due; hand queued ones to idle connections */
            while (!done && (double)t >= next) {
                if (qt - qh < qcap) q[qt++ % qcap] = (uint64_t)next;
                else errors++;
                offered++;
                next += interval;
            }
            while (qh < qt && nidle > 0) {
                struct conn *c = &cs[idle[--nidle]];
                c->busy = 1; c->sent = c->got = 0; c->t0 = q[qh++ % qcap];
                outstanding++;
                if (send_req(c) < 0) errors++;
                if (c->sent < reqsz) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - cs)};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
        if (done && outstanding == 0) break;
        if (t > end + 2000000000ull) break; /* stragglers: give up after 2 s */
        struct timespec to;
        if (rate > 0 && !done) {
            double wait = next - (double)now_ns();
            if (wait < 0) wait = 0;
            to.tv_sec = (time_t)(wait / 1e9);
            to.tv_nsec = (long)(wait - (double)to.tv_sec * 1e9);
        } else {
            to.tv_sec = 0; to.tv_nsec = 100000000;
        }
        int n = epoll_pwait2(ep, evs, 1024, &to, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_pwait2");
            return 1;
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = &cs[evs[k].data.u32];
            if (evs[k].events & EPOLLOUT) {
                if (send_req(c) < 0) errors++;
                if (c->sent == reqsz) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[k].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t r = read(c->fd, rbuf, sizeof rbuf);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                if (c->busy) { c->busy = 0; outstanding--; }
                continue;
            }
            c->got += (size_t)r;
            if (c->got < reqsz) continue;
            if (c->got > reqsz) errors++;
            uint64_t t1 = now_ns();
            total++;
            if (c->t0 >= mstart && t1 <= end) {
                uint64_t us = (t1 - c->t0) / 1000;
                hist[us < HMAX ? us : HMAX - 1]++;
                hcount++;
                measured++;
            }
            c->busy = 0;
            outstanding--;
            if (t1 < end && rate == 0) {
                c->busy = 1; c->sent = c->got = 0; c->t0 = t1;
                outstanding++;
                if (send_req(c) < 0) errors++;
            } else if (rate > 0) {
                idle[nidle++] = (int)evs[k].data.u32;
            }
            if (c->sent < reqsz && c->busy) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = evs[k].data.u32};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
        }
    }
    double secs = dur;
    printf("rps=%.0f p50_us=%llu p99_us=%llu p999_us=%llu max_us=%llu requests=%llu total=%llu offered=%llu "
           "errors=%llu conns=%d rate=%.0f\n",
           (double)measured / secs, (unsigned long long)pct(0.50), (unsigned long long)pct(0.99),
           (unsigned long long)pct(0.999), (unsigned long long)pct(1.0), (unsigned long long)measured,
           (unsigned long long)total, (unsigned long long)offered, (unsigned long long)errors, nconn, rate);
    for (int i = 0; i < nconn; i++) close(cs[i].fd);
    return 0;
}
