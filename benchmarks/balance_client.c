/* balance_client.c - skewed-load client for balance_server.c (benchmarks/balance.sh).
 *
 *   balance_client -a ADDR -p PORT [-t WORKERS] [-c CONNS] [-b SRC] [-k SMALL -x SRC2]
 *                  [-s BYTES] [-d SECS] [-w WARMUP_SECS]
 *
 * Phase 1, connection set-up (the skew): one "big" client opens CONNS connections (default
 * 64) one after another from source address SRC (default: any), and a "small" client opens
 * SMALL connections (default 0) from SRC2, interleaved evenly among the big one's. Each
 * connect waits for the server's one-byte greeting, which names the worker (reuseport
 * listener) that accepted it, before the next connection is opened: the server has
 * counted every accept before the next SYN.
 *
 * Phase 2, load: closed-loop 1 KiB echo on every connection (each sends BYTES, waits for
 * the whole echo, records the latency, sends again) for WARMUP + SECS seconds; statistics
 * cover the SECS after the warm-up. One thread, epoll.
 *
 * Output: one line of key=value (lists are comma-separated, one value per worker):
 *   workers= conns= big= small= counts= big_counts= small_counts= max= min= spread=
 *   rps= p50_us= p99_us= p999_us= max_us= small_p99_us= worker_rps= worker_p99_us=
 *   conn_req_min= conn_req_max= requests= errors= setup_ms=
 * spread = max/min connections per worker ("inf" when a worker got none); worker_p99_us
 * has 10 us resolution; conn_req_min/max are the fewest/most requests one connection
 * completed in the measured window (per-connection fairness).
 * Exit 1 on a connection or greeting failure (message on stderr).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAXW 64
#define HMAX 1000000  /* 1 us buckets up to 1 s; beyond: last bucket */
#define WHMAX 100000  /* per worker: 10 us buckets up to 1 s */

struct conn {
    int fd, worker, small;
    size_t sent, got;
    uint64_t t0, done;
};

struct hist {
    uint64_t *b, n;
    size_t size;
};

static size_t reqsz = 1024;
static char *sbuf, rbuf[65536];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void hist_init(struct hist *h, size_t size) {
    h->b = calloc(size, sizeof *h->b);
    h->n = 0;
    h->size = size;
    if (!h->b) { perror("calloc"); exit(1); }
}

static void hist_add(struct hist *h, uint64_t v) {
    h->b[v < h->size ? v : h->size - 1]++;
    h->n++;
}

static uint64_t hist_pct(const struct hist *h, double q) {
    if (!h->n) return 0;
    uint64_t want = (uint64_t)(q * (double)h->n);
    if (want >= h->n) want = h->n - 1;
    uint64_t acc = 0;
    for (size_t i = 0; i < h->size; i++) {
        acc += h->b[i];
        if (acc > want) return i;
    }
    return h->size - 1;
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

/* Opens one connection from src (NULL: any) and reads its greeting; returns the fd. */
static int open_one(const struct sockaddr_in *dst, const struct sockaddr_in *src, int nworkers, int *worker) {
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (src && bind(fd, (const struct sockaddr *)src, sizeof *src) < 0) { perror("bind source address"); exit(1); }
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0) { perror("connect"); exit(1); }
    unsigned char who;
    ssize_t r;
    do r = read(fd, &who, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1) {
        fprintf(stderr, "balance_client: no greeting (%s)\n", r < 0 ? strerror(errno) : "EOF");
        exit(1);
    }
    if (who >= nworkers) {
        fprintf(stderr, "balance_client: greeting names worker %u, but -t %d\n", who, nworkers);
        exit(1);
    }
    *worker = who;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static void print_list_i(const char *name, const long *v, int n) {
    printf(" %s=", name);
    for (int i = 0; i < n; i++) printf("%s%ld", i ? "," : "", v[i]);
}

static void usage(const char *p) {
    fprintf(stderr,
            "usage: %s -a ADDR -p PORT [-t WORKERS] [-c CONNS] [-b SRC] [-k SMALL -x SRC2] [-s BYTES] [-d SECS] "
            "[-w SECS]\n",
            p);
    exit(2);
}

static int parse_addr(const char *s, int port, struct sockaddr_in *a) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)port);
    return inet_pton(AF_INET, s, &a->sin_addr) == 1;
}

int main(int argc, char **argv) {
    const char *addr = NULL, *src = NULL, *src2 = NULL;
    int port = 0, nworkers = 4, nbig = 64, nsmall = 0, opt;
    double dur = 5, warm = 0.5;
    while ((opt = getopt(argc, argv, "a:p:t:c:b:k:x:s:d:w:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 't': nworkers = atoi(optarg); break;
        case 'c': nbig = atoi(optarg); break;
        case 'b': src = optarg; break;
        case 'k': nsmall = atoi(optarg); break;
        case 'x': src2 = optarg; break;
        case 's': reqsz = (size_t)atol(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (!addr || port <= 0 || port > 65535 || nworkers < 1 || nworkers > MAXW || nbig < 1 || nsmall < 0 ||
        reqsz < 1 || reqsz > sizeof rbuf || dur <= 0 || warm < 0)
        usage(argv[0]);
    struct sockaddr_in dst, sa_big, sa_small;
    if (!parse_addr(addr, port, &dst)) usage(argv[0]);
    if (src && !parse_addr(src, 0, &sa_big)) usage(argv[0]);
    if (src2 && !parse_addr(src2, 0, &sa_small)) usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    sbuf = malloc(reqsz);
    for (size_t i = 0; i < reqsz; i++) sbuf[i] = (char)('a' + i % 26);

    /* Phase 1: CONNS + SMALL connections, one after another; the small client's are
     * spread evenly among the big one's. */
    int nconn = nbig + nsmall;
    struct conn *cs = calloc((size_t)nconn, sizeof *cs);
    long counts[MAXW] = {0}, big_counts[MAXW] = {0}, small_counts[MAXW] = {0};
    uint64_t t_setup = now_ns();
    int k = 0, small_done = 0;
    for (int b = 0; b < nbig; b++) {
        /* small connection j goes right after big connection floor(j * nbig / nsmall) */
        while (small_done < nsmall && (long)small_done * nbig / nsmall <= b) {
            cs[k].fd = open_one(&dst, src2 ? &sa_small : NULL, nworkers, &cs[k].worker);
            cs[k].small = 1;
            small_counts[cs[k].worker]++;
            counts[cs[k].worker]++;
            k++;
            small_done++;
        }
        cs[k].fd = open_one(&dst, src ? &sa_big : NULL, nworkers, &cs[k].worker);
        big_counts[cs[k].worker]++;
        counts[cs[k].worker]++;
        k++;
    }
    uint64_t setup_ms = (now_ns() - t_setup) / 1000000;

    /* Phase 2: closed-loop echo on every connection. */
    struct hist all, small;
    struct hist *perw = calloc((size_t)nworkers, sizeof *perw);
    hist_init(&all, HMAX);
    hist_init(&small, HMAX);
    for (int w = 0; w < nworkers; w++) hist_init(&perw[w], WHMAX);
    long wreq[MAXW] = {0};

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { perror("epoll_create1"); return 1; }
    for (int i = 0; i < nconn; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) < 0) { perror("epoll_ctl"); return 1; }
    }
    uint64_t errors = 0, measured = 0;
    uint64_t start = now_ns();
    uint64_t mstart = start + (uint64_t)(warm * 1e9);
    uint64_t end = mstart + (uint64_t)(dur * 1e9);
    int outstanding = nconn;
    for (int i = 0; i < nconn; i++) {
        cs[i].t0 = now_ns();
        if (send_req(&cs[i]) < 0) errors++;
        if (cs[i].sent < reqsz) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
            epoll_ctl(ep, EPOLL_CTL_MOD, cs[i].fd, &ev);
        }
    }
    struct epoll_event evs[1024];
    while (outstanding > 0) {
        if (now_ns() > end + 2000000000ull) break; /* stragglers: give up after 2 s */
        int n = epoll_wait(ep, evs, 1024, 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int j = 0; j < n; j++) {
            uint32_t i = evs[j].data.u32;
            struct conn *c = &cs[i];
            if (evs[j].events & EPOLLOUT) {
                if (send_req(c) < 0) errors++;
                if (c->sent == reqsz) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(evs[j].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t r = read(c->fd, rbuf, sizeof rbuf);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                outstanding--;
                continue;
            }
            c->got += (size_t)r;
            if (c->got < reqsz) continue;
            if (c->got > reqsz) errors++;
            uint64_t t1 = now_ns();
            if (c->t0 >= mstart && t1 <= end) {
                uint64_t us = (t1 - c->t0) / 1000;
                hist_add(&all, us);
                if (c->small) hist_add(&small, us);
                hist_add(&perw[c->worker], us / 10);
                wreq[c->worker]++;
                c->done++;
                measured++;
            }
            if (t1 < end) {
                c->sent = c->got = 0;
                c->t0 = t1;
                if (send_req(c) < 0) errors++;
                if (c->sent < reqsz) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                outstanding--;
            }
        }
    }
    if (outstanding > 0) errors += (uint64_t)outstanding;

    long mx = 0, mn = -1;
    for (int w = 0; w < nworkers; w++) {
        if (counts[w] > mx) mx = counts[w];
        if (mn < 0 || counts[w] < mn) mn = counts[w];
    }
    uint64_t cmin = UINT64_MAX, cmax = 0;
    for (int i = 0; i < nconn; i++) {
        if (cs[i].done < cmin) cmin = cs[i].done;
        if (cs[i].done > cmax) cmax = cs[i].done;
    }
    printf("workers=%d conns=%d big=%d small=%d", nworkers, nconn, nbig, nsmall);
    print_list_i("counts", counts, nworkers);
    print_list_i("big_counts", big_counts, nworkers);
    print_list_i("small_counts", small_counts, nworkers);
    printf(" max=%ld min=%ld", mx, mn);
    if (mn > 0) printf(" spread=%.2f", (double)mx / (double)mn);
    else printf(" spread=inf");
    printf(" rps=%.0f p50_us=%llu p99_us=%llu p999_us=%llu max_us=%llu", (double)measured / dur,
           (unsigned long long)hist_pct(&all, 0.50), (unsigned long long)hist_pct(&all, 0.99),
           (unsigned long long)hist_pct(&all, 0.999), (unsigned long long)hist_pct(&all, 1.0));
    if (nsmall > 0) printf(" small_p99_us=%llu", (unsigned long long)hist_pct(&small, 0.99));
    else printf(" small_p99_us=");
    printf(" worker_rps=");
    for (int w = 0; w < nworkers; w++) printf("%s%.0f", w ? "," : "", (double)wreq[w] / dur);
    printf(" worker_p99_us=");
    for (int w = 0; w < nworkers; w++)
        printf("%s%llu", w ? "," : "", (unsigned long long)(perw[w].n ? hist_pct(&perw[w], 0.99) * 10 : 0));
    printf(" conn_req_min=%llu conn_req_max=%llu requests=%llu errors=%llu setup_ms=%llu\n",
           (unsigned long long)cmin, (unsigned long long)cmax, (unsigned long long)measured,
           (unsigned long long)errors, (unsigned long long)setup_ms);
    for (int i = 0; i < nconn; i++) close(cs[i].fd);
    return errors ? 1 : 0;
}
