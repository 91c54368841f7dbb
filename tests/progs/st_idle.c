/* Idle programs for tests/idle.rs.
 *
 *   st_idle server N
 *       Accepts N connections on a loopback listener (prints "PORT n" first), registers
 *       them in one epoll instance, echoes whatever arrives, and waits with
 *       epoll_wait(-1). Prints "READY" once every connection has echoed one byte (so all
 *       of them are set up, and accelerated under the shim), then idles. Exits 0 with
 *       "WAKEUPS n" (epoll_wait returns after READY) when the peers have closed them all.
 *   st_idle tick N MS
 *       The same, but waits with epoll_wait(MS): a loop with a timeout, as event loops
 *       with timers do. Exits printing "TICKS returns=n timeouts=n secs=s".
 *
 * The process is a single thread on purpose: whatever wakes it up while idle is the
 * shim's doing (or the timeout's), and the harness counts context switches per thread.
 * There is therefore no watchdog thread; alarm() bounds the run instead (its signal
 * ends the process), and PR_SET_PDEATHSIG ends it with the harness.
 */
#include "pl_util.h"

#include <sys/epoll.h>

#define MAX_CONNS 1024

static void usage(void) {
    fprintf(stderr, "usage: st_idle server N | st_idle tick N MS\n");
    exit(2);
}

int main(int argc, char **argv) {
    pl_prog = "st_idle";
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(120);
    if (argc < 3)
        usage();
    int tick = strcmp(argv[1], "tick") == 0;
    if (!tick && strcmp(argv[1], "server") != 0)
        usage();
    if (tick && argc != 4)
        usage();
    int n = atoi(argv[2]);
    int timeout = tick ? atoi(argv[3]) : -1;
    CHECK(n >= 1 && n <= MAX_CONNS, "N must be 1..%d", MAX_CONNS);
    CHECK(!tick || timeout > 0, "MS must be positive");

    STEP("listen");
    int lfd = pl_listen(AF_INET, 0);
    OK(listen(lfd, MAX_CONNS));
    printf("PORT %u\n", pl_port_of(lfd));

    STEP("accept");
    int ep = OK(epoll_create1(EPOLL_CLOEXEC));
    for (int i = 0; i < n; i++) {
        int fd = OK(accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
        OK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    }
    OK(close(lfd));

    STEP("serve");
    int open = n, echoed = 0, ready = 0;
    uint64_t returns = 0, timeouts = 0;
    double t0 = 0;
    struct epoll_event evs[64];
    while (open > 0) {
        int k = epoll_wait(ep, evs, 64, timeout);
        if (k < 0 && errno == EINTR)
            continue;
        CHECK(k >= 0, "epoll_wait");
        if (ready) {
            returns++;
            if (k == 0)
                timeouts++;
        }
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            char buf[256];
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            if (r <= 0) {
                /* EOF (or a reset): the harness is done with this connection. */
                OK(close(fd));
                open--;
                continue;
            }
            /* Tiny messages: a non-blocking write of a few bytes never comes back short
             * on a fresh connection; a short one would be a finding in itself. */
            ssize_t w = write(fd, buf, (size_t)r);
            CHECK(w == r, "echo write returned %zd of %zd", w, r);
            if (!ready && ++echoed == n) {
                ready = 1;
                t0 = pl_now();
                printf("READY\n");
            }
        }
    }
    if (tick)
        printf("TICKS returns=%llu timeouts=%llu secs=%.3f\n", (unsigned long long)returns,
               (unsigned long long)timeouts, ready ? pl_now() - t0 : 0.0);
    else
        printf("WAKEUPS %llu\n", (unsigned long long)returns);
    return 0;
}
