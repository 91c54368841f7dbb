/* echo_epoll.c - 1 KiB echo server: plain libc epoll, level-triggered, non-blocking,
 * one thread. This is the "unmodified server" the shim is measured on.
 *
 *   echo_epoll ADDR PORT
 *
 * Echoes every byte back. A connection whose send would block keeps the rest in a
 * per-connection buffer, stops reading and waits for EPOLLOUT (so memory stays bounded).
 * Exits on SIGTERM/SIGINT. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ 16384

struct conn {
    int fd;
    size_t off, len; /* pending output bytes buf[off..len) */
    char buf[BUFSZ];
};

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

static void die(const char *what) { perror(what); exit(1); }

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s ADDR PORT\n", argv[0]); return 2; }
    struct sigaction sa = {0};
    sa.sa_handler = on_sig;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(ls, 4096) < 0) die("listen");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0) die("epoll_ctl listener");
    fprintf(stderr, "echo_epoll: listening on %s:%s\n", argv[1], argv[2]);

    struct epoll_event evs[512];
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) { /* listener */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = malloc(sizeof *c);
                    if (!c) { close(fd); continue; }
                    c->fd = fd;
                    c->off = c->len = 0;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) { close(fd); free(c); }
                }
                continue;
            }
            if (c->len > c->off) { /* waiting for EPOLLOUT */
                if (!(evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
                ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) continue;
                    drop(ep, c);
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
                drop(ep, c);
                continue;
            }
            if (r < 0) continue;
            ssize_t w = write(c->fd, c->buf, (size_t)r);
            if (w < 0) {
                if (errno != EAGAIN && errno != EINTR) { drop(ep, c); continue; }
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
    return 0;
}
