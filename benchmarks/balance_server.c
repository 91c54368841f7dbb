/* balance_server.c - multi-threaded 1 KiB echo server with one SO_REUSEPORT listener per
 * worker thread: the server shape RINGSHIM_BALANCE=exact is for (benchmarks/balance.sh).
 *
 *   balance_server -a ADDR -p PORT [-t WORKERS]     (WORKERS default 4, at most 64)
 *
 * Each worker thread opens its own listening socket (SO_REUSEPORT, bound to ADDR:PORT)
 * and runs its own level-triggered epoll loop; the kernel (or the shim's reuseport
 * program) decides which listener gets each new connection. On accept the worker writes
 * one byte, its worker number (0..WORKERS-1, a raw byte), so the client learns who
 * accepted the connection; after that it echoes every byte it receives (read, then write;
 * a short write keeps the rest and waits for EPOLLOUT, as echo_epoll.c does).
 *
 * Plain libc, nothing shim-specific: the shim is LD_PRELOADed by the harness.
 * Prints "balance_server: ready" to stderr once every worker listens. On SIGTERM/SIGINT
 * prints the connections each worker accepted and still holds, then exits:
 *   balance_server: accepted=a,b,... open=a,b,...
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXW 64
#define BUFSZ 16384

struct conn {
    int fd;
    size_t off, len; /* pending output bytes buf[off..len) */
    char buf[BUFSZ];
};

static struct sockaddr_in addr;
static int nworkers = 4;
static pthread_barrier_t ready;
static atomic_long accepted[MAXW], open_now[MAXW];

static void die(const char *what) {
    fprintf(stderr, "balance_server: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void drop(int ep, struct conn *c, int id) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
    atomic_fetch_sub(&open_now[id], 1);
}

static void *worker(void *arg) {
    int id = (int)(long)arg, one = 1;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ls < 0) die("socket");
    if (setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(ls, 1024) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev) < 0) die("epoll_ctl listener");
    pthread_barrier_wait(&ready);

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) { /* this worker's listener */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    atomic_fetch_add(&accepted[id], 1);
                    atomic_fetch_add(&open_now[id], 1);
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    unsigned char who = (unsigned char)id;
                    c = malloc(sizeof *c);
                    if (!c || write(fd, &who, 1) != 1) {
                        close(fd);
                        free(c);
                        atomic_fetch_sub(&open_now[id], 1);
                        continue;
                    }
                    c->fd = fd;
                    c->off = c->len = 0;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
                        close(fd);
                        free(c);
                        atomic_fetch_sub(&open_now[id], 1);
                    }
                }
                continue;
            }
            if (c->len > c->off) { /* waiting for EPOLLOUT */
                if (!(evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
                ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) continue;
                    drop(ep, c, id);
                    continue;
                }
                c->off += (size_t)w;
                if (c->off == c->len) {
                    c->off = c->len = 0;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                }
                continue;
            }
            ssize_t r = read(c->fd, c->buf, BUFSZ);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                drop(ep, c, id);
                continue;
            }
            if (r < 0) continue;
            ssize_t w = write(c->fd, c->buf, (size_t)r);
            if (w < 0) {
                if (errno != EAGAIN && errno != EINTR) {
                    drop(ep, c, id);
                    continue;
                }
                w = 0;
            }
            if (w < r) { /* keep the rest, wait until writable */
                c->off = (size_t)w;
                c->len = (size_t)r;
                struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
            }
        }
    }
    return NULL;
}

static void print_list(const char *name, atomic_long *v) {
    fprintf(stderr, " %s=", name);
    for (int i = 0; i < nworkers; i++) fprintf(stderr, "%s%ld", i ? "," : "", atomic_load(&v[i]));
}

int main(int argc, char **argv) {
    const char *a = NULL;
    int port = 0, opt;
    while ((opt = getopt(argc, argv, "a:p:t:")) != -1) {
        switch (opt) {
        case 'a': a = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 't': nworkers = atoi(optarg); break;
        default: goto usage;
        }
    }
    if (!a || port <= 0 || port > 65535 || nworkers < 1 || nworkers > MAXW) goto usage;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, a, &addr.sin_addr) != 1) goto usage;
    signal(SIGPIPE, SIG_IGN);

    /* Workers inherit a mask blocking SIGTERM/SIGINT; main waits for them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    pthread_barrier_init(&ready, NULL, (unsigned)nworkers + 1);
    for (long i = 0; i < nworkers; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, (void *)i) != 0) die("pthread_create");
        pthread_detach(t);
    }
    pthread_barrier_wait(&ready);
    fprintf(stderr, "balance_server: ready: %d workers on %s:%d\n", nworkers, a, port);

    int sig;
    sigwait(&set, &sig);
    fprintf(stderr, "balance_server:");
    print_list("accepted", accepted);
    print_list("open", open_now);
    fprintf(stderr, "\n");
    fflush(stderr);
    _exit(0);

usage:
    fprintf(stderr, "usage: %s -a ADDR -p PORT [-t WORKERS (1..%d)]\n", argv[0], MAXW);
    return 2;
}
