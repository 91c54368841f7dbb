/* mt_proxy.c - a small multi-threaded TCP proxy on the model of Envoy (seed 000): every
 * worker thread has its own epoll instance and its own SO_REUSEPORT listening socket on
 * the same address and port, and owns every connection it accepts. The kernel's hash (or
 * the shim's reuseport program, RINGSHIM_BALANCE=exact) picks the listener, and so the
 * thread, of each new connection. Used by scenario_mtproxy in scripts/test-servers.sh.
 *
 *   mt_proxy -l ADDR:PORT -u ADDR:PORT [-t THREADS]     (IPv4; THREADS 1..64, default 2)
 *
 * Each accepted client connection gets its own upstream connection (non-blocking
 * connect: EINPROGRESS, then SO_ERROR once writable), and bytes are copied both ways
 * through one BUFSZ buffer per direction (filled by one read, emptied by writes):
 *   - edge-triggered epoll, as Envoy's event loop uses it: both sockets are registered
 *     once for EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET, and any event runs pump(), which moves
 *     bytes in both directions until every read and write is blocked (EAGAIN), so no
 *     edge is ever lost;
 *   - backpressure: a direction whose buffer still holds bytes the destination did not
 *     take (EAGAIN) stops reading its source; the bytes stay in the kernel (TCP pushes
 *     back) until the destination's EPOLLOUT edge lets pump() write and read again
 *     ("stalled" counts the writes that found the destination full);
 *   - half-close: EOF from one side is forwarded as shutdown(SHUT_WR) to the other once
 *     the buffered bytes of that direction are written; the connection ends when both
 *     directions are finished;
 *   - errors: a failed connect, read or write, EPOLLERR, or a reset ends both sockets;
 *     the other side is reset too (SO_LINGER 0), as a proxy propagates a reset.
 *
 * Plain libc, nothing shim-specific: the harness LD_PRELOADs the shim. Prints
 * "mt_proxy: ready ..." to stderr once every thread listens. SIGTERM or SIGINT stops the
 * threads (an eventfd in every epoll), which close their sockets; then one line per
 * thread goes to stdout and the process exits 0:
 *   thread 0 accepted 17 open 0 stalled 3
 * (accepted: client connections; open: still open when stopped; stalled: see above).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXT 64
#define BUFSZ 65536

struct conn;

/* One socket of a proxied connection, and the bytes read from it not yet written to
 * the other socket: buf[off..len). */
struct end {
    int fd;
    int eof;  /* read() returned 0: forward SHUT_WR once buf is written */
    int shut; /* shutdown(fd, SHUT_WR) done */
    size_t off, len;
    struct conn *conn;
    char buf[BUFSZ];
};

struct conn {
    struct end e[2]; /* 0: client, 1: upstream */
    int connecting;  /* upstream connect() in progress */
    int dead;        /* closed; freed after the current batch of events */
    struct conn *prev, *next;
};

struct worker {
    int id;
    pthread_t thread;
    long accepted, open, open_at_stop, stalled;
    struct conn *conns; /* open connections of this thread */
    struct conn *dead;  /* closed during the current batch (events may still name them) */
};

static struct sockaddr_in listen_addr, upstream_addr;
static int nthreads = 2;
static int stop_fd; /* eventfd: readable once the threads must stop */
static char stop_tag, listen_tag; /* epoll data of the stop eventfd and the listener */
static struct worker workers[MAXT];
static pthread_barrier_t ready;

static void die(const char *what) {
    fprintf(stderr, "mt_proxy: error: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Closes both sockets; reset: make the kernel send RST instead of FIN. */
static void end_conn(struct worker *w, struct conn *c, int reset) {
    for (int i = 0; i < 2; i++) {
        if (c->e[i].fd < 0) continue;
        if (reset) {
            struct linger l = {.l_onoff = 1, .l_linger = 0};
            setsockopt(c->e[i].fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        close(c->e[i].fd);
        c->e[i].fd = -1;
    }
    if (c->prev) c->prev->next = c->next;
    else w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->dead = 1;
    c->next = w->dead;
    w->dead = c;
    w->open--;
}

static void reap(struct worker *w) {
    while (w->dead) {
        struct conn *c = w->dead;
        w->dead = c->next;
        free(c);
    }
}

/* Moves bytes from src to dst: writes what src's buffer holds, reads more from src only
 * once it is all written, forwards EOF after the last byte. Returns 1 if anything
 * happened, 0 if blocked both ways, -1 on an error. */
static int move(struct worker *w, struct end *src, struct end *dst) {
    int progress = 0;
    for (;;) {
        while (src->off < src->len) {
            ssize_t n = send(dst->fd, src->buf + src->off, src->len - src->off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno != EAGAIN) return -1;
                w->stalled++; /* src is not read until dst's EPOLLOUT edge */
                return progress;
            }
            src->off += (size_t)n;
            progress = 1;
        }
        src->off = src->len = 0;
        if (src->eof) break;
        ssize_t n = read(src->fd, src->buf, BUFSZ);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return progress; /* src's EPOLLIN edge resumes */
            return -1;
        }
        progress = 1;
        if (n == 0) {
            src->eof = 1;
            break;
        }
        src->len = (size_t)n;
    }
    if (!dst->shut) { /* EOF and every byte written: the half-close goes on */
        if (shutdown(dst->fd, SHUT_WR) < 0 && errno != ENOTCONN) return -1;
        dst->shut = 1;
        progress = 1;
    }
    return progress;
}

/* Runs both directions until neither can make progress; ends the connection when both
 * are finished or on an error. */
static void pump(struct worker *w, struct conn *c) {
    for (;;) {
        int a = move(w, &c->e[0], &c->e[1]);
        int b = a < 0 ? -1 : move(w, &c->e[1], &c->e[0]);
        if (a < 0 || b < 0) {
            end_conn(w, c, 1);
            return;
        }
        if (c->e[0].shut && c->e[1].shut) {
            end_conn(w, c, 0);
            return;
        }
        if (!a && !b) return;
    }
}

static void add(int ep, struct end *e) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = e};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ev) < 0) die("epoll_ctl connection");
}

/* A new client connection: start its upstream connection. */
static void on_client(struct worker *w, int ep, int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int up = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct conn *c = calloc(1, sizeof *c);
    if (up < 0 || !c) {
        if (up >= 0) close(up);
        free(c);
        close(fd);
        return;
    }
    setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->e[0].fd = fd;
    c->e[1].fd = up;
    c->e[0].conn = c->e[1].conn = c;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->open++;
    int r = connect(up, (struct sockaddr *)&upstream_addr, sizeof upstream_addr);
    if (r < 0 && errno != EINPROGRESS) {
        end_conn(w, c, 1);
        return;
    }
    c->connecting = r < 0;
    add(ep, &c->e[0]);
    add(ep, &c->e[1]);
    if (!c->connecting) pump(w, c);
}

static void on_event(struct worker *w, struct end *e, uint32_t events) {
    struct conn *c = e->conn;
    if (c->dead) return;
    if (c->connecting) {
        if (e != &c->e[1]) return; /* client bytes wait in the kernel until connected */
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err == 0 && !(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            end_conn(w, c, 1); /* refused or unreachable: reset the client */
            return;
        }
        c->connecting = 0;
    } else if (events & EPOLLERR) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            end_conn(w, c, 1);
            return;
        }
    }
    pump(w, c);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    char name[16];
    snprintf(name, sizeof name, "mtp-w%d", w->id);
    pthread_setname_np(pthread_self(), name);
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ls < 0) die("socket");
    if (setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
    if (setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
    if (bind(ls, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0) die("bind");
    if (listen(ls, 1024) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.ptr = &listen_tag};
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stop_tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, stop_fd, &sev) < 0)
        die("epoll_ctl");
    pthread_barrier_wait(&ready);

    struct epoll_event evs[256];
    for (int stop = 0; !stop;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &stop_tag) {
                stop = 1;
            } else if (p == &listen_tag) { /* edge-triggered: accept until EAGAIN */
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    w->accepted++;
                    on_client(w, ep, fd);
                }
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                    fprintf(stderr, "mt_proxy: error: thread %d: accept4: %s\n", w->id,
                            strerror(errno));
            } else {
                on_event(w, p, evs[i].events);
            }
        }
        reap(w); /* no event of this batch refers to them any more */
    }
    /* Stopped: whatever is still open is closed, then freed. */
    w->open_at_stop = w->open;
    while (w->conns) end_conn(w, w->conns, 0);
    reap(w);
    close(ls);
    close(ep);
    return NULL;
}

static int parse_addr(const char *s, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    int port = atoi(colon + 1);
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)port);
    return port > 0 && port < 65536 && inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *l = NULL, *u = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "l:u:t:")) != -1) {
        switch (opt) {
        case 'l': l = optarg; break;
        case 'u': u = optarg; break;
        case 't': nthreads = atoi(optarg); break;
        default: goto usage;
        }
    }
    if (!l || !u || parse_addr(l, &listen_addr) || parse_addr(u, &upstream_addr) || nthreads < 1 ||
        nthreads > MAXT)
        goto usage;

    /* The threads inherit a mask blocking SIGTERM/SIGINT; main waits for them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd < 0) die("eventfd");

    pthread_barrier_init(&ready, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++) {
        workers[i].id = i;
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0)
            die("pthread_create");
    }
    pthread_barrier_wait(&ready);
    fprintf(stderr, "mt_proxy: ready: %d threads on %s -> %s\n", nthreads, l, u);

    int sig;
    sigwait(&set, &sig);
    uint64_t one = 1;
    if (write(stop_fd, &one, sizeof one) != sizeof one) die("write eventfd");
    for (int i = 0; i < nthreads; i++) pthread_join(workers[i].thread, NULL);
    for (int i = 0; i < nthreads; i++)
        printf("thread %d accepted %ld open %ld stalled %ld\n", i, workers[i].accepted,
               workers[i].open_at_stop, workers[i].stalled);
    fflush(stdout);
    return 0;

usage:
    fprintf(stderr, "usage: %s -l ADDR:PORT -u ADDR:PORT [-t THREADS (1..%d)]\n", argv[0], MAXT);
    return 2;
}
