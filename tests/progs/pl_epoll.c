/* Preload tests: epoll semantics a program relies on, checked against what the kernel
 * does for TCP sockets over loopback. Usage: pl_epoll SCENARIO (see cases[] below).
 *
 * "No further event" is checked with a zero timeout only after the expected event was
 * seen, so the checks do not depend on scheduling. */
#include "pl_util.h"

#include <sys/epoll.h>

static int ep_wait(int ep, struct epoll_event *evs, int max, int ms) {
    int n;
    do
        n = epoll_wait(ep, evs, max, ms);
    while (n < 0 && errno == EINTR);
    CHECK(n >= 0, "epoll_wait");
    return n;
}

/* Waits up to 5 s for exactly one event, for the fd tagged `tag`; returns its mask. */
static uint32_t ep_one(int ep, uint64_t tag) {
    struct epoll_event evs[8];
    int n = ep_wait(ep, evs, 8, 5000);
    CHECK(n == 1, "expected 1 event, epoll_wait returned %d", n);
    CHECK(evs[0].data.u64 == tag, "event for tag %llu, expected %llu",
          (unsigned long long)evs[0].data.u64, (unsigned long long)tag);
    return evs[0].events;
}

/* Waits (up to ~5 s) until the event for `tag` includes all of `bits`; other bits may be
 * reported first when the peer's packets arrive separately. Returns the final mask. */
static uint32_t ep_until(int ep, uint64_t tag, uint32_t bits) {
    uint32_t m = 0;
    for (int i = 0; i < 500 && (m & bits) != bits; i++) {
        m = ep_one(ep, tag);
        if ((m & bits) != bits)
            pl_sleep_ms(10);
    }
    CHECK((m & bits) == bits, "mask 0x%x never gained 0x%x", m, bits);
    return m;
}

static void ep_none(int ep, const char *why) {
    struct epoll_event evs[8];
    int n = ep_wait(ep, evs, 8, 0);
    CHECK(n == 0, "%s: expected no event, got %d (mask 0x%x)", why, n, n > 0 ? evs[0].events : 0);
}

static void ep_add(int ep, int fd, uint32_t events, uint64_t tag) {
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
}

static void ep_mod(int ep, int fd, uint32_t events, uint64_t tag) {
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    OK(epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev));
}

/* Reads everything queued on a non-blocking fd until EAGAIN; returns the byte count. */
static size_t drain(int fd) {
    char buf[4096];
    size_t total = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0) {
            CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "drain read");
            return total;
        }
        CHECK(r > 0, "unexpected EOF while draining");
        total += (size_t)r;
    }
}

static void t_lt(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 0xabc);
    ep_none(ep, "idle socket");
    STEP("data makes it readable");
    pl_write_all(c, "hello", 5);
    CHECK(ep_one(ep, 0xabc) == EPOLLIN, "mask is not exactly EPOLLIN");
    STEP("level-triggered: reported again while data remains");
    CHECK(ep_one(ep, 0xabc) == EPOLLIN, "second wait");
    pl_wait_queued(s, 5, 5000);
    char buf[8];
    CHECK(read(s, buf, 2) == 2, "partial read");
    CHECK(ep_one(ep, 0xabc) == EPOLLIN, "after partial read");
    CHECK(read(s, buf, 8) == 3, "rest");
    ep_none(ep, "drained");
    STEP("EPOLLIN|EPOLLOUT");
    ep_mod(ep, s, EPOLLIN | EPOLLOUT, 0xdef);
    CHECK(ep_one(ep, 0xdef) == EPOLLOUT, "idle connected socket: only EPOLLOUT");
    pl_write_all(c, "x", 1);
    pl_wait_queued(s, 1, 5000);
    CHECK(ep_one(ep, 0xdef) == (EPOLLIN | EPOLLOUT), "readable and writable");
    close(ep);
    close(c);
    close(s);
}

static void t_et(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    pl_set_nonblock(s, 1);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN | EPOLLET, 1);
    ep_none(ep, "idle socket");
    STEP("one event per arrival");
    static char buf[100];
    memset(buf, 'e', sizeof buf);
    pl_write_all(c, buf, 100);
    CHECK(ep_one(ep, 1) == EPOLLIN, "first arrival");
    ep_none(ep, "edge-triggered: no second report of the same arrival");
    STEP("partial read does not re-arm");
    pl_wait_queued(s, 100, 5000);
    CHECK(read(s, buf, 10) == 10, "partial read");
    ep_none(ep, "after partial read");
    STEP("new arrival gives one new event");
    pl_write_all(c, buf, 50);
    CHECK(ep_one(ep, 1) == EPOLLIN, "second arrival");
    ep_none(ep, "second arrival reported once");
    STEP("drain to EAGAIN");
    pl_wait_queued(s, 140, 5000);
    CHECK(drain(s) == 140, "drained a different byte count");
    ep_none(ep, "after drain");
    pl_write_all(c, "z", 1);
    CHECK(ep_one(ep, 1) == EPOLLIN, "arrival after drain");
    CHECK(drain(s) == 1, "last byte");
    STEP("EPOLLET|EPOLLOUT reports writability once");
    ep_mod(ep, s, EPOLLOUT | EPOLLET, 2);
    CHECK(ep_one(ep, 2) == EPOLLOUT, "writable edge after MOD");
    ep_none(ep, "writability reported once");
    close(ep);
    close(c);
    close(s);
}

static void t_oneshot(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    pl_set_nonblock(s, 1);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN | EPOLLONESHOT, 5);
    pl_write_all(c, "a", 1);
    CHECK(ep_one(ep, 5) == EPOLLIN, "first event");
    STEP("disarmed after one event");
    pl_write_all(c, "b", 1);
    pl_wait_queued(s, 2, 5000);
    struct epoll_event evs[4];
    CHECK(ep_wait(ep, evs, 4, 100) == 0, "event while disarmed (data pending)");
    STEP("re-armed by EPOLL_CTL_MOD");
    ep_mod(ep, s, EPOLLIN | EPOLLONESHOT, 6);
    CHECK(ep_one(ep, 6) == EPOLLIN, "pending data reported after re-arm");
    ep_none(ep, "disarmed again");
    STEP("a disarmed fd is still registered");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev), EEXIST);
    CHECK(drain(s) == 2, "two bytes queued");
    ep_mod(ep, s, EPOLLIN | EPOLLONESHOT, 8);
    ep_none(ep, "re-armed but empty");
    pl_write_all(c, "c", 1);
    CHECK(ep_one(ep, 8) == EPOLLIN, "arrival after re-arm");
    ep_none(ep, "one shot");
    close(ep);
    close(c);
    close(s);
}

static void t_rdhup(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN | EPOLLRDHUP, 9);
    STEP("peer half-close");
    pl_write_all(c, "data", 4);
    OK(shutdown(c, SHUT_WR));
    /* The data and the FIN may be reported by separate wake-ups: wait for the FIN. */
    uint32_t m = ep_until(ep, 9, EPOLLRDHUP);
    CHECK(m == (EPOLLIN | EPOLLRDHUP), "half-closed peer: mask 0x%x, expected EPOLLIN|EPOLLRDHUP", m);
    char buf[8];
    pl_read_exact(s, buf, 4);
    CHECK(memcmp(buf, "data", 4) == 0, "data before FIN");
    pl_expect_eof(s);
    CHECK(ep_one(ep, 9) == (EPOLLIN | EPOLLRDHUP), "EOF stays readable (level-triggered)");
    STEP("the half-closed peer can still receive");
    pl_write_all(s, "back", 4);
    pl_read_exact(c, buf, 4);
    CHECK(memcmp(buf, "back", 4) == 0, "reply after half-close");
    STEP("both directions shut: EPOLLHUP");
    OK(shutdown(s, SHUT_WR));
    m = ep_until(ep, 9, EPOLLHUP);
    CHECK(m == (EPOLLIN | EPOLLRDHUP | EPOLLHUP), "fully shut socket: mask 0x%x", m);
    pl_expect_eof(c);
    close(ep);
    close(c);
    close(s);
}

static void t_connect_out(void) {
    int lfd = pl_listen(AF_INET, 0);
    struct sockaddr_storage ss;
    socklen_t sl = pl_tcp_connect_addr(AF_INET, pl_port_of(lfd), &ss);
    int fd = OK(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    STEP("non-blocking connect");
    int r = connect(fd, (struct sockaddr *)&ss, sl);
    CHECK(r == 0 || errno == EINPROGRESS, "connect");
    int in_progress = r != 0;
    int ep = OK(epoll_create1(0));
    ep_add(ep, fd, EPOLLOUT, 3);
    STEP("EPOLLOUT when connected");
    CHECK(ep_one(ep, 3) == EPOLLOUT, "connected socket: mask is not exactly EPOLLOUT");
    int err = -1;
    socklen_t el = sizeof err;
    OK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el));
    CHECK(err == 0, "SO_ERROR %d after a successful connect", err);
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    OK(getpeername(fd, (struct sockaddr *)&peer, &pl));
    CHECK(ntohs(peer.sin_port) == pl_port_of(lfd), "peer port");
    STEP("connect() again");
    /* Linux: the first connect() after an asynchronous completion reports success once
     * (the classic way to learn the result); any later one fails with EISCONN. */
    if (in_progress)
        CHECK(connect(fd, (struct sockaddr *)&ss, sl) == 0, "connect after completion");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&ss, sl), EISCONN);
    int a = OK(accept(lfd, NULL, NULL));
    pl_write_all(fd, "hi", 2);
    char buf[2];
    pl_read_exact(a, buf, 2);
    CHECK(memcmp(buf, "hi", 2) == 0, "data over the connected socket");
    close(ep);
    close(a);
    close(fd);
    close(lfd);
}

static void t_refused(void) {
    /* A bound socket that never listens keeps the port ours, and refuses connections. */
    int holder = OK(socket(AF_INET, SOCK_STREAM, 0));
    struct sockaddr_storage ss;
    socklen_t sl = pl_tcp_bind_addr(AF_INET, &ss);
    OK(bind(holder, (struct sockaddr *)&ss, sl));
    sl = pl_tcp_connect_addr(AF_INET, pl_port_of(holder), &ss);

    STEP("non-blocking connect to a closed port");
    int fd = OK(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    int r = connect(fd, (struct sockaddr *)&ss, sl);
    CHECK(r == -1 && (errno == EINPROGRESS || errno == ECONNREFUSED), "connect returned %d", r);
    if (errno == EINPROGRESS) {
        int ep = OK(epoll_create1(0));
        ep_add(ep, fd, EPOLLOUT, 4);
        uint32_t m = ep_one(ep, 4);
        CHECK((m & (EPOLLOUT | EPOLLERR)) == (EPOLLOUT | EPOLLERR),
              "refused connect: mask 0x%x lacks EPOLLOUT|EPOLLERR", m);
        close(ep);
        STEP("SO_ERROR reports and clears the error");
        int err = -1;
        socklen_t el = sizeof err;
        OK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el));
        CHECK(err == ECONNREFUSED, "SO_ERROR = %d (%s), expected ECONNREFUSED", err, strerror(err));
        err = -1;
        OK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el));
        CHECK(err == 0, "SO_ERROR not cleared: %d", err);
    }
    close(fd);

    STEP("blocking connect to a closed port");
    fd = OK(socket(AF_INET, SOCK_STREAM, 0));
    EXPECT_ERR(connect(fd, (struct sockaddr *)&ss, sl), ECONNREFUSED);
    close(fd);
    close(holder);
}

static void t_ctl_errors(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(EPOLL_CLOEXEC));
    struct epoll_event ev = {.events = EPOLLIN};
    STEP("EEXIST");
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev), EEXIST);
    STEP("ENOENT");
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev), ENOENT);
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_DEL, c, &ev), ENOENT);
    STEP("EBADF");
    int closed = OK(dup(c));
    close(closed);
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, closed, &ev), EBADF);
    EXPECT_ERR(epoll_ctl(closed, EPOLL_CTL_ADD, s, &ev), EBADF);
    EXPECT_ERR(epoll_ctl(-1, EPOLL_CTL_ADD, s, &ev), EBADF);
    STEP("EINVAL");
    EXPECT_ERR(epoll_ctl(c, EPOLL_CTL_ADD, s, &ev), EINVAL); /* c is not an epoll fd */
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, ep, &ev), EINVAL);
    EXPECT_ERR(epoll_ctl(ep, 99, c, &ev), EINVAL);
    struct epoll_event ex = {.events = EPOLLIN | EPOLLEXCLUSIVE};
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_MOD, s, &ex), EINVAL);
    struct epoll_event ex1 = {.events = EPOLLIN | EPOLLEXCLUSIVE | EPOLLONESHOT};
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ex1), EINVAL);
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ex));
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev), EINVAL); /* exclusive items are fixed */
    OK(epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));
    STEP("EPERM for a regular file");
    int file = OK(open("/proc/self/exe", O_RDONLY));
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, file, &ev), EPERM);
    close(file);
    STEP("EFAULT");
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_ADD, c, NULL), EFAULT);
    STEP("epoll_create errors");
    EXPECT_ERR(epoll_create(0), EINVAL);
    EXPECT_ERR(epoll_create1(0x1234), EINVAL);
    STEP("epoll_wait errors");
    struct epoll_event evs[2];
    EXPECT_ERR(epoll_wait(ep, evs, 0, 0), EINVAL);
    EXPECT_ERR(epoll_wait(c, evs, 2, 0), EINVAL);
    EXPECT_ERR(epoll_wait(closed, evs, 2, 0), EBADF);
    STEP("DEL then ADD again");
    OK(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL));
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL), ENOENT);
    OK(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    close(ep);
    close(c);
    close(s);
}

/* The registration belongs to the open file, not to the fd number: it survives closing the
 * registered fd while a dup keeps the socket open, and it goes away with the last fd. */
static void t_epoll_dup(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 777);
    int d = OK(dup(s));
    close(s);
    STEP("events after the registered fd was closed");
    pl_write_all(c, "q", 1);
    CHECK(ep_one(ep, 777) == EPOLLIN, "registration did not survive close() of a dup'ed fd");
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL), EBADF);
    EXPECT_ERR(epoll_ctl(ep, EPOLL_CTL_DEL, d, NULL), ENOENT);
    char b;
    CHECK(read(d, &b, 1) == 1 && b == 'q', "read through the dup");
    ep_none(ep, "drained");
    STEP("last close removes the registration");
    close(d);
    ep_none(ep, "closed socket still reported");
    close(ep);
    close(c);
}

static void t_timeout(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 1);
    struct epoll_event evs[4];
    double wall0 = pl_now(), cpu0 = pl_cpu();
    for (int i = 0; i < 3; i++) {
        STEP("epoll_wait(100 ms) on an idle socket");
        double t0 = pl_now();
        int n = epoll_wait(ep, evs, 4, 100);
        double dt = pl_now() - t0;
        CHECK(n == 0, "idle epoll_wait returned %d", n);
        CHECK(dt >= 0.090, "100 ms timeout returned after %.1f ms", dt * 1000);
    }
    STEP("an empty epoll set honours its timeout too");
    int empty = OK(epoll_create1(0));
    double t0 = pl_now();
    CHECK(epoll_wait(empty, evs, 4, 100) == 0, "empty set");
    CHECK(pl_now() - t0 >= 0.090, "empty set returned early");
    close(empty);
    double wall = pl_now() - wall0, cpu = pl_cpu() - cpu0;
    /* Sleeping costs ~0 CPU; a spinning wait costs about the wall time. The bound is loose
     * so that a loaded machine cannot trip it, yet it catches any busy loop. */
    CHECK(cpu < wall / 4 || cpu < 0.02, "waiting %.0f ms used %.0f ms of CPU (spinning?)",
          wall * 1000, cpu * 1000);
    printf("timeout: %.0f ms waited, %.1f ms CPU\n", wall * 1000, cpu * 1000);
    close(ep);
    close(c);
    close(s);
}

static volatile sig_atomic_t usr1_count;
static void on_usr1(int sig) {
    (void)sig;
    usr1_count++;
}

/* Makes SIGUSR1 pending and blocked; returns a mask that unblocks it. */
static sigset_t pend_usr1(void) {
    struct sigaction sa = {.sa_handler = on_usr1};
    sigemptyset(&sa.sa_mask);
    OK(sigaction(SIGUSR1, &sa, NULL));
    sigset_t block, open;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    OK(sigprocmask(SIG_BLOCK, &block, &open));
    sigdelset(&open, SIGUSR1);
    usr1_count = 0;
    raise(SIGUSR1);
    CHECK(usr1_count == 0, "blocked signal was delivered");
    return open;
}

static void check_usr1_still_blocked(void) {
    sigset_t cur;
    OK(sigprocmask(SIG_SETMASK, NULL, &cur));
    CHECK(sigismember(&cur, SIGUSR1), "the call did not restore the signal mask");
}

static void t_pwait(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 1);
    struct epoll_event evs[4];
    STEP("epoll_pwait timeout");
    double t0 = pl_now();
    CHECK(epoll_pwait(ep, evs, 4, 100, NULL) == 0, "idle");
    CHECK(pl_now() - t0 >= 0.090, "returned early");
    STEP("epoll_pwait unblocks a pending signal atomically");
    sigset_t open = pend_usr1();
    EXPECT_ERR(epoll_pwait(ep, evs, 4, 5000, &open), EINTR);
    CHECK(usr1_count == 1, "handler ran %d times", (int)usr1_count);
    check_usr1_still_blocked();
    STEP("epoll_pwait reports data");
    pl_write_all(c, "d", 1);
    sigset_t all;
    sigfillset(&all);
    int n = epoll_pwait(ep, evs, 4, 5000, &all);
    CHECK(n == 1 && evs[0].events == EPOLLIN && evs[0].data.u64 == 1, "data event");
    close(ep);
    close(c);
    close(s);
}

static void t_pwait2(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 2);
    struct epoll_event evs[4];
    STEP("epoll_pwait2 timespec timeout");
    struct timespec ts = {0, 100 * 1000 * 1000};
    double t0 = pl_now();
    int n = epoll_pwait2(ep, evs, 4, &ts, NULL);
    if (n < 0 && errno == ENOSYS) {
        printf("SKIP: kernel lacks epoll_pwait2\n");
        exit(PL_SKIP);
    }
    CHECK(n == 0, "idle epoll_pwait2 returned %d", n);
    CHECK(pl_now() - t0 >= 0.090, "returned early");
    struct timespec zero = {0, 0};
    CHECK(epoll_pwait2(ep, evs, 4, &zero, NULL) == 0, "zero timeout");
    STEP("epoll_pwait2 with a pending signal and no timeout");
    sigset_t open = pend_usr1();
    EXPECT_ERR(epoll_pwait2(ep, evs, 4, NULL, &open), EINTR);
    CHECK(usr1_count == 1, "handler ran %d times", (int)usr1_count);
    check_usr1_still_blocked();
    STEP("epoll_pwait2 reports data");
    pl_write_all(c, "d", 1);
    struct timespec five = {5, 0};
    n = epoll_pwait2(ep, evs, 4, &five, NULL);
    CHECK(n == 1 && evs[0].events == EPOLLIN && evs[0].data.u64 == 2, "data event");
    struct timespec bad = {0, 2000000000L};
    EXPECT_ERR(epoll_pwait2(ep, evs, 4, &bad, NULL), EINVAL);
    close(ep);
    close(c);
    close(s);
}

/* A shared epoll fd keeps working in a fork() child and afterwards in the parent. */
static void t_epoll_fork(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 42);
    pid_t pid = OK(fork());
    if (pid == 0) {
        pl_child_init();
        STEP("child: wait on the inherited epoll fd");
        CHECK(ep_one(ep, 42) == EPOLLIN, "child event");
        char buf[11];
        pl_read_exact(s, buf, 11);
        CHECK(memcmp(buf, "from-parent", 11) == 0, "child data");
        pl_write_all(s, "child-ok", 8);
        exit(0);
    }
    STEP("parent: talk to the child");
    pl_write_all(c, "from-parent", 11);
    char buf[8];
    pl_read_exact(c, buf, 8);
    CHECK(memcmp(buf, "child-ok", 8) == 0, "reply from child");
    int st;
    OK(waitpid(pid, &st, 0));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
    STEP("parent: epoll after the child exited");
    ep_none(ep, "nothing pending");
    pl_write_all(c, "again", 5);
    CHECK(ep_one(ep, 42) == EPOLLIN, "parent event");
    pl_read_exact(s, buf, 5);
    close(ep);
    close(c);
    close(s);
}

/* An epoll fd is itself pollable: in poll() and inside another epoll set. */
static void t_nested(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int inner = OK(epoll_create1(0));
    ep_add(inner, s, EPOLLIN, 1);
    int outer = OK(epoll_create1(0));
    ep_add(outer, inner, EPOLLIN, 2);
    struct pollfd p = {.fd = inner, .events = POLLIN};
    CHECK(poll(&p, 1, 0) == 0, "idle inner epoll is not readable");
    ep_none(outer, "idle outer");
    STEP("readiness propagates outward");
    pl_write_all(c, "n", 1);
    CHECK(ep_one(outer, 2) == EPOLLIN, "outer reports inner");
    CHECK(poll(&p, 1, 5000) == 1 && p.revents == POLLIN, "poll on the inner epoll fd");
    fd_set r;
    FD_ZERO(&r);
    FD_SET(inner, &r);
    struct timeval tv = {5, 0};
    CHECK(select(inner + 1, &r, NULL, NULL, &tv) == 1 && FD_ISSET(inner, &r), "select on epoll fd");
    CHECK(ep_one(inner, 1) == EPOLLIN, "inner reports the socket");
    char b;
    CHECK(read(s, &b, 1) == 1, "read");
    ep_none(outer, "drained");
    close(outer);
    close(inner);
    close(c);
    close(s);
}

/* Without a dup, close() removes the fd from every epoll set. */
static void t_close_removes(void) {
    int c, s;
    pl_tcp_pair(&c, &s);
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 1);
    pl_write_all(c, "x", 1);
    CHECK(ep_one(ep, 1) == EPOLLIN, "registered");
    int num = s;
    close(s);
    ep_none(ep, "closed fd still reported");
    /* The lowest free number is reused; it must be registrable again (no EEXIST). */
    int c2, s2;
    pl_tcp_pair(&c2, &s2);
    int fresh = s2 == num ? s2 : c2 == num ? c2 : -1;
    if (fresh >= 0)
        ep_add(ep, fresh, EPOLLIN, 2);
    ep_none(ep, "new socket idle");
    close(ep);
    close(c);
    close(c2);
    close(s2);
}

/* epoll_wait with room for one event: level-triggered members that stay ready take
 * turns (the kernel re-queues a reported one at the tail), so an always-readable socket
 * cannot hide a ready pipe. A shim answering from its own ready list first must still
 * give the kernel's members their turn. */
static void t_fairness(void) {
    int c, s, p[2];
    pl_tcp_pair(&c, &s);
    OK(pipe(p));
    int ep = OK(epoll_create1(0));
    ep_add(ep, s, EPOLLIN, 1);
    ep_add(ep, p[0], EPOLLIN, 2);
    pl_write_all(c, "always", 6);
    pl_wait_queued(s, 6, 5000);
    CHECK(write(p[1], "p", 1) == 1, "pipe write");
    STEP("six one-event waits: each member at least twice");
    int count[3] = {0, 0, 0};
    for (int i = 0; i < 6; i++) {
        struct epoll_event ev;
        CHECK(epoll_wait(ep, &ev, 1, 1000) == 1, "wait %d", i);
        CHECK(ev.data.u64 == 1 || ev.data.u64 == 2, "tag %llu", (unsigned long long)ev.data.u64);
        count[ev.data.u64]++;
    }
    CHECK(count[1] >= 2 && count[2] >= 2, "socket reported %d times, pipe %d times (starvation)",
          count[1], count[2]);
    close(ep);
    close(p[0]);
    close(p[1]);
    close(c);
    close(s);
}

/* Regression (CPython test_asyncio: test_create_server_ssl then
 * test_create_server_ssl_match_failed hung): the shim's ring watches an epoll's kernel
 * set with a poll on the epoll fd, and that poll outlived the epoll's close. The next
 * epoll, reusing the shim's slot, was taken for already watched, and a kernel listener
 * in it never woke the wait. */
static void t_reused_slot_watches_kernel_set(void) {
    for (int round = 0; round < 2; round++) {
        STEP(round == 0 ? "first instance: merged wait arms the watch" : "second instance");
        int c, s;
        pl_tcp_pair(&c, &s);
        int l = pl_listen(AF_INET, SOCK_NONBLOCK);
        int ep = OK(epoll_create1(0));
        ep_add(ep, s, EPOLLIN, 1);
        ep_add(ep, l, EPOLLIN, 2);
        struct epoll_event ev;
        CHECK(epoll_wait(ep, &ev, 1, 20) == 0, "idle wait");
        int nc = pl_connect_to(l);
        STEP(round == 0 ? "first instance: listener reported" : "second instance: listener reported");
        int n = epoll_wait(ep, &ev, 1, 3000);
        CHECK(n == 1 && ev.data.u64 == 2, "listener not reported (n=%d)", n);
        int a = OK(accept(l, NULL, NULL));
        STEP("quiet wait: the watch is re-armed on a set with nothing ready");
        CHECK(epoll_wait(ep, &ev, 1, 20) == 0, "quiet wait");
        close(a);
        close(nc);
        close(ep);
        close(l);
        close(c);
        close(s);
    }
}

static const struct pl_case cases[] = {
    {"lt", t_lt},
    {"et", t_et},
    {"oneshot", t_oneshot},
    {"rdhup", t_rdhup},
    {"connect_out", t_connect_out},
    {"refused", t_refused},
    {"ctl_errors", t_ctl_errors},
    {"dup", t_epoll_dup},
    {"timeout", t_timeout},
    {"pwait", t_pwait},
    {"pwait2", t_pwait2},
    {"fork", t_epoll_fork},
    {"nested", t_nested},
    {"close_removes", t_close_removes},
    {"fairness", t_fairness},
    {"reused_slot", t_reused_slot_watches_kernel_set},
    {NULL, NULL},
};

int main(int argc, char **argv) { return pl_main(argc, argv, "pl_epoll", cases); }
