/*
 * RINGSHIM_BALANCE=exact on the model of seed 000/002: WORKERS threads, each with its own
 * SO_REUSEPORT listener on one port and its own epoll loop. Each accepted connection
 * gets one byte naming its worker and stays open until the client closes it.
 *
 * Phase 1: the client opens CONNS connections one after another (each waits for its
 * byte, so every accept is counted before the next SYN). Phase 2: it closes every
 * connection of workers 0 and 1, waits until those workers closed their ends, and
 * opens as many again.
 *
 * Prints the per-worker spread of both phases. With BALANCE_EXPECT_EXACT=1 it also
 * checks what exact balancing promises: phase 1 spreads evenly, and phase 2's
 * connections all go to the two workers that were emptied, evenly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#define WORKERS 4
#define CONNS 40

static void die(const char *what) {
    fprintf(stderr, "FAIL bl_reuseport: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int port;
static pthread_barrier_t ready;
static atomic_int closed_by_server[WORKERS];

static void *worker(void *arg) {
    int id = (int)(long)arg;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        die("reuseport socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 64) < 0)
        die("bind/listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0)
        die("epoll_ctl listener");
    pthread_barrier_wait(&ready);
    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    char b = (char)('0' + id);
                    if (write(c, &b, 1) != 1)
                        die("greeting");
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) < 0)
                        die("epoll_ctl connection");
                }
                if (errno != EAGAIN)
                    die("accept4");
            } else {
                char buf[16];
                ssize_t r = read(fd, buf, sizeof buf);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    close(fd);
                    atomic_fetch_add(&closed_by_server[id], 1);
                }
            }
        }
    }
    return NULL;
}

/* Opens one connection; returns its fd and stores the worker that accepted it. */
static int open_one(int *who) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    char b;
    if (read(c, &b, 1) != 1)
        die("read greeting");
    *who = b - '0';
    if (*who < 0 || *who >= WORKERS) {
        fprintf(stderr, "FAIL bl_reuseport: bad greeting %d\n", *who);
        exit(1);
    }
    return c;
}

static void print_spread(const char *phase, const int *count) {
    printf("%s:", phase);
    for (int w = 0; w < WORKERS; w++)
        printf(" %d", count[w]);
    printf("\n");
}

int main(void) {
    int expect_exact = getenv("BALANCE_EXPECT_EXACT") && atoi(getenv("BALANCE_EXPECT_EXACT"));
    /* A free port: bind a throwaway reuseport-less socket to port 0. */
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(probe, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(probe, (struct sockaddr *)&a, &al) < 0)
        die("probe port");
    port = ntohs(a.sin_port);
    close(probe);

    pthread_barrier_init(&ready, NULL, WORKERS + 1);
    for (long i = 0; i < WORKERS; i++) {
        pthread_t t;
        pthread_create(&t, NULL, worker, (void *)i);
        pthread_detach(t);
    }
    pthread_barrier_wait(&ready);

    int fds[CONNS], owner[CONNS], count[WORKERS] = {0};
    for (int i = 0; i < CONNS; i++) {
        fds[i] = open_one(&owner[i]);
        count[owner[i]]++;
    }
    print_spread("phase 1 (connections per worker)", count);
    if (expect_exact)
        for (int w = 0; w < WORKERS; w++)
            if (count[w] != CONNS / WORKERS) {
                fprintf(stderr, "FAIL bl_reuseport: phase 1 not even\n");
                return 1;
            }

    /* Phase 2: empty workers 0 and 1, then open as many connections again. */
    int emptied = 0;
    for (int i = 0; i < CONNS; i++)
        if (owner[i] <= 1) {
            close(fds[i]);
            fds[i] = -1;
            emptied++;
        }
    for (int tries = 0; atomic_load(&closed_by_server[0]) + atomic_load(&closed_by_server[1]) < emptied; tries++) {
        if (tries > 5000) {
            fprintf(stderr, "FAIL bl_reuseport: workers did not see the closes\n");
            return 1;
        }
        usleep(1000);
    }
    int again[WORKERS] = {0};
    for (int i = 0; i < emptied; i++) {
        int who;
        open_one(&who);
        again[who]++;
    }
    print_spread("phase 2 (new connections per worker after emptying workers 0 and 1)", again);
    if (expect_exact && (again[0] != emptied / 2 || again[1] != emptied - emptied / 2)) {
        fprintf(stderr, "FAIL bl_reuseport: phase 2 did not refill the emptied workers\n");
        return 1;
    }
    printf("ok bl_reuseport\n");
    return 0;
}
