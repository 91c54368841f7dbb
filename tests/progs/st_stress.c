/* Stress programs for tests/stress.rs and tests/failopen.rs.
 *
 *   st_stress server et|lt reuseport|shared NTHREADS
 *       A non-blocking epoll echo server: NTHREADS threads, each with its own epoll
 *       instance, either each with its own SO_REUSEPORT listener or all sharing one
 *       listener (EPOLLEXCLUSIVE). Edge-triggered (et) or level-triggered (lt). Prints
 *       "PORT n" when every thread listens, runs until SIGTERM, then prints one
 *       "SERVER ..." summary line and exits 0.
 *   st_stress client PORT NCONC NSHORT SEED MAXMSG [KIND]
 *       Opens NCONC connections at once (all of them are established and have completed
 *       a ping before any bulk traffic starts), streams random-sized messages (1 B ..
 *       MAXMSG, deterministic PRNG) over each and verifies every echoed byte; some
 *       connections half-close, some reset mid-transfer, some read slowly (KIND: all of
 *       them normal|halfclose|reset|slow instead, to narrow a failure down). Then NSHORT
 *       short connections (connect, one request, close). Prints "CLIENT ..." and exits 0.
 *   st_stress largesend BYTES
 *       One process: an epoll-loop server thread answers a request with BYTES written on a
 *       non-blocking socket; the main thread reads them slowly at first and verifies them.
 *   st_stress echo
 *       One process: an epoll echo server thread and a client doing a short verified
 *       exchange; prints "ECHO OK ..." and then waits for stdin to close, so the harness
 *       can read the process's counters (ringshim stat) while it is still alive.
 *
 * Self-checking like the pl_* programs: exit 0 on success, a "FAIL" line and exit 1
 * otherwise; a watchdog (exit 3) bounds every mode. Loopback only, ephemeral ports.
 */
#include "pl_util.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

/* ST_SERVER_ADDR / ST_CLIENT_ADDR (dotted IPv4): where the server binds and the client
 * connects instead of 127.0.0.1 (tests/ustack.rs: 0.0.0.0 under the shim, the
 * user-space stack's address for the kernel client). */
static void st_env_addr(const char *var, struct sockaddr_in *a) {
    const char *v = getenv(var);
    if (v != NULL && *v != '\0')
        CHECK(inet_pton(AF_INET, v, &a->sin_addr) == 1, "bad address in ST_*_ADDR");
}

/* Bytes moved per read()/write() call, and the server's per-connection echo buffer. */
#define CHUNK (64 * 1024)
#define SRV_BUF (32 * 1024)

/* ------------------------------------------------------------------------------------ */
/* Watchdog with a per-mode limit (pl_util's is fixed at 10 s, too short for the stress
 * client and far too short for a server that lives as long as its test). */

static int st_watchdog_secs;

static void *st_watchdog(void *arg) {
    (void)arg;
    struct timespec ts = {st_watchdog_secs, 0};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    fprintf(stderr, "FAIL %s [pid %d] watchdog: step '%s' still running after %d s\n", pl_prog,
            (int)getpid(), pl_step, st_watchdog_secs);
    _exit(3);
    return NULL;
}

static void st_init(const char *prog, int watchdog_secs) {
    pl_prog = prog;
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    /* A server orphaned by a crashed harness must not linger. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* Peers reset on purpose: a write to a reset socket must be an EPIPE, not a death. */
    signal(SIGPIPE, SIG_IGN);
    st_watchdog_secs = watchdog_secs;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t t;
    if (pthread_create(&t, NULL, st_watchdog, NULL) != 0)
        FAIL("pthread_create(watchdog)");
    pthread_detach(t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* 1000 connections plus the short ones in flight need more than a default 1024 fds. */
static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Fast pattern fill/verify, byte-for-byte equal to pl_pattern(): byte i of a stream is
 * byte (i % 8) (little-endian) of a hash of word i / 8, so whole words can be produced at
 * once. Checking every byte against its stream offset catches loss, duplication and
 * reordering at the first wrong byte. */

static inline uint64_t st_word(uint64_t seed, uint64_t word) {
    uint64_t x = (word + 1) * 0x9E3779B97F4A7C15ull ^ (seed * 0xD1B54A32D192ED03ull);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return x;
}

static void st_fill(uint64_t seed, uint64_t off, uint8_t *buf, size_t n) {
    size_t i = 0;
    while (i < n && (off + i) % 8 != 0) {
        buf[i] = pl_pattern(seed, off + i);
        i++;
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w = st_word(seed, (off + i) / 8);
        memcpy(buf + i, &w, 8); /* x86_64 and aarch64: little-endian, as pl_pattern */
    }
    for (; i < n; i++)
        buf[i] = pl_pattern(seed, off + i);
}

static uint8_t st_scratch_check[CHUNK];

static void st_verify(uint64_t seed, uint64_t off, const uint8_t *buf, size_t n) {
    for (size_t done = 0; done < n;) {
        size_t k = n - done < CHUNK ? n - done : CHUNK;
        st_fill(seed, off + done, st_scratch_check, k);
        if (memcmp(st_scratch_check, buf + done, k) != 0)
            pl_verify(seed, off + done, buf + done, k); /* names the first wrong byte */
        done += k;
    }
}

/* splitmix64: the deterministic PRNG behind message sizes and connection kinds. */
static uint64_t st_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* 1 .. max bytes, log-uniform: mostly small messages, a few large ones, like real
 * traffic, and a bounded total so the run fits its time budget. */
static uint64_t st_msg_size(uint64_t *rng, uint64_t max) {
    unsigned bits = (unsigned)(st_rand(rng) % 21); /* up to 2^20 = 1 MiB */
    uint64_t n = 1 + st_rand(rng) % (1ull << bits);
    return n > max ? max : n;
}

static void add_ep(int ep, int fd, uint32_t events, void *ptr) {
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
}

static void mod_ep(int ep, int fd, uint32_t events, void *ptr) {
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    OK(epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev));
}

/* ------------------------------------------------------------------------------------ */
/* Server */

struct srv_conn {
    int fd;
    uint8_t *buf;
    size_t off, len; /* buf[off..len] still to be echoed */
    int eof;         /* the peer half-closed */
    int want_out;    /* lt: registered for EPOLLOUT instead of EPOLLIN */
    int out_blocked; /* the last write hit EAGAIN */
    struct srv_conn *prev, *next;
};

struct worker {
    pthread_t th;
    int ep, lfd;
    int et;
    struct srv_conn head; /* list of open connections, freed at stop */
    /* Counters, summed by main after join. */
    uint64_t accepted, closed, resets, eofs, eagain, outwakes, bytes, leftover, accept_eagain;
};

static int srv_stop_efd;
static char listen_tag, stop_tag; /* epoll data.ptr markers */
static uint64_t srv_open, srv_max_open;

static void srv_close(struct worker *w, struct srv_conn *c, int reset) {
    /* Level-triggered servers deregister explicitly; edge-triggered ones rely on close()
     * removing the fd from the epoll set, as many real servers do: both paths matter. */
    if (!w->et)
        OK(epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL));
    OK(close(c->fd));
    c->prev->next = c->next;
    c->next->prev = c->prev;
    free(c->buf);
    free(c);
    w->closed++;
    if (reset)
        w->resets++;
    __atomic_sub_fetch(&srv_open, 1, __ATOMIC_RELAXED);
}

static int reset_errno(int e) { return e == ECONNRESET || e == EPIPE || e == ETIMEDOUT; }

/* Moves bytes until the socket says EAGAIN (edge-triggered: required, or the edge is
 * lost) or, level-triggered, for a bounded number of rounds (fairness between
 * connections; the level-triggered epoll reports the rest again). */
static void srv_serve(struct worker *w, struct srv_conn *c) {
    int rounds = 0;
    for (;;) {
        while (c->off < c->len) {
            ssize_t n = write(c->fd, c->buf + c->off, c->len - c->off);
            if (n > 0) {
                c->off += (size_t)n;
                w->bytes += (uint64_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                /* Backpressure: stop reading this peer until the echo drains. */
                w->eagain++;
                c->out_blocked = 1;
                if (!w->et && !c->want_out) {
                    /* Not EPOLLRDHUP: level-triggered, a half-closed peer would report it
                     * on every wait while we wait for room to write (a busy loop). */
                    mod_ep(w->ep, c->fd, EPOLLOUT, c);
                    c->want_out = 1;
                }
                return;
            }
            if (n < 0 && reset_errno(errno)) {
                srv_close(w, c, 1);
                return;
            }
            FAIL("server write(%d) returned %zd", c->fd, n);
        }
        c->off = c->len = 0;
        if (!w->et && c->want_out) {
            mod_ep(w->ep, c->fd, EPOLLIN | EPOLLRDHUP, c);
            c->want_out = 0;
        }
        if (c->eof) {
            /* Everything the peer sent has been written: half-close our side (it must
             * take effect after those bytes), then close. */
            if (shutdown(c->fd, SHUT_WR) != 0 && errno != ENOTCONN)
                FAIL("server shutdown(%d, SHUT_WR)", c->fd);
            srv_close(w, c, 0);
            return;
        }
        if (!w->et && ++rounds > 8)
            return;
        ssize_t n = read(c->fd, c->buf, SRV_BUF);
        if (n > 0) {
            c->len = (size_t)n;
            continue;
        }
        if (n == 0) {
            w->eofs++;
            c->eof = 1;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (reset_errno(errno)) {
            srv_close(w, c, 1);
            return;
        }
        FAIL("server read(%d)", c->fd);
    }
}

static void srv_accept(struct worker *w) {
    for (int i = 0; w->et || i < 64; i++) {
        int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                w->accept_eagain++; /* another thread took it (shared listener) */
                return;
            }
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            FAIL("accept4");
        }
        /* A fixed, small send buffer (as servers configure with e.g. nginx's `sndbuf`):
         * with autotuning, loopback absorbs megabytes and a slow reader would never push
         * back on the server at all. */
        int sndbuf = 64 * 1024;
        OK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf));
        struct srv_conn *c = calloc(1, sizeof *c);
        CHECK(c != NULL, "calloc");
        c->fd = fd;
        c->buf = malloc(SRV_BUF);
        CHECK(c->buf != NULL, "malloc");
        c->next = w->head.next;
        c->prev = &w->head;
        w->head.next->prev = c;
        w->head.next = c;
        w->accepted++;
        uint64_t open = __atomic_add_fetch(&srv_open, 1, __ATOMIC_RELAXED);
        uint64_t max = __atomic_load_n(&srv_max_open, __ATOMIC_RELAXED);
        while (open > max &&
               !__atomic_compare_exchange_n(&srv_max_open, &max, open, 0, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED)) {
        }
        if (w->et)
            add_ep(w->ep, fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, c);
        else
            add_ep(w->ep, fd, EPOLLIN | EPOLLRDHUP, c);
    }
}

static void *srv_thread(void *arg) {
    struct worker *w = arg;
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(w->ep, evs, 256, -1);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "server epoll_wait returned %d", n);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &stop_tag)
                goto stop;
            if (p == &listen_tag) {
                srv_accept(w);
                continue;
            }
            struct srv_conn *c = p;
            if (c->out_blocked && (evs[i].events & EPOLLOUT)) {
                w->outwakes++;
                c->out_blocked = 0;
            }
            srv_serve(w, c);
        }
    }
stop:
    while (w->head.next != &w->head) {
        w->leftover++;
        srv_close(w, w->head.next, 0);
    }
    return NULL;
}

static void mode_server(int argc, char **argv) {
    CHECK(argc == 5, "usage: server et|lt reuseport|shared NTHREADS");
    int et = strcmp(argv[2], "et") == 0;
    CHECK(et || strcmp(argv[2], "lt") == 0, "mode must be et or lt");
    int reuseport = strcmp(argv[3], "reuseport") == 0;
    CHECK(reuseport || strcmp(argv[3], "shared") == 0, "listen must be reuseport or shared");
    int nthreads = atoi(argv[4]);
    CHECK(nthreads >= 1 && nthreads <= 64, "NTHREADS");
    raise_nofile();

    /* SIGTERM is taken by sigwait() in main only; workers inherit the blocked mask. */
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    pthread_sigmask(SIG_BLOCK, &term, NULL);

    srv_stop_efd = OK(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    struct worker *ws = calloc((size_t)nthreads, sizeof *ws);
    CHECK(ws != NULL, "calloc");
    uint16_t port = 0;
    int shared = -1;
    for (int i = 0; i < nthreads; i++) {
        struct worker *w = &ws[i];
        w->et = et;
        w->head.next = w->head.prev = &w->head;
        w->ep = OK(epoll_create1(EPOLL_CLOEXEC));
        if (reuseport || i == 0) {
            STEP("listen");
            int fd = OK(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
            int one = 1;
            OK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
            if (reuseport)
                OK(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
            struct sockaddr_storage ss;
            socklen_t len = pl_loopback(AF_INET, port, &ss);
            st_env_addr("ST_SERVER_ADDR", (struct sockaddr_in *)&ss);
            OK(bind(fd, (struct sockaddr *)&ss, len));
            /* Room for all 1000 concurrent connects at once (somaxconn caps it). */
            OK(listen(fd, 4096));
            if (i == 0)
                port = pl_port_of(fd);
            if (!reuseport)
                shared = fd;
            w->lfd = fd;
        } else {
            w->lfd = shared;
        }
        uint32_t lev = EPOLLIN | (et ? EPOLLET : 0);
        /* A shared listener wakes one waiter per connection, not all (thundering herd). */
        if (!reuseport)
            lev |= EPOLLEXCLUSIVE;
        add_ep(w->ep, w->lfd, lev, &listen_tag);
        /* Level-triggered on purpose: one write wakes every worker. */
        add_ep(w->ep, srv_stop_efd, EPOLLIN, &stop_tag);
    }
    for (int i = 0; i < nthreads; i++)
        CHECK(pthread_create(&ws[i].th, NULL, srv_thread, &ws[i]) == 0, "pthread_create");
    printf("PORT %u\n", port);

    STEP("serving");
    int sig = 0;
    sigwait(&term, &sig);
    STEP("stopping");
    uint64_t one = 1;
    CHECK(write(srv_stop_efd, &one, sizeof one) == sizeof one, "write(stop eventfd)");
    struct worker t = {0};
    for (int i = 0; i < nthreads; i++) {
        pthread_join(ws[i].th, NULL);
        t.accepted += ws[i].accepted;
        t.closed += ws[i].closed;
        t.resets += ws[i].resets;
        t.eofs += ws[i].eofs;
        t.eagain += ws[i].eagain;
        t.outwakes += ws[i].outwakes;
        t.bytes += ws[i].bytes;
        t.leftover += ws[i].leftover;
        t.accept_eagain += ws[i].accept_eagain;
    }
    printf("SERVER mode=%s listen=%s threads=%d accepted=%llu closed=%llu resets=%llu "
           "eofs=%llu eagain=%llu outwakes=%llu bytes=%llu max_open=%llu leftover=%llu "
           "accept_eagain=%llu\n",
           argv[2], argv[3], nthreads, (unsigned long long)t.accepted,
           (unsigned long long)t.closed, (unsigned long long)t.resets,
           (unsigned long long)t.eofs, (unsigned long long)t.eagain,
           (unsigned long long)t.outwakes, (unsigned long long)t.bytes,
           (unsigned long long)srv_max_open, (unsigned long long)t.leftover,
           (unsigned long long)t.accept_eagain);
    exit(0);
}

/* ------------------------------------------------------------------------------------ */
/* Client */

enum kind { K_NORMAL, K_HALFCLOSE, K_RESET, K_SLOW, K_SHORT };
static const char *kind_name[] = {"normal", "halfclose", "reset", "slow", "short"};
enum cstate { C_FREE, C_CONNECTING, C_RUNNING, C_DONE };

struct cli_conn {
    int fd;
    enum kind kind;
    enum cstate state;
    uint64_t seed, rng;
    uint64_t sent, rcvd;
    uint64_t msg_end;  /* stream offset where the current message ends */
    int msg_idx;       /* 0 = the ping */
    int msgs_left;     /* messages after the current one */
    uint64_t reset_at; /* K_RESET: reset once this many bytes came back */
    int wr_shut;
    double next_read; /* K_SLOW */
    uint64_t fnv_sent, fnv_rcvd;
};

#define SLOW_CHUNK 4096 /* bytes a slow reader takes per tick */
#define SLOW_TICK 0.005 /* seconds between its reads */

struct cli {
    int ep;
    struct sockaddr_in addr;
    uint64_t maxmsg;
    int barrier;          /* phase 1: no bulk traffic before every ping is back */
    int only;             /* phase 1: every connection of this kind (-1: the mix) */
    int nconns, pinged;
    int done, active_slow;
    double last_progress;
    /* Totals */
    uint64_t bytes_sent, bytes_rcvd, sum_fnv;
    int count[5];
};

static uint8_t cli_buf[CHUNK];

static void cli_open(struct cli *cl, struct cli_conn *c, uint64_t seed, enum kind kind) {
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->seed = seed;
    c->rng = seed * 0x2545F4914F6CDD1Dull + 1;
    c->fnv_sent = c->fnv_rcvd = PL_FNV_INIT;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(c->fd >= 0, "client socket() (conn seed %llu)", (unsigned long long)seed);
    if (kind == K_SLOW) {
        /* A small receive window, so the echo backs up into the server's send queue
         * instead of disappearing into loopback socket buffers. */
        int rcv = 4096;
        OK(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv));
    }
    int r = connect(c->fd, (struct sockaddr *)&cl->addr, sizeof cl->addr);
    CHECK(r == 0 || errno == EINPROGRESS, "client connect()");
    c->state = C_CONNECTING;
    /* Edge-triggered: the client tries both directions until EAGAIN on every event, and
     * does not spin on a permanently writable socket. */
    add_ep(cl->ep, c->fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, c);
    /* Message 0: a small ping (barrier in phase 1). K_SHORT: the one request. */
    uint64_t first = kind == K_SHORT ? 1 + st_rand(&c->rng) % 4096 : 1 + st_rand(&c->rng) % 64;
    c->msg_end = first;
    switch (kind) {
    case K_NORMAL:
    case K_HALFCLOSE:
        c->msgs_left = 1 + (int)(st_rand(&c->rng) % 4);
        break;
    case K_RESET:
    case K_SLOW:
        c->msgs_left = 1; /* one maximal message */
        break;
    case K_SHORT:
        c->msgs_left = 0;
        break;
    }
    if (kind == K_SLOW)
        cl->active_slow++;
}

static void cli_finish(struct cli *cl, struct cli_conn *c) {
    OK(close(c->fd));
    c->state = C_DONE;
    cl->done++;
    cl->count[c->kind]++;
    if (c->kind == K_SLOW)
        cl->active_slow--;
    if (c->kind != K_RESET) {
        CHECK(c->rcvd == c->sent && c->fnv_rcvd == c->fnv_sent,
              "%s conn seed %llu: checksum of %llu echoed bytes differs from the %llu sent",
              kind_name[c->kind], (unsigned long long)c->seed, (unsigned long long)c->rcvd,
              (unsigned long long)c->sent);
        cl->sum_fnv ^= c->fnv_rcvd;
    }
}

/* The next message starts once the previous one came back completely. */
static void cli_next_msg(struct cli *cl, struct cli_conn *c) {
    if (c->msg_idx == 0 && cl->barrier)
        cl->pinged++;
    c->msg_idx++;
    if (c->msgs_left == 0)
        return;
    c->msgs_left--;
    uint64_t size = (c->kind == K_RESET || c->kind == K_SLOW) ? cl->maxmsg
                                                               : st_msg_size(&c->rng, cl->maxmsg);
    if (c->kind == K_RESET)
        /* Mid-transfer: part of the message echoed, part still unsent or in flight. */
        c->reset_at = c->msg_end + size / 4;
    c->msg_end += size;
}

static int cli_all_sent(const struct cli_conn *c) { return c->msgs_left == 0 && c->sent == c->msg_end; }

/* Linger 0 close: the kernel sends RST, dropping whatever is queued both ways. */
static void cli_reset(struct cli *cl, struct cli_conn *c) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    OK(setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    cli_finish(cl, c);
}

/* Reads up to `limit` bytes; returns 1 if the connection finished. */
static int cli_read(struct cli *cl, struct cli_conn *c, uint64_t limit) {
    while (limit > 0) {
        size_t want = limit < CHUNK ? (size_t)limit : CHUNK;
        ssize_t n = read(c->fd, cli_buf, want);
        if (n > 0) {
            CHECK(c->rcvd + (uint64_t)n <= c->sent,
                  "%s conn seed %llu: %llu bytes echoed but only %llu sent (duplication)",
                  kind_name[c->kind], (unsigned long long)c->seed,
                  (unsigned long long)(c->rcvd + (uint64_t)n), (unsigned long long)c->sent);
            st_verify(c->seed, c->rcvd, cli_buf, (size_t)n);
            c->fnv_rcvd = pl_fnv(c->fnv_rcvd, cli_buf, (size_t)n);
            c->rcvd += (uint64_t)n;
            cl->bytes_rcvd += (uint64_t)n;
            limit -= (uint64_t)n;
            cl->last_progress = pl_now();
            if (c->kind == K_RESET && c->reset_at && c->rcvd >= c->reset_at) {
                cli_reset(cl, c);
                return 1;
            }
            if (c->rcvd == c->msg_end) {
                cli_next_msg(cl, c);
                if (c->rcvd == c->msg_end) { /* no further message */
                    if (c->kind != K_HALFCLOSE) {
                        cli_finish(cl, c);
                        return 1;
                    }
                    /* Half-closed: read on to the server's EOF. */
                }
            }
            continue;
        }
        if (n == 0) {
            CHECK(c->kind == K_HALFCLOSE && c->wr_shut && c->rcvd == c->msg_end &&
                      c->msgs_left == 0,
                  "%s conn seed %llu: unexpected EOF after %llu of %llu bytes", kind_name[c->kind],
                  (unsigned long long)c->seed, (unsigned long long)c->rcvd,
                  (unsigned long long)c->sent);
            cli_finish(cl, c);
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        FAIL("%s conn seed %llu: read after %llu bytes", kind_name[c->kind],
             (unsigned long long)c->seed, (unsigned long long)c->rcvd);
    }
    return 0;
}

static void cli_progress(struct cli *cl, struct cli_conn *c) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        OK(getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len));
        if (err == EINPROGRESS)
            return;
        errno = err;
        CHECK(err == 0, "client connect (conn seed %llu) failed", (unsigned long long)c->seed);
        c->state = C_RUNNING;
    }
    if (c->state != C_RUNNING)
        return;
    for (;;) {
        uint64_t before = c->rcvd + c->sent;
        int blocked = cl->barrier && c->msg_idx >= 1 && cl->pinged < cl->nconns;
        while (!blocked && c->sent < c->msg_end) {
            uint64_t k = c->msg_end - c->sent;
            size_t want = k < CHUNK ? (size_t)k : CHUNK;
            st_fill(c->seed, c->sent, cli_buf, want);
            ssize_t n = write(c->fd, cli_buf, want);
            if (n > 0) {
                c->fnv_sent = pl_fnv(c->fnv_sent, cli_buf, (size_t)n);
                c->sent += (uint64_t)n;
                cl->bytes_sent += (uint64_t)n;
                cl->last_progress = pl_now();
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            FAIL("%s conn seed %llu: write after %llu bytes", kind_name[c->kind],
                 (unsigned long long)c->seed, (unsigned long long)c->sent);
        }
        if (c->kind == K_HALFCLOSE && !c->wr_shut && cli_all_sent(c)) {
            /* Our last byte is written: send FIN, then read the echo to EOF. */
            OK(shutdown(c->fd, SHUT_WR));
            c->wr_shut = 1;
        }
        if (c->kind == K_SLOW)
            return; /* reads only on its timer */
        if (cli_read(cl, c, UINT64_MAX))
            return;
        if (c->rcvd + c->sent == before)
            return;
    }
}

static void cli_slow_ticks(struct cli *cl, struct cli_conn *conns, int n) {
    double now = pl_now();
    for (int i = 0; i < n; i++) {
        struct cli_conn *c = &conns[i];
        if (c->kind != K_SLOW || c->state != C_RUNNING || now < c->next_read)
            continue;
        c->next_read = now + SLOW_TICK;
        if (!cli_read(cl, c, SLOW_CHUNK))
            cli_progress(cl, c); /* a completed message may allow more writing */
    }
}

static void cli_dump_stuck(struct cli_conn *conns, int n) {
    int shown = 0;
    for (int i = 0; i < n && shown < 10; i++) {
        struct cli_conn *c = &conns[i];
        if (c->state == C_CONNECTING || c->state == C_RUNNING) {
            fprintf(stderr,
                    "  stuck: conn %d kind %s state %d msg %d sent %llu rcvd %llu msg_end %llu "
                    "wr_shut %d\n",
                    i, kind_name[c->kind], c->state, c->msg_idx, (unsigned long long)c->sent,
                    (unsigned long long)c->rcvd, (unsigned long long)c->msg_end, c->wr_shut);
            shown++;
        }
    }
}

/* Runs the event loop until `total` connections finished, keeping at most `parallel`
 * open (phase 2) or all of them (phase 1). */
static void cli_run(struct cli *cl, struct cli_conn *conns, int total, int parallel,
                    uint64_t seed_base, int phase1) {
    struct epoll_event evs[512];
    int opened = 0;
    cl->done = 0;
    cl->last_progress = pl_now();
    while (cl->done < total) {
        while (opened < total && opened - cl->done < parallel) {
            struct cli_conn *c = NULL;
            enum kind k = K_SHORT;
            if (phase1) {
                c = &conns[opened];
                if (cl->only >= 0)
                    k = (enum kind)cl->only;
                /* Fixed shares: 2% resetters, 2% slow readers, a third half-closers. */
                else if (opened % 50 == 7)
                    k = K_RESET;
                else if (opened % 50 == 13)
                    k = K_SLOW;
                else if (opened % 3 == 0)
                    k = K_HALFCLOSE;
                else
                    k = K_NORMAL;
            } else {
                /* Phase 2 has `parallel` slots for `total` connections: reuse a finished
                 * one (there is one: fewer than `parallel` are open). */
                for (int i = 0; i < parallel && !c; i++)
                    if (conns[i].state == C_DONE || conns[i].state == C_FREE)
                        c = &conns[i];
                CHECK(c != NULL, "no free connection slot");
            }
            cli_open(cl, c, seed_base + (uint64_t)opened, k);
            opened++;
        }
        int timeout = cl->active_slow > 0 ? 2 : 200;
        int n = epoll_wait(cl->ep, evs, 512, timeout);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n >= 0, "client epoll_wait");
        int pinged_before = cl->pinged;
        for (int i = 0; i < n; i++)
            cli_progress(cl, evs[i].data.ptr);
        cli_slow_ticks(cl, conns, phase1 ? total : parallel);
        if (phase1 && pinged_before < cl->nconns && cl->pinged == cl->nconns) {
            /* The barrier fell: every connection is open and served at once. Edge-
             * triggered events will not repeat, so start each one by hand. */
            printf("CLIENT all %d connections established and pinged\n", cl->nconns);
            for (int i = 0; i < total; i++)
                cli_progress(cl, &conns[i]);
        }
        if (pl_now() - cl->last_progress > 20) {
            fprintf(stderr, "client: no byte moved for 20 s; %d of %d connections done\n",
                    cl->done, total);
            cli_dump_stuck(conns, phase1 ? total : parallel);
            FAIL("transfer stalled");
        }
    }
}

static void mode_client(int argc, char **argv) {
    CHECK(argc == 7 || argc == 8, "usage: client PORT NCONC NSHORT SEED MAXMSG [KIND]");
    int port = atoi(argv[2]);
    int nconc = atoi(argv[3]);
    int nshort = atoi(argv[4]);
    uint64_t seed = strtoull(argv[5], NULL, 0);
    uint64_t maxmsg = strtoull(argv[6], NULL, 0);
    CHECK(port > 0 && nconc > 0 && nshort >= 0 && maxmsg >= 1024, "bad arguments");
    raise_nofile();

    struct cli cl = {0};
    cl.ep = OK(epoll_create1(EPOLL_CLOEXEC));
    cl.addr.sin_family = AF_INET;
    cl.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cl.addr.sin_port = htons((uint16_t)port);
    st_env_addr("ST_CLIENT_ADDR", &cl.addr);
    cl.maxmsg = maxmsg;
    /* Optional: one kind of connection only, to narrow a failure down. */
    cl.only = -1;
    for (int k = K_NORMAL; argc == 8 && k <= K_SLOW; k++)
        if (strcmp(argv[7], kind_name[k]) == 0)
            cl.only = k;
    CHECK(argc == 7 || cl.only >= 0, "KIND must be normal, halfclose, reset or slow");

    double t0 = pl_now();
    STEP("concurrent connections");
    struct cli_conn *conns = calloc((size_t)nconc, sizeof *conns);
    CHECK(conns != NULL, "calloc");
    cl.barrier = 1;
    cl.nconns = nconc;
    cli_run(&cl, conns, nconc, nconc, seed << 32, 1);
    double t1 = pl_now();
    printf("CLIENT phase1 conns=%d normal=%d halfclose=%d reset=%d slow=%d sent=%llu "
           "rcvd=%llu secs=%.2f\n",
           nconc, cl.count[K_NORMAL], cl.count[K_HALFCLOSE], cl.count[K_RESET], cl.count[K_SLOW],
           (unsigned long long)cl.bytes_sent, (unsigned long long)cl.bytes_rcvd, t1 - t0);

    STEP("short connections");
    cl.barrier = 0;
    int parallel = 64;
    struct cli_conn *shorts = calloc((size_t)parallel, sizeof *shorts);
    CHECK(shorts != NULL, "calloc");
    if (nshort > 0)
        cli_run(&cl, shorts, nshort, parallel, (seed << 32) + 0x80000000ull, 0);
    double t2 = pl_now();
    printf("CLIENT phase2 short=%d secs=%.2f\n", cl.count[K_SHORT], t2 - t1);
    printf("CLIENT ok conns=%d short=%d bytes_sent=%llu bytes_rcvd=%llu checksum=%016llx\n",
           nconc, cl.count[K_SHORT], (unsigned long long)cl.bytes_sent,
           (unsigned long long)cl.bytes_rcvd, (unsigned long long)cl.sum_fnv);
    exit(0);
}

/* ------------------------------------------------------------------------------------ */
/* largesend: regression for a send continued from a completion on an event-loop thread
 * (the shim accepts part of a large write, queues it, and continues the short sends from
 * their completions; that continuation once posted a request to its own ring forever). */

struct ls_args {
    int lfd;
    size_t bytes;
    uint64_t writes, short_writes, eagain;
};

static void *ls_server(void *arg) {
    struct ls_args *a = arg;
    int ep = OK(epoll_create1(EPOLL_CLOEXEC));
    pl_set_nonblock(a->lfd, 1);
    add_ep(ep, a->lfd, EPOLLIN, &listen_tag);
    uint8_t *resp = malloc(a->bytes);
    CHECK(resp != NULL, "malloc");
    st_fill(4242, 0, resp, a->bytes);
    int fd = -1;
    size_t off = 0;
    int writing = 0;
    struct epoll_event ev;
    for (;;) {
        /* Every wait is an epoll_wait: this is an event-loop thread for the shim. */
        int n = epoll_wait(ep, &ev, 1, -1);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n == 1, "largesend server epoll_wait returned %d", n);
        if (ev.data.ptr == &listen_tag) {
            STEP("largesend accept");
            fd = OK(accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
            add_ep(ep, fd, EPOLLIN | EPOLLRDHUP, NULL);
            continue;
        }
        if (!writing && off == 0) {
            char req[8];
            ssize_t r = read(fd, req, sizeof req);
            if (r < 0 && errno == EAGAIN)
                continue;
            CHECK(r == 8 && memcmp(req, "SENDBULK", 8) == 0, "largesend request: read %zd", r);
            writing = 1;
            STEP("largesend writing");
        }
        if (writing) {
            while (off < a->bytes) {
                ssize_t w = write(fd, resp + off, a->bytes - off);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w < 0 && errno == EAGAIN) {
                    a->eagain++;
                    mod_ep(ep, fd, EPOLLOUT, NULL);
                    break;
                }
                CHECK(w > 0, "largesend write at offset %zu", off);
                a->writes++;
                if ((size_t)w < a->bytes - off)
                    a->short_writes++;
                off += (size_t)w;
            }
            if (off < a->bytes)
                continue;
            /* All accepted: FIN must follow the last queued byte. */
            OK(shutdown(fd, SHUT_WR));
            writing = 0;
            mod_ep(ep, fd, EPOLLIN | EPOLLRDHUP, NULL);
            STEP("largesend waiting for the client's close");
            continue;
        }
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EAGAIN)
            continue;
        CHECK(r == 0, "largesend: expected the client's EOF, read returned %zd", r);
        break;
    }
    OK(close(fd));
    OK(close(ep));
    free(resp);
    return NULL;
}

static void mode_largesend(int argc, char **argv) {
    CHECK(argc == 3, "usage: largesend BYTES");
    struct ls_args a = {.bytes = strtoull(argv[2], NULL, 0)};
    CHECK(a.bytes > 0, "BYTES");
    a.lfd = pl_listen(AF_INET, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, ls_server, &a) == 0, "pthread_create");
    STEP("largesend connect");
    int fd = pl_connect_to(a.lfd);
    pl_write_all(fd, "SENDBULK", 8);
    STEP("largesend reading");
    uint8_t *buf = malloc(CHUNK);
    CHECK(buf != NULL, "malloc");
    size_t got = 0;
    uint64_t fnv = PL_FNV_INIT;
    for (int i = 0;; i++) {
        /* The first 64 reads are small and delayed: the server's queue fills, its writes
         * come back short, and the shim continues its sends from completions. */
        size_t want = i < 64 ? 1024 : CHUNK;
        if (i < 64)
            pl_sleep_ms(2);
        ssize_t r = read(fd, buf, want);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "largesend client read after %zu bytes", got);
        if (r == 0)
            break;
        CHECK(got + (size_t)r <= a.bytes, "largesend: more than %zu bytes received", a.bytes);
        st_verify(4242, got, buf, (size_t)r);
        fnv = pl_fnv(fnv, buf, (size_t)r);
        got += (size_t)r;
    }
    CHECK(got == a.bytes, "largesend: EOF after %zu of %zu bytes", got, a.bytes);
    OK(close(fd));
    pthread_join(th, NULL);
    printf("LARGESEND ok bytes=%zu fnv=%016llx writes=%llu short_writes=%llu eagain=%llu\n", got,
           (unsigned long long)fnv, (unsigned long long)a.writes,
           (unsigned long long)a.short_writes, (unsigned long long)a.eagain);
    free(buf);
    OK(close(a.lfd));
    exit(0);
}

/* ------------------------------------------------------------------------------------ */
/* echo: a small verified exchange through an epoll server thread, then stay alive until
 * stdin closes (the harness reads the counters page meanwhile). */

#define ECHO_CONNS 4
#define ECHO_BYTES (256 * 1024)

static void *echo_server(void *arg) {
    struct worker *w = arg;
    struct epoll_event evs[16];
    for (;;) {
        int n = epoll_wait(w->ep, evs, 16, -1);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "echo server epoll_wait");
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listen_tag)
                srv_accept(w);
            else
                srv_serve(w, evs[i].data.ptr);
        }
        if (w->closed == ECHO_CONNS)
            return NULL;
    }
}

static void mode_echo(int argc, char **argv) {
    (void)argv;
    CHECK(argc == 2, "usage: echo");
    struct worker w = {0};
    w.head.next = w.head.prev = &w.head;
    w.lfd = pl_listen(AF_INET, SOCK_NONBLOCK);
    w.ep = OK(epoll_create1(EPOLL_CLOEXEC));
    add_ep(w.ep, w.lfd, EPOLLIN, &listen_tag);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, echo_server, &w) == 0, "pthread_create");
    uint8_t *buf = malloc(16384);
    CHECK(buf != NULL, "malloc");
    for (int k = 0; k < ECHO_CONNS; k++) {
        STEP("echo exchange");
        int fd = pl_connect_to(w.lfd);
        /* Chunk by chunk (write, then read its echo) so a blocking client never waits
         * in write() while the server waits for it to read. */
        for (size_t off = 0; off < ECHO_BYTES; off += 16384) {
            st_fill((uint64_t)k, off, buf, 16384);
            pl_write_all(fd, buf, 16384);
            pl_read_exact(fd, buf, 16384);
            st_verify((uint64_t)k, off, buf, 16384);
        }
        OK(shutdown(fd, SHUT_WR));
        pl_expect_eof(fd);
        OK(close(fd));
    }
    pthread_join(th, NULL);
    printf("ECHO OK conns=%d bytes=%d\n", ECHO_CONNS, ECHO_CONNS * ECHO_BYTES);
    STEP("waiting for stdin to close");
    char c;
    for (;;) {
        ssize_t r = read(0, &c, 1);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    exit(0);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s server|client|largesend|echo ...\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "server") == 0) {
        /* Lives as long as its test; the harness stops it with SIGTERM. */
        st_init("st_stress-server", 300);
        mode_server(argc, argv);
    } else if (strcmp(argv[1], "client") == 0) {
        st_init("st_stress-client", 120);
        mode_client(argc, argv);
    } else if (strcmp(argv[1], "largesend") == 0) {
        st_init("st_stress-largesend", 20);
        mode_largesend(argc, argv);
    } else if (strcmp(argv[1], "echo") == 0) {
        st_init("st_stress-echo", 30);
        mode_echo(argc, argv);
    }
    fprintf(stderr, "%s: unknown mode '%s'\n", argv[0], argv[1]);
    return 2;
}
