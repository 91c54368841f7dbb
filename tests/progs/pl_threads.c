/* Preload tests: one process, many threads sharing sockets and one epoll instance.
 * Usage: pl_threads mixed
 *
 *  - acceptor thread A accepts connections and hands the fds to worker thread B, which
 *    reads and writes them and closes them (sockets used by threads that did not create
 *    them), while two client threads talk to them;
 *  - waiter thread C blocks in epoll_wait on a shared epoll fd while controller thread D
 *    adds, modifies (EPOLL_CTL_MOD) and deletes watched sockets: every change must take
 *    effect for the waiter already blocked (a ready fd added or re-armed wakes it; a
 *    deleted one never reports again). */
#include "pl_util.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

#define CONNS_PER_CLIENT 3
#define CLIENTS 2
#define PAYLOAD (64 * 1024)
#define ROUNDS 20
#define TAG_STOP 1000

static int handoff[2]; /* A -> B: accepted fds */

static void *acceptor(void *arg) {
    int lfd = (int)(intptr_t)arg;
    for (int i = 0; i < CLIENTS * CONNS_PER_CLIENT; i++) {
        int fd = OK(accept(lfd, NULL, NULL));
        pl_write_all(handoff[1], &fd, sizeof fd);
    }
    return NULL;
}

static void *worker(void *arg) {
    (void)arg;
    static uint8_t buf[PAYLOAD];
    for (int i = 0; i < CLIENTS * CONNS_PER_CLIENT; i++) {
        int fd;
        pl_read_exact(handoff[0], &fd, sizeof fd);
        uint32_t len;
        pl_read_exact(fd, &len, sizeof len);
        CHECK(len <= PAYLOAD, "request length %u", len);
        pl_read_exact(fd, buf, len);
        pl_write_all(fd, buf, len);
        pl_expect_eof(fd);
        close(fd);
    }
    return NULL;
}

static uint16_t g_port;

static void *client(void *arg) {
    int id = (int)(intptr_t)arg;
    static __thread uint8_t out[PAYLOAD], in[PAYLOAD];
    for (int k = 0; k < CONNS_PER_CLIENT; k++) {
        uint64_t seed = (uint64_t)(id * 100 + k);
        struct sockaddr_storage ss;
        socklen_t sl = pl_tcp_connect_addr(AF_INET, g_port, &ss);
        int fd = OK(socket(AF_INET, SOCK_STREAM, 0));
        OK(connect(fd, (struct sockaddr *)&ss, sl));
        uint32_t len = PAYLOAD - (uint32_t)k * 1000;
        pl_fill(seed, 0, out, len);
        pl_write_all(fd, &len, sizeof len);
        pl_write_all(fd, out, len);
        pl_read_exact(fd, in, len);
        pl_verify(seed, 0, in, len);
        OK(shutdown(fd, SHUT_WR));
        pl_expect_eof(fd);
        close(fd);
    }
    return NULL;
}

/* ---- shared epoll: waiter C and controller D */

struct report {
    uint32_t tag, events;
};

static int ep, stopfd;
static int wcli[2], wsrv[2]; /* two watched connections: client ends / server ends */
static int reports[2];       /* C -> D */

static void *waiter(void *arg) {
    (void)arg;
    for (;;) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 10000);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "waiter: epoll_wait returned %d (a change did not wake it)", n);
        for (int i = 0; i < n; i++) {
            uint32_t tag = (uint32_t)evs[i].data.u64;
            if (tag == TAG_STOP)
                return NULL;
            CHECK(tag < 20, "unknown tag %u", tag);
            if (evs[i].events & EPOLLIN) {
                /* Drain, so the level-triggered socket goes quiet before we report. */
                char b[64];
                while (read(wsrv[tag % 10], b, sizeof b) > 0) {
                }
                CHECK(errno == EAGAIN, "waiter drain");
            }
            struct report r = {tag, evs[i].events};
            pl_write_all(reports[1], &r, sizeof r);
        }
    }
}

static void expect_report(uint32_t tag, uint32_t events, const char *what) {
    STEP(what);
    pl_wait_for(reports[0], POLLIN, 5000);
    struct report r;
    pl_read_exact(reports[0], &r, sizeof r);
    CHECK(r.tag == tag && r.events == events, "%s: waiter reported tag %u events 0x%x, expected %u/0x%x",
          what, r.tag, r.events, tag, events);
}

static void ctl(int op, int fd, uint32_t events, uint32_t tag) {
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    OK(epoll_ctl(ep, op, fd, &ev));
}

/* Empties a watched socket while it is not registered (the waiter never reads it then). */
static void discard(int fd) {
    char b[64];
    while (read(fd, b, sizeof b) > 0) {
    }
    CHECK(errno == EAGAIN, "discard");
}

static void *controller(void *arg) {
    (void)arg;
    for (int round = 0; round < ROUNDS; round++) {
        int a = round % 2, b = 1 - a;
        STEP("controller: ADD a ready socket");
        discard(wsrv[a]); /* the byte sent while it was deleted last time */
        pl_write_all(wcli[a], "1", 1);
        pl_wait_queued(wsrv[a], 1, 5000);
        ctl(EPOLL_CTL_ADD, wsrv[a], EPOLLIN, (uint32_t)a);
        expect_report((uint32_t)a, EPOLLIN, "ADD of a readable socket wakes the waiter");
        ctl(EPOLL_CTL_MOD, wsrv[a], EPOLLOUT | EPOLLONESHOT, (uint32_t)a + 10);
        expect_report((uint32_t)a + 10, EPOLLOUT, "MOD to EPOLLOUT wakes the waiter");
        /* Re-arm for input (nothing pending: no event), then remove it and make it
         * readable: the waiter must not hear about it any more. */
        ctl(EPOLL_CTL_MOD, wsrv[a], EPOLLIN, (uint32_t)a);
        ctl(EPOLL_CTL_DEL, wsrv[a], 0, 0);
        pl_write_all(wcli[a], "2", 1);
        pl_wait_queued(wsrv[a], 1, 5000);
        /* The next report must be for the other socket, not the deleted one. */
        discard(wsrv[b]);
        ctl(EPOLL_CTL_ADD, wsrv[b], EPOLLIN, (uint32_t)b);
        pl_write_all(wcli[b], "3", 1);
        expect_report((uint32_t)b, EPOLLIN, "new arrival on the other socket");
        ctl(EPOLL_CTL_DEL, wsrv[b], 0, 0);
    }
    return NULL;
}

static void t_mixed(void) {
    OK(pipe(handoff));
    OK(pipe(reports));
    int lfd = pl_listen(AF_INET, 0);
    g_port = pl_port_of(lfd);
    ep = OK(epoll_create1(EPOLL_CLOEXEC));
    stopfd = OK(eventfd(0, EFD_NONBLOCK));
    ctl(EPOLL_CTL_ADD, stopfd, EPOLLIN, TAG_STOP);
    for (int i = 0; i < 2; i++) {
        pl_tcp_pair(&wcli[i], &wsrv[i]);
        pl_set_nonblock(wsrv[i], 1);
    }
    pthread_t ta, tb, tc, td, tcl[CLIENTS];
    STEP("start threads");
    CHECK(pthread_create(&tc, NULL, waiter, NULL) == 0, "pthread_create");
    CHECK(pthread_create(&ta, NULL, acceptor, (void *)(intptr_t)lfd) == 0, "pthread_create");
    CHECK(pthread_create(&tb, NULL, worker, NULL) == 0, "pthread_create");
    for (int i = 0; i < CLIENTS; i++)
        CHECK(pthread_create(&tcl[i], NULL, client, (void *)(intptr_t)i) == 0, "pthread_create");
    CHECK(pthread_create(&td, NULL, controller, NULL) == 0, "pthread_create");
    STEP("join controller");
    pthread_join(td, NULL);
    STEP("stop waiter");
    uint64_t one = 1;
    CHECK(write(stopfd, &one, sizeof one) == sizeof one, "eventfd write");
    pthread_join(tc, NULL);
    pl_set_nonblock(reports[0], 1);
    struct report extra;
    ssize_t r = read(reports[0], &extra, sizeof extra);
    CHECK(r < 0 && errno == EAGAIN, "stray report tag %u events 0x%x", extra.tag, extra.events);
    STEP("join echo threads");
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(tcl[i], NULL);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (int i = 0; i < 2; i++) {
        close(wcli[i]);
        close(wsrv[i]);
    }
    close(ep);
    close(stopfd);
    close(lfd);
}

/* ---- a socket read to EAGAIN by one thread, waited on by another
 *
 * Thread R polls the socket and reads it dry, then sleeps in poll() on a pipe alone.
 * Thread W waits for the socket in epoll_wait. The next bytes must wake W although R,
 * the last thread to read, is asleep elsewhere: a shim that arms the receive on R's
 * ring and lets R sleep outside it never delivers them. */
static int rs_sock, rs_armed[2], rs_release[2];

static void *rs_reader(void *arg) {
    (void)arg;
    pl_wait_for(rs_sock, POLLIN, 5000);
    char b[64];
    while (read(rs_sock, b, sizeof b) > 0) {
    }
    CHECK(errno == EAGAIN, "reader: drain ended with errno %d", errno);
    pl_write_all(rs_armed[1], "r", 1);
    pl_wait_for(rs_release[0], POLLIN, 10000);
    return NULL;
}

static void t_reader_sleeps_elsewhere(void) {
    int c;
    pl_tcp_pair(&c, &rs_sock);
    pl_set_nonblock(rs_sock, 1);
    OK(pipe(rs_armed));
    OK(pipe(rs_release));
    pl_write_all(c, "first", 5);
    pthread_t r;
    CHECK(pthread_create(&r, NULL, rs_reader, NULL) == 0, "pthread_create");
    STEP("the reader drained the socket and sleeps in poll() on a pipe");
    char x;
    pl_read_exact(rs_armed[0], &x, 1);
    pl_sleep_ms(20);
    int ep = OK(epoll_create1(0));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, rs_sock, &ev));
    CHECK(epoll_wait(ep, &ev, 1, 0) == 0, "drained socket reported ready");
    STEP("new bytes wake this thread's epoll_wait");
    pl_write_all(c, "second", 6);
    int n = epoll_wait(ep, &ev, 1, 5000);
    CHECK(n == 1 && ev.data.u64 == 7, "epoll_wait returned %d: the bytes were not heard", n);
    char b[16];
    CHECK(read(rs_sock, b, sizeof b) == 6, "read the second message");
    pl_write_all(rs_release[1], "go", 1);
    pthread_join(r, NULL);
    close(ep);
    close(c);
    close(rs_sock);
    for (int i = 0; i < 2; i++) {
        close(rs_armed[i]);
        close(rs_release[i]);
    }
}

static const struct pl_case cases[] = {
    {"mixed", t_mixed},
    {"reader_sleeps_elsewhere", t_reader_sleeps_elsewhere},
    {NULL, NULL},
};

int main(int argc, char **argv) { return pl_main(argc, argv, "pl_threads", cases); }
