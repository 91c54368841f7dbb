/* Preload tests: poll/ppoll/select/pselect over mixed sets of TCP sockets and pipes.
 * Usage: pl_poll SCENARIO (see cases[] below). */
#include "pl_util.h"

#include <sys/select.h>

/* Fixture: a connected TCP pair and a pipe. */
struct mixed {
    int c, s;   /* client / accepted end */
    int p[2];   /* pipe read / write end */
};

static struct mixed mixed_new(void) {
    struct mixed m;
    pl_tcp_pair(&m.c, &m.s);
    OK(pipe(m.p));
    return m;
}

static void mixed_close(struct mixed *m) {
    close(m->c);
    close(m->s);
    close(m->p[0]);
    close(m->p[1]);
}

/* Makes both read ends readable: 1 byte into the pipe, 1 byte to the socket. */
static void mixed_feed(struct mixed *m) {
    pl_write_all(m->p[1], "p", 1);
    pl_write_all(m->c, "s", 1);
    pl_wait_queued(m->s, 1, 5000);
}

static void mixed_drain(struct mixed *m) {
    char b;
    CHECK(read(m->p[0], &b, 1) == 1 && b == 'p', "pipe byte");
    CHECK(read(m->s, &b, 1) == 1 && b == 's', "socket byte");
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
    return open;
}

/* poll-family call under test: plain poll, or ppoll with the equivalent timespec. */
static int use_ppoll;
static int do_poll(struct pollfd *f, nfds_t n, int ms) {
    if (!use_ppoll)
        return poll(f, n, ms);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    return ppoll(f, n, ms < 0 ? NULL : &ts, NULL);
}

static void poll_mixed(void) {
    struct mixed m = mixed_new();
    struct pollfd f[5] = {
        {.fd = m.s, .events = POLLIN},   {.fd = m.p[0], .events = POLLIN},
        {.fd = m.c, .events = POLLOUT},  {.fd = m.p[1], .events = POLLOUT},
        {.fd = -1, .events = POLLIN}, /* negative fds are ignored */
    };
    STEP("only the writable ends are ready");
    CHECK(do_poll(f, 5, 0) == 2, "idle set");
    CHECK(f[0].revents == 0 && f[1].revents == 0, "idle read ends: 0x%x 0x%x", f[0].revents,
          f[1].revents);
    CHECK(f[2].revents == POLLOUT && f[3].revents == POLLOUT, "writable: 0x%x 0x%x",
          f[2].revents, f[3].revents);
    CHECK(f[4].revents == 0, "negative fd got revents");
    STEP("socket and pipe readable together");
    mixed_feed(&m);
    CHECK(do_poll(f, 5, 5000) == 4, "all four ready");
    CHECK(f[0].revents == POLLIN && f[1].revents == POLLIN, "readable: 0x%x 0x%x", f[0].revents,
          f[1].revents);
    STEP("events = 0 reports nothing");
    struct pollfd z[2] = {{.fd = m.s}, {.fd = m.p[0]}};
    CHECK(do_poll(z, 2, 0) == 0, "no events requested");
    mixed_drain(&m);
    STEP("timeout honoured");
    double t0 = pl_now();
    CHECK(do_poll(f, 2, 100) == 0, "idle read ends");
    CHECK(pl_now() - t0 >= 0.090, "100 ms timeout returned after %.1f ms", (pl_now() - t0) * 1000);
    t0 = pl_now();
    CHECK(do_poll(NULL, 0, 100) == 0, "empty set");
    CHECK(pl_now() - t0 >= 0.090, "empty set returned early");
    mixed_close(&m);
}

static void t_poll(void) { poll_mixed(); }

static void t_ppoll(void) {
    use_ppoll = 1;
    poll_mixed();
    STEP("ppoll unblocks a pending signal atomically");
    struct mixed m = mixed_new();
    struct pollfd f = {.fd = m.s, .events = POLLIN};
    sigset_t open = pend_usr1();
    EXPECT_ERR(ppoll(&f, 1, NULL, &open), EINTR);
    CHECK(usr1_count == 1, "handler ran %d times", (int)usr1_count);
    sigset_t cur;
    OK(sigprocmask(SIG_SETMASK, NULL, &cur));
    CHECK(sigismember(&cur, SIGUSR1), "ppoll did not restore the mask");
    STEP("ppoll with data and a NULL timeout");
    pl_write_all(m.c, "x", 1);
    CHECK(ppoll(&f, 1, NULL, NULL) == 1 && f.revents == POLLIN, "data");
    struct timespec bad = {0, -1};
    EXPECT_ERR(ppoll(&f, 1, &bad, NULL), EINVAL);
    mixed_close(&m);
}

/* select or pselect; the timeval of select is updated by Linux, so it is returned. */
static int use_pselect;
static int do_select(int n, fd_set *r, fd_set *w, struct timeval *tv) {
    if (!use_pselect)
        return select(n, r, w, NULL, tv);
    struct timespec ts, *tp = NULL;
    if (tv) {
        ts.tv_sec = tv->tv_sec;
        ts.tv_nsec = tv->tv_usec * 1000;
        tp = &ts;
    }
    return pselect(n, r, w, NULL, tp, NULL);
}

static void select_mixed(void) {
    struct mixed m = mixed_new();
    int maxfd = m.c;
    int all[] = {m.s, m.p[0], m.p[1]};
    for (int i = 0; i < 3; i++)
        if (all[i] > maxfd)
            maxfd = all[i];
    fd_set r, w;
#define SETS()                 \
    do {                       \
        FD_ZERO(&r);           \
        FD_ZERO(&w);           \
        FD_SET(m.s, &r);       \
        FD_SET(m.p[0], &r);    \
        FD_SET(m.c, &w);       \
        FD_SET(m.p[1], &w);    \
    } while (0)
    STEP("only the writable ends are ready");
    SETS();
    struct timeval tv = {0, 0};
    CHECK(do_select(maxfd + 1, &r, &w, &tv) == 2, "idle set");
    CHECK(!FD_ISSET(m.s, &r) && !FD_ISSET(m.p[0], &r), "idle read ends reported");
    CHECK(FD_ISSET(m.c, &w) && FD_ISSET(m.p[1], &w), "writable ends not reported");
    STEP("socket and pipe readable together");
    mixed_feed(&m);
    SETS();
    tv = (struct timeval){5, 0};
    CHECK(do_select(maxfd + 1, &r, &w, &tv) == 4, "all four ready");
    CHECK(FD_ISSET(m.s, &r) && FD_ISSET(m.p[0], &r), "read ends");
    mixed_drain(&m);
    STEP("timeout honoured; sets cleared");
    FD_ZERO(&r);
    FD_SET(m.s, &r);
    FD_SET(m.p[0], &r);
    tv = (struct timeval){0, 100000};
    double t0 = pl_now();
    CHECK(do_select(maxfd + 1, &r, NULL, &tv) == 0, "idle read ends");
    CHECK(pl_now() - t0 >= 0.090, "100 ms timeout returned after %.1f ms", (pl_now() - t0) * 1000);
    CHECK(!FD_ISSET(m.s, &r) && !FD_ISSET(m.p[0], &r), "sets not cleared on timeout");
    if (!use_pselect)
        CHECK(tv.tv_sec == 0 && tv.tv_usec == 0, "Linux select leaves the unslept time in tv");
    STEP("errors");
    FD_ZERO(&r);
    FD_SET(m.s, &r);
    tv = (struct timeval){0, 0};
    EXPECT_ERR(do_select(-1, &r, NULL, &tv), EINVAL);
    int closed = OK(dup(m.s));
    close(closed);
    FD_ZERO(&r);
    FD_SET(closed, &r);
    EXPECT_ERR(do_select(closed + 1, &r, NULL, &tv), EBADF);
    mixed_close(&m);
#undef SETS
}

static void t_select(void) { select_mixed(); }

static void t_pselect(void) {
    use_pselect = 1;
    select_mixed();
    STEP("pselect unblocks a pending signal atomically");
    struct mixed m = mixed_new();
    fd_set r;
    FD_ZERO(&r);
    FD_SET(m.s, &r);
    sigset_t open = pend_usr1();
    EXPECT_ERR(pselect(m.s + 1, &r, NULL, NULL, NULL, &open), EINTR);
    CHECK(usr1_count == 1, "handler ran %d times", (int)usr1_count);
    mixed_close(&m);
}

/* Waits until fd reports all of `bits` (other bits may come first), returns revents. */
static short wait_bits(int fd, short events, short bits) {
    short rev = 0;
    for (int i = 0; i < 500 && (rev & bits) != bits; i++) {
        rev = pl_wait_for(fd, events, 5000);
        if ((rev & bits) != bits)
            pl_sleep_ms(10);
    }
    CHECK((rev & bits) == bits, "revents 0x%x never gained 0x%x", rev, bits);
    return rev;
}

static void t_hup(void) {
    struct mixed m = mixed_new();
    STEP("peer closed: POLLIN|POLLRDHUP, EOF");
    close(m.c);
    short rev = wait_bits(m.s, POLLIN | POLLRDHUP, POLLRDHUP);
    CHECK(rev == (POLLIN | POLLRDHUP), "revents 0x%x", rev);
    fd_set r;
    FD_ZERO(&r);
    FD_SET(m.s, &r);
    struct timeval tv = {0, 0};
    CHECK(select(m.s + 1, &r, NULL, NULL, &tv) == 1, "select: EOF is readable");
    pl_expect_eof(m.s);
    STEP("both directions shut: POLLHUP");
    OK(shutdown(m.s, SHUT_WR));
    rev = wait_bits(m.s, POLLIN, POLLHUP);
    CHECK(rev == (POLLIN | POLLHUP), "revents 0x%x", rev);
    close(m.s);
    struct pollfd f;

    STEP("pipe: writer gone");
    pl_write_all(m.p[1], "z", 1);
    close(m.p[1]);
    f = (struct pollfd){.fd = m.p[0], .events = POLLIN};
    CHECK(poll(&f, 1, 0) == 1 && f.revents == (POLLIN | POLLHUP), "data + hup: 0x%x", f.revents);
    char b;
    CHECK(read(m.p[0], &b, 1) == 1, "pipe data");
    CHECK(poll(&f, 1, 0) == 1 && f.revents == POLLHUP, "hup only: 0x%x", f.revents);
    close(m.p[0]);
    STEP("pipe: reader gone");
    int p[2];
    OK(pipe(p));
    close(p[0]);
    f = (struct pollfd){.fd = p[1], .events = POLLOUT};
    CHECK(poll(&f, 1, 0) == 1 && f.revents == (POLLOUT | POLLERR), "0x%x", f.revents);
    close(p[1]);

    STEP("connection reset");
    /* Closing a socket with unread data sends a RST instead of a FIN. */
    int c, s;
    pl_tcp_pair(&c, &s);
    pl_write_all(s, "unread", 6);
    pl_wait_queued(c, 6, 5000);
    close(c);
    rev = wait_bits(s, POLLIN, POLLERR);
    CHECK(rev == (POLLIN | POLLERR | POLLHUP), "reset socket: revents 0x%x", rev);
    EXPECT_ERR(read(s, &b, 1), ECONNRESET);
    CHECK(read(s, &b, 1) == 0, "EOF after the reset was reported");
    close(s);
}

static void t_nval(void) {
    struct mixed m = mixed_new();
    int closed = OK(dup(m.s));
    close(closed);
    pl_write_all(m.p[1], "p", 1);
    struct pollfd f[4] = {
        {.fd = closed, .events = POLLIN},
        {.fd = m.s, .events = POLLIN},
        {.fd = m.p[0], .events = POLLIN},
        {.fd = -5, .events = POLLIN},
    };
    STEP("poll: POLLNVAL for a closed fd, others still reported");
    int n = poll(f, 4, 0);
    CHECK(n == 2, "poll returned %d, expected 2; revents 0x%x 0x%x 0x%x 0x%x", n, f[0].revents,
          f[1].revents, f[2].revents, f[3].revents);
    CHECK(f[0].revents == POLLNVAL, "closed fd: 0x%x", f[0].revents);
    CHECK(f[1].revents == 0 && f[2].revents == POLLIN && f[3].revents == 0, "others: 0x%x 0x%x 0x%x",
          f[1].revents, f[2].revents, f[3].revents);
    STEP("ppoll: same");
    struct timespec ts = {0, 0};
    n = ppoll(f, 4, &ts, NULL);
    CHECK(n == 2 && f[0].revents == POLLNVAL, "ppoll returned %d, revents[0] 0x%x", n, f[0].revents);
    STEP("POLLNVAL even with events = 0");
    struct pollfd g = {.fd = closed};
    CHECK(poll(&g, 1, 0) == 1 && g.revents == POLLNVAL, "0x%x", g.revents);
    mixed_close(&m);
}

static const struct pl_case cases[] = {
    {"poll", t_poll}, {"ppoll", t_ppoll}, {"select", t_select}, {"pselect", t_pselect},
    {"hup", t_hup},   {"nval", t_nval},   {NULL, NULL},
};

int main(int argc, char **argv) { return pl_main(argc, argv, "pl_poll", cases); }
